//! A full run logged at TRACE level, every crate included, must not contain a layer key, a
//! released key or a token: secrets are redacted types, and RPC logs carry no payloads.

use crate::common;

use aasp::cli::dev::DEMO_OCT_KEY;
use aasp::proto::attestation_agent::{
    attestation_agent_service_client::AttestationAgentServiceClient, GetTokenRequest,
};
use aasp::proto::getresource::{
    get_resource_service_client::GetResourceServiceClient, GetResourceRequest,
};
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, KeyProviderKeyWrapProtocolInput,
};
use base64::Engine;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs() {
    let captured = common::capture_logs(tracing::Level::TRACE, false).await;

    let stack = common::Dev::start().await;
    let url = stack.grpc_url();
    let b64 = base64::engine::general_purpose::STANDARD;

    let layer_key = *b"layer-key-0123456789-abcdefghijk";
    let mut kp = KeyProviderServiceClient::connect(url.clone())
        .await
        .unwrap();
    let wrap = json!({"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[b64.encode("aasp:demo-oct")]}},"optsdata":b64.encode(layer_key)}});
    let out = kp
        .wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: wrap.to_string().into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let wrapped: Value =
        serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap();
    let unwrap = json!({"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":[b64.encode("aasp")]}},"annotation":wrapped["keywrapresults"]["annotation"]}});
    let out = kp
        .un_wrap_key(KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: unwrap.to_string().into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let unwrapped: Value =
        serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap();
    assert_eq!(unwrapped["keyunwrapresults"]["optsdata"], json!(layer_key));

    let mut resources = GetResourceServiceClient::connect(url.clone())
        .await
        .unwrap();
    let resource = resources
        .get_resource(GetResourceRequest {
            resource_path: DEMO_OCT_KEY.into(),
            kbc_name: "aasp".into(),
            kbs_uri: stack.emulator.url.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let released: Value = serde_json::from_slice(&resource.resource).unwrap();
    let oct = released["k"].as_str().unwrap().to_owned();

    let mut agent = AttestationAgentServiceClient::connect(url).await.unwrap();
    let token = String::from_utf8(
        agent
            .get_token(GetTokenRequest {
                token_type: "maa".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token,
    )
    .unwrap();
    let signature = token.rsplit('.').next().unwrap().to_owned();

    let logs = String::from_utf8_lossy(&captured.bytes()).into_owned();
    assert!(
        logs.contains("rpc done") && logs.contains("keyprovider/UnWrapKey"),
        "the capture works"
    );
    assert!(
        logs.len() > 10_000,
        "TRACE logging of every crate was captured ({} bytes)",
        logs.len()
    );
    let oct_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&oct)
        .unwrap();
    for (what, needle) in [
        (
            "layer key (raw)",
            String::from_utf8_lossy(&layer_key).into_owned(),
        ),
        ("layer key (base64)", b64.encode(layer_key)),
        ("released key (base64url)", oct.clone()),
        ("released key (base64)", b64.encode(&oct_bytes)),
        ("released key (hex)", hex::encode(&oct_bytes)),
        ("MAA token signature", signature),
    ] {
        assert!(!logs.contains(&needle), "{what} appears in the logs");
    }
}
