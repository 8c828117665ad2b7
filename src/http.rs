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
