//! The emulated Trustee Key Broker Service on `/kbs/v0/*`: the RCAR handshake with a nonce
//! challenge and `kbs-session-id` cookie sessions that expire, real verification of the SNP
//! evidence (signature and chain to the trusted ARKs, report_data bound to the nonce and the TEE
//! public key, init-data against HOST_DATA), a resource policy on measurement / host_data /
//! debug / init-data claims, signed tokens, and resources as JWE to the TEE key (every key
//! algorithm).
//!
//! Answers as Trustee does (`kbs/src/attestation/backend.rs`, `kbs/src/api_server.rs`,
//! `kbs/src/error.rs`): errors are 401 with `{"type","detail"}`, an unknown resource is 404.
//!
//! It also plays Trustee's RESTful attestation service on `POST /attestation` (what
//! `GetToken("coco_as")` asks; `attestation-service/src/bin/restful/mod.rs`): the same evidence
//! verification, runtime data and init-data checks, a token as the reply body, and every
//! failure a 500 with the error chain as text.

use super::handlers::{inject_faults, now, random_hex};
use super::State;
use crate::azure::jws::{sign_rs256, Compact};
use crate::kbs::client::{report_data, PROTOCOL_VERSION, SESSION_COOKIE};
use crate::kbs::jwe::{encrypt, TeePubKey};
use crate::snp::evidence::load_report;
use crate::snp::report::AttestationReport;
use crate::snp::verify::{verify_report, Chain};
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors";

/// What the emulated KBS accepts and holds.
#[derive(Debug, Clone)]
pub struct KbsConfig {
    /// Session (cookie) lifetime in seconds; 0 makes every session expire at once.
    pub session_lifetime: i64,
    /// Token lifetime in seconds; negative issues already-expired tokens.
    pub token_lifetime: i64,
    pub policy: KbsPolicy,
}

impl Default for KbsConfig {
    fn default() -> Self {
        KbsConfig {
            session_lifetime: 300,
            token_lifetime: 3600,
            policy: KbsPolicy::default(),
        }
    }
}

/// The resource policy: which attested guests may read resources. An empty list accepts any
/// value; a debuggable guest is refused unless `allow_debug`.
#[derive(Debug, Clone, Default)]
pub struct KbsPolicy {
    pub measurements: Vec<[u8; 48]>,
    pub host_data: Vec<[u8; 32]>,
    pub allow_debug: bool,
    /// Claims the token's `init_data_claims` must hold: (JSON pointer, value), e.g.
    /// `("/aa.toml/token_configs/kbs/url", "https://kbs")`. A guest that sent no init-data has
    /// none.
    pub init_data_claims: Vec<(String, Value)>,
}

/// The KBS's state: sessions, resources, counters.
pub struct Kbs {
    config: Mutex<KbsConfig>,
    sessions: Mutex<HashMap<String, Session>>,
    resources: Mutex<HashMap<String, Zeroizing<Vec<u8>>>>,
    pub auths: AtomicU64,
    pub attestations: AtomicU64,
    pub resource_reads: AtomicU64,
    /// Tokens the attestation service endpoint issued.
    pub as_attestations: AtomicU64,
}

enum Session {
    Authed { nonce: String, expires: i64 },
    Attested { token: String, expires: i64 },
}

impl Session {
    fn expires(&self) -> i64 {
        match self {
            Session::Authed { expires, .. } | Session::Attested { expires, .. } => *expires,
        }
    }
}

impl Kbs {
    pub fn new(config: KbsConfig) -> Self {
        Kbs {
            config: Mutex::new(config),
            sessions: Mutex::new(HashMap::new()),
            resources: Mutex::new(HashMap::new()),
            auths: AtomicU64::new(0),
            attestations: AtomicU64::new(0),
            resource_reads: AtomicU64::new(0),
            as_attestations: AtomicU64::new(0),
        }
    }

