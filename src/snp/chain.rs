//! Where the VCEK chain comes from, how it is cached, and the TCB-mismatch rule.
//!
//! Sources: THIM (the local IMDS endpoint of Azure hosts), Azure's certificate cache (AzCache),
//! AMD's KDS, and the security-context directory a confidential container is given (or the
//! legacy `UVM_*` variables). Each is a [`ChainSource`]; [`ChainCache`] keeps the last chain and
//! [`attest`] applies the refresh rule: if the report's reported_tcb differs from the cached
//! chain's TCB, refresh the chain, then the report, then fail naming both values.

use crate::env;
use crate::snp::attester::{fetch_report, Attester};
use crate::snp::cert::Cert;
use crate::snp::evidence::decode_b64;
use crate::snp::report::AttestationReport;
use crate::snp::verify::Chain;
use crate::snp::{Error, Result};
use serde::Deserialize;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tracing::Instrument;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub const DEFAULT_THIM_BASE: &str = "http://169.254.169.254";
pub const THIM_PATH: &str = "/metadata/THIM/amd/certification";
pub const DEFAULT_AZCACHE_ENDPOINT: &str = "americas.acccache.azure.net";
pub const DEFAULT_AZCACHE_TEE: &str = "SevSnpVM";
pub const DEFAULT_AZCACHE_API_VERSION: &str = "api-version=2020-10-15-preview";
pub const DEFAULT_KDS_ENDPOINT: &str = "https://kdsintf.amd.com/vcek/v1";
/// Where Kata puts the security context when `UVM_SECURITY_CONTEXT_DIR` is not set and no
/// `/security-context-*` directory exists.
pub const KATA_SECURITY_CONTEXT_DIR: &str = "/opt/confidential-containers/share/kata-containers";

/// The chain that endorses a report, plus what the platform said about it.
#[derive(Debug, Clone)]
pub struct Endorsement {
    pub chain: Chain,
    /// The TCB the chain certifies: THIM's `tcbm` when it says, else the VCEK's extensions.
    pub tcbm: u64,
    /// The same TCB as text for the SKR sidecar's `endorsed_tcb`: THIM's `tcbm` string exactly as
    /// THIM gave it, else 16 lower-case hex digits.
    pub tcbm_text: String,
    /// Azure's UVM reference info (COSE_Sign1), from the security context.
    pub uvm_reference_info: Option<Vec<u8>>,
}

/// One place a VCEK chain can be fetched from.
pub trait ChainSource: Send + Sync {
    /// Names the source and its endpoint in errors and start-up lines.
    fn describe(&self) -> String;

    fn fetch<'a>(&'a self, report: &'a AttestationReport) -> BoxFuture<'a, Result<Endorsement>>;
}

/// THIM's certification document (also the content of `host-amd-cert-base64`).
#[derive(Debug, Deserialize)]
pub struct ThimDocument {
    #[serde(rename = "vcekCert")]
    pub vcek_cert: String,
    #[serde(rename = "certificateChain")]
    pub certificate_chain: String,
    #[serde(default)]
    pub tcbm: String,
    #[serde(rename = "cacheControl", default)]
    pub cache_control: String,
}

impl ThimDocument {
    pub fn parse(json: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(json).map_err(|e| format!("not a THIM certification document: {e}"))
    }

    fn into_endorsement(
        self,
        reference_info: Option<Vec<u8>>,
    ) -> std::result::Result<Endorsement, String> {
        let mut certs = Cert::from_pem_bundle(self.vcek_cert.as_bytes())
            .map_err(|e| format!("vcekCert: {e}"))?;
        certs.extend(
            Cert::from_pem_bundle(self.certificate_chain.as_bytes())
                .map_err(|e| format!("certificateChain: {e}"))?,
        );
        let chain = Chain::from_certs(certs)?;
        let tcbm = if self.tcbm.is_empty() {
            certified_tcb(&chain)?
        } else {
            u64::from_str_radix(self.tcbm.trim(), 16)
                .map_err(|_| format!("tcbm {:?} is not a hex u64", self.tcbm))?
        };
        let tcbm_text = if self.tcbm.is_empty() {
            format!("{tcbm:016x}")
        } else {
            self.tcbm.trim().to_owned()
        };
        Ok(Endorsement {
            chain,
            tcbm,
            tcbm_text,
            uvm_reference_info: reference_info,
        })
    }
}

