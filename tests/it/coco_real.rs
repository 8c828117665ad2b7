//! Issue 25 [coco-real]: what the real confidential-data-hub and the real Trustee expect of the
//! attestation agent, each behaviour written from the upstream source it follows (guest-components
//! 8246e5e, trustee 78962cd):
//! - GetToken("kbs") attests afresh on every call (`attestation-agent/src/token/kbs.rs`,
//!   `kbs_protocol/src/client/token_client.rs`);
//! - `tee_key_algorithm = "ECDH-ES+A256KW-P521"` works (`kbs_protocol/src/keypair.rs`, trustee
//!   `kbs/src/jwe/mod.rs`);
//! - init-data goes to the KBS in the attest request and names the KBS
//!   (`kbs_protocol/src/client/rcar_client.rs`, trustee `kbs/src/attestation/backend.rs`,
//!   `attestation-service/src/lib.rs`);
//! - GetToken("coco_as") (`attestation-agent/src/token/coco_as.rs`, trustee
//!   `attestation-service/src/bin/restful/mod.rs`);
//! - a host-chosen plain-http KBS is refused unless `AASP_ALLOW_INSECURE_KBS` allows it.

use crate::common;

use aasp::kbs::{KeyAlgorithm, TeeKeyPair};
use aasp::proto::attestation_agent as aa;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

const SECRET: &[u8] = b"released only to an attested guest";
const RESOURCE: &str = "default/key/coco-real";

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn annotated(claims: &Value) -> &Value {
    &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
}

