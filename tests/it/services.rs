//! Every RPC of every service over real sockets, against the `aasp dev` stack run in-process:
//! success and failure paths, and the keyprovider JSON documents in the exact shape of DESIGN §4.

use crate::common;

use aasp::cli::dev::{DEMO_OCT_KEY, DEMO_RSA_KEY};
use aasp::proto::attestation_agent::{
    self as aa, attestation_agent_service_client::AttestationAgentServiceClient,
};
use aasp::proto::getresource::{
    get_resource_service_client::GetResourceServiceClient, GetResourceRequest,
};
use aasp::proto::key_provider::{
    self as newkp, key_provider_service_client::KeyProviderServiceClient as NewClient,
};
use aasp::proto::keyprovider::{
    self as oldkp, key_provider_service_client::KeyProviderServiceClient as OldClient,
};
use aasp::service::Listen;
use aasp::snp::report::{report_data_for_runtime, AttestationReport};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::OnceLock;
use tonic::transport::Channel;
use tonic::Code;

struct Shared {
    runtime: tokio::runtime::Runtime,
    stack: common::Dev,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let stack = runtime.block_on(common::Dev::start());
        Shared { runtime, stack }
    })
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    shared().runtime.block_on(f)
}

async fn channel() -> Channel {
    let addr = shared().stack.server.listeners[0].to_string();
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

fn wrap_request(key: &str, layer_key: &[u8]) -> Vec<u8> {
    json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": { "Parameters": { "attestation-agent": [b64(format!("aasp:{key}"))] }, "DecryptConfig": { "Parameters": {} } },
            "optsdata": b64(layer_key),
        },
        "keyunwrapparams": null,
    })
    .to_string()
    .into_bytes()
}

fn unwrap_request(annotation: &str) -> Vec<u8> {
    json!({
        "op": "keyunwrap",
        "keywrapparams": {},
        "keyunwrapparams": { "dc": { "Parameters": { "attestation-agent": [b64("aasp")] } }, "annotation": annotation },
    })
    .to_string()
    .into_bytes()
}

async fn old_wrap(input: Vec<u8>) -> Result<Value, tonic::Status> {
    let mut client = OldClient::new(channel().await);
    let out = client
        .wrap_key(oldkp::KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: input,
        })
        .await?
        .into_inner();
    Ok(serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap())
}

async fn old_unwrap(input: Vec<u8>) -> Result<Value, tonic::Status> {
    let mut client = OldClient::new(channel().await);
    let out = client
        .un_wrap_key(oldkp::KeyProviderKeyWrapProtocolInput {
            key_provider_key_wrap_protocol_input: input,
        })
        .await?
        .into_inner();
    Ok(serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap())
}

