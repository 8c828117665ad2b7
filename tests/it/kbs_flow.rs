//! The Trustee KBS backend end to end over real sockets: aasp's RCAR client against the
//! emulated KBS, with the simulated SNP device's evidence; and the refusals the protocol owes
//! (wrong nonce, replayed evidence, report_data not binding the key, expired session, tampered
//! JWE, policy, missing resource, faults).

use crate::common;

use aasp::emulator::faults::Faults;
use aasp::emulator::kbs::{KbsConfig, KbsPolicy};
use aasp::emulator::{self, Running};
use aasp::http::{HttpOptions, RetryPolicy};
use aasp::kbs::client::report_data;
use aasp::kbs::{
    Error, EvidenceSource, KbsClient, KbsOptions, KeyAlgorithm, ResourceUri, TeeKeyPair,
};
use aasp::snp::attester::Attester;
use aasp::snp::evidence::{coco_evidence_json, Evidence};
use aasp::snp::sim::{SimOptions, Simulated};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

const SECRET: &[u8] = b"a resource only an attested guest may read";

struct SimEvidence(Simulated);

impl SimEvidence {
    /// Upstream's CoCo SNP evidence, as aasp's attestation agent sends it.
    fn evidence_for(&self, report_data: [u8; 64]) -> Value {
        let report = self.0.report(&report_data).unwrap();
        serde_json::from_slice(&coco_evidence_json(&report, Some(self.0.chain())).unwrap()).unwrap()
    }
}

impl EvidenceSource for SimEvidence {
    fn evidence(&self, report_data: [u8; 64]) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move { Ok(self.evidence_for(report_data)) })
    }
}

struct Stack {
    emulator: Running,
    evidence: Arc<SimEvidence>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        budget: std::time::Duration::from_secs(1),
        base_delay: std::time::Duration::from_millis(20),
        max_delay: std::time::Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}

async fn stack(kbs: impl FnOnce(&mut KbsConfig)) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulated::open(&SimOptions {
        state_dir: common::sim_state_dir(),
        ..Default::default()
    })
    .unwrap();
    let mut config = emulator::Config::new(dir.path().to_path_buf());
    config.extra_roots = sim.simulated_root().into_iter().collect();
    kbs(&mut config.kbs);
    let emulator = emulator::start(config).await.unwrap();
    emulator
        .kbs
        .put_resource("default/key/one", SECRET)
        .unwrap();
    let http = aasp::http::client(&HttpOptions {
        extra_ca: Some(emulator.ca_path.clone()),
        ..Default::default()
    })
    .unwrap();
    Stack {
        emulator,
        evidence: Arc::new(SimEvidence(sim)),
        http,
        _dir: dir,
    }
}

impl Stack {
    fn client(&self, key_algorithm: KeyAlgorithm) -> KbsClient {
        KbsClient::new(
            self.http.clone(),
            KbsOptions {
                url: self.emulator.url.clone(),
                key_algorithm,
                retry: fast_retry(),
                max_resource: aasp::http::limits::KBS_RESOURCE_DEFAULT,
                init_data: None,
            },
            self.evidence.clone(),
        )
        .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/kbs/v0/{path}", self.emulator.url)
    }

