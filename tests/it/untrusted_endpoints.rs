//! Endpoints named by untrusted input (issue 11, item 1): an annotation packet, a REST body, a
//! GetResource URI or a key reference naming a host off the allow-list is refused with
//! PERMISSION_DENIED before any report, MAA call, token fetch or connection. A plain TCP
//! listener plays the rogue KMS/MAA and counts the connections it gets: none.

use crate::common;

use aasp::cli::dev::{DEMO_OCT_KEY, DEMO_RSA_KEY};
use aasp::proto::getresource::{
    get_resource_service_client::GetResourceServiceClient, GetResourceRequest,
};
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, KeyProviderKeyWrapProtocolInput,
};
use aasp::provision::layer::AnnotationPacket;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::Code;

/// A TCP listener that accepts and counts connections, then drops them.
async fn rogue() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (addr, accepted)
}

/// Work aasp and the emulator did: reports, MAA calls, access tokens issued, releases.
fn work(stack: &common::Dev) -> [u64; 4] {
    let c = &stack.backend.provisioner.counters;
    [
        c.reports.load(Ordering::SeqCst),
        c.maa_calls.load(Ordering::SeqCst),
        stack.emulator.counters.tokens.load(Ordering::SeqCst),
        c.release_calls.load(Ordering::SeqCst),
    ]
}

fn unwrap_input(packet: &AnnotationPacket) -> Vec<u8> {
    json!({"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":[STANDARD.encode("aasp")]}},"annotation":packet.to_annotation()}}).to_string().into_bytes()
}