fn certified_tcb(chain: &Chain) -> std::result::Result<u64, String> {
    let ext = chain.signer.sev_extensions().map_err(|e| e.to_string())?;
    Ok(ext.tcb_raw(chain.signer.product().as_deref() == Some("Turin")))
}

fn endorsement_from_pem(pem: &[u8]) -> std::result::Result<Endorsement, String> {
    let certs = Cert::from_pem_bundle(pem).map_err(|e| e.to_string())?;
    let chain = Chain::from_certs(certs)?;
    let tcbm = certified_tcb(&chain)?;
    Ok(Endorsement {
        chain,
        tcbm,
        tcbm_text: format!("{tcbm:016x}"),
        uvm_reference_info: None,
    })
}

async fn get_bytes(
    client: &reqwest::Client,
    url: &str,
    metadata_header: bool,
) -> std::result::Result<Vec<u8>, String> {
    let build = || {
        let request = client.get(url);
        if metadata_header {
            request.header("Metadata", "true")
        } else {
            request
        }
    };
    let response = crate::http::send_with_retry(build, &crate::http::RetryPolicy::default())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    // The host answers THIM: it must not make aasp hold what it likes.
    let body = crate::http::read_body(response, crate::http::limits::CERT_CHAIN)
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_vec())
}

/// The Azure host's THIM endpoint.
pub struct Thim {
    pub client: reqwest::Client,
    pub base: String,
}

impl Thim {
    /// The certification URL. The base may be a bare host (IMDS is plain HTTP) or, as the SKR
    /// sidecar's `LocalTHIM` endpoint is written, already include the path.
    pub fn url(&self) -> String {
        let base = self.base.trim().trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        if base.ends_with(THIM_PATH) {
            base
        } else {
            format!("{base}{THIM_PATH}")
        }
    }
}

impl ChainSource for Thim {
    fn describe(&self) -> String {
        format!("THIM {}", self.base)
    }

    fn fetch<'a>(&'a self, _report: &'a AttestationReport) -> BoxFuture<'a, Result<Endorsement>> {
        Box::pin(async move {
            let url = self.url();
            let body = get_bytes(&self.client, &url, true)
                .await
                .map_err(|r| self.error(r))?;
            ThimDocument::parse(&body)
                .and_then(|doc| doc.into_endorsement(None))
                .map_err(|r| self.error(r))
        })
    }
}

/// Azure's certificate cache: `https://{endpoint}/{tee}/certificates/{chip_id}/{tcb}?{api}`.
pub struct AzCache {
    pub client: reqwest::Client,
    pub endpoint: String,
    pub tee_type: String,
    pub api_version: String,
}

impl AzCache {
    pub fn url(&self, report: &AttestationReport) -> String {
        format!(
            "{}/{}/certificates/{}/{:x}?{}",
            with_scheme(&self.endpoint),
            self.tee_type,
            hex::encode(report.chip_id),
            report.reported_tcb,
            self.api_version
        )
    }
}

impl ChainSource for AzCache {
    fn describe(&self) -> String {
        format!("AzCache {}", with_scheme(&self.endpoint))
    }

    fn fetch<'a>(&'a self, report: &'a AttestationReport) -> BoxFuture<'a, Result<Endorsement>> {
        Box::pin(async move {
            let body = get_bytes(&self.client, &self.url(report), false)
                .await
                .map_err(|r| self.error(r))?;
            endorsement_from_pem(&body).map_err(|r| self.error(r))
        })
    }
}

/// AMD's Key Distribution Service: the VCEK by chip id and TCB, and the product's ASK/ARK.
pub struct Kds {
    pub client: reqwest::Client,
    pub endpoint: String,
    /// `Milan`, `Genoa`, `Turin`; derived from the report's CPUID when not set.
    pub product: Option<String>,
}

impl Kds {
    pub fn product_for(&self, report: &AttestationReport) -> String {
        self.product
            .clone()
            .unwrap_or_else(|| product_from_cpuid(report).to_owned())
    }