    /// Seeds a resource at `repo/type/tag`.
    pub fn put_resource(&self, path: &str, value: &[u8]) -> Result<(), String> {
        let uri = crate::kbs::ResourceUri::parse(path).map_err(|e| e.to_string())?;
        self.resources
            .lock()
            .map_err(|_| "resource store poisoned".to_owned())?
            .insert(uri.path(), Zeroizing::new(value.to_vec()));
        Ok(())
    }

    pub fn set_config(&self, config: KbsConfig) {
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
    }

    fn config(&self) -> KbsConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/kbs/v0/auth", post(auth))
        .route("/kbs/v0/attest", post(attest))
        .route("/kbs/v0/resource/{repo}/{kind}/{tag}", get(resource))
        .route("/attestation", post(as_attestation))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            inject_faults,
        ))
        .with_state(state)
}

/// A Trustee error: 401 (or 404) with kbs-types `ErrorInformation`.
struct KbsError(StatusCode, &'static str, String);

impl IntoResponse for KbsError {
    fn into_response(self) -> Response {
        let KbsError(status, kind, detail) = self;
        (
            status,
            Json(json!({ "type": format!("{ERROR_TYPE_PREFIX}/{kind}"), "detail": detail })),
        )
            .into_response()
    }
}

fn unauthorized(kind: &'static str, detail: impl Into<String>) -> KbsError {
    KbsError(StatusCode::UNAUTHORIZED, kind, detail.into())
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then(|| value.to_owned())
        })
}

fn set_cookie(id: &str, expires: i64) -> [(&'static str, String); 1] {
    let max_age = (expires - now()).max(0);
    [(
        "Set-Cookie",
        format!("{SESSION_COOKIE}={id}; Max-Age={max_age}; Path=/kbs; HttpOnly"),
    )]
}

async fn auth(AxState(state): AxState<Arc<State>>, body: String) -> Result<Response, KbsError> {
    let request: Value = serde_json::from_str(&body)
        .map_err(|e| unauthorized("RcarAuthFailed", format!("deserialize Request: {e}")))?;
    let version = request
        .get("version")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if version != PROTOCOL_VERSION {
        return Err(unauthorized(
            "RcarAuthFailed",
            format!("KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {version}"),
        ));
    }
    let tee = request
        .get("tee")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if tee != "snp" {
        return Err(unauthorized(
            "RcarAuthFailed",
            format!("this KBS verifies SNP evidence only, not {tee:?}"),
        ));
    }
    let kbs = &state.kbs;
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| unauthorized("RcarAuthFailed", "no randomness"))?;
    let nonce = STANDARD.encode(nonce);
    let id = random_hex(16);
    let expires = now() + kbs.config().session_lifetime;
    if let Ok(mut sessions) = kbs.sessions.lock() {
        let current = now();
        sessions.retain(|_, s| s.expires() > current);
        sessions.insert(
            id.clone(),
            Session::Authed {
                nonce: nonce.clone(),
                expires,
            },
        );
    }
    kbs.auths.fetch_add(1, Ordering::SeqCst);
    Ok((
        set_cookie(&id, expires),
        Json(json!({ "nonce": nonce, "extra-params": "" })),
    )
        .into_response())
}

