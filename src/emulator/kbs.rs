//! The emulated Trustee Key Broker Service on `/kbs/v0/*`: the RCAR handshake with a nonce
//! challenge and `kbs-session-id` cookie sessions that expire, real verification of the SNP
//! evidence (signature and chain to the trusted ARKs, report_data bound to the nonce and the TEE
//! public key), a resource policy on measurement / host_data / debug, signed tokens, and
//! resources as JWE to the TEE key (both key algorithms).
//!
//! Answers as Trustee does (`kbs/src/attestation/backend.rs`, `kbs/src/api_server.rs`,
//! `kbs/src/error.rs`): errors are 401 with `{"type","detail"}`, an unknown resource is 404.

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
}

/// The KBS's state: sessions, resources, counters.
pub struct Kbs {
    config: Mutex<KbsConfig>,
    sessions: Mutex<HashMap<String, Session>>,
    resources: Mutex<HashMap<String, Zeroizing<Vec<u8>>>>,
    pub auths: AtomicU64,
    pub attestations: AtomicU64,
    pub resource_reads: AtomicU64,
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
            "ear.veraison.annotated-evidence": {
                "snp": snp_claims(&report),
                "runtime_data_claims": { "nonce": nonce, "tee-pubkey": tee_pubkey },
            },
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

/// Claims named as Trustee's SNP verifier names them (`deps/verifier/src/snp/mod.rs`).
fn snp_claims(r: &AttestationReport) -> Value {
    let tcb = r.tcb(r.reported_tcb);
    json!({
        "measurement": hex::encode(r.measurement),
        "report_data": hex::encode(r.report_data),
        "init_data": hex::encode(r.host_data),
        "chip_id": hex::encode(r.chip_id),
        "policy_debug_allowed": r.is_debuggable(),
        "reported_tcb_bootloader": tcb.bootloader,
        "reported_tcb_tee": tcb.tee,
        "reported_tcb_snp": tcb.snp,
        "reported_tcb_microcode": tcb.microcode,
    })
}

async fn resource(
    AxState(state): AxState<Arc<State>>,
    headers: HeaderMap,
    Path((repo, kind, tag)): Path<(String, String, String)>,
) -> Result<Response, KbsError> {
    let kbs = &state.kbs;
    let token = token_of(&state, &headers)?;
    let claims = verified_claims(&state, &token)?;
    let snp = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence/snp")
        .cloned()
        .unwrap_or_default();
    let policy = kbs.config().policy;
    policy_allows(&policy, &snp).map_err(|why| unauthorized("PolicyDeny", why))?;
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

fn policy_allows(policy: &KbsPolicy, snp: &Value) -> Result<(), String> {
    let field = |name: &str| {
        snp.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let measurement = field("measurement");
    if !policy.measurements.is_empty()
        && !policy
            .measurements
            .iter()
            .any(|m| hex::encode(m) == measurement)
    {
        return Err(format!("measurement {measurement} is not allowed"));
    }
    let host_data = field("init_data");
    if !policy.host_data.is_empty() && !policy.host_data.iter().any(|h| hex::encode(h) == host_data)
    {
        return Err(format!("host_data {host_data} is not allowed"));
    }
    if !policy.allow_debug
        && snp.get("policy_debug_allowed").and_then(Value::as_bool) != Some(false)
    {
        return Err("a debuggable guest may not read resources".into());
    }
    Ok(())
}
