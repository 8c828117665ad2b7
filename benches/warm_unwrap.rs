//! Warm UnWrapKey over gRPC loopback against the bare RSA-OAEP-SHA256 decrypt of the same
//! ciphertext with the same key object, in one process and one run (issue #14).
//!
//! `cargo bench --bench warm_unwrap` starts the development stack in this process twice
//! (emulator, simulated SNP, server on 127.0.0.1:0): once as `aasp serve` runs by default
//! (`--decrypt-threads` = CPUs: a call alone on its connection decrypts in place while another
//! worker is free, other decrypts go to the blocking pool) and once with `--decrypt-threads 0`
//! (every decrypt on the async worker that took the call). Each wraps a layer
//! key for the demo RSA-3072 key and unwraps it once (the cold release); then this times:
//! - `bare_decrypt`: aws-lc RSA-OAEP-SHA256 decrypt with the released key the server caches;
//! - `library_unwrap`: `provision::layer::unwrap_with`, the server's decrypt step (base64 of
//!   the packet, zeroized output) without gRPC;
//! - `provisioner_unwrap`: `Provisioner::unwrap_layer_key`, adding the released-key cache
//!   lookup and the hand-off to the decrypt pool (as for a call that shares its connection);
//! - `empty_rpc`: SayHello, one gRPC round trip doing nothing;
//! - `grpc_unwrap_key`: the whole UnWrapKey call, JSON in and out, key from the cache;
//! - `grpc_unwrap_key_inline`: the same against the `--decrypt-threads 0` server.
//!
//! and prints UnWrapKey / (bare decrypt + empty RPC) from criterion's medians; the target is
//! at most 1.10.
//!
//! The runtimes are set up as a deployment has them: the server on its own multi-threaded
//! runtime with tokio's default worker count (one per CPU, as `aasp serve`), the client on a
//! single-threaded runtime driven by the benchmark thread, so that no client task ever runs on
//! (or queues behind) a server worker — a real client is another process. The denominator's
//! empty RPC goes through the same client, connection and server, so the ratio measures what
//! the server adds around the decrypt: JSON, base64, the cache lookup, and the wake-ups of
//! wherever the decrypt runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../examples/common/process_cpu.rs"]
mod process_cpu;
use process_cpu::process_cpu_ns;

use aasp::cli::dev::{self, EmulatorOptions, DEMO_RSA_KEY};
use aasp::proto::keyprovider::key_provider_service_client::KeyProviderServiceClient as Client;
use aasp::proto::keyprovider::{HelloRequest, KeyProviderKeyWrapProtocolInput};
use aasp::provision::decrypt::Caller;
use aasp::provision::layer::{unwrap_with, AnnotationPacket};
use aasp::provision::KeyRef;
use aasp::provision::ReleasedKey;
use aasp::service::Listen;
use aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use criterion::Criterion;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::transport::Channel;

const GROUP: &str = "warm_unwrap";

/// One development stack (server + emulator) on the shared server runtime, and a client of it
/// on the client runtime.
struct Stack {
    client: Client<Channel>,
    unwrap_input: Vec<u8>,
    packet: AnnotationPacket,
    stack: dev::DevStack,
    _state: tempfile::TempDir,
}

struct Fixture {
    /// The server's runtime: tokio's default worker count, as `aasp serve`.
    server: tokio::runtime::Runtime,
    /// The client's: one thread, the benchmark's own (a client is another process in practice).
    client: tokio::runtime::Runtime,
    /// Default decrypt placement (the blocking pool).
    pooled: Stack,
    /// `--decrypt-threads 0`: the decrypt on the async worker.
    inline: Stack,
    ciphertext: Vec<u8>,
    released: Arc<ReleasedKey>,
}

fn keyprovider_input(doc: serde_json::Value) -> KeyProviderKeyWrapProtocolInput {
    KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: doc.to_string().into_bytes(),
    }
}

