//! The SKR sidecar's REST API (`--rest-listen`), for workloads written against Microsoft's
//! confidential sidecar: same routes and bodies, but exactly one JSON body per response.
//! As the sidecar (Gin's `ShouldBindJSON`), a body is JSON whatever its `Content-Type` says;
//! `/status` answers 200 with "Status NOT OK" until the backend is ready; errors are
//! `{"error": "..."}` with 400 for a bad request and 403 for any attestation or release failure
//! (the sidecar's code for those), 500 only for aasp's own faults.

use super::error::{http_status, ServiceError};
use super::Backend;
use crate::azure::Secret;
use crate::provision::KeyRef;
use crate::snp::report::report_data_for_runtime;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Calls running at once; more wait (without holding their connection's body) for a permit.
pub const REST_CONCURRENCY: usize = 64;
/// Largest request body.
pub const REST_MAX_BODY: usize = 1 << 20;

pub fn router(backend: Arc<Backend>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/attest/raw", post(attest_raw))
        .route("/attest/combined", post(attest_combined))
        .route("/attest/maa", post(attest_maa))
        .route("/key/release", post(key_release))
        .route("/cdh/resource/{repo}/{kind}/{tag}", get(cdh_resource))
        .layer(axum::extract::DefaultBodyLimit::max(REST_MAX_BODY))
        .with_state(backend)
        // No REST call runs longer than the gRPC deadline: past it the caller gets a 500 with a
        // JSON error, whatever the call was waiting for.
        .layer(super::conn::RequestStage::new(
            REST_CONCURRENCY,
            REST_MAX_BODY,
            super::Limits::default().body_timeout,
            super::conn::Protocol::Rest,
        ))
}

/// The one place REST errors become responses.
impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(skr_status(self.code()))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = self.message();
        tracing::warn!(status = status.as_u16(), error = %message, "REST request failed");
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// The SKR sidecar's status codes: its handlers answer 400 when the body does not bind and 403
/// when attestation or release fails, whatever the cause (a refusal, an unknown key, an
/// unreachable MAA or HSM, a missing device); aasp keeps 500 for its own internal faults.
fn skr_status(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::InvalidArgument => http_status(code),
        Code::Internal => 500,
        _ => 403,
    }
}

type Reply = Result<Json<Value>, ServiceError>;

