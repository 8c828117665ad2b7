//! Microsoft Azure Attestation: `attest/SevSnpVm` and the signing keys at `/certs`.

use crate::azure::jws::{Compact, Jwks};
use crate::azure::{base_url, status_error, Error, Result, Secret};
use crate::http::{send_with_retry, RetryPolicy};
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
        let claims = Compact::parse(&jwt)?.claims()?;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        Ok(MaaToken {
            jwt: Secret::new(jwt),
            expires_at,
        })
    }

    /// The claims, decoded without verification (for display; the KMS verifies).
    pub fn unverified_claims(&self) -> Result<Value> {
        Compact::parse(self.jwt.expose())?.claims()
    }
}

impl MaaClient {
    pub fn new(client: reqwest::Client, endpoint: &str, retry: RetryPolicy) -> Self {
        MaaClient {
            client,
            retry,
            base: base_url(endpoint),
        }
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
        let (status, text) = async {
            let response =
                send_with_retry(|| self.client.post(&url).json(&body), &self.retry).await?;
            let status = response.status();
            Ok::<_, Error>((status, response.text().await.unwrap_or_default()))
        }
        .instrument(tracing::debug_span!("maa_attest"))
        .await?;
        if !status.is_success() {
            return Err(status_error("MAA", &self.base, status, &text));
        }
        let token = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| Error::BadResponse {
                service: "MAA",
                url: self.base.clone(),
                reason: "no \"token\" in the body".into(),
            })?;
        MaaToken::from_jwt(token)
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
        response.json().await.map_err(|e| Error::BadResponse {
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
