//! The local Azure stack: one HTTPS server on loopback that plays THIM, IMDS, the Entra ID token
//! endpoint, MAA and Managed HSM on their real paths, and verifies for real what it receives:
//! report signature and chain (to the simulator's and AMD's roots), report_data against the
//! runtime data, bearer tokens, token signatures, release policies.
//!
//! Owns the emulated services and fault injection. Must not know aasp's own services: it is a
//! peer that production clients talk to over real sockets.

pub mod blob;
pub mod faults;
mod handlers;
pub mod kbs;
pub mod pki;

use crate::azure::jws::{Jwks, JwksKey};
use crate::snp::cert::Cert;
use crate::snp::verify::TrustStore;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use faults::{FaultKind, Faults};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("emulator PKI: {0}")]
    Pki(String),
    #[error("emulator: {0}")]
    Io(String),
}

/// How to run the emulator.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The dev CA (`emulator/ca.pem`) lives here.
    pub state_dir: PathBuf,
    /// Host names the TLS certificate names besides `localhost` and `127.0.0.1` (names clients
    /// reach the emulator by through `/etc/hosts`).
    pub tls_names: Vec<String>,
    /// ARKs MAA trusts besides AMD's (the simulator's).
    pub extra_roots: Vec<Cert>,
    /// The THIM document to serve (the simulated host's), if any.
    pub thim_json: Option<String>,
    /// Launch measurements MAA reports as `azure-compliant-uvm`; every other measurement gets
    /// `azure-non-compliant` (empty: none is compliant), as real MAA judges only the UVM images
    /// it knows.
    pub accepted_measurements: Vec<[u8; 48]>,
    /// Lifetime of issued MAA tokens in seconds; negative issues already-expired tokens.
    pub maa_token_lifetime: i64,
    /// Issuer MAA writes into tokens; by default `https://` + the host the client used. Set it to
    /// play an attestation service that is not the one the client asked.
    pub maa_issuer: Option<String>,
    pub faults: Faults,
    /// The emulated Trustee KBS: sessions, token lifetime, resource policy.
    pub kbs: kbs::KbsConfig,
}

impl Config {
    pub fn new(state_dir: PathBuf) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir,
            tls_names: Vec::new(),
            extra_roots: Vec::new(),
            thim_json: None,
            accepted_measurements: Vec::new(),
            maa_token_lifetime: 8 * 3600,
            maa_issuer: None,
            faults: Faults::default(),
            kbs: kbs::KbsConfig::default(),
        }
    }
}

/// Calls the emulator served, by kind: tests count flights with these.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every request, whatever it asked for and whatever fault answered it.
    pub requests: AtomicU64,
    pub maa_attest: AtomicU64,
    pub releases: AtomicU64,
    pub tokens: AtomicU64,
}

impl Counters {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn maa(&self) -> u64 {
        self.maa_attest.load(Ordering::SeqCst)
    }

    pub fn release(&self) -> u64 {
        self.releases.load(Ordering::SeqCst)
    }
}

/// A key the emulated HSM holds, private material included.
struct StoredKey {
    jwk: crate::azure::jwk::Jwk,
    version: String,
    /// `attributes.exportable`: only exportable keys can be released, and only they carry a
    /// release policy (`policy` and `policy_b64` are `Some` exactly when this is true).
    exportable: bool,
    policy: Option<crate::azure::policy::ReleasePolicy>,
    policy_b64: Option<String>,
}

pub(crate) struct State {
    maa_key: RsaKeyPair,
    maa_kid: String,
    jwks: Jwks,
    signer: RsaKeyPair,
    signer_x5c: Vec<String>,
    trust: TrustStore,
    thim_json: Option<String>,
    accepted_measurements: Vec<[u8; 48]>,
    maa_token_lifetime: i64,
    maa_issuer: Option<String>,
    access_tokens: Mutex<HashMap<String, u64>>,
    keys: Mutex<HashMap<String, StoredKey>>,
    faults: RwLock<Faults>,
    counters: Arc<Counters>,
    kbs: Arc<kbs::Kbs>,
    blobs: Arc<blob::Blobs>,
}

