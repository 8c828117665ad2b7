//! The RCAR client: `POST /kbs/v0/auth` → challenge and `kbs-session-id` cookie;
//! `POST /kbs/v0/attest` with the runtime data (nonce, TEE public key) and the SNP evidence whose
//! report_data binds them → token; `GET /kbs/v0/resource/<repo>/<type>/<tag>` → JWE.
//!
//! One session (cookie, token, TEE key) is shared by aasp's own resource reads and renewed before
//! its token expires; concurrent readers wait for one handshake (single flight). A resource
//! request the KBS answers with 401 (session gone) renews the session once and asks again, as
//! upstream's `kbs_protocol` does. A token handed to a caller (`GetToken("kbs")`) comes from a
//! session of its own, attested afresh: see [`KbsClient::fresh_session`].

use super::jwe::{KeyAlgorithm, TeeKeyPair, TeePubKey};
use super::{status_error, Error, ResourceUri, Result};
use crate::http::{limits, read_body, read_error_body, send_with_retry, BodyLimit, RetryPolicy};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sha2::{Digest, Sha384};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use zeroize::Zeroizing;

/// KBS protocol version aasp speaks: Trustee (78962cd, `kbs/src/attestation/backend.rs`
/// `VERSION_REQ`) accepts exactly `=0.4.0`, and upstream's kbs_protocol sends 0.4.0.
pub const PROTOCOL_VERSION: &str = "0.4.0";
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// `init-data.format` of the attest request: kbs_protocol sends the TOML itself, and Trustee's
/// built-in AS accepts only `toml` (`kbs/src/attestation/coco/builtin.rs`).
pub const INIT_DATA_FORMAT: &str = "toml";
const PREFIX: &str = "/kbs/v0";
/// A token is renewed this long before its `exp`, so it does not expire in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed for a token without `exp` (Trustee's default session timeout is 5 minutes).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Where SNP evidence comes from: given the 64-byte report_data, the evidence JSON Trustee's SNP
/// verifier reads (`{"attestation_report": …, "cert_chain": …}`). The client does not know
/// whether a device, a simulator or a test answers.
pub trait EvidenceSource: Send + Sync {
    fn evidence(&self, report_data: [u8; 64]) -> BoxFuture<'_, std::result::Result<Value, String>>;
    /// The `tee` named in the auth request (`snp`; the simulator may say `sample`).
    fn tee(&self) -> &str {
        "snp"
    }
}

#[derive(Debug, Clone)]
pub struct KbsOptions {
    /// Base URL of the KBS (`https://kbs.example:8080`), from configuration only.
    pub url: String,
    pub key_algorithm: KeyAlgorithm,
    pub retry: RetryPolicy,
    /// Largest resource body (the JWE) read from the KBS: `--kbs-max-resource`.
    pub max_resource: usize,
    /// Init-data TOML that matched HOST_DATA, sent in every attest request as upstream's
    /// kbs_protocol sends it (`rcar_client.rs`: `"init-data": {"format": "toml", "body"}`).
    pub init_data: Option<String>,
}

/// The option that raises [`KbsOptions::max_resource`], as errors name it.
pub const MAX_RESOURCE_OPTION: &str = "--kbs-max-resource (AASP_KBS_MAX_RESOURCE)";

/// An attestation token the KBS issued: a bearer credential, so zeroized and never printed.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct KbsToken {
    jwt: String,
    #[zeroize(skip)]
    pub expires_at: u64,
}

impl std::fmt::Debug for KbsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsToken")
            .field("jwt", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl KbsToken {
    pub(crate) fn new(jwt: String) -> Self {
        let expires_at = unverified_claims(&jwt)
            .and_then(|c| c.get("exp").and_then(Value::as_u64))
            .unwrap_or_else(|| now() + DEFAULT_LIFETIME.as_secs());
        KbsToken { jwt, expires_at }
    }

    /// The JWT, for the one place it is sent or handed to a local caller. Do not log it.
    pub fn expose(&self) -> &str {
        &self.jwt
    }

    /// The claims, decoded without verification (for display; the KBS verifies its own token).
    pub fn unverified_claims(&self) -> Option<Value> {
        unverified_claims(&self.jwt)
    }

    fn fresh(&self) -> bool {
        self.expires_at > now() + EXPIRY_MARGIN.as_secs()
    }
}

fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// One attested session: its cookie, its token and the TEE key the token certifies.
pub struct Session {
    cookie: Zeroizing<String>,
    pub token: KbsToken,
    pub tee_key: TeeKeyPair,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("token", &self.token)
            .field("tee_key", &self.tee_key)
            .finish_non_exhaustive()
    }
}

pub struct KbsClient {
    http: reqwest::Client,
    options: KbsOptions,
    base: String,
    evidence: Arc<dyn EvidenceSource>,
    /// Held across a handshake: that is the single flight.
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for KbsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsClient")
            .field("url", &self.base)
            .finish_non_exhaustive()
    }
}