    /// `POST /auth` by hand: the session cookie and the nonce.
    async fn auth(&self) -> (String, String) {
        let response = self
            .http
            .post(self.url("auth"))
            .json(&json!({"version": "0.4.0", "tee": "snp", "extra-params": ""}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let cookie = response
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let challenge: Value = response.json().await.unwrap();
        (cookie, challenge["nonce"].as_str().unwrap().to_owned())
    }

    /// `POST /attest` by hand.
    async fn attest(
        &self,
        cookie: &str,
        nonce: &str,
        key: &TeeKeyPair,
        evidence: Value,
    ) -> (u16, Value) {
        let response = self
            .http
            .post(self.url("attest"))
            .header("cookie", cookie)
            .json(&json!({
                "runtime-data": {"nonce": nonce, "tee-pubkey": key.public()},
                "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
            }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The evidence an honest TEE makes for this nonce and key.
    fn honest_evidence(&self, nonce: &str, key: &TeeKeyPair) -> Value {
        self.evidence
            .evidence_for(report_data(nonce, &key.public(), "").unwrap())
    }
}

fn uri() -> ResourceUri {
    ResourceUri::parse("kbs:///default/key/one").unwrap()
}

#[tokio::test]
async fn rcar_flow_delivers_the_resource_with_either_key_algorithm() {
    let stack = stack(|_| {}).await;
    for alg in [KeyAlgorithm::EcdhEsA256KwP256, KeyAlgorithm::RsaOaep256] {
        let client = stack.client(alg);
        let secret = client.get_resource(&uri()).await.unwrap();
        assert_eq!(secret.as_slice(), SECRET, "{alg:?}");
        let session = client.session().await.unwrap();
        assert_eq!(session.tee_key.algorithm(), alg);
        let claims = session.token.unverified_claims().unwrap();
        let bound = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
        assert_eq!(
            bound["runtime_data_claims"]["tee-pubkey"],
            serde_json::to_value(session.tee_key.public()).unwrap()
        );
        assert_eq!(
            bound["snp"]["measurement"],
            hex::encode(stack.evidence.0.measurement())
        );
    }
    // One handshake per client: the second read reused the session.
    assert_eq!(
        stack
            .emulator
            .kbs
            .auths
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_handshake() {
    let stack = stack(|_| {}).await;
    let client = Arc::new(stack.client(KeyAlgorithm::EcdhEsA256KwP256));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { client.get_resource(&uri()).await.map(|s| s.to_vec()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), SECRET);
    }
    let kbs = &stack.emulator.kbs;
    assert_eq!(kbs.auths.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        kbs.attestations.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        kbs.resource_reads.load(std::sync::atomic::Ordering::SeqCst),
        8
    );
}

#[tokio::test]
async fn honest_attestation_by_hand_is_accepted() {
    // The positive twin of the refusals below: the same hand-made requests, done right.
    let stack = stack(|_| {}).await;
    let key = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let (cookie, nonce) = stack.auth().await;
    let (status, body) = stack
        .attest(&cookie, &nonce, &key, stack.honest_evidence(&nonce, &key))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].as_str().unwrap().split('.').count() == 3);
}

#[tokio::test]
async fn wrong_nonce_is_refused() {
    let stack = stack(|_| {}).await;
    let key = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let (cookie, _nonce) = stack.auth().await;
    let forged = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (status, body) = stack
        .attest(&cookie, forged, &key, stack.honest_evidence(forged, &key))
        .await;
    assert_eq!(status, 401);
    assert!(body["detail"].as_str().unwrap().contains("nonce"), "{body}");
    assert!(body["type"]
        .as_str()
        .unwrap()
        .ends_with("/RcarAttestFailed"));
}

#[tokio::test]
async fn replayed_evidence_is_refused() {
    let stack = stack(|_| {}).await;
    let key = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let (cookie, nonce) = stack.auth().await;
    let evidence = stack.honest_evidence(&nonce, &key);
    let (status, _) = stack.attest(&cookie, &nonce, &key, evidence.clone()).await;
    assert_eq!(status, 200);
    // A new session has a new nonce; the old evidence does not bind it.
    let (cookie2, nonce2) = stack.auth().await;
    assert_ne!(nonce, nonce2);
    let (status, body) = stack.attest(&cookie2, &nonce2, &key, evidence).await;
    assert_eq!(status, 401);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Report Data Mismatch"),
        "{body}"
    );
}

#[tokio::test]
async fn report_data_that_does_not_bind_the_key_is_refused() {
    let stack = stack(|_| {}).await;
    let attested = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let swapped = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let (cookie, nonce) = stack.auth().await;
    let evidence = stack.honest_evidence(&nonce, &attested);
    let (status, body) = stack.attest(&cookie, &nonce, &swapped, evidence).await;
    assert_eq!(status, 401);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Report Data Mismatch"),
        "{body}"
    );
}

#[tokio::test]
async fn evidence_with_a_broken_signature_is_refused() {
    let stack = stack(|_| {}).await;
    let key = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let (cookie, nonce) = stack.auth().await;
    let rd = report_data(&nonce, &key.public(), "").unwrap();
    let mut report = stack.evidence.0.report(&rd).unwrap();
    report[0x90] ^= 1; // a measurement byte: the signature no longer covers the report
    let doc = Evidence {
        report,
        cert_chain_pem: stack.evidence.0.chain().to_pem(),
        uvm_endorsements: None,
    };
    // aasp's own evidence document, the second form this KBS reads.
    let evidence: Value = serde_json::from_str(&doc.to_json()).unwrap();
    let (status, body) = stack.attest(&cookie, &nonce, &key, evidence).await;
    assert_eq!(status, 401);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("verify TEE evidence failed"),
        "{body}"
    );
}

#[tokio::test]
async fn expired_session_cookie_is_refused() {
    let stack = stack(|kbs| kbs.session_lifetime = 0).await;
    let err = stack
        .client(KeyAlgorithm::EcdhEsA256KwP256)
        .get_resource(&uri())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { status: 401, message, .. } if message.contains("session expired")),
        "{err}"
    );
}

