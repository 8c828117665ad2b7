//! The KBS backend through aasp's own surfaces, against the in-process `aasp dev` stack (its
//! emulated KBS holds the demo resource): attestation-agent `GetToken("kbs")` in upstream's
//! shape, getresource `cc_kbc`, and the refusals a caller can meet.

use crate::common;

use aasp::cli::dev::DEMO_KBS_RESOURCE;
use aasp::kbs::TeeKeyPair;
use aasp::proto::attestation_agent::{
    self as aa, attestation_agent_service_client::AttestationAgentServiceClient,
};
use aasp::proto::getresource::{
    get_resource_service_client::GetResourceServiceClient, GetResourceRequest,
};
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, KeyProviderKeyWrapProtocolInput,
};
use base64::Engine as _;
use serde_json::Value;
use tonic::Code;

async fn channel(dev: &common::Dev) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(dev.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kbs_surfaces_of_the_dev_stack() {
    let dev = common::Dev::start().await;
    let channel = channel(&dev).await;

    // GetToken("kbs"): upstream AA's {"token", "tee_keypair"}; the key is the one the token
    // certifies.
    let mut aa_client = AttestationAgentServiceClient::new(channel.clone());
    let reply = aa_client
        .get_token(aa::GetTokenRequest {
            token_type: "kbs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reply: Value = serde_json::from_slice(&reply.token).unwrap();
    let token = reply["token"].as_str().unwrap();
    let pem = reply["tee_keypair"].as_str().unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "EC keys are PKCS#8 as upstream"
    );
    let key = TeeKeyPair::from_pem(pem).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"]
            ["tee-pubkey"],
        serde_json::to_value(key.public()).unwrap()
    );

    // getresource with KbcName cc_kbc: the seeded resource, in both path forms; KbsUri ignored.
    let mut resources = GetResourceServiceClient::new(channel.clone());
    let mut seen = Vec::new();
    for path in [
        format!("kbs:///{DEMO_KBS_RESOURCE}"),
        DEMO_KBS_RESOURCE.to_owned(),
    ] {
        let resource = resources
            .get_resource(GetResourceRequest {
                resource_path: path,
                kbc_name: "cc_kbc".into(),
                kbs_uri: "https://elsewhere.example".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .resource;
        assert_eq!(resource.len(), 32);
        seen.push(resource);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(
        dev.emulator
            .kbs
            .attestations
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "GetToken attests on its own (as upstream's agent); both reads share one session"
    );

    // A missing resource is NOT_FOUND; a malformed path INVALID_ARGUMENT.
    let missing = resources
        .get_resource(GetResourceRequest {
            resource_path: "kbs:///default/key/none".into(),
            kbc_name: "cc_kbc".into(),
            kbs_uri: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let malformed = resources
        .get_resource(GetResourceRequest {
            resource_path: "kbs:///../etc/passwd".into(),
            kbc_name: "cc_kbc".into(),
            kbs_uri: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");

    // REST, as CoCo's api-server-rest serves it: GET /cdh/resource/<repo>/<type>/<tag>.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = aasp::service::rest::router(std::sync::Arc::clone(&dev.backend));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let rest = reqwest::Client::new();
    let response = rest
        .get(format!("{base}/cdh/resource/{DEMO_KBS_RESOURCE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().to_vec(), seen[0]);
    let response = rest
        .get(format!("{base}/cdh/resource/default/key/none"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no resource"),
        "{body}"
    );

    // A layer encrypted with Confidential Containers' tooling: coco_keyprovider's packet
    // {"kid","wrapped_data","iv","wrap_type"}, the layer options AES-256-GCM-encrypted under
    // the KBS resource `kid`, unwraps through keyprovider UnWrapKey.
    let kek = &seen[0];
    let optsdata = br#"{"cipher":"AES_256_CTR_HMAC_SHA256","key":"bGF5ZXIta2V5"}"#;
    let iv = [7u8; 12];
    let mut wrapped = optsdata.to_vec();
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).unwrap())
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut wrapped)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let packet = serde_json::json!({
        "kid": format!("kbs:///{DEMO_KBS_RESOURCE}"),
        "wrapped_data": b64.encode(&wrapped),
        "iv": b64.encode(iv),
        "wrap_type": "A256GCM",
    });
    let mut keyprovider = KeyProviderServiceClient::new(channel.clone());
    let unwrap = |annotation: Vec<u8>| {
        serde_json::to_vec(&serde_json::json!({
            "op": "keyunwrap",
            "keyunwrapparams": {"dc": {"Parameters": {}}, "annotation": annotation},
        }))
        .unwrap()
    };
    let reply = keyprovider
        .un_wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: unwrap(serde_json::to_vec(&packet).unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    let reply: Value =
        serde_json::from_slice(&reply.key_provider_key_wrap_protocol_output).unwrap();
    let unwrapped: Vec<u8> =
        serde_json::from_value(reply["keyunwrapresults"]["optsdata"].clone()).unwrap();
    assert_eq!(unwrapped, optsdata);
    // The same packet with one flipped ciphertext bit is refused.
    let mut altered = wrapped.clone();
    altered[0] ^= 1;
    let mut bad = packet.clone();
    bad["wrapped_data"] = Value::String(b64.encode(&altered));
    let status = keyprovider
        .un_wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: unwrap(serde_json::to_vec(&bad).unwrap()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A policy that no longer admits this guest: PERMISSION_DENIED.
    let mut config = aasp::emulator::kbs::KbsConfig::default();
    config.policy.measurements = vec![[0u8; 48]];
    dev.emulator.kbs.set_config(config);
    let denied = resources
        .get_resource(GetResourceRequest {
            resource_path: format!("kbs:///{DEMO_KBS_RESOURCE}"),
            kbc_name: "cc_kbc".into(),
            kbs_uri: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("PolicyDeny"),
        "{}",
        denied.message()
    );

    // Unknown token types name the supported ones.
    let denied = aa_client
        .get_token(aa::GetTokenRequest {
            token_type: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::InvalidArgument);
    assert!(denied.message().contains("kbs"), "{}", denied.message());
}
