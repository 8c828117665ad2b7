//! encfs on loopback against Azurite (npm `azurite`, installed into target/azurite on first
//! use, as the tests install it), in one run:
//! - (a) the best raw throughput of ranged GETs of 512 KiB (the block cache's block size) over
//!   the image blob, 1, 2, 4 and 8 in flight;
//! - (c) upstream azmount's strategy: one 512 KiB block per miss, fetched synchronously under
//!   one lock (`cmd/azmount/filemanager/cache.go`), i.e. 512 KiB GETs one after another. It
//!   leaves out FUSE, dm-crypt and ext4, so it is an upper bound for upstream;
//! - (b) a sequential read of a 256 MiB file through `aasp encfs run --crypt userspace` (FUSE,
//!   loop device, ext4; needs root), a fresh sidecar per round, every byte checked;
//! - (d) random 4 KiB `O_DIRECT` reads of that file through a fresh mount, each at least 1 MiB
//!   from any other (no read is served by an earlier one's block), against one 4 KiB ranged GET;
//! - (f) the sidecar's resident memory (VmRSS, VmHWM) after the reads, per `--cache-size`;
//! - (g) storage with a round trip: Azurite is one node process that needs ~7 s of CPU per GiB
//!   it serves, so on loopback it is CPU-bound with one request in flight and no reader can beat
//!   azmount's strategy by much. The emulator's blob endpoint (Rust, in this process) with
//!   `--latency-ms` injected before every answer stands in for a storage account across a
//!   network: (c) and (a) at 8 in flight, then (b), over a `--latency-file-mib` file;
//! - for every part, the CPU time of Azurite's node process, of the sidecar and of this process
//!   (the client: GETs, reads, checks), and the bytes Azurite sent (`wchar` of its
//!   /proc/PID/io), i.e. what was fetched.
//!
//! The key comes from the emulated Trustee KBS of an in-process `aasp dev` stack (a `kbs:///`
//! kid), so no HSM round trip is in any timed part. (e), decryption CPU, is `xts_cost`.
//!
//! ```text
//! cargo build --release --bin aasp --example encfs_throughput
//! target/release/examples/encfs_throughput --aasp target/release/aasp
//! ```

#[path = "common/process_cpu.rs"]
mod process_cpu;
#[path = "common/process_ticks.rs"]
mod process_ticks;

use aasp::encfs::blob::{BlobClient, BlobUrl, Credential, StorageHosts, DEFAULT_DEADLINE};
use clap::Parser;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
struct Args {
    /// The aasp binary (a release build).
    #[arg(long, default_value = "target/release/aasp")]
    aasp: PathBuf,
    /// Where the image, the dev stack's state and the mounts go (recreated).
    #[arg(long, default_value = "target/bench-encfs")]
    work_dir: PathBuf,
    /// Size of the file read sequentially, MiB.
    #[arg(long, default_value_t = 256)]
    file_mib: u64,
    /// Sequential-read rounds per cache size, each with a fresh sidecar.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `--cache-size` values for the sidecar; the first is also used for the random reads.
    #[arg(long, value_delimiter = ',', default_value = "64M,16M")]
    cache_sizes: Vec<String>,
    /// Random 4 KiB reads (and 4 KiB ranged GETs) to time.
    #[arg(long, default_value_t = 128)]
    random: usize,
    /// Passes of the raw-GET measurement over the data, per concurrency.
    #[arg(long, default_value_t = 1)]
    get_passes: usize,
    /// (g): milliseconds the emulator's blob endpoint waits before each answer (0: skip (g)).
    #[arg(long, default_value_t = 5)]
    latency_ms: u64,
    /// (g): size of the file read there, MiB (the emulator holds at most 256 MiB of blobs).
    #[arg(long, default_value_t = 128)]
    latency_file_mib: u64,
}

const BLOCK: usize = 512 << 10;
const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (not a secret).
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn main() -> Result<(), Error> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// The file's content: word `i` is splitmix64(i), so any range can be checked on its own.
fn expected(offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let first = offset / 8;
    let mut word = first;
    while out.len() < len + (offset - first * 8) as usize {
        out.extend_from_slice(&splitmix(word).to_le_bytes());
        word += 1;
    }
    out.drain(..(offset - first * 8) as usize);
    out.truncate(len);
    out
}

