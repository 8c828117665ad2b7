//! The ttrpc transport over a real Unix socket, called as Kata / Confidential Containers guest
//! components call their attestation agent: a `ttrpc` crate client with its own stubs (prost
//! messages over the raw payload), every AttestationAgentService RPC, and the layer-key round
//! trip through keyprovider.KeyProviderService.

use crate::common;

use aasp::cli::dev::DEMO_RSA_KEY;
use aasp::proto::attestation_agent as aa;
use aasp::proto::keyprovider as kp;
use aasp::service::ttrpc::TtrpcBound;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use ttrpc::proto::RequestInit;

const AA: &str = common::AA_SERVICE;
const KP: &str = "keyprovider.KeyProviderService";

#[tokio::test(flavor = "multi_thread")]
async fn every_attestation_agent_rpc_and_unwrap_over_ttrpc() {
    let dev = common::Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("attestation-agent.sock");
    let bound = TtrpcBound::bind(&path).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        bound.serve(std::sync::Arc::clone(&dev.backend), async move {
            let _ = stopped.await;
        }),
    );
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", path.display()))
        .await
        .unwrap();

    // GetEvidence: upstream SNP evidence, report_data = the runtime data zero-padded.
    let nonce = b"ttrpc nonce".to_vec();
    let evidence: aa::GetEvidenceResponse = common::ttrpc_call(
        &client,
        AA,
        "GetEvidence",
        &aa::GetEvidenceRequest {
            runtime_data: nonce.clone(),
        },
    )
    .await
    .unwrap();
    let doc: Value = serde_json::from_slice(&evidence.evidence).unwrap();
    let report_data: Vec<u8> =
        serde_json::from_value(doc["attestation_report"]["report_data"].clone()).unwrap();
    let mut padded = nonce.clone();
    padded.resize(64, 0);
    assert_eq!(report_data, padded);
    assert_eq!(doc["cert_chain"].as_array().unwrap().len(), 3);
    // The same handlers, the same error map.
    let status = common::ttrpc_call::<_, aa::GetEvidenceResponse>(
        &client,
        AA,
        "GetEvidence",
        &aa::GetEvidenceRequest {
            runtime_data: vec![0; 65],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT, "{status:?}");

    let extra: aa::GetEvidenceResponse = common::ttrpc_call(
        &client,
        AA,
        "GetAdditionalEvidence",
        &aa::GetEvidenceRequest {
            runtime_data: nonce,
        },
    )
    .await
    .unwrap();
    assert!(extra.evidence.is_empty());

    let token: aa::GetTokenResponse = common::ttrpc_call(
        &client,
        AA,
        "GetToken",
        &aa::GetTokenRequest {
            token_type: "maa".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(token.token).unwrap().split('.').count(),
        3
    );
    let status = common::ttrpc_call::<_, aa::GetTokenResponse>(
        &client,
        AA,
        "GetToken",
        &aa::GetTokenRequest {
            token_type: "tpm".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT, "{status:?}");

    // CDH's PullImage event, as confidential-data-hub sends it.
    let extend: aa::ExtendRuntimeMeasurementResponse = common::ttrpc_call(
        &client,
        AA,
        "ExtendRuntimeMeasurement",
        &aa::ExtendRuntimeMeasurementRequest {
            domain: "github.com/confidential-containers".into(),
            operation: "PullImage".into(),
            content: r#"{"image":"docker.io/library/busybox:latest", "digest":"sha256:00"}"#.into(),
            register_index: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        extend.result,
        aa::RuntimeMeasurementResult::NotSupported as i32
    );

    let tee: aa::GetTeeTypeResponse =
        common::ttrpc_call(&client, AA, "GetTeeType", &aa::GetTeeTypeRequest {})
            .await
            .unwrap();
    assert_eq!(tee.tee, "snp");
    let tees: aa::GetAdditionalTeesResponse = common::ttrpc_call(
        &client,
        AA,
        "GetAdditionalTees",
        &aa::GetAdditionalTeesRequest {},
    )
    .await
    .unwrap();
    assert!(tees.additional_tees.is_empty());

    // BindInitData: a SHA-384 digest whose first 32 bytes are HOST_DATA binds.
    let host_data = dev.backend.provisioner.attester().report(&[0; 64]).unwrap();
    let host_data = aasp::snp::AttestationReport::from_bytes(&host_data)
        .unwrap()
        .host_data;
    let mut digest = host_data.to_vec();
    digest.resize(48, 0x33);
    let _: aa::BindInitDataResponse = common::ttrpc_call(
        &client,
        AA,
        "BindInitData",
        &aa::BindInitDataRequest { digest },
    )
    .await
    .unwrap();
    let status = common::ttrpc_call::<_, aa::BindInitDataResponse>(
        &client,
        AA,
        "BindInitData",
        &aa::BindInitDataRequest {
            digest: vec![0x5a; 32],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), ttrpc::Code::PERMISSION_DENIED, "{status:?}");

    // The layer key round trip, WrapKey then UnWrapKey, both over ttrpc.
    let layer_key = b"{\"symkey\":\"ttrpc layer key\"}";
    let wrap = json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": { "Parameters": { "attestation-agent": [STANDARD.encode(format!("aasp:{DEMO_RSA_KEY}"))] } },
            "optsdata": String::from_utf8_lossy(layer_key),
        },
    });
    let wrapped: kp::KeyProviderKeyWrapProtocolOutput = common::ttrpc_call(
        &client,
        KP,
        "WrapKey",
        &kp::KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: wrap.to_string().into_bytes(),
        },
    )
    .await
    .unwrap();
    let wrapped: Value =
        serde_json::from_slice(&wrapped.key_provider_key_wrap_protocol_output).unwrap();
    let unwrap = json!({
        "op": "keyunwrap",
        "keyunwrapparams": {
            "dc": { "Parameters": {} },
            "annotation": wrapped["keywrapresults"]["annotation"],
        },
    });
    let unwrapped: kp::KeyProviderKeyWrapProtocolOutput = common::ttrpc_call(
        &client,
        KP,
        "UnWrapKey",
        &kp::KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: unwrap.to_string().into_bytes(),
        },
    )
    .await
    .unwrap();
    let unwrapped: Value =
        serde_json::from_slice(&unwrapped.key_provider_key_wrap_protocol_output).unwrap();
    let optsdata: Vec<u8> =
        serde_json::from_value(unwrapped["keyunwrapresults"]["optsdata"].clone()).unwrap();
    assert_eq!(optsdata, layer_key);

    // The old Kata AA's GetResource over ttrpc: a secure key release of the demo oct key.
    let resource: aasp::proto::getresource::GetResourceResponse = common::ttrpc_call(
        &client,
        "getresource.GetResourceService",
        "GetResource",
        &aasp::proto::getresource::GetResourceRequest {
            resource_path: aasp::cli::dev::DEMO_OCT_KEY.into(),
            kbc_name: "aasp".into(),
            kbs_uri: format!(
                "{}?maa={}",
                dev.stack.emulator.url,
                dev.stack.emulator.host()
            ),
        },
    )
    .await
    .unwrap();
    let jwk: Value = serde_json::from_slice(&resource.resource).unwrap();
    assert_eq!(jwk["kty"], "oct");

    // A method nobody serves, and a payload that is no message.
    let status = common::ttrpc_call::<_, aa::GetTeeTypeResponse>(
        &client,
        AA,
        "Explode",
        &aa::GetTeeTypeRequest {},
    )
    .await
    .unwrap_err();
    assert_ne!(status.code(), ttrpc::Code::OK);
    let mut garbage = ttrpc::Request::init_request(AA.into(), "GetToken".into(), 0, Vec::new());
    garbage.set_payload(vec![0xff; 7]);
    match client.request(garbage).await {
        Err(ttrpc::Error::RpcStatus(status)) => {
            assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT, "{status:?}")
        }
        other => panic!("garbage payload: {other:?}"),
    }

    // Shutdown removes the socket.
    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!path.exists());
}
