//! The emulated services on their real paths. Each handler checks what the real service checks
//! and answers in the real service's shapes, including its error bodies.

use super::faults::FaultKind;
use super::{State, StoredKey, ACCESS_TOKEN_LIFETIME};
use crate::azure::ckm::{wrap_to, WrapAlgorithm};
use crate::azure::jwk::{Jwk, KeyFamily};
use crate::azure::jws::{sign_rs256, Compact};
use crate::azure::policy::{ReleasePolicy, COMPLIANT_UVM, NON_COMPLIANT};
use crate::snp::evidence::{decode_b64, Evidence};
use crate::snp::report::{report_data_for_runtime, AttestationReport};
use crate::snp::verify::{verify_report, Chain};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::extract::{Path, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Shared = Arc<State>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/metadata/THIM/amd/certification", get(thim))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route("/attest/SevSnpVm", post(maa_attest))
        .route("/certs", get(maa_certs))
        .route("/keys/{name}", get(get_key).put(import_key))
        .route("/keys/{name}/create", post(create_key))
        .route("/keys/{name}/release", post(release_latest))
        .route("/keys/{name}/{version}", get(get_key_version))
        .route("/keys/{name}/{version}/release", post(release_version))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            inject_faults,
        ))
        .with_state(state)
}

/// An error in the real services' shape: `{"error":{"code","message"}}`.
struct Failure(StatusCode, &'static str, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, code, message) = self;
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, "BadParameter", message.into())
}

fn forbidden(message: impl Into<String>) -> Failure {
    Failure(StatusCode::FORBIDDEN, "Forbidden", message.into())
}

/// Front of every request: HTTP/2 carries the host in `:authority`, not `Host`; handlers read
/// `Host` (issuer and key URLs name the host the client used), so it is filled in here. Then the
/// configured faults fire.
pub(super) async fn inject_faults(
    AxState(state): AxState<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    if !request.headers().contains_key("host") {
        let authority = request
            .uri()
            .authority()
            .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok());
        if let Some(authority) = authority {
            request.headers_mut().insert("host", authority);
        }
    }
    state.counters.requests.fetch_add(1, Ordering::SeqCst);
    let drawn = state.faults.read().map(|f| f.draw()).unwrap_or_default();
    for fault in drawn {
        match fault {
            FaultKind::Latency(delay) => tokio::time::sleep(delay).await,
            FaultKind::Status(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut response =
                    Failure(status, "InjectedFault", format!("injected HTTP {code}"))
                        .into_response();
                if code == 429 {
                    response
                        .headers_mut()
                        .insert("Retry-After", axum::http::HeaderValue::from_static("1"));
                }
                return response;
            }
            FaultKind::Malformed => return (StatusCode::OK, "{\"malformed\": ").into_response(),
            FaultKind::Drop => {}
        }
    }
    next.run(request).await
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

pub(super) fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    let _ = SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

async fn thim(AxState(state): AxState<Shared>, headers: HeaderMap) -> Result<Response, Failure> {
    require_metadata_header(&headers)?;
    let doc = state.thim_json.clone().ok_or_else(|| {
        Failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no simulated host".into(),
        )
    })?;
    Ok(([("Content-Type", "application/json")], doc).into_response())
}

fn require_metadata_header(headers: &HeaderMap) -> Result<(), Failure> {
    if headers.get("Metadata").and_then(|v| v.to_str().ok()) == Some("true") {
        Ok(())
    } else {
        Err(bad_request("Required metadata header not specified"))
    }
}

/// Issued access tokens the emulator remembers at most. IMDS answers anyone on loopback, and
/// `aasp dev` runs the emulator in its own process: without a bound, a local loop of token
/// requests would grow that process's memory for as long as it runs.
pub(super) const MAX_ACCESS_TOKENS: usize = 10_000;

pub(super) fn issue_access_token(state: &State) -> String {
    remember_access_token(state, random_hex(32))
}

/// The audience Azure Storage accepts (with or without a trailing slash).
pub(super) const STORAGE_AUDIENCE: &str = "https://storage.azure.com";

