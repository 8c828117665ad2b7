//! What kind of failure an error is, whichever backend it came from: the one classification the
//! transports (`service`) map to gRPC and HTTP statuses, so that they know no backend's errors.

use super::Error;
use crate::azure::Error as AzureError;
use crate::kbs::Error as KbsError;
use crate::snp::Error as SnpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's request is malformed.
    InvalidArgument,
    /// Attestation or policy refused.
    PermissionDenied,
    NotFound,
    /// This process cannot do it as configured (no device, no backend).
    FailedPrecondition,
    /// An upstream is down or busy: try again later.
    Unavailable,
    /// This process is at a limit (too many releases under way).
    ResourceExhausted,
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::NoMaa { .. } => ErrorKind::InvalidArgument,
            Error::NoTransferKey(_) => ErrorKind::Internal,
            Error::NotConfigured(_) => ErrorKind::FailedPrecondition,
            // A backend host the operator did not allow: a refusal, whatever the host would say.
            Error::NotAllowed(_) => ErrorKind::PermissionDenied,
            Error::Busy(_) => ErrorKind::ResourceExhausted,
            Error::Stopped(_) => ErrorKind::Unavailable,
            Error::Shared(inner) => inner.kind(),
            Error::Snp(e) => snp_kind(e),
            Error::Azure(e) => azure_kind(e),
            Error::Kbs(e) => kbs_kind(e),
        }
    }
}

fn snp_kind(e: &SnpError) -> ErrorKind {
    match e {
        SnpError::NoDevice { .. } | SnpError::Simulator { .. } => ErrorKind::FailedPrecondition,
        SnpError::Device { .. } | SnpError::Firmware { .. } | SnpError::TcbMismatch { .. } => {
            ErrorKind::FailedPrecondition
        }
        SnpError::ChainSource { .. } => ErrorKind::Unavailable,
        SnpError::Verification(_) => ErrorKind::PermissionDenied,
        SnpError::Report(_) | SnpError::Cert(_) | SnpError::Evidence(_) => ErrorKind::Internal,
    }
}

fn azure_kind(e: &AzureError) -> ErrorKind {
    match e {
        // A certificate that does not verify is configuration (a trusted CA), not an outage.
        AzureError::Transport(e) if e.trust_failure => ErrorKind::FailedPrecondition,
        AzureError::Transport(_)
        | AzureError::Body(_)
        | AzureError::Identity(_)
        | AzureError::BadResponse { .. } => ErrorKind::Unavailable,
        AzureError::Upstream { status, .. }
            if *status >= 500 || *status == 429 || *status == 408 =>
        {
            ErrorKind::Unavailable
        }
        AzureError::Upstream { .. } => ErrorKind::Internal,
        AzureError::Refused { service: "MAA", .. } => ErrorKind::PermissionDenied,
        AzureError::Refused { status: 404, .. } => ErrorKind::NotFound,
        AzureError::Refused { status: 400, .. } => ErrorKind::InvalidArgument,
        AzureError::Refused { .. } => ErrorKind::PermissionDenied,
        // A response that does not verify cannot be trusted: treat it as a refusal.
        AzureError::Jws(_) => ErrorKind::PermissionDenied,
        AzureError::Config(_) => ErrorKind::InvalidArgument,
        AzureError::Key(_) | AzureError::Unwrap(_) => ErrorKind::InvalidArgument,
    }
}

fn kbs_kind(e: &KbsError) -> ErrorKind {
    match e {
        KbsError::Transport(e) if e.trust_failure => ErrorKind::FailedPrecondition,
        KbsError::Transport(_)
        | KbsError::Body(_)
        | KbsError::Upstream { .. }
        | KbsError::BadResponse { .. } => ErrorKind::Unavailable,
        // Trustee answers every refusal (evidence, policy, session) with 401.
        KbsError::Refused { .. } => ErrorKind::PermissionDenied,
        KbsError::NotFound(_) => ErrorKind::NotFound,
        // A resource that does not decrypt with our key cannot be trusted.
        KbsError::Jwe(_) => ErrorKind::PermissionDenied,
        KbsError::InvalidUri(_) => ErrorKind::InvalidArgument,
        KbsError::Evidence(_) => ErrorKind::FailedPrecondition,
        KbsError::Key(_) => ErrorKind::Internal,
        KbsError::Config(_) => ErrorKind::FailedPrecondition,
    }
}
