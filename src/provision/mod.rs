//! The secret flow: attest → MAA token → access token → secure key release → unwrap.
//!
//! `release(kms, key, maa)`: the transfer key's JWK set is the runtime data; the report binds its
//! SHA-256; the report and its chain go to MAA; the token and an access token go to the KMS; the
//! signed response is verified and the key unwrapped inside the TEE. Released keys and MAA tokens
//! are cached (TTL configurable, zero turns caching off; bounded; swept when expired) and
//! concurrent callers for the same key share one flight, and its error. A failure is never cached.
//!
//! Endpoints come from requests (annotations, REST bodies, resource URIs): each is parsed into a
//! `KeyRef` and checked against the allow-lists (`allow`) before any report, token or
//! connection; the check is here, where every path to a backend passes.
//!
//! Owns the flow, its caches and single-flight. Must not know transports (gRPC, REST).

pub mod allow;
pub mod cache;
pub mod decrypt;
pub mod kbs;
pub mod key_info;
mod kind;
pub mod layer;

pub use kind::ErrorKind;

use crate::azure::ckm::{TransferKey, WrapAlgorithm};
use crate::azure::identity::{resource_for_host, IdentityProvider};
use crate::azure::jwk::Jwk;
use crate::azure::kms::{KeyUrl, KmsClient};
use crate::azure::maa::{MaaClient, MaaToken};
use crate::azure::policy::normalize_authority;
use crate::azure::Secret;
use crate::http::{Endpoint, RetryPolicy};
use crate::snp::attester::{fetch_report, Attester};
use crate::snp::chain::{attest, ChainCache};
use crate::snp::evidence::Evidence;
use crate::snp::report::report_data_for_runtime;
use allow::{AllowList, Role};
use cache::{FlightCache, Lookup};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Snp(#[from] crate::snp::Error),
    #[error(transparent)]
    Azure(#[from] crate::azure::Error),
    /// The caller's request cannot be acted on (malformed packet, unknown key reference).
    #[error("{0}")]
    Invalid(String),
    /// This process has no transfer key to release keys to.
    #[error("no transfer key: {0}")]
    NoTransferKey(String),
    #[error(transparent)]
    Kbs(#[from] crate::kbs::Error),
    /// The request needs a backend this process was not configured with.
    #[error("{0}")]
    NotConfigured(String),
    /// A key reference or key-info file names no MAA, and no default was given. Servers take
    /// the default from `--maa-endpoint` / `AASP_MAA_ENDPOINT`; `aasp wrap` from `--maa`, and
    /// says so itself.
    #[error("{subject}, and no default MAA is configured (--maa-endpoint, or AASP_MAA_ENDPOINT)")]
    NoMaa { subject: String },
    /// The request names a backend host that is not on the allow-list.
    #[error("{0}")]
    NotAllowed(String),
    /// Too many distinct releases under way at once.
    #[error("busy: {0}")]
    Busy(String),
    /// The outcome of a flight this caller shared with others.
    #[error(transparent)]
    Shared(Arc<Error>),
    /// The process is shutting down: work it was asked for did not run.
    #[error("stopped: {0}")]
    Stopped(String),
}

impl Error {
    /// The error itself, seen through a shared flight.
    pub fn root(&self) -> &Error {
        match self {
            Error::Shared(inner) => inner.root(),
            other => other,
        }
    }
}

/// A request this module cannot act on, with what is wrong with it.
fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// A key a request named, parsed and validated: where it lives and who attests for it.
/// Backend-neutral for the services; the allow-lists are checked by `Provisioner` before use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyRef {
    /// A Managed HSM / Key Vault key, released with a token from this MAA.
    Azure { key: KeyUrl, maa: Endpoint },
}

impl KeyRef {
    /// The key `name` at KMS `kms` (`host[:port]` or `https://host[:port]`), attested by `maa`.
    pub fn azure(kms: &str, name: &str, maa: &str) -> Result<Self> {
        let key = KeyUrl::new(kms, name).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::from_key_url(key, maa)
    }

    /// A full key URL (`https://<kms>/keys/<name>[/<version>]`), attested by `maa`.
    pub fn azure_url(url: &str, maa: &str) -> Result<Self> {
        let key = KeyUrl::parse(url).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::from_key_url(key, maa)
    }

    /// A KMS URI that may carry `?maa=<host>` (the only parameter), for the key `name`;
    /// without one, `default_maa`.
    pub fn azure_uri(uri: &str, name: &str, default_maa: Option<&str>) -> Result<Self> {
        let (kms, url) = Endpoint::parse_url(uri).map_err(|e| Error::Invalid(e.to_string()))?;
        if !matches!(url.path(), "" | "/") {
            return Err(Error::Invalid(format!(
                "KMS URI {} must name a host only (and ?maa=), not a path",
                crate::http::quoted(uri)
            )));
        }
        let mut maa = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "maa" if maa.is_none() => maa = Some(v.into_owned()),
                _ => {
                    return Err(Error::Invalid(format!(
                        "KMS URI {}: the only parameter is one maa=<host>",
                        crate::http::quoted(uri)
                    )))
                }
            }
        }
        let maa = maa
            .or_else(|| default_maa.map(str::to_owned))
            .ok_or_else(|| Error::NoMaa {
                subject: format!("{} names no MAA (?maa=<host>)", crate::http::quoted(uri)),
            })?;
        let key = KeyUrl::at(kms, name, None).map_err(|e| Error::Invalid(e.to_string()))?;
        Self::from_key_url(key, &maa)
    }

    pub fn from_key_url(key: KeyUrl, maa: &str) -> Result<Self> {
        let maa = Endpoint::parse(maa).map_err(|e| Error::Invalid(format!("MAA {e}")))?;
        Ok(KeyRef::Azure { key, maa })
    }

    /// The key's name at its backend.
    pub fn name(&self) -> &str {
        match self {
            KeyRef::Azure { key, .. } => key.name(),
        }
    }

    /// Where the key lives.
    pub fn kms(&self) -> &Endpoint {
        match self {
            KeyRef::Azure { key, .. } => key.endpoint(),
        }
    }

    /// The Key Vault key URL (for operator tools that call the KMS themselves).
    pub fn key_url(&self) -> &KeyUrl {
        kms_key(self)
    }

    /// Who attests for it.
    pub fn maa(&self) -> &Endpoint {
        match self {
            KeyRef::Azure { maa, .. } => maa,
        }
    }
}

