//! The SKR-sidecar REST API: every route, its status codes, and the double-encoded key of
//! `/key/release`, against the `aasp dev` stack over real sockets.

use crate::common;

use aasp::cli::dev::DEMO_OCT_KEY;
use aasp::snp::report::{report_data_for_runtime, AttestationReport};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{path}: one JSON body expected, got {text:?}")),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route() {
    let stack = common::Dev::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = aasp::service::rest::router(std::sync::Arc::clone(&stack.backend));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = reqwest::Client::new();
    let maa = stack.emulator.host();

    // "Status OK" once the backend is ready (health SERVING); the sidecar's "Status NOT OK",
    // with 200, before. Polled: readiness is reported by a background task.
    let mut status = Value::Null;
    for _ in 0..300 {
        status = client
            .get(format!("{base}/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status == json!({ "message": "Status OK" }) {
            break;
        }
        assert_eq!(status, json!({ "message": "Status NOT OK" }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, json!({ "message": "Status OK" }));
    let unready = aasp::service::Backend {
        provisioner: std::sync::Arc::clone(&stack.backend.provisioner),
        keys: aasp::provision::key_info::KeyInfos::new(None, None),
        default_maa: None,
        provider_names: Vec::new(),
        ready: std::sync::atomic::AtomicBool::new(false),
        self_check: None,
    };
    let unready_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unready_base = format!("http://{}", unready_listener.local_addr().unwrap());
    let unready_router = aasp::service::rest::router(std::sync::Arc::new(unready));
    tokio::spawn(async move { axum::serve(unready_listener, unready_router).await.unwrap() });
    let response = client
        .get(format!("{unready_base}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "message": "Status NOT OK" })
    );

    // Gin binds JSON whatever the Content-Type: so does aasp (SKR clients may send none).
    for content_type in [None, Some("text/plain")] {
        let mut request = client
            .post(format!("{base}/attest/raw"))
            .body(json!({ "runtime_data": STANDARD.encode("rt") }).to_string());
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{content_type:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["report"].is_string(), "{content_type:?}");
    }

    let (code, body) = post(
        &client,
        &base,
        "/attest/raw",
        json!({ "runtime_data": STANDARD.encode("rt") }),
    )
    .await;
    assert_eq!(code, 200);
    let report =
        AttestationReport::from_bytes(&hex::decode(body["report"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(report.report_data, report_data_for_runtime(b"rt"));
    let (code, body) = post(
        &client,
        &base,
        "/attest/raw",
        json!({ "runtime_data": "%%%" }),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("base64"));

    let (code, body) = post(
        &client,
        &base,
        "/attest/combined",
        json!({ "runtime_data": STANDARD.encode("rt") }),
    )
    .await;
    assert_eq!(code, 200);
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "endorsed_tcb",
            "endorsements",
            "evidence",
            "uvm_endorsements"
        ]
    );
    let pem = String::from_utf8(
        STANDARD
            .decode(body["endorsements"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3);
    assert_eq!(
        STANDARD
            .decode(body["evidence"].as_str().unwrap())
            .unwrap()
            .len(),
        1184
    );

    let (code, body) = post(
        &client,
        &base,
        "/attest/maa",
        json!({ "maa_endpoint": maa, "runtime_data": STANDARD.encode("{}") }),
    )
    .await;
    assert_eq!(code, 200);
    let claims = aasp::azure::jws::Compact::parse(body["token"].as_str().unwrap())
        .unwrap()
        .claims()
        .unwrap();
    assert_eq!(
        claims["x-ms-sevsnpvm-reportdata"],
        hex::encode(report_data_for_runtime(b"{}"))
    );

    let release =
        json!({ "maa_endpoint": maa, "akv_endpoint": stack.emulator.url, "kid": DEMO_OCT_KEY });
    let (code, body) = post(&client, &base, "/key/release", release.clone()).await;
    assert_eq!(code, 200);
    let inner: Value =
        serde_json::from_str(body["key"].as_str().expect("key is a JSON string")).unwrap();
    assert_eq!(inner["kty"], "oct");
    assert!(inner["k"].is_string());

    let mut missing = release.clone();
    missing["kid"] = json!("");
    let (code, body) = post(&client, &base, "/key/release", missing).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("kid"));

    let mut bad_token = release.clone();
    bad_token["access_token"] = json!("not-a-token");
    let (code, body) = post(&client, &base, "/key/release", bad_token).await;
    assert_eq!(code, 403, "{body}");

    // A key the HSM does not have (its 404, NOT_FOUND on gRPC) is a release failure like any
    // other: 403, as the sidecar answers, with one body.
    let mut unknown = release.clone();
    unknown["kid"] = json!("no-such-key");
    let (code, body) = post(&client, &base, "/key/release", unknown).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no-such-key"),
        "{body}"
    );

    let response = client
        .post(format!("{base}/key/release"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());
}

/// One stack and REST server for the property test's many cases.
struct Shared {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
    _dev: common::Dev,
}

fn shared() -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (dev, addr) = runtime.block_on(async {
            let dev = common::Dev::start().await;
            let router = aasp::service::rest::router(std::sync::Arc::clone(&dev.backend));
            let addr = common::serve(router).await;
            (dev, addr)
        });
        Shared {
            runtime,
            client: reqwest::Client::new(),
            base: format!("http://{addr}"),
            _dev: dev,
        }
    })
}

/// Bodies a client could send: the routes' fields with arbitrary values (endpoints left empty,
/// so nothing leaves for a random host), arbitrary text, and byte noise.
fn rest_body() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let scalar = common::json_scalar();
    let shaped = (scalar.clone(), scalar.clone(), scalar).prop_map(|(runtime_data, kid, token)| {
        json!({
            "runtime_data": runtime_data,
            "maa_endpoint": "",
            "akv_endpoint": "",
            "kid": kid,
            "access_token": token,
        })
        .to_string()
        .into_bytes()
    });
    common::body_or_noise(shaped)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever the body, every POST route answers 200 or 400 with one JSON document, and a 400
    /// says what is wrong: never a 5xx, never a dead server.
    #[test]
    fn arbitrary_rest_bodies(body in rest_body()) {
        let s = shared();
        for path in ["/attest/raw", "/attest/combined", "/attest/maa", "/key/release"] {
            let (status, text) = s.runtime.block_on(async {
                let response = s
                    .client
                    .post(format!("{}{path}", s.base))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            });
            proptest::prop_assert!(status == 200 || status == 400, "{path}: {status} {text}");
            let doc: Value = serde_json::from_str(&text)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{path}: {e}: {text}")))?;
            if status == 400 {
                let error = doc["error"].as_str().unwrap_or_default();
                proptest::prop_assert!(!error.is_empty(), "{path}: {text}");
            }
        }
    }
}