/// What CDH's token client does with a GetToken("kbs") reply
/// (`kbs_protocol/src/client/token_client.rs`): the token as a bearer credential, the resource
/// decrypted with `tee_keypair`. Returns the HTTP status, and the plaintext on success.
async fn read_with_token(
    http: &reqwest::Client,
    kbs: &str,
    reply: &[u8],
) -> (u16, Option<Vec<u8>>) {
    let reply: Value = serde_json::from_slice(reply).unwrap();
    let response = http
        .get(format!("{kbs}/kbs/v0/resource/{RESOURCE}"))
        .bearer_auth(reply["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    if status != 200 {
        return (status, None);
    }
    let key = TeeKeyPair::from_pem(reply["tee_keypair"].as_str().unwrap()).unwrap();
    (status, Some(key.decrypt(&body).unwrap().to_vec()))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_token_kbs_attests_afresh_on_every_call() {
    let dev = common::Dev::start().await;
    dev.emulator.kbs.put_resource(RESOURCE, SECRET).unwrap();
    let channel = tonic::transport::Channel::from_shared(dev.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let agent = aa::attestation_agent_service_client::AttestationAgentServiceClient::new(channel);
    let http = aasp::http::client(&aasp::http::HttpOptions {
        extra_ca: Some(dev.emulator.ca_path.clone()),
        ..Default::default()
    })
    .unwrap();
    let attestations = || dev.emulator.kbs.attestations.load(Ordering::SeqCst);
    let get_token = move || {
        let mut agent = agent.clone();
        async move {
            agent
                .get_token(aa::GetTokenRequest {
                    token_type: "kbs".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .token
        }
    };

    let before = attestations();
    let first = get_token().await;
    assert_eq!(attestations(), before + 1, "GetToken attests");
    let (status, plain) = read_with_token(&http, &dev.emulator.url, &first).await;
    assert_eq!((status, plain.as_deref()), (200, Some(SECRET)));

    // The KBS policy changes: the token CDH holds no longer opens the resource (401), so CDH
    // asks for a new token, which must come from a new attestation, not the cached session.
    let mut config = aasp::emulator::kbs::KbsConfig::default();
    config.policy.measurements = vec![[0u8; 48]];
    dev.emulator.kbs.set_config(config);
    assert_eq!(
        read_with_token(&http, &dev.emulator.url, &first).await.0,
        401
    );
    let second = get_token().await;
    assert_eq!(
        attestations(),
        before + 2,
        "a second GetToken attests again"
    );
    let (first, second): (Value, Value) = (
        serde_json::from_slice(&first).unwrap(),
        serde_json::from_slice(&second).unwrap(),
    );
    assert_ne!(first["token"], second["token"]);
    assert_ne!(
        first["tee_keypair"], second["tee_keypair"],
        "each attestation certifies a new TEE key, as upstream's"
    );
    // Once the policy admits the guest again, the new token opens the resource.
    dev.emulator
        .kbs
        .set_config(aasp::emulator::kbs::KbsConfig::default());
    let (status, plain) = read_with_token(
        &http,
        &dev.emulator.url,
        &serde_json::to_vec(&second).unwrap(),
    )
    .await;
    assert_eq!((status, plain.as_deref()), (200, Some(SECRET)));
}

async fn get_token(client: &ttrpc::r#async::Client, kind: &str) -> Result<Vec<u8>, ttrpc::Status> {
    let reply: aa::GetTokenResponse = common::ttrpc_call(
        client,
        common::AA_SERVICE,
        "GetToken",
        &aa::GetTokenRequest {
            token_type: kind.into(),
        },
    )
    .await?;
    Ok(reply.token)
}

/// The emulated KBS and AS, and a simulator of its own (a copy of the shared one, so this test
/// may give it a security policy) whose ARK they trust.
struct Peers {
    emulator: aasp::emulator::Running,
    sim_dir: PathBuf,
    measurement: [u8; 48],
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

async fn peers(policy: impl FnOnce(&mut aasp::emulator::kbs::KbsPolicy)) -> Peers {
    let dir = tempfile::tempdir().unwrap();
    let sim_dir = dir.path().join("sim");
    copy_dir(&common::sim_state_dir(), &sim_dir);
    let sim = aasp::snp::sim::Simulated::open(&aasp::snp::sim::SimOptions {
        state_dir: sim_dir.clone(),
        ..Default::default()
    })
    .unwrap();
    let mut config = aasp::emulator::Config::new(dir.path().join("emulator"));
    config.extra_roots = aasp::snp::attester::Attester::simulated_root(&sim)
        .into_iter()
        .collect();
    policy(&mut config.kbs.policy);
    let emulator = aasp::emulator::start(config).await.unwrap();
    emulator.kbs.put_resource(RESOURCE, SECRET).unwrap();
    let http = aasp::http::client(&aasp::http::HttpOptions {
        extra_ca: Some(emulator.ca_path.clone()),
        ..Default::default()
    })
    .unwrap();
    Peers {
        emulator,
        sim_dir,
        measurement: sim.measurement(),
        http,
        dir,
    }
}

/// The agent process, started as kata-agent starts it; killed when the test ends.
struct Agent {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peers {
    fn agent_command(&self, args: &[&str]) -> (Command, PathBuf) {
        let socket = self.dir.path().join("aa/attestation-agent.sock");
        let _ = std::fs::remove_file(&socket);
        let mut command = Command::new(env!("CARGO_BIN_EXE_aasp"));
        command
            .args([
                "--attestation_sock",
                &format!("unix://{}", socket.display()),
            ])
            .args(args)
            .env("AASP_ATTESTER", "sim")
            .env("AASP_STATE_DIR", &self.sim_dir)
            .env("AASP_EXTRA_CA", &self.emulator.ca_path)
            .env_remove("AASP_LISTEN")
            .env_remove("AASP_KBS_URL")
            .env_remove("AASP_AA_CONFIG")
            .env_remove("AA_KBC_PARAMS")
            .env_remove("AASP_ALLOW_INSECURE_KBS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        (command, socket)
    }

    /// Starts the agent and waits for its socket, as kata-agent does.
    async fn agent(&self, args: &[&str], env: &[(&str, &str)]) -> (Agent, ttrpc::r#async::Client) {
        let (mut command, socket) = self.agent_command(args);
        command.envs(env.iter().copied());
        let mut agent = Agent {
            child: command.spawn().unwrap(),
            socket,
        };
        while !agent.socket.exists() {
            if agent.child.try_wait().unwrap().is_some() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(agent.child.stderr.as_mut().unwrap(), &mut stderr)
                    .unwrap();
                panic!("the agent exited: {stderr}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", agent.socket.display()))
            .await
            .unwrap();
        (agent, client)
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.emulator.ca_path).unwrap()
    }
}

/// An `[token_configs.kbs]` section naming the emulated KBS, trusting its CA by `cert`.
fn kbs_section(peers: &Peers, extra: &str) -> String {
    format!(
        "[token_configs.kbs]\nurl = \"{}\"\ncert = \"\"\"\n{}\"\"\"\n{extra}\n",
        peers.emulator.url,
        peers.ca_pem()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn p521_tee_key_and_coco_as_from_the_agent_config() {
    let peers = peers(|_| {}).await;
    let config = peers.dir.path().join("aa.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[token_configs.coco_as]\nurl = \"{}\"\n",
            kbs_section(&peers, "tee_key_algorithm = \"ECDH-ES+A256KW-P521\""),
            peers.emulator.url
        ),
    )
    .unwrap();
    // Before issue 25 the agent exited here: the algorithm did not parse.
    let (_agent, client) = peers.agent(&["-c", config.to_str().unwrap()], &[]).await;

    let reply = get_token(&client, "kbs").await.unwrap();
    let parsed: Value = serde_json::from_slice(&reply).unwrap();
    let pem = parsed["tee_keypair"].as_str().unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 as upstream"
    );
    let key = TeeKeyPair::from_pem(pem).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdhEsA256KwP521);
    let claims = claims_of(parsed["token"].as_str().unwrap());
    assert_eq!(
        annotated(&claims)["runtime_data_claims"]["tee-pubkey"]["crv"],
        "P-521"
    );
    let (status, plain) = read_with_token(&peers.http, &peers.emulator.url, &reply).await;
    assert_eq!((status, plain.as_deref()), (200, Some(SECRET)));

    // GetToken("coco_as"): the AS's token text itself, for evidence it verified.
    let before = peers.emulator.kbs.as_attestations.load(Ordering::SeqCst);
    let token = String::from_utf8(get_token(&client, "coco_as").await.unwrap()).unwrap();
    assert_eq!(
        peers.emulator.kbs.as_attestations.load(Ordering::SeqCst),
        before + 1
    );
    let claims = claims_of(&token);
    assert_eq!(claims["iss"], "aasp-emulated-coco-as");
    let evidence = annotated(&claims);
    assert_eq!(
        evidence["snp"]["measurement"],
        hex::encode(peers.measurement)
    );
    assert_eq!(
        evidence["report_data"],
        hex::encode([0u8; 64]),
        "upstream's coco_as getter binds no runtime data"
    );
    assert_eq!(evidence["init_data_claims"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn initdata_reaches_the_kbs_and_names_it() {
    // A policy keyed on init-data: only a guest whose init-data says owner = tenant-a reads.
    let peers = peers(|policy| {
        policy
            .init_data_claims
            .push(("/owner".into(), Value::String("tenant-a".into())));
    })
    .await;
    let aa_toml = format!(
        "{}\n[token_configs.coco_as]\nurl = \"{}\"\n",
        kbs_section(&peers, ""),
        peers.emulator.url
    );
    let initdata = format!(
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\nowner = \"tenant-a\"\n\"aa.toml\" = '''\n{aa_toml}'''\n"
    );
    let initdata_file = peers.dir.path().join("initdata.toml");
    std::fs::write(&initdata_file, &initdata).unwrap();
    // The simulated host launches the guest with HOST_DATA = SHA-256 of this text: the init-data
    // digest. No -c, no --kbs-url: the init-data's aa.toml names the KBS and the AS.
    let (_agent, client) = peers
        .agent(
            &[
                "--initdata-toml",
                initdata_file.to_str().unwrap(),
                "--sim-security-policy",
                initdata_file.to_str().unwrap(),
            ],
            &[],
        )
        .await;

    let reply = get_token(&client, "kbs").await.unwrap();
    let parsed: Value = serde_json::from_slice(&reply).unwrap();
    let claims = claims_of(parsed["token"].as_str().unwrap());
    let evidence = annotated(&claims);
    // Trustee puts the init-data's [data] in the token, aa.toml parsed into JSON.
    assert_eq!(evidence["init_data_claims"]["owner"], "tenant-a");
    assert_eq!(
        evidence["init_data_claims"]["aa.toml"]["token_configs"]["kbs"]["url"],
        peers.emulator.url.as_str()
    );
    assert_eq!(
        evidence["init_data"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(initdata.as_bytes()))
    );
    // The init-data-keyed policy releases.
    let (status, plain) = read_with_token(&peers.http, &peers.emulator.url, &reply).await;
    assert_eq!((status, plain.as_deref()), (200, Some(SECRET)));

    // The attestation service gets the init-data too, and checks it the same way.
    let token = String::from_utf8(get_token(&client, "coco_as").await.unwrap()).unwrap();
    assert_eq!(
        annotated(&claims_of(&token))["init_data_claims"]["owner"],
        "tenant-a"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_chosen_http_kbs_is_refused_unless_allowed() {
    let peers = peers(|_| {}).await;
    let params = [("AA_KBC_PARAMS", "cc_kbc::http://127.0.0.1:9")];
    // Refused at start-up, naming the source and the way out: the agent exits before its socket
    // appears (watched as kata-agent watches it, so a served socket fails the test, not hangs it).
    let (mut command, socket) = peers.agent_command(&[]);
    let mut refused = Agent {
        child: command.envs(params).spawn().unwrap(),
        socket,
    };
    let status = loop {
        if let Some(status) = refused.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            !refused.socket.exists(),
            "the agent serves with a host-chosen http KBS"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(refused.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("AA_KBC_PARAMS") && stderr.contains("AASP_ALLOW_INSECURE_KBS"),
        "{stderr}"
    );
    // Allowed by the variable: the agent serves (the KBS itself is not there).
    let (_agent, client) = peers
        .agent(&[], &[params[0], ("AASP_ALLOW_INSECURE_KBS", "1")])
        .await;
    assert_eq!(common::aa_tee_type(&client).await, "snp");
    // No [token_configs.coco_as] anywhere: FAILED_PRECONDITION, naming where to configure it.
    let status = get_token(&client, "coco_as").await.unwrap_err();
    assert_eq!(
        status.code(),
        ttrpc::Code::FAILED_PRECONDITION,
        "{status:?}"
    );
    assert!(status.message.contains("coco_as"), "{status:?}");
}

/// `tee_keypair` is a PEM that upstream's `TeeKeyPair::from_pem` (`kbs_protocol/src/keypair.rs`)
/// reads with either crypto backend CDH may be built with: RSA as PKCS#1 first (the RustCrypto
/// backend's `from_pkcs1_pem` takes nothing else, `deps/crypto/src/rust/rsa.rs`), else EC as
/// PKCS#8 whose algorithm names the curve (OpenSSL's `curve_name()` in
/// `deps/crypto/src/native/ec.rs`, the `p256`/`p521` crates' parameter check in
/// `deps/crypto/src/rust/ec.rs`), with the scalar at the curve's full width and, when present,
/// the matching public point.
#[test]
fn tee_keypair_pem_is_what_upstreams_from_pem_reads() {
    use der::Decode;
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    for (algorithm, curve, width) in [
        (KeyAlgorithm::EcdhEsA256KwP256, "1.2.840.10045.3.1.7", 32),
        (KeyAlgorithm::EcdhEsA256KwP521, "1.3.132.0.35", 66),
    ] {
        let key = TeeKeyPair::generate(algorithm).unwrap();
        let pem = key.private_pem().unwrap();
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        assert_eq!(label, "PRIVATE KEY", "{algorithm:?}: PKCS#8");
        let info = pkcs8::PrivateKeyInfo::from_der(&der).unwrap();
        assert_eq!(info.algorithm.oid.to_string(), EC_PUBLIC_KEY);
        assert_eq!(
            info.algorithm.parameters_oid().unwrap().to_string(),
            curve,
            "{algorithm:?}: a named curve"
        );
        let ec = sec1::EcPrivateKey::from_der(info.private_key).unwrap();
        assert_eq!(ec.private_key.len(), width, "{algorithm:?}");
        let Ok(Value::Object(jwk)) = serde_json::to_value(key.public()) else {
            panic!("{algorithm:?}: the public key is no JWK object");
        };
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        if let Some(point) = ec.public_key {
            let expected = [vec![4], coordinate("x"), coordinate("y")].concat();
            assert_eq!(
                point,
                expected.as_slice(),
                "{algorithm:?}: its own public point"
            );
        }
    }
    let key = TeeKeyPair::generate(KeyAlgorithm::RsaOaep256).unwrap();
    let pem = key.private_pem().unwrap();
    let (label, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
    assert_eq!(label, "RSA PRIVATE KEY", "RSA: PKCS#1");
    let rsa = pkcs1::RsaPrivateKey::from_der(&der).unwrap();
    assert_eq!(rsa.modulus.as_bytes().len(), 256, "RSA-2048");
}

/// The connection CDH keeps: its hub connects to the agent once, at its first image pull, and
/// keeps that client for its lifetime to extend the runtime measurement after every pull
/// (`confidential-data-hub/hub/src/hub.rs`, `aa_client`, `initialize_aa_client`), so its next call
/// may come after any pause, on the same connection. The pause here outlasts the agent's 10 s
/// deadline for a request's bytes, the one clock a connection has. (CDH's KBS requests are not
/// such a connection: 8246e5e makes a new KBS client, so a new connection and a GetToken, for
/// every request, `kms/src/plugins/mod.rs` `new_getter`.)
#[tokio::test(flavor = "multi_thread")]
async fn cdhs_long_lived_connection_idle_past_the_request_deadline_keeps_working() {
    let peers = peers(|_| {}).await;
    let (_agent, client) = peers.agent(&[], &[]).await;
    // The event CDH sends after pulling an image.
    let pulled = aa::ExtendRuntimeMeasurementRequest {
        domain: "github.com/confidential-containers".into(),
        operation: "PullImage".into(),
        content: r#"{"image":"docker.io/library/busybox:latest", "digest":"sha256:0"}"#.into(),
        register_index: None,
    };
    for pause in [0, 11] {
        tokio::time::sleep(std::time::Duration::from_secs(pause)).await;
        let reply: aa::ExtendRuntimeMeasurementResponse = common::ttrpc_call(
            &client,
            common::AA_SERVICE,
            "ExtendRuntimeMeasurement",
            &pulled,
        )
        .await
        .unwrap();
        // CDH logs NOT_SUPPORTED as a warning and goes on.
        assert_eq!(
            reply.result,
            aa::RuntimeMeasurementResult::NotSupported as i32
        );
    }
}

/// Trustee's RESTful AS refuses with 500 and its error chain as text
/// (`attestation-service/src/bin/restful/mod.rs`, `error_response`); aasp's error names that
/// service, not a KBS, and comes at once. (Seen against the real `restful-as`, built without the
/// SNP verifier: the error named a KBS, and came after a minute of retries.)
#[tokio::test(flavor = "multi_thread")]
async fn an_attestation_service_refusal_names_the_attestation_service() {
    let peers = peers(|_| {}).await;
    const CHAIN: &str = "An internal error occured: \n0: attestation report evaluate\n1: feature `snp-verifier` is not enabled for `verifier` crate.";
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&asked);
    let service = common::serve(axum::Router::new().route(
        "/attestation",
        axum::routing::post(move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, CHAIN)
        }),
    ))
    .await;
    let config = peers.dir.path().join("aa.toml");
    std::fs::write(
        &config,
        format!("[token_configs.coco_as]\nurl = \"http://{service}\"\n"),
    )
    .unwrap();
    let (_agent, client) = peers.agent(&["-c", config.to_str().unwrap()], &[]).await;
    let status = get_token(&client, "coco_as").await.unwrap_err();
    assert_eq!(status.code(), ttrpc::Code::PERMISSION_DENIED, "{status:?}");
    assert!(
        status.message.contains("attestation service") && !status.message.contains("KBS"),
        "{status:?}"
    );
    assert!(status.message.contains("snp-verifier"), "{status:?}");
    // A refusal is final: asked once, as upstream's getter asks, not retried to the deadline.
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}
