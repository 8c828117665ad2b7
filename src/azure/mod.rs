//! Azure clients: Microsoft Azure Attestation, identity (IMDS, workload identity), Managed HSM /
//! Key Vault secure key release, the `CKM_RSA_AES_KEY_WRAP` unwrap, JWK/JWS, release policies.
//!
//! Owns Azure's wire formats. Must not know gRPC or how callers ask for keys.

pub mod ckm;
pub mod identity;
pub mod jwk;
pub mod jws;
pub mod kms;
pub mod maa;
pub mod policy;

use crate::http::{BodyError, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream could not be reached (after retries).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The upstream's body is over the limit aasp reads, or broke off.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The upstream answered with an error status we cannot act on.
    #[error("{service} {url}: HTTP {status}: {message}")]
    Upstream {
        service: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    /// The upstream refused: attestation rejected, release policy not met, not authorized.
    #[error("{service} {url} refused (HTTP {status}): {message}")]
    Refused {
        service: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{service} {url}: unexpected response: {reason}")]
    BadResponse {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("identity: {0}")]
    Identity(String),
    #[error("JWS: {0}")]
    Jws(String),
    #[error("key: {0}")]
    Key(String),
    #[error("key unwrap: {0}")]
    Unwrap(String),
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A bearer credential (Entra access token or MAA token): zeroized on drop, never printed.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value, for the one place it is sent. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Deserialized straight from a response body: the token never sits in a plain `String` that
/// is dropped without zeroizing.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(Secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads an error message out of an Azure error body (`{"error":{"code","message"}}`) without
/// echoing bodies that might carry anything else.
pub(crate) fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        let code = e.get("code").and_then(|c| c.as_str()).unwrap_or_default();
        let message = e
            .get("message")
            .and_then(|m| m.as_str())
            .or_else(|| e.as_str())
            .unwrap_or_default();
        Some(format!("{code} {message}").trim().to_owned())
    });
    from_json.unwrap_or_else(|| body.chars().take(200).collect())
}

/// An error status, classified once for every Azure client: the caller's request was refused
/// (4xx), or the service is busy or broken (408, 429, 5xx — worth trying again later).
pub(crate) fn status_error(
    service: &'static str,
    url: &str,
    status: reqwest::StatusCode,
    body: &str,
) -> Error {
    let (url, code, message) = (url.to_owned(), status.as_u16(), error_message(body));
    let transient = code == 408 || code == 429 || status.is_server_error();
    if status.is_client_error() && !transient {
        Error::Refused {
            service,
            url,
            status: code,
            message,
        }
    } else {
        Error::Upstream {
            service,
            url,
            status: code,
            message,
        }
    }
}