async fn attest(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, KbsError> {
    let fail = |detail: String| unauthorized("RcarAttestFailed", detail);
    let kbs = &state.kbs;
    let id = cookie_of(&headers).ok_or_else(|| fail("cookie not found".into()))?;
    let nonce = {
        let mut sessions = kbs
            .sessions
            .lock()
            .map_err(|_| fail("session store poisoned".into()))?;
        match sessions.get(&id) {
            None => return Err(fail("session not found".into())),
            Some(s) if s.expires() <= now() => {
                sessions.remove(&id);
                return Err(fail("session expired.".into()));
            }
            // Trustee answers a second attest on an attested session with the same token.
            Some(Session::Attested { token, expires }) => {
                return Ok(
                    (set_cookie(&id, *expires), Json(json!({ "token": token }))).into_response()
                );
            }
            Some(Session::Authed { nonce, .. }) => nonce.clone(),
        }
    };
    let attestation: Value =
        serde_json::from_str(&body).map_err(|e| fail(format!("deserialize Attestation: {e}")))?;
    let sent_nonce = attestation
        .pointer("/runtime-data/nonce")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if sent_nonce != nonce {
        return Err(fail("the nonce in the handshake session is different from the client side in KBS protocol's Attestation message".into()));
    }
    let tee_pubkey: TeePubKey = attestation
        .pointer("/runtime-data/tee-pubkey")
        .cloned()
        .ok_or_else(|| fail("no runtime-data.tee-pubkey".into()))
        .and_then(|v| serde_json::from_value(v).map_err(|e| fail(format!("tee-pubkey: {e}"))))?;
    let additional = attestation
        .pointer("/tee-evidence/additional_evidence")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !additional.is_empty() {
        return Err(fail("additional (device) evidence is not supported".into()));
    }
    let primary = attestation
        .pointer("/tee-evidence/primary_evidence")
        .ok_or_else(|| fail("no tee-evidence.primary_evidence".into()))?;
    let (report, chain) =
        parse_evidence(primary).map_err(|e| fail(format!("verify TEE evidence failed: {e}")))?;
    verify_report(&report, &chain, &state.trust, now() as u64)
        .into_result()
        .map_err(|e| fail(format!("verify TEE evidence failed: {e}")))?;
    let expected = report_data(&nonce, &tee_pubkey, additional).map_err(|e| fail(e.to_string()))?;
    if report.report_data != expected {
        return Err(fail(
            "verify TEE evidence failed: Report Data Mismatch (report_data must be SHA-384 of the canonical {additional-evidence, nonce, tee-pubkey})".into(),
        ));
    }
    let init_data_claims = match attestation.get("init-data").filter(|v| !v.is_null()) {
        Some(init_data) => init_data_claims(init_data, &report.host_data).map_err(fail)?,
        None => Value::Null,
    };
    let config = kbs.config();
    let iat = now();
    let claims = json!({
        "iss": "aasp-emulated-kbs",
        "iat": iat,
        "exp": iat + config.token_lifetime,
        "jti": random_hex(16),
        "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
        "submods": { "cpu0": {
            "ear.status": "affirming",
            "ear.appraisal-policy-id": "default",
            "ear.veraison.annotated-evidence": annotated_evidence(
                &report,
                init_data_claims,
                json!({ "nonce": nonce, "tee-pubkey": tee_pubkey }),
            ),
        }},
    });
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": state.maa_kid });
    let token = sign_rs256(&header, &claims, &state.maa_key).map_err(|e| {
        KbsError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TokenIssueFailed",
            e.to_string(),
        )
    })?;
    let expires = {
        let mut sessions = kbs
            .sessions
            .lock()
            .map_err(|_| fail("session store poisoned".into()))?;
        let expires = sessions
            .get(&id)
            .map(Session::expires)
            .ok_or_else(|| fail("session not found".into()))?;
        sessions.insert(
            id.clone(),
            Session::Attested {
                token: token.clone(),
                expires,
            },
        );
        expires
    };
    kbs.attestations.fetch_add(1, Ordering::SeqCst);
    Ok((set_cookie(&id, expires), Json(json!({ "token": token }))).into_response())
}

/// `POST /attestation` of Trustee's RESTful AS: `{"verification_requests": [{"tee", "evidence",
/// "runtime_data"?, "init_data"?, "runtime_data_hash_algorithm"?}], "policy_ids": [..]}` → the
/// token as text. The evidence is base64url (no padding) of the evidence JSON.
async fn as_attestation(AxState(state): AxState<Arc<State>>, body: String) -> Response {
    match as_evaluate(&state, &body) {
        Ok(token) => {
            state.kbs.as_attestations.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, token).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("An internal error occured: \n0: {e}"),
        )
            .into_response(),
    }
}

