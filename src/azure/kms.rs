//! Managed HSM / Key Vault: secure key release, get, create and import (api-version 7.4).

use crate::azure::ckm::{TransferKey, WrapAlgorithm};
use crate::azure::jwk::Jwk;
use crate::azure::jws::{verify_x5c, Anchors};
use crate::azure::policy::ReleasePolicy;
use crate::azure::{status_error, Error, Result, Secret};
use crate::http::{
    limits, quoted, read_body, read_error_body, send_with_retry, Endpoint, RetryPolicy,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

pub const API_VERSION: &str = "7.4";

/// `https://<kms-host>/keys/<name>[/<version>]`, validated: the host is the one connected to
/// (and the one the release JWS must be signed for), the name and version are what Key Vault
/// accepts, so a caller cannot smuggle paths or megabytes through them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyUrl {
    endpoint: Endpoint,
    name: String,
    version: Option<String>,
}

/// Key Vault's rule for key names: 1 to 127 of `0-9a-zA-Z-`.
fn check_name(name: &str) -> Result<()> {
    if (1..=127).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "key name {} is not 1-127 characters of 0-9, a-z, A-Z and -",
            quoted(name)
        )))
    }
}

/// Key versions are hex (32 digits in Key Vault and Managed HSM).
fn check_version(version: &str) -> Result<()> {
    if (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "key version {} is not hexadecimal",
            quoted(version)
        )))
    }
}

impl KeyUrl {
    /// The key `name` (latest version) at `kms_endpoint` (`host[:port]` or `https://host[:port]`).
    pub fn new(kms_endpoint: &str, name: &str) -> Result<Self> {
        let endpoint =
            Endpoint::parse(kms_endpoint).map_err(|e| Error::Config(format!("KMS {e}")))?;
        Self::at(endpoint, name, None)
    }

    /// The key `name` (at `version`, else the latest) at a parsed endpoint.
    pub fn at(endpoint: Endpoint, name: &str, version: Option<&str>) -> Result<Self> {
        check_name(name)?;
        if let Some(v) = version {
            check_version(v)?;
        }
        Ok(KeyUrl {
            endpoint,
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// Parses a full key URL `https://<host>/keys/<name>[/<version>]` (no query).
    pub fn parse(url: &str) -> Result<Self> {
        let (endpoint, parsed) =
            Endpoint::parse_url(url).map_err(|e| Error::Config(format!("key URL: {e}")))?;
        if parsed.query().is_some() {
            return Err(Error::Config(format!(
                "key URL {} must not carry a query",
                quoted(url)
            )));
        }
        let segments: Vec<&str> = parsed.path_segments().into_iter().flatten().collect();
        let (name, version) = match segments.as_slice() {
            ["keys", name] | ["keys", name, ""] => (*name, None),
            ["keys", name, version] => (*name, Some(*version)),
            _ => {
                return Err(Error::Config(format!(
                    "key URL {} is not https://<host>/keys/<name>[/<version>]",
                    quoted(url)
                )))
            }
        };
        Self::at(endpoint, name, version)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The host connected to, as its certificate names it.
    pub fn host(&self) -> &str {
        self.endpoint.server_name()
    }

    /// `https://host[:port]`.
    pub fn base(&self) -> String {
        self.endpoint.origin()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn key_path(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/keys/{}/{v}", self.base(), self.name),
            None => format!("{}/keys/{}", self.base(), self.name),
        }
    }
}

impl std::fmt::Display for KeyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key_path())
    }
}

/// A key as Key Vault describes it (public material only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyBundle {
    pub key: Jwk,
    #[serde(default)]
    pub attributes: Value,
    #[serde(default)]
    pub release_policy: Option<Value>,
}

/// What to create.
#[derive(Debug, Clone)]
pub enum KeySpec {
    Rsa { bits: u32 },
    Oct { bits: u32 },
    Ec { curve: String },
}

pub struct KmsClient {
    client: reqwest::Client,
    retry: RetryPolicy,
    anchors: Anchors,
}

fn policy_body(policy: &ReleasePolicy) -> Result<Value> {
    let data = serde_json::to_vec(policy).map_err(|e| Error::Config(e.to_string()))?;
    Ok(
        json!({ "contentType": "application/json; charset=utf-8", "data": URL_SAFE_NO_PAD.encode(data) }),
    )
}