fn splitmix(i: u64) -> u64 {
    let mut z = i
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds of a process (another's from /proc/PID/stat ticks, or this one's).
#[derive(Clone, Copy)]
enum Cpu {
    Other(u32),
    This,
}

impl Cpu {
    fn seconds(self) -> f64 {
        match self {
            Cpu::Other(pid) => process_ticks::cpu_ticks(pid).unwrap_or(0) as f64 / 100.0,
            Cpu::This => process_cpu::process_cpu_ns() as f64 / 1e9,
        }
    }
}

/// CPU seconds spent by node, the sidecar (if any) and this process while `f` ran.
struct Usage {
    node: f64,
    sidecar: f64,
    client: f64,
    /// Bytes Azurite wrote to its sockets: what its clients fetched, headers included.
    node_sent: u64,
}

/// `wchar` of /proc/PID/io: bytes written with write(2)-family calls, which node (libuv) uses
/// for sockets.
fn wchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

struct Meter {
    node: u32,
    sidecar: Option<u32>,
    start: [f64; 3],
    sent: u64,
}

impl Meter {
    fn start(node: u32, sidecar: Option<u32>) -> Self {
        Meter {
            node,
            sidecar,
            start: [
                Cpu::Other(node).seconds(),
                sidecar.map_or(0.0, |p| Cpu::Other(p).seconds()),
                Cpu::This.seconds(),
            ],
            sent: wchar(node),
        }
    }

    fn stop(&self) -> Usage {
        Usage {
            node: Cpu::Other(self.node).seconds() - self.start[0],
            sidecar: self
                .sidecar
                .map_or(0.0, |p| Cpu::Other(p).seconds() - self.start[1]),
            client: Cpu::This.seconds() - self.start[2],
            node_sent: wchar(self.node).saturating_sub(self.sent),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or(f64::NAN)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A tiny deterministic generator for offsets (splitmix64 over a counter).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        splitmix(self.0 ^ 0x5eed)
    }
}

async fn run(args: Args) -> Result<(), Error> {
    println!(
        "encfs throughput: load average {} at start; {} cores; aasp {}",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.aasp.display()
    );
    let root = is_root();
    if !root {
        println!(
            "not root: FUSE, loop devices and mount(2) need root, so (b), (d), (f) and (g) are \
             skipped; only the raw GETs run"
        );
    }
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let work = std::fs::canonicalize(&args.work_dir)?;

    let azurite = Azurite::start(&work)?;
    let http = aasp::http::client(&Default::default())?;
    create_container(&http, &azurite.base()).await?;
    let url = format!("{}/bench/fs.img?{}", azurite.base(), account_sas()?);

    // The image: ext4 holding one file of pseudo-random bytes, in LUKS2, uploaded.
    let content = work.join("content");
    std::fs::create_dir_all(&content)?;
    let file_len = args.file_mib << 20;
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(content.join("big.bin"))?);
        for chunk in 0..args.file_mib {
            file.write_all(&expected(chunk << 20, 1 << 20))?;
        }
        file.flush()?;
    }
    let image = work.join("fs.img");
    let key_file = work.join("fs.jwk");
    let size = format!("{}M", args.file_mib + args.file_mib / 8 + 24);
    aasp(
        &args.aasp,
        &[
            "encfs",
            "create",
            "--from",
            path(&content)?,
            "--out",
            path(&image)?,
            "--key-file",
            path(&key_file)?,
            "--new-key",
            "oct",
            "--kid",
            "bench",
            "--size",
            &size,
        ],
    )?;
    std::fs::remove_file(content.join("big.bin"))?;
    let started = Instant::now();
    aasp(&args.aasp, &["encfs", "upload", path(&image)?, &url])?;
    let image_len = std::fs::metadata(&image)?.len();
    println!(
        "image: {} MiB (a {} MiB file in ext4 in LUKS2), uploaded to Azurite in {:.1} s",
        image_len >> 20,
        args.file_mib,
        started.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&image)?;

    let client = BlobClient::new(
        http.clone(),
        BlobUrl::parse(&url)?,
        Credential::Anonymous,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )?;
    let raw = raw_gets(&client, image_len, azurite.pid, args.get_passes).await?;
    let best = raw.iter().map(|r| r.1).fold(0.0, f64::max);
    let sync = raw.first().map_or(f64::NAN, |r| r.1);

    let small = get_latency(&client, image_len, 4096, args.random).await?;
    let big = get_latency(&client, image_len, BLOCK, args.random.min(64)).await?;
    println!(
        "one ranged GET, one at a time: 4 KiB p50 {:.2} ms p99 {:.2} ms; 512 KiB p50 {:.2} ms \
         p99 {:.2} ms",
        percentile(&small, 0.5) * 1e3,
        percentile(&small, 0.99) * 1e3,
        percentile(&big, 0.5) * 1e3,
        percentile(&big, 0.99) * 1e3
    );

    if !root {
        println!("summary: (b), (d), (f), (g) skipped (not root); (a) best {best:.0} MiB/s, (c) {sync:.0} MiB/s");
        return Ok(());
    }

    // The key in the emulated KBS: the oct key's bytes are the passphrase.
    let listen = [aasp::service::Listen::Tcp("127.0.0.1:0".parse()?)];
    let state = work.join("dev");
    let dev = aasp::cli::dev::start(&listen, "127.0.0.1:0".parse()?, &state).await?;
    let jwk: aasp::azure::jwk::Jwk = serde_json::from_slice(&std::fs::read(&key_file)?)?;
    {
        use base64::Engine;
        let k = zeroize::Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk.k.as_deref().ok_or("the new oct key has no k")?)?,
        );
        dev.emulator.kbs.put_resource("default/encfs/bench", &k)?;
    }
    let mut entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("fs.img.encfs.json"))?)?;
    set(&mut entry, &["azure_url"], url.as_str().into())?;
    set(&mut entry, &["azure_url_private"], false.into())?;
    set(
        &mut entry,
        &["key", "kid"],
        "kbs:///default/encfs/bench".into(),
    )?;
    set(&mut entry, &["key", "kty"], "".into())?;
    let sidecar = SidecarSpec {
        aasp: args.aasp.clone(),
        dir: work.join("mnt"),
        entry,
        dev: &dev,
    };
    std::fs::create_dir_all(&sidecar.dir)?;

    let mut sequential = Vec::new();
    for cache in &args.cache_sizes {
        for round in 0..args.rounds {
            let running = sidecar.start(cache)?;
            let meter = Meter::start(azurite.pid, Some(running.pid()));
            let started = Instant::now();
            let file = running.file();
            let checked = tokio::task::spawn_blocking(move || read_all(&file)).await??;
            let wall = started.elapsed().as_secs_f64();
            let usage = meter.stop();
            let memory = running.memory();
            running.stop()?;
            if checked != file_len {
                return Err(format!("read {checked} bytes, the file has {file_len}").into());
            }
            let mibs = file_len as f64 / f64::from(1u32 << 20) / wall;
            println!(
                "(b) sequential read through the mount, --cache-size {cache}, round {round}: \
                 {mibs:.0} MiB/s ({wall:.2} s); CPU s: sidecar {:.2} ({:.2} per GiB), node {:.2} \
                 (busy {:.0} % of one core), client {:.2}; Azurite sent {} MiB; RSS {} MiB, peak {} MiB",
                usage.sidecar,
                usage.sidecar / (file_len as f64 / f64::from(1u32 << 30)),
                usage.node,
                usage.node / wall * 100.0,
                usage.client,
                usage.node_sent >> 20,
                memory.0 >> 10,
                memory.1 >> 10
            );
            sequential.push((cache.clone(), mibs, memory));
        }
    }

    // Random 4 KiB reads, a fresh mount: every read lands in a part of the file no earlier
    // read touched, so none is served by another's block.
    let running = sidecar.start(args.cache_sizes.first().map_or("64M", String::as_str))?;
    let meter = Meter::start(azurite.pid, Some(running.pid()));
    let file = running.file();
    let count = args.random.min((file_len >> 21) as usize);
    let latencies =
        tokio::task::spawn_blocking(move || random_reads(&file, file_len, count)).await??;
    let usage = meter.stop();
    let memory = running.memory();
    running.stop()?;
    let first: Vec<String> = latencies
        .iter()
        .take(8)
        .map(|l| format!("{:.2}", l * 1e3))
        .collect();
    println!(
        "(d) the first reads after the mount is ready, ms: {}",
        first.join(" ")
    );
    let latencies = sorted(latencies);
    let p50 = percentile(&latencies, 0.5);
    println!(
        "(d) random 4 KiB O_DIRECT reads through the mount ({count}): p50 {:.2} ms, p99 {:.2} ms; \
         Azurite sent {:.1} KiB per read; CPU s: sidecar {:.2}, node {:.2}; RSS {} MiB",
        p50 * 1e3,
        percentile(&latencies, 0.99) * 1e3,
        usage.node_sent as f64 / count.max(1) as f64 / 1024.0,
        usage.sidecar,
        usage.node,
        memory.0 >> 10
    );

    let latency = if args.latency_ms > 0 {
        Some(with_latency(&args, &work, &key_file, &sidecar, azurite.pid).await?)
    } else {
        None
    };

    // Summary against the targets.
    let best_b = sequential
        .iter()
        .filter(|s| Some(&s.0) == args.cache_sizes.first())
        .map(|s| s.1)
        .fold(0.0, f64::max);
    let median_b = {
        let v = sorted(
            sequential
                .iter()
                .filter(|s| Some(&s.0) == args.cache_sizes.first())
                .map(|s| s.1)
                .collect(),
        );
        percentile(&v, 0.5)
    };
    println!("summary (load average {} at end):", loadavg());
    println!(
        "  (b)/(a): sequential through the mount {median_b:.0} MiB/s median ({best_b:.0} best) \
         / raw GETs best {best:.0} MiB/s = {:.2} (target >= 0.7)",
        median_b / best
    );
    println!(
        "  (b)/(c): / one synchronous 512 KiB GET per miss {sync:.0} MiB/s = {:.2} (target >= 2)",
        median_b / sync
    );
    println!(
        "  (d): random 4 KiB p50 {:.2} ms / one 4 KiB ranged GET p50 {:.2} ms = {:.2} (target <= 1.5)",
        p50 * 1e3,
        percentile(&small, 0.5) * 1e3,
        p50 / percentile(&small, 0.5)
    );
    if let Some(g) = &latency {
        println!(
            "  (g) with {} ms per request: (b) {:.0} MiB/s / (c) {:.0} MiB/s = {:.2} (target >= 2); \
             (b) / (a) at 8 in flight {:.0} MiB/s = {:.2}",
            args.latency_ms,
            g.mount,
            g.sync,
            g.mount / g.sync,
            g.parallel,
            g.mount / g.parallel
        );
    }
    for (cache, _, (rss, hwm)) in &sequential {
        println!(
            "  (f): --cache-size {cache}: RSS {} MiB, peak {} MiB after a sequential read",
            rss >> 10,
            hwm >> 10
        );
    }
    dev.emulator.shutdown();
    Ok(())
}

