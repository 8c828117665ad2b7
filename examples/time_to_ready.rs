//! Time from process start to health SERVING, seen from outside: spawns the server command,
//! then asks `grpc.health.v1.Health/Check` every millisecond over one kept channel (no process
//! spawn per probe, unlike `aasp health`), kills it, and repeats.
//!
//! ```text
//! cargo build --release --bin aasp --example time_to_ready
//! target/release/examples/time_to_ready --target 127.0.0.1:50100 --rounds 10 -- \
//!     target/release/aasp serve --attester sim --state-dir /tmp/ready-state --listen 127.0.0.1:50100
//! ```
//! The first round of a new `--state-dir` includes the simulator's one-time key generation
//! and is reported apart.

use clap::Parser;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Debug, Parser)]
struct Args {
    /// The gRPC address the command will serve on.
    #[arg(long)]
    target: String,
    /// Starts to time.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Give up on one start after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// The server command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

async fn serving(endpoint: &Endpoint) -> bool {
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

async fn time_one_start(args: &Args, endpoint: &Endpoint) -> Result<Duration, String> {
    let (program, rest) = args.command.split_first().ok_or("no command")?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let deadline = started + Duration::from_secs(args.timeout);
    let result = loop {
        if serving(endpoint).await {
            break Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            break Err(format!("not SERVING within {} s", args.timeout));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("the server exited: {status}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let endpoint = Endpoint::from_shared(format!("http://{}", args.target))?
        .connect_timeout(Duration::from_millis(100));
    let mut times = Vec::new();
    for round in 0..args.rounds {
        let took = time_one_start(&args, &endpoint).await?;
        println!(
            "start {round}: SERVING after {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        times.push(took);
    }
    if let Some((first, restarts)) = times.split_first() {
        let mut ms: Vec<f64> = restarts.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "first start {:.1} ms; restarts: median {:.1} ms (min {:.1}, max {:.1}, n={})",
            first.as_secs_f64() * 1e3,
            ms.get(ms.len() / 2).copied().unwrap_or_default(),
            ms.first().copied().unwrap_or_default(),
            ms.last().copied().unwrap_or_default(),
            ms.len()
        );
    }
    Ok(())
}