impl KmsClient {
    /// `anchors` are the roots a release response's signing certificate must chain to.
    pub fn new(client: reqwest::Client, anchors: Anchors, retry: RetryPolicy) -> Self {
        KmsClient {
            client,
            retry,
            anchors,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        access: &Secret,
        body: Option<&(impl serde::Serialize + ?Sized)>,
    ) -> Result<Value> {
        // Serialized once into storage that is zeroized when the last attempt's request drops it
        // (a release body holds the MAA token, an import the key).
        let body = body
            .map(crate::http::zeroizing_json)
            .transpose()
            .map_err(|e| Error::Config(format!("request body: {e}")))?
            .map(crate::http::zeroizing_bytes);
        let response = send_with_retry(
            || {
                let mut request = self
                    .client
                    .request(method.clone(), &url)
                    .bearer_auth(access.expose());
                if let Some(body) = &body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone());
                }
                request
            },
            &self.retry,
        )
        .await?;
        let status = response.status();
        let url = url.split('?').next().unwrap_or_default().to_owned();
        if !status.is_success() {
            return Err(status_error(
                "KMS",
                &url,
                status,
                &read_error_body(response).await,
            ));
        }
        // Bounded, and zeroized: a release response carries the wrapped key.
        let body = read_body(response, limits::KMS).await?;
        serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
            service: "KMS",
            url,
            reason: format!("not JSON: {e}"),
        })
    }

    /// Secure key release: the MAA token as target, the key wrapped to `transfer_key`, the
    /// response's signature and chain verified before anything in it is used.
    pub async fn release(
        &self,
        key: &KeyUrl,
        maa_token: &Secret,
        access: &Secret,
        transfer_key: &TransferKey,
        enc: WrapAlgorithm,
    ) -> Result<Jwk> {
        let url = format!("{}/release?api-version={API_VERSION}", key.key_path());
        #[derive(serde::Serialize)]
        struct ReleaseBody<'a> {
            target: &'a str,
            enc: &'a str,
        }
        let body = ReleaseBody {
            target: maa_token.expose(),
            enc: enc.name(),
        };
        let response = self
            .call(reqwest::Method::POST, url.clone(), access, Some(&body))
            .instrument(tracing::debug_span!("kms_release"))
            .await?;
        let verifying = tracing::debug_span!("verify_release").entered();
        let jws = response
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::BadResponse {
                service: "KMS",
                url: key.key_path(),
                reason: "no \"value\" JWS".into(),
            })?;
        let mut payload = verify_x5c(jws, key.host(), &self.anchors)?;
        let released: Jwk = serde_json::from_value(
            payload
                .pointer_mut("/response/key/key")
                .map(Value::take)
                .unwrap_or_default(),
        )
        .map_err(|e| Error::BadResponse {
            service: "KMS",
            url: key.key_path(),
            reason: format!("release payload: {e}"),
        })?;
        let key_hsm = released
            .key_hsm
            .as_deref()
            .ok_or_else(|| Error::BadResponse {
                service: "KMS",
                url: key.key_path(),
                reason: "the key has no key_hsm".into(),
            })?;
        drop(verifying);
        let mut jwk = tracing::debug_span!("unwrap")
            .in_scope(|| transfer_key.unwrap_key_hsm(key_hsm, released.family()?))?;
        jwk.kid = released.kid.clone();
        jwk.key_ops = released.key_ops.clone();
        Ok(jwk)
    }

    pub async fn get(&self, key: &KeyUrl, access: &Secret) -> Result<KeyBundle> {
        let url = format!("{}?api-version={API_VERSION}", key.key_path());
        let value = self
            .call(reqwest::Method::GET, url, access, None::<&Value>)
            .await?;
        serde_json::from_value(value).map_err(|e| Error::BadResponse {
            service: "KMS",
            url: key.key_path(),
            reason: e.to_string(),
        })
    }

    /// Imports `jwk` (private material) as an exportable HSM key bound to `policy`.
    pub async fn import(
        &self,
        key: &KeyUrl,
        jwk: &Jwk,
        policy: &ReleasePolicy,
        access: &Secret,
    ) -> Result<KeyBundle> {
        let mut hsm_key = jwk.clone();
        if hsm_key.key_ops.is_none() {
            hsm_key.key_ops = Some(default_ops(jwk));
        }
        let body = json!({
            "key": hsm_key,
            "hsm": true,
            "attributes": { "exportable": true },
            "release_policy": policy_body(policy)?,
        });
        let url = format!("{}/keys/{}?api-version={API_VERSION}", key.base(), key.name);
        let value = self
            .call(reqwest::Method::PUT, url, access, Some(&body))
            .await?;
        serde_json::from_value(value).map_err(|e| Error::BadResponse {
            service: "KMS",
            url: key.key_path(),
            reason: e.to_string(),
        })
    }

    /// Creates an HSM key (`POST /keys/<name>/create`): exportable and bound to `policy` when
    /// one is given, else non-exportable (Key Vault refuses a policy on a non-exportable key).
    pub async fn create(
        &self,
        key: &KeyUrl,
        spec: &KeySpec,
        policy: Option<&ReleasePolicy>,
        access: &Secret,
    ) -> Result<KeyBundle> {
        let crypt_ops = json!(["encrypt", "decrypt", "wrapKey", "unwrapKey"]);
        let shape = match spec {
            KeySpec::Rsa { bits } => {
                json!({ "kty": "RSA-HSM", "key_size": bits, "key_ops": crypt_ops })
            }
            KeySpec::Oct { bits } => {
                json!({ "kty": "oct-HSM", "key_size": bits, "key_ops": crypt_ops })
            }
            KeySpec::Ec { curve } => {
                json!({ "kty": "EC-HSM", "crv": curve, "key_ops": ["sign", "verify"] })
            }
        };
        let mut body = match policy {
            Some(policy) => {
                json!({ "attributes": { "exportable": true }, "release_policy": policy_body(policy)? })
            }
            None => json!({ "attributes": { "exportable": false } }),
        };
        if let (Some(body), Value::Object(shape)) = (body.as_object_mut(), shape) {
            body.extend(shape);
        }
        let url = format!(
            "{}/keys/{}/create?api-version={API_VERSION}",
            key.base(),
            key.name
        );
        let value = self
            .call(reqwest::Method::POST, url, access, Some(&body))
            .await?;
        serde_json::from_value(value).map_err(|e| Error::BadResponse {
            service: "KMS",
            url: key.key_path(),
            reason: e.to_string(),
        })
    }
}

