//! The one place errors become gRPC statuses (and, for REST, HTTP statuses): classified by what
//! the caller can do about them, with a message that says what to fix and no secret in it.

use crate::azure::Error as AzureError;
use crate::provision::Error as ProvisionError;
use crate::snp::Error as SnpError;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Attestation or policy refused the request.
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

impl From<SnpError> for ServiceError {
    fn from(e: SnpError) -> Self {
        ServiceError::Provision(ProvisionError::Snp(e))
    }
}

impl ServiceError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument(message.into())
    }

    pub fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::Provision(e) => provision_code(e),
        }
    }
}

fn provision_code(e: &ProvisionError) -> Code {
    match e {
        ProvisionError::Invalid(_) => Code::InvalidArgument,
        ProvisionError::NoTransferKey(_) => Code::Internal,
        // A backend host the operator did not allow: a refusal, whatever the host would say.
        ProvisionError::NotAllowed(_) => Code::PermissionDenied,
        ProvisionError::Busy(_) => Code::ResourceExhausted,
        ProvisionError::Shared(inner) => provision_code(inner),
        ProvisionError::Snp(e) => snp_code(e),
        ProvisionError::Azure(e) => azure_code(e),
    }
}

fn snp_code(e: &SnpError) -> Code {
    match e {
        SnpError::NoDevice { .. } | SnpError::Simulator { .. } => Code::FailedPrecondition,
        SnpError::Device { .. } | SnpError::Firmware { .. } | SnpError::TcbMismatch { .. } => {
            Code::FailedPrecondition
        }
        SnpError::ChainSource { .. } => Code::Unavailable,
        SnpError::Verification(_) => Code::PermissionDenied,
        SnpError::Report(_) | SnpError::Cert(_) | SnpError::Evidence(_) => Code::Internal,
    }
}

fn azure_code(e: &AzureError) -> Code {
    match e {
        AzureError::Transport(_) | AzureError::Identity(_) | AzureError::BadResponse { .. } => {
            Code::Unavailable
        }
        AzureError::Upstream { status, .. }
            if *status >= 500 || *status == 429 || *status == 408 =>
        {
            Code::Unavailable
        }
        AzureError::Upstream { .. } => Code::Internal,
        AzureError::Refused { service: "MAA", .. } => Code::PermissionDenied,
        AzureError::Refused { status: 404, .. } => Code::NotFound,
        AzureError::Refused { status: 400, .. } => Code::InvalidArgument,
        AzureError::Refused { .. } => Code::PermissionDenied,
        // A response that does not verify cannot be trusted: treat it as a refusal.
        AzureError::Jws(_) => Code::PermissionDenied,
        AzureError::Config(_) => Code::InvalidArgument,
        AzureError::Key(_) | AzureError::Unwrap(_) => Code::InvalidArgument,
    }
}

impl ServiceError {
    /// The message a client sees (and the log records): bounded whatever the caller sent.
    pub fn message(&self) -> String {
        crate::echo::limit(&self.to_string())
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        tonic::Status::new(e.code(), e.message())
    }
}

/// The HTTP status of the same classification, for the REST API.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::NotFound => 400,
        Code::PermissionDenied | Code::Unauthenticated => 403,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(service: &'static str, status: u16) -> ServiceError {
        ServiceError::Provision(ProvisionError::Azure(AzureError::Refused {
            service,
            url: "https://upstream.example".into(),
            status,
            message: "no".into(),
        }))
    }

    #[test]
    fn each_kind_of_failure_gets_its_code_and_http_status() {
        let cases = [
            (
                ServiceError::invalid("bad packet"),
                Code::InvalidArgument,
                400,
            ),
            (
                ServiceError::Provision(ProvisionError::Invalid("runtime data".into())),
                Code::InvalidArgument,
                400,
            ),
            (refused("MAA", 400), Code::PermissionDenied, 403),
            (refused("KMS", 403), Code::PermissionDenied, 403),
            (refused("KMS", 404), Code::NotFound, 400),
            (
                ServiceError::Provision(ProvisionError::Azure(AzureError::Upstream {
                    service: "KMS",
                    url: "https://upstream.example".into(),
                    status: 503,
                    message: "busy".into(),
                })),
                Code::Unavailable,
                500,
            ),
            (
                ServiceError::Provision(ProvisionError::NoTransferKey("generation failed".into())),
                Code::Internal,
                500,
            ),
            (
                ServiceError::Provision(ProvisionError::NotAllowed("rogue.example".into())),
                Code::PermissionDenied,
                403,
            ),
            (
                ServiceError::Provision(ProvisionError::Shared(std::sync::Arc::new(
                    ProvisionError::Azure(AzureError::Refused {
                        service: "KMS",
                        url: "https://upstream.example".into(),
                        status: 404,
                        message: "no such key".into(),
                    }),
                ))),
                Code::NotFound,
                400,
            ),
        ];
        for (error, code, http) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(http_status(error.code()), http, "{error}");
        }
    }
}
