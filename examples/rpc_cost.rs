//! Server CPU per call of aasp against its floor, measured side by side in one run.
//!
//! Starts `aasp serve --attester sim` (gRPC on TCP, ttrpc on a Unix socket, an offline RSA-3072
//! key in its keys directory) and `bare_server` (the same tonic/hyper/ttrpc, no middleware), then
//! for each round, RPC, concurrency and server in turn drives one connection for `--seconds`:
//! gRPC with h2load (`-c 1 -m N`), ttrpc with this process's own ttrpc client (N calls in flight on
//! one connection). CPU per call is the server's utime + stime (`/proc/PID/stat`) over the calls
//! that succeeded; aasp's own `aasp_rpc_requests_total{status="Ok"}` must agree with the client.
//!
//! Ratios, per round: SayHello aasp / SayHello bare; WrapKey aasp / (RSA-OAEP encrypt with the
//! same parsed key, timed here over 20,000 calls + SayHello bare), and aasp / WrapKey bare (which does exactly that
//! encrypt inside an RPC).
//!
//! ```text
//! cargo build --release --bin aasp --example bare_server --example rpc_cost
//! target/release/examples/rpc_cost --rounds 3 --seconds 5
//! ```

#[path = "common/process_ticks.rs"]
mod process_ticks;
use process_ticks::cpu_ticks;

use aasp::proto::keyprovider::{HelloRequest, KeyProviderKeyWrapProtocolInput};
use aasp::provision::layer::{spki_to_pem, KeyInfo};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256,
};
use aws_lc_rs::signature::KeyPair as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use prost::Message;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ttrpc::proto::RequestInit;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "target/release/aasp")]
    aasp: PathBuf,
    #[arg(long, default_value = "target/release/examples/bare_server")]
    bare: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls in flight on the one connection (h2load -m; ttrpc calls at once).
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    streams: Vec<usize>,
    /// Skip the ttrpc transport.
    #[arg(long)]
    no_ttrpc: bool,
    /// State, keys and sockets (recreated).
    #[arg(long, default_value = "target/bench-rpc")]
    work_dir: PathBuf,
}