fn default_ops(jwk: &Jwk) -> Vec<String> {
    let ops: &[&str] = match jwk.family() {
        Ok(crate::azure::jwk::KeyFamily::Ec) => &["sign", "verify"],
        _ => &["encrypt", "decrypt", "wrapKey", "unwrapKey"],
    };
    ops.iter().map(|s| (*s).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_urls_are_validated_and_name_the_host_connected_to() {
        let k = KeyUrl::parse("https://kv.vault.azure.net/keys/my-key/0123abcd").unwrap();
        assert_eq!(
            (k.host(), k.name(), k.version()),
            ("kv.vault.azure.net", "my-key", Some("0123abcd"))
        );
        assert_eq!(
            k.to_string(),
            "https://kv.vault.azure.net/keys/my-key/0123abcd"
        );
        let k = KeyUrl::new("[::1]:8443", "k").unwrap();
        assert_eq!(
            (k.host(), k.key_path().as_str()),
            ("::1", "https://[::1]:8443/keys/k")
        );
        // Regression (issue 11): the host checked against the release JWS was "victim.example"
        // while the connection went to 127.0.0.1.
        for text in [
            "https://victim.example:1@127.0.0.1:18443",
            "victim.example:1@127.0.0.1:18443",
        ] {
            let err = KeyUrl::new(text, "k").unwrap_err().to_string();
            assert!(err.contains("user information"), "{err}");
        }
        let err = KeyUrl::parse("https://victim.example:1@127.0.0.1:18443/keys/k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user information"), "{err}");
        for bad in [
            "http://kv.vault.azure.net/keys/k",
            "https://kv.vault.azure.net/keys/k?x=1",
            "https://kv.vault.azure.net/keys/k/v1/extra",
            "https://kv.vault.azure.net/keys/k/not-hex",
            "https://kv.vault.azure.net/secrets/k",
            "https://kv.vault.azure.net/keys/a%2Fb",
            "https://kv.vault.azure.net/keys/../x",
        ] {
            assert!(KeyUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(KeyUrl::new("kv.vault.azure.net", &"k".repeat(128)).is_err());
        assert!(KeyUrl::new("kv.vault.azure.net", &"k".repeat(127)).is_ok());
        assert!(KeyUrl::new("kv.vault.azure.net", "a_b").is_err());
        let huge = "k".repeat(1 << 20);
        assert!(
            KeyUrl::new("kv.vault.azure.net", &huge)
                .unwrap_err()
                .to_string()
                .len()
                < 300
        );
    }
}
