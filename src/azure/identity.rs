//! Access tokens for Key Vault / Managed HSM: IMDS managed identity, AKS workload identity
//! (federated token file → Entra token endpoint), or a token given explicitly. Tokens are cached
//! per resource until shortly before they expire, and dropped when the KMS refuses them.

use crate::azure::{status_error, Error, Result, Secret};
use crate::http::{limits, read_body, read_error_body, send_with_retry, RetryPolicy};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::Instrument;
use zeroize::Zeroizing;

pub const DEFAULT_IMDS_BASE: &str = "http://169.254.169.254";
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
pub const MHSM_RESOURCE: &str = "https://managedhsm.azure.net";
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";
/// Said at once when IMDS does not answer: off Azure it never will, and the retries that follow
/// would otherwise leave a person waiting in silence.
pub const IMDS_HINT: &str = "IMDS (managed identity) did not answer; off Azure, give aasp a token \
    instead: --access-token-file FILE (or AASP_ACCESS_TOKEN_FILE), with FILE made by \
    `az account get-access-token --resource https://managedhsm.azure.net --query accessToken -o tsv > FILE`";
/// Tokens are refreshed this long before they expire.
const EXPIRY_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// IMDS managed identity; `client_id` picks a user-assigned identity.
    Imds {
        base: String,
        client_id: Option<String>,
    },
    /// AKS workload identity: a federated token file exchanged at Entra ID.
    WorkloadIdentity {
        authority_host: String,
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
    /// A token obtained elsewhere.
    Static(Secret),
    /// A token in a file that something else keeps fresh: read again for every token, so a
    /// rotated token is used without a restart.
    TokenFile(PathBuf),
}

impl IdentitySource {
    /// Workload identity when AKS injected its variables, else IMDS.
    pub fn from_env(imds_base: Option<String>, client_id: Option<String>) -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        if let (Some(client), Some(tenant), Some(file)) = (
            var("AZURE_CLIENT_ID"),
            var("AZURE_TENANT_ID"),
            var("AZURE_FEDERATED_TOKEN_FILE"),
        ) {
            return IdentitySource::WorkloadIdentity {
                authority_host: var("AZURE_AUTHORITY_HOST")
                    .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.into()),
                tenant_id: tenant,
                client_id: client_id.unwrap_or(client),
                token_file: PathBuf::from(file),
            };
        }
        IdentitySource::Imds {
            base: imds_base.unwrap_or_else(|| DEFAULT_IMDS_BASE.into()),
            client_id,
        }
    }

    fn describe(&self) -> String {
        match self {
            IdentitySource::Imds { base, .. } => format!("IMDS {base}"),
            IdentitySource::WorkloadIdentity { authority_host, .. } => {
                format!("workload identity via {authority_host}")
            }
            IdentitySource::Static(_) => "explicit access token".into(),
            IdentitySource::TokenFile(path) => format!("access token file {}", path.display()),
        }
    }
}

/// The resource whose token a KMS host needs: Key Vault's for `*.vault.azure.net`, Managed
/// HSM's otherwise (the emulator plays a Managed HSM).
pub fn resource_for_host(host: &str) -> &'static str {
    if host.to_ascii_lowercase().ends_with(".vault.azure.net") {
        VAULT_RESOURCE
    } else {
        MHSM_RESOURCE
    }
}

pub struct IdentityProvider {
    client: reqwest::Client,
    retry: RetryPolicy,
    source: IdentitySource,
    cache: tokio::sync::Mutex<HashMap<String, (Secret, Instant)>>,
}