fn as_evaluate(state: &State, body: &str) -> Result<String, String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let request: Value = serde_json::from_str(body).map_err(|e| format!("request: {e}"))?;
    let requests = request
        .get("verification_requests")
        .and_then(Value::as_array)
        .ok_or("missing field `verification_requests`")?;
    request
        .get("policy_ids")
        .and_then(Value::as_array)
        .ok_or("missing field `policy_ids`")?;
    let [one] = requests.as_slice() else {
        return Err("this emulated AS evaluates exactly one verification request".into());
    };
    let tee = one.get("tee").and_then(Value::as_str).unwrap_or_default();
    if tee != "snp" {
        return Err(format!(
            "tee `{tee}` is not verified by this emulated AS (snp only)"
        ));
    }
    let evidence = one
        .get("evidence")
        .and_then(Value::as_str)
        .ok_or("missing field `evidence`")?;
    let evidence = URL_SAFE_NO_PAD
        .decode(evidence)
        .map_err(|e| format!("base64 decode evidence: {e}"))?;
    let evidence: Value = serde_json::from_slice(&evidence)
        .map_err(|e| format!("failed to parse evidence as JSON: {e}"))?;
    let (report, chain) = parse_evidence(&evidence).map_err(|e| format!("verify evidence: {e}"))?;
    verify_report(&report, &chain, &state.trust, now() as u64)
        .into_result()
        .map_err(|e| format!("verify evidence: {e}"))?;
    let runtime_data_claims = match one.get("runtime_data").filter(|v| !v.is_null()) {
        None => Value::Null,
        Some(runtime) => as_runtime_data(runtime, one, &report)?,
    };
    let init_data_claims = match one.get("init_data").filter(|v| !v.is_null()) {
        None => Value::Null,
        Some(init) => {
            if let Some(toml) = init.get("init_data_toml").and_then(Value::as_str) {
                toml_init_data_claims(toml, &report.host_data)?
            } else if let Some(digest) = init.get("init_data_digest").and_then(Value::as_str) {
                let digest = URL_SAFE_NO_PAD
                    .decode(digest)
                    .map_err(|e| format!("base64 decode raw init data: {e}"))?;
                if crate::snp::initdata::host_data_for(&digest) != report.host_data {
                    return Err("verify evidence: HOST_DATA mismatch".into());
                }
                Value::Null
            } else {
                return Err(
                    "init_data must be {\"init_data_toml\"} or {\"init_data_digest\"}".into(),
                );
            }
        }
    };
    let iat = now();
    let claims = json!({
        "iss": "aasp-emulated-coco-as",
        "iat": iat,
        "exp": iat + 300,
        "jti": random_hex(16),
        "eat_profile": "tag:github.com,2024:confidential-containers/Trustee",
        "submods": { "cpu0": {
            "ear.status": "affirming",
            "ear.appraisal-policy-id": "default",
            "ear.veraison.annotated-evidence":
                annotated_evidence(&report, init_data_claims, runtime_data_claims),
        }},
    });
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": state.maa_kid });
    sign_rs256(&header, &claims, &state.maa_key).map_err(|e| format!("issue token: {e}"))
}