#[tokio::test]
async fn expired_token_is_refused() {
    let stack = stack(|kbs| kbs.token_lifetime = -60).await;
    let err = stack
        .client(KeyAlgorithm::EcdhEsA256KwP256)
        .get_resource(&uri())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Refused { status: 401, message, .. } if message.contains("expired")),
        "{err}"
    );
}

#[tokio::test]
async fn tampered_jwe_is_refused() {
    let stack = stack(|_| {}).await;
    let key = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
    let (cookie, nonce) = stack.auth().await;
    let (status, _) = stack
        .attest(&cookie, &nonce, &key, stack.honest_evidence(&nonce, &key))
        .await;
    assert_eq!(status, 200);
    let jwe: Value = stack
        .http
        .get(stack.url("resource/default/key/one"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        key.decrypt(&serde_json::to_vec(&jwe).unwrap())
            .unwrap()
            .as_slice(),
        SECRET
    );
    let mut tampered = jwe.clone();
    let ct = tampered["ciphertext"].as_str().unwrap();
    let flipped = if ct.starts_with('A') { "B" } else { "A" };
    tampered["ciphertext"] = Value::String(format!("{flipped}{}", &ct[1..]));
    let err = key
        .decrypt(&serde_json::to_vec(&tampered).unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::Jwe(_)), "{err}");
}

#[tokio::test]
async fn resource_policy_and_missing_resources() {
    let stack = stack(|kbs| {
        kbs.policy = KbsPolicy {
            measurements: vec![[0u8; 48]],
            ..Default::default()
        }
    })
    .await;
    let client = stack.client(KeyAlgorithm::EcdhEsA256KwP256);
    let err = client.get_resource(&uri()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Refused { status: 401, message, .. } if message.contains("PolicyDeny")),
        "{err}"
    );
    // The same guest, once its measurement is allowed, reads the resource.
    stack.emulator.kbs.set_config(KbsConfig {
        policy: KbsPolicy {
            measurements: vec![stack.evidence.0.measurement()],
            ..Default::default()
        },
        ..Default::default()
    });
    assert_eq!(
        client.get_resource(&uri()).await.unwrap().as_slice(),
        SECRET
    );
    let missing = ResourceUri::parse("kbs:///default/key/none").unwrap();
    assert!(matches!(
        client.get_resource(&missing).await.unwrap_err(),
        Error::NotFound(_)
    ));
}

#[tokio::test]
async fn faults_fail_cleanly_and_the_client_recovers() {
    let stack = stack(|_| {}).await;
    let client = stack.client(KeyAlgorithm::EcdhEsA256KwP256);
    stack
        .emulator
        .set_faults("status=503".parse::<Faults>().unwrap());
    let err = client.get_resource(&uri()).await.unwrap_err();
    assert!(matches!(err, Error::Upstream { status: 503, .. }), "{err}");
    stack
        .emulator
        .set_faults("malformed".parse::<Faults>().unwrap());
    let err = client.get_resource(&uri()).await.unwrap_err();
    assert!(matches!(err, Error::BadResponse { .. }), "{err}");
    stack.emulator.set_faults(Faults::default());
    assert_eq!(
        client.get_resource(&uri()).await.unwrap().as_slice(),
        SECRET
    );
}