impl std::fmt::Display for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Azure { key, maa } => write!(f, "{key} (MAA {maa})"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A key released into the TEE. Its JWK zeroizes on drop and prints redacted.
pub struct ReleasedKey {
    pub key: KeyUrl,
    pub jwk: Jwk,
    /// The RSA private key, parsed on first use: PKCS#8 parsing with its key checks costs about
    /// a millisecond for RSA-3072, more than the decrypt itself.
    rsa: std::sync::OnceLock<aws_lc_rs::rsa::OaepPrivateDecryptingKey>,
}

impl std::fmt::Debug for ReleasedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedKey")
            .field("key", &self.key)
            .field("jwk", &self.jwk)
            .finish()
    }
}

impl ReleasedKey {
    pub fn new(key: KeyUrl, jwk: Jwk) -> Self {
        ReleasedKey {
            key,
            jwk,
            rsa: std::sync::OnceLock::new(),
        }
    }

    /// The released RSA key ready for OAEP decryption.
    pub fn rsa_private(&self) -> Result<&aws_lc_rs::rsa::OaepPrivateDecryptingKey> {
        if let Some(key) = self.rsa.get() {
            return Ok(key);
        }
        let unusable = || Error::Invalid("the released RSA key is not usable".into());
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&self.jwk.to_pkcs8()?)
            .map_err(|_| unusable())?;
        let oaep =
            aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(private).map_err(|_| unusable())?;
        // A concurrent first use may have parsed it too; either copy serves.
        let _ = self.rsa.set(oaep);
        self.rsa.get().ok_or_else(unusable)
    }
}

/// Counters of upstream work, for metrics and for tests that count flights.
#[derive(Debug, Default)]
pub struct Counters {
    /// Reports fetched to be sent to MAA.
    pub reports: AtomicU64,
    pub maa_calls: AtomicU64,
    pub release_calls: AtomicU64,
    pub cache_hits: AtomicU64,
}

