//! 64 concurrent cold UnWrapKeys of one key share one flight: exactly one MAA call and one
//! Managed HSM release (a count, not a time). The latencies are printed, not asserted.

use crate::common;

use aasp::cli::dev::DEMO_RSA_KEY;
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, KeyProviderKeyWrapProtocolInput,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Instant;
use tonic::transport::Channel;

/// An UnWrapKey request for a layer key ([5; 32]) wrapped for the demo RSA key.
async fn demo_rsa_unwrap_request(client: &mut KeyProviderServiceClient<Channel>) -> String {
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
    json!({"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":[STANDARD.encode("aasp")]}},"annotation":annotation}}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_cold_unwraps_make_one_maa_call_and_one_release() {
    let stack = common::Dev::start().await;
    let url = stack.grpc_url();
    let mut client = KeyProviderServiceClient::connect(url.clone())
        .await
        .unwrap();
    // WrapKey for an RSA key with a known public key is offline: nothing is released yet.
    let unwrap = demo_rsa_unwrap_request(&mut client).await;
    assert_eq!(
        (
            stack.emulator.counters.maa(),
            stack.emulator.counters.release()
        ),
        (0, 0)
    );

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

/// Concurrent UnWrapKeys on connections of their own, of a key not yet released: the callers
/// that waited for the release leave the async workers for their decrypts (each woke the next
/// waiter, which tokio would queue behind a decrypt in place), at most the last one decrypts in
/// place. A lone warm call then does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_behind_a_cold_release_decrypts_off_the_workers() {
    let stack = common::Dev::start().await;
    let url = stack.grpc_url();
    let client = || async {
        KeyProviderServiceClient::connect(url.clone())
            .await
            .unwrap()
    };
    let unwrap = demo_rsa_unwrap_request(&mut client().await).await;
    let call = |mut client: KeyProviderServiceClient<_>| {
        let input = unwrap.clone().into_bytes();
        async move {
            client
                .un_wrap_key(KeyProviderKeyWrapProtocolInput {
                    key_provider_key_wrap_protocol_input: input,
                })
                .await
                .unwrap();
        }
    };
    let provisioner = &stack.backend.provisioner;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(client().await);
    }
    // A slow release, so that every call of the burst waits for it.
    stack.emulator.set_faults("latency=100ms".parse().unwrap());
    let burst: Vec<_> = clients.into_iter().map(|c| tokio::spawn(call(c))).collect();
    for call in burst {
        call.await.unwrap();
    }
    stack.emulator.set_faults(Default::default());
    assert_eq!(stack.emulator.counters.release(), 1);
    let in_place = provisioner.decrypts_in_place();
    assert!(
        in_place <= 1,
        "{in_place} of the burst's 8 decrypts ran in place"
    );
    call(client().await).await;
    assert_eq!(
        provisioner.decrypts_in_place(),
        in_place + 1,
        "a lone warm call left its worker"
    );
}

fn unwrap_request(packet: &aasp::provision::layer::AnnotationPacket) -> Vec<u8> {
    json!({"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":[STANDARD.encode("aasp")]}},"annotation":packet.to_annotation()}}).to_string().into_bytes()
}

/// Issue 11 item 4: 8 concurrent UnWrapKeys of a key the KMS answers 404 for, slowly, share one
/// flight and its error (they used to run one after another: 8 upstream calls, 8 × the latency).
/// The in-flight gauge counts the release while it runs.
#[tokio::test(flavor = "multi_thread")]
async fn waiters_of_a_failed_flight_share_its_error() {
    let stack = common::Dev::start().await;
    let mut client = KeyProviderServiceClient::connect(stack.grpc_url())
        .await
        .unwrap();
    let packet = aasp::provision::layer::AnnotationPacket {
        kid: "no-such-key".into(),
        wrapped_data: STANDARD.encode([1u8; 384]),
        iv: String::new(),
        wrap_type: "rsa_3072".into(),
        kms_endpoint: stack.emulator.url.clone(),
        attester_endpoint: stack.emulator.host(),
    };
    // Warm the MAA and access tokens first, so that only the KMS call is slow.
    let status = client
        .un_wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: unwrap_request(&packet),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let counters = &stack.backend.provisioner.counters;
    let before = counters
        .release_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    stack.emulator.set_faults("latency=2000ms".parse().unwrap());
    let started = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            let input = unwrap_request(&packet);
            tokio::spawn(async move {
                let status = client
                    .un_wrap_key(KeyProviderKeyWrapProtocolInput {
                        key_provider_key_wrap_protocol_input: input,
                    })
                    .await
                    .unwrap_err();
                (started.elapsed(), status)
            })
        })
        .collect();
    // The gauge shows the release while it is under way (the KMS holds it for 2 s).
    let mut seen_in_flight = false;
    while !calls.iter().all(|c| c.is_finished()) {
        let gauge = aasp::metrics::render()
            .lines()
            .find_map(|l| {
                l.strip_prefix("aasp_releases_in_flight ")
                    .map(str::to_owned)
            })
            .unwrap();
        seen_in_flight |= gauge.parse::<i64>().unwrap() >= 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut finished = Vec::new();
    for call in calls {
        let (at, status) = call.await.unwrap();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        finished.push(at);
    }
    stack.emulator.set_faults(Default::default());
    assert_eq!(
        counters
            .release_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            - before,
        1,
        "one upstream call for 8 waiters"
    );
    assert!(
        seen_in_flight,
        "aasp_releases_in_flight never counted the release"
    );
    finished.sort();
    println!(
        "8 UnWrapKeys against a slow 404: first done after {:?}, last after {:?}",
        finished[0], finished[7]
    );
}

/// Issue 11 item 3: a released key is gone from the cache after its TTL, with no new request
/// (the background sweep), and failed flights leave nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn released_keys_leave_the_cache_after_their_ttl() {
    let stack = common::Dev::start().await;
    let mut args = aasp::cli::serve::BackendArgs::for_emulator(
        &stack.emulator.url,
        &stack.emulator.ca_path,
        &stack.state_dir,
        None,
    );
    args.cache_ttl = 1;
    args.transfer_key_rotation = 0;
    let backend = args.build().unwrap();
    let p = &backend.provisioner;
    for name in ["missing-1", "missing-2", "missing-3"] {
        let key = aasp::provision::KeyRef::azure(&stack.emulator.url, name, &stack.emulator.host())
            .unwrap();
        assert!(p.release(&key).await.is_err());
    }
    // At most the MAA token (it may have expired already); nothing for the three failed keys.
    assert!(p.cached_entries() <= 1, "{} entries", p.cached_entries());
    let key = aasp::provision::KeyRef::azure(
        &stack.emulator.url,
        aasp::cli::dev::DEMO_OCT_KEY,
        &stack.emulator.host(),
    )
    .unwrap();
    p.release(&key).await.unwrap();
    assert!(p.cached_entries() >= 1, "the released key is cached");
    // No request from here on: the sweep alone must empty the cache.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while p.cached_entries() > 0 && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(p.cached_entries(), 0, "expired entries are still held");
}
