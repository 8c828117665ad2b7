//! Resident memory of `aasp serve --attester sim`, idle and after 64 concurrent clients, read
//! from `/proc/PID/status` (and, where readable, `/proc/PID/smaps`) of the server process.
//!
//! ```text
//! cargo build --release --bin aasp --example rss
//! target/release/examples/rss --aasp target/release/aasp --rounds 3
//! ```
//! Each round starts a fresh server (state and an offline RSA-3072 key under `--work-dir`), waits
//! for health SERVING, closes that connection and lets it settle (`--settle` seconds): **idle**.
//! Then `--clients` clients, each on its own HTTP/2 connection, start together and each makes
//! `--calls` rounds of SayHello, GetReport, WrapKey (the offline key) and a health check; all
//! connections are closed, and after `--settle` seconds: **after load**. VmHWM is the peak.

use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient as Client, HelloRequest,
    KeyProviderGetReportInput, KeyProviderKeyWrapProtocolInput,
};
use aws_lc_rs::encoding::AsDer;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Debug, Parser)]
struct Args {
    /// The aasp binary (a release build).
    #[arg(long, default_value = "target/release/aasp")]
    aasp: PathBuf,
    /// Where the server's state and the offline key go (recreated).
    #[arg(long, default_value = "target/bench-rss")]
    work_dir: PathBuf,
    /// Port on 127.0.0.1 (default: chosen from the process id).
    #[arg(long)]
    port: Option<u16>,
    /// Fresh servers to measure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Rounds of (SayHello, GetReport, WrapKey, health) per client.
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Seconds to wait before each reading (longer than the server's 5 s allocator trim).
    #[arg(long, default_value_t = 6)]
    settle: u64,
    /// Extra arguments for `aasp serve`.
    #[arg(last = true)]
    serve_args: Vec<String>,
}

/// A reading of /proc/PID/status (kB), and the largest mappings when smaps is readable.
#[derive(Debug, Default)]
struct Reading {
    rss: u64,
    anon: u64,
    file: u64,
    hwm: u64,
    threads: u64,
    top: Vec<(u64, String)>,
}

fn read(pid: u32) -> Result<Reading, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut reading = Reading {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
        hwm: field("VmHWM:"),
        threads: field("Threads:"),
        top: Vec::new(),
    };
    // smaps is root-only once the server made itself non-dumpable; the breakdown is optional.
    if let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
        let mut name = String::new();
        for line in smaps.lines() {
            if let Some(kb) = line.strip_prefix("Rss:") {
                let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                reading.top.push((kb, name.clone()));
            } else if line
                .split_whitespace()
                .next()
                .is_some_and(|f| f.contains('-'))
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let perms = fields.get(1).copied().unwrap_or("");
                let path = fields.get(5).copied().unwrap_or("[anon]");
                let short = Path::new(path)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.to_owned());
                name = format!("{short} {perms}");
            }
        }
        // One line per name: the heap, the binary's segments, the libraries, anonymous memory.
        let mut merged: std::collections::BTreeMap<String, u64> = Default::default();
        for (kb, name) in reading.top.drain(..) {
            *merged.entry(name).or_default() += kb;
        }
        reading.top = merged.into_iter().map(|(n, kb)| (kb, n)).collect();
        reading.top.sort_by(|a, b| b.cmp(a));
        reading.top.truncate(8);
    }
    Ok(reading)
}

fn print(label: &str, r: &Reading) {
    println!(
        "{label}: VmRSS {} kB ({:.1} MiB) = anon {} + file {}; threads {}; peak (VmHWM) {} kB",
        r.rss,
        r.rss as f64 / 1024.0,
        r.anon,
        r.file,
        r.threads,
        r.hwm
    );
    if !r.top.is_empty() {
        let parts: Vec<String> = r.top.iter().map(|(kb, n)| format!("{n} {kb}")).collect();
        println!("    largest: {}", parts.join(", "));
    }
}

/// An offline RSA-3072 key for WrapKey: its public half and a key-info file.
fn write_key(keys: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(keys)?;
    let key = aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa3072)?;
    let spki = key.public_key().as_der()?;
    std::fs::write(
        keys.join("rss.pem"),
        aasp::provision::layer::spki_to_pem(spki.as_ref()),
    )?;
    std::fs::write(
        keys.join("rss-info.json"),
        r#"{"public_key_path":"rss.pem","kms_endpoint":"rss.managedhsm.azure.net","attester_endpoint":"rss.attest.azure.net"}"#,
    )?;
    Ok(())
}

async fn serving(endpoint: &Endpoint) -> bool {
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

async fn one_client(endpoint: Endpoint, calls: usize, id: usize) -> Result<(), String> {
    let channel: Channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = Client::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let wrap = serde_json::json!({"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[STANDARD.encode("aasp:rss")]}},"optsdata":STANDARD.encode([7u8; 32])}})
        .to_string()
        .into_bytes();
    for i in 0..calls {
        let status = |e: tonic::Status| format!("client {id}: {}", e.message());
        client
            .say_hello(HelloRequest { name: "rss".into() })
            .await
            .map_err(status)?;
        client
            .get_report(KeyProviderGetReportInput {
                report_data_hex_string: format!("{id:08x}{i:08x}"),
            })
            .await
            .map_err(status)?;
        client
            .wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: wrap.clone(),
            })
            .await
            .map_err(status)?;
        health
            .check(HealthCheckRequest::default())
            .await
            .map_err(status)?;
    }
    Ok(())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn round(args: &Args, port: u16) -> Result<(Reading, Reading), Box<dyn std::error::Error>> {
    let state = args.work_dir.join("state");
    let keys = args.work_dir.join("keys");
    let _ = std::fs::remove_dir_all(&state);
    let address = format!("127.0.0.1:{port}");
    let server = Server(
        Command::new(&args.aasp)
            .args(["serve", "--attester", "sim", "--state-dir"])
            .arg(&state)
            .args(["--listen", &address, "--keys-dir"])
            .arg(&keys)
            .args(&args.serve_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = server.0.id();
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serving(&endpoint).await {
        if Instant::now() > deadline {
            return Err("the server is not SERVING after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let idle = read(pid)?;

    let clients: Vec<_> = (0..args.clients)
        .map(|id| tokio::spawn(one_client(endpoint.clone(), args.calls, id)))
        .collect();
    for client in clients {
        client.await??;
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let loaded = read(pid)?;
    drop(server);
    Ok((idle, loaded))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    write_key(&args.work_dir.join("keys"))?;
    let port = args
        .port
        .unwrap_or(40000 + (std::process::id() % 10000) as u16);
    println!(
        "aasp serve --attester sim; idle = SERVING + {} s; load = {} clients (one connection each) x {} x (SayHello, GetReport, WrapKey, health), then {} s",
        args.settle, args.clients, args.calls, args.settle
    );
    for n in 1..=args.rounds {
        let (idle, loaded) = round(&args, port).await?;
        print(&format!("round {n} idle"), &idle);
        print(&format!("round {n} after load"), &loaded);
    }
    Ok(())
}