/// A reply's byte field: a JSON array of numbers (anything else fails the test).
fn byte_array(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array of bytes: {v}"))
        .iter()
        .map(|n| u8::try_from(n.as_u64().unwrap()).unwrap())
        .collect()
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn health_becomes_serving() {
    run(async {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel().await);
        for service in [
            "",
            "keyprovider.KeyProviderService",
            "attestation_agent.AttestationAgentService",
        ] {
            let mut status = 0;
            for _ in 0..100 {
                let request = tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                };
                status = client.check(request).await.unwrap().into_inner().status;
                if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(
                status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
    });
}

#[test]
fn layer_key_round_trip_rsa_and_oct_in_the_exact_document_shapes() {
    run(async {
        for (key, wrap_type) in [(DEMO_RSA_KEY, "rsa_3072"), (DEMO_OCT_KEY, "A256GCM")] {
            let layer_key = [0x17u8; 32];
            let wrapped = old_wrap(wrap_request(key, &layer_key)).await.unwrap();
            assert_eq!(
                sorted_keys(&wrapped),
                vec!["keyunwrapresults", "keywrapresults"]
            );
            // Byte fields come back as arrays of numbers, never null (ocicrypt-rs reads
            // `Vec<u8>` only that way); the annotation bytes are the packet JSON.
            assert_eq!(wrapped["keyunwrapresults"], json!({ "optsdata": [] }));
            let packet_json = byte_array(&wrapped["keywrapresults"]["annotation"]);
            let annotation = b64(&packet_json);
            let packet: Value = serde_json::from_slice(&packet_json).unwrap();
            let mut expected = vec![
                "attester_endpoint",
                "kid",
                "kms_endpoint",
                "wrap_type",
                "wrapped_data",
            ];
            if wrap_type == "A256GCM" {
                expected.push("iv");
                expected.sort();
            }
            assert_eq!(sorted_keys(&packet), expected, "{key}");
            assert_eq!(packet["wrap_type"], wrap_type);
            assert_eq!(packet["kid"], key);

            let unwrapped = old_unwrap(unwrap_request(&annotation)).await.unwrap();
            assert_eq!(unwrapped["keywrapresults"], json!({ "annotation": [] }));
            assert_eq!(
                byte_array(&unwrapped["keyunwrapresults"]["optsdata"]),
                layer_key,
                "{key}"
            );

            // The sidecar's service name gives the same answer for the same document, in the
            // sidecar's own reply form (Go `[]byte`: base64, null when empty).
            let mut client = NewClient::new(channel().await);
            let out = client
                .un_wrap_key(newkp::KeyProviderKeyWrapProtocolInput {
                    key_provider_key_wrap_protocol_input: unwrap_request(&annotation),
                })
                .await
                .unwrap()
                .into_inner();
            let doc: Value =
                serde_json::from_slice(&out.key_provider_key_wrap_protocol_output).unwrap();
            assert!(doc["keywrapresults"]["annotation"].is_null());
            let optsdata = doc["keyunwrapresults"]["optsdata"].as_str().unwrap();
            assert_eq!(STANDARD.decode(optsdata).unwrap(), layer_key);
        }
    });
}

/// The keyprovider documents as ocicrypt-rs (image-rs, CDH) defines them
/// (`ocicrypt-rs/src/keywrap/keyprovider/mod.rs`): results are plain `Vec<u8>` with serde, no
/// `Option` inside, no base64; the wrap `optsdata` is the raw text; Parameters values base64.
mod ocicrypt_rs {
    use serde::{Deserialize, Serialize};
    use std::collections::HashMap;

    #[derive(Serialize, Default)]
    pub struct Config {
        #[serde(rename = "Parameters")]
        pub param: HashMap<String, Vec<String>>,
    }
    #[derive(Serialize, Default)]
    pub struct KeyWrapParams {
        pub ec: Option<Config>,
        #[serde(rename = "optsdata")]
        pub opts_data: Option<String>,
    }
    #[derive(Serialize, Default)]
    pub struct KeyUnwrapParams {
        pub dc: Option<Config>,
        pub annotation: Option<String>,
    }
    #[derive(Serialize, Default)]
    pub struct Input {
        pub op: String,
        #[serde(rename = "keywrapparams")]
        pub key_wrap_params: KeyWrapParams,
        #[serde(rename = "keyunwrapparams")]
        pub key_unwrap_params: KeyUnwrapParams,
    }
    #[derive(Deserialize, Debug)]
    pub struct KeyUnwrapResults {
        #[serde(rename = "optsdata")]
        pub opts_data: Vec<u8>,
    }
    #[derive(Deserialize, Debug)]
    pub struct KeyWrapResults {
        pub annotation: Vec<u8>,
    }
    #[derive(Deserialize, Debug)]
    pub struct Output {
        #[serde(rename = "keywrapresults")]
        pub key_wrap_results: Option<KeyWrapResults>,
        #[serde(rename = "keyunwrapresults")]
        pub key_unwrap_results: Option<KeyUnwrapResults>,
    }
}

/// Go's `encoding/json` into a `[]byte`: a base64 string, or an array of numbers, or null.
fn go_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use serde::de::Error;
    use serde::Deserialize;
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => STANDARD.decode(text).map_err(D::Error::custom),
        Value::Array(items) => items
            .iter()
            .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| D::Error::custom("not a byte")),
        other => Err(D::Error::custom(format!(
            "cannot decode {other} into []byte"
        ))),
    }
}

/// Go ocicrypt's `KeyProviderKeyWrapProtocolOutput` (`keywrap/keyprovider/keyprovider.go`).
#[derive(serde::Deserialize)]
struct GoOutput {
    #[serde(default)]
    keywrapresults: GoWrapResults,
    #[serde(default)]
    keyunwrapresults: GoUnwrapResults,
}
#[derive(serde::Deserialize, Default)]
struct GoWrapResults {
    #[serde(default, deserialize_with = "go_bytes")]
    annotation: Vec<u8>,
}
#[derive(serde::Deserialize, Default)]
struct GoUnwrapResults {
    #[serde(default, deserialize_with = "go_bytes")]
    optsdata: Vec<u8>,
}

