//! Trustee Key Broker Service backend: the RCAR handshake (auth → attest → token), sessions,
//! the TEE key pair, and resources delivered as JWE (Trustee `kbs/docs/kbs_attestation_protocol.md`,
//! kbs-types 0.18, guest-components `attestation-agent/kbs_protocol`).
//!
//! Owns the KBS wire format. Must not know gRPC, Azure, or where the SNP evidence comes from:
//! callers hand the client an [`client::EvidenceSource`].

pub mod client;
pub mod coco_as;
pub mod config;
pub mod jwe;
pub mod resource;

pub use client::{EvidenceSource, KbsClient, KbsOptions, KbsToken};
pub use jwe::{KeyAlgorithm, TeeKeyPair, TeePubKey};
pub use resource::ResourceUri;

use crate::http::{BodyError, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The KBS could not be reached (after retries).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A KBS body over the limit aasp reads, or one that broke off.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The KBS (or attestation service: `service`) is busy or broken (408, 429, 5xx after
    /// retries).
    #[error("{service} {url}: HTTP {status}: {message}")]
    Upstream {
        service: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    /// The KBS refused: evidence not accepted, resource policy not met, session not valid.
    #[error("{service} {url} refused (HTTP {status}): {message}")]
    Refused {
        service: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("KBS has no resource {0}")]
    NotFound(String),
    #[error("{service} {url}: unexpected response: {reason}")]
    BadResponse {
        service: &'static str,
        url: String,
        reason: String,
    },
    /// The caller-supplied evidence source failed.
    #[error("evidence: {0}")]
    Evidence(String),
    /// A resource that does not decrypt with the TEE key: altered, or made for another key.
    #[error("JWE: {0}")]
    Jwe(String),
    #[error("TEE key: {0}")]
    Key(String),
    /// A resource URI that is not `kbs:///<repository>/<type>/<tag>`.
    #[error("resource URI: {0}")]
    InvalidUri(String),
    #[error("KBS configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The peers errors name: a KBS, or the attestation service of `GetToken("coco_as")`.
const KBS: &str = "KBS";
const ATTESTATION_SERVICE: &str = "attestation service";

/// The base URL of a Trustee service (`what`: "KBS"), from configuration: http(s) with a host,
/// without a trailing slash.
fn base_url(what: &str, text: &str) -> Result<String> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| Error::Config(format!("{what} URL {text:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(Error::Config(format!(
            "{what} URL {text:?} must be http(s)://host[:port]"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Reads a message out of a KBS error body (`{"type","detail"}`, kbs-types `ErrorInformation`)
/// without echoing bodies that might carry anything else.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let detail = v.get("detail")?.as_str()?.to_owned();
            let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or_default();
            Some(format!("{kind} {detail}").trim().to_owned())
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// Classifies an error status once: the request was refused (4xx), or the KBS is busy or
/// broken (408, 429, 5xx: worth trying again later).
fn status_error(url: &str, status: reqwest::StatusCode, body: &str) -> Error {
    let (url, code, message) = (url.to_owned(), status.as_u16(), error_message(body));
    let transient = code == 408 || code == 429 || status.is_server_error();
    if status.is_client_error() && !transient {
        Error::Refused {
            service: KBS,
            url,
            status: code,
            message,
        }
    } else {
        Error::Upstream {
            service: KBS,
            url,
            status: code,
            message,
        }
    }
}