impl Stack {
    fn start(
        server: &tokio::runtime::Runtime,
        client_rt: &tokio::runtime::Runtime,
        decrypt_threads: Option<usize>,
    ) -> Self {
        let state = tempfile::tempdir().unwrap();
        let listen = [Listen::Tcp("127.0.0.1:0".parse().unwrap())];
        let options = EmulatorOptions {
            decrypt_threads,
            ..Default::default()
        };
        let stack = server
            .block_on(dev::start_with(
                &listen,
                "127.0.0.1:0".parse().unwrap(),
                state.path(),
                &options,
            ))
            .unwrap();
        let target = format!("http://{}", stack.server.listeners[0]);
        // Connected inside the client runtime: the channel's background tasks live there.
        let mut client = client_rt.block_on(async {
            Client::new(
                Channel::from_shared(target)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            )
        });
        let wrap = keyprovider_input(serde_json::json!({
            "op": "keywrap",
            "keywrapparams": {
                "ec": {"Parameters": {"attestation-agent": [STANDARD.encode(format!("aasp:{DEMO_RSA_KEY}"))]}},
                "optsdata": STANDARD.encode([0x5a; 32]),
            }
        }));
        let wrapped = client_rt
            .block_on(client.wrap_key(wrap))
            .unwrap()
            .into_inner()
            .key_provider_key_wrap_protocol_output;
        let wrapped: serde_json::Value = serde_json::from_slice(&wrapped).unwrap();
        // The reply's annotation (an array of bytes) goes back as the unwrap input unchanged.
        let annotation = wrapped["keywrapresults"]["annotation"].clone();
        let unwrap_input = keyprovider_input(serde_json::json!({
            "op": "keyunwrap",
            "keyunwrapparams": {
                "dc": {"Parameters": {"attestation-agent": [STANDARD.encode("aasp")]}},
                "annotation": annotation,
            }
        }))
        .key_provider_key_wrap_protocol_input;
        // The cold call: secure key release, after which the key is cached.
        client_rt
            .block_on(client.un_wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: unwrap_input.clone(),
            }))
            .unwrap();
        let packet_json: Vec<u8> = serde_json::from_value(annotation).unwrap();
        let packet: AnnotationPacket = serde_json::from_slice(&packet_json).unwrap();
        Stack {
            client,
            unwrap_input,
            packet,
            stack,
            _state: state,
        }
    }

    /// Makes sure the client's connection is alive before it is timed. The client runtime runs
    /// only inside `block_on`, so between benchmarks nobody answers the server's keepalive
    /// PINGs, and after 40 s (interval + timeout) the server drops the connection, as it
    /// should for a peer that stopped answering; the first call after that fails once and
    /// tonic reconnects.
    fn reconnect_if_dropped(&self, client_rt: &tokio::runtime::Runtime) {
        let mut client = self.client.clone();
        let hello = || HelloRequest {
            name: String::new(),
        };
        if client_rt.block_on(client.say_hello(hello())).is_err() {
            client_rt.block_on(client.say_hello(hello())).unwrap();
        }
    }

    fn unwrap_key(&self, client_rt: &tokio::runtime::Runtime) {
        let mut client = self.client.clone();
        client_rt
            .block_on(client.un_wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: self.unwrap_input.clone(),
            }))
            .unwrap();
    }
}

impl Fixture {
    fn start() -> Self {
        let server = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pooled = Stack::start(&server, &client, None);
        let inline = Stack::start(&server, &client, Some(0));
        let packet = &pooled.packet;
        let released = server
            .block_on(
                pooled.stack.backend.provisioner.release(
                    &KeyRef::azure(
                        &packet.kms_endpoint,
                        DEMO_RSA_KEY,
                        &packet.attester_endpoint,
                    )
                    .unwrap(),
                ),
            )
            .unwrap();
        let ciphertext = STANDARD.decode(&packet.wrapped_data).unwrap();
        Fixture {
            server,
            client,
            pooled,
            inline,
            ciphertext,
            released,
        }
    }
}

fn bench(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group(GROUP);
    let private = f.released.rsa_private().unwrap();
    let mut out = vec![0u8; private.min_output_size()];
    group.bench_function("bare_decrypt", |b| {
        b.iter(|| {
            private
                .decrypt(
                    &OAEP_SHA256_MGF1SHA256,
                    black_box(&f.ciphertext),
                    &mut out,
                    None,
                )
                .unwrap()
                .len()
        })
    });
    group.bench_function("library_unwrap", |b| {
        b.iter(|| unwrap_with(black_box(&f.pooled.packet), &f.released).unwrap())
    });
    let provisioner = &f.pooled.stack.backend.provisioner;
    group.bench_function("provisioner_unwrap", |b| {
        b.iter(|| {
            f.server
                .block_on(provisioner.unwrap_layer_key(black_box(&f.pooled.packet), Caller::Shared))
                .unwrap()
        })
    });
    f.pooled.reconnect_if_dropped(&f.client);
    group.bench_function("empty_rpc", |b| {
        b.iter(|| {
            let mut client = f.pooled.client.clone();
            f.client
                .block_on(client.say_hello(HelloRequest {
                    name: String::new(),
                }))
                .unwrap()
        })
    });
    f.pooled.reconnect_if_dropped(&f.client);
    group.bench_function("grpc_unwrap_key", |b| {
        b.iter(|| f.pooled.unwrap_key(&f.client))
    });
    f.inline.reconnect_if_dropped(&f.client);
    group.bench_function("grpc_unwrap_key_inline", |b| {
        b.iter(|| f.inline.unwrap_key(&f.client))
    });
    group.finish();
}