impl KbsClient {
    pub fn new(
        http: reqwest::Client,
        options: KbsOptions,
        evidence: Arc<dyn EvidenceSource>,
    ) -> Result<Self> {
        let base = super::base_url(super::KBS, &options.url)?;
        Ok(KbsClient {
            http,
            options,
            base,
            evidence,
            session: tokio::sync::Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// A session with a fresh token: the cached one, or a new RCAR handshake.
    pub async fn session(&self) -> Result<Arc<Session>> {
        let mut guard = self.session.lock().await;
        if let Some(session) = guard.as_ref().filter(|s| s.token.fresh()) {
            return Ok(Arc::clone(session));
        }
        let session = Arc::new(self.handshake().await?);
        *guard = Some(Arc::clone(&session));
        Ok(session)
    }

    /// A new attested session that nobody else shares and that is not cached: what
    /// `GetToken("kbs")` hands out. Upstream's agent attests afresh on every GetToken
    /// (guest-components `attestation-agent/src/token/kbs.rs` builds a new client each call), and
    /// CDH relies on it: after a 401 its token client asks for a new token
    /// (`kbs_protocol/src/client/token_client.rs`), which must carry a new attestation under the
    /// KBS's current policy and reference values, not the cached one.
    pub async fn fresh_session(&self) -> Result<Session> {
        self.handshake().await
    }

    /// Drops `stale` if it is still the cached session (another caller may have renewed it).
    async fn invalidate(&self, stale: &Arc<Session>) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *guard = None;
        }
    }

    /// Fetches and decrypts a resource.
    pub async fn get_resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>> {
        let url = format!("{}{PREFIX}/resource/{}", self.base, uri.path());
        let mut renewed = false;
        loop {
            let session = self.session().await?;
            let response = send_with_retry(
                || {
                    self.http
                        .get(&url)
                        .header(
                            reqwest::header::COOKIE,
                            format!("{SESSION_COOKIE}={}", session.cookie.as_str()),
                        )
                        .bearer_auth(session.token.expose())
                },
                &self.options.retry,
            )
            .instrument(tracing::debug_span!("kbs_resource"))
            .await?;
            let status = response.status();
            match status {
                s if s.is_success() => {
                    let limit = BodyLimit::new("KBS resource", self.options.max_resource)
                        .with_option(MAX_RESOURCE_OPTION);
                    let body = read_body(response, limit).await?;
                    return session.tee_key.decrypt(&body);
                }
                reqwest::StatusCode::UNAUTHORIZED if !renewed => {
                    // The KBS forgot the session (restart, expiry): attest again, once.
                    tracing::debug!("KBS answered 401 for a resource: renewing the session");
                    self.invalidate(&session).await;
                    renewed = true;
                }
                reqwest::StatusCode::NOT_FOUND => return Err(Error::NotFound(uri.to_string())),
                s => return Err(status_error(&url, s, &read_error_body(response).await)),
            }
        }
    }

    async fn handshake(&self) -> Result<Session> {
        let tee_key = TeeKeyPair::generate(self.options.key_algorithm)?;
        let auth_url = format!("{}{PREFIX}/auth", self.base);
        let request = json!({
            "version": PROTOCOL_VERSION,
            "tee": self.evidence.tee(),
            "extra-params": "",
        });
        let response = send_with_retry(
            || self.http.post(&auth_url).json(&request),
            &self.options.retry,
        )
        .instrument(tracing::debug_span!("kbs_auth"))
        .await?;
        let status = response.status();
        let cookie = session_cookie(response.headers());
        if !status.is_success() {
            return Err(status_error(
                &auth_url,
                status,
                &read_error_body(response).await,
            ));
        }
        let text = read_body(response, limits::KBS_CHALLENGE).await?;
        let bad = |reason: String| Error::BadResponse {
            service: super::KBS,
            url: auth_url.clone(),
            reason,
        };
        let cookie = cookie.ok_or_else(|| bad(format!("no {SESSION_COOKIE} cookie")))?;
        let challenge: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("challenge: {e}")))?;
        let nonce = challenge
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("challenge without a nonce".into()))?
            .to_owned();
        let selected = challenge
            .pointer("/extra-params/selected-hash-algorithm")
            .and_then(Value::as_str);
        if selected.is_some_and(|alg| !alg.eq_ignore_ascii_case("sha384")) {
            return Err(bad(format!(
                "the KBS selected hash algorithm {selected:?}; aasp binds SNP runtime data with SHA-384"
            )));
        }

        let tee_pubkey = tee_key.public();
        let report_data = report_data(&nonce, &tee_pubkey, "")?;
        let evidence = self
            .evidence
            .evidence(report_data)
            .await
            .map_err(Error::Evidence)?;
        let mut attestation = json!({
            "runtime-data": { "nonce": nonce, "tee-pubkey": tee_pubkey },
            "tee-evidence": { "primary_evidence": evidence, "additional_evidence": "" },
        });
        if let (Some(body), Some(members)) = (&self.options.init_data, attestation.as_object_mut())
        {
            members.insert(
                "init-data".into(),
                json!({ "format": INIT_DATA_FORMAT, "body": body }),
            );
        }
        let attest_url = format!("{}{PREFIX}/attest", self.base);
        let response = send_with_retry(
            || {
                self.http
                    .post(&attest_url)
                    .header(
                        reqwest::header::COOKIE,
                        format!("{SESSION_COOKIE}={}", cookie.as_str()),
                    )
                    .json(&attestation)
            },
            &self.options.retry,
        )
        .instrument(tracing::debug_span!("kbs_attest"))
        .await?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(
                &attest_url,
                status,
                &read_error_body(response).await,
            ));
        }
        let text = read_body(response, limits::KBS_TOKEN).await?;
        let token = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| Error::BadResponse {
                service: super::KBS,
                url: attest_url,
                reason: "no \"token\" in the body".into(),
            })?;
        Ok(Session {
            cookie,
            token: KbsToken::new(token),
            tee_key,
        })
    }
}