    pub fn vcek_url(&self, report: &AttestationReport) -> String {
        let product = self.product_for(report);
        let tcb = report.tcb(report.reported_tcb);
        let mut url = format!(
            "{}/{product}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            with_scheme(&self.endpoint),
            hex::encode(report.chip_id),
            tcb.bootloader,
            tcb.tee,
            tcb.snp,
            tcb.microcode
        );
        if let Some(fmc) = tcb.fmc {
            url.push_str(&format!("&fmcSPL={fmc}"));
        }
        url
    }
}

/// Milan is family 0x19 models 0x00–0x0F, Genoa 0x10–0x1F and 0xA0–0xAF, Turin family 0x1A.
/// Version 2 reports carry no CPUID: they come from Milan or Genoa firmware, and Milan is the
/// common case.
fn product_from_cpuid(report: &AttestationReport) -> &'static str {
    let [family, model, _] = report.cpuid;
    match (report.cpu_family(), family, model) {
        (Some(_), 0x1A, _) => "Turin",
        (Some(_), 0x19, 0x10..=0x1F | 0xA0..=0xAF) => "Genoa",
        _ => "Milan",
    }
}

impl ChainSource for Kds {
    fn describe(&self) -> String {
        format!("AMD KDS {}", with_scheme(&self.endpoint))
    }

    fn fetch<'a>(&'a self, report: &'a AttestationReport) -> BoxFuture<'a, Result<Endorsement>> {
        Box::pin(async move {
            if report.signing_key() != crate::snp::report::SigningKey::Vcek {
                return Err(
                    self.error("the report is not VCEK-signed; KDS serves VCEKs only".into())
                );
            }
            let vcek = get_bytes(&self.client, &self.vcek_url(report), false)
                .await
                .map_err(|r| self.error(r))?;
            let chain_url = format!(
                "{}/{}/cert_chain",
                with_scheme(&self.endpoint),
                self.product_for(report)
            );
            let mut pem = Cert::from_der(&vcek)
                .map_err(|e| self.error(format!("VCEK: {e}")))?
                .to_pem()
                .into_bytes();
            pem.extend(
                get_bytes(&self.client, &chain_url, false)
                    .await
                    .map_err(|r| self.error(r))?,
            );
            endorsement_from_pem(&pem).map_err(|r| self.error(r))
        })
    }
}

/// The security context Azure mounts into a confidential container, or the legacy `UVM_*`
/// variables that carried the same files.
pub struct SecurityContext {
    pub dir: Option<PathBuf>,
}

impl SecurityContext {
    /// `$UVM_SECURITY_CONTEXT_DIR`, else the first `/security-context-*`, else Kata's directory;
    /// `None` when none exists (the legacy variables may still be set).
    pub fn locate() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(env::UVM_SECURITY_CONTEXT_DIR) {
            return Some(PathBuf::from(dir));
        }
        let mut candidates: Vec<PathBuf> = std::fs::read_dir("/")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("security-context-"))
            })
            .collect();
        candidates.sort();
        candidates
            .into_iter()
            .next()
            .or_else(|| Some(PathBuf::from(KATA_SECURITY_CONTEXT_DIR)).filter(|p| p.is_dir()))
    }

    /// A security-context file's decoded content: from the directory, else the legacy variable.
    pub fn read(
        &self,
        file: &str,
        legacy_var: &str,
    ) -> std::result::Result<Option<Vec<u8>>, String> {
        let encoded = match self
            .dir
            .as_ref()
            .map(|d| std::fs::read_to_string(d.join(file)))
        {
            Some(Ok(text)) => Some(text),
            _ => std::env::var(legacy_var).ok(),
        };
        encoded
            .map(|text| decode_b64(file, &text).map_err(|e| e.to_string()))
            .transpose()
    }

    pub fn security_policy(&self) -> std::result::Result<Option<Vec<u8>>, String> {
        self.read("security-policy-base64", env::UVM_SECURITY_POLICY)
    }
}

impl ChainSource for SecurityContext {
    fn describe(&self) -> String {
        match &self.dir {
            Some(dir) => format!("security context {}", dir.display()),
            None => format!(
                "security context variables {}",
                env::UVM_HOST_AMD_CERTIFICATE
            ),
        }
    }

