//! The one way aasp builds outbound HTTP clients: rustls only, TLS verification always on, an
//! extra trusted CA only from an explicit file, bounded timeouts; and the one parser of the
//! backend endpoints requests name (`Endpoint`: an https origin, nothing else).

#[cfg(feature = "static-dns")]
mod dns;

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
    builder(options)
        .https_only(false)
        .tls_certs_only(trusted)
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

/// What every client shares: timeouts, user agent, the redirect rule, and (in the static build)
/// the resolver that needs no NSS module.
fn builder(options: &HttpOptions) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .user_agent(concat!("aasp/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(same_origin_only));
    #[cfg(feature = "static-dns")]
    let builder = builder.dns_resolver(dns::resolver());
    builder
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

/// Retries bounded by time, not by a count. Transient answers (transport errors, 408, 429, 5xx)
/// are retried with jittered exponential backoff, honouring `Retry-After`, until the caller's
/// deadline: the RPC's (set with [`with_deadline`] where a call enters aasp), else `budget` from
/// the first attempt (one-shot commands, start-up, background work). A throttling upstream is
/// what a fleet scaling out meets, so giving up after a fixed few attempts would crash-loop pods
/// that a little patience serves. What cannot succeed by waiting is not retried: TLS trust
/// failures and 4xx other than 408/429.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// How long a call keeps trying when no caller deadline is in force.
    pub budget: Duration,
    pub base_delay: Duration,
    /// Longest backoff between two attempts (`Retry-After` may ask for more, within the deadline).
    pub max_delay: Duration,
    /// The option that makes a CA trusted for this client (`--extra-ca`, `--kbs-cert`, or the
    /// variable where a mode takes only variables), named when a certificate's issuer is unknown.
    pub trust_option: &'static str,
    /// Advice logged at once on the first transport failure (IMDS unreachable off Azure), so a
    /// person does not wait out the budget without a word.
    pub transport_hint: Option<&'static str>,
    /// Whether a 500 is the upstream's final answer rather than a fault worth retrying: Trustee's
    /// RESTful attestation service answers every refused evaluation with 500.
    pub internal_error_is_final: bool,
}

/// The trust options as advice names them: the flag, and the variable for modes that take only
/// variables (`aasp skr`).
pub const TRUST_EXTRA_CA: &str = "--extra-ca FILE (or AASP_EXTRA_CA)";
pub const TRUST_KBS_CERT: &str = "--kbs-cert FILE (or AASP_KBS_CERT)";

/// Default retry budget of one-shot commands and start-up work (`--retry-budget`).
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(15);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: DEFAULT_RETRY_BUDGET,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            trust_option: TRUST_EXTRA_CA,
            transport_hint: None,
            internal_error_is_final: false,
        }
    }
}

tokio::task_local! {
    static DEADLINE: tokio::time::Instant;
}

/// Runs `work` with `deadline` as the limit of every upstream retry inside it (the RPC's own
/// deadline, so retries stop when nobody waits for the answer any more). Nested deadlines keep
/// the earlier one.
pub async fn with_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    work: F,
) -> F::Output {
    let deadline = DEADLINE
        .try_with(|outer| (*outer).min(deadline))
        .unwrap_or(deadline);
    DEADLINE.scope(deadline, work).await
}

/// A request that got no usable answer: no response arrived before the deadline, or the
/// failure is one that waiting cannot fix.
/// Boxed: it travels inside every upstream error, which should stay small.
#[derive(Debug)]
pub struct TransportError(Box<TransportFailure>);

/// What [`TransportError`] says.
#[derive(Debug)]
pub struct TransportFailure {
    pub method: String,
    pub url: String,
    pub reason: String,
    pub attempts: u32,
    pub elapsed: Duration,
    /// The server's certificate did not verify: a configuration matter, never retried.
    pub trust_failure: bool,
    /// What to do about it, when aasp knows.
    pub advice: Option<String>,
}

impl std::ops::Deref for TransportError {
    type Target = TransportFailure;
    fn deref(&self) -> &TransportFailure {
        &self.0
    }
}