#[test]
fn ocicrypt_rs_shaped_documents_round_trip_and_go_parses_the_replies() {
    use ocicrypt_rs as rs;
    run(async {
        // The private options JSON ocicrypt passes as optsdata.
        let opts = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","symkey":"c2VjcmV0IGxheWVyIGtleQ==","digest":"","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#;
        let mut ec = rs::Config::default();
        ec.param.insert(
            "attestation-agent".into(),
            vec![b64(format!("aasp:{DEMO_RSA_KEY}"))],
        );
        let wrap = rs::Input {
            op: "keywrap".into(),
            key_wrap_params: rs::KeyWrapParams {
                ec: Some(ec),
                opts_data: Some(opts.into()),
            },
            ..Default::default()
        };
        let mut client = OldClient::new(channel().await);
        let out = client
            .wrap_key(oldkp::KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: serde_json::to_vec(&wrap).unwrap(),
            })
            .await
            .unwrap()
            .into_inner()
            .key_provider_key_wrap_protocol_output;
        let wrapped: rs::Output = serde_json::from_slice(&out).unwrap();
        let annotation = wrapped.key_wrap_results.unwrap().annotation;
        assert_eq!(wrapped.key_unwrap_results.unwrap().opts_data, b"");
        let go: GoOutput = serde_json::from_slice(&out).unwrap();
        assert_eq!(go.keywrapresults.annotation, annotation);

        // image-rs without a named decryption key: `"dc":{"Parameters":{}}`; ocicrypt-rs
        // base64-encodes the annotation text it read from the image.
        for dc in [
            rs::Config::default(),
            rs::Config {
                param: [("attestation-agent".to_owned(), vec![b64("Enabled")])].into(),
            },
        ] {
            let unwrap = rs::Input {
                op: "keyunwrap".into(),
                key_unwrap_params: rs::KeyUnwrapParams {
                    dc: Some(dc),
                    annotation: Some(b64(&annotation)),
                },
                ..Default::default()
            };
            let out = client
                .un_wrap_key(oldkp::KeyProviderKeyWrapProtocolInput {
                    key_provider_key_wrap_protocol_input: serde_json::to_vec(&unwrap).unwrap(),
                })
                .await
                .unwrap()
                .into_inner()
                .key_provider_key_wrap_protocol_output;
            let unwrapped: rs::Output = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                unwrapped.key_unwrap_results.unwrap().opts_data,
                opts.as_bytes()
            );
            assert!(unwrapped.key_wrap_results.unwrap().annotation.is_empty());
            let go: GoOutput = serde_json::from_slice(&out).unwrap();
            assert_eq!(go.keyunwrapresults.optsdata, opts.as_bytes());
        }

        // Arrays of numbers are accepted wherever a byte field goes, Parameters included.
        let arrays = json!({
            "op": "keyunwrap",
            "keyunwrapparams": {
                "dc": { "Parameters": { "attestation-agent": [b"aasp".to_vec()] } },
                "annotation": annotation,
            },
        });
        let unwrapped = old_unwrap(arrays.to_string().into_bytes()).await.unwrap();
        assert_eq!(
            byte_array(&unwrapped["keyunwrapresults"]["optsdata"]),
            opts.as_bytes()
        );
        // A decryption parameter that names another scheme is still refused.
        let other = json!({
            "op": "keyunwrap",
            "keyunwrapparams": {
                "dc": { "Parameters": { "attestation-agent": [b64("cc_kbc::null")] } },
                "annotation": annotation,
            },
        });
        let status = old_unwrap(other.to_string().into_bytes())
            .await
            .expect_err("another scheme");
        assert_eq!(status.code(), Code::InvalidArgument);
    });
}

