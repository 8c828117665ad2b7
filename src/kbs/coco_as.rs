//! `GetToken("coco_as")`: attest straight to a Trustee attestation service, as upstream's agent
//! does for `[token_configs.coco_as]` (guest-components 8246e5e
//! `attestation-agent/attestation-agent/src/token/coco_as.rs`).
//!
//! `POST {url}/attestation` with `{"verification_requests": [{"tee", "evidence"}], "policy_ids":
//! []}`, the evidence being base64url (no padding) of the evidence JSON text, as Trustee 78962cd
//! `attestation-service/src/bin/restful/mod.rs` reads it; the reply body is the token itself.
//! As upstream's client, the report binds no runtime data (report_data is zero): the AS issues
//! no challenge on this path, so the token proves the TEE, not the freshness of the request.
//! Where upstream's client leaves init-data out (its TODO), aasp sends init-data that matched
//! HOST_DATA as the AS API takes it (`"init_data": {"init_data_toml": …}`), so the AS checks it
//! and puts its claims in the token, as the KBS path does.

use super::client::{EvidenceSource, KbsToken};
use super::{Error, Result};
use crate::http::{limits, read_body, read_error_body, send_with_retry, RetryPolicy};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use std::sync::Arc;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct CocoAsOptions {
    /// Base URL of the attestation service (`https://as.example:8080`), from configuration only.
    pub url: String,
    pub retry: RetryPolicy,
    /// Init-data TOML that matched HOST_DATA.
    pub init_data: Option<String>,
}

pub struct CocoAsClient {
    http: reqwest::Client,
    options: CocoAsOptions,
    base: String,
    evidence: Arc<dyn EvidenceSource>,
}

impl std::fmt::Debug for CocoAsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CocoAsClient")
            .field("url", &self.base)
            .finish_non_exhaustive()
    }
}

impl CocoAsClient {
    pub fn new(
        http: reqwest::Client,
        options: CocoAsOptions,
        evidence: Arc<dyn EvidenceSource>,
    ) -> Result<Self> {
        let base = super::base_url(super::ATTESTATION_SERVICE, &options.url)?;
        Ok(CocoAsClient {
            http,
            options,
            base,
            evidence,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Attests with fresh evidence and returns the token the AS issued.
    pub async fn token(&self) -> Result<KbsToken> {
        let evidence = self
            .evidence
            .evidence([0u8; 64])
            .await
            .map_err(Error::Evidence)?;
        let mut request = json!({
            "tee": self.evidence.tee(),
            "evidence": URL_SAFE_NO_PAD.encode(evidence.to_string()),
        });
        if let (Some(toml), Some(members)) = (&self.options.init_data, request.as_object_mut()) {
            members.insert("init_data".into(), json!({ "init_data_toml": toml }));
        }
        let body = json!({ "verification_requests": [request], "policy_ids": [] });
        let url = format!("{}/attestation", self.base);
        // A 500 is the AS's refusal (see `as_status_error`): answered at once, as upstream's
        // getter does, not retried until the deadline.
        let retry = RetryPolicy {
            internal_error_is_final: true,
            ..self.options.retry
        };
        let response = send_with_retry(|| self.http.post(&url).json(&body), &retry)
            .instrument(tracing::debug_span!("coco_as_attest"))
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(as_status_error(
                &url,
                status,
                &read_error_body(response).await,
            ));
        }
        let bad = |reason: &str| Error::BadResponse {
            service: super::ATTESTATION_SERVICE,
            url: url.clone(),
            reason: reason.into(),
        };
        let text = read_body(response, limits::COCO_AS_TOKEN).await?;
        let token = std::str::from_utf8(&text)
            .map_err(|_| bad("the reply is not text"))?
            .trim();
        if token.split('.').count() != 3 {
            return Err(bad("the reply is not a JWT"));
        }
        Ok(KbsToken::new(token.to_owned()))
    }
}

/// Trustee's RESTful AS answers every failed evaluation (evidence refused, policy not met,
/// malformed request) with 500 and its error chain as text, so a 500 is a refusal of this
/// request; busy or unreachable peers answer 408, 429, 502, 503 or 504 (worth trying again).
fn as_status_error(url: &str, status: reqwest::StatusCode, body: &str) -> Error {
    let (url, code) = (url.to_owned(), status.as_u16());
    let message: String = body.trim().chars().take(300).collect();
    if matches!(code, 408 | 429 | 502 | 503 | 504) {
        Error::Upstream {
            service: super::ATTESTATION_SERVICE,
            url,
            status: code,
            message,
        }
    } else {
        Error::Refused {
            service: super::ATTESTATION_SERVICE,
            url,
            status: code,
            message,
        }
    }
}
