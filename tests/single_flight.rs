//! 64 concurrent cold UnWrapKeys of one key share one flight: exactly one MAA call and one
//! Managed HSM release (a count, not a time). The latencies are printed, not asserted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use aasp::cli::dev::DEMO_RSA_KEY;
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, KeyProviderKeyWrapProtocolInput,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_cold_unwraps_make_one_maa_call_and_one_release() {
    let stack = common::Dev::start().await;
    let url = stack.grpc_url();
    let mut client = KeyProviderServiceClient::connect(url.clone())
        .await
        .unwrap();
    // WrapKey for an RSA key with a known public key is offline: nothing is released yet.
    let wrap = json!({"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[STANDARD.encode(format!("aasp:{DEMO_RSA_KEY}"))]}},"optsdata":STANDARD.encode([5u8; 32])}});
    let out = client
        .wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: wrap.to_string().into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let annotation = serde_json::from_slice::<Value>(&out.key_provider_key_wrap_protocol_output)
        .unwrap()["keywrapresults"]["annotation"]
        .clone();
    assert_eq!(
        (
            stack.emulator.counters.maa(),
            stack.emulator.counters.release()
        ),
        (0, 0)
    );

    let unwrap = json!({"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":[STANDARD.encode("aasp")]}},"annotation":annotation}}).to_string();
    let started = Instant::now();
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let mut client = client.clone();
            let input = unwrap.clone().into_bytes();
            tokio::spawn(async move {
                let out = client
                    .un_wrap_key(KeyProviderKeyWrapProtocolInput {
                        key_provider_key_wrap_protocol_input: input,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let doc: Value =
                    serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap();
                (
                    started.elapsed(),
                    doc["keyunwrapresults"]["optsdata"].clone(),
                )
            })
        })
        .collect();
    let mut finished = Vec::new();
    for call in calls {
        let (at, optsdata) = call.await.unwrap();
        assert_eq!(optsdata, json!(vec![5u8; 32]));
        finished.push(at);
    }
    finished.sort();
    assert_eq!(
        stack.emulator.counters.maa(),
        1,
        "one MAA call for 64 callers"
    );
    assert_eq!(
        stack.emulator.counters.release(),
        1,
        "one release for 64 callers"
    );
    println!(
        "cold UnWrapKey x64: first done after {:?}, 64th after {:?}",
        finished[0], finished[63]
    );
}
