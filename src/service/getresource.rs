//! The old Kata attestation-agent resource API: with KbcName `aasp`/`mhsm` a resource is a key,
//! released from the KMS named by `KbsUri` and returned as JWK JSON; with `cc_kbc` it is a
//! Trustee KBS resource (`kbs:///repo/type/tag`) from the configured KBS (`KbsUri` is ignored:
//! which KBS to trust is configuration, never a request).

use super::{rpc, Backend, ServiceError};
use crate::proto::getresource as pb;
use crate::provision::KeyRef;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct Resources(pub Arc<Backend>);

const KBC_NAMES: [&str; 3] = ["aasp", "mhsm", "cc_kbc"];

async fn get_resource(
    backend: &Backend,
    request: &pb::GetResourceRequest,
) -> Result<pb::GetResourceResponse, ServiceError> {
    if !KBC_NAMES
        .iter()
        .any(|k| k.eq_ignore_ascii_case(&request.kbc_name))
    {
        return Err(ServiceError::invalid(format!(
            "KbcName {:?} is not one of {KBC_NAMES:?}",
            crate::echo::echo(&request.kbc_name)
        )));
    }
    if request.kbc_name.eq_ignore_ascii_case("cc_kbc") {
        let resource = backend
            .provisioner
            .kbs_resource(&request.resource_path)
            .await?;
        // The plaintext resource, in a buffer zeroized once the reply is sent.
        return Ok(pb::GetResourceResponse {
            resource: super::secret_json::bytes(resource),
        });
    }
    let name = request.resource_path.trim_matches('/');
    if name.is_empty() || name.contains('/') {
        return Err(ServiceError::invalid(format!(
            "ResourcePath {:?} must be a key name",
            crate::echo::echo(&request.resource_path)
        )));
    }
    if request.kbs_uri.is_empty() {
        return Err(ServiceError::invalid(
            "KbsUri must name the Managed HSM / Key Vault host",
        ));
    }
    let key = KeyRef::azure_uri(&request.kbs_uri, name, backend.default_maa.as_deref())?;
    let released = backend.provisioner.release(&key).await?;
    // The caller asked for the key itself: this is the one place a released key leaves aasp.
    // Serialized into a zeroizing buffer that the reply owns until it is sent.
    let resource = super::secret_json::to_vec(&released.jwk)
        .map_err(|e| ServiceError::invalid(e.to_string()))?;
    Ok(pb::GetResourceResponse {
        resource: super::secret_json::bytes(resource),
    })
}

#[tonic::async_trait]
impl pb::get_resource_service_server::GetResourceService for Resources {
    async fn get_resource(
        &self,
        request: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::GetResourceResponse>, Status> {
        rpc(
            "getresource/GetResource",
            get_resource(&self.0, request.get_ref()),
        )
        .await
    }
}
