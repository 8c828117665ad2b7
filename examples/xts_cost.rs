//! CPU per GiB of encfs's userspace sector decryption against bare AES-XTS loops.
//!
//! One thread, data in memory (no I/O), 4096-byte sectors as `aasp encfs create` writes them:
//! - `aes-ecb`: AES-256 block decryption alone over the data, the `aes` crate's floor;
//! - `xts-units`: aasp's AES-XTS alone, `Xts::decrypt_unit` over each 4096-byte unit;
//! - `volume`: `Volume::decrypt` in 128 KiB calls (a FUSE read's size), as the mount side uses it;
//! - `xts-hot`: `Xts::decrypt_unit` over one 4096-byte buffer again and again, which is what
//!   `openssl speed` does;
//! - `openssl`: `openssl speed -decrypt -evp aes-256-xts -bytes 4096` when openssl is installed:
//!   an independent bare AES-XTS loop (OpenSSL's assembly), the reference the target is
//!   stated against. `xts-units` is aasp's own primitive, so `volume / xts-units` shows only
//!   what the volume layer adds; `volume / openssl` and `xts-hot / openssl` compare with
//!   another implementation.
//!
//! CPU time is this thread's (`/proc/thread-self/schedstat`, nanoseconds).
//!
//! `cargo run --release --example xts_cost -- [--rounds 3] [--gib 1]`

use aasp::encfs::format;
use aasp::encfs::passphrase::Passphrase;
use aasp::encfs::xts::Xts;
use aes::cipher::{BlockCipherDecrypt, KeyInit};
use std::time::Instant;

const BUF: usize = 64 << 20;
const SECTOR: usize = 4096;
const CALL: usize = 128 << 10;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Runs `pass` over the buffer until `gib` GiB were processed; CPU and wall seconds per GiB.
fn measure(
    gib: usize,
    buf: &mut [u8],
    mut pass: impl FnMut(&mut [u8]) -> Result<(), Error>,
) -> Result<(f64, f64), Error> {
    let passes = gib * (1 << 30) / buf.len();
    let cpu = thread_cpu_ns();
    let wall = Instant::now();
    for _ in 0..passes {
        pass(buf)?;
    }
    let cpu_s = (thread_cpu_ns() - cpu) as f64 / 1e9;
    let wall_s = wall.elapsed().as_secs_f64();
    let done = (passes * buf.len()) as f64 / f64::from(1u32 << 30);
    Ok((cpu_s / done, wall_s / done))
}

type Error = Box<dyn std::error::Error>;

fn openssl_cpu_per_gib() -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args([
            "speed",
            "-decrypt",
            "-evp",
            "aes-256-xts",
            "-bytes",
            "4096",
            "-seconds",
            "2",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("AES-256-XTS"))?;
    let kbytes: f64 = line
        .split_whitespace()
        .nth(1)?
        .trim_end_matches('k')
        .parse()
        .ok()?;
    // openssl's figure is in 1000s of bytes per second, one thread, CPU-bound.
    Some(f64::from(1u32 << 30) / (kbytes * 1000.0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rounds = flag("--rounds", 3);
    let gib = flag("--gib", 1);

    let key: Vec<u8> = (0u8..64).collect();
    let passphrase = Passphrase::from_kbs_resource(zeroize::Zeroizing::new(vec![1u8; 32]))?;
    let (_, volume) = format::header(&key, &passphrase)?;
    let xts = Xts::new(&key)?;
    let aes =
        aes::Aes256::new_from_slice(key.get(..32).unwrap_or_default()).map_err(|_| "AES key")?;
    let mut buf: Vec<u8> = (0..BUF).map(|i| (i % 251) as u8).collect();
    println!(
        "aes hardware acceleration: {}; {gib} GiB per measurement, {rounds} rounds, medians",
        aes::hardware_accelerated()
    );

    let (mut ecb, mut units, mut vol, mut hot) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        ecb.push(measure(gib, &mut buf, |b| {
            for sector in b.chunks_mut(SECTOR) {
                let (blocks, _) = aes::Block::slice_as_chunks_mut(sector);
                aes.decrypt_blocks(blocks);
            }
            Ok(())
        })?);
        units.push(measure(gib, &mut buf, |b| {
            for (i, sector) in b.chunks_mut(SECTOR).enumerate() {
                xts.decrypt_unit(i as u64 * 8, sector)?;
            }
            Ok(())
        })?);
        vol.push(measure(gib, &mut buf, |b| {
            for (i, call) in b.chunks_mut(CALL).enumerate() {
                volume.decrypt((i * CALL) as u64, call)?;
            }
            Ok(())
        })?);
        hot.push(measure(gib, &mut buf, |b| {
            // The buffer's length in passes over its first sector, as openssl speed loops.
            let (sector, _) = b.split_at_mut(SECTOR);
            for i in 0..BUF / SECTOR {
                xts.decrypt_unit(i as u64 * 8, sector)?;
            }
            Ok(())
        })?);
    }
    let cpu = |v: &[(f64, f64)]| median(v.iter().map(|m| m.0).collect());
    let wall = |v: &[(f64, f64)]| median(v.iter().map(|m| m.1).collect());
    let (ecb_cpu, units_cpu, vol_cpu, hot_cpu) = (cpu(&ecb), cpu(&units), cpu(&vol), cpu(&hot));
    for (name, c, w) in [
        ("aes-ecb (floor)", ecb_cpu, wall(&ecb)),
        (
            "xts-units (aasp XTS, each 4096 B sector)",
            units_cpu,
            wall(&units),
        ),
        (
            "volume (Volume::decrypt, 128 KiB calls)",
            vol_cpu,
            wall(&vol),
        ),
        (
            "xts-hot (one 4096 B buffer, as openssl)",
            hot_cpu,
            wall(&hot),
        ),
    ] {
        println!(
            "{name:42} CPU {:6.1} ms/GiB   {:5.2} GiB/s wall",
            c * 1e3,
            1.0 / w
        );
    }
    println!("volume / xts-units: {:.2}", vol_cpu / units_cpu);
    println!("volume / aes-ecb:   {:.2}", vol_cpu / ecb_cpu);
    match openssl_cpu_per_gib() {
        Some(openssl) => {
            println!(
                "{:42} CPU {:6.1} ms/GiB   (openssl speed, single thread)",
                "openssl aes-256-xts decrypt, 4096 B",
                openssl * 1e3
            );
            println!("volume / openssl:   {:.2}", vol_cpu / openssl);
            println!("xts-hot / openssl:  {:.2}", hot_cpu / openssl);
        }
        None => println!("openssl: not installed, no reference figure"),
    }
    Ok(())
}
