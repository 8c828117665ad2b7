//! A gRPC load generator for aasp: N concurrent clients for a fixed time, then latency
//! percentiles, throughput and (with `--server-pid`) the server's CPU time per request, read from
//! `/proc/PID/stat` so the client's own cost cannot distort it.
//!
//! ```text
//! cargo run --release --example loadgen -- --target 127.0.0.1:50000 --rpc say-hello --concurrency 8 --seconds 10
//! cargo run --release --example loadgen -- --rpc unwrap-key --keys-dir ~/.local/state/aasp/keys --compare-bare
//! ```
//! `--background unwrap-key:4` (mixed load) runs `--rpc` alone for `--seconds`, then again while
//! 4 more clients repeat UnWrapKey (on their own connection, or with `--background-same-connection`
//! on the foreground's), and prints the foreground's percentiles both ways: how much the
//! decrypts delay everything else.
//!
//! `--compare-bare` (unwrap-key with an RSA key, against `aasp dev`) also times the bare
//! RSA-OAEP-SHA256 decrypt of the same ciphertext with the same key — fetched through GetResource,
//! which only a development stack should allow — and prints the ratio.

#[path = "common/process_ticks.rs"]
mod process_ticks;
use process_ticks::cpu_ticks;

use aasp::proto::getresource::{
    get_resource_service_client::GetResourceServiceClient, GetResourceRequest,
};
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient as Client, *,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// aasp gRPC address.
    #[arg(long, default_value = "127.0.0.1:50000")]
    target: String,
    /// The call to repeat.
    #[arg(long, value_enum, default_value_t = Rpc::SayHello)]
    rpc: Rpc,
    /// Concurrent clients (one HTTP/2 connection, as many streams).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to run, after one warm-up call per client.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Key for wrap-key / unwrap-key.
    #[arg(long, default_value = "demo-rsa")]
    key: String,
    /// Directory of key-info files (for unwrap-key: where the key's KMS is).
    #[arg(long)]
    keys_dir: Option<std::path::PathBuf>,
    /// Server process id, to report its CPU time per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Time the bare RSA-OAEP decrypt of the same ciphertext too (unwrap-key, aasp dev only).
    #[arg(long)]
    compare_bare: bool,
    /// Mixed load: N clients repeating RPC in the background (e.g. `unwrap-key:4`) while `--rpc`
    /// is measured; `--rpc` is measured alone first.
    #[arg(long, value_name = "RPC:N", value_parser = parse_background)]
    background: Option<(Rpc, usize)>,
    /// Background clients share the foreground's HTTP/2 connection instead of opening their own.
    #[arg(long)]
    background_same_connection: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum Rpc {
    SayHello,
    GetReport,
    WrapKey,
    UnwrapKey,
}

fn wrap_input(key: &str, layer_key: &[u8]) -> Vec<u8> {
    serde_json::json!({"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[STANDARD.encode(format!("aasp:{key}"))]}},"optsdata":STANDARD.encode(layer_key)}})
        .to_string()
        .into_bytes()
}

fn unwrap_input(annotation: &str) -> Vec<u8> {
    serde_json::json!({"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":[STANDARD.encode("aasp")]}},"annotation":annotation}})
        .to_string()
        .into_bytes()
}