#[test]
fn go_shaped_documents_round_trip() {
    run(async {
        // skopeo's document: base64 everywhere (`layer_key_round_trip_...` covers the rest).
        let layer_key = b"{\"symkey\":\"go layer key\"}";
        let out = old_wrap(wrap_request(DEMO_RSA_KEY, layer_key))
            .await
            .unwrap();
        let go: GoOutput = serde_json::from_value(out).unwrap();
        let unwrapped = old_unwrap(unwrap_request(&b64(&go.keywrapresults.annotation)))
            .await
            .unwrap();
        let go: GoOutput = serde_json::from_value(unwrapped).unwrap();
        assert_eq!(go.keyunwrapresults.optsdata, layer_key);
    });
}

#[test]
fn offline_wrap_tool_output_unwraps_through_the_service() {
    let s = shared();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"database password").unwrap();
    let out = dir.path().join("secret.annotation");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "wrap",
            "--key-ref",
            DEMO_RSA_KEY,
            "--keys-dir",
            s.stack.keys_dir.to_str().unwrap(),
        ])
        .args([
            "--in",
            secret.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let annotation = std::fs::read_to_string(&out).unwrap();
    let unwrapped = run(old_unwrap(unwrap_request(&annotation))).unwrap();
    assert_eq!(
        byte_array(&unwrapped["keyunwrapresults"]["optsdata"]),
        b"database password"
    );
}

#[test]
fn malformed_keyprovider_requests_are_invalid_arguments_and_the_server_keeps_serving() {
    run(async {
        let layer = [1u8; 32];
        let mut unknown_provider =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &layer)).unwrap();
        unknown_provider["keywrapparams"]["ec"]["Parameters"] =
            json!({ "someone-else": [b64("aasp:demo-rsa")] });
        let mut bad_b64 =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &layer)).unwrap();
        bad_b64["keywrapparams"]["optsdata"] = json!("%%%not base64");
        let mut wrong_op =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &layer)).unwrap();
        wrong_op["op"] = json!("keyunwrap");
        let mut no_params =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &layer)).unwrap();
        no_params["keywrapparams"]["ec"] = Value::Null;
        let mut unknown_key =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &layer)).unwrap();
        unknown_key["keywrapparams"]["ec"]["Parameters"]["attestation-agent"] =
            json!([b64("aasp:no-such-key")]);
        for (case, input, hint) in [
            ("bad JSON", b"{not json".to_vec(), "not valid JSON"),
            (
                "unknown provider",
                unknown_provider.to_string().into_bytes(),
                "names no provider",
            ),
            (
                "bad base64",
                bad_b64.to_string().into_bytes(),
                "neither standard base64 nor an array",
            ),
            (
                "wrong op",
                wrong_op.to_string().into_bytes(),
                "op \"keywrap\"",
            ),
            (
                "missing params",
                no_params.to_string().into_bytes(),
                "names no provider",
            ),
            (
                "unknown key",
                unknown_key.to_string().into_bytes(),
                "no-such-key-info.json",
            ),
        ] {
            let status = old_wrap(input).await.expect_err(case);
            assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
            assert!(
                status.message().contains(hint),
                "{case}: {}",
                status.message()
            );
        }
        let status = old_unwrap(unwrap_request("bm90IGEgcGFja2V0"))
            .await
            .expect_err("bad annotation");
        assert_eq!(status.code(), Code::InvalidArgument);

        let oversize = vec![b' '; 5 << 20];
        let status = old_wrap(oversize).await.expect_err("oversize");
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{status:?}"
        );

        let mut client = OldClient::new(channel().await);
        let reply = client
            .say_hello(oldkp::HelloRequest {
                name: "still here".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.message, "Hello still here");
    });
}

