//! The secret flow against the emulator over real HTTPS sockets: the simulated attester, the
//! production MAA, identity and KMS clients, and the emulator verifying everything it receives.

use crate::common;

use aasp::azure::identity::{IdentityProvider, IdentitySource, MHSM_RESOURCE};
use aasp::azure::jwk::{Jwk, KeyFamily};
use aasp::azure::jws::{verify_x5c, Anchors};
use aasp::azure::kms::{KeySpec, KeyUrl, KmsClient};
use aasp::azure::maa::MaaClient;
use aasp::azure::policy::{ReleasePolicy, UvmRequirement};
use aasp::azure::Secret;
use aasp::emulator::{self, Running};
use aasp::http::{HttpOptions, RetryPolicy};
use aasp::provision::{Provisioner, ProvisionerParts};
use aasp::snp::attester::Attester;
use aasp::snp::chain::{ChainCache, Thim};
use aasp::snp::sim::{SimOptions, Simulated};
use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use std::sync::Arc;

struct Stack {
    emulator: Running,
    provisioner: Arc<Provisioner>,
    kms: KmsClient,
    client: reqwest::Client,
    hostdata: String,
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

async fn stack_with(sim: SimOptions, config: impl FnOnce(&mut emulator::Config)) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulated::open(&sim).unwrap();
    let mut cfg = emulator::Config::new(dir.path().to_path_buf());
    cfg.extra_roots = sim.simulated_root().into_iter().collect();
    cfg.thim_json = Some(sim.thim_json());
    cfg.accepted_measurements = vec![sim.measurement()];
    config(&mut cfg);
    let emulator = emulator::start(cfg).await.unwrap();
    let client = aasp::http::client(&HttpOptions {
        extra_ca: Some(emulator.ca_path.clone()),
        ..Default::default()
    })
    .unwrap();
    let hostdata = hex::encode(sim.host_data());
    let chains = ChainCache::new(Box::new(Thim {
        client: client.clone(),
        base: emulator.url.clone(),
    }));
    let identity = IdentityProvider::new(
        client.clone(),
        IdentitySource::Imds {
            base: emulator.url.clone(),
            client_id: None,
        },
        fast_retry(),
    );
    let anchors = Anchors::from_pem_file(&emulator.ca_path).unwrap();
    let provisioner = Provisioner::new(ProvisionerParts {
        attester: Arc::new(sim),
        chains: Arc::new(chains),
        identity: Arc::new(identity),
        kms: Arc::new(KmsClient::new(
            client.clone(),
            anchors.clone(),
            fast_retry(),
        )),
        http: client.clone(),
        retry: fast_retry(),
        cache_ttl: std::time::Duration::from_secs(300),
        allow: aasp::provision::allow::AllowList::with(&[emulator.host()], &[emulator.host()])
            .unwrap(),
    })
    .unwrap();
    // The tests' own key management (create, import, get) never meets injected faults, and a
    // create waits for the emulator's RSA key generation: the default budget, not the 1 s one.
    let kms = KmsClient::new(client.clone(), anchors, RetryPolicy::default());
    Stack {
        emulator,
        provisioner: Arc::new(provisioner),
        kms,
        client,
        hostdata,
        _dir: dir,
    }
}

async fn stack() -> Stack {
    stack_with(
        SimOptions {
            state_dir: common::sim_state_dir(),
            ..Default::default()
        },
        |_| {},
    )
    .await
}

impl Stack {
    async fn access(&self) -> Secret {
        IdentityProvider::new(
            self.client.clone(),
            IdentitySource::Imds {
                base: self.emulator.url.clone(),
                client_id: None,
            },
            fast_retry(),
        )
        .token(MHSM_RESOURCE)
        .await
        .unwrap()
    }

    fn key(&self, name: &str) -> KeyUrl {
        KeyUrl::new(&self.emulator.url, name).unwrap()
    }

    fn key_ref(&self, name: &str) -> aasp::provision::KeyRef {
        aasp::provision::KeyRef::from_key_url(self.key(name), &self.emulator.host()).unwrap()
    }

    fn policy(&self) -> ReleasePolicy {
        ReleasePolicy::for_hostdata(&self.emulator.host(), &self.hostdata, &[])
    }