/// Confidential Containers' REST API for KBS resources (guest-components `api-server-rest`):
/// `GET /cdh/resource/<repository>/<type>/<tag>` → the resource from the configured Trustee KBS,
/// as `application/octet-stream`, zeroized once sent.
async fn cdh_resource(
    State(b): State<Arc<Backend>>,
    axum::extract::Path((repo, kind, tag)): axum::extract::Path<(String, String, String)>,
) -> Result<Response, ServiceError> {
    let resource = b
        .provisioner
        .kbs_resource(&format!("{repo}/{kind}/{tag}"))
        .await?;
    let mut response = Response::new(axum::body::Body::from(super::secret_json::bytes(resource)));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// The request body as JSON, with or without `Content-Type: application/json`.
fn body<T: serde::de::DeserializeOwned>(payload: &Bytes) -> Result<T, ServiceError> {
    serde_json::from_slice(payload)
        .map_err(|e| ServiceError::invalid(format!("request body is not the expected JSON: {e}")))
}

fn runtime_data(b64: &str) -> Result<Vec<u8>, ServiceError> {
    STANDARD
        .decode(b64.trim())
        .map_err(|_| ServiceError::invalid("runtime_data is not standard base64"))
}

async fn status(State(b): State<Arc<Backend>>) -> Json<Value> {
    if b.ready.load(std::sync::atomic::Ordering::Acquire) {
        Json(json!({ "message": "Status OK" }))
    } else {
        Json(json!({ "message": "Status NOT OK" }))
    }
}

#[derive(Deserialize)]
struct RuntimeRequest {
    #[serde(default)]
    runtime_data: String,
}

async fn attest_raw(State(b): State<Arc<Backend>>, payload: Bytes) -> Reply {
    let request: RuntimeRequest = body(&payload)?;
    let report_data = report_data_for_runtime(&runtime_data(&request.runtime_data)?);
    let (_, raw) =
        crate::snp::attester::fetch_report(b.provisioner.attester(), report_data).await?;
    Ok(Json(json!({ "report": hex::encode(raw) })))
}

async fn attest_combined(State(b): State<Arc<Backend>>, payload: Bytes) -> Reply {
    let request: RuntimeRequest = body(&payload)?;
    let report_data = report_data_for_runtime(&runtime_data(&request.runtime_data)?);
    let attested = crate::snp::chain::attest(
        b.provisioner.attester(),
        b.provisioner.chains(),
        report_data,
    )
    .await?;
    let e = &attested.endorsement;
    Ok(Json(json!({
        "endorsed_tcb": e.tcbm_text,
        "endorsements": STANDARD.encode(e.chain.to_pem()),
        "evidence": STANDARD.encode(&attested.raw),
        "uvm_endorsements": e.uvm_reference_info.as_ref().map(|r| STANDARD.encode(r)).unwrap_or_default(),
    })))
}

#[derive(Deserialize)]
struct MaaRequest {
    #[serde(default)]
    maa_endpoint: String,
    #[serde(default)]
    runtime_data: String,
}

async fn attest_maa(
    State(b): State<Arc<Backend>>,
    payload: Bytes,
) -> Result<Response, ServiceError> {
    let request: MaaRequest = body(&payload)?;
    let maa = endpoint_or_default(&b, &request.maa_endpoint)?;
    let token = b
        .provisioner
        .token_for(&maa, &runtime_data(&request.runtime_data)?)
        .await?;
    secret_reply(&TokenReply {
        token: token.jwt.expose(),
    })
}

#[derive(serde::Serialize)]
struct TokenReply<'a> {
    token: &'a str,
}

#[derive(serde::Serialize)]
struct KeyReply<'a> {
    key: &'a str,
}

/// A reply carrying a token or a key, in a buffer zeroized once sent.
fn secret_reply<T: serde::Serialize>(value: &T) -> Result<Response, ServiceError> {
    super::secret_json::response(value).map_err(|e| ServiceError::invalid(e.to_string()))
}

#[derive(Deserialize)]
struct ReleaseRequest {
    #[serde(default)]
    maa_endpoint: String,
    #[serde(default)]
    akv_endpoint: String,
    #[serde(default)]
    kid: String,
    /// A bearer credential: straight into a zeroizing `Secret`, never a plain `String`.
    #[serde(default)]
    access_token: Option<Secret>,
}

async fn key_release(
    State(b): State<Arc<Backend>>,
    payload: Bytes,
) -> Result<Response, ServiceError> {
    let request: ReleaseRequest = body(&payload)?;
    if request.akv_endpoint.is_empty() || request.kid.is_empty() {
        return Err(ServiceError::invalid("akv_endpoint and kid are required"));
    }
    let maa = endpoint_or_default(&b, &request.maa_endpoint)?;
    let key = if request.kid.contains("://") {
        KeyRef::azure_url(&request.kid, &maa)?
    } else {
        KeyRef::azure(&request.akv_endpoint, &request.kid, &maa)?
    };
    let released = match request.access_token.filter(|t| !t.expose().is_empty()) {
        Some(token) => b.provisioner.release_with_access(&key, &token).await?,
        None => b.provisioner.release(&key).await?,
    };
    // The sidecar's contract: the key is a JSON document inside a JSON string.
    let jwk = super::secret_json::to_vec(&released.jwk)
        .map_err(|e| ServiceError::invalid(e.to_string()))?;
    let jwk = std::str::from_utf8(&jwk).map_err(|e| ServiceError::invalid(e.to_string()))?;
    secret_reply(&KeyReply { key: jwk })
}

fn endpoint_or_default(b: &Backend, endpoint: &str) -> Result<String, ServiceError> {
    if endpoint.is_empty() {
        b.default_maa().map(str::to_owned)
    } else {
        Ok(endpoint.to_owned())
    }
}