#[test]
fn get_report_on_both_service_names() {
    run(async {
        let mut old = OldClient::new(channel().await);
        let reply = old
            .get_report(oldkp::KeyProviderGetReportInput {
                report_data_hex_string: "00ff".into(),
            })
            .await
            .unwrap();
        let report = AttestationReport::from_bytes(
            &hex::decode(reply.into_inner().report_hex_string).unwrap(),
        )
        .unwrap();
        let mut expected = [0u8; 64];
        expected[1] = 0xff;
        assert_eq!(report.report_data, expected);
        for bad in ["zz", &"00".repeat(65)] {
            let status = old
                .get_report(oldkp::KeyProviderGetReportInput {
                    report_data_hex_string: bad.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        }

        let mut new = NewClient::new(channel().await);
        let reply = new
            .get_report(newkp::KeyProviderGetReportInput {
                report_data_hex_string: "00ff".into(),
            })
            .await
            .unwrap();
        let report = AttestationReport::from_bytes(
            &hex::decode(reply.into_inner().report_hex_string).unwrap(),
        )
        .unwrap();
        assert_eq!(report.report_data, report_data_for_runtime(b"00ff"));

        let hello = new
            .say_hello(newkp::HelloRequest { name: "x".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hello.message, "Hello x");

        let data = new
            .get_attestation_data(newkp::KeyProviderGetAttestationDataInput {
                b64_runtime_data_string: b64("runtime"),
            })
            .await
            .unwrap()
            .into_inner();
        // The SKR sidecar's encodings: base64 of the PEM chain and of the raw report.
        let certs = String::from_utf8(STANDARD.decode(&data.certs).unwrap()).unwrap();
        assert_eq!(certs.matches("BEGIN CERTIFICATE").count(), 3);
        let report =
            AttestationReport::from_bytes(&STANDARD.decode(&data.attestation_report).unwrap())
                .unwrap();
        assert_eq!(report.report_data, report_data_for_runtime(b"runtime"));
        assert_eq!(data.endorsed_tcb, format!("{:016x}", report.reported_tcb));
    });
}

#[test]
fn attestation_agent_rpcs() {
    let s = shared();
    run(async {
        let mut client = AttestationAgentServiceClient::new(channel().await);
        let evidence = client
            .get_evidence(aa::GetEvidenceRequest {
                runtime_data: b"nonce-123".to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        // Upstream's evidence, as Trustee's SNP verifier deserializes it (sev 7 types).
        #[derive(serde::Deserialize)]
        struct SnpEvidence {
            attestation_report: sev7::firmware::guest::AttestationReport,
            cert_chain: Option<Vec<sev7::firmware::host::CertTableEntry>>,
        }
        let upstream: SnpEvidence = serde_json::from_slice(&evidence.evidence).unwrap();
        let mut padded = [0u8; 64];
        padded[..9].copy_from_slice(b"nonce-123");
        assert_eq!(upstream.attestation_report.report_data, padded);
        assert_eq!(upstream.cert_chain.unwrap().len(), 3);
        // ... and as `aasp verify` reads it.
        let loaded = aasp::snp::evidence::load_report(&evidence.evidence).unwrap();
        let report = loaded.report;
        assert_eq!(report.report_data, padded);
        let evidence = loaded.evidence.unwrap();
        let certs =
            aasp::snp::cert::Cert::from_pem_bundle(evidence.cert_chain_pem.as_bytes()).unwrap();
        let chain = aasp::snp::verify::Chain::from_certs(certs).unwrap();
        let sim_root = s.stack.backend.provisioner.attester().simulated_root();
        let v = aasp::snp::verify::verify_report(
            &report,
            &chain,
            &aasp::snp::verify::TrustStore::amd_and(sim_root),
            now(),
        );
        assert!(v.passed(), "{:?}", v.checks);
        let status = client
            .get_evidence(aa::GetEvidenceRequest {
                runtime_data: vec![1; 65],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("64"), "{status:?}");

        let token = client
            .get_token(aa::GetTokenRequest {
                token_type: "maa".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let jwt = String::from_utf8(token.token).unwrap();
        let claims = aasp::azure::jws::Compact::parse(&jwt)
            .unwrap()
            .claims()
            .unwrap();
        assert_eq!(claims["x-ms-attestation-type"], "sevsnpvm");
        assert_eq!(claims["iss"], s.stack.emulator.url);
        // "kbs" is served by the dev stack's emulated KBS (tests/it/kbs_services.rs); other types
        // name the supported ones.
        let status = client
            .get_token(aa::GetTokenRequest {
                token_type: "tpm".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("maa"), "{status:?}");

        let tee = client
            .get_tee_type(aa::GetTeeTypeRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tee.tee, "snp", "the simulator's evidence is SNP evidence");
        let tees = client
            .get_additional_tees(aa::GetAdditionalTeesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(tees.additional_tees.is_empty());
        let extra = client
            .get_additional_evidence(aa::GetEvidenceRequest {
                runtime_data: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(extra.evidence.is_empty());
        let extend = client
            .extend_runtime_measurement(aa::ExtendRuntimeMeasurementRequest {
                domain: "d".into(),
                operation: "o".into(),
                content: "c".into(),
                register_index: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            extend.result,
            aa::RuntimeMeasurementResult::NotSupported as i32
        );

        let host_data = report.host_data.to_vec();
        client
            .bind_init_data(aa::BindInitDataRequest {
                digest: host_data.clone(),
            })
            .await
            .unwrap();
        // The initdata rule: SHA-384/512 digests are cut to HOST_DATA's 32 bytes, so only
        // their first 32 bytes count; a shorter digest is zero-padded.
        for len in [48, 64] {
            let mut digest = host_data.clone();
            digest.resize(len, 0xa5);
            client
                .bind_init_data(aa::BindInitDataRequest { digest })
                .await
                .unwrap_or_else(|e| panic!("{len}-byte digest: {e:?}"));
        }
        for len in [32, 48, 64] {
            let mut wrong = host_data.clone();
            wrong.resize(len, 0);
            wrong[31] ^= 1;
            let status = client
                .bind_init_data(aa::BindInitDataRequest { digest: wrong })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{len}");
        }
        let short = client
            .bind_init_data(aa::BindInitDataRequest {
                digest: host_data[..31].to_vec(),
            })
            .await;
        // host_data[..31] zero-padded equals HOST_DATA exactly when its last byte is zero.
        assert_eq!(short.is_ok(), host_data[31] == 0, "{short:?}");
        let status = client
            .bind_init_data(aa::BindInitDataRequest { digest: vec![] })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    });
}

#[test]
fn get_resource_releases_the_key_as_jwk() {
    let s = shared();
    run(async {
        let mut client = GetResourceServiceClient::new(channel().await);
        let request = |path: &str, kbc: &str| GetResourceRequest {
            resource_path: path.into(),
            kbc_name: kbc.into(),
            kbs_uri: format!("{}?maa={}", s.stack.emulator.url, s.stack.emulator.host()),
        };
        let reply = client
            .get_resource(request(DEMO_OCT_KEY, "aasp"))
            .await
            .unwrap()
            .into_inner();
        let jwk: Value = serde_json::from_slice(&reply.resource).unwrap();
        assert_eq!(jwk["kty"], "oct");
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk["k"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );

        let status = client
            .get_resource(request(DEMO_OCT_KEY, "kbs"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = client
            .get_resource(request("no-such-key", "aasp"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    });
}

#[test]
fn a_key_bound_to_another_workload_is_permission_denied() {
    let s = shared();
    run(async {
        let client = aasp::http::client(&aasp::http::HttpOptions {
            extra_ca: Some(s.stack.emulator.ca_path.clone()),
            ..Default::default()
        })
        .unwrap();
        let access = aasp::azure::identity::IdentityProvider::new(
            client.clone(),
            aasp::azure::identity::IdentitySource::Imds {
                base: s.stack.emulator.url.clone(),
                client_id: None,
            },
            Default::default(),
        )
        .token(aasp::azure::identity::MHSM_RESOURCE)
        .await
        .unwrap();
        let anchors = aasp::azure::jws::Anchors::from_pem_file(&s.stack.emulator.ca_path).unwrap();
        let kms = aasp::azure::kms::KmsClient::new(client, anchors, Default::default());
        let policy = aasp::azure::policy::ReleasePolicy::for_hostdata(
            &s.stack.emulator.host(),
            &"11".repeat(32),
            &[],
        );
        let key = aasp::azure::kms::KeyUrl::new(&s.stack.emulator.url, "foreign").unwrap();
        kms.import(
            &key,
            &aasp::azure::jwk::Jwk::oct(&[3; 32]),
            &policy,
            &access,
        )
        .await
        .unwrap();
        let mut grpc = GetResourceServiceClient::new(channel().await);
        let status = grpc
            .get_resource(GetResourceRequest {
                resource_path: "foreign".into(),
                kbc_name: "mhsm".into(),
                kbs_uri: s.stack.emulator.url.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("x-ms-sevsnpvm-hostdata"),
            "{}",
            status.message()
        );
    });
}

#[test]
fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    run(async {
        let mut client = ServerReflectionClient::new(channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("no service list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for expected in aasp::service::SERVICE_NAMES
            .iter()
            .chain(&["grpc.health.v1.Health"])
        {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    });
}

#[test]
fn unix_socket_listener_is_owner_only_and_serves() {
    let s = shared();
    run(async {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aasp.sock");
        let server = aasp::cli::serve::start(
            std::sync::Arc::clone(&s.stack.backend),
            &[Listen::Unix(path.clone())],
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let socket = path.clone();
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50000")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let reply = OldClient::new(channel)
            .say_hello(oldkp::HelloRequest { name: "uds".into() })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().message, "Hello uds");
        server.shutdown(std::time::Duration::from_secs(5)).await;
        assert!(!path.exists(), "the socket is removed on shutdown");
    });
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn hostile_keyprovider_documents_are_refused_and_memory_stays_bounded() {
    let rss_kib = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
            })
            .unwrap()
    };
    run(async {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let huge_b64 = b64(vec![0x41u8; 2 << 20]); // 2.7 MiB of base64: under the 4 MiB message limit
        let mut huge =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &[1; 32])).unwrap();
        huge["keywrapparams"]["optsdata"] = json!(huge_b64);
        let mut wrong_type =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &[1; 32])).unwrap();
        wrong_type["keywrapparams"]["optsdata"] = json!(12345);
        let mut empty_values =
            serde_json::from_slice::<Value>(&wrap_request(DEMO_RSA_KEY, &[1; 32])).unwrap();
        empty_values["keywrapparams"]["ec"]["Parameters"]["attestation-agent"] = json!([]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("invalid UTF-8", vec![0xff, 0xfe, b'{', 0xc3, 0x28]),
            ("deep nesting", deep.into_bytes()),
            ("huge base64 layer key", huge.to_string().into_bytes()),
            ("wrong field type", wrong_type.to_string().into_bytes()),
            (
                "empty parameter list",
                empty_values.to_string().into_bytes(),
            ),
            (
                "unknown op",
                json!({"op": "keyexplode"}).to_string().into_bytes(),
            ),
            ("empty input", Vec::new()),
        ];
        let before = rss_kib();
        for round in 0..3 {
            for (case, input) in &cases {
                let status = old_wrap(input.clone()).await.expect_err(case);
                assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
                assert!(
                    !status.message().is_empty(),
                    "{case}: a message says what is wrong"
                );
                if round == 0 && *case != "huge base64 layer key" {
                    let status = old_unwrap(input.clone()).await.expect_err(case);
                    assert_eq!(
                        status.code(),
                        Code::InvalidArgument,
                        "unwrap {case}: {status:?}"
                    );
                }
            }
        }
        // Client and server share this process: the bound is loose but catches a leak per call.
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        assert!(
            grown_mib < 200,
            "RSS grew by {grown_mib} MiB over 21 hostile calls"
        );
        let mut client = OldClient::new(channel().await);
        assert_eq!(
            client
                .say_hello(oldkp::HelloRequest { name: "ok".into() })
                .await
                .unwrap()
                .into_inner()
                .message,
            "Hello ok"
        );
    });
}

/// Documents a client could send: arbitrary text, JSON of the right shape with arbitrary values,
/// and byte noise.
fn keyprovider_document() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let scalar = common::json_scalar();
    let shaped = (
        prop_oneof![Just("keywrap".to_owned()), Just("keyunwrap".to_owned()), ".{0,10}"],
        scalar.clone(),
        scalar.clone(),
        scalar,
    )
        .prop_map(|(op, param, optsdata, annotation)| {
            json!({
                "op": op,
                "keywrapparams": { "ec": { "Parameters": { "attestation-agent": [param.clone()] } }, "optsdata": optsdata },
                "keyunwrapparams": { "dc": { "Parameters": { "attestation-agent": [param] } }, "annotation": annotation },
            })
            .to_string()
            .into_bytes()
        });
    common::body_or_noise(shaped)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the document, WrapKey and UnWrapKey answer INVALID_ARGUMENT (or succeed on a
    /// valid one): never another code, never a dead server.
    #[test]
    fn arbitrary_keyprovider_documents(doc in keyprovider_document()) {
        let (wrap, unwrap) = run(async { (old_wrap(doc.clone()).await, old_unwrap(doc).await) });
        for result in [wrap, unwrap] {
            if let Err(status) = result {
                proptest::prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
            }
        }
    }
}