/// Sets the field at `at` (objects all the way down) in the EncfsSideCarArgs entry.
fn set(entry: &mut serde_json::Value, at: &[&str], value: serde_json::Value) -> Result<(), Error> {
    let (last, parents) = at.split_last().ok_or("empty path")?;
    let mut object = entry.as_object_mut().ok_or("the entry is not an object")?;
    for name in parents {
        object = object
            .get_mut(*name)
            .and_then(serde_json::Value::as_object_mut)
            .ok_or_else(|| format!("the entry has no object {name}"))?;
    }
    object.insert((*last).to_owned(), value);
    Ok(())
}

/// (g)'s figures, MiB/s.
struct Latency {
    sync: f64,
    parallel: f64,
    mount: f64,
}

/// (g): a second image, served by the emulator's blob endpoint with `latency_ms` before every
/// answer (injected only while measuring: the sidecar's key release goes to the same server).
async fn with_latency(
    args: &Args,
    work: &Path,
    key_file: &Path,
    sidecar: &SidecarSpec<'_>,
    node: u32,
) -> Result<Latency, Error> {
    let content = work.join("content-rtt");
    std::fs::create_dir_all(&content)?;
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(content.join("big.bin"))?);
        for chunk in 0..args.latency_file_mib {
            file.write_all(&expected(chunk << 20, 1 << 20))?;
        }
        file.flush()?;
    }
    let image = work.join("rtt.img");
    let size = format!(
        "{}M",
        args.latency_file_mib + args.latency_file_mib / 8 + 24
    );
    // The same key: its passphrase is already in the emulated KBS.
    aasp(
        &args.aasp,
        &[
            "encfs",
            "create",
            "--from",
            path(&content)?,
            "--out",
            path(&image)?,
            "--key-file",
            path(key_file)?,
            "--kid",
            "bench",
            "--size",
            &size,
        ],
    )?;
    std::fs::remove_dir_all(&content)?;
    let emulator = &sidecar.dev.emulator;
    let bytes = std::fs::read(&image)?;
    let image_len = bytes.len() as u64;
    emulator
        .blobs
        .put(aasp::emulator::blob::PUBLIC_CONTAINER, "rtt.img", bytes)?;
    std::fs::remove_file(&image)?;
    let url = format!(
        "{}/{}/{}/rtt.img",
        emulator.url,
        aasp::emulator::blob::ACCOUNT,
        aasp::emulator::blob::PUBLIC_CONTAINER
    );
    let http = aasp::http::client(&aasp::http::HttpOptions {
        extra_ca: Some(emulator.ca_path.clone()),
        ..Default::default()
    })?;
    let client = BlobClient::new(
        http,
        BlobUrl::parse(&url)?,
        Credential::Anonymous,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )?;
    let delay: aasp::emulator::faults::Faults = format!("latency={}ms", args.latency_ms).parse()?;
    println!(
        "(g) the emulator's blob endpoint (https, in this process), {} ms before every answer, \
         a {} MiB image:",
        args.latency_ms,
        image_len >> 20
    );
    emulator.set_faults(delay.clone());
    let mut raw = Vec::new();
    for inflight in [1usize, 8] {
        raw.push(gets_in_flight(&client, image_len, node, 1, inflight, "(g) ").await?);
    }
    emulator.set_faults(Default::default());
    let mut entry = sidecar.entry.clone();
    set(&mut entry, &["azure_url"], url.as_str().into())?;
    let running = sidecar.start_with(&entry, "64M")?;
    emulator.set_faults(delay);
    let requests = emulator.counters.requests();
    let meter = Meter::start(node, Some(running.pid()));
    let started = Instant::now();
    let file = running.file();
    let checked = tokio::task::spawn_blocking(move || read_all(&file)).await??;
    let wall = started.elapsed().as_secs_f64();
    let usage = meter.stop();
    let requests = emulator.counters.requests() - requests;
    emulator.set_faults(Default::default());
    running.stop()?;
    let mount = checked as f64 / f64::from(1u32 << 20) / wall;
    println!(
        "(g) (b) sequential read through the mount: {mount:.0} MiB/s ({wall:.2} s); {requests} \
         GETs ({} KiB each on average); CPU s: sidecar {:.2}, this process (the emulator, the \
         reader) {:.2}",
        (checked / requests.max(1)) >> 10,
        usage.sidecar,
        usage.client
    );
    Ok(Latency {
        sync: raw.first().copied().unwrap_or(f64::NAN),
        parallel: raw.get(1).copied().unwrap_or(f64::NAN),
        mount,
    })
}

