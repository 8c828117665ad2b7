//! Azure Blob Storage as the encrypted filesystems use it: one page blob per filesystem, read
//! with ranged GETs, written with Put Page, created with Put Blob (`aasp encfs upload`).
//!
//! Wire facts (Azure's Blob REST API; upstream azmount reaches the same calls through the
//! azblob SDK): `HEAD` gives the size (`Content-Length`) and `x-ms-blob-type`; `GET` with
//! `x-ms-range: bytes=a-b` reads; `PUT ?comp=page` with `x-ms-page-write: update` writes 512-byte
//! aligned pages, at most 4 MiB a call; `PUT` with `x-ms-blob-type: PageBlob` and
//! `x-ms-blob-content-length` creates. `x-ms-version` and `x-ms-date` go on every call.
//!
//! Credentials: a URL is read anonymously (public, or a SAS in its query), or with a bearer
//! token for `https://storage.azure.com/`. The token goes only over https and only to storage
//! hosts on the allow-list (`*.blob.core.windows.net` and the operator's patterns): the URL
//! comes from the sidecar's arguments, and a token must not follow a URL to any host it names.
//!
//! Every call retries transient failures (transport errors, 408, 429, 5xx, a refused token
//! once) with backoff until a deadline, then fails: a read never hangs. Bodies are read bounded
//! by the size the call asked for. This module knows nothing of LUKS or FUSE.

use crate::azure::identity::IdentityProvider;
use crate::provision::allow::HostPattern;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The token audience for Azure Storage.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// The REST API version sent on every call.
pub const API_VERSION: &str = "2021-08-06";
/// Storage hosts a bearer token may go to without configuration.
pub const DEFAULT_STORAGE_HOSTS: [&str; 1] = ["*.blob.core.windows.net"];
/// Page blobs are written in units of this many bytes.
pub const PAGE_SIZE: u64 = 512;
/// The most one Put Page call may write.
pub const MAX_PUT_PAGE: usize = 4 << 20;
/// The default time a call may take, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "blob URL {url}: a bearer token goes only to allow-listed storage hosts over https, and \
         {host} is not one (allowed: {allowed}); use a SAS URL, or an operator who trusts the \
         host adds --allow-storage-host {host}"
    )]
    HostNotAllowed {
        url: String,
        host: String,
        allowed: String,
    },
    #[error("{op} {url}: HTTP {status} {code}")]
    Status {
        op: &'static str,
        url: String,
        status: u16,
        code: String,
    },
    #[error("{op} {url}: no success within {deadline:?}, last: {last}")]
    Deadline {
        op: &'static str,
        url: String,
        deadline: Duration,
        last: String,
    },
    #[error("{op} {url}: {reason}")]
    BadResponse {
        op: &'static str,
        url: String,
        reason: String,
    },
    #[error("{op}: {reason}")]
    BadRequest { op: &'static str, reason: String },
}