/// The AS's runtime data check (`attestation-service/src/lib.rs` `parse_runtime_data`): `raw`
/// (base64url) is report_data itself, `structured` JSON is hashed canonically (SHA-384 unless
/// `runtime_data_hash_algorithm` says otherwise); either is padded or cut to 64 bytes.
fn as_runtime_data(
    runtime: &Value,
    request: &Value,
    report: &AttestationReport,
) -> Result<Value, String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::Digest;
    let (expected, claims) = if let Some(raw) = runtime.get("raw").and_then(Value::as_str) {
        let raw = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|e| format!("base64 decode raw runtime data: {e}"))?;
        (raw, Value::Null)
    } else if let Some(structured) = runtime.get("structured") {
        let text = crate::kbs::client::canonical_json(structured);
        let algorithm = request
            .get("runtime_data_hash_algorithm")
            .and_then(Value::as_str)
            .unwrap_or("sha384");
        let digest = match algorithm {
            "sha256" => sha2::Sha256::digest(text.as_bytes()).to_vec(),
            "sha384" => sha2::Sha384::digest(text.as_bytes()).to_vec(),
            "sha512" => sha2::Sha512::digest(text.as_bytes()).to_vec(),
            other => return Err(format!("parse runtime data HashAlgorithm failed: {other}")),
        };
        (digest, structured.clone())
    } else {
        return Err("runtime_data must be {\"raw\"} or {\"structured\"}".into());
    };
    let mut padded = [0u8; 64];
    for (dst, src) in padded.iter_mut().zip(&expected) {
        *dst = *src;
    }
    if padded != report.report_data {
        return Err("verify evidence: Report Data Mismatch".into());
    }
    Ok(claims)
}

/// The SNP evidence: the CoCo form Trustee's verifier reads (`{"attestation_report",
/// "cert_chain"}`, what aasp's attestation agent and upstream's send), or aasp's evidence
/// document (`{"SnpReport", "VcekCertChain"}`, what MAA receives). The chain must be present:
/// this KBS does not fetch VCEKs.
fn parse_evidence(primary: &Value) -> Result<(AttestationReport, Chain), String> {
    if primary.get("attestation_report").is_none() && primary.get("SnpReport").is_none() {
        return Err("primary_evidence is not SNP evidence".into());
    }
    let loaded = load_report(primary.to_string().as_bytes()).map_err(|e| e.to_string())?;
    let pem = loaded
        .evidence
        .map(|e| e.cert_chain_pem)
        .filter(|pem| !pem.is_empty())
        .ok_or_else(|| "the evidence carries no certificate chain".to_owned())?;
    let certs = crate::snp::cert::Cert::from_pem_bundle(pem.as_bytes())
        .map_err(|e| format!("certificate chain: {e}"))?;
    let chain = Chain::from_certs(certs).map_err(|e| format!("certificate chain: {e}"))?;
    Ok((loaded.report, chain))
}

/// The annotated evidence of a token, laid out as Trustee's AS lays it out
/// (`attestation-service/src/ear_token/broker.rs` `transform_claims`): `init_data` and
/// `report_data` lifted out of the verifier's claims, beside `init_data_claims` and
/// `runtime_data_claims`, and the rest under the TEE's name. Claims are named as Trustee's SNP
/// verifier names them (`deps/verifier/src/snp/mod.rs`).
pub(super) fn annotated_evidence(
    r: &AttestationReport,
    init_data_claims: Value,
    runtime_data_claims: Value,
) -> Value {
    let tcb = r.tcb(r.reported_tcb);
    json!({
        "init_data": hex::encode(r.host_data),
        "init_data_claims": init_data_claims,
        "report_data": hex::encode(r.report_data),
        "runtime_data_claims": runtime_data_claims,
        "snp": {
            "measurement": hex::encode(r.measurement),
            "chip_id": hex::encode(r.chip_id),
            "policy_debug_allowed": r.is_debuggable(),
            "reported_tcb_bootloader": tcb.bootloader,
            "reported_tcb_tee": tcb.tee,
            "reported_tcb_snp": tcb.snp,
            "reported_tcb_microcode": tcb.microcode,
        },
    })
}

/// Checks the attest request's `init-data` against HOST_DATA and returns its claims, as Trustee
/// does: its built-in AS accepts the `toml` format only (`kbs/src/attestation/coco/builtin.rs`),
/// hashes the body with the document's algorithm and parses its `[data]`
/// (`attestation-service/src/lib.rs` `parse_init_data`); the SNP verifier compares the digest,
/// cut or padded to 32 bytes, with HOST_DATA (`deps/verifier/src/snp/mod.rs`).
fn init_data_claims(init_data: &Value, host_data: &[u8; 32]) -> Result<Value, String> {
    let format = init_data
        .get("format")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if format != crate::kbs::client::INIT_DATA_FORMAT {
        return Err(format!("Unsupported initdata format: {format}"));
    }
    let body = init_data
        .get("body")
        .and_then(Value::as_str)
        .ok_or("init-data without a body")?;
    toml_init_data_claims(body, host_data)
}

