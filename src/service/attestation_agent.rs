//! The confidential-containers attestation agent: evidence, tokens, init-data binding.

use super::{rpc, Backend, ServiceError};
use crate::proto::attestation_agent as pb;
use crate::snp::evidence::coco_report_data;
use crate::snp::initdata::{check_host_data, BindError};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Agent(pub Arc<Backend>);

/// The token types GetToken serves: `kbs` and `coco_as` (upstream's, from the configured Trustee
/// KBS or attestation service) and `maa` (aasp's extension: an MAA JWT for the report).
const TOKEN_TYPES: [&str; 3] = ["kbs", "coco_as", "maa"];

/// What GetTeeType answers. The simulator says `snp` too: its evidence is SNP evidence, and a
/// verifier told `sample` would parse it as upstream's sample attester's document and fail.
pub const TEE_TYPE: &str = "snp";

/// Checks an init-data digest against HOST_DATA under the initdata rule (a SHA-384/512 digest
/// is cut to HOST_DATA's 32 bytes, a shorter one zero-padded: kata-types `adjust_digest`, the
/// upstream SNP attester's `bind_init_data`), in constant time. Shared by BindInitData and the
/// attestation-agent personality's `--initdata-toml` check.
pub async fn bind_init_data(
    backend: &Backend,
    digest: &[u8],
) -> Result<pb::BindInitDataResponse, ServiceError> {
    // Upstream would pad an empty digest to zeros and match a launch without init-data; an
    // empty digest binds nothing, so it is refused instead.
    if digest.is_empty() {
        return Err(ServiceError::invalid(
            "Digest is empty; it is the init-data digest (SHA-256, -384 or -512)",
        ));
    }
    match check_host_data(backend.provisioner.attester(), digest).await {
        Ok(()) => Ok(pb::BindInitDataResponse {}),
        Err(mismatch @ BindError::Mismatch { .. }) => {
            Err(ServiceError::PermissionDenied(mismatch.to_string()))
        }
        Err(BindError::Report(e)) => Err(e.into()),
    }
}

/// GetToken("kbs"): `{"token": JWT, "tee_keypair": PEM}` from the configured Trustee KBS, as
/// upstream's KBS token getter answers. The KBS backend plugs in here, and only here.
async fn kbs_token(backend: &Backend) -> Result<Vec<u8>, ServiceError> {
    // The reply holds the TEE's private key: for local callers only, as upstream's.
    let reply = backend.provisioner.kbs_token().await?;
    Ok(reply.0.to_vec())
}

async fn get_token(backend: &Backend, token_type: &str) -> Result<Vec<u8>, ServiceError> {
    match token_type {
        "kbs" => kbs_token(backend).await,
        // Upstream's reply is the AS's token text itself.
        "coco_as" => {
            let token = backend.provisioner.coco_as_token().await?;
            Ok(token.expose().as_bytes().to_vec())
        }
        // An empty type keeps the MAA token older aasp clients asked for without one.
        "maa" | "" => {
            let token = backend
                .provisioner
                .token_for(backend.default_maa()?, b"{}")
                .await?;
            Ok(token.jwt.expose().as_bytes().to_vec())
        }
        other => Err(ServiceError::invalid(format!(
            "token type {other:?} is not supported; supported: {TOKEN_TYPES:?}"
        ))),
    }
}

#[tonic::async_trait]
impl pb::attestation_agent_service_server::AttestationAgentService for Agent {
    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        rpc("attestation_agent/GetEvidence", async {
            // Upstream's SNP attester: RuntimeData is the report_data itself, zero-padded.
            let runtime_data = &request.get_ref().runtime_data;
            let report_data = coco_report_data(runtime_data).ok_or_else(|| {
                ServiceError::invalid(format!(
                    "RuntimeData is {} bytes; an SNP report binds at most 64",
                    runtime_data.len()
                ))
            })?;
            Ok(pb::GetEvidenceResponse {
                evidence: self.0.provisioner.coco_evidence(report_data).await?,
            })
        })
        .await
    }

    async fn get_additional_evidence(
        &self,
        _request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::GetEvidenceResponse>, Status> {
        // SNP is the only TEE here: there is no additional device to attest.
        rpc("attestation_agent/GetAdditionalEvidence", async {
            Ok(pb::GetEvidenceResponse {
                evidence: Vec::new(),
            })
        })
        .await
    }

    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        rpc("attestation_agent/GetToken", async {
            Ok(pb::GetTokenResponse {
                token: get_token(&self.0, &request.get_ref().token_type).await?,
            })
        })
        .await
    }

    async fn extend_runtime_measurement(
        &self,
        _request: Request<pb::ExtendRuntimeMeasurementRequest>,
    ) -> Result<Response<pb::ExtendRuntimeMeasurementResponse>, Status> {
        rpc("attestation_agent/ExtendRuntimeMeasurement", async {
            Ok(pb::ExtendRuntimeMeasurementResponse {
                result: pb::RuntimeMeasurementResult::NotSupported.into(),
            })
        })
        .await
    }

    async fn bind_init_data(
        &self,
        request: Request<pb::BindInitDataRequest>,
    ) -> Result<Response<pb::BindInitDataResponse>, Status> {
        rpc(
            "attestation_agent/BindInitData",
            bind_init_data(&self.0, &request.get_ref().digest),
        )
        .await
    }

    async fn get_tee_type(
        &self,
        _request: Request<pb::GetTeeTypeRequest>,
    ) -> Result<Response<pb::GetTeeTypeResponse>, Status> {
        rpc("attestation_agent/GetTeeType", async {
            Ok(pb::GetTeeTypeResponse {
                tee: TEE_TYPE.into(),
            })
        })
        .await
    }

    async fn get_additional_tees(
        &self,
        _request: Request<pb::GetAdditionalTeesRequest>,
    ) -> Result<Response<pb::GetAdditionalTeesResponse>, Status> {
        rpc("attestation_agent/GetAdditionalTees", async {
            Ok(pb::GetAdditionalTeesResponse {
                additional_tees: Vec::new(),
            })
        })
        .await
    }
}