fn wrap_input(key_ref: &str) -> Vec<u8> {
    json!({"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[STANDARD.encode(format!("aasp:{key_ref}"))]}},"optsdata":STANDARD.encode([5u8; 32])}}).to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn keyprovider_requests_naming_other_hosts_reach_nothing() {
    let stack = common::Dev::start().await;
    let (rogue, accepted) = rogue().await;
    let emulator = stack.emulator.host();
    let mut client = KeyProviderServiceClient::connect(stack.grpc_url())
        .await
        .unwrap();

    let packet = |kms: &str, maa: &str| AnnotationPacket {
        kid: DEMO_RSA_KEY.into(),
        wrapped_data: STANDARD.encode([1u8; 384]),
        iv: String::new(),
        wrap_type: "rsa_3072".into(),
        kms_endpoint: kms.into(),
        attester_endpoint: maa.into(),
    };
    // First a packet naming the allowed hosts and the same key (released; its made-up data
    // does not decrypt): the packets below differ from it in their hosts only, and must not
    // be taken for it (aasp keeps the last packet's parsed key).
    let status = client
        .un_wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: unwrap_input(&packet(
                &stack.emulator.url,
                &emulator,
            )),
        })
        .await
        .unwrap_err();
    assert!(
        !status.message().contains("--allow-"),
        "the allowed hosts were refused: {status:?}"
    );
    let before = work(&stack);
    // (packet, code, what the message must say)
    let cases = [
        (
            packet(&format!("http://{rogue}"), &emulator),
            Code::InvalidArgument,
            "only https",
        ),
        (
            packet(&format!("https://{rogue}"), &emulator),
            Code::PermissionDenied,
            "--allow-kms-host",
        ),
        (
            packet(&rogue, &emulator),
            Code::PermissionDenied,
            "--allow-kms-host",
        ),
        (
            packet(&stack.emulator.url, &rogue),
            Code::PermissionDenied,
            "--allow-maa-host",
        ),
        // The mis-parse: user information before the real host.
        (
            packet(&format!("https://{emulator}@{rogue}"), &emulator),
            Code::InvalidArgument,
            "user information",
        ),
        (
            packet(&format!("https://{rogue}/keys"), &emulator),
            Code::InvalidArgument,
            "path",
        ),
    ];
    for (packet, code, says) in cases {
        let status = client
            .un_wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: unwrap_input(&packet),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{packet:?}: {status:?}");
        assert!(status.message().contains(says), "{packet:?}: {status:?}");
    }
    // A key reference URL naming another host, for WrapKey.
    for key_ref in [
        format!("https://{rogue}/keys/{DEMO_OCT_KEY}?maa={emulator}"),
        format!("https://{emulator}/keys/{DEMO_OCT_KEY}?maa={rogue}"),
    ] {
        let status = client
            .wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: wrap_input(&key_ref),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{key_ref}: {status:?}"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the rogue host got connections"
    );
    assert_eq!(
        work(&stack),
        before,
        "reports, MAA calls, tokens or releases happened"
    );

    // The allowed host still works: the refusals above are the allow-list's, not a broken path.
    let out = client
        .wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: wrap_input(DEMO_OCT_KEY),
        })
        .await
        .unwrap()
        .into_inner();
    let doc: Value = serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap();
    assert!(!doc["keywrapresults"]["annotation"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_and_get_resource_naming_other_hosts_reach_nothing() {
    let stack = common::Dev::start().await;
    let (rogue, accepted) = rogue().await;
    let emulator = stack.emulator.host();
    let router = aasp::service::rest::router(Arc::clone(&stack.backend));
    let base = format!("http://{}", common::serve(router).await);
    let http = reqwest::Client::new();
    let before = work(&stack);

    let bodies = [
        (
            "/key/release",
            json!({"akv_endpoint": rogue, "kid": DEMO_OCT_KEY, "maa_endpoint": emulator}),
            403,
            "--allow-kms-host",
        ),
        (
            "/key/release",
            json!({"akv_endpoint": format!("https://{rogue}"), "kid": DEMO_OCT_KEY, "maa_endpoint": emulator, "access_token": "caller-token"}),
            403,
            "--allow-kms-host",
        ),
        (
            "/key/release",
            json!({"akv_endpoint": emulator, "kid": format!("https://{rogue}/keys/{DEMO_OCT_KEY}"), "maa_endpoint": emulator}),
            403,
            "--allow-kms-host",
        ),
        (
            "/key/release",
            json!({"akv_endpoint": emulator, "kid": DEMO_OCT_KEY, "maa_endpoint": rogue}),
            403,
            "--allow-maa-host",
        ),
        (
            "/key/release",
            json!({"akv_endpoint": format!("https://{emulator}@{rogue}"), "kid": DEMO_OCT_KEY, "maa_endpoint": emulator}),
            400,
            "user information",
        ),
        (
            "/attest/maa",
            json!({"maa_endpoint": rogue, "runtime_data": STANDARD.encode("{}")}),
            403,
            "--allow-maa-host",
        ),
        (
            "/attest/maa",
            json!({"maa_endpoint": format!("http://{emulator}"), "runtime_data": STANDARD.encode("{}")}),
            400,
            "only https",
        ),
    ];
    for (path, body, code, says) in bodies {
        let response = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(status, code, "{path} {body}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(says),
            "{path} {body}: {reply}"
        );
    }

    let mut grpc = GetResourceServiceClient::connect(stack.grpc_url())
        .await
        .unwrap();
    for (uri, code) in [
        (rogue.clone(), Code::PermissionDenied),
        (
            format!("https://{rogue}?maa={emulator}"),
            Code::PermissionDenied,
        ),
        (
            format!("{}?maa={rogue}", stack.emulator.url),
            Code::PermissionDenied,
        ),
        (format!("https://{emulator}@{rogue}"), Code::InvalidArgument),
        (
            format!("{}?maa={emulator}&x=1", stack.emulator.url),
            Code::InvalidArgument,
        ),
    ] {
        let status = grpc
            .get_resource(GetResourceRequest {
                resource_path: DEMO_OCT_KEY.into(),
                kbc_name: "aasp".into(),
                kbs_uri: uri.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{uri}: {status:?}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the rogue host got connections"
    );
    assert_eq!(
        work(&stack),
        before,
        "reports, MAA calls, tokens or releases happened"
    );

    // Key names are Key Vault's: a path or a megabyte is the caller's error, sent nowhere.
    for kid in ["a/b".to_owned(), "x".repeat(500_000)] {
        let response = http
            .post(format!("{base}/key/release"))
            .json(&json!({"akv_endpoint": emulator, "kid": kid, "maa_endpoint": emulator}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let reply = response.text().await.unwrap();
        assert_eq!(status, 400, "{reply}");
        assert!(
            reply.len() < 1000,
            "the error echoes a bounded part: {} bytes",
            reply.len()
        );
    }

    // The allowed emulator still releases.
    let response = http
        .post(format!("{base}/key/release"))
        .json(&json!({"akv_endpoint": stack.emulator.url, "kid": DEMO_OCT_KEY, "maa_endpoint": emulator}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}