fn path(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
}

/// Runs aasp to completion; its output is shown only if it fails.
fn aasp(bin: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "aasp {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// (a) and (c): 512 KiB ranged GETs over the whole blob, N in flight; MiB/s per N.
async fn raw_gets(
    client: &BlobClient,
    size: u64,
    node: u32,
    passes: usize,
) -> Result<Vec<(usize, f64)>, Error> {
    let mut results = Vec::new();
    for inflight in [1usize, 2, 4, 8] {
        results.push((
            inflight,
            gets_in_flight(client, size, node, passes, inflight, "").await?,
        ));
    }
    Ok(results)
}

/// 512 KiB ranged GETs over the blob, `inflight` at a time, `passes` times; MiB/s.
async fn gets_in_flight(
    client: &BlobClient,
    size: u64,
    node: u32,
    passes: usize,
    inflight: usize,
    prefix: &str,
) -> Result<f64, Error> {
    let blocks = size / BLOCK as u64;
    let meter = Meter::start(node, None);
    let started = Instant::now();
    for _ in 0..passes.max(1) {
        let next = Arc::new(AtomicU64::new(0));
        let workers = (0..inflight).map(|_| {
            let (client, next) = (client.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= blocks {
                        return Ok::<(), aasp::encfs::blob::BlobError>(());
                    }
                    client.read(i * BLOCK as u64, BLOCK).await?;
                }
            })
        });
        for worker in futures_util::future::join_all(workers).await {
            worker??;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let usage = meter.stop();
    let mib = (blocks * BLOCK as u64 * passes.max(1) as u64) as f64 / f64::from(1u32 << 20);
    let label = if inflight == 1 {
        "(a)/(c) one at a time (azmount's strategy)"
    } else {
        "(a)"
    };
    println!(
        "{prefix}{label} ranged GETs of 512 KiB, {inflight} in flight: {:.0} MiB/s; CPU s per GiB: \
         node {:.2} (node busy {:.0} % of one core), client {:.2}; Azurite sent {} MiB",
        mib / wall,
        usage.node * 1024.0 / mib,
        usage.node / wall * 100.0,
        usage.client * 1024.0 / mib,
        usage.node_sent >> 20
    );
    Ok(mib / wall)
}

/// Latencies (seconds) of `count` ranged GETs of `len` bytes at random aligned offsets.
async fn get_latency(
    client: &BlobClient,
    size: u64,
    len: usize,
    count: usize,
) -> Result<Vec<f64>, Error> {
    let mut rng = Rng(len as u64);
    let slots = size / len as u64;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = rng.next() % slots * len as u64;
        let started = Instant::now();
        client.read(offset, len).await?;
        out.push(started.elapsed().as_secs_f64());
    }
    Ok(sorted(out))
}