    async fn import(&self, name: &str, jwk: &Jwk, policy: &ReleasePolicy) {
        self.kms
            .import(&self.key(name), jwk, policy, &self.access().await)
            .await
            .unwrap();
    }

    async fn release(
        &self,
        name: &str,
    ) -> Result<Arc<aasp::provision::ReleasedKey>, aasp::provision::Error> {
        self.provisioner.release(&self.key_ref(name)).await
    }
}

fn rsa_jwk(size: aws_lc_rs::rsa::KeySize) -> Jwk {
    let key = aws_lc_rs::rsa::KeyPair::generate(size).unwrap();
    Jwk::from_pkcs8(KeyFamily::Rsa, key.as_der().unwrap().as_ref()).unwrap()
}

fn ec_jwk() -> Jwk {
    let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    Jwk::from_pkcs8(KeyFamily::Ec, doc.as_ref()).unwrap()
}

/// Changes one signature character well inside the signature (every bit of it is significant).
fn forge(jwt: &str) -> String {
    let at = jwt.len() - 10;
    let replacement = if &jwt[at..=at] == "A" { "B" } else { "A" };
    format!("{}{replacement}{}", &jwt[..at], &jwt[at + 1..])
}

fn private_fields(j: &Jwk) -> Vec<Option<String>> {
    vec![
        j.n.clone(),
        j.e.clone(),
        j.d.clone(),
        j.p.clone(),
        j.q.clone(),
        j.dp.clone(),
        j.dq.clone(),
        j.qi.clone(),
        j.crv.clone(),
        j.x.clone(),
        j.y.clone(),
        j.k.clone(),
    ]
}

#[tokio::test]
async fn releases_rsa3072_oct256_and_ec_p384_keys_intact() {
    let s = stack().await;
    let keys = [
        ("rsa", rsa_jwk(aws_lc_rs::rsa::KeySize::Rsa3072)),
        ("oct", Jwk::oct(&[0x5A; 32])),
        ("ec", ec_jwk()),
    ];
    for (name, jwk) in &keys {
        s.import(name, jwk, &s.policy()).await;
    }
    for (name, jwk) in &keys {
        let released = s
            .release(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            private_fields(&released.jwk),
            private_fields(jwk),
            "{name}: released material differs from the imported"
        );
        assert!(released
            .jwk
            .kid
            .as_deref()
            .unwrap()
            .contains(&format!("/keys/{name}/")));
    }
    assert_eq!(
        s.emulator.counters.maa(),
        1,
        "one MAA token serves every release"
    );
    assert_eq!(s.emulator.counters.release(), 3);
}

#[tokio::test]
async fn created_keys_release_with_the_public_half_kms_reports() {
    let s = stack().await;
    let access = s.access().await;
    let bundle = s
        .kms
        .create(
            &s.key("made"),
            &KeySpec::Rsa { bits: 2048 },
            Some(&s.policy()),
            &access,
        )
        .await
        .unwrap();
    let released = s.release("made").await.unwrap();
    assert_eq!(released.jwk.n, bundle.key.n);
    assert!(released.jwk.d.is_some());
    let shown = s.kms.get(&s.key("made"), &access).await.unwrap();
    assert!(
        shown.key.d.is_none(),
        "get must not return private material"
    );
    assert!(shown.release_policy.is_some());
}

/// Error messages name what failed, never a credential: no JWT (`eyJ…`) and none of the access
/// tokens the emulator issued.
fn assert_no_credentials(emulator: &Running, message: &str) {
    assert!(
        !message.contains("eyJ"),
        "a JWT leaked into an error: {message}"
    );
    let tokens = emulator.issued_access_tokens();
    assert!(!tokens.is_empty(), "the flow obtained an access token");
    for token in tokens {
        assert!(
            !message.contains(&token),
            "an access token leaked into an error: {message}"
        );
    }
}

async fn refused(s: &Stack, name: &str, policy: ReleasePolicy) -> String {
    s.import(name, &Jwk::oct(&[1; 32]), &policy).await;
    let before = s.emulator.counters.release();
    let err = s
        .release(name)
        .await
        .expect_err("the release must be refused")
        .to_string();
    assert_eq!(
        s.emulator.counters.release(),
        before,
        "refused, yet released"
    );
    assert_no_credentials(&s.emulator, &err);
    err
}