/// A token for `resource` (an IMDS resource, or an Entra scope without `/.default`). Storage
/// tokens are JWTs, because storage emulators (Azurite's `--oauth basic`) read their `aud`,
/// `iss` and times: signed with the MAA key, which nobody checks here; the others stay opaque.
pub(super) fn issue_token_for(state: &State, resource: &str) -> String {
    if resource.trim_end_matches('/') != STORAGE_AUDIENCE {
        return issue_access_token(state);
    }
    let issued = now();
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let claims = json!({
        "aud": STORAGE_AUDIENCE,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": issued,
        "nbf": issued - 60,
        "exp": issued + ACCESS_TOKEN_LIFETIME.as_secs() as i64,
        "tid": tenant,
        "appid": "aasp-emulator",
        "oid": random_hex(16),
        "jti": random_hex(16),
    });
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": state.maa_kid});
    match sign_rs256(&header, &claims, &state.maa_key) {
        Ok(token) => remember_access_token(state, token),
        // Signing with a generated key does not fail; an opaque token is refused by storage.
        Err(_) => issue_access_token(state),
    }
}

fn remember_access_token(state: &State, token: String) -> String {
    state.counters.tokens.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut tokens) = state.access_tokens.lock() {
        if tokens.len() >= MAX_ACCESS_TOKENS {
            let current = now() as u64;
            tokens.retain(|_, expiry| *expiry > current);
        }
        if tokens.len() >= MAX_ACCESS_TOKENS {
            // Still full of live tokens: the one closest to expiry makes room (its holder gets a
            // 401 and fetches another, as from a real HSM after a revocation).
            let oldest = tokens
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(
            token.clone(),
            (now() as u64) + ACCESS_TOKEN_LIFETIME.as_secs(),
        );
    }
    token
}

