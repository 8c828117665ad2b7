//! The ttrpc listener holds the same bounds as every other listener, whatever clients do:
//! idle connections past the descriptor limit, frames parked a byte short of whole, and the one
//! long-lived connection CDH keeps (issue 26, the attacks of its review at reduced sizes).

use crate::common;

use aasp::proto::attestation_agent as aa;
use aasp::service::ttrpc::{TtrpcBound, TtrpcLimits};
use prost::Message;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ttrpc::proto::RequestInit;

/// `aasp serve` with a gRPC and a ttrpc listener, run under a descriptor limit, its stderr in a
/// file; killed when dropped.
struct Served {
    child: Child,
    grpc: String,
    ttrpc: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(nofile: u32) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let ttrpc = dir.path().join("attestation-agent.sock");
        let stderr = dir.path().join("stderr");
        // prlimit execs the command: the child is aasp itself.
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_aasp"))
            .args(["serve", "--attester", "sim", "--listen", "127.0.0.1:0"])
            .arg("--ttrpc-listen")
            .arg(format!("unix://{}", ttrpc.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut grpc = String::new();
        let mut ttrpc_up = false;
        while grpc.is_empty() || !ttrpc_up {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(addr) = line.strip_prefix("aasp serving gRPC on ") {
                grpc = addr.to_owned();
            }
            ttrpc_up |= line.starts_with("aasp serving ttrpc on ");
        }
        Served {
            child,
            grpc,
            ttrpc,
            stderr,
            _dir: dir,
        }
    }

    fn stderr_bytes(&self) -> u64 {
        std::fs::metadata(&self.stderr).unwrap().len()
    }

    /// A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

/// The test process itself holds over a thousand client sockets: raise its own soft limit
/// where it is lower (CI's default is 1024).
fn enough_descriptors_for_this_process() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: Option<u64> = line.split_whitespace().nth(3).and_then(|n| n.parse().ok());
    if soft.is_some_and(|n| n < 4096) {
        let status = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                "--nofile=4096:4096",
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "could not raise this process's descriptor limit"
        );
    }
}

/// GetTeeType over a new ttrpc connection to `socket`, within `within`.
async fn tee_type(socket: &Path, within: Duration) -> Result<String, String> {
    tokio::time::timeout(within, async {
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        tee_type_on(&client).await
    })
    .await
    .map_err(|_| format!("no answer within {within:?}"))?
}

async fn tee_type_on(client: &ttrpc::r#async::Client) -> Result<String, String> {
    let mut req = ttrpc::Request::init_request(
        "attestation_agent.AttestationAgentService".into(),
        "GetTeeType".into(),
        10_000_000_000,
        Vec::new(),
    );
    req.set_payload(aa::GetTeeTypeRequest {}.encode_to_vec());
    let reply = client
        .request(req)
        .await
        .map_err(|e| format!("GetTeeType: {e:?}"))?;
    let reply = aa::GetTeeTypeResponse::decode(reply.payload.as_slice())
        .map_err(|e| format!("GetTeeType reply: {e}"))?;
    Ok(reply.tee)
}

/// Whether the server closes `stream` within `within` (EOF or an error; bytes are ignored).
async fn closed_within(stream: &mut tokio::net::UnixStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// A ttrpc frame header: length, stream id, type (1: request), flags.
fn frame_header(length: u32) -> Vec<u8> {
    let mut header = length.to_be_bytes().to_vec();
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&[1, 0]);
    header
}

/// 1100 idle ttrpc connections against a server allowed 1024 descriptors: new ttrpc calls and
/// health still answer, and the log grows by kilobytes. (The crate's own accept loop logged
/// every EMFILE in a tight loop: 1.3 GB in 30 s, and nothing answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ttrpc_connections_past_the_descriptor_limit_keep_nothing_out() {
    enough_descriptors_for_this_process();
    let served = Served::start(1024);
    assert_eq!(
        tee_type(&served.ttrpc, Duration::from_secs(30)).await,
        Ok("snp".to_owned())
    );
    let mut idle = Vec::new();
    for _ in 0..1100 {
        // A server that stopped accepting leaves connects hanging once its backlog is full.
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::UnixStream::connect(&served.ttrpc),
        )
        .await
        {
            Ok(Ok(stream)) => idle.push(stream),
            Ok(Err(e)) => panic!("connect: {e}"),
            Err(_) => break,
        }
    }
    let opened = idle.len();
    let call = tee_type(&served.ttrpc, Duration::from_secs(10)).await;
    let health = tokio::time::timeout(Duration::from_secs(10), async {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", served.grpc))?
            .connect()
            .await?;
        let mut client = HealthClient::new(channel);
        client
            .check(HealthCheckRequest::default())
            .await
            .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
    })
    .await;
    // What the log grew by while 1100 connections sat there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = served.stderr_bytes();
    assert_eq!(
        call,
        Ok("snp".to_owned()),
        "after {opened} idle connections"
    );
    assert!(
        matches!(health, Ok(Ok(_))),
        "health did not answer after {opened} idle connections: {health:?}"
    );
    assert!(
        logged < 64 * 1024,
        "stderr grew to {logged} bytes with {opened} idle connections"
    );
    drop(idle);
}