#[derive(Clone)]
enum TransferKeyState {
    Generating,
    Ready(Arc<TransferKey>),
    Failed(String),
}

/// Entries each cache holds at most: ample for a pod's keys, small in memory (a key name is at
/// most 127 bytes, a host 253).
pub const CACHE_CAPACITY: usize = 1024;

pub struct Provisioner {
    attester: Arc<dyn Attester>,
    chains: Arc<ChainCache>,
    identity: Arc<IdentityProvider>,
    kms: Arc<KmsClient>,
    http: reqwest::Client,
    retry: RetryPolicy,
    /// Generated in the background from start-up and replaced by `rotate_transfer_key`; each
    /// release uses one snapshot for both its token and its unwrap.
    transfer_key: Arc<tokio::sync::watch::Sender<TransferKeyState>>,
    ttl: Duration,
    allow: AllowList,
    keys: FlightCache<KeyRef, Arc<ReleasedKey>>,
    tokens: FlightCache<(Endpoint, String), MaaToken>,
    /// The Trustee KBS backend, when one is configured (`with_kbs`).
    kbs: Option<Arc<crate::kbs::KbsClient>>,
    /// The Trustee attestation service of `GetToken("coco_as")`, when one is configured.
    coco_as: Option<Arc<crate::kbs::coco_as::CocoAsClient>>,
    /// Where layer-key decrypts run (`with_decrypt_threads`).
    decrypt: decrypt::DecryptPool,
    /// The key of the last annotation packet unwrapped, parsed (see `layer`).
    last_packet_key: std::sync::Mutex<Option<layer::PacketKey>>,
    /// Calls in `release`, for the decrypt's placement (see `layer`).
    releasing: AtomicUsize,
    pub counters: Counters,
}

pub struct ProvisionerParts {
    pub attester: Arc<dyn Attester>,
    pub chains: Arc<ChainCache>,
    pub identity: Arc<IdentityProvider>,
    pub kms: Arc<KmsClient>,
    pub http: reqwest::Client,
    pub retry: RetryPolicy,
    pub cache_ttl: Duration,
    /// The KMS and MAA hosts credentials may go to.
    pub allow: AllowList,
}

/// Counts a call in [`Provisioner::release`] until dropped.
struct Releasing<'a>(&'a AtomicUsize);

