//! Helpers shared by the integration tests: fixture paths and one simulator per test binary
//! (its RSA keys are the expensive part).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/snp")
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A valid hardware vector from `tests/data/snp` (see its INDEX.md for sources).
pub struct Vector {
    pub name: &'static str,
    pub signer_file: &'static str,
    pub verify_at: u64,
}

pub const VALID_VECTORS: [(&str, &str); 6] = [
    ("milan-go-sev-guest", "vcek.der"),
    ("milan-trustee", "vcek.der"),
    ("milan-virtee", "vcek.der"),
    ("milan-aci-sidecar", "vcek.der"),
    ("genoa-azure", "vcek.der"),
    ("milan-vlek-trustee", "vlek.der"),
];

pub fn vectors() -> Vec<Vector> {
    VALID_VECTORS
        .iter()
        .map(|(name, signer_file)| {
            let meta: serde_json::Value =
                serde_json::from_slice(&read(&format!("{name}/meta.json"))).unwrap();
            let at = format!("{}T00:00:00Z", meta["verify_at"].as_str().unwrap());
            let at =
                time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                    .unwrap();
            Vector {
                name,
                signer_file,
                verify_at: at.unix_timestamp() as u64,
            }
        })
        .collect()
}

/// A simulator state directory created once for the whole test binary.
pub fn sim_state_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf();
    // Creating it once up front keeps concurrent tests from racing on key generation.
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        aasp::snp::sim::Simulated::open(&aasp::snp::sim::SimOptions {
            state_dir: dir.clone(),
            ..Default::default()
        })
        .unwrap();
    });
    dir
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Serves `router` on an ephemeral loopback port; the server lives as long as the runtime.
pub async fn serve(router: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// The attestation agent's ttrpc service, as guest-components names it.
pub const AA_SERVICE: &str = "attestation_agent.AttestationAgentService";

/// One unary ttrpc call, as a generated client stub makes it (prost messages over the raw
/// payload): the reply, or the status the server answered. A transport failure fails the test.
pub async fn ttrpc_call<Req: prost::Message, Resp: prost::Message + Default>(
    client: &ttrpc::r#async::Client,
    service: &str,
    method: &str,
    request: &Req,
) -> Result<Resp, ttrpc::Status> {
    use ttrpc::proto::RequestInit;
    let mut req =
        ttrpc::Request::init_request(service.into(), method.into(), 60_000_000_000, Vec::new());
    req.set_payload(request.encode_to_vec());
    match client.request(req).await {
        Ok(reply) => Ok(Resp::decode(reply.payload.as_slice()).unwrap()),
        Err(ttrpc::Error::RpcStatus(status)) => Err(status),
        Err(other) => panic!("{service}/{method}: transport error {other:?}"),
    }
}

/// The agent's GetTeeType answer, over ttrpc: the first call kata-agent's peers make.
pub async fn aa_tee_type(client: &ttrpc::r#async::Client) -> String {
    let reply: aasp::proto::attestation_agent::GetTeeTypeResponse = ttrpc_call(
        client,
        AA_SERVICE,
        "GetTeeType",
        &aasp::proto::attestation_agent::GetTeeTypeRequest {},
    )
    .await
    .unwrap();
    reply.tee
}

/// The `aasp dev` stack (emulator, simulator, demo keys, gRPC server) in this process on
/// ephemeral loopback ports; its state directory lives as long as it does.
pub struct Dev {
    pub stack: aasp::cli::dev::DevStack,
    _dir: tempfile::TempDir,
}

impl Dev {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listen = [aasp::service::Listen::Tcp("127.0.0.1:0".parse().unwrap())];
        let stack = aasp::cli::dev::start(&listen, "127.0.0.1:0".parse().unwrap(), dir.path())
            .await
            .unwrap();
        Dev { stack, _dir: dir }
    }

    /// `http://host:port` of the first gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.stack.server.listeners[0])
    }
}

impl std::ops::Deref for Dev {
    type Target = aasp::cli::dev::DevStack;

    fn deref(&self) -> &Self::Target {
        &self.stack
    }
}

/// Values a client could put in any JSON field: null, booleans, numbers, text, base64-like text.
pub fn json_scalar() -> impl proptest::strategy::Strategy<Value = serde_json::Value> + Clone {
    use proptest::prelude::*;
    use serde_json::Value;
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[A-Za-z0-9+/=]{0,60}".prop_map(Value::from),
    ]
}

/// A request body a client could send: `shaped` (the right fields, arbitrary values), arbitrary
/// text, or byte noise.
pub fn body_or_noise(
    shaped: impl proptest::strategy::Strategy<Value = Vec<u8>>,
) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        shaped,
        ".{0,200}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..300)
    ]
}

/// Logs captured process-wide while a test holds the capture. The tests share one process, so
/// one global subscriber is installed once with a reloadable layer; a capturing test swaps its
/// writer in and out, and capturing tests run one at a time. Other tests' logs written meanwhile
/// land in the same buffer, which only widens what the capturing tests check.
pub struct LogCapture {
    buffer: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

#[derive(Clone)]
struct SharedWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type CaptureLayer =
    Option<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>>;
type CaptureFilter = tracing_subscriber::filter::LevelFilter;
type Layered = tracing_subscriber::layer::Layered<
    tracing_subscriber::reload::Layer<CaptureLayer, tracing_subscriber::Registry>,
    tracing_subscriber::Registry,
>;

struct CaptureHandles {
    layer: tracing_subscriber::reload::Handle<CaptureLayer, tracing_subscriber::Registry>,
    // A global level filter: per-layer filters cannot be reloaded.
    filter: tracing_subscriber::reload::Handle<CaptureFilter, Layered>,
}

fn capture_handles() -> &'static CaptureHandles {
    use tracing_subscriber::layer::SubscriberExt;
    static HANDLES: OnceLock<CaptureHandles> = OnceLock::new();
    HANDLES.get_or_init(|| {
        let (layer, layer_handle) = tracing_subscriber::reload::Layer::new(None);
        let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(CaptureFilter::OFF);
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(layer).with(filter),
        )
        .unwrap();
        CaptureHandles {
            layer: layer_handle,
            filter: filter_handle,
        }
    })
}

/// Captures every log line at `level` and above (JSON lines when `json`) until dropped.
pub async fn capture_logs(level: tracing::Level, json: bool) -> LogCapture {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = SharedWriter(buffer.clone());
    let fmt = tracing_subscriber::fmt::layer().with_writer(move || writer.clone());
    let layer: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        if json {
            Box::new(fmt.json())
        } else {
            Box::new(fmt)
        };
    let handles = capture_handles();
    handles.layer.reload(Some(layer)).unwrap();
    handles
        .filter
        .reload(CaptureFilter::from_level(level))
        .unwrap();
    LogCapture {
        buffer,
        _turn: turn,
    }
}

impl LogCapture {
    /// Everything captured so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.buffer.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.buffer.lock().unwrap().len()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        let handles = capture_handles();
        let _ = handles.filter.reload(CaptureFilter::OFF);
        let _ = handles.layer.reload(None);
    }
}

/// Asks `aasp health --target TARGET` every 100 ms, up to `tries` times, until `done` accepts
/// the answer or `server` has exited; returns the last answer.
pub fn health_until(
    target: &str,
    server: &mut std::process::Child,
    tries: usize,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut answer = String::new();
    for _ in 0..tries {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aasp"))
            .args(["health", "--target", target])
            .output()
            .unwrap();
        answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if done(&answer) || server.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    answer
}
