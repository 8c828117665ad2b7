//! Cold secure key release, step by step: where the time goes, split into this process's CPU
//! time and the wait for upstream (the emulator, in another process).
//!
//! ```text
//! cargo build --release --bin aasp --example cold_release
//! target/release/examples/cold_release --aasp target/release/aasp --rounds 20
//! ```
//! It starts `aasp dev` as a separate process for its Azure emulator, then, in this process,
//! builds a fresh backend per round (so every cache is empty and every TLS connection new;
//! the transfer key is generated before the clock starts, as `aasp serve` does at start-up) and
//! releases the demo RSA key through the production code. The steps are the `tracing` spans of
//! that code; CPU time is `CLOCK_PROCESS_CPUTIME_ID`, so work on the blocking pool (the report
//! signature) counts as ours.

use aasp::cli::serve::BackendArgs;
use aasp::provision::KeyRef;
use clap::Parser;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Debug, Parser)]
struct Args {
    /// The aasp binary whose `dev` command provides the emulator.
    #[arg(long, default_value = "target/release/aasp")]
    aasp: PathBuf,
    /// Cold releases to time.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// The steps of a release, in the order they happen, with what each is.
const STEPS: &[(&str, &str)] = &[
    ("transfer_key", "wait for the transfer key (pre-generated)"),
    ("report", "SNP report (simulator signs it)"),
    ("chain", "VCEK chain from THIM + verification"),
    ("maa_attest", "MAA attest/SevSnpVm round trip"),
    ("identity", "managed-identity token (IMDS)"),
    ("kms_release", "MHSM release round trip"),
    ("verify_release", "release JWS: x5c chain + signature"),
    ("unwrap", "CKM_RSA_AES_KEY_WRAP unwrap"),
    ("release", "whole release"),
];

#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

struct Started {
    wall: Instant,
    cpu: Duration,
}

/// Records wall and process CPU time from a span's creation to its close.
#[derive(Clone, Default)]
struct StepTimer {
    samples: Arc<Mutex<BTreeMap<&'static str, Vec<Sample>>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for StepTimer {
    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Started {
                wall: Instant::now(),
                cpu: process_cpu(),
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let extensions = span.extensions();
        let Some(started) = extensions.get::<Started>() else {
            return;
        };
        let sample = Sample {
            wall: started.wall.elapsed(),
            cpu: process_cpu().saturating_sub(started.cpu),
        };
        if let Ok(mut samples) = self.samples.lock() {
            samples.entry(span.name()).or_default().push(sample);
        }
    }
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The `aasp dev` process; killed on drop.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `aasp dev` and returns it with its emulator's URL and CA file.
fn start_dev(
    aasp: &PathBuf,
    state: &std::path::Path,
) -> Result<(Dev, String, PathBuf), Box<dyn std::error::Error>> {
    let mut child = Command::new(aasp)
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", aasp.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let dev = Dev(child);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        // "Azure emulator: https://127.0.0.1:PORT (dev CA /path/ca.pem)"
        if let Some(rest) = line.strip_prefix("Azure emulator: ") {
            let (url, ca) = rest
                .split_once(" (dev CA ")
                .ok_or("unexpected emulator line")?;
            return Ok((dev, url.to_owned(), PathBuf::from(ca.trim_end_matches(')'))));
        }
    }
    Err("aasp dev exited before starting its emulator".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let state = tempfile::tempdir()?;
    let (_dev, emulator_url, ca) = start_dev(&args.aasp, state.path())?;
    let timer = StepTimer::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(
        timer.clone().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("aasp", tracing::Level::DEBUG),
        ),
    ))?;
    // One thread for our side, so the process CPU clock measures this flow and nothing else.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let maa = emulator_url.trim_start_matches("https://").to_owned();
    let key = KeyRef::azure(&emulator_url, aasp::cli::dev::DEMO_RSA_KEY, &maa)?;
    let mut backend_args = BackendArgs::for_emulator(&emulator_url, &ca, state.path(), None);
    backend_args.transfer_key_rotation = 0;
    runtime.block_on(async {
        for _ in 0..args.rounds {
            let backend = backend_args.build()?;
            // A running server generated its transfer key at start-up, long before this.
            backend.provisioner.transfer_key_ready().await?;
            backend.provisioner.release(&key).await?;
            drop(backend);
            // Let the old connections close now rather than inside the next round's first step.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    print_table(&timer, args.rounds);
    Ok(())
}

fn print_table(timer: &StepTimer, rounds: usize) {
    let samples = timer.samples.lock().map(|s| s.clone()).unwrap_or_default();
    println!(
        "cold secure key release, {rounds} rounds, {} cores; medians (min–max) in ms",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<16} {:<38} {:>22} {:>22} {:>10}",
        "step", "what", "wall", "our CPU", "wait"
    );
    for (name, what) in STEPS {
        let Some(of_step) = samples.get(name) else {
            println!("{name:<16} {what:<38} (no samples)");
            continue;
        };
        let wall = stats(of_step.iter().map(|s| s.wall));
        let cpu = stats(of_step.iter().map(|s| s.cpu));
        let wait = stats(of_step.iter().map(|s| s.wall.saturating_sub(s.cpu)));
        println!(
            "{name:<16} {what:<38} {:>8.2} ({:.2}–{:.2}) {:>8.2} ({:.2}–{:.2}) {:>10.2}",
            wall.0, wall.1, wall.2, cpu.0, cpu.1, cpu.2, wait.0
        );
    }
}

/// Median, min and max in milliseconds.
fn stats(values: impl Iterator<Item = Duration>) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = values.map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or_default();
    let min = ms.first().copied().unwrap_or_default();
    let max = ms.last().copied().unwrap_or_default();
    (median, min, max)
}
