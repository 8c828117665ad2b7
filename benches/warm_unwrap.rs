//! Warm UnWrapKey over gRPC loopback against the bare RSA-OAEP-SHA256 decrypt of the same
//! ciphertext with the same key object, in one process and one run (issue #6, item 1).
//!
//! `cargo bench --bench warm_unwrap` starts the development stack in this process (emulator,
//! simulated SNP, server on 127.0.0.1:0), wraps a layer key for the demo RSA-3072 key, unwraps
//! it once (the cold release), then times:
//! - `bare_decrypt`: aws-lc RSA-OAEP-SHA256 decrypt with the released key the server caches;
//! - `library_unwrap`: `provision::layer::unwrap_with`, the server's decrypt step (base64 of
//!   the packet, zeroized output) without gRPC;
//! - `provisioner_unwrap`: `Provisioner::unwrap_layer_key`, adding the released-key cache
//!   lookup (per-key lock) to the above;
//! - `empty_rpc`: SayHello, one gRPC round trip doing nothing;
//! - `grpc_unwrap_key`: the whole UnWrapKey call, JSON in and out, key from the cache.
//!
//! and prints UnWrapKey / (bare decrypt + empty RPC) from criterion's medians; the target is
//! at most 1.2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use aasp::cli::dev::{self, DEMO_RSA_KEY};
use aasp::proto::keyprovider::key_provider_service_client::KeyProviderServiceClient as Client;
use aasp::proto::keyprovider::{HelloRequest, KeyProviderKeyWrapProtocolInput};
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

struct Fixture {
    runtime: tokio::runtime::Runtime,
    client: Client<Channel>,
    unwrap_input: Vec<u8>,
    packet: AnnotationPacket,
    ciphertext: Vec<u8>,
    released: Arc<ReleasedKey>,
    stack: dev::DevStack,
    _state: tempfile::TempDir,
}

fn keyprovider_input(doc: serde_json::Value) -> KeyProviderKeyWrapProtocolInput {
    KeyProviderKeyWrapProtocolInput {
        key_provider_key_wrap_protocol_input: doc.to_string().into_bytes(),
    }
}

impl Fixture {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let listen = [Listen::Tcp("127.0.0.1:0".parse().unwrap())];
        let stack = runtime
            .block_on(dev::start(
                &listen,
                "127.0.0.1:0".parse().unwrap(),
                state.path(),
            ))
            .unwrap();
        let target = format!("http://{}", stack.server.listeners[0]);
        let mut client = runtime.block_on(async {
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
        let wrapped = runtime
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
        runtime
            .block_on(client.un_wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: unwrap_input.clone(),
            }))
            .unwrap();
        let packet_json: Vec<u8> = serde_json::from_value(annotation).unwrap();
        let packet: AnnotationPacket = serde_json::from_slice(&packet_json).unwrap();
        let released = runtime
            .block_on(
                stack.backend.provisioner.release(
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
            runtime,
            client,
            unwrap_input,
            packet,
            ciphertext,
            released,
            stack,
            _state: state,
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
        b.iter(|| unwrap_with(black_box(&f.packet), &f.released).unwrap())
    });
    let provisioner = &f.stack.backend.provisioner;
    group.bench_function("provisioner_unwrap", |b| {
        b.iter(|| {
            f.runtime
                .block_on(provisioner.unwrap_layer_key(black_box(&f.packet)))
                .unwrap()
        })
    });
    group.bench_function("empty_rpc", |b| {
        b.iter(|| {
            let mut client = f.client.clone();
            f.runtime
                .block_on(client.say_hello(HelloRequest {
                    name: String::new(),
                }))
                .unwrap()
        })
    });
    group.bench_function("grpc_unwrap_key", |b| {
        b.iter(|| {
            let mut client = f.client.clone();
            f.runtime
                .block_on(client.un_wrap_key(KeyProviderKeyWrapProtocolInput {
                    key_provider_key_wrap_protocol_input: f.unwrap_input.clone(),
                }))
                .unwrap()
        })
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
    let [Some(bare), Some(library), Some(provisioner), Some(empty), Some(unwrap)] = [
        "bare_decrypt",
        "library_unwrap",
        "provisioner_unwrap",
        "empty_rpc",
        "grpc_unwrap_key",
    ]
    .map(median_ns) else {
        eprintln!("no criterion estimates found; the ratio is not printed");
        return;
    };
    let us = |ns: f64| ns / 1e3;
    println!(
        "medians: bare decrypt {:.1} µs, library unwrap {:.1} µs, provisioner unwrap {:.1} µs, empty RPC {:.1} µs, UnWrapKey {:.1} µs",
        us(bare),
        us(library),
        us(provisioner),
        us(empty),
        us(unwrap)
    );
    println!(
        "UnWrapKey / (bare decrypt + empty RPC) = {:.2} (target <= 1.2)",
        unwrap / (bare + empty)
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
    }
}