const KEY_NAME: &str = "bench-rsa";
const SERVICE: &str = "keyprovider.KeyProviderService";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    SayHello,
    WrapKey,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::SayHello => "SayHello",
            Rpc::WrapKey => "WrapKey",
        }
    }

    /// The protobuf request: the same bytes for both servers and both transports.
    fn message(self) -> Vec<u8> {
        match self {
            Rpc::SayHello => HelloRequest {
                name: "load".into(),
            }
            .encode_to_vec(),
            Rpc::WrapKey => {
                let recipient = STANDARD.encode(format!("aasp:{KEY_NAME}"));
                let input = serde_json::json!({"op":"keywrap","keywrapparams":{
                    "ec":{"Parameters":{"attestation-agent":[recipient]}},
                    "optsdata":STANDARD.encode([7u8; 32])}});
                KeyProviderKeyWrapProtocolInput {
                    key_provider_key_wrap_protocol_input: input.to_string().into_bytes(),
                }
                .encode_to_vec()
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    Ttrpc,
}

struct Server {
    name: &'static str,
    child: Child,
    grpc: String,
    ttrpc: PathBuf,
    metrics: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`cpu_ticks`], or why not.
fn server_ticks(pid: u32) -> Result<u64, String> {
    cpu_ticks(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// A fresh RSA-3072 key pair: its public half and key-info file in `keys`, the OAEP key for the
/// in-process encrypt.
fn make_key(keys: &Path) -> Result<OaepPublicEncryptingKey, String> {
    let pair = KeyPair::generate(KeySize::Rsa3072).map_err(|e| e.to_string())?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|e| e.to_string())?
        .as_ref()
        .to_vec();
    std::fs::create_dir_all(keys).map_err(|e| e.to_string())?;
    let public = format!("{KEY_NAME}.pub.pem");
    std::fs::write(keys.join(&public), spki_to_pem(&spki)).map_err(|e| e.to_string())?;
    let info = KeyInfo {
        public_key_path: public,
        kms_endpoint: "https://bench.managedhsm.azure.net".into(),
        attester_endpoint: "bench.attest.azure.net".into(),
    };
    std::fs::write(
        keys.join(format!("{KEY_NAME}-info.json")),
        serde_json::to_vec(&info).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let public = PublicEncryptingKey::from_der(&spki).map_err(|e| e.to_string())?;
    OaepPublicEncryptingKey::new(public).map_err(|e| e.to_string())
}

/// This thread's CPU time, from /proc/thread-self/schedstat (nanoseconds; on a busy-looping
/// thread it advances in scheduler ticks, 4 ms here, so it is read over long runs only).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU per RSA-OAEP-SHA256 encryption of a 32-byte key, in µs: 20,000 calls (~0.6 s, so the
/// 4 ms tick of the CPU clock is under 1 %).
fn encrypt_cost(key: &OaepPublicEncryptingKey) -> Result<f64, String> {
    const CALLS: u32 = 20_000;
    let mut out = vec![0u8; key.ciphertext_size()];
    let before = thread_cpu_ns().ok_or("no schedstat")?;
    for _ in 0..CALLS {
        key.encrypt(&OAEP_SHA256_MGF1SHA256, &[7; 32], &mut out, None)
            .map_err(|e| e.to_string())?;
    }
    let after = thread_cpu_ns().ok_or("no schedstat")?;
    Ok(after.saturating_sub(before) as f64 / f64::from(CALLS) / 1000.0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn start_aasp(args: &Args, keys: &Path) -> Result<Server, String> {
    let (grpc, metrics) = (free_port()?, free_port()?);
    let ttrpc = args.work_dir.join("aasp.sock");
    let log = std::fs::File::create(args.work_dir.join("aasp.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&args.aasp)
        .args(["serve", "--attester", "sim", "--state-dir"])
        .arg(args.work_dir.join("state"))
        .arg("--keys-dir")
        .arg(keys)
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .arg("--ttrpc-listen")
        .arg(format!("unix://{}", ttrpc.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", args.aasp.display()))?;
    Ok(Server {
        name: "aasp",
        child,
        grpc: format!("127.0.0.1:{grpc}"),
        ttrpc,
        metrics: Some(format!("127.0.0.1:{metrics}")),
    })
}

fn start_bare(args: &Args, keys: &Path) -> Result<Server, String> {
    let grpc = free_port()?;
    let ttrpc = args.work_dir.join("bare.sock");
    let child = Command::new(&args.bare)
        .args(["--listen", &format!("127.0.0.1:{grpc}"), "--public-key"])
        .arg(keys.join(format!("{KEY_NAME}.pub.pem")))
        .arg("--ttrpc")
        .arg(format!("unix://{}", ttrpc.display()))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.bare.display()))?;
    Ok(Server {
        name: "bare",
        child,
        grpc: format!("127.0.0.1:{grpc}"),
        ttrpc,
        metrics: None,
    })
}

/// Waits until the server answers SayHello on both transports (aasp: also until SERVING, since
/// its readiness check runs once at start and would be counted otherwise).
async fn wait_ready(server: &Server, with_ttrpc: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let grpc = grpc_ok(&server.grpc).await;
        let ttrpc = !with_ttrpc || ttrpc_client(&server.ttrpc).await.is_ok();
        if grpc && ttrpc {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not become ready", server.name));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn grpc_ok(target: &str) -> bool {
    use tonic_health::pb::health_client::HealthClient;
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{target}")) else {
        return false;
    };
    let Ok(channel) = channel.connect().await else {
        return false;
    };
    let hello =
        aasp::proto::keyprovider::key_provider_service_client::KeyProviderServiceClient::new(
            channel.clone(),
        )
        .say_hello(HelloRequest { name: "up".into() })
        .await
        .is_ok();
    // The bare server has no health service: SayHello is enough there.
    let serving = match HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
    {
        Ok(reply) => reply.into_inner().status == 1,
        Err(status) => status.code() == tonic::Code::Unimplemented,
    };
    hello && serving
}

async fn ttrpc_client(socket: &Path) -> Result<ttrpc::r#async::Client, String> {
    ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
        .await
        .map_err(|e| e.to_string())
}

/// `aasp_rpc_requests_total{method="keyprovider/<rpc>",status="Ok"}`, from the metrics listener.
fn ok_count(metrics: &str, rpc: Rpc) -> Result<u64, String> {
    let mut stream = std::net::TcpStream::connect(metrics).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let label = format!("method=\"keyprovider/{}\",status=\"Ok\"", rpc.name());
    Ok(text
        .lines()
        .filter(|l| l.starts_with("aasp_rpc_requests_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// One connection, `streams` calls in flight, `seconds` long: calls that succeeded.
fn h2load(
    server: &Server,
    rpc: Rpc,
    body: &Path,
    streams: usize,
    seconds: u64,
) -> Result<u64, String> {
    let out = Command::new("h2load")
        .args([
            "-D",
            &seconds.to_string(),
            "-c",
            "1",
            "-m",
            &streams.to_string(),
        ])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-d",
        ])
        .arg(body)
        .arg(format!("http://{}/{SERVICE}/{}", server.grpc, rpc.name()))
        .output()
        .map_err(|e| format!("h2load: {e} (apt-get install nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, ..."
    text.lines()
        .find_map(|l| {
            let words: Vec<&str> = l.strip_prefix("requests:")?.split_whitespace().collect();
            let at = words.iter().position(|w| w.starts_with("succeeded"))?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        })
        .ok_or_else(|| format!("h2load printed no request count:\n{text}"))
}

/// One ttrpc connection, `streams` calls in flight, `seconds` long: calls that succeeded.
async fn ttrpc_load(
    server: &Server,
    rpc: Rpc,
    streams: usize,
    seconds: u64,
) -> Result<u64, String> {
    let client = ttrpc_client(&server.ttrpc).await?;
    let payload = rpc.message();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let client = client.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < deadline {
                    let mut req = ttrpc::Request::init_request(
                        SERVICE.into(),
                        rpc.name().into(),
                        10_000_000_000,
                        Vec::new(),
                    );
                    req.set_payload(payload.clone());
                    match client.request(req).await {
                        Ok(reply) if reply.status().code() == ttrpc::Code::OK => ok += 1,
                        Ok(reply) => return Err(format!("{}: {:?}", rpc.name(), reply.status())),
                        Err(e) => return Err(format!("{}: {e}", rpc.name())),
                    }
                }
                Ok(ok)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// Server CPU per successful call, in µs, for one measurement.
async fn measure(
    server: &Server,
    transport: Transport,
    rpc: Rpc,
    body: &Path,
    streams: usize,
    seconds: u64,
) -> Result<(f64, u64), String> {
    let pid = server.child.id();
    let ok_before = server
        .metrics
        .as_deref()
        .map(|m| ok_count(m, rpc))
        .transpose()?;
    let before = server_ticks(pid)?;
    let calls = match transport {
        Transport::Grpc => h2load(server, rpc, body, streams, seconds)?,
        Transport::Ttrpc => ttrpc_load(server, rpc, streams, seconds).await?,
    };
    let after = server_ticks(pid)?;
    if let (Some(metrics), Some(before)) = (server.metrics.as_deref(), ok_before) {
        // h2load counts any HTTP 200, and a failed gRPC call is one: the server's count of OK
        // statuses must cover the client's count (streams cut at the end may add a few).
        let ok = ok_count(metrics, rpc)? - before;
        if ok < calls {
            return Err(format!(
                "{} {}: client saw {calls} calls, server only {ok} OK",
                server.name,
                rpc.name()
            ));
        }
    }
    if calls == 0 {
        return Err(format!("{} {}: no call succeeded", server.name, rpc.name()));
    }
    Ok(((after - before) as f64 * 10_000.0 / calls as f64, calls))
}

#[derive(Default)]
struct Figures {
    /// (transport, rpc, streams, server) → µs per call, one per round.
    cpu: std::collections::BTreeMap<(u8, &'static str, usize, &'static str), Vec<f64>>,
}

fn spread(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = median(&mut sorted);
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2} (median {middle:.2})"),
        _ => "—".into(),
    }
}

fn ratios(a: &[f64], b: &[f64], add: f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / (y + add)).collect()
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir).map_err(|e| e.to_string())?;
    let keys = std::fs::canonicalize(&args.work_dir)
        .map_err(|e| e.to_string())?
        .join("keys");
    let key = make_key(&keys)?;
    let servers = [start_aasp(&args, &keys)?, start_bare(&args, &keys)?];
    for server in &servers {
        wait_ready(server, !args.no_ttrpc).await?;
    }
    let rpcs = [Rpc::SayHello, Rpc::WrapKey];
    let mut bodies = Vec::new();
    for rpc in rpcs {
        // The gRPC frame: uncompressed, big-endian length, message.
        let message = rpc.message();
        let mut frame = vec![0u8];
        frame.extend_from_slice(
            &u32::try_from(message.len())
                .map_err(|e| e.to_string())?
                .to_be_bytes(),
        );
        frame.extend_from_slice(&message);
        let path = args.work_dir.join(format!("{}.grpc", rpc.name()));
        std::fs::write(&path, frame).map_err(|e| e.to_string())?;
        bodies.push(path);
    }
    let transports: &[Transport] = if args.no_ttrpc {
        &[Transport::Grpc]
    } else {
        &[Transport::Grpc, Transport::Ttrpc]
    };
    let mut figures = Figures::default();
    let mut encrypt = Vec::new();
    for round in 1..=args.rounds {
        encrypt.push(encrypt_cost(&key)?);
        for &transport in transports {
            for (rpc, body) in rpcs.iter().zip(&bodies) {
                for &streams in &args.streams {
                    for server in &servers {
                        let (cpu, calls) =
                            measure(server, transport, *rpc, body, streams, args.seconds).await?;
                        eprintln!(
                            "round {round} {transport:?} {} -m {streams} {}: {calls} calls, {cpu:.1} µs CPU/call",
                            rpc.name(),
                            server.name
                        );
                        figures
                            .cpu
                            .entry((transport as u8, rpc.name(), streams, server.name))
                            .or_default()
                            .push(cpu);
                    }
                }
            }
        }
    }
    let encrypt_us = median(&mut encrypt.clone());
    println!(
        "RSA-3072 OAEP-SHA256 encrypt, same parsed key, in process: {} µs CPU",
        spread(&encrypt)
    );
    println!("| transport | RPC | streams | aasp µs/call | bare µs/call | ratio per round | ratio to floor |");
    println!("|---|---|---|---|---|---|---|");
    let get = |t: Transport, rpc: &'static str, m: usize, s: &'static str| {
        figures
            .cpu
            .get(&(t as u8, rpc, m, s))
            .cloned()
            .unwrap_or_default()
    };
    for &transport in transports {
        for rpc in rpcs {
            for &m in &args.streams {
                let ours = get(transport, rpc.name(), m, "aasp");
                let bare = get(transport, rpc.name(), m, "bare");
                let to_bare = ratios(&ours, &bare, 0.0);
                let to_floor = match rpc {
                    // Floor: the encrypt + an empty RPC of the bare server, same round.
                    Rpc::WrapKey => {
                        let empty = get(transport, "SayHello", m, "bare");
                        let floors: Vec<f64> = empty.iter().map(|e| e + encrypt_us).collect();
                        spread(&ratios(&ours, &floors, 0.0))
                    }
                    Rpc::SayHello => spread(&to_bare),
                };
                println!(
                    "| {transport:?} | {} | {m} | {} | {} | {} | {to_floor} |",
                    rpc.name(),
                    spread(&ours),
                    spread(&bare),
                    spread(&to_bare),
                );
            }
        }
    }
    Ok(())
}
