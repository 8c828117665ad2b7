//! Access tokens for Key Vault / Managed HSM: IMDS managed identity, AKS workload identity
//! (federated token file → Entra token endpoint), or a token given explicitly. Tokens are cached
//! per resource until shortly before they expire.

use crate::azure::{status_error, Error, Result, Secret};
use crate::http::{send_with_retry, RetryPolicy};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub const DEFAULT_IMDS_BASE: &str = "http://169.254.169.254";
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
pub const MHSM_RESOURCE: &str = "https://managedhsm.azure.net";
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";
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
        }
    }
}

/// The resource whose token a KMS host needs.
pub fn resource_for_host(host: &str) -> &'static str {
    if host.ends_with(".vault.azure.net") {
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
        if let IdentitySource::Static(token) = &self.source {
            return Ok(token.clone());
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

    async fn fetch(&self, resource: &str) -> Result<(Secret, Duration)> {
        match &self.source {
            IdentitySource::Static(token) => Ok((token.clone(), Duration::from_secs(3600))),
            IdentitySource::Imds { base, client_id } => {
                let base = base.trim_end_matches('/');
                let mut query = vec![("api-version", "2018-02-01"), ("resource", resource)];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                let url = format!(
                    "{base}/metadata/identity/oauth2/token?{}",
                    url_encode_form(&query)
                );
                let response = send_with_retry(
                    || self.client.get(&url).header("Metadata", "true"),
                    &self.retry,
                )
                .await?;
                token_response(response, "IMDS", &url).await
            }
            IdentitySource::WorkloadIdentity {
                authority_host,
                tenant_id,
                client_id,
                token_file,
            } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    Error::Identity(format!(
                        "federated token file {}: {e}",
                        token_file.display()
                    ))
                })?;
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
                let body = url_encode_form(&form);
                let response = send_with_retry(
                    || {
                        self.client
                            .post(&url)
                            .header("Content-Type", "application/x-www-form-urlencoded")
                            .body(body.clone())
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

/// `{"access_token", "expires_in"}`; IMDS sends numbers as strings, Entra as numbers.
async fn token_response(
    response: reqwest::Response,
    service: &'static str,
    url: &str,
) -> Result<(Secret, Duration)> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(status_error(service, url, status, &text));
    }
    let body: Value = serde_json::from_str(&text).map_err(|_| Error::BadResponse {
        service,
        url: url.to_owned(),
        reason: "not JSON".into(),
    })?;
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadResponse {
            service,
            url: url.to_owned(),
            reason: "no access_token".into(),
        })?;
    let expires_in = match body.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(3600);
    Ok((
        Secret::new(token.to_owned()),
        Duration::from_secs(expires_in),
    ))
}