#[tokio::test]
async fn refuses_wrong_host_data() {
    let s = stack().await;
    let policy = ReleasePolicy::for_hostdata(&s.emulator.host(), &"00".repeat(32), &[]);
    let err = refused(&s, "k", policy).await;
    assert!(
        err.contains("403") && err.contains("x-ms-sevsnpvm-hostdata"),
        "{err}"
    );
}

/// A guest whose launch measurement MAA does not vouch for (`azure-non-compliant`) gets no key
/// from a generated policy, even with the right host_data (which the host chooses).
#[tokio::test]
async fn refuses_a_non_compliant_uvm() {
    let s = stack_with(
        SimOptions {
            state_dir: common::sim_state_dir(),
            ..Default::default()
        },
        |c| c.accepted_measurements = vec![[0x5a; 48]],
    )
    .await;
    let err = refused(&s, "k", s.policy()).await;
    assert!(
        err.contains("403") && err.contains("x-ms-compliance-status is \"azure-non-compliant\""),
        "{err}"
    );
    // A policy pinning the simulator's launch measurement instead does release.
    let measurement = {
        let sim = Simulated::open(&SimOptions {
            state_dir: common::sim_state_dir(),
            ..Default::default()
        })
        .unwrap();
        hex::encode(sim.measurement())
    };
    let pinned = ReleasePolicy::for_workload(
        &s.emulator.host(),
        &s.hostdata,
        &UvmRequirement::LaunchMeasurement(measurement),
        &[],
    );
    s.import("pinned", &Jwk::oct(&[3; 32]), &pinned).await;
    s.release("pinned").await.unwrap();
}

/// A non-exportable key never leaves the HSM, whatever the token says; Key Vault's rules on
/// policies and exportability hold at creation.
#[tokio::test]
async fn non_exportable_keys_are_never_released() {
    let s = stack().await;
    let access = s.access().await;
    let bundle = s
        .kms
        .create(&s.key("fixed"), &KeySpec::Oct { bits: 256 }, None, &access)
        .await
        .unwrap();
    assert_eq!(bundle.attributes["exportable"], serde_json::json!(false));
    assert!(bundle.release_policy.is_none());
    let err = s.release("fixed").await.unwrap_err().to_string();
    assert!(
        err.contains("403") && err.contains("not exportable"),
        "{err}"
    );
    assert_eq!(s.emulator.counters.release(), 0);

    // Exportable without a policy, or non-exportable with one: refused as Key Vault does.
    let url = format!("{}/keys/raw?api-version=7.4", s.emulator.url);
    let policy = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&s.policy()).unwrap());
    for (body, expected) in [
        (
            serde_json::json!({"key": Jwk::oct(&[1; 32]), "attributes": {"exportable": true}}),
            "Exportable keys must have release policy",
        ),
        (
            serde_json::json!({"key": Jwk::oct(&[1; 32]), "attributes": {"exportable": false},
                "release_policy": {"data": policy}}),
            "Non-exportable keys must not have release policy",
        ),
    ] {
        let response = s
            .client
            .put(&url)
            .bearer_auth(access.expose())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{text}");
    }
}

/// An empty allOf is vacuously true: the emulated HSM refuses such a policy (and an empty
/// anyOf) at import, so it can never release to any token from the authority.
#[tokio::test]
async fn refuses_policies_with_empty_groups() {
    let s = stack().await;
    for text in [
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"https://{}","allOf":[]}}]}}"#,
            s.emulator.host()
        ),
        format!(
            r#"{{"version":"1.0.0","anyOf":[{{"authority":"https://{}","anyOf":[]}}]}}"#,
            s.emulator.host()
        ),
        r#"{"version":"1.0.0","anyOf":[]}"#.to_owned(),
    ] {
        let policy = ReleasePolicy::parse(text.as_bytes()).unwrap();
        let err = s
            .kms
            .import(
                &s.key("empty"),
                &Jwk::oct(&[4; 32]),
                &policy,
                &s.access().await,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("400") && err.contains("empty"),
            "{text}: {err}"
        );
    }
}