/// Criterion's median estimate of one benchmark of this run, in nanoseconds.
fn median_ns(id: &str) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME").map_or_else(
        || {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("criterion")
        },
        PathBuf::from,
    );
    let path = home.join(GROUP).join(id).join("new/estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn print_ratio() {
    let [Some(bare), Some(library), Some(provisioner), Some(empty), Some(unwrap), Some(inline)] = [
        "bare_decrypt",
        "library_unwrap",
        "provisioner_unwrap",
        "empty_rpc",
        "grpc_unwrap_key",
        "grpc_unwrap_key_inline",
    ]
    .map(median_ns) else {
        eprintln!("no criterion estimates found; the ratio is not printed");
        return;
    };
    let us = |ns: f64| ns / 1e3;
    println!(
        "medians: bare decrypt {:.1} µs, library unwrap {:.1} µs, provisioner unwrap {:.1} µs, empty RPC {:.1} µs, UnWrapKey {:.1} µs, UnWrapKey inline {:.1} µs",
        us(bare),
        us(library),
        us(provisioner),
        us(empty),
        us(unwrap),
        us(inline)
    );
    println!(
        "UnWrapKey / (bare decrypt + empty RPC) = {:.2} (target <= 1.10); decrypt on the worker (--decrypt-threads 0): {:.2}",
        unwrap / (bare + empty),
        inline / (bare + empty)
    );
}

/// Wall and process CPU time per call of `op`, over `rounds` calls after a warm-up.
fn per_call(rounds: u32, mut op: impl FnMut()) -> (f64, f64) {
    for _ in 0..rounds / 10 {
        op();
    }
    let (cpu, wall) = (process_cpu_ns(), std::time::Instant::now());
    for _ in 0..rounds {
        op();
    }
    let wall = wall.elapsed().as_nanos() as f64 / f64::from(rounds);
    let cpu = process_cpu_ns().saturating_sub(cpu) as f64 / f64::from(rounds);
    (wall, cpu)
}

/// The same comparison in CPU time (client and server together, all in this process), which a
/// busy machine distorts much less than wall time: what each call costs, not how long it waits.
fn print_cpu_ratio(f: &Fixture) {
    let rounds = std::env::var("WARM_UNWRAP_CPU_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000);
    let private = f.released.rsa_private().unwrap();
    let mut out = vec![0u8; private.min_output_size()];
    let bare = per_call(rounds, || {
        private
            .decrypt(&OAEP_SHA256_MGF1SHA256, &f.ciphertext, &mut out, None)
            .unwrap();
    });
    f.pooled.reconnect_if_dropped(&f.client);
    f.inline.reconnect_if_dropped(&f.client);
    let empty = per_call(rounds, || {
        let mut client = f.pooled.client.clone();
        f.client
            .block_on(client.say_hello(HelloRequest {
                name: String::new(),
            }))
            .unwrap();
    });
    let pooled = per_call(rounds, || f.pooled.unwrap_key(&f.client));
    let inline = per_call(rounds, || f.inline.unwrap_key(&f.client));
    let us = |ns: f64| ns / 1e3;
    for (name, (wall, cpu)) in [
        ("bare decrypt", bare),
        ("empty RPC", empty),
        ("UnWrapKey", pooled),
        ("UnWrapKey inline", inline),
    ] {
        println!(
            "cpu: {name}: {:.1} µs CPU, {:.1} µs wall per call ({rounds} calls)",
            us(cpu),
            us(wall)
        );
    }
    println!(
        "cpu: UnWrapKey CPU / (bare decrypt + empty RPC) = {:.2}; decrypt on the worker (--decrypt-threads 0): {:.2}",
        pooled.1 / (bare.1 + empty.1),
        inline.1 / (bare.1 + empty.1)
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let fixture = Fixture::start();
    bench(&mut criterion, &fixture);
    criterion.final_summary();
    // `cargo bench` passes --bench; under `cargo test` each benchmark ran once, untimed.
    if std::env::args().any(|a| a == "--bench") {
        print_ratio();
        print_cpu_ratio(&fixture);
    }
}
