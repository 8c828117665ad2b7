//! Microsoft Azure Attestation: `attest/SevSnpVm` and the signing keys at `/certs`.

use crate::azure::jws::{Compact, Jwks};
use crate::azure::{status_error, Error, Result, Secret};
use crate::http::{limits, read_body, read_error_body, send_with_retry, Endpoint, RetryPolicy};
use crate::snp::evidence::Evidence;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use serde_json::{json, Value};
use tracing::Instrument;

pub const API_VERSION: &str = "2020-10-01";

#[derive(Debug, Clone)]
pub struct MaaClient {
    client: reqwest::Client,
    retry: RetryPolicy,
    endpoint: Endpoint,
    base: String,
}

/// An MAA token: a bearer credential for the release, so it is a secret.
#[derive(Debug, Clone)]
pub struct MaaToken {
    pub jwt: Secret,
    /// Expiry (`exp`, Unix seconds) read from the token, 0 when absent.
    pub expires_at: u64,
}

impl MaaToken {
    pub fn from_jwt(jwt: String) -> Result<Self> {
        Self::from_secret(Secret::new(jwt))
    }

    /// The token read straight out of a response body, never copied into a plain `String`.
    pub fn from_secret(jwt: Secret) -> Result<Self> {
        let claims = Compact::parse(jwt.expose())?.claims()?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        Ok(MaaToken { jwt, expires_at })
    }

    /// The claims, decoded without verification (for display; the KMS verifies).
    pub fn unverified_claims(&self) -> Result<Value> {
        Compact::parse(self.jwt.expose())?.claims()
    }
}

impl MaaClient {
    /// A client of the MAA at `endpoint` (`host[:port]` or `https://host[:port]`).
    pub fn new(client: reqwest::Client, endpoint: &str, retry: RetryPolicy) -> Result<Self> {
        let endpoint = Endpoint::parse(endpoint).map_err(|e| Error::Config(format!("MAA {e}")))?;
        Ok(Self::at(client, endpoint, retry))
    }

    pub fn at(client: reqwest::Client, endpoint: Endpoint, retry: RetryPolicy) -> Self {
        MaaClient {
            client,
            retry,
            base: endpoint.origin(),
            endpoint,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The authority a release policy names for this MAA: `https://<host>`.
    pub fn authority(&self) -> &str {
        &self.base
    }

    /// Sends the evidence and the runtime data it binds; returns the token.
    pub async fn attest(&self, evidence: &Evidence, runtime_data: &[u8]) -> Result<MaaToken> {
        let url = format!("{}/attest/SevSnpVm?api-version={API_VERSION}", self.base);
        let mut nonce = [0u8; 8];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Config("no randomness for the nonce".into()))?;
        let body = json!({
            "report": URL_SAFE.encode(evidence.to_json()),
            "runtimeData": { "data": URL_SAFE.encode(runtime_data), "dataType": "JSON" },
            "initTimeData": { "data": "", "dataType": "" },
            "nonce": u64::from_le_bytes(nonce),
        });
        let body = async {
            let response =
                send_with_retry(|| self.client.post(&url).json(&body), &self.retry).await?;
            let status = response.status();
            if !status.is_success() {
                let message = read_error_body(response).await;
                return Err(status_error("MAA", &self.base, status, &message));
            }
            Ok::<_, Error>(read_body(response, limits::MAA).await?)
        }
        .instrument(tracing::debug_span!("maa_attest"))
        .await?;
        #[derive(serde::Deserialize)]
        struct Reply {
            token: Secret,
        }
        let reply: Reply = serde_json::from_slice(&body).map_err(|_| Error::BadResponse {
            service: "MAA",
            url: self.base.clone(),
            reason: "no \"token\" in the body".into(),
        })?;
        MaaToken::from_secret(reply.token)
    }

    /// The signing keys (`GET /certs`).
    pub async fn jwks(&self) -> Result<Jwks> {
        let url = format!("{}/certs", self.base);
        let response = send_with_retry(|| self.client.get(&url), &self.retry).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Upstream {
                service: "MAA",
                url,
                status: status.as_u16(),
                message: String::new(),
            });
        }
        let body = read_body(response, limits::MAA).await?;
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            service: "MAA",
            url,
            reason: format!("JWKS: {e}"),
        })
    }

    /// Checks a token locally: its signature against this MAA's JWKS and its issuer.
    pub async fn verify(&self, token: &MaaToken) -> Result<Value> {
        let compact = Compact::parse(token.jwt.expose())?;
        self.jwks().await?.verify(&compact)?;
        let claims = compact.claims()?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if crate::azure::policy::normalize_authority(iss)
            != crate::azure::policy::normalize_authority(&self.base)
        {
            return Err(Error::Jws(format!(
                "token issued by {iss:?}, not by {}",
                self.base
            )));
        }
        Ok(claims)
    }
}