/// 64 connections each park a frame that announces 4 MiB and sends all but its last byte: the
/// server closes them at the request deadline and gives the memory back. (It used to hold
/// 256 MiB for as long as the clients waited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_parked_a_byte_short_are_closed_and_their_memory_freed() {
    const ANNOUNCED: u32 = 4 << 20;
    let served = Served::start(1024);
    assert_eq!(
        tee_type(&served.ttrpc, Duration::from_secs(30)).await,
        Ok("snp".to_owned())
    );
    let before = served.status_kib("VmRSS");
    let parked: Vec<_> = (0..64)
        .map(|_| {
            let socket = served.ttrpc.clone();
            tokio::spawn(async move {
                let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
                let mut frame = frame_header(ANNOUNCED);
                frame.resize(frame.len() + ANNOUNCED as usize - 1, 0x5a);
                // A server that closes early ends the write: that is allowed.
                let _ = stream.write_all(&frame).await;
                stream
            })
        })
        .collect();
    // The deadline is 10 s; a minute allows for a loaded machine. All wait together.
    let closed = futures_util::future::join_all(parked.into_iter().map(|stream| async {
        let mut stream = stream.await.unwrap();
        closed_within(&mut stream, Duration::from_secs(60)).await
    }))
    .await
    .into_iter()
    .filter(|closed| *closed)
    .count();
    let peak = served.status_kib("VmHWM");
    let after = served.status_kib("VmRSS");
    println!("VmRSS {before} KiB before, {after} KiB after; VmHWM {peak} KiB");
    assert_eq!(
        closed, 64,
        "only {closed} of 64 parked connections were closed"
    );
    assert!(
        after < before + 64 * 1024,
        "RSS {before} KiB -> {after} KiB after the parked connections were closed"
    );
    // The server still serves.
    assert_eq!(
        tee_type(&served.ttrpc, Duration::from_secs(10)).await,
        Ok("snp".to_owned())
    );
}

/// CDH's case: one connection, made at start and idle before its first call (CDH's evidence
/// provider connects, then asks the KBS first) and between calls, for longer than the request
/// deadline; every call works. A frame whose bytes stop is closed at that deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_before_and_between_its_calls_keeps_working() {
    const DEADLINE: Duration = Duration::from_millis(300);
    let dev = common::Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attestation-agent.sock");
    let bound = TtrpcBound::bind(&path).unwrap();
    let mut limits = TtrpcLimits::default();
    limits.calls.body_timeout = DEADLINE;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(
            bound.serve_with(std::sync::Arc::clone(&dev.backend), limits, async move {
                let _ = stopped.await;
            }),
        );
    let cdh = ttrpc::r#async::Client::connect(&format!("unix://{}", path.display()))
        .await
        .unwrap();
    let mut parked = tokio::net::UnixStream::connect(&path).await.unwrap();
    parked.write_all(&frame_header(100)).await.unwrap();
    parked.write_all(&[0; 99]).await.unwrap();
    assert!(
        closed_within(&mut parked, DEADLINE * 20).await,
        "a frame a byte short outlived the request deadline"
    );
    tokio::time::sleep(DEADLINE * 3).await;
    assert_eq!(
        tee_type_on(&cdh).await,
        Ok("snp".to_owned()),
        "the connection idle before its first call was closed"
    );
    tokio::time::sleep(DEADLINE * 3).await;
    assert_eq!(
        tee_type_on(&cdh).await,
        Ok("snp".to_owned()),
        "the connection that had completed a call was closed while idle"
    );
    drop(cdh);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