async fn imds_token(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, Failure> {
    require_metadata_header(&headers)?;
    let resource = query
        .get("resource")
        .ok_or_else(|| bad_request("resource is required"))?;
    if query.get("api-version").map(String::as_str) != Some("2018-02-01") {
        return Err(bad_request("api-version 2018-02-01 is required"));
    }
    let lifetime = ACCESS_TOKEN_LIFETIME.as_secs();
    Ok(Json(json!({
        "access_token": issue_token_for(&state, resource),
        "expires_in": lifetime.to_string(),
        "expires_on": (now() as u64 + lifetime).to_string(),
        "resource": resource,
        "token_type": "Bearer",
    })))
}

async fn entra_token(
    AxState(state): AxState<Shared>,
    body: String,
) -> Result<Json<Value>, Failure> {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    for field in ["client_id", "client_assertion", "scope"] {
        if form.get(field).is_none_or(|v| v.is_empty()) {
            return Err(bad_request(format!(
                "AADSTS900144: The request body must contain the parameter '{field}'"
            )));
        }
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err(bad_request("unsupported client_assertion_type"));
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or_default();
    let resource = scope.strip_suffix("/.default").unwrap_or(scope);
    Ok(Json(json!({
        "access_token": issue_token_for(&state, resource),
        "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
        "token_type": "Bearer",
    })))
}

/// MAA: verify the evidence, check the runtime binding, issue a token.
async fn maa_attest(
    AxState(state): AxState<Shared>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, Failure> {
    let request: Value = serde_json::from_str(&body)
        .map_err(|e| bad_request(format!("request is not JSON: {e}")))?;
    let field = |path: &str| {
        request
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let evidence_json =
        decode_b64("report", field("/report")).map_err(|e| bad_request(e.to_string()))?;
    let evidence = Evidence::from_json(&evidence_json).map_err(|e| bad_request(e.to_string()))?;
    let runtime = decode_b64("runtimeData.data", field("/runtimeData/data"))
        .map_err(|e| bad_request(e.to_string()))?;
    let report =
        AttestationReport::from_bytes(&evidence.report).map_err(|e| bad_request(e.to_string()))?;
    let certs = crate::snp::cert::Cert::from_pem_bundle(evidence.cert_chain_pem.as_bytes())
        .map_err(|e| bad_request(format!("VcekCertChain: {e}")))?;
    let chain = Chain::from_certs(certs).map_err(|e| bad_request(format!("VcekCertChain: {e}")))?;
    verify_report(&report, &chain, &state.trust, now() as u64)
        .into_result()
        .map_err(|e| bad_request(e.to_string()))?;
    if report.report_data != report_data_for_runtime(&runtime) {
        return Err(bad_request(
            "report_data does not match SHA-256 of the runtime data: the report was made for other runtime data",
        ));
    }
    let runtime_json: Value = match field("/runtimeData/dataType") {
        "JSON" => serde_json::from_slice(&runtime)
            .map_err(|e| bad_request(format!("runtimeData is not JSON: {e}")))?,
        _ => Value::Object(Default::default()),
    };
    state.counters.maa_attest.fetch_add(1, Ordering::SeqCst);
    let issuer = state
        .maa_issuer
        .clone()
        .unwrap_or_else(|| format!("https://{}", host_of(&headers)));
    let claims = maa_claims(&state, &report, &issuer, runtime_json);
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": state.maa_kid, "jku": format!("{issuer}/certs") });
    let token = sign_rs256(&header, &claims, &state.maa_key)
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    Ok(Json(json!({ "token": token })))
}

fn host_of(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned()
}

fn maa_claims(state: &State, r: &AttestationReport, issuer: &str, runtime: Value) -> Value {
    let tcb = r.tcb(r.reported_tcb);
    // Real MAA vouches only for UVM images it knows; the emulator knows the configured ones.
    let compliant = state.accepted_measurements.contains(&r.measurement);
    let iat = now();
    json!({
        "iss": issuer,
        "iat": iat,
        "nbf": iat,
        "exp": iat + state.maa_token_lifetime,
        "jti": random_hex(16),
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": if compliant { COMPLIANT_UVM } else { NON_COMPLIANT },
        "x-ms-policy-hash": "",
        "x-ms-runtime": runtime,
        "x-ms-sevsnpvm-hostdata": hex::encode(r.host_data),
        "x-ms-sevsnpvm-launchmeasurement": hex::encode(r.measurement),
        "x-ms-sevsnpvm-reportdata": hex::encode(r.report_data),
        "x-ms-sevsnpvm-is-debuggable": r.is_debuggable(),
        "x-ms-sevsnpvm-vmpl": r.vmpl,
        "x-ms-sevsnpvm-guestsvn": r.guest_svn,
        "x-ms-sevsnpvm-idkeydigest": hex::encode(r.id_key_digest),
        "x-ms-sevsnpvm-familyId": hex::encode(r.family_id),
        "x-ms-sevsnpvm-imageId": hex::encode(r.image_id),
        "x-ms-sevsnpvm-bootloader-svn": tcb.bootloader,
        "x-ms-sevsnpvm-tee-svn": tcb.tee,
        "x-ms-sevsnpvm-snpfw-svn": tcb.snp,
        "x-ms-sevsnpvm-microcode-svn": tcb.microcode,
        "x-ms-sevsnpvm-reportid": hex::encode(r.report_id),
    })
}

async fn maa_certs(AxState(state): AxState<Shared>) -> Json<Value> {
    Json(serde_json::to_value(&state.jwks).unwrap_or_default())
}

fn require_bearer(state: &State, headers: &HeaderMap) -> Result<(), Failure> {
    let unauthorized = |m: &str| Failure(StatusCode::UNAUTHORIZED, "Unauthorized", m.to_owned());
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("AKV10000: Request is missing a Bearer or PoP token."))?;
    let expiry = state
        .access_tokens
        .lock()
        .ok()
        .and_then(|t| t.get(token).copied());
    match expiry {
        Some(exp) if exp > now() as u64 => Ok(()),
        Some(_) => Err(unauthorized("AKV10013: the access token has expired")),
        None => Err(unauthorized("AKV10032: Invalid issuer or token")),
    }
}

fn key_url(headers: &HeaderMap, name: &str, version: &str) -> String {
    format!("https://{}/keys/{name}/{version}", host_of(headers))
}

fn bundle(headers: &HeaderMap, name: &str, key: &StoredKey) -> Value {
    let mut public = key.jwk.public();
    public.kid = Some(key_url(headers, name, &key.version));
    let mut bundle = json!({
        "key": public,
        "attributes": { "enabled": true, "exportable": key.exportable, "recoveryLevel": "Recoverable" },
    });
    if let (Some(data), Some(object)) = (&key.policy_b64, bundle.as_object_mut()) {
        object.insert(
            "release_policy".into(),
            json!({ "contentType": "application/json; charset=utf-8", "data": data }),
        );
    }
    bundle
}

/// The key's exportability and release policy, under Key Vault's rules: an exportable key must
/// have a release policy and a non-exportable one must not; a policy must parse and must not
/// hold an empty `allOf`/`anyOf`.
#[allow(clippy::type_complexity)]
fn parse_policy(body: &Value) -> Result<(bool, Option<(ReleasePolicy, String)>), Failure> {
    let exportable = body
        .pointer("/attributes/exportable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let data = body.pointer("/release_policy/data").and_then(Value::as_str);
    let data = match (exportable, data) {
        (false, None) => return Ok((false, None)),
        (false, Some(_)) => {
            return Err(bad_request(
                "AKV.SKR.1005: Non-exportable keys must not have release policy",
            ))
        }
        (true, None) => return Err(bad_request("Exportable keys must have release policy")),
        (true, Some(data)) => data,
    };
    let raw = decode_b64("release_policy.data", data).map_err(|e| bad_request(e.to_string()))?;
    let policy = ReleasePolicy::parse(&raw).map_err(bad_request)?;
    policy
        .validate()
        .map_err(|e| bad_request(format!("Key Release Policy: {e}")))?;
    Ok((true, Some((policy, URL_SAFE_NO_PAD.encode(raw)))))
}

fn store(
    state: &State,
    headers: &HeaderMap,
    name: &str,
    jwk: Jwk,
    body: &Value,
) -> Result<Json<Value>, Failure> {
    let (exportable, policy) = parse_policy(body)?;
    let (policy, policy_b64) = policy.unzip();
    let key = StoredKey {
        jwk,
        version: random_hex(16),
        exportable,
        policy,
        policy_b64,
    };
    let response = bundle(headers, name, &key);
    stored_keys(state)?.insert(name.to_owned(), key);
    Ok(Json(response))
}

async fn import_key(
    AxState(state): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, Failure> {
    require_bearer(&state, &headers)?;
    let jwk: Jwk = serde_json::from_value(body.get("key").cloned().unwrap_or_default())
        .map_err(|e| bad_request(format!("key: {e}")))?;
    let family = jwk.family().map_err(|e| bad_request(e.to_string()))?;
    // Round-trip the material now, so a key that cannot be released is refused at import.
    match family {
        KeyFamily::Oct => {
            let len = jwk
                .oct_bytes()
                .map_err(|e| bad_request(e.to_string()))?
                .len();
            if ![16, 24, 32].contains(&len) {
                return Err(bad_request(format!(
                    "oct keys are 128, 192 or 256 bits, not {}",
                    len * 8
                )));
            }
        }
        _ => {
            jwk.to_pkcs8().map_err(|e| bad_request(e.to_string()))?;
        }
    }
    store(&state, &headers, &name, jwk, &body)
}

async fn create_key(
    AxState(state): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Json<Value>, Failure> {
    require_bearer(&state, &headers)?;
    let kty = body.get("kty").and_then(Value::as_str).unwrap_or_default();
    let size = body.get("key_size").and_then(Value::as_u64);
    let jwk =
        generate_key(kty, size, body.get("crv").and_then(Value::as_str)).map_err(bad_request)?;
    store(&state, &headers, &name, jwk, &body)
}

fn generate_key(kty: &str, size: Option<u64>, crv: Option<&str>) -> Result<Jwk, String> {
    use aws_lc_rs::encoding::AsDer;
    match kty.trim_end_matches("-HSM") {
        "RSA" => {
            let size = match size.unwrap_or(2048) {
                2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                other => {
                    return Err(format!(
                        "RSA key size {other} is not supported (2048, 3072, 4096)"
                    ))
                }
            };
            let key = aws_lc_rs::rsa::KeyPair::generate(size)
                .map_err(|_| "RSA generation failed".to_owned())?;
            let der = key.as_der().map_err(|_| "RSA encoding failed".to_owned())?;
            Jwk::from_pkcs8(KeyFamily::Rsa, der.as_ref()).map_err(|e| e.to_string())
        }
        "EC" => {
            let alg = match crv.unwrap_or("P-256") {
                "P-256" => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                "P-384" => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                other => return Err(format!("curve {other} is not supported (P-256, P-384)")),
            };
            let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                .map_err(|_| "EC generation failed".to_owned())?;
            Jwk::from_pkcs8(KeyFamily::Ec, doc.as_ref()).map_err(|e| e.to_string())
        }
        "oct" => {
            if size.unwrap_or(256) != 256 {
                return Err("oct keys are 256 bits here".into());
            }
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(key.as_mut())
                .map_err(|_| "no randomness".to_owned())?;
            Ok(Jwk::oct(key.as_ref()))
        }
        other => Err(format!("key type {other:?} is not supported")),
    }
}

async fn get_key(
    AxState(state): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    lookup(&state, &headers, &name, None)
}

async fn get_key_version(
    AxState(state): AxState<Shared>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, Failure> {
    lookup(&state, &headers, &name, Some(&version))
}

fn lookup(
    state: &State,
    headers: &HeaderMap,
    name: &str,
    version: Option<&str>,
) -> Result<Json<Value>, Failure> {
    require_bearer(state, headers)?;
    let keys = stored_keys(state)?;
    let key = find_key(&keys, name, version)?;
    Ok(Json(bundle(headers, name, key)))
}

fn stored_keys(
    state: &State,
) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, StoredKey>>, Failure> {
    state.keys.lock().map_err(|_| {
        Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            "state poisoned".into(),
        )
    })
}

/// The key `name`, at `version` when one is given (the latest is the only one kept).
fn find_key<'a>(
    keys: &'a std::collections::HashMap<String, StoredKey>,
    name: &str,
    version: Option<&str>,
) -> Result<&'a StoredKey, Failure> {
    keys.get(name)
        .filter(|key| version.is_none_or(|v| v == key.version))
        .ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                "KeyNotFound",
                format!("A key with (name/id) {name} was not found"),
            )
        })
}

async fn release_latest(
    AxState(state): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, Failure> {
    release(&state, &headers, &name, None, &body)
}

async fn release_version(
    AxState(state): AxState<Shared>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, Failure> {
    release(&state, &headers, &name, Some(&version), &body)
}

/// Secure key release: bearer, token signature and authority, token lifetime, policy — and only
/// then the key, wrapped to the token's transfer key, in a JWS chained to the dev CA.
fn release(
    state: &State,
    headers: &HeaderMap,
    name: &str,
    version: Option<&str>,
    body: &str,
) -> Result<Json<Value>, Failure> {
    require_bearer(state, headers)?;
    let request: Value =
        serde_json::from_str(body).map_err(|e| bad_request(format!("request is not JSON: {e}")))?;
    let target = request
        .get("target")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("target is required"))?;
    let enc = match request.get("enc").and_then(Value::as_str) {
        Some(name) => WrapAlgorithm::parse(name).map_err(|e| bad_request(e.to_string()))?,
        None => WrapAlgorithm::CkmRsaAesKeyWrap,
    };
    let token = Compact::parse(target).map_err(|e| bad_request(format!("target: {e}")))?;
    let claims = token
        .claims()
        .map_err(|e| bad_request(format!("target: {e}")))?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let own = format!("https://{}", host_of(headers));
    if crate::azure::policy::normalize_authority(issuer)
        != crate::azure::policy::normalize_authority(&own)
    {
        return Err(forbidden(format!(
            "the attestation token's authority {issuer:?} is not trusted by this HSM"
        )));
    }
    state
        .jwks
        .verify(&token)
        .map_err(|e| forbidden(format!("the attestation token is not valid: {e}")))?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    if exp <= now() {
        return Err(forbidden(format!("the attestation token expired at {exp}")));
    }

    let keys = stored_keys(state)?;
    let key = find_key(&keys, name, version)?;
    // Only exportable keys leave the HSM; the policy was validated when the key was stored.
    let policy = match (&key.policy, key.exportable) {
        (Some(policy), true) => policy,
        _ => {
            return Err(forbidden(format!(
                "the key {name} is not exportable: only a key created with attributes.exportable = true and a release policy can be released"
            )))
        }
    };
    policy.evaluate(issuer, &claims).map_err(|reason| {
        forbidden(format!(
            "Target environment attestation statement cannot be verified: {reason}"
        ))
    })?;
    let transfer: Jwk = serde_json::from_value(
        claims
            .pointer("/x-ms-runtime/keys/0")
            .cloned()
            .unwrap_or_default(),
    )
    .map_err(|_| bad_request("the token's x-ms-runtime.keys[0] is not a transfer key JWK"))?;
    let material = match key.jwk.family() {
        Ok(KeyFamily::Oct) => key.jwk.oct_bytes(),
        _ => key.jwk.to_pkcs8(),
    }
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    let key_hsm = wrap_to(&transfer, enc, &material).map_err(|e| bad_request(e.to_string()))?;
    let kid = key_url(headers, name, &key.version);
    let mut released = key.jwk.public();
    released.kid = Some(kid.clone());
    released.kty = format!("{}-HSM", released.kty.trim_end_matches("-HSM"));
    released.key_hsm = Some(key_hsm);
    let payload = json!({
        "request": { "api-version": crate::azure::kms::API_VERSION, "enc": enc.name(), "kid": kid },
        "response": { "key": {
            "key": released,
            "attributes": { "enabled": true, "exportable": key.exportable },
            "release_policy": { "contentType": "application/json; charset=utf-8", "data": key.policy_b64 },
        }},
    });
    let header = json!({ "alg": "RS256", "x5c": state.signer_x5c });
    let jws = sign_rs256(&header, &payload, &state.signer)
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    state.counters.releases.fetch_add(1, Ordering::SeqCst);
    Ok(Json(json!({ "value": jws })))
}