fn session_cookie(headers: &reqwest::header::HeaderMap) -> Option<Zeroizing<String>> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let pair = v.split(';').next()?.trim();
            let (name, value) = pair.split_once('=')?;
            (name.trim() == SESSION_COOKIE && !value.is_empty())
                .then(|| Zeroizing::new(value.trim().to_owned()))
        })
}

/// The report_data that binds an attestation to its runtime data, as upstream's kbs_protocol
/// computes it for SNP (`rcar_client.rs` `get_composite_evidence`) and Trustee checks it
/// (`kbs/src/attestation/backend.rs`, `attestation-service` `parse_runtime_data`, the SNP
/// verifier's `regularize_data`): SHA-384 of the RFC 8785 canonical JSON of
/// `{"tee-pubkey", "nonce", "additional-evidence"}`, zero-padded to 64 bytes.
pub fn report_data(nonce: &str, tee_pubkey: &TeePubKey, additional: &str) -> Result<[u8; 64]> {
    let key = serde_json::to_value(tee_pubkey).map_err(|e| Error::Key(e.to_string()))?;
    let runtime = json!({
        "tee-pubkey": key,
        "nonce": nonce,
        "additional-evidence": additional,
    });
    let digest = Sha384::digest(canonical_json(&runtime).as_bytes());
    let mut out = [0u8; 64];
    for (dst, src) in out.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    Ok(out)
}

/// RFC 8785 (JCS) for the JSON values the runtime data holds: object members sorted by their
/// UTF-16 code units, no whitespace, strings escaped as JCS says (which is serde_json's string
/// escaping), integers as written. Written out rather than trusting `Value::to_string`, whose
/// member order depends on a cargo feature (`preserve_order`) any dependency may switch on.
/// Floating-point numbers are not canonicalized (ES6 form); runtime data carries none.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trustee's own vector (`attestation-service/src/lib.rs`, test `parse_runtime_data`):
    /// SHA-384 of the canonical form of `{"b": 1, "a": "test", "c": {"d": "e"}}`.
    #[test]
    fn canonical_json_matches_trustee_vector() {
        let value = json!({"b": 1, "a": "test", "c": {"d": "e"}});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":"test","b":1,"c":{"d":"e"}}"#
        );
        assert_eq!(
            hex::encode(Sha384::digest(canonical_json(&value).as_bytes())),
            "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
        );
    }

    /// RFC 8785 §3.2.3: members sort by UTF-16 code units, not by UTF-8 bytes.
    #[test]
    fn canonical_json_sorts_by_utf16() {
        let value = json!({"\u{e000}": 1, "\u{1f600}": 2, "a\nb": "\u{7f}\"/"});
        assert_eq!(
            canonical_json(&value),
            "{\"a\\nb\":\"\u{7f}\\\"/\",\"\u{1f600}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn report_data_binds_nonce_and_key() {
        let key = TeePubKey::Ec {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "eA".into(),
            y: "eQ".into(),
        };
        let rd = report_data("bm9uY2U=", &key, "").unwrap();
        let text = r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"eA","y":"eQ"}}"#;
        assert_eq!(rd[..48], Sha384::digest(text.as_bytes())[..]);
        assert_eq!(rd[48..], [0u8; 16]);
        assert_ne!(rd, report_data("bm9uY2U", &key, "").unwrap());
    }

    #[test]
    fn cookie_is_read_from_set_cookie() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append("set-cookie", "other=1; Path=/".parse().unwrap());
        headers.append(
            "set-cookie",
            "kbs-session-id=abc123; Expires=Wed, 21 Oct 2099 07:28:00 GMT"
                .parse()
                .unwrap(),
        );
        assert_eq!(session_cookie(&headers).unwrap().as_str(), "abc123");
        assert!(session_cookie(&reqwest::header::HeaderMap::new()).is_none());
    }

    #[test]
    fn token_expiry_and_debug() {
        let claims = URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now() + 3600));
        let token = KbsToken::new(format!("e30.{claims}.c2ln"));
        assert!(token.fresh());
        assert!(!format!("{token:?}").contains(&claims));
        let old = URL_SAFE_NO_PAD.encode(format!("{{\"exp\":{}}}", now() + 10));
        assert!(!KbsToken::new(format!("e30.{old}.c2ln")).fresh());
    }
}