/// A running emulator; dropping it does not stop it, `shutdown` does.
pub struct Running {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:<port>`: the base URL of every emulated service.
    pub url: String,
    /// The dev CA clients must trust (`--extra-ca`).
    pub ca_path: PathBuf,
    pub counters: Arc<Counters>,
    /// The emulated KBS: seed resources, change its policy, count its calls.
    pub kbs: Arc<kbs::Kbs>,
    /// The emulated blob storage: seed page blobs, read what was written.
    pub blobs: Arc<blob::Blobs>,
    state: Arc<State>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// `host:port`, the form endpoints are configured with.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self
            .state
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = faults;
    }

    /// Every access token IMDS and Entra ID issued so far: tests look for them where they must
    /// not appear (logs, error messages).
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.state
            .access_tokens
            .lock()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

/// Starts the emulator on `config.listen`.
pub async fn start(config: Config) -> Result<Running, Error> {
    let pki =
        pki::Pki::load_or_create_naming(&config.state_dir.join("emulator"), &config.tls_names)?;
    let maa_key = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| Error::Pki("MAA key generation failed".into()))?;
    let maa_spki = maa_key
        .public_key()
        .as_der()
        .map_err(|_| Error::Pki("MAA key encoding".into()))?;
    let maa_public = crate::azure::jwk::Jwk::from_rsa_spki(maa_spki.as_ref())
        .map_err(|e| Error::Pki(e.to_string()))?;
    let maa_kid = maa_public
        .thumbprint()
        .map_err(|e| Error::Pki(e.to_string()))?;
    let jwks = Jwks {
        keys: vec![JwksKey {
            kid: Some(maa_kid.clone()),
            kty: Some("RSA".into()),
            n: maa_public.n.clone(),
            e: maa_public.e.clone(),
            x5c: Vec::new(),
        }],
    };
    let counters = Arc::new(Counters::default());
    let kbs = Arc::new(kbs::Kbs::new(config.kbs));
    let blobs = Arc::new(blob::Blobs::default());
    let state = Arc::new(State {
        maa_key,
        maa_kid,
        jwks,
        signer: pki.signer,
        signer_x5c: pki.signer_x5c,
        trust: TrustStore::amd_and(config.extra_roots),
        thim_json: config.thim_json,
        accepted_measurements: config.accepted_measurements,
        maa_token_lifetime: config.maa_token_lifetime,
        maa_issuer: config.maa_issuer,
        access_tokens: Mutex::new(HashMap::new()),
        keys: Mutex::new(HashMap::new()),
        faults: RwLock::new(config.faults),
        counters: Arc::clone(&counters),
        kbs: Arc::clone(&kbs),
        blobs: Arc::clone(&blobs),
    });

    let tls = tls_config(pki.server_chain_der, pki.server_key_der)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(e.to_string()))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let router = handlers::router(Arc::clone(&state))
        .merge(kbs::router(Arc::clone(&state)))
        .merge(blob::router(Arc::clone(&state)));
    tokio::spawn(serve(listener, tls, router, Arc::clone(&state), stopped));
    Ok(Running {
        addr,
        url: format!("https://{addr}"),
        ca_path: pki.ca_path,
        counters,
        kbs,
        blobs,
        state,
        stop,
    })
}

fn tls_config(chain: Vec<Vec<u8>>, key: Vec<u8>) -> Result<Arc<rustls::ServerConfig>, Error> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Pki(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .map_err(|e| Error::Pki(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    state: Arc<State>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // `aasp dev` runs the emulator in its own process: connections here spend the descriptors
    // its gRPC server needs. A bounded number are served at once (the rest wait in the kernel's
    // backlog, holding no descriptor of ours) and a TLS handshake must finish in time.
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "emulator accept failed");
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls_stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let router = router.clone();
                    let dropped = state
                        .faults
                        .read()
                        .map(|f| f.draw().contains(&FaultKind::Drop))
                        .unwrap_or(false);
                    async move {
                        if dropped {
                            // A service error makes hyper reset the stream (HTTP/2) or close the
                            // connection (HTTP/1.1): the client sees the connection drop.
                            return Err(DroppedByFault);
                        }
                        use tower::ServiceExt;
                        let response = router.oneshot(request.map(axum::body::Body::new)).await;
                        Ok(response.unwrap_or_else(|never| match never {}))
                    }
                },
            );
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls_stream), service)
                    .await;
        });
    }
}

#[derive(Debug)]
struct DroppedByFault;

impl std::fmt::Display for DroppedByFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedByFault {}

/// Connections the emulator serves at once (aasp's own clients need a handful).
const MAX_CONNECTIONS: usize = 128;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Issued Entra/IMDS access tokens live this long.
const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 item 3 (cache growth): every IMDS/Entra token the emulator issued stayed in its
    /// map for good; in `aasp dev` a local request loop grew the process without bound.
    #[tokio::test]
    async fn issued_access_tokens_are_bounded_and_expired_ones_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let running = start(Config::new(dir.path().to_path_buf())).await.unwrap();
        let state = &running.state;
        let held = || state.access_tokens.lock().unwrap().len();
        state
            .access_tokens
            .lock()
            .unwrap()
            .insert("expired".into(), 1);
        for _ in 0..handlers::MAX_ACCESS_TOKENS + 50 {
            handlers::issue_access_token(state);
        }
        assert!(held() <= handlers::MAX_ACCESS_TOKENS, "{} held", held());
        assert!(!state.access_tokens.lock().unwrap().contains_key("expired"));
        // The newest token is still honoured.
        let newest = handlers::issue_access_token(state);
        assert!(state.access_tokens.lock().unwrap().contains_key(&newest));
        running.shutdown();
    }
}