    fn fetch<'a>(&'a self, _report: &'a AttestationReport) -> BoxFuture<'a, Result<Endorsement>> {
        Box::pin(async move {
            let thim = self
                .read("host-amd-cert-base64", env::UVM_HOST_AMD_CERTIFICATE)
                .map_err(|r| self.error(r))?
                .ok_or_else(|| self.error("host-amd-cert-base64 is missing".into()))?;
            let reference = self
                .read("reference-info-base64", env::UVM_REFERENCE_INFO)
                .map_err(|r| self.error(r))?;
            ThimDocument::parse(&thim)
                .and_then(|doc| doc.into_endorsement(reference))
                .map_err(|r| self.error(r))
        })
    }
}

trait NamedSource: ChainSource {
    fn error(&self, reason: String) -> Error {
        Error::ChainSource {
            source_name: self.describe(),
            reason,
        }
    }
}

impl<T: ChainSource> NamedSource for T {}

fn with_scheme(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.starts_with("https://") || endpoint.starts_with("http://") {
        endpoint.to_owned()
    } else {
        format!("https://{endpoint}")
    }
}

/// Keeps the last chain a source returned. Fetches are serialized, so concurrent first callers
/// share one upstream request.
pub struct ChainCache {
    source: Box<dyn ChainSource>,
    cached: tokio::sync::Mutex<Option<Arc<Endorsement>>>,
}

