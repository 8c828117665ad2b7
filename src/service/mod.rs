//! The gRPC surface: ocicrypt keyprovider (both service names), the confidential-containers
//! attestation agent, the old Kata getresource API, gRPC health and reflection — every service on
//! every listener.
//!
//! Each protocol is a file whose handlers decode the request, call `provision`/`snp`, and encode
//! the reply; errors become statuses in `error.rs` only. Must not know Azure's wire formats.

pub mod any_authority;
pub mod attestation_agent;
pub mod codec;
pub mod conn;
pub mod error;
pub mod getresource;
mod held_writes;
pub mod keyprovider;
pub mod rest;
pub mod secret_json;
pub mod ttrpc;
pub mod unix_socket;

use crate::proto;
use crate::provision::Provisioner;
use error::ServiceError;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the services work with.
pub struct Backend {
    pub provisioner: Arc<Provisioner>,
    /// The `<name>-info.json` key-info files WrapKey resolves key references with.
    pub keys: crate::provision::key_info::KeyInfos,
    /// MAA used when a request names none (GetToken, GetResource without `?maa=`).
    pub default_maa: Option<String>,
    /// Provider names accepted in ocicrypt parameters besides `attestation-agent`.
    pub provider_names: Vec<String>,
    /// Set once the attester and certificate chain answered (health SERVING); the REST
    /// `/status` says "Status NOT OK" until then, as the SKR sidecar does before it is set up.
    pub ready: std::sync::atomic::AtomicBool,
    /// Verify the server's own report (and these requirements) before health says SERVING.
    pub self_check: Option<SelfCheck>,
}

/// What the server demands of its own report before it serves (`aasp serve --self-check`):
/// signature and chain to `trust`, plus `requirements` (minimum TCB, VMPL, SMT, migration agent).
#[derive(Debug, Clone)]
pub struct SelfCheck {
    pub trust: crate::snp::verify::TrustStore,
    pub requirements: crate::snp::verify::Requirements,
}

impl Backend {
    fn default_maa(&self) -> Result<&str, ServiceError> {
        self.default_maa
            .as_deref()
            .ok_or_else(|| ServiceError::invalid("no MAA endpoint is configured (--maa-endpoint)"))
    }
}

/// No RPC runs longer than this (nor past the caller's `grpc-timeout`): upstream retries are
/// bounded, and this bounds the rest.
pub const RPC_DEADLINE: Duration = Duration::from_secs(60);

/// Runs one RPC: a span with the method, and one log line with its status and duration (never
/// its payload); the error becomes a status here.
pub async fn rpc<T>(
    method: &'static str,
    work: impl Future<Output = Result<T, ServiceError>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    use tracing::Instrument;
    let span = tracing::info_span!("rpc", method);
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    // Whole microseconds: a float of milliseconds logs as 0.00043099999999999996.
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _enter = span.enter();
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    crate::metrics::record_rpc(
        method,
        usize::try_from(code as i32).unwrap_or(usize::MAX),
        started.elapsed(),
    );
    match result {
        Ok(reply) => {
            tracing::info!(status = "OK", elapsed_us, "rpc done");
            Ok(tonic::Response::new(reply))
        }
        Err(e) => {
            let status = tonic::Status::from(e);
            // `detail`, not `message`: that key is the event's own text in JSON logs.
            tracing::warn!(status = ?status.code(), detail = status.message(), elapsed_us, "rpc failed");
            Err(status)
        }
    }
}

/// A listener: TCP address or Unix socket path (`unix:///path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err("unix:// needs a socket path".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        // `localhost:PORT` is loopback by definition: 127.0.0.1, never a resolver's answer.
        if let Some(port) = s.strip_prefix("localhost:") {
            return port
                .parse::<u16>()
                .map(|port| Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], port))))
                .map_err(|_| format!("{s:?}: {port:?} is not a port number"));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            format!("{s:?} is neither host:port (an IP address or localhost) nor unix:///path")
        })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Server limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Calls running at once (health and reflection excepted); more wait for a permit.
    pub concurrency: usize,
    /// A request's body must have arrived within this long (it holds no permit meanwhile).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            concurrency: 256,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// Every service as one axum router (tonic's routes), with limits applied.
pub fn grpc_router(
    backend: Arc<Backend>,
    limits: &Limits,
) -> (axum::Router, tonic_health::server::HealthReporter) {
    use proto::attestation_agent::attestation_agent_service_server::AttestationAgentServiceServer;
    use proto::getresource::get_resource_service_server::GetResourceServiceServer;
    use proto::key_provider::key_provider_service_server::KeyProviderServiceServer as NewKeyProviderServer;
    use proto::keyprovider::key_provider_service_server::KeyProviderServiceServer as OldKeyProviderServer;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let max = limits.max_message_bytes;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(health)
        .add_service(
            OldKeyProviderServer::new(keyprovider::Aasp(Arc::clone(&backend)))
                .max_decoding_message_size(max),
        )
        .add_service(
            NewKeyProviderServer::new(keyprovider::Sidecar(Arc::clone(&backend)))
                .max_decoding_message_size(max),
        )
        .add_service(
            AttestationAgentServiceServer::new(attestation_agent::Agent(Arc::clone(&backend)))
                .max_decoding_message_size(max),
        )
        .add_service(
            GetResourceServiceServer::new(getresource::Resources(Arc::clone(&backend)))
                .max_decoding_message_size(max),
        );
    if let Ok(v1) = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        routes.add_service(v1);
    }
    if let Ok(v1alpha) = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
    {
        routes.add_service(v1alpha);
    }
    // The gRPC frame: 5 bytes of header, then the message; tonic refuses a larger message with
    // OUT_OF_RANGE, and so does the body stage for a larger body. The stage's deadline covers
    // the body, the wait for a permit and the call.
    let router = routes
        .routes()
        .into_axum_router()
        .layer(conn::RequestStage::new(
            limits.concurrency,
            max.saturating_add(5),
            limits.body_timeout,
            conn::Protocol::Grpc,
        ));
    (router, health_reporter)
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The names of every served gRPC service, as health and reflection list them.
pub const SERVICE_NAMES: [&str; 4] = [
    "keyprovider.KeyProviderService",
    "key_provider.KeyProviderService",
    "attestation_agent.AttestationAgentService",
    "getresource.GetResourceService",
];

