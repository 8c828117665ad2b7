//! A gRPC load generator for aasp: N concurrent clients for a fixed time, then latency
//! percentiles, throughput and (with `--server-pid`) the server's CPU time per request, read from
//! `/proc/PID/stat` so the client's own cost cannot distort it.
//!
//! ```text
//! cargo run --release --example loadgen -- --target 127.0.0.1:50000 --rpc say-hello --concurrency 8 --seconds 10
//! cargo run --release --example loadgen -- --rpc unwrap-key --keys-dir ~/.local/state/aasp/keys --compare-bare
//! ```
//! `--compare-bare` (unwrap-key with an RSA key, against `aasp dev`) also times the bare
//! RSA-OAEP-SHA256 decrypt of the same ciphertext with the same key — fetched through GetResource,
//! which only a development stack should allow — and prints the ratio.

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
    /// Instead of running, write the gRPC-framed request body of `--rpc` to FILE (for
    /// `h2load -d FILE`) and print the HTTP/2 path to send it to.
    #[arg(long, value_name = "FILE")]
    h2load_body: Option<std::path::PathBuf>,
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

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// One gRPC message as it travels: uncompressed flag, big-endian length, protobuf bytes.
fn grpc_frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The request body and path of one call of `rpc`, for a client that is not gRPC-aware.
fn h2load_request(rpc: Rpc, key: &str) -> Result<(Vec<u8>, &'static str), String> {
    Ok(match rpc {
        Rpc::SayHello => (
            grpc_frame(&HelloRequest {
                name: "load".into(),
            }),
            "/keyprovider.KeyProviderService/SayHello",
        ),
        Rpc::GetReport => (
            grpc_frame(&KeyProviderGetReportInput {
                report_data_hex_string: "00ff".into(),
            }),
            "/keyprovider.KeyProviderService/GetReport",
        ),
        Rpc::WrapKey => (
            grpc_frame(&KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: wrap_input(key, &[7; 32]),
            }),
            "/keyprovider.KeyProviderService/WrapKey",
        ),
        Rpc::UnwrapKey => {
            return Err("--h2load-body supports say-hello, get-report, wrap-key".into())
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(path) = &args.h2load_body {
        let (body, grpc_path) = h2load_request(args.rpc, &args.key)?;
        std::fs::write(path, body)?;
        println!("{grpc_path}");
        return Ok(());
    }
    let channel = Channel::from_shared(format!("http://{}", args.target))?
        .connect()
        .await?;
    let mut setup = Client::new(channel.clone());
    let annotation = if args.rpc == Rpc::UnwrapKey {
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

    let ticks_before = args.server_pid.and_then(cpu_ticks);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let mut client = Client::new(channel.clone());
            let (rpc, key, annotation) = (args.rpc, args.key.clone(), annotation.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                call(&mut client, rpc, &key, &annotation, 0).await.ok();
                let mut i = (w as u64) << 32;
                while Instant::now() < deadline {
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
    let elapsed = started.elapsed();
    latencies.sort();
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