#[tokio::test]
async fn refuses_a_debuggable_guest() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimOptions {
        state_dir: dir.path().into(),
        policy: Some(aasp::snp::sim::DEFAULT_POLICY | aasp::snp::report::POLICY_DEBUG_BIT),
        ..Default::default()
    };
    let s = stack_with(sim, |_| {}).await;
    let err = refused(&s, "k", s.policy()).await;
    assert!(
        err.contains("x-ms-sevsnpvm-is-debuggable is \"true\""),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_a_token_from_another_authority() {
    let s = stack().await;
    let policy = ReleasePolicy::for_hostdata("other-maa.example.net", &s.hostdata, &[]);
    let err = refused(&s, "k", policy).await;
    assert!(err.contains("authority"), "{err}");
}

#[tokio::test]
async fn refuses_an_expired_token() {
    let s = stack_with(
        SimOptions {
            state_dir: common::sim_state_dir(),
            ..Default::default()
        },
        |c| c.maa_token_lifetime = -60,
    )
    .await;
    let err = refused(&s, "k", s.policy()).await;
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn refuses_a_forged_token_and_a_missing_bearer() {
    let s = stack().await;
    s.import("k", &Jwk::oct(&[2; 32]), &s.policy()).await;
    let tk = aasp::azure::ckm::TransferKey::generate().unwrap();
    let evidence = s.provisioner.evidence(&tk.runtime_data()).await.unwrap();
    let token = MaaClient::new(s.client.clone(), &s.emulator.host(), fast_retry())
        .unwrap()
        .attest(&evidence, &tk.runtime_data())
        .await
        .unwrap();
    let jwt = token.jwt.expose().to_owned();
    let forged = forge(&jwt);
    let access = s.access().await;
    let wrap = aasp::azure::ckm::WrapAlgorithm::CkmRsaAesKeyWrap;
    let err = s
        .kms
        .release(&s.key("k"), &Secret::new(forged), &access, &tk, wrap)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("403") && err.contains("not valid"), "{err}");
    // The genuine token releases, so the refusal above was the signature's doing.
    s.kms
        .release(&s.key("k"), &token.jwt, &access, &tk, wrap)
        .await
        .unwrap();

    let url = format!("{}/keys/k/release?api-version=7.4", s.emulator.url);
    let response = s
        .client
        .post(url)
        .json(&serde_json::json!({ "target": jwt }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("Bearer"));
}

#[tokio::test]
async fn tampered_release_responses_are_refused() {
    let s = stack().await;
    s.import("k", &Jwk::oct(&[3; 32]), &s.policy()).await;
    let tk = aasp::azure::ckm::TransferKey::generate().unwrap();
    let evidence = s.provisioner.evidence(&tk.runtime_data()).await.unwrap();
    let token = MaaClient::new(s.client.clone(), &s.emulator.host(), fast_retry())
        .unwrap()
        .attest(&evidence, &tk.runtime_data())
        .await
        .unwrap();
    let url = format!("{}/keys/k/release?api-version=7.4", s.emulator.url);
    let response: serde_json::Value = s
        .client
        .post(url)
        .bearer_auth(s.access().await.expose())
        .json(&serde_json::json!({ "target": token.jwt.expose() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jws = response["value"].as_str().unwrap();
    let anchors = Anchors::from_pem_file(&s.emulator.ca_path).unwrap();
    verify_x5c(jws, "127.0.0.1", &anchors).unwrap();

    let parts: Vec<&str> = jws.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["request"]["kid"] = "https://evil/keys/k".into();
    let tampered_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    assert!(verify_x5c(&tampered_payload, "127.0.0.1", &anchors)
        .unwrap_err()
        .to_string()
        .contains("signature"));
    let mut sig = b64.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], b64.encode(sig));
    assert!(verify_x5c(&tampered_sig, "127.0.0.1", &anchors).is_err());
    assert!(verify_x5c(jws, "vault.example.net", &anchors)
        .unwrap_err()
        .to_string()
        .contains("not valid for"));
    let untrusted =
        Anchors::from_pem(&std::fs::read(common::data_dir().join("roots/milan-ark.pem")).unwrap())
            .unwrap();
    assert!(verify_x5c(jws, "127.0.0.1", &untrusted)
        .unwrap_err()
        .to_string()
        .contains("trusted root"));
}

#[tokio::test]
async fn real_hardware_evidence_passes_the_chain_checks_and_fails_only_on_report_data() {
    let s = stack().await;
    let maa = MaaClient::new(s.client.clone(), &s.emulator.host(), fast_retry()).unwrap();
    for name in [
        "milan-go-sev-guest",
        "milan-trustee",
        "milan-virtee",
        "milan-aci-sidecar",
        "genoa-azure",
    ] {
        let mut pem = aasp::snp::cert::Cert::from_der(&common::read(&format!("{name}/vcek.der")))
            .unwrap()
            .to_pem();
        pem.push_str(&String::from_utf8(common::read(&format!("{name}/chain.pem"))).unwrap());
        let evidence = aasp::snp::evidence::Evidence {
            report: common::read(&format!("{name}/report.bin")),
            cert_chain_pem: pem,
            uvm_endorsements: None,
        };
        let err = maa
            .attest(&evidence, br#"{"keys":[]}"#)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("report_data does not match SHA-256 of the runtime data"),
            "{name}: {err}"
        );
    }
    assert_eq!(s.emulator.counters.maa(), 0);
}

#[tokio::test]
async fn concurrent_releases_of_one_key_share_one_flight() {
    let s = stack().await;
    s.import("shared", &Jwk::oct(&[4; 32]), &s.policy()).await;
    let key = s.key_ref("shared");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let p = Arc::clone(&s.provisioner);
            let key = key.clone();
            tokio::spawn(async move { p.release(&key).await.map(|r| r.jwk.k.clone()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Jwk::oct(&[4; 32]).k);
    }
    assert_eq!(s.emulator.counters.maa(), 1);
    assert_eq!(s.emulator.counters.release(), 1);
}

#[tokio::test]
async fn maa_tokens_verify_against_the_published_keys() {
    let s = stack().await;
    let tk = aasp::azure::ckm::TransferKey::generate().unwrap();
    let maa = MaaClient::new(s.client.clone(), &s.emulator.host(), fast_retry()).unwrap();
    let token = maa
        .attest(
            &s.provisioner.evidence(&tk.runtime_data()).await.unwrap(),
            &tk.runtime_data(),
        )
        .await
        .unwrap();
    let claims = maa.verify(&token).await.unwrap();
    assert_eq!(claims["x-ms-sevsnpvm-hostdata"], s.hostdata);
    assert_eq!(
        claims["x-ms-runtime"]["keys"][0]["kid"],
        tk.public_jwk().kid.clone().unwrap()
    );
    assert_eq!(claims["x-ms-attestation-type"], "sevsnpvm");
    let jwt = token.jwt.expose();
    let forged = aasp::azure::maa::MaaToken::from_jwt(forge(jwt)).unwrap();
    assert!(maa.verify(&forged).await.is_err());
}

#[tokio::test]
async fn workload_identity_exchanges_the_federated_token() {
    let s = stack().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "federated-service-account-token").unwrap();
    let identity = IdentityProvider::new(
        s.client.clone(),
        IdentitySource::WorkloadIdentity {
            authority_host: s.emulator.url.clone(),
            tenant_id: "tenant".into(),
            client_id: "client".into(),
            token_file: file,
        },
        fast_retry(),
    );
    let access = identity.token(MHSM_RESOURCE).await.unwrap();
    s.kms
        .import(&s.key("wi"), &Jwk::oct(&[5; 32]), &s.policy(), &access)
        .await
        .unwrap();
    // Cached: no second exchange.
    let again = identity.token(MHSM_RESOURCE).await.unwrap();
    assert_eq!(again.expose(), access.expose());
}

#[tokio::test]
async fn injected_faults_fail_cleanly_and_the_next_call_after_them_succeeds() {
    use aasp::emulator::faults::Faults;
    let s = stack().await;
    s.import("k", &Jwk::oct(&[6; 32]), &s.policy()).await;
    for (spec, expect) in [
        ("status=503", "HTTP 503"),
        ("status=429", "HTTP 429"),
        ("malformed", "EOF while parsing"),
        ("drop", "attempts in"),
    ] {
        s.emulator.set_faults(spec.parse::<Faults>().unwrap());
        let started = std::time::Instant::now();
        let err = s.release("k").await.expect_err(spec).to_string();
        assert!(err.contains(expect), "{spec}: {err}");
        assert_no_credentials(&s.emulator, &err);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{spec}: retries must be bounded"
        );
    }
    s.emulator.set_faults(Faults::default());
    let released = s.release("k").await.unwrap();
    assert_eq!(
        released.jwk.k,
        Jwk::oct(&[6; 32]).k,
        "a failure is never cached"
    );
}

#[tokio::test]
async fn a_token_from_another_issuer_is_not_used() {
    let s = stack_with(
        SimOptions {
            state_dir: common::sim_state_dir(),
            ..Default::default()
        },
        |c| c.maa_issuer = Some("https://impostor.example.net".into()),
    )
    .await;
    s.import("k", &Jwk::oct(&[7; 32]), &s.policy()).await;
    let err = s
        .release("k")
        .await
        .expect_err("a foreign issuer's token must not be used")
        .to_string();
    assert!(err.contains("not by the configured authority"), "{err}");
    assert_eq!(s.emulator.counters.release(), 0);
}

#[tokio::test]
async fn releases_keep_working_across_a_transfer_key_rotation() {
    let s = stack().await;
    for name in ["before", "after"] {
        s.import(name, &Jwk::oct(&[8; 32]), &s.policy()).await;
    }
    s.release("before").await.unwrap();
    s.provisioner.rotate_transfer_key().unwrap();
    let released = s.release("after").await.unwrap();
    assert_eq!(released.jwk.k, Jwk::oct(&[8; 32]).k);
    assert_eq!(
        s.emulator.counters.maa(),
        2,
        "a token bound to the old transfer key is not reused"
    );
}

/// Issue 11 item 4: after the KMS refuses the access token (401), the MAA token is fetched again
/// once and the access token file read again; a rotated file is used without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_access_token_is_refetched_and_a_rotated_token_file_is_used() {
    use std::sync::atomic::Ordering;
    let s = stack().await;
    s.import("rotated", &Jwk::oct(&[6; 32]), &s.policy()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "a-token-the-kms-never-issued\n").unwrap();
    let mut args = aasp::cli::serve::BackendArgs::for_emulator(
        &s.emulator.url,
        &s.emulator.ca_path,
        &common::sim_state_dir(),
        None,
    );
    args.access_token_file = Some(file.clone());
    args.transfer_key_rotation = 0;
    let backend = args.build().unwrap();
    let p = &backend.provisioner;
    let key = aasp::provision::KeyRef::from_key_url(s.key("rotated"), &s.emulator.host()).unwrap();
    let err = p.release(&key).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert_eq!(
        (
            p.counters.maa_calls.load(Ordering::SeqCst),
            p.counters.release_calls.load(Ordering::SeqCst)
        ),
        (2, 2),
        "after the 401 the MAA token is fetched again, once, and the release tried once more"
    );
    std::fs::write(&file, format!("{}\n", s.access().await.expose())).unwrap();
    let released = p.release(&key).await.unwrap();
    assert_eq!(released.jwk.k, Jwk::oct(&[6; 32]).k);
    assert_eq!(p.counters.maa_calls.load(Ordering::SeqCst), 2);
}

/// TLS verification of outbound calls: the client trusts the roots it is given (a server passes
/// the system's, read once) and the extra CA file, and nothing else.
#[tokio::test]
async fn the_http_client_trusts_its_roots_and_the_extra_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator::start(emulator::Config::new(dir.path().to_path_buf()))
        .await
        .unwrap();
    let reach = |client: reqwest::Client| {
        let url = format!("{}/no-such-path", emulator.url);
        async move { client.get(url).send().await.map(|r| r.status()) }
    };
    let none = aasp::http::client_with_roots(&HttpOptions::default(), &[]).unwrap();
    let refused = reach(none).await.unwrap_err();
    assert!(
        refused.is_connect(),
        "an untrusted server was accepted: {refused:?}"
    );

    let with_extra = aasp::http::client_with_roots(
        &HttpOptions {
            extra_ca: Some(emulator.ca_path.clone()),
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    assert!(reach(with_extra).await.is_ok());

    let pem = std::fs::read(&emulator.ca_path).unwrap();
    let roots: Vec<rustls_pki_types::CertificateDer<'static>> =
        aasp::snp::cert::Cert::from_pem_bundle(&pem)
            .unwrap()
            .into_iter()
            .map(|c| c.der().to_vec().into())
            .collect();
    let with_roots = aasp::http::client_with_roots(&HttpOptions::default(), &roots).unwrap();
    assert!(reach(with_roots).await.is_ok());
}
