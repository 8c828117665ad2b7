//! The one place errors become gRPC statuses (and, for REST, HTTP statuses): classified by what
//! the caller can do about them, with a message that says what to fix and no secret in it.

use crate::provision::{Error as ProvisionError, ErrorKind};
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
            // Each backend's errors are classified once, in provision.
            ServiceError::Provision(e) => code_of(e.kind()),
        }
    }
}

fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
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
    use crate::azure::Error as AzureError;
    use crate::kbs::Error as KbsError;

    fn kbs(e: KbsError) -> ServiceError {
        ServiceError::Provision(ProvisionError::Kbs(e))
    }

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
                kbs(KbsError::Refused {
                    service: "KBS",
                    url: "https://kbs.example".into(),
                    status: 401,
                    message: "PolicyDeny".into(),
                }),
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
            (
                kbs(KbsError::Upstream {
                    service: "KBS",
                    url: "https://kbs.example".into(),
                    status: 503,
                    message: "busy".into(),
                }),
                Code::Unavailable,
                500,
            ),
            (
                kbs(KbsError::NotFound("kbs:///a/b/c".into())),
                Code::NotFound,
                400,
            ),
            (
                kbs(KbsError::Jwe("tag".into())),
                Code::PermissionDenied,
                403,
            ),
            (
                kbs(KbsError::InvalidUri("x".into())),
                Code::InvalidArgument,
                400,
            ),
            (
                ServiceError::Provision(ProvisionError::NotConfigured("no KBS".into())),
                Code::FailedPrecondition,
                500,
            ),
        ];
        for (error, code, http) in cases {
            assert_eq!(error.code(), code, "{error}");
            assert_eq!(http_status(error.code()), http, "{error}");
        }
    }
}
