//! The one way aasp builds outbound HTTP clients: rustls only, TLS verification always on, an
//! extra trusted CA only from an explicit file, bounded timeouts; and the one parser of the
//! backend endpoints requests name (`Endpoint`: an https origin, nothing else).

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

/// The system's trust roots, as rustls-native-certs finds them (`SSL_CERT_FILE`/`SSL_CERT_DIR`,
/// else the distribution's bundle; certificates it cannot read are skipped). A server reads them
/// once and hands them to every verifier that needs them: the HTTP client here and the
/// release-signature anchors (`azure::jws::Anchors`).
pub fn system_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

/// [`client_with_roots`] with the system's roots.
pub fn client(options: &HttpOptions) -> Result<reqwest::Client, HttpSetupError> {
    client_with_roots(options, &system_roots())
}

/// A client that trusts `roots` (usable ones: a certificate webpki cannot take as a trust anchor
/// is skipped, as a platform verifier skips it) and the extra CA file, and nothing else.
pub fn client_with_roots(
    options: &HttpOptions,
    roots: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<reqwest::Client, HttpSetupError> {
    let mut trusted: Vec<reqwest::Certificate> = roots
        .iter()
        .filter(|der| webpki::anchor_from_trusted_cert(der).is_ok())
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    if let Some(path) = &options.extra_ca {
        trusted.extend(load_ca(path)?);
    }
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .user_agent(concat!("aasp/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(same_origin_only))
        .https_only(false)
        .tls_certs_only(trusted)
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

/// Redirects stay on the origin a request was checked for. reqwest's default follows any
/// redirect and, on 307/308, sends the body again to the new host: a KMS answering a release
/// with `307 Location: http://elsewhere/` would hand the MAA token (the release body) to a host
/// no allow-list admitted, in clear text. A cross-origin redirect is returned to the caller as
/// the 3xx it is (an error there); same-origin ones are followed, at most 5.
fn same_origin_only(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let next = attempt.url();
    let same_origin = attempt.previous().last().is_some_and(|previous| {
        previous.scheme() == next.scheme()
            && previous.host_str() == next.host_str()
            && previous.port_or_known_default() == next.port_or_known_default()
    });
    if same_origin && attempt.previous().len() <= 5 {
        attempt.follow()
    } else {
        attempt.stop()
    }
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
        // Built once per attempt (a JSON body is serialized once), then sent as built.
        let (client, request) = build().build_split();
        let request = request.map_err(|e| TransportError {
            method: "?".into(),
            url: e.url().map(|u| u.to_string()).unwrap_or_default(),
            reason: e.to_string(),
            attempts: attempt + 1,
        })?;
        let (method, url) = (request.method().to_string(), redact_query(request.url()));
        let upstream = crate::metrics::upstream_of(request.url().path());
        let last = attempt + 1 >= policy.attempts;
        let sent = client.execute(request).await;
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

/// Longest endpoint text parsed (a DNS name is at most 253 bytes; the rest is scheme and port).
const MAX_ENDPOINT_LEN: usize = 300;

/// Caller text quoted in an error, cut short: requests must not make errors (and the logs and
/// statuses that carry them) as large as they like.
pub fn quoted(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!(
            "{:?}… ({} bytes)",
            text.get(..cut).unwrap_or_default(),
            text.len()
        ),
        None => format!("{text:?}"),
    }
}

/// Why a text is not a usable endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {shown}: {reason}")]
pub struct EndpointError {
    shown: String,
    reason: &'static str,
}

/// A backend endpoint: an https origin (`https://host[:port]`), parsed with the `url` crate.
/// No user information (`https://a.example:1@b.example` connects to b.example, whatever a
/// string split says), no path, query or fragment; IPv6 literals in brackets. The host is
/// lower-case and the port absent when it is https's default, so two spellings of one origin
/// compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    host: String,
    port: Option<u16>,
}

impl Endpoint {
    /// Parses `host`, `host:port`, `[v6]:port` or `https://host[:port][/]`.
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let (endpoint, rest) = Self::parse_url(text)?;
        if !matches!(rest.path(), "" | "/") {
            return Err(endpoint_error(text, "a path is not allowed here"));
        }
        if rest.query().is_some() {
            return Err(endpoint_error(text, "a query is not allowed here"));
        }
        Ok(endpoint)
    }

    /// Parses a URL whose origin is an endpoint and whose path and query the caller interprets
    /// (a key URL, a resource URI): the origin, and the URL for the rest. No fragment, no user
    /// information, https only.
    pub fn parse_url(text: &str) -> Result<(Self, url::Url), EndpointError> {
        let text_trimmed = text.trim();
        if text_trimmed.is_empty() {
            return Err(endpoint_error(text, "it is empty"));
        }
        if text_trimmed.len() > MAX_ENDPOINT_LEN {
            return Err(endpoint_error(text, "it is too long"));
        }
        let with_scheme = if text_trimmed.contains("://") {
            text_trimmed.to_owned()
        } else {
            format!("https://{text_trimmed}")
        };
        let url = url::Url::parse(&with_scheme)
            .map_err(|_| endpoint_error(text, "it is not a host[:port] or an https:// URL"))?;
        if url.scheme() != "https" {
            return Err(endpoint_error(
                text,
                "only https:// is allowed (tokens and keys travel on this connection)",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(endpoint_error(
                text,
                "user information (user@ before the host) is not allowed",
            ));
        }
        if url.fragment().is_some() {
            return Err(endpoint_error(text, "a fragment (#) is not allowed"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            _ => return Err(endpoint_error(text, "it names no host")),
        };
        let port = url.port();
        Ok((Endpoint { host, port }, url))
    }

    /// The host as connected to: a lower-case DNS name, an IPv4 address or `[IPv6]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host as a certificate names it: IPv6 without brackets.
    pub fn server_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port connected to (443 unless given).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(443)
    }

    /// `host` or `host:port` (non-default port), the form allow-list options take.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// `https://host[:port]`, no trailing slash.
    pub fn origin(&self) -> String {
        format!("https://{}", self.authority())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.origin())
    }
}

fn endpoint_error(text: &str, reason: &'static str) -> EndpointError {
    EndpointError {
        shown: quoted(text),
        reason,
    }
}

/// Reads a response body into a buffer that is zeroized on drop (tokens travel in these
/// bodies), refusing bodies over `limit` bytes.
pub async fn read_body_zeroizing(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let mut body = zeroize::Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(|e| transport_reason(&e))? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(format!("the response is larger than {limit} bytes"));
        }
        // Grown by hand: a Vec that reallocates leaves its old copy behind, unzeroized.
        if body.capacity() < body.len() + chunk.len() {
            let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(
                (body.len() + chunk.len())
                    .max(body.capacity() * 2)
                    .min(limit),
            ));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A client that trusts only the certificates of `pem` (a pinned server certificate or its CA,
/// as upstream AA's KBS `cert`), not the system roots. Same timeouts as [`client`].
pub fn client_pinned(options: &HttpOptions, pem: &str) -> Result<reqwest::Client, HttpSetupError> {
    let err = |reason: String| HttpSetupError::ExtraCa {
        path: PathBuf::from("<pinned certificate>"),
        reason,
    };
    let certs =
        reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .user_agent(concat!("aasp/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(same_origin_only))
        .tls_certs_only(certs)
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_read_whole_or_refused_over_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router =
            axum::Router::new().route("/", axum::routing::get(|| async { "x".repeat(5000) }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let get = || reqwest::Client::new().get(format!("http://{addr}/")).send();
        let body = read_body_zeroizing(get().await.unwrap(), 5000)
            .await
            .unwrap();
        assert_eq!(body.as_slice(), "x".repeat(5000).as_bytes());
        let err = read_body_zeroizing(get().await.unwrap(), 4999)
            .await
            .unwrap_err();
        assert!(err.contains("larger than 4999 bytes"), "{err}");
    }

    /// A redirect to another origin is not followed: on a 307 reqwest would send the body (a
    /// release's MAA token) again to the host the `Location` names.
    #[tokio::test]
    async fn redirects_to_another_origin_are_not_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let bound = || async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            (listener, addr)
        };
        let (elsewhere, elsewhere_addr) = bound().await;
        let reached = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&reached);
        let router = axum::Router::new().fallback(move || {
            let counter = std::sync::Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "thanks"
            }
        });
        tokio::spawn(async move { axum::serve(elsewhere, router).await });
        let (kms, kms_addr) = bound().await;
        let away = format!("http://{elsewhere_addr}/stolen");
        let redirect = |to: String| {
            move || async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, to)],
                )
            }
        };
        let router = axum::Router::new()
            .route("/release", axum::routing::post(redirect(away)))
            .route("/moved", axum::routing::post(redirect("/here".into())))
            .route(
                "/here",
                axum::routing::post(|body: String| async move { body }),
            );
        tokio::spawn(async move { axum::serve(kms, router).await });

        let pinned = rcgen::generate_simple_self_signed(vec!["kbs.example".into()])
            .unwrap()
            .cert
            .pem();
        // Both ways aasp builds clients: the general one and the KBS's pinned one.
        for http in [
            client(&HttpOptions::default()).unwrap(),
            client_pinned(&HttpOptions::default(), &pinned).unwrap(),
        ] {
            let response = http
                .post(format!("http://{kms_addr}/release"))
                .body(r#"{"target":"maa-token"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
            assert_eq!(reached.load(Ordering::SeqCst), 0, "the body went elsewhere");
            // Same origin: followed as before.
            let response = http
                .post(format!("http://{kms_addr}/moved"))
                .body("same")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            assert_eq!(response.text().await.unwrap(), "same");
        }
    }

    #[test]
    fn endpoints_parse_to_the_host_connected_to() {
        let ok = |text: &str| Endpoint::parse(text).unwrap();
        assert_eq!(
            ok("kv.vault.azure.net").origin(),
            "https://kv.vault.azure.net"
        );
        assert_eq!(
            ok("https://KV.Vault.Azure.NET/").host(),
            "kv.vault.azure.net"
        );
        assert_eq!(
            ok("https://kv.vault.azure.net:443"),
            ok("kv.vault.azure.net")
        );
        assert_eq!(ok("127.0.0.1:18443").authority(), "127.0.0.1:18443");
        let v6 = ok("[::1]:8443");
        assert_eq!(
            (v6.host(), v6.server_name(), v6.port()),
            ("[::1]", "::1", 8443)
        );
        assert_eq!(v6.origin(), "https://[::1]:8443");
        // The regression: a string split took "victim.example" for the host; the connection
        // goes to 127.0.0.1.
        let err = Endpoint::parse("https://victim.example:1@127.0.0.1:18443").unwrap_err();
        assert!(err.to_string().contains("user information"), "{err}");
        for (bad, why) in [
            ("http://kv.vault.azure.net", "only https"),
            ("ftp://kv.vault.azure.net", "only https"),
            ("https://kv.vault.azure.net/keys/k", "path"),
            ("https://kv.vault.azure.net/?x=1", "query"),
            ("https://kv.vault.azure.net#f", "fragment"),
            ("user@kv.vault.azure.net", "user information"),
            ("", "empty"),
            ("https://", "host"),
            ("kv.vault.azure.net:99999", "host[:port]"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let long = "a".repeat(100_000);
        let err = Endpoint::parse(&long).unwrap_err().to_string();
        assert!(
            err.len() < 200,
            "the error echoes a bounded part: {}",
            err.len()
        );
    }
}