impl<'a> Releasing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Releasing(count)
    }
}

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Provisioner {
    /// Starts generating the transfer key on its own thread: RSA key generation takes tens to
    /// hundreds of milliseconds, which start-up (health SERVING) should not wait for. It is
    /// ready long before the first release in practice; a release that comes sooner waits.
    pub fn new(parts: ProvisionerParts) -> Result<Self> {
        let transfer_key = Arc::new(tokio::sync::watch::Sender::new(
            TransferKeyState::Generating,
        ));
        let generated = Arc::clone(&transfer_key);
        std::thread::Builder::new()
            .name("transfer-key".into())
            .spawn(move || {
                generated.send_replace(match TransferKey::generate() {
                    Ok(key) => TransferKeyState::Ready(Arc::new(key)),
                    Err(e) => TransferKeyState::Failed(e.to_string()),
                });
            })
            .map_err(|e| Error::NoTransferKey(format!("cannot start its thread: {e}")))?;
        Ok(Provisioner {
            attester: parts.attester,
            chains: parts.chains,
            identity: parts.identity,
            kms: parts.kms,
            http: parts.http,
            retry: parts.retry,
            transfer_key,
            ttl: parts.cache_ttl,
            allow: parts.allow,
            keys: FlightCache::new(parts.cache_ttl, CACHE_CAPACITY),
            tokens: FlightCache::new(parts.cache_ttl, CACHE_CAPACITY),
            kbs: None,
            coco_as: None,
            decrypt: decrypt::DecryptPool::per_cpu(),
            last_packet_key: std::sync::Mutex::new(None),
            releasing: AtomicUsize::new(0),
            counters: Counters::default(),
        })
    }

    /// At most `threads` layer-key decrypts at once, on the blocking pool (or in place for a
    /// caller alone in its task); 0 runs them all inline, in the task that asked. The default
    /// is one per CPU (see `decrypt`).
    pub fn with_decrypt_threads(mut self, threads: usize) -> Self {
        self.decrypt = decrypt::DecryptPool::new(threads);
        self
    }

    /// Layer-key decrypts that ran in place, in the caller's task (see `decrypt`).
    pub fn decrypts_in_place(&self) -> u64 {
        self.decrypt.in_place_total()
    }

    pub fn attester(&self) -> &Arc<dyn Attester> {
        &self.attester
    }

    pub fn chains(&self) -> &Arc<ChainCache> {
        &self.chains
    }

    /// A client of the MAA at `endpoint`, once the allow-list admits it.
    fn maa(&self, endpoint: &Endpoint) -> Result<MaaClient> {
        self.check(Role::Maa, endpoint)?;
        Ok(MaaClient::at(
            self.http.clone(),
            endpoint.clone(),
            self.retry,
        ))
    }

    fn check(&self, role: Role, endpoint: &Endpoint) -> Result<()> {
        self.allow.check(role, endpoint).map_err(Error::NotAllowed)
    }

    /// Checks both of a key's endpoints: nothing is attested, fetched or sent for a key whose
    /// KMS or MAA is not allowed.
    pub fn check_key(&self, key: &KeyRef) -> Result<()> {
        self.check(Role::Kms, key.kms())?;
        self.check(Role::Maa, key.maa())
    }

    /// Parses an MAA endpoint a request named and checks it against the allow-list.
    pub fn maa_endpoint(&self, text: &str) -> Result<Endpoint> {
        let endpoint = Endpoint::parse(text).map_err(|e| Error::Invalid(format!("MAA {e}")))?;
        self.check(Role::Maa, &endpoint)?;
        Ok(endpoint)
    }

    /// Entries held by the released-key and MAA-token caches (values and flights).
    pub fn cached_entries(&self) -> usize {
        self.keys.len() + self.tokens.len()
    }

    /// Drops expired keys and tokens now (the background sweep calls this).
    pub fn sweep_caches(&self) {
        self.keys.sweep();
        self.tokens.sweep();
    }

    /// Sweeps the caches in the background, so that a released key leaves memory within about
    /// half a TTL after it expires, whether or not anyone asks for it again.
    pub fn spawn_cache_sweeper(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if self.ttl.is_zero() {
            return None;
        }
        let every = (self.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let this = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(provisioner) = this.upgrade() else {
                    return;
                };
                provisioner.sweep_caches();
            }
        }))
    }

    /// Evidence binding `runtime_data`: the report (report_data = SHA-256(runtime_data)) and its
    /// chain, with the TCB refresh rule applied.
    pub async fn evidence(&self, runtime_data: &[u8]) -> Result<Evidence> {
        let attested = attest(
            &self.attester,
            &self.chains,
            report_data_for_runtime(runtime_data),
        )
        .await?;
        Ok(Evidence {
            report: attested.raw,
            cert_chain_pem: attested.endorsement.chain.to_pem(),
            uvm_endorsements: attested.endorsement.uvm_reference_info.clone(),
        })
    }

    /// Confidential Containers SNP evidence (JSON) for a report binding `report_data` as given:
    /// `{"attestation_report": .., "cert_chain": [..] | null}`, the shape Trustee's verifier and
    /// the upstream attestation agent use. The chain comes from the configured source with the
    /// TCB refresh rule; when the source cannot be reached the chain is `null`, as upstream sends
    /// when the host supplies no certificates (the verifier then fetches the VCEK itself).
    pub async fn coco_evidence(&self, report_data: [u8; 64]) -> Result<Vec<u8>> {
        coco_evidence_of(&self.attester, &self.chains, report_data).await
    }

    /// An MAA token for `runtime_data` (not cached: each caller's data differs).
    pub async fn token_for(&self, maa_endpoint: &str, runtime_data: &[u8]) -> Result<MaaToken> {
        let endpoint = self.maa_endpoint(maa_endpoint)?;
        self.token_at(&endpoint, runtime_data).await
    }

    async fn token_at(&self, endpoint: &Endpoint, runtime_data: &[u8]) -> Result<MaaToken> {
        // Before any report: a refused endpoint costs nothing.
        let maa = self.maa(endpoint)?;
        // MAA takes it as dataType JSON and answers anything else with a 400 that cannot be told
        // apart from a refused report; the caller's mistake is named here instead.
        serde_json::from_slice::<serde::de::IgnoredAny>(runtime_data).map_err(|e| {
            Error::Invalid(format!(
                "runtime data must be a JSON document (MAA binds it as JSON): {e}"
            ))
        })?;
        self.counters.reports.fetch_add(1, Ordering::Relaxed);
        let evidence = self.evidence(runtime_data).await?;
        self.counters.maa_calls.fetch_add(1, Ordering::Relaxed);
        let token = maa.attest(&evidence, runtime_data).await?;
        // A token another issuer signed is not used: something other than the MAA asked answered.
        let claims = token.unverified_claims()?;
        let issuer = claims
            .get("iss")
            .and_then(|i| i.as_str())
            .unwrap_or_default();
        if normalize_authority(issuer) != normalize_authority(maa.authority()) {
            return Err(Error::Azure(crate::azure::Error::Jws(format!(
                "the MAA token was issued by {issuer:?}, not by the configured authority {}",
                maa.authority()
            ))));
        }
        Ok(token)
    }

    /// The current transfer key, once generated.
    pub async fn transfer_key_ready(&self) -> Result<Arc<TransferKey>> {
        let mut state = self.transfer_key.subscribe();
        let settled = state
            .wait_for(|s| !matches!(s, TransferKeyState::Generating))
            .await
            .map(|s| s.clone());
        match settled {
            Ok(TransferKeyState::Ready(key)) => Ok(key),
            Ok(TransferKeyState::Failed(e)) => Err(Error::NoTransferKey(e)),
            Ok(TransferKeyState::Generating) | Err(_) => {
                Err(Error::NoTransferKey("its generation stopped".into()))
            }
        }
    }

    /// Replaces the transfer key with a freshly generated one (slow: call it off the request
    /// path, as `spawn_transfer_key_rotation` does). Tokens bound to the old key are not reused.
    pub fn rotate_transfer_key(&self) -> Result<()> {
        let fresh = Arc::new(TransferKey::generate()?);
        self.transfer_key
            .send_replace(TransferKeyState::Ready(fresh));
        Ok(())
    }

    /// Rotates the transfer key every `every`, generating the new key on the blocking pool.
    pub fn spawn_transfer_key_rotation(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(provisioner) = this.upgrade() else {
                    return;
                };
                match tokio::task::spawn_blocking(move || provisioner.rotate_transfer_key()).await {
                    Ok(Ok(())) => tracing::info!("transfer key rotated"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "transfer key rotation failed; keeping the old key")
                    }
                    Err(e) => tracing::warn!(error = %e, "transfer key rotation task failed"),
                }
            }
        })
    }

    /// The release token: runtime data = the transfer key's JWK set. Cached per MAA and transfer
    /// key until shortly before it expires (and at most the TTL).
    async fn release_token(&self, maa: &Endpoint, transfer_key: &TransferKey) -> Result<MaaToken> {
        let kid = transfer_key.public_jwk().kid.clone().unwrap_or_default();
        let (token, _) = self
            .tokens
            .get_or_run(
                &(maa.clone(), kid),
                |token| token.expires_at > unix_now() + 60,
                || async move {
                    let runtime_data = transfer_key.runtime_data();
                    self.token_at(maa, &runtime_data).await
                },
            )
            .await?;
        Ok(token)
    }

    /// Secure key release of `key`; concurrent callers share one flight and its outcome.
    pub async fn release(&self, key: &KeyRef) -> Result<Arc<ReleasedKey>> {
        Ok(self.release_looked_up(key).await?.0)
    }

    /// [`release`](Self::release), and whether the key came from the cache.
    async fn release_looked_up(&self, key: &KeyRef) -> Result<(Arc<ReleasedKey>, Lookup)> {
        // Refused before the cache: a refused key takes no entry, report or token.
        self.check_key(key)?;
        let _releasing = Releasing::start(&self.releasing);
        let (released, lookup) = self
            .keys
            .get_or_run(
                key,
                |_| true,
                // Boxed: the release (attestation, token, key release over HTTPS) is a future of
                // kilobytes that every warm call would otherwise carry, and copy as it moves.
                || {
                    Box::pin(async {
                        let jwk = self
                            .release_uncached(key, None)
                            .instrument(
                                tracing::info_span!("release", key = %crate::echo::echo(key)),
                            )
                            .await?;
                        Ok(Arc::new(ReleasedKey::new(kms_key(key).clone(), jwk)))
                    })
                },
            )
            .await?;
        let hit = lookup == Lookup::Hit;
        if hit {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        crate::metrics::record_cache(hit);
        Ok((released, lookup))
    }

    /// A release authorized by the caller's own access token. Not cached or shared: another
    /// caller's token must not stand in for this one's.
    pub async fn release_with_access(
        &self,
        key: &KeyRef,
        access: &Secret,
    ) -> Result<Arc<ReleasedKey>> {
        self.check_key(key)?;
        let jwk = self
            .release_uncached(key, Some(access))
            .instrument(tracing::info_span!("release", key = %crate::echo::echo(key)))
            .await?;
        Ok(Arc::new(ReleasedKey::new(kms_key(key).clone(), jwk)))
    }

    /// One release; when the KMS refuses our own access token (401/403), the cached access and
    /// MAA tokens are dropped and the release tried once more with fresh ones (a token revoked
    /// or issued before a role assignment would otherwise fail until it expires).
    async fn release_uncached(&self, key: &KeyRef, access: Option<&Secret>) -> Result<Jwk> {
        let _in_flight = crate::metrics::release_started();
        let transfer_key = self
            .transfer_key_ready()
            .instrument(tracing::debug_span!("transfer_key"))
            .await?;
        match self.release_once(key, access, &transfer_key).await {
            Err(e) if access.is_none() && refused_credentials(&e) => {
                tracing::info!(error = %e, "the KMS refused the access token; fetching fresh tokens once");
                self.identity
                    .forget(resource_for_host(kms_key(key).host()))
                    .await;
                let kid = transfer_key.public_jwk().kid.clone().unwrap_or_default();
                self.tokens.forget(&(key.maa().clone(), kid));
                self.release_once(key, access, &transfer_key).await
            }
            other => other,
        }
    }

    async fn release_once(
        &self,
        key: &KeyRef,
        access: Option<&Secret>,
        transfer_key: &TransferKey,
    ) -> Result<Jwk> {
        let url = kms_key(key);
        let token = self.release_token(key.maa(), transfer_key).await?;
        // The token for the resource of the host this request connects to, and sent only there.
        let access = match access {
            Some(given) => given.clone(),
            None => self.identity.token(resource_for_host(url.host())).await?,
        };
        self.counters.release_calls.fetch_add(1, Ordering::Relaxed);
        let wrap = WrapAlgorithm::CkmRsaAesKeyWrap;
        Ok(self
            .kms
            .release(url, &token.jwt, &access, transfer_key, wrap)
            .await?)
    }
}