/// The claims of an init-data TOML whose digest must match HOST_DATA (shared with the emulated
/// attestation service's `init_data_toml`).
pub(super) fn toml_init_data_claims(body: &str, host_data: &[u8; 32]) -> Result<Value, String> {
    use crate::snp::initdata;
    let digest = initdata::digest(body).map_err(|e| format!("parse init data: {e}"))?;
    if initdata::host_data_for(&digest) != *host_data {
        return Err(format!(
            "verify TEE evidence failed: HOST_DATA mismatch: the init-data digest gives {}, the report has {}",
            hex::encode(initdata::host_data_for(&digest)),
            hex::encode(host_data)
        ));
    }
    let data = initdata::data(body).map_err(|e| format!("parse init data: {e}"))?;
    let mut claims = serde_json::Map::new();
    for (name, text) in data {
        // Trustee turns the agent's and CDH's TOML into JSON claims when it parses, and lifts
        // the agent policy's `policy_data` out of a rego file.
        let value = match name.as_str() {
            "aa.toml" | "cdh.toml" => toml::from_str::<toml::Value>(&text)
                .ok()
                .and_then(|t| serde_json::to_value(t).ok())
                .unwrap_or(Value::String(text)),
            "policy.rego" => match policy_data(&text) {
                Some(policy) => {
                    claims.insert("agent_policy_claims".into(), policy);
                    continue;
                }
                None => Value::String(text),
            },
            _ => Value::String(text),
        };
        claims.insert(name, value);
    }
    Ok(Value::Object(claims))
}

/// The JSON after `policy_data := ` in a rego policy, when it ends the file (Trustee's
/// `extract_policy_data` makes the same assumption).
fn policy_data(rego: &str) -> Option<Value> {
    const START: &str = "policy_data := {";
    let at = rego.find(START)? + START.len() - 1;
    serde_json::from_str(rego.get(at..)?).ok()
}

async fn resource(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path((repo, kind, tag)): Path<(String, String, String)>,
) -> Result<Response, KbsError> {
    let kbs = &state.kbs;
    let token = token_of(&state, &headers)?;
    let claims = verified_claims(&state, &token)?;
    let evidence = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence")
        .cloned()
        .unwrap_or_default();
    let policy = kbs.config().policy;
    policy_allows(&policy, &evidence).map_err(|why| unauthorized("PolicyDeny", why))?;
    let path = crate::kbs::ResourceUri::parse(&format!("{repo}/{kind}/{tag}"))
        .map_err(|e| KbsError(StatusCode::NOT_FOUND, "InvalidRequestPath", e.to_string()))?
        .path();
    let value = kbs
        .resources
        .lock()
        .ok()
        .and_then(|r| r.get(&path).cloned())
        .ok_or_else(|| {
            KbsError(
                StatusCode::NOT_FOUND,
                "PluginInternalError",
                format!("resource {path} not found"),
            )
        })?;
    let tee_pubkey: TeePubKey = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| unauthorized("ExtractTeePubKeyFailed", "no tee-pubkey in the token"))?;
    let jwe = encrypt(&tee_pubkey, &value)
        .map_err(|e| KbsError(StatusCode::UNAUTHORIZED, "JweError", e.to_string()))?;
    kbs.resource_reads.fetch_add(1, Ordering::SeqCst);
    Ok(Json(jwe).into_response())
}