async fn call(
    client: &mut Client<Channel>,
    rpc: Rpc,
    key: &str,
    annotation: &str,
    i: u64,
) -> Result<(), tonic::Status> {
    match rpc {
        Rpc::SayHello => client
            .say_hello(HelloRequest {
                name: "load".into(),
            })
            .await
            .map(drop),
        Rpc::GetReport => client
            .get_report(KeyProviderGetReportInput {
                report_data_hex_string: format!("{i:016x}"),
            })
            .await
            .map(drop),
        Rpc::WrapKey => client
            .wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: wrap_input(key, &[7; 32]),
            })
            .await
            .map(drop),
        Rpc::UnwrapKey => client
            .un_wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: unwrap_input(annotation),
            })
            .await
            .map(drop),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let channel = Channel::from_shared(format!("http://{}", args.target))?
        .connect()
        .await?;
    let mut setup = Client::new(channel.clone());
    let needs_annotation =
        args.rpc == Rpc::UnwrapKey || matches!(args.background, Some((Rpc::UnwrapKey, _)));
    let annotation = if needs_annotation {
        let out = setup
            .wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: wrap_input(&args.key, &[9; 32]),
            })
            .await?
            .into_inner();
        let doc: serde_json::Value =
            serde_json::from_slice(&out.key_provider_key_wrap_protocol_output)?;
        // Reply byte fields are arrays of numbers; requests take them as base64 too.
        let bytes: Vec<u8> = doc
            .pointer("/keywrapresults/annotation")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        STANDARD.encode(bytes)
    } else {
        String::new()
    };

    if let Some(background) = args.background {
        return mixed(&args, channel, &annotation, background).await;
    }
    let ticks_before = args.server_pid.and_then(cpu_ticks);
    let started = Instant::now();
    let (latencies, errors) = clients(
        &channel,
        args.rpc,
        args.concurrency,
        &args.key,
        &annotation,
        Until::Deadline(started + Duration::from_secs(args.seconds)),
    )
    .await?;
    let elapsed = started.elapsed();
    let n = latencies.len();
    println!(
        "rpc={:?} concurrency={} calls={} errors={} throughput={:.0}/s p50={:?} p90={:?} p99={:?}",
        args.rpc,
        args.concurrency,
        n,
        errors,
        n as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99)
    );
    if let (Some(pid), Some(before)) = (args.server_pid, ticks_before) {
        let used = cpu_ticks(pid).unwrap_or(before).saturating_sub(before);
        // Linux reports CPU time in clock ticks of 10 ms (USER_HZ = 100).
        println!(
            "server CPU: {:.1} µs per request",
            used as f64 * 10_000.0 / n.max(1) as f64
        );
    }
    if args.compare_bare && args.rpc == Rpc::UnwrapKey {
        compare_bare(&args, channel, &annotation, percentile(&latencies, 0.50)).await?;
    }
    Ok(())
}

/// The same decrypt without aasp around it: RSA-OAEP-SHA256 of the annotation's ciphertext with
/// the released key, in this process.
async fn compare_bare(
    args: &Args,
    channel: Channel,
    annotation: &str,
    grpc_p50: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    use aws_lc_rs::rsa::{OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256};
    let keys_dir = args
        .keys_dir
        .as_ref()
        .ok_or("--compare-bare needs --keys-dir")?;
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(
        keys_dir.join(format!("{}-info.json", args.key)),
    )?)?;
    let kms = info
        .get("kms_endpoint")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let resource = GetResourceServiceClient::new(channel.clone())
        .get_resource(GetResourceRequest {
            resource_path: args.key.clone(),
            kbc_name: "aasp".into(),
            kbs_uri: kms,
        })
        .await?
        .into_inner();
    let jwk: aasp::azure::jwk::Jwk = serde_json::from_slice(&resource.resource)?;
    let key = OaepPrivateDecryptingKey::new(
        PrivateDecryptingKey::from_pkcs8(&jwk.to_pkcs8()?).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let packet: serde_json::Value = serde_json::from_slice(&STANDARD.decode(annotation)?)?;
    let ciphertext = STANDARD.decode(
        packet
            .get("wrapped_data")
            .and_then(|w| w.as_str())
            .unwrap_or_default(),
    )?;
    let mut out = vec![0u8; key.min_output_size()];
    let rounds = 2000;
    let started = Instant::now();
    for _ in 0..rounds {
        key.decrypt(&OAEP_SHA256_MGF1SHA256, &ciphertext, &mut out, None)
            .map_err(|e| e.to_string())?;
    }
    let bare = started.elapsed() / rounds;
    let mut client = Client::new(channel);
    let hello_started = Instant::now();
    for _ in 0..200 {
        client
            .say_hello(HelloRequest {
                name: String::new(),
            })
            .await?;
    }
    let empty_rpc = hello_started.elapsed() / 200;
    println!(
        "bare RSA-OAEP-SHA256 decrypt {:?}; empty RPC {:?}; warm UnWrapKey p50 {:?}; ratio UnWrapKey / (bare + empty RPC) = {:.2}",
        bare,
        empty_rpc,
        grpc_p50,
        grpc_p50.as_secs_f64() / (bare + empty_rpc).as_secs_f64()
    );
    Ok(())
}

fn parse_background(text: &str) -> Result<(Rpc, usize), String> {
    use clap::ValueEnum;
    let (rpc, n) = text
        .split_once(':')
        .ok_or("expected RPC:N, e.g. unwrap-key:4")?;
    let rpc = Rpc::from_str(rpc, true)?;
    let n = n.parse().map_err(|e| format!("{n:?}: {e}"))?;
    Ok((rpc, n))
}