impl IdentityProvider {
    pub fn new(client: reqwest::Client, source: IdentitySource, retry: RetryPolicy) -> Self {
        IdentityProvider {
            client,
            retry,
            source,
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    /// A token for `resource`, from the cache while it is fresh.
    pub async fn token(&self, resource: &str) -> Result<Secret> {
        match &self.source {
            IdentitySource::Static(token) => return Ok(token.clone()),
            IdentitySource::TokenFile(path) => return read_token_file(path),
            _ => {}
        }
        let mut cache = self.cache.lock().await;
        if let Some((token, refresh_at)) = cache.get(resource) {
            if Instant::now() < *refresh_at {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self
            .fetch(resource)
            .instrument(tracing::debug_span!("identity"))
            .await?;
        let refresh_at = Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN).max(lifetime / 2);
        cache.insert(resource.to_owned(), (token.clone(), refresh_at));
        Ok(token)
    }

    /// Drops the cached token for `resource` (the KMS refused it: revoked, or its roles changed).
    pub async fn forget(&self, resource: &str) {
        self.cache.lock().await.remove(resource);
    }

    async fn fetch(&self, resource: &str) -> Result<(Secret, Duration)> {
        match &self.source {
            IdentitySource::Static(token) => Ok((token.clone(), Duration::from_secs(3600))),
            IdentitySource::TokenFile(path) => Ok((read_token_file(path)?, Duration::ZERO)),
            IdentitySource::Imds { base, client_id } => {
                let base = base.trim_end_matches('/');
                let mut query = vec![("api-version", "2018-02-01"), ("resource", resource)];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                let path = format!("{base}/metadata/identity/oauth2/token");
                let url = format!("{path}?{}", url_encode_form(&query));
                let retry = RetryPolicy {
                    transport_hint: Some(IMDS_HINT),
                    ..self.retry
                };
                let response =
                    send_with_retry(|| self.client.get(&url).header("Metadata", "true"), &retry)
                        .await?;
                // Errors name the path only: the query carries the client id.
                token_response(response, "IMDS", &path).await
            }
            IdentitySource::WorkloadIdentity {
                authority_host,
                tenant_id,
                client_id,
                token_file,
            } => {
                let assertion =
                    Zeroizing::new(std::fs::read_to_string(token_file).map_err(|e| {
                        Error::Identity(format!(
                            "federated token file {}: {e}",
                            token_file.display()
                        ))
                    })?);
                let url = format!(
                    "{}/{tenant_id}/oauth2/v2.0/token",
                    authority_host.trim_end_matches('/')
                );
                let scope = format!("{resource}/.default");
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                    ("scope", scope.as_str()),
                ];
                let body = Zeroizing::new(url_encode_form(&form));
                let response = send_with_retry(
                    || {
                        self.client
                            .post(&url)
                            .header("Content-Type", "application/x-www-form-urlencoded")
                            .body(body.as_bytes().to_vec())
                    },
                    &self.retry,
                )
                .await?;
                token_response(response, "Entra ID", &url).await
            }
        }
    }
}

fn url_encode_form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The access token in `path`, trimmed; read into buffers that are zeroized.
fn read_token_file(path: &std::path::Path) -> Result<Secret> {
    let raw = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| Error::Identity(format!("access token file {}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(&raw).map_err(|_| {
        Error::Identity(format!("access token file {} is not text", path.display()))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Identity(format!(
            "access token file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(token.to_owned()))
}

#[derive(serde::Deserialize)]
struct TokenBody {
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<Value>,
}

/// `{"access_token", "expires_in"}`; IMDS sends numbers as strings, Entra as numbers. The body
/// is read into a zeroizing buffer and the token straight into a `Secret`.
async fn token_response(
    response: reqwest::Response,
    service: &'static str,
    url: &str,
) -> Result<(Secret, Duration)> {
    let status = response.status();
    if !status.is_success() {
        return Err(status_error(
            service,
            url,
            status,
            &read_error_body(response).await,
        ));
    }
    let body = read_body(response, limits::ACCESS_TOKEN).await?;
    let body: TokenBody = serde_json::from_slice(&body).map_err(|_| Error::BadResponse {
        service,
        url: url.to_owned(),
        reason: "not JSON with an access_token".into(),
    })?;
    let expires_in = match body.expires_in {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(3600);
    Ok((body.access_token, Duration::from_secs(expires_in)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 item 7: an IMDS error names the URL without its query, which carries the
    /// client id of the managed identity.
    #[tokio::test]
    async fn imds_errors_do_not_carry_the_client_id() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/metadata/identity/oauth2/token",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
                )
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        let provider = IdentityProvider::new(
            reqwest::Client::new(),
            IdentitySource::Imds {
                base: format!("http://{addr}"),
                client_id: Some("0b1f6a52-secret-client-id".into()),
            },
            RetryPolicy::default(),
        );
        let err = provider.token(MHSM_RESOURCE).await.unwrap_err().to_string();
        assert!(err.contains("HTTP 400"), "{err}");
        assert!(!err.contains("0b1f6a52"), "{err}");
    }

    #[test]
    fn the_resource_follows_the_host_called() {
        assert_eq!(resource_for_host("kv.vault.azure.net"), VAULT_RESOURCE);
        assert_eq!(resource_for_host("hsm.managedhsm.azure.net"), MHSM_RESOURCE);
        // A vault name inside another host's label is not a vault.
        assert_eq!(
            resource_for_host("vault.azure.net.evil.example"),
            MHSM_RESOURCE
        );
        assert_eq!(resource_for_host("127.0.0.1"), MHSM_RESOURCE);
    }

    #[tokio::test]
    async fn a_token_file_is_read_for_every_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let provider = IdentityProvider::new(
            reqwest::Client::new(),
            IdentitySource::TokenFile(path.clone()),
            RetryPolicy::default(),
        );
        assert_eq!(
            provider.token(MHSM_RESOURCE).await.unwrap().expose(),
            "first"
        );
        std::fs::write(&path, "second").unwrap();
        assert_eq!(
            provider.token(MHSM_RESOURCE).await.unwrap().expose(),
            "second"
        );
        std::fs::write(&path, "  \n").unwrap();
        assert!(provider.token(MHSM_RESOURCE).await.is_err());
    }
}