/// The token of an attested, unexpired session, else the bearer token (as Trustee's
/// `get_attestation_token`).
fn token_of(state: &State, headers: &HeaderMap) -> Result<String, KbsError> {
    if let Some(id) = cookie_of(headers) {
        if let Ok(sessions) = state.kbs.sessions.lock() {
            if let Some(Session::Attested { token, expires }) = sessions.get(&id) {
                if *expires > now() {
                    return Ok(token.clone());
                }
            }
        }
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .ok_or_else(|| unauthorized("TokenNotFound", "Attestation Token not found"))
}

fn verified_claims(state: &State, token: &str) -> Result<Value, KbsError> {
    let bad = |why: String| unauthorized("TokenVerifierError", why);
    let compact = Compact::parse(token).map_err(|e| bad(e.to_string()))?;
    state
        .jwks
        .verify(&compact)
        .map_err(|e| bad(format!("token signature: {e}")))?;
    let claims = compact.claims().map_err(|e| bad(e.to_string()))?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    if exp <= now() {
        return Err(bad("the token has expired".into()));
    }
    Ok(claims)
}

fn policy_allows(policy: &KbsPolicy, evidence: &Value) -> Result<(), String> {
    let field = |pointer: &str| {
        evidence
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let snp = evidence.get("snp").cloned().unwrap_or_default();
    let measurement = field("/snp/measurement");
    if !policy.measurements.is_empty()
        && !policy
            .measurements
            .iter()
            .any(|m| hex::encode(m) == measurement)
    {
        return Err(format!("measurement {measurement} is not allowed"));
    }
    let host_data = field("/init_data");
    if !policy.host_data.is_empty() && !policy.host_data.iter().any(|h| hex::encode(h) == host_data)
    {
        return Err(format!("host_data {host_data} is not allowed"));
    }
    if !policy.allow_debug
        && snp.get("policy_debug_allowed").and_then(Value::as_bool) != Some(false)
    {
        return Err("a debuggable guest may not read resources".into());
    }
    for (pointer, expected) in &policy.init_data_claims {
        let actual = evidence
            .get("init_data_claims")
            .and_then(|claims| claims.pointer(pointer));
        if actual != Some(expected) {
            return Err(format!(
                "init_data_claims{pointer} is {}, the policy requires {expected}",
                actual.map_or_else(|| "absent".to_owned(), Value::to_string)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    const INITDATA: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\nowner = \"a\"\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs\"\n'''\n\"policy.rego\" = '''\npackage agent_policy\ndefault AllowRequestsFailingPolicy := false\npolicy_data := {\"containers\": [1]}\n'''\n";

    /// Trustee's init-data handling: `attestation-service/src/lib.rs` `parse_init_data` (digest
    /// with the document's algorithm, `[data]` as claims, `aa.toml` parsed, `policy_data` lifted
    /// out of `policy.rego`) and the SNP verifier's HOST_DATA check with the digest cut to 32
    /// bytes (`deps/verifier/src/snp/mod.rs`, `regularize_data`).
    #[test]
    fn init_data_is_checked_against_host_data_and_becomes_claims() {
        let digest = sha2::Sha384::digest(INITDATA.as_bytes());
        let mut host_data = [0u8; 32];
        host_data.copy_from_slice(&digest[..32]);
        let request = json!({"format": "toml", "body": INITDATA});
        let claims = init_data_claims(&request, &host_data).unwrap();
        assert_eq!(claims["owner"], "a");
        assert_eq!(
            claims["aa.toml"]["token_configs"]["kbs"]["url"],
            "https://kbs"
        );
        assert_eq!(claims["agent_policy_claims"], json!({"containers": [1]}));
        assert!(claims.get("policy.rego").is_none());
        // Another HOST_DATA, another format, a missing body: refused.
        let mut other = host_data;
        other[31] ^= 1;
        let err = init_data_claims(&request, &other).unwrap_err();
        assert!(err.contains("HOST_DATA mismatch"), "{err}");
        let json_format = json!({"format": "json", "body": INITDATA});
        assert!(init_data_claims(&json_format, &host_data).is_err());
        assert!(init_data_claims(&json!({"format": "toml"}), &host_data).is_err());
    }
}