/// `concurrency` clients on `channel` repeating `rpc` until `deadline` (after one warm-up call
/// each), or until `stop` is set; their latencies and error count.
async fn clients(
    channel: &Channel,
    rpc: Rpc,
    concurrency: usize,
    key: &str,
    annotation: &str,
    until: Until,
) -> Result<(Vec<Duration>, u64), Box<dyn std::error::Error>> {
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut client = Client::new(channel.clone());
            let (key, annotation, until) = (key.to_owned(), annotation.to_owned(), until.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                call(&mut client, rpc, &key, &annotation, 0).await.ok();
                let mut i = (w as u64) << 32;
                while !until.done() {
                    let t = Instant::now();
                    match call(&mut client, rpc, &key, &annotation, i).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                    i += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Ok((latencies, errors))
}

/// When clients stop: at a deadline, or when told.
#[derive(Clone)]
enum Until {
    Deadline(Instant),
    Stopped(std::sync::Arc<std::sync::atomic::AtomicBool>),
}

impl Until {
    fn done(&self) -> bool {
        match self {
            Until::Deadline(at) => Instant::now() >= *at,
            Until::Stopped(flag) => flag.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

fn summary(latencies: &[Duration], errors: u64, elapsed: Duration) -> String {
    format!(
        "calls={} errors={} throughput={:.0}/s p50={:?} p90={:?} p99={:?} p99.9={:?} max={:?}",
        latencies.len(),
        errors,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(latencies, 0.50),
        percentile(latencies, 0.90),
        percentile(latencies, 0.99),
        percentile(latencies, 0.999),
        latencies.last().copied().unwrap_or_default()
    )
}

/// `--background`: the foreground `--rpc` measured alone, then under the background load.
async fn mixed(
    args: &Args,
    channel: Channel,
    annotation: &str,
    (background_rpc, background_n): (Rpc, usize),
) -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let seconds = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let (alone, errors) = clients(
        &channel,
        args.rpc,
        args.concurrency,
        &args.key,
        annotation,
        Until::Deadline(started + seconds),
    )
    .await?;
    println!(
        "rpc={:?} concurrency={} alone: {}",
        args.rpc,
        args.concurrency,
        summary(&alone, errors, started.elapsed())
    );
    let background_channel = if args.background_same_connection {
        channel.clone()
    } else {
        Channel::from_shared(format!("http://{}", args.target))?
            .connect()
            .await?
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let background = {
        let until = Until::Stopped(stop.clone());
        let (annotation, key) = (annotation.to_owned(), args.key.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = clients(
                &background_channel,
                background_rpc,
                background_n,
                &key,
                &annotation,
                until,
            )
            .await;
            result
                .map(|(l, e)| (l, e, started.elapsed()))
                .map_err(|e| e.to_string())
        })
    };
    // Let the background reach its steady state (its warm-up calls done) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ticks_before = args.server_pid.and_then(cpu_ticks);
    let started = Instant::now();
    let (under, errors) = clients(
        &channel,
        args.rpc,
        args.concurrency,
        &args.key,
        annotation,
        Until::Deadline(started + seconds),
    )
    .await?;
    let elapsed = started.elapsed();
    let ticks = args
        .server_pid
        .and_then(cpu_ticks)
        .zip(ticks_before)
        .map(|(after, before)| after.saturating_sub(before));
    stop.store(true, Ordering::Relaxed);
    let (bg, bg_errors, bg_elapsed) = background.await??;
    let connection = if args.background_same_connection {
        "same connection"
    } else {
        "own connection"
    };
    println!(
        "rpc={:?} concurrency={} under {background_n}x {background_rpc:?} ({connection}): {}",
        args.rpc,
        args.concurrency,
        summary(&under, errors, elapsed)
    );
    println!(
        "    background {background_rpc:?}: {}",
        summary(&bg, bg_errors, bg_elapsed)
    );
    if let Some(ticks) = ticks {
        // Linux reports CPU time in clock ticks of 10 ms (USER_HZ = 100).
        println!(
            "    server CPU while both ran: {:.0}% of one core",
            ticks as f64 / elapsed.as_secs_f64()
        );
    }
    Ok(())
}
