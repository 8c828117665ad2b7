//! The confidential-containers attestation agent: evidence, tokens, init-data binding.

use super::{rpc, Backend, ServiceError};
use crate::proto::attestation_agent as pb;
use crate::snp::evidence::coco_report_data;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Agent(pub Arc<Backend>);

/// The token types GetToken serves.
const TOKEN_TYPES: [&str; 1] = ["maa"];

async fn bind_init_data(
    backend: &Backend,
    digest: &[u8],
) -> Result<pb::BindInitDataResponse, ServiceError> {
    // Never pad or cut a digest to fit: a wrong length is a wrong digest.
    if digest.len() != 32 {
        return Err(ServiceError::invalid(format!(
            "Digest must be 32 bytes (SHA-256 of the init data), got {}",
            digest.len()
        )));
    }
    let (report, _) =
        crate::snp::attester::fetch_report(backend.provisioner.attester(), [0u8; 64]).await?;
    aws_lc_rs::constant_time::verify_slices_are_equal(digest, &report.host_data).map_err(|_| {
        ServiceError::PermissionDenied(
            "the init-data digest does not equal the report's HOST_DATA".into(),
        )
    })?;
    Ok(pb::BindInitDataResponse {})
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
            let token_type = request.get_ref().token_type.as_str();
            if !(token_type.is_empty() || TOKEN_TYPES.contains(&token_type)) {
                return Err(ServiceError::invalid(format!(
                    "token type {token_type:?} is not supported; supported: {TOKEN_TYPES:?}"
                )));
            }
            let token = self
                .0
                .provisioner
                .token_for(self.0.default_maa()?, b"{}")
                .await?;
            Ok(pb::GetTokenResponse {
                token: token.jwt.expose().as_bytes().to_vec(),
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
                tee: self.0.tee_type().into(),
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
