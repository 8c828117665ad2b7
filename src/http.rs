//! The one way aasp builds outbound HTTP clients: rustls only, TLS verification always on, an
//! extra trusted CA only from an explicit file, bounded timeouts.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// PEM file of extra trusted CA certificates (the emulator's dev CA, a corporate proxy's).
    pub extra_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            extra_ca: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("extra CA file {path}: {reason}")]
    ExtraCa { path: PathBuf, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

pub fn client(options: &HttpOptions) -> Result<reqwest::Client, HttpSetupError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .user_agent(concat!("aasp/", env!("CARGO_PKG_VERSION")))
        .https_only(false);
    if let Some(path) = &options.extra_ca {
        builder = builder.tls_certs_merge(load_ca(path)?);
    }
    builder
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

fn load_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpSetupError> {
    let err = |reason: String| HttpSetupError::ExtraCa {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Bounded retries for idempotent-enough upstream calls: transport errors, 408, 429 (honouring
/// `Retry-After`) and 5xx are retried with jittered exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// A request that failed before any response arrived, after every retry.
#[derive(Debug, thiserror::Error)]
#[error("{method} {url}: {reason} (after {attempts} attempts)")]
pub struct TransportError {
    pub method: String,
    pub url: String,
    pub reason: String,
    pub attempts: u32,
}

fn retryable(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn jittered(policy: &RetryPolicy, attempt: u32) -> Duration {
    use aws_lc_rs::rand::SecureRandom;
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.min(16))
        .min(policy.max_delay);
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut byte);
    // Between half and the full backoff, so that many clients do not retry in step.
    exp / 2 + exp.mul_f64(f64::from(byte[0]) / 510.0)
}

/// Sends the request `build` makes, retrying as `policy` allows. Returns the last response
/// (whatever its status) or the transport error; the caller interprets statuses.
pub async fn send_with_retry(
    build: impl Fn() -> reqwest::RequestBuilder,
    policy: &RetryPolicy,
) -> Result<reqwest::Response, TransportError> {
    let mut attempt = 0;
    loop {
        let request = build().build().map_err(|e| TransportError {
            method: "?".into(),
            url: e.url().map(|u| u.to_string()).unwrap_or_default(),
            reason: e.to_string(),
            attempts: attempt + 1,
        })?;
        let (method, url) = (request.method().to_string(), redact_query(request.url()));
        let upstream = crate::metrics::upstream_of(request.url().path());
        let last = attempt + 1 >= policy.attempts;
        let sent = build().send().await;
        let outcome = match &sent {
            Ok(response) => format!("{}xx", response.status().as_u16() / 100),
            Err(_) => "transport_error".to_owned(),
        };
        crate::metrics::record_upstream(upstream, &outcome);
        match sent {
            Ok(response) if !retryable(response.status()) || last => return Ok(response),
            Ok(response) => {
                let delay = retry_after(&response)
                    .unwrap_or_else(|| jittered(policy, attempt))
                    .min(policy.max_delay);
                tracing::debug!(%method, %url, status = %response.status(), ?delay, "retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) if last => {
                return Err(TransportError {
                    method,
                    url,
                    reason: transport_reason(&e),
                    attempts: attempt + 1,
                })
            }
            Err(e) => {
                tracing::debug!(%method, %url, reason = %transport_reason(&e), "retrying");
                tokio::time::sleep(jittered(policy, attempt)).await;
            }
        }
        attempt += 1;
    }
}

/// URLs are logged and put into errors without their query (which could carry a client id).
pub fn redact_query(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

fn transport_reason(e: &reqwest::Error) -> String {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}
