//! The SNP attestation core: the report, the devices that produce it, the certificate chain that
//! endorses it, and the verification that ties them together.
//!
//! Owns: the report layout (`report`), the `Attester` trait and its devices (`device`, the only
//! `unsafe` code, and `sim`), certificate sources and their cache (`chain`), AMD certificates
//! (`cert`) and verification against pinned roots (`verify`). Must not know HTTP servers, gRPC
//! or Azure's token and key formats.

pub mod attester;
pub mod cert;
pub mod chain;
mod codec;
pub mod device;
pub mod evidence;
pub mod initdata;
pub mod report;
pub mod sim;
pub mod verify;

pub use attester::{Attester, AttesterKind};
pub use report::AttestationReport;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Cert(#[from] cert::CertError),
    #[error("no SNP guest device: tried {}; run inside an SEV-SNP guest, or use `--attester sim` for the local simulator", tried.join(", "))]
    NoDevice { tried: Vec<String> },
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
    #[error("SNP firmware refused the report request (status {status:#x})")]
    Firmware { status: u32 },
    #[error("simulator state in {dir}: {reason}")]
    Simulator { dir: PathBuf, reason: String },
    #[error("certificate source {source_name}: {reason}")]
    ChainSource { source_name: String, reason: String },
    #[error(
        "the VCEK certifies TCB {certified:016x} but the report says reported_tcb {reported:016x}, \
         even after refreshing the certificate chain and the report; the host's certificate cache \
         is stale or the platform's TCB changed"
    )]
    TcbMismatch { reported: u64, certified: u64 },
    #[error("evidence document: {0}")]
    Evidence(String),
    #[error(transparent)]
    Verification(#[from] verify::VerificationFailed),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<der::Error> for Error {
    fn from(e: der::Error) -> Self {
        Error::Cert(cert::CertError::Der(e))
    }
}