/// Reads the whole file in 1 MiB reads, checking every byte; the bytes read.
fn read_all(file: &Path) -> Result<u64, Error> {
    let mut f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(at);
        }
        let got = buf.get(..n).ok_or("short buffer")?;
        if got != expected(at, n).as_slice() {
            return Err(format!("wrong bytes read at {at}").into());
        }
        at += n as u64;
    }
}

/// `count` 4 KiB O_DIRECT reads, one in each 2 MiB of the file (its first MiB), in random order.
fn random_reads(file: &Path, len: u64, count: usize) -> Result<Vec<f64>, Error> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(file)?;
    // O_DIRECT wants an aligned buffer: the 4 KiB-aligned window of a larger one.
    let mut backing = vec![0u8; 8192];
    let skip = (4096 - backing.as_ptr() as usize % 4096) % 4096;
    let buf = backing.get_mut(skip..skip + 4096).ok_or("alignment")?;
    let regions = len >> 21;
    let mut order: Vec<u64> = (0..regions).collect();
    let mut rng = Rng(7);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut out = Vec::with_capacity(count);
    for region in order.into_iter().take(count) {
        let offset = (region << 21) + (rng.next() % 256) * 4096;
        let started = Instant::now();
        f.read_exact_at(buf, offset)?;
        out.push(started.elapsed().as_secs_f64());
        if *buf != *expected(offset, 4096) {
            return Err(format!("wrong bytes read at {offset}").into());
        }
    }
    Ok(out)
}