impl BlobError {
    /// The storage said the blob does not exist (404) or already exists (409).
    pub fn status(&self) -> Option<u16> {
        match self {
            BlobError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Storage hosts a bearer token may go to: the defaults plus the operator's patterns.
#[derive(Debug, Clone)]
pub struct StorageHosts(Vec<HostPattern>);

impl StorageHosts {
    pub fn with(extra: &[String]) -> Result<Self, String> {
        let mut list = Vec::new();
        for p in DEFAULT_STORAGE_HOSTS
            .iter()
            .map(|p| p.to_string())
            .chain(extra.iter().cloned())
        {
            list.push(HostPattern::parse(&p)?);
        }
        Ok(StorageHosts(list))
    }

    fn allows(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        crate::http::Endpoint::parse(&authority)
            .map(|endpoint| self.0.iter().any(|p| p.matches(&endpoint)))
            .unwrap_or(false)
    }
}

impl Default for StorageHosts {
    fn default() -> Self {
        StorageHosts(
            DEFAULT_STORAGE_HOSTS
                .iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .collect(),
        )
    }
}

/// How a blob is reached.
#[derive(Clone)]
pub enum Credential {
    /// Public blob, or a SAS in the URL's query.
    Anonymous,
    /// A bearer token for [`STORAGE_RESOURCE`], refreshed by the provider before it expires.
    Bearer(Arc<IdentityProvider>),
}

/// A blob URL: http or https, a host, a path; the query (a SAS) is kept for requests and never
/// shown.
#[derive(Clone)]
pub struct BlobUrl {
    url: url::Url,
}

impl BlobUrl {
    pub fn parse(text: &str) -> Result<Self, BlobError> {
        // Shown without its query (a SAS); parse errors do not echo the text.
        let shown = || {
            text.split(['?', '#'])
                .next()
                .map(crate::http::quoted)
                .unwrap_or_default()
        };
        let bad = |reason: &str| BlobError::Url {
            url: shown(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(text.trim()).map_err(|_| {
            bad("not a URL (expected https://<account>.blob.core.windows.net/<container>/<blob>)")
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad(
                "only https:// (or http:// for public and SAS URLs) is allowed",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "user information (user@ before the host) is not allowed",
            ));
        }
        if url.fragment().is_some() {
            return Err(bad("a fragment (#) is not allowed"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it names no host"));
        }
        if url.path().trim_matches('/').is_empty() {
            return Err(bad("it names no blob (the path is empty)"));
        }
        Ok(BlobUrl { url })
    }

    /// The URL without its query: what logs and errors show.
    pub fn shown(&self) -> String {
        crate::http::redact_query(&self.url)
    }

    fn with_comp(&self, comp: &str) -> url::Url {
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("comp", comp);
        url
    }
}

impl std::fmt::Debug for BlobUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// What `HEAD` says about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProperties {
    pub size: u64,
    /// `PageBlob`, `BlockBlob`, `AppendBlob`.
    pub blob_type: String,
}

/// Retry pacing: from `first`, doubling to at most `max`, jittered.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

/// One blob and the way to reach it.
#[derive(Clone)]
pub struct BlobClient {
    http: reqwest::Client,
    url: BlobUrl,
    credential: Credential,
    deadline: Duration,
    backoff: Backoff,
}

impl BlobClient {
    /// Checks the credential rules: a bearer token only over https to an allowed host.
    pub fn new(
        http: reqwest::Client,
        url: BlobUrl,
        credential: Credential,
        hosts: &StorageHosts,
        deadline: Duration,
    ) -> Result<Self, BlobError> {
        if let Credential::Bearer(_) = credential {
            if url.url.scheme() != "https" {
                return Err(BlobError::Url {
                    url: url.shown(),
                    reason: "a bearer token travels only over https (plain http is for public \
                             and SAS URLs)"
                        .into(),
                });
            }
            if !hosts.allows(&url.url) {
                let host = match url.url.port() {
                    Some(port) => format!("{}:{port}", url.url.host_str().unwrap_or_default()),
                    None => url.url.host_str().unwrap_or_default().to_owned(),
                };
                return Err(BlobError::HostNotAllowed {
                    url: url.shown(),
                    host,
                    allowed: hosts
                        .0
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(BlobClient {
            http,
            url,
            credential,
            deadline,
            backoff: Backoff::default(),
        })
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn url(&self) -> &BlobUrl {
        &self.url
    }

    /// Size and type (`HEAD`).
    pub async fn properties(&self) -> Result<BlobProperties, BlobError> {
        let response = self
            .send("HEAD", || self.http.head(self.url.url.clone()))
            .await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let size = header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| self.bad("HEAD", "no Content-Length"))?;
        Ok(BlobProperties {
            size,
            blob_type: header("x-ms-blob-type").unwrap_or_default(),
        })
    }

    /// Reads `len` bytes at `offset`: exactly that many, or an error.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let last = offset
            .checked_add(len as u64 - 1)
            .ok_or_else(|| self.bad("GET", "range past 2^64"))?;
        let range = format!("bytes={offset}-{last}");
        let started = Instant::now();
        loop {
            let response = self
                .send("GET", || {
                    self.http
                        .get(self.url.url.clone())
                        .header("x-ms-range", &range)
                })
                .await?;
            // Bounded by the length asked for: a longer body is refused as soon as it shows.
            let limit = crate::http::BodyLimit::new("blob range", len);
            match crate::http::read_body(response, limit).await {
                // Ciphertext: nothing to zeroize, so the buffer is taken out as is.
                Ok(mut body) if body.len() == len => return Ok(std::mem::take(&mut *body)),
                Ok(body) => {
                    return Err(
                        self.bad("GET", &format!("expected {len} bytes, got {}", body.len()))
                    )
                }
                // A body cut short by the network is transient; a wrong length is not.
                Err(crate::http::BodyError::Transport { reason, .. })
                    if started.elapsed() + self.backoff.first < self.deadline =>
                {
                    tracing::debug!(url = %self.url.shown(), %reason, "blob read cut short, retrying");
                    tokio::time::sleep(self.backoff.first).await;
                }
                Err(crate::http::BodyError::Transport { reason, .. }) => {
                    return Err(self.bad("GET", &format!("the body was cut short: {reason}")))
                }
                Err(crate::http::BodyError::TooLarge { .. }) => {
                    return Err(self.bad("GET", &format!("more than the {len} bytes asked for")))
                }
            }
        }
    }

    /// Writes whole pages at `offset` (Put Page, `x-ms-page-write: update`).
    pub async fn put_pages(&self, offset: u64, data: bytes::Bytes) -> Result<(), BlobError> {
        if offset % PAGE_SIZE != 0 || data.len() as u64 % PAGE_SIZE != 0 || data.is_empty() {
            return Err(BlobError::BadRequest {
                op: "Put Page",
                reason: format!(
                    "offset {offset} and length {} must be non-zero multiples of {PAGE_SIZE}",
                    data.len()
                ),
            });
        }
        if data.len() > MAX_PUT_PAGE {
            return Err(BlobError::BadRequest {
                op: "Put Page",
                reason: format!(
                    "{} bytes is more than {MAX_PUT_PAGE} in one call",
                    data.len()
                ),
            });
        }
        let range = format!("bytes={offset}-{}", offset + data.len() as u64 - 1);
        let url = self.url.with_comp("page");
        self.send("Put Page", || {
            self.http
                .put(url.clone())
                .header("x-ms-page-write", "update")
                .header("x-ms-range", &range)
                .header("content-length", data.len())
                .body(data.clone())
        })
        .await
        .map(drop)
    }

    /// Creates an empty page blob of `size` bytes (Put Blob). Without `overwrite`, an existing
    /// blob is left alone and the call fails with 409.
    pub async fn create_page_blob(&self, size: u64, overwrite: bool) -> Result<(), BlobError> {
        if size % PAGE_SIZE != 0 {
            return Err(BlobError::BadRequest {
                op: "Put Blob",
                reason: format!("a page blob's size must be a multiple of {PAGE_SIZE}, not {size}"),
            });
        }
        self.send("Put Blob", || {
            let request = self
                .http
                .put(self.url.url.clone())
                .header("x-ms-blob-type", "PageBlob")
                .header("x-ms-blob-content-length", size)
                .header("content-length", 0);
            if overwrite {
                request
            } else {
                request.header("if-none-match", "*")
            }
        })
        .await
        .map(drop)
    }

    fn bad(&self, op: &'static str, reason: &str) -> BlobError {
        BlobError::BadResponse {
            op,
            url: self.url.shown(),
            reason: reason.to_owned(),
        }
    }

    /// Sends until success, a final refusal or the deadline. Each attempt gets the time left.
    async fn send(
        &self,
        op: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BlobError> {
        let started = Instant::now();
        let mut delay = self.backoff.first;
        let mut token_refused = false;
        let mut last;
        loop {
            let left = self.deadline.saturating_sub(started.elapsed());
            let attempt = async {
                let mut request = build()
                    .header("x-ms-version", API_VERSION)
                    .header("x-ms-date", http_date());
                if let Credential::Bearer(identity) = &self.credential {
                    let token = identity
                        .token(STORAGE_RESOURCE)
                        .await
                        .map_err(|e| Attempt::Retry(format!("storage token: {e}")))?;
                    request = request.bearer_auth(token.expose());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| Attempt::Retry(crate::http::transport_reason(&e)))?;
                Ok::<_, Attempt>(response)
            };
            let outcome = match tokio::time::timeout(left, attempt).await {
                Err(_) => Err(Attempt::Retry("timed out".into())),
                Ok(outcome) => outcome,
            };
            last = match outcome {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let code = response
                        .headers()
                        .get("x-ms-error-code")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    // Drained (bounded) so the connection can be reused.
                    let _ = crate::http::read_error_body(response).await;
                    let refused_token = matches!(status.as_u16(), 401 | 403)
                        && matches!(self.credential, Credential::Bearer(_))
                        && !token_refused;
                    if refused_token {
                        // Revoked or rotated: one fresh token, then the refusal stands.
                        token_refused = true;
                        if let Credential::Bearer(identity) = &self.credential {
                            identity.forget(STORAGE_RESOURCE).await;
                        }
                        continue;
                    }
                    let transient = status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error();
                    if !transient {
                        return Err(BlobError::Status {
                            op,
                            url: self.url.shown(),
                            status: status.as_u16(),
                            code,
                        });
                    }
                    format!("HTTP {} {code}", status.as_u16())
                }
                Err(Attempt::Retry(reason)) => reason,
            };
            let jittered = delay / 2 + delay.mul_f64(jitter() / 2.0);
            if started.elapsed() + jittered >= self.deadline {
                return Err(BlobError::Deadline {
                    op,
                    url: self.url.shown(),
                    deadline: self.deadline,
                    last,
                });
            }
            tracing::debug!(op, url = %self.url.shown(), reason = %last, "retrying storage call");
            tokio::time::sleep(jittered).await;
            delay = (delay * 2).min(self.backoff.max);
        }
    }
}

enum Attempt {
    Retry(String),
}

/// A number in [0, 1) so that many clients do not retry in step.
fn jitter() -> f64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut byte);
    f64::from(byte[0]) / 256.0
}

/// `x-ms-date`: the RFC 1123 date HTTP uses.
fn http_date() -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_sas() {
        let url = BlobUrl::parse(
            "https://acct.blob.core.windows.net/c/fs.img?sv=2021-08-06&sig=SECRETSIG",
        )
        .unwrap();
        assert_eq!(url.shown(), "https://acct.blob.core.windows.net/c/fs.img");
        assert!(!format!("{url:?}").contains("SECRETSIG"));
        let page = url.with_comp("page");
        assert!(page.query().unwrap().contains("sig=SECRETSIG"));
        assert!(page.query().unwrap().ends_with("comp=page"));
        for (bad, why) in [
            ("ftp://a.example/c/b", "only https"),
            ("https://u:p@a.example/c/b", "user information"),
            ("https://a.example/", "no blob"),
            ("https://a.example/c/b#x", "fragment"),
            ("not a url?sig=SECRETSIG", "not a URL"),
        ] {
            let err = BlobUrl::parse(bad).err().unwrap().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("SECRETSIG"), "{err}");
        }
    }

    #[test]
    fn bearer_tokens_go_only_to_allowed_https_hosts() {
        let identity = Arc::new(IdentityProvider::new(
            reqwest::Client::new(),
            crate::azure::identity::IdentitySource::Static(crate::azure::Secret::new("t".into())),
            crate::http::RetryPolicy::default(),
        ));
        let hosts = StorageHosts::with(&["127.0.0.1:10000".into()]).unwrap();
        let client = |url: &str, credential: Credential| {
            BlobClient::new(
                reqwest::Client::new(),
                BlobUrl::parse(url).unwrap(),
                credential,
                &hosts,
                DEFAULT_DEADLINE,
            )
        };
        let bearer = || Credential::Bearer(Arc::clone(&identity));
        assert!(client("https://a.blob.core.windows.net/c/b", bearer()).is_ok());
        assert!(client("https://127.0.0.1:10000/acct/c/b", bearer()).is_ok());
        let err = client("https://evil.example/c/b", bearer())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--allow-storage-host evil.example"), "{err}");
        assert!(client("https://a.blob.core.windows.net.evil.example/c/b", bearer()).is_err());
        assert!(client("https://127.0.0.1:10001/acct/c/b", bearer()).is_err());
        let err = client("http://a.blob.core.windows.net/c/b", bearer())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("only over https"), "{err}");
        // Anonymous and SAS URLs go anywhere, http included.
        assert!(client("http://evil.example/c/b?sig=x", Credential::Anonymous).is_ok());
    }

    /// Answers every request with `response` (raw HTTP), then closes; counts the requests.
    async fn raw_server(
        response: &'static [u8],
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let _ = socket.write_all(response).await;
                let _ = socket.shutdown().await;
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn reads_return_exactly_the_range_asked_for_or_fail() {
        let read = |response: &'static [u8]| async move {
            let (addr, seen) = raw_server(response).await;
            let client = BlobClient::new(
                reqwest::Client::new(),
                BlobUrl::parse(&format!("http://{addr}/c/b")).unwrap(),
                Credential::Anonymous,
                &StorageHosts::default(),
                Duration::from_millis(600),
            )
            .unwrap()
            .with_backoff(Backoff {
                first: Duration::from_millis(50),
                max: Duration::from_millis(100),
            });
            let result = client.read(0, 8).await.map_err(|e| e.to_string());
            (result, seen.load(std::sync::atomic::Ordering::SeqCst))
        };
        let (body, _) =
            read(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 8\r\n\r\n12345678").await;
        assert_eq!(body.unwrap(), b"12345678");
        let (err, requests) =
            read(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 7\r\n\r\n1234567").await;
        assert!(err.unwrap_err().contains("expected 8 bytes, got 7"));
        assert_eq!(requests, 1, "a wrong length is not retried");
        let (err, _) =
            read(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 9\r\n\r\n123456789").await;
        assert!(err.unwrap_err().contains("more than the 8 bytes asked for"));
        let (err, _) = read(
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n\
              10\r\n0123456789abcdef\r\n0\r\n\r\n",
        )
        .await;
        assert!(err.unwrap_err().contains("more than the 8 bytes asked for"));
        // Cut short by the connection: retried until the deadline, then reported.
        let (err, requests) =
            read(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 8\r\n\r\n1234").await;
        let err = err.unwrap_err();
        assert!(err.contains("the body was cut short"), "{err}");
        assert!(requests > 1, "retried: {requests} requests");
    }

    #[test]
    fn dates_are_http_dates() {
        let date = http_date();
        assert!(date.ends_with(" GMT"), "{date}");
        assert_eq!(date.len(), "Sun, 06 Dec 2026 21:44:08 GMT".len(), "{date}");
    }
}
