//! What it costs to run a CPU-bound job off the async worker that took the call (issue #14,
//! warm UnWrapKey): wall and CPU time per call of the same job placed three ways.
//!
//! - `inline`: on the worker itself (what `--decrypt-threads 0` does);
//! - `spawn_blocking`: on tokio's blocking pool (what aasp does by default);
//! - `thread`: on one dedicated thread fed through a channel, the result back through a oneshot
//!   (the usual alternative to the blocking pool).
//!
//! Set up as `aasp serve` and the `warm_unwrap` bench are: the "server" is a multi-threaded
//! runtime with tokio's default worker count, the "client" a current-thread runtime on this
//! thread, and each call crosses from one to the other and back (as an RPC's task does). The
//! jobs: `empty` (nothing: the hand-off alone) and `decrypt` (one RSA-3072 OAEP-SHA256 decrypt,
//! the warm UnWrapKey's work). CPU is every thread of this process (`/proc/self/task/*/schedstat`).
//!
//! ```text
//! cargo build --release --example handoff
//! target/release/examples/handoff --rounds 3 --calls 1000
//! ```

#[path = "common/process_cpu.rs"]
mod process_cpu;
use process_cpu::process_cpu_ns;

use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    OAEP_SHA256_MGF1SHA256,
};
use clap::Parser;
use std::sync::{mpsc, Arc};
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls per job, placement and round.
    #[arg(long, default_value_t = 1000)]
    calls: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Placement {
    Inline,
    SpawnBlocking,
    Thread,
}

const PLACEMENTS: [Placement; 3] = [
    Placement::Inline,
    Placement::SpawnBlocking,
    Placement::Thread,
];

type Job = Box<dyn FnOnce() + Send>;

struct Decrypt {
    key: OaepPrivateDecryptingKey,
    ciphertext: Vec<u8>,
}

impl Decrypt {
    fn new() -> Result<Self, String> {
        let private =
            PrivateDecryptingKey::generate(KeySize::Rsa3072).map_err(|e| e.to_string())?;
        let public =
            OaepPublicEncryptingKey::new(private.public_key()).map_err(|e| e.to_string())?;
        let mut ciphertext = vec![0u8; public.ciphertext_size()];
        let written = public
            .encrypt(&OAEP_SHA256_MGF1SHA256, &[7u8; 32], &mut ciphertext, None)
            .map_err(|e| e.to_string())?
            .len();
        ciphertext.truncate(written);
        let key = OaepPrivateDecryptingKey::new(private).map_err(|e| e.to_string())?;
        Ok(Decrypt { key, ciphertext })
    }

    /// The plaintext's length (0 on failure, which the caller reports).
    fn run(&self) -> usize {
        let mut out = [0u8; 384];
        self.key
            .decrypt(&OAEP_SHA256_MGF1SHA256, &self.ciphertext, &mut out, None)
            .map_or(0, |plaintext| plaintext.len())
    }
}

/// Runs `job` where `placement` says, from a task on the server runtime; its result comes back.
async fn place(
    placement: Placement,
    thread: &mpsc::Sender<Job>,
    job: impl FnOnce() -> usize + Send + 'static,
) -> Result<usize, String> {
    match placement {
        Placement::Inline => Ok(job()),
        Placement::SpawnBlocking => tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| e.to_string()),
        Placement::Thread => {
            let (done, result) = tokio::sync::oneshot::channel();
            thread
                .send(Box::new(move || {
                    let _ = done.send(job());
                }))
                .map_err(|_| "the job thread is gone".to_owned())?;
            result.await.map_err(|e| e.to_string())
        }
    }
}

fn job_thread() -> mpsc::Sender<Job> {
    let (jobs, queue) = mpsc::channel::<Job>();
    std::thread::spawn(move || {
        for job in queue {
            job();
        }
    });
    jobs
}

/// Wall and CPU µs per call of `calls` calls, each a task spawned on `server` and awaited from
/// the client runtime.
fn measure(
    client: &tokio::runtime::Runtime,
    server: &tokio::runtime::Handle,
    thread: &mpsc::Sender<Job>,
    placement: Placement,
    decrypt: Option<&Arc<Decrypt>>,
    calls: u32,
) -> Result<(f64, f64), String> {
    let call = || {
        let (thread, decrypt) = (thread.clone(), decrypt.cloned());
        server.spawn(async move {
            place(placement, &thread, move || decrypt.map_or(1, |d| d.run())).await
        })
    };
    let run = |n: u32| -> Result<(), String> {
        client.block_on(async {
            for _ in 0..n {
                let plaintext = call().await.map_err(|e| e.to_string())??;
                if plaintext == 0 {
                    return Err("the decrypt failed".to_owned());
                }
            }
            Ok(())
        })
    };
    run(calls / 10)?;
    let (cpu, wall) = (process_cpu_ns(), Instant::now());
    run(calls)?;
    let per_call = |total: f64| total / f64::from(calls);
    Ok((
        per_call(wall.elapsed().as_nanos() as f64) / 1e3,
        per_call(process_cpu_ns().saturating_sub(cpu) as f64) / 1e3,
    ))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Idle vCPUs that halt at once make every wake-up of a sleeping thread a trip through the
/// hypervisor; printed so that figures from different machines can be told apart.
fn idle_policy() -> String {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    let driver = read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_default();
    match read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Ok(poll) => format!("cpuidle {driver}, guest_halt_poll_ns {poll}"),
        Err(_) => format!("cpuidle {driver}"),
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let thread = job_thread();
    let decrypt = Arc::new(Decrypt::new()?);
    println!(
        "{} cores, {}; {} calls per figure",
        std::thread::available_parallelism().map_or(0, usize::from),
        idle_policy(),
        args.calls
    );
    // The decrypt with no runtime around it, in a loop on this thread: its cost with warm caches.
    let (cpu, wall) = (process_cpu_ns(), Instant::now());
    for _ in 0..args.calls {
        if decrypt.run() == 0 {
            return Err("the decrypt failed".to_owned());
        }
    }
    let per_call = |total: f64| total / f64::from(args.calls) / 1e3;
    println!(
        "decrypt in a loop on one thread: {:.1} µs wall, {:.1} µs CPU",
        per_call(wall.elapsed().as_nanos() as f64),
        per_call(process_cpu_ns().saturating_sub(cpu) as f64)
    );
    for (name, job) in [("empty", None), ("decrypt", Some(&decrypt))] {
        let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); 3];
        for round in 1..=args.rounds {
            for (placement, (walls, cpus)) in PLACEMENTS.iter().zip(results.iter_mut()) {
                let (wall, cpu) = measure(
                    &client,
                    server.handle(),
                    &thread,
                    *placement,
                    job,
                    args.calls,
                )?;
                println!("round {round} {name} {placement:?}: {wall:.1} µs wall, {cpu:.1} µs CPU");
                walls.push(wall);
                cpus.push(cpu);
            }
        }
        let medians: Vec<(f64, f64)> = results
            .into_iter()
            .map(|(walls, cpus)| (median(walls), median(cpus)))
            .collect();
        let inline = medians.first().copied().unwrap_or((f64::NAN, f64::NAN));
        for (placement, (wall, cpu)) in PLACEMENTS.iter().zip(&medians) {
            println!(
                "median {name} {placement:?}: {wall:.1} µs wall, {cpu:.1} µs CPU; over inline +{:.1} µs wall, +{:.1} µs CPU",
                wall - inline.0,
                cpu - inline.1
            );
        }
    }
    Ok(())
}