impl From<TransportFailure> for TransportError {
    fn from(failure: TransportFailure) -> Self {
        TransportError(Box::new(failure))
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failure = &self.0;
        let (method, url, reason) = (&failure.method, &failure.url, &failure.reason);
        let plural = if failure.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "{method} {url}: {reason} ({} attempt{plural} in {:.1?})",
            failure.attempts, failure.elapsed
        )?;
        match &failure.advice {
            Some(advice) => write!(f, ": {advice}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for TransportError {}

fn retryable(status: reqwest::StatusCode, policy: &RetryPolicy) -> bool {
    let final_500 =
        policy.internal_error_is_final && status == reqwest::StatusCode::INTERNAL_SERVER_ERROR;
    status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && !final_500)
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
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

/// How a failed attempt ended, for the decision to retry.
enum Failure {
    /// Worth another attempt (refused connection, reset, timeout).
    Transient(String),
    /// Waiting cannot fix it: the certificate did not verify.
    Trust {
        reason: String,
        unknown_issuer: bool,
    },
}

/// Sends the request `build` makes, retrying transient failures until the deadline (see
/// [`RetryPolicy`]). Returns the last response (whatever its status: the caller interprets
/// statuses) or the transport error.
pub async fn send_with_retry(
    build: impl Fn() -> reqwest::RequestBuilder,
    policy: &RetryPolicy,
) -> Result<reqwest::Response, TransportError> {
    let started = tokio::time::Instant::now();
    let rpc_deadline = DEADLINE.try_with(|d| *d).ok();
    let deadline = rpc_deadline.unwrap_or(started + policy.budget);
    let mut attempt: u32 = 0;
    // The upstream's latest retryable answer: if the deadline then cuts a slower attempt short,
    // the caller gets what the upstream said (a 503, say) rather than "no answer".
    let mut last_answer: Option<reqwest::Response> = None;
    loop {
        attempt += 1;
        let give_up = |method: String, url: String, reason: String| TransportFailure {
            method,
            url,
            reason,
            attempts: attempt,
            elapsed: started.elapsed(),
            trust_failure: false,
            advice: policy.transport_hint.map(str::to_owned),
        };
        // Built once per attempt (a JSON body is serialized once), then sent as built.
        let (client, request) = build().build_split();
        let request = request.map_err(|e| {
            give_up(
                "?".into(),
                e.url().map(redact_query).unwrap_or_default(),
                e.to_string(),
            )
        })?;
        let (method, url) = (request.method().to_string(), redact_query(request.url()));
        let upstream = crate::metrics::upstream_of(request.url().path());
        // Under an RPC deadline the RPC's own timer ends a stalled attempt (DEADLINE_EXCEEDED
        // to the caller); otherwise the budget does, here.
        let sent = match rpc_deadline {
            Some(_) => Ok(client.execute(request).await),
            None => tokio::time::timeout_at(deadline, client.execute(request)).await,
        };
        let outcome = match &sent {
            Ok(Ok(response)) => format!("{}xx", response.status().as_u16() / 100),
            _ => "transport_error".to_owned(),
        };
        crate::metrics::record_upstream(upstream, &outcome);
        let (failure, delay) = match sent {
            Ok(Ok(response)) if !retryable(response.status(), policy) => return Ok(response),
            Ok(Ok(response)) => {
                // At least what the upstream asked for, and never less than the backoff: a
                // `Retry-After: 0` must not become a tight loop, nor a fleet retry in step.
                let backoff = jittered(policy, attempt - 1);
                let delay = retry_after(&response).map_or(backoff, |asked| asked.max(backoff));
                if tokio::time::Instant::now() + delay >= deadline {
                    // Nobody waits that long: the caller gets the upstream's own answer.
                    return Ok(response);
                }
                tracing::debug!(%method, %url, status = %response.status(), ?delay, "retrying");
                last_answer = Some(response);
                tokio::time::sleep(delay).await;
                continue;
            }
            Ok(Err(e)) => (classify(&e), jittered(policy, attempt - 1)),
            Err(_) => {
                return match last_answer {
                    Some(answer) => Ok(answer),
                    None => {
                        Err(give_up(method, url, "no answer before the deadline".into()).into())
                    }
                }
            }
        };
        match failure {
            Failure::Trust {
                reason,
                unknown_issuer,
            } => {
                let advice = if unknown_issuer {
                    Some(format!(
                        "the server's certificate is issued by a CA aasp does not trust; if this \
                         server is the right one, trust its CA with {} (a PEM file)",
                        policy.trust_option
                    ))
                } else {
                    Some("the server's certificate does not verify; not retried".to_owned())
                };
                return Err(TransportFailure {
                    trust_failure: true,
                    advice,
                    ..give_up(method, url, reason)
                }
                .into());
            }
            Failure::Transient(reason) => {
                if attempt == 1 {
                    if let Some(hint) = policy.transport_hint {
                        tracing::warn!(%url, %reason, "{hint}");
                    }
                }
                if tokio::time::Instant::now() + delay >= deadline {
                    return Err(give_up(method, url, reason).into());
                }
                tracing::debug!(%method, %url, %reason, ?delay, "retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A transport error is transient unless the server's certificate failed verification.
fn classify(e: &reqwest::Error) -> Failure {
    let reason = transport_reason(e);
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = next {
        if let Some(rustls::Error::InvalidCertificate(cert)) = error.downcast_ref() {
            return Failure::Trust {
                reason,
                unknown_issuer: matches!(cert, rustls::CertificateError::UnknownIssuer),
            };
        }
        // An io::Error's `source()` skips the error it wraps (the TLS stack wraps rustls's
        // error in one io::Error, and that in another): step into it instead.
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    Failure::Transient(reason)
}

/// URLs are logged and put into errors without their query (which could carry a client id).
pub fn redact_query(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// A transport error with its chain of causes (reqwest's own text is only the outermost).
pub fn transport_reason(e: &reqwest::Error) -> String {
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

/// How much of a response body aasp reads: sized to what the protocol needs, so that an
/// upstream (or the host, for THIM and IMDS) cannot make aasp hold what it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    /// The body, as the error names it ("KBS challenge").
    pub what: &'static str,
    pub bytes: usize,
    /// The option that raises the limit, when one does.
    pub option: Option<&'static str>,
}

impl BodyLimit {
    pub const fn new(what: &'static str, bytes: usize) -> Self {
        BodyLimit {
            what,
            bytes,
            option: None,
        }
    }

    pub const fn with_option(self, option: &'static str) -> Self {
        BodyLimit {
            option: Some(option),
            ..self
        }
    }
}

/// The limits of every upstream body, in one place (docs/reliability.md lists them).
pub mod limits {
    use super::BodyLimit;
    const KIB: usize = 1024;
    /// `{"nonce", "extra-params"}`: a nonce is tens of bytes.
    pub const KBS_CHALLENGE: BodyLimit = BodyLimit::new("KBS challenge (/auth)", 4 * KIB);
    /// `{"token"}`: Trustee's token carries the evidence's claims.
    pub const KBS_TOKEN: BodyLimit = BodyLimit::new("KBS token (/attest)", 256 * KIB);
    /// The token text a Trustee attestation service answers (`GetToken("coco_as")`).
    pub const COCO_AS_TOKEN: BodyLimit = BodyLimit::new("attestation service token", 256 * KIB);
    /// Default of `--kbs-max-resource` (the JWE body of one resource).
    pub const KBS_RESOURCE_DEFAULT: usize = 1024 * KIB;
    /// THIM's JSON, AzCache's PEM, a KDS VCEK or chain: a few KiB of certificates.
    pub const CERT_CHAIN: BodyLimit = BodyLimit::new("certificate chain", 64 * KIB);
    /// An IMDS or Entra ID token response: a token of a few KiB.
    pub const ACCESS_TOKEN: BodyLimit = BodyLimit::new("access token response", 64 * KIB);
    /// MAA's `{"token"}` (claims include the runtime data) and its JWKS.
    pub const MAA: BodyLimit = BodyLimit::new("MAA response", 256 * KIB);
    /// A Managed HSM / Key Vault answer: a release JWS with its x5c chain, a key.
    pub const KMS: BodyLimit = BodyLimit::new("KMS response", 256 * KIB);
    /// The part of an error body (any status other than 2xx) read for its message.
    pub const ERROR_BODY: usize = 16 * KIB;
}

/// A body aasp did not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{url}: the {what} is larger than aasp's limit of {limit} bytes{announced}{raise}",
        announced = announced.map(|n| format!(" (Content-Length {n})")).unwrap_or_default(),
        raise = option.map(|o| format!("; {o} raises the limit")).unwrap_or_default())]
    TooLarge {
        url: String,
        what: &'static str,
        limit: usize,
        announced: Option<u64>,
        option: Option<&'static str>,
    },
    #[error("{url}: reading the {what}: {reason}")]
    Transport {
        url: String,
        what: &'static str,
        reason: String,
    },
}

/// Reads a body of at most `limit.bytes`: refused at once when `Content-Length` announces more,
/// and reading stops at the limit when it does not (chunked), so at most one chunk more than the
/// limit is ever held. The buffer is zeroized on drop (tokens and keys travel in these bodies).
pub async fn read_body(
    mut response: reqwest::Response,
    limit: BodyLimit,
) -> Result<zeroize::Zeroizing<Vec<u8>>, BodyError> {
    let url = redact_query(response.url());
    let too_large = |announced| BodyError::TooLarge {
        url: url.clone(),
        what: limit.what,
        limit: limit.bytes,
        announced,
        option: limit.option,
    };
    let announced = response.content_length();
    if announced.is_some_and(|n| n > limit.bytes as u64) {
        return Err(too_large(announced));
    }
    // Sized once when the length is announced (and within the limit): no regrowth, no copies.
    let announced_len = announced.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let mut body = zeroize::Zeroizing::new(Vec::with_capacity(announced_len));
    loop {
        let chunk = response.chunk().await.map_err(|e| BodyError::Transport {
            url: url.clone(),
            what: limit.what,
            reason: transport_reason(&e),
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        let len = body.len().saturating_add(chunk.len());
        if len > limit.bytes {
            return Err(too_large(announced));
        }
        // Grown by hand: a Vec that reallocates leaves its old copy behind, unzeroized.
        if body.capacity() < len {
            let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(
                len.max(body.capacity().saturating_mul(2)).min(limit.bytes),
            ));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk);
    }
}

/// The start of an error body (any non-2xx answer), for its message: at most
/// [`limits::ERROR_BODY`] bytes are read and the rest is left unread, so an error never fails
/// for its size and never costs more than that.
pub async fn read_error_body(mut response: reqwest::Response) -> String {
    let mut body = zeroize::Zeroizing::new(Vec::new());
    while body.len() < limits::ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limits::ERROR_BODY - body.len();
                body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Counts the bytes a serialization writes, so the real buffer is allocated once at its final
/// size (a growing `Vec` would leave unzeroized copies behind at each reallocation).
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` as JSON in a zeroizing buffer (a request or reply that carries a token or a key),
/// never through a `serde_json::Value` or a `String` that would leave copies in freed memory.
pub fn zeroizing_json<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<zeroize::Zeroizing<Vec<u8>>, serde_json::Error> {
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value)?;
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(count.0));
    serde_json::to_writer(&mut *out, value)?;
    Ok(out)
}

/// Bytes whose storage is zeroized when the last reference (a sent request or response body)
/// is dropped; clones share it.
pub fn zeroizing_bytes(secret: zeroize::Zeroizing<Vec<u8>>) -> hyper::body::Bytes {
    hyper::body::Bytes::from_owner(secret)
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
    builder(options)
        .tls_certs_only(certs)
        .build()
        .map_err(|e| HttpSetupError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(router: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    #[tokio::test]
    async fn bodies_are_read_whole_or_refused_over_the_limit() {
        // `/` announces its length; `/chunked` does not, and would go on for ever.
        let router = axum::Router::new()
            .route("/", axum::routing::get(|| async { "x".repeat(5000) }))
            .route(
                "/chunked",
                axum::routing::get(|| async {
                    let chunk = axum::body::Bytes::from_static(&[b'x'; 1000]);
                    let endless = futures_util::stream::repeat_with(move || {
                        Ok::<_, std::io::Error>(chunk.clone())
                    });
                    axum::body::Body::from_stream(endless)
                }),
            );
        let addr = serve(router).await;
        let get = |path: &str| {
            reqwest::Client::new()
                .get(format!("http://{addr}{path}"))
                .send()
        };
        let limit = |bytes| BodyLimit::new("test body", bytes);
        let body = read_body(get("/").await.unwrap(), limit(5000))
            .await
            .unwrap();
        assert_eq!(body.as_slice(), "x".repeat(5000).as_bytes());
        let err = read_body(get("/").await.unwrap(), limit(4999))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "test body is larger than aasp's limit of 4999 bytes (Content-Length 5000)"
            ),
            "{err}"
        );
        let err = read_body(
            get("/chunked").await.unwrap(),
            limit(64 * 1024).with_option("--test-max"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("limit of 65536 bytes; --test-max raises the limit"),
            "{err}"
        );
        // An error body is read only as far as its message needs.
        let message = read_error_body(get("/chunked").await.unwrap()).await;
        assert_eq!(message.len(), limits::ERROR_BODY);
    }

    /// Answers 429 with `retry_after` to the first `throttled` requests, then 200; counts them.
    async fn throttling(
        throttled: usize,
        retry_after: &'static str,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&seen);
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let n = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < throttled {
                        axum::response::IntoResponse::into_response((
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            [(axum::http::header::RETRY_AFTER, retry_after)],
                        ))
                    } else {
                        axum::response::IntoResponse::into_response("ok")
                    }
                }
            }),
        );
        (serve(router).await, seen)
    }

    #[tokio::test]
    async fn throttling_is_retried_until_the_budget_not_a_count() {
        use std::sync::atomic::Ordering;
        // Six throttled answers: more than any fixed count of attempts aasp used to allow.
        let (addr, seen) = throttling(6, "0").await;
        let client = reqwest::Client::new();
        let quick = RetryPolicy {
            base_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        let response = send_with_retry(|| client.get(format!("http://{addr}/")), &quick)
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_retries_stop_at_the_callers_deadline() {
        use std::sync::atomic::Ordering;
        let (addr, seen) = throttling(usize::MAX, "1").await;
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        // The RPC's deadline, 2.5 s away, wins over the 15 s budget.
        let response = with_deadline(
            tokio::time::Instant::now() + Duration::from_millis(2500),
            send_with_retry(
                || client.get(format!("http://{addr}/")),
                &RetryPolicy::default(),
            ),
        )
        .await
        .unwrap();
        // Attempts at 0, 1 and 2 s; a fourth at 3 s would be past the deadline, so the caller
        // gets the upstream's own answer at once.
        assert_eq!(response.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "Retry-After: 1 was honoured"
        );
    }

    #[tokio::test]
    async fn a_deadline_cutting_a_slow_retry_short_returns_the_last_answer() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // 503 at once, then answers that come only after the budget has run out.
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&seen);
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let n = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        );
        let addr = serve(router).await;
        let client = reqwest::Client::new();
        let policy = RetryPolicy {
            budget: Duration::from_secs(1),
            base_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        let response = send_with_retry(|| client.get(format!("http://{addr}/")), &policy)
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn transport_errors_are_retried_within_the_budget_and_then_reported() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let client = reqwest::Client::new();
        let policy = RetryPolicy {
            budget: Duration::from_secs(1),
            transport_hint: Some("try the other door"),
            ..RetryPolicy::default()
        };
        let err = send_with_retry(|| client.get(format!("http://{addr}/")), &policy)
            .await
            .unwrap_err();
        assert!(err.attempts > 1, "{err}");
        assert!(!err.trust_failure);
        let text = err.to_string();
        assert!(
            text.contains("attempts in") && text.ends_with(": try the other door"),
            "{text}"
        );
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