/// Marks the services SERVING once the attester and the certificate chain answer, retrying until
/// they do: until then a pod's readiness probe keeps traffic away. Ends, silently, once `server`
/// says stop or its sender is gone: the server it reports for has stopped or was dropped.
pub async fn report_readiness(
    backend: Arc<Backend>,
    health: tonic_health::server::HealthReporter,
    mut server: tokio::sync::watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    for name in SERVICE_NAMES.iter().chain(std::iter::once(&"")) {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = tokio::select! {
            biased;
            _ = server.wait_for(|stop| *stop) => return,
            attempt = ready(&backend) => attempt,
        };
        match attempt {
            Ok(()) => break,
            // A command that fails after starting its server drops it and returns; a check
            // already running then meets the runtime's shutdown (the attester's blocking task
            // cancelled) and failed for that alone: nobody is left to tell.
            Err(_) if *server.borrow() || server.has_changed().is_err() => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "not ready: attester or certificate chain unavailable, or the self-check failed");
                tokio::select! {
                    biased;
                    _ = server.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(delay) => {}
                }
                // Up to 30 s apart: a chain source that keeps failing (or a host answering
                // garbage) is not asked again in a hot loop.
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    for name in SERVICE_NAMES.iter().chain(std::iter::once(&"")) {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    backend
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!("attester and certificate chain ready: SERVING");
}

/// Whether the attester and chain answer and, with a self-check, whether the server's own
/// report verifies and meets the requirements: a platform below them never serves keys.
pub async fn ready(backend: &Backend) -> Result<(), String> {
    let Some(check) = &backend.self_check else {
        return backend
            .provisioner
            .evidence(b"")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    };
    let verification = crate::snp::verify::self_check(
        backend.provisioner.attester(),
        backend.provisioner.chains(),
        &check.trust,
        &check.requirements,
    )
    .await
    .map_err(|e| e.to_string())?;
    verification
        .into_result()
        .map_err(|e| format!("self-check: {e}"))
}

/// A bound listener, ready to serve.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Bound {
    /// Binds `listen`. A Unix socket is created owner-only (0600): only the pod's own user may
    /// ask for keys; see [`unix_socket`] for what is never replaced.
    pub async fn bind(listen: &Listen) -> std::io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                let listener = unix_socket::bind_unix_socket(path)?;
                listener.set_nonblocking(true)?;
                Ok(Bound::Unix(
                    tokio::net::UnixListener::from_std(listener)?,
                    path.clone(),
                ))
            }
        }
    }

    /// What clients connect to (the real port when bound to port 0).
    pub fn local(&self) -> Listen {
        match self {
            Bound::Tcp(l) => l
                .local_addr()
                .map(Listen::Tcp)
                .unwrap_or(Listen::Tcp(SocketAddr::from(([0, 0, 0, 0], 0)))),
            Bound::Unix(_, path) => Listen::Unix(path.clone()),
        }
    }

    /// Serves until `shutdown` resolves, then lets in-flight calls finish; with the gRPC
    /// listeners' connection limits.
    pub async fn serve(
        self,
        router: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(router, conn::ConnectionLimits::grpc(), shutdown)
            .await
    }

    /// [`Bound::serve`] with other connection limits (REST, metrics).
    pub async fn serve_with(
        self,
        router: axum::Router,
        limits: conn::ConnectionLimits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Bound::Tcp(listener) => conn::serve(listener, router, limits, shutdown).await,
            Bound::Unix(listener, path) => {
                let result = conn::serve(listener, router, limits, shutdown).await;
                unix_socket::remove_unix_socket(&path);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_unix_listener_never_replaces_a_file_nor_steals_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("precious");
        std::fs::write(&file, b"data").unwrap();
        assert!(Bound::bind(&Listen::Unix(file.clone())).await.is_err());
        assert_eq!(std::fs::read(&file).ok().as_deref(), Some(&b"data"[..]));

        let socket = Listen::Unix(dir.path().join("aasp.sock"));
        let first = Bound::bind(&socket).await;
        assert!(first.is_ok());
        assert!(
            Bound::bind(&socket).await.is_err(),
            "a live socket was taken over"
        );
        drop(first);
        assert!(
            Bound::bind(&socket).await.is_ok(),
            "a stale socket is replaced"
        );
    }

    #[test]
    fn localhost_listens_on_loopback() {
        assert_eq!(
            "localhost:50000".parse::<Listen>().unwrap(),
            Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 50000)))
        );
        assert!("localhost:x".parse::<Listen>().is_err());
        assert!("example.com:50000".parse::<Listen>().is_err());
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "5x", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