/// How to start `aasp encfs run` for the image.
struct SidecarSpec<'a> {
    aasp: PathBuf,
    dir: PathBuf,
    entry: serde_json::Value,
    dev: &'a aasp::cli::dev::DevStack,
}

struct Sidecar {
    child: Child,
    mount_point: PathBuf,
    log: PathBuf,
}

impl SidecarSpec<'_> {
    fn start(&self, cache_size: &str) -> Result<Sidecar, Error> {
        self.start_with(&self.entry, cache_size)
    }

    fn start_with(&self, entry: &serde_json::Value, cache_size: &str) -> Result<Sidecar, Error> {
        use base64::Engine;
        let mount_point = self.dir.join("fs");
        let mut entry = entry.clone();
        set(&mut entry, &["mount_point"], path(&mount_point)?.into())?;
        let config = serde_json::json!({ "azure_filesystems": [entry] });
        let log = self.dir.join("sidecar.log");
        let emulator = &self.dev.emulator;
        let child = Command::new(&self.aasp)
            .args(["encfs", "run", "--attester", "sim", "--state-dir"])
            .arg(&self.dev.state_dir)
            .args(["--cert-source", "thim", "--cert-endpoint", &emulator.url])
            .args(["--imds-endpoint", &emulator.url])
            .arg("--extra-ca")
            .arg(&emulator.ca_path)
            .args(["--maa-endpoint", &emulator.host()])
            .args(["--kbs-url", &emulator.url])
            .args(["--crypt", "userspace", "--cache-size", cache_size])
            .arg("--work-dir")
            .arg(self.dir.join("work"))
            .env(
                "EncfsSideCarArgs",
                base64::engine::general_purpose::STANDARD.encode(config.to_string()),
            )
            .env("LogLevel", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut sidecar = Sidecar {
            child,
            mount_point,
            log,
        };
        let started = Instant::now();
        while std::fs::symlink_metadata(&sidecar.mount_point).is_err() {
            if let Some(status) = sidecar.child.try_wait()? {
                return Err(
                    format!("the sidecar ended ({status}):\n{}", sidecar.log_text()).into(),
                );
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "the sidecar was not ready in 120 s:\n{}",
                    sidecar.log_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(sidecar)
    }
}

impl Sidecar {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn file(&self) -> PathBuf {
        self.mount_point.join("big.bin")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// VmRSS and VmHWM, KiB.
    fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM, and the sidecar must exit 0 (it unmounts everything).
    fn stop(mut self) -> Result<(), Error> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("the sidecar exited {status}:\n{}", self.log_text()).into());
        }
        Ok(())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// Azurite's blob service, in memory, on a port below 32768; killed when dropped.
struct Azurite {
    child: Child,
    port: u16,
    /// The node process (azurite-blob is a node script run directly).
    pid: u32,
}

impl Azurite {
    fn start(work: &Path) -> Result<Self, Error> {
        let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/azurite");
        let bin = prefix.join("node_modules/.bin/azurite-blob");
        if !bin.exists() {
            println!("installing Azurite with npm into {}", prefix.display());
            std::fs::create_dir_all(&prefix)?;
            if !prefix.join("package.json").exists() {
                std::fs::write(prefix.join("package.json"), "{}")?;
            }
            let status = Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    ".",
                    "azurite@3",
                ])
                .current_dir(&prefix)
                .status()?;
            if !status.success() {
                return Err("npm install azurite failed".into());
            }
        }
        let dir = work.join("azurite");
        std::fs::create_dir_all(&dir)?;
        let port = 20000 + (std::process::id() % 12000) as u16;
        let mut child = Command::new(&bin)
            .args([
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let pid = child.id();
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                println!(
                    "Azurite on 127.0.0.1:{port}, process {pid} ({})",
                    comm.trim()
                );
                return Ok(Azurite { child, port, pid });
            }
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        Err(format!("Azurite did not start on port {port}").into())
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An account SAS for blob operations, signed with the development key.
fn account_sas() -> Result<String, Error> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (version, permissions, expiry) = ("2021-08-06", "rwdlacup", "2099-01-01T00:00:00Z");
    let to_sign =
        format!("{ACCOUNT}\n{permissions}\nb\nsco\n\n{expiry}\n\nhttps,http\n{version}\n\n");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &b64.decode(ACCOUNT_KEY)?);
    let signature = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    Ok(url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("ss", "b")
        .append_pair("srt", "sco")
        .append_pair("sp", permissions)
        .append_pair("se", expiry)
        .append_pair("spr", "https,http")
        .append_pair("sig", &signature)
        .finish())
}

async fn create_container(http: &reqwest::Client, base: &str) -> Result<(), Error> {
    let response = http
        .put(format!("{base}/bench?restype=container&{}", account_sas()?))
        .header("x-ms-version", "2021-08-06")
        .header("content-length", "0")
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!("create container: {}", response.status()).into());
    }
    Ok(())
}