/// The Key Vault key of a reference.
fn kms_key(key: &KeyRef) -> &KeyUrl {
    match key {
        KeyRef::Azure { key, .. } => key,
    }
}

/// The KMS refused the credentials (not the attestation: MAA refusals name MAA).
fn refused_credentials(e: &Error) -> bool {
    matches!(
        e.root(),
        Error::Azure(crate::azure::Error::Refused {
            service: "KMS",
            status: 401 | 403,
            ..
        })
    )
}
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// [`Provisioner::coco_evidence`] for an attester and chain source (the KBS backend's evidence
/// source holds the same two).
pub(crate) async fn coco_evidence_of(
    attester: &Arc<dyn Attester>,
    chains: &Arc<ChainCache>,
    report_data: [u8; 64],
) -> Result<Vec<u8>> {
    use crate::snp::evidence::coco_evidence_json;
    match attest(attester, chains, report_data).await {
        Ok(attested) => Ok(coco_evidence_json(
            &attested.raw,
            Some(&attested.endorsement.chain),
        )?),
        Err(crate::snp::Error::ChainSource {
            source_name,
            reason,
        }) => {
            tracing::warn!(
                source = %source_name,
                %reason,
                "no certificate chain for the CoCo evidence; sending cert_chain null"
            );
            let (_, raw) = fetch_report(attester, report_data).await?;
            Ok(coco_evidence_json(&raw, None)?)
        }
        Err(e) => Err(e.into()),
    }
}