impl ChainCache {
    pub fn new(source: Box<dyn ChainSource>) -> Self {
        ChainCache {
            source,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    pub async fn get(&self, report: &AttestationReport) -> Result<Arc<Endorsement>> {
        let mut cached = self.cached.lock().await;
        if let Some(endorsement) = cached.as_ref() {
            return Ok(Arc::clone(endorsement));
        }
        let fresh = Arc::new(self.source.fetch(report).await?);
        *cached = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    pub async fn refresh(&self, report: &AttestationReport) -> Result<Arc<Endorsement>> {
        let mut cached = self.cached.lock().await;
        let fresh = Arc::new(self.source.fetch(report).await?);
        *cached = Some(Arc::clone(&fresh));
        Ok(fresh)
    }
}

/// A report together with the chain that endorses it.
#[derive(Debug, Clone)]
pub struct Attested {
    pub report: AttestationReport,
    pub raw: Vec<u8>,
    pub endorsement: Arc<Endorsement>,
}

/// Gets a report for `report_data` and its chain, applying the TCB refresh rule.
pub async fn attest(
    attester: &Arc<dyn Attester>,
    chains: &ChainCache,
    report_data: [u8; 64],
) -> Result<Attested> {
    let (report, raw) = fetch_report(attester, report_data)
        .instrument(tracing::debug_span!("report"))
        .await?;
    let endorsement = chains
        .get(&report)
        .instrument(tracing::debug_span!("chain"))
        .await?;
    if endorsement.tcbm == report.reported_tcb {
        return Ok(Attested {
            report,
            raw,
            endorsement,
        });
    }
    tracing::info!(
        reported_tcb = format_args!("{:016x}", report.reported_tcb),
        cached_tcbm = format_args!("{:016x}", endorsement.tcbm),
        "reported TCB differs from the cached chain; refreshing the chain"
    );
    let endorsement = chains.refresh(&report).await?;
    if endorsement.tcbm == report.reported_tcb {
        return Ok(Attested {
            report,
            raw,
            endorsement,
        });
    }
    let (report, raw) = fetch_report(attester, report_data).await?;
    if endorsement.tcbm == report.reported_tcb {
        return Ok(Attested {
            report,
            raw,
            endorsement,
        });
    }
    Err(Error::TcbMismatch {
        reported: report.reported_tcb,
        certified: endorsement.tcbm,
    })
}

/// `SkrSideCarArgs` / `AaspSideCarArgs`: standard base64 of this JSON, the configuration format
/// of Microsoft's SKR sidecar, accepted as is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SideCarArgs {
    #[serde(default)]
    pub certcache: Option<CertCacheArgs>,
    #[serde(default)]
    pub identity: Option<IdentityArgs>,
    #[serde(default)]
    pub maaconfig: Option<MaaArgs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CertCacheArgs {
    #[serde(default)]
    pub endpoint_type: String,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub tee_type: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub client_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IdentityArgs {
    #[serde(default)]
    pub client_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MaaArgs {
    #[serde(default)]
    pub user_agent: String,
}

impl SideCarArgs {
    pub fn parse(b64: &str) -> std::result::Result<Self, String> {
        use base64::Engine;
        let json = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("not standard base64: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("not the sidecar JSON: {e}"))
    }

    /// From `SkrSideCarArgs`, else `AaspSideCarArgs`; `Ok(None)` when neither is set.
    pub fn from_env() -> std::result::Result<Option<Self>, String> {
        for var in [env::SKR_SIDECAR_ARGS, env::AASP_SIDECAR_ARGS] {
            // Set but empty means unset, as the sidecar's skr.sh treats it.
            if let Some(value) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                return Self::parse(&value)
                    .map(Some)
                    .map_err(|e| format!("{var}: {e}"));
            }
        }
        Ok(None)
    }
}

/// `--cert-source`: where the VCEK chain comes from. (Plain comments on the variants, as on
/// `AttesterKind`; the option's help names them.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertSourceKind {
    // The sidecar args' certcache if set, else the security context if present, else THIM.
    Auto,
    // The Azure host's THIM endpoint (`--cert-endpoint` overrides its base URL).
    Thim,
    // Azure's certificate cache (`--cert-endpoint` host).
    Azcache,
    // AMD's KDS (`--cert-endpoint` base URL).
    Kds,
    // The security-context directory or the legacy `UVM_*` variables.
    SecurityContext,
}

/// Builds the chain source the configuration asks for.
pub fn source(
    kind: CertSourceKind,
    endpoint: Option<&str>,
    sidecar: Option<&SideCarArgs>,
    security_context_dir: Option<&Path>,
    client: &reqwest::Client,
) -> Box<dyn ChainSource> {
    let cache = sidecar.and_then(|s| s.certcache.as_ref());
    let kind = match kind {
        CertSourceKind::Auto => match cache.map(|c| c.endpoint_type.to_ascii_lowercase()) {
            Some(t) if t == "amd" => CertSourceKind::Kds,
            Some(t) if t == "azcache" => CertSourceKind::Azcache,
            Some(t) if t == "localthim" => CertSourceKind::Thim,
            _ if security_context_dir.is_some() || SecurityContext::locate().is_some() => {
                CertSourceKind::SecurityContext
            }
            _ => CertSourceKind::Thim,
        },
        explicit => explicit,
    };
    let configured = |default: &str| {
        endpoint
            .map(str::to_owned)
            .or_else(|| cache.map(|c| c.endpoint.clone()).filter(|e| !e.is_empty()))
            .unwrap_or_else(|| default.to_owned())
    };
    let client = client.clone();
    match kind {
        CertSourceKind::Kds => Box::new(Kds {
            client,
            endpoint: configured(DEFAULT_KDS_ENDPOINT),
            product: None,
        }),
        CertSourceKind::Azcache => Box::new(AzCache {
            client,
            endpoint: configured(DEFAULT_AZCACHE_ENDPOINT),
            tee_type: cache
                .map(|c| c.tee_type.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_AZCACHE_TEE.into()),
            api_version: cache
                .map(|c| c.api_version.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_AZCACHE_API_VERSION.into()),
        }),
        CertSourceKind::SecurityContext => Box::new(SecurityContext {
            dir: security_context_dir
                .map(Path::to_path_buf)
                .or_else(SecurityContext::locate),
        }),
        CertSourceKind::Thim | CertSourceKind::Auto => Box::new(Thim {
            client,
            base: configured(DEFAULT_THIM_BASE),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thim_url_forms() {
        let thim = |base: &str| {
            Thim {
                client: reqwest::Client::new(),
                base: base.into(),
            }
            .url()
        };
        let expected = "http://169.254.169.254/metadata/THIM/amd/certification";
        assert_eq!(thim("http://169.254.169.254"), expected);
        assert_eq!(thim("169.254.169.254"), expected);
        assert_eq!(
            thim("169.254.169.254/metadata/THIM/amd/certification"),
            expected
        );
        assert_eq!(
            thim("https://127.0.0.1:8443/"),
            "https://127.0.0.1:8443/metadata/THIM/amd/certification"
        );
    }
}
