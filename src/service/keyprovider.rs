//! The ocicrypt keyprovider protocol, under both service names.
//!
//! `keyprovider.KeyProviderService` (the original AASP) and `key_provider.KeyProviderService`
//! (the SKR sidecar) share every handler except GetReport: the former hex-decodes the string into
//! report_data (at most 64 bytes, zero-padded), the latter binds SHA-256 of the string's text.
//! Requests and replies are the JSON documents of DESIGN §4 inside a bytes field; every byte field
//! is standard padded base64, and both result keys are always present.

use super::{rpc, Backend, ServiceError};
use crate::proto::{key_provider as new, keyprovider as old};
use crate::provision::layer::{resolve, AnnotationPacket};
use crate::snp::report::report_data_for_runtime;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

/// The name ocicrypt clients give this provider in their parameters.
pub const PROVIDER_NAME: &str = "attestation-agent";

#[derive(Debug, Deserialize)]
struct Input {
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    keywrapparams: Option<WrapParams>,
    #[serde(default)]
    keyunwrapparams: Option<UnwrapParams>,
}

#[derive(Debug, Deserialize)]
struct WrapParams {
    #[serde(default)]
    ec: Option<Parameters>,
    #[serde(default)]
    optsdata: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UnwrapParams {
    #[serde(default)]
    dc: Option<Parameters>,
    #[serde(default)]
    annotation: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    #[serde(rename = "Parameters", default)]
    parameters: Option<HashMap<String, Vec<String>>>,
}

fn output(annotation: Option<String>, optsdata: Option<String>) -> Vec<u8> {
    json!({
        "keywrapresults": { "annotation": annotation.map(Value::String).unwrap_or(Value::Null) },
        "keyunwrapresults": { "optsdata": optsdata.map(Value::String).unwrap_or(Value::Null) },
    })
    .to_string()
    .into_bytes()
}

fn b64(field: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    STANDARD
        .decode(value)
        .map(Zeroizing::new)
        .map_err(|_| ServiceError::invalid(format!("{field} is not standard base64")))
}

/// The first value this provider was given among the parameters, base64-decoded.
fn our_parameter(
    backend: &Backend,
    params: Option<Parameters>,
    field: &str,
) -> Result<String, ServiceError> {
    let params = params
        .and_then(|p| p.parameters)
        .ok_or_else(|| ServiceError::invalid(format!("{field}.Parameters is missing")))?;
    let names =
        std::iter::once(PROVIDER_NAME).chain(backend.provider_names.iter().map(String::as_str));
    let values = names
        .clone()
        .find_map(|name| params.get(name))
        .ok_or_else(|| {
            let given: Vec<&String> = params.keys().collect();
            let known: Vec<&str> = names.collect();
            ServiceError::invalid(format!(
                "{field}.Parameters names no provider this server is ({known:?}); it has {given:?}"
            ))
        })?;
    let first = values.first().ok_or_else(|| {
        ServiceError::invalid(format!("{field}.Parameters has an empty value list"))
    })?;
    String::from_utf8(b64(field, first)?.to_vec())
        .map_err(|_| ServiceError::invalid(format!("{field} parameter is not UTF-8")))
}

const SCHEMES: [&str; 3] = ["aasp", "skr", "aaa"];

async fn wrap_key(backend: &Backend, input: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let input: Input = serde_json::from_slice(input)
        .map_err(|e| ServiceError::invalid(format!("keyprovider input is not valid JSON: {e}")))?;
    match input.op.as_deref() {
        Some("keywrap") => {}
        other => {
            return Err(ServiceError::invalid(format!(
                "WrapKey needs op \"keywrap\", got {other:?}"
            )))
        }
    }
    let params = input
        .keywrapparams
        .ok_or_else(|| ServiceError::invalid("keywrapparams is missing"))?;
    let recipient = our_parameter(backend, params.ec, "keywrapparams.ec")?;
    let key_ref = SCHEMES
        .iter()
        .find_map(|scheme| {
            recipient
                .strip_prefix(scheme)
                .and_then(|r| r.strip_prefix(':'))
        })
        .ok_or_else(|| {
            ServiceError::invalid(format!("recipient {recipient:?} is not aasp:<key>"))
        })?;
    let optsdata = b64(
        "keywrapparams.optsdata",
        params.optsdata.as_deref().unwrap_or_default(),
    )?;
    if optsdata.is_empty() {
        return Err(ServiceError::invalid(
            "keywrapparams.optsdata (the layer key) is empty",
        ));
    }
    let resolved = resolve(
        key_ref,
        backend.keys_dir.as_deref(),
        backend.default_maa.as_deref(),
    )?;
    let packet = backend
        .provisioner
        .wrap_layer_key(&resolved, &optsdata)
        .await?;
    Ok(output(Some(packet.to_annotation()), None))
}

async fn unwrap_key(backend: &Backend, input: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let input: Input = serde_json::from_slice(input)
        .map_err(|e| ServiceError::invalid(format!("keyprovider input is not valid JSON: {e}")))?;
    match input.op.as_deref() {
        Some("keyunwrap") => {}
        other => {
            return Err(ServiceError::invalid(format!(
                "UnWrapKey needs op \"keyunwrap\", got {other:?}"
            )))
        }
    }
    let params = input
        .keyunwrapparams
        .ok_or_else(|| ServiceError::invalid("keyunwrapparams is missing"))?;
    let scheme = our_parameter(backend, params.dc, "keyunwrapparams.dc")?;
    if !SCHEMES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme.trim()))
    {
        return Err(ServiceError::invalid(format!(
            "decryption parameter {scheme:?} is not \"aasp\""
        )));
    }
    let annotation = params
        .annotation
        .ok_or_else(|| ServiceError::invalid("keyunwrapparams.annotation is missing"))?;
    let packet = AnnotationPacket::from_annotation(&annotation)?;
    let layer_key = backend.provisioner.unwrap_layer_key(&packet).await?;
    Ok(output(None, Some(STANDARD.encode(layer_key.as_slice()))))
}

/// AASP's GetReport: the hex string *is* report_data (≤ 64 bytes, zero-padded).
async fn report_from_hex(backend: &Backend, hex_text: &str) -> Result<String, ServiceError> {
    let bytes = hex::decode(hex_text.trim())
        .map_err(|_| ServiceError::invalid("reportDataHexString is not hex"))?;
    if bytes.len() > 64 {
        return Err(ServiceError::invalid(format!(
            "report data is {} bytes; at most 64",
            bytes.len()
        )));
    }
    let mut report_data = [0u8; 64];
    for (dst, src) in report_data.iter_mut().zip(bytes) {
        *dst = src;
    }
    raw_report(backend, report_data).await
}

async fn raw_report(backend: &Backend, report_data: [u8; 64]) -> Result<String, ServiceError> {
    let (_, raw) =
        crate::snp::attester::fetch_report(backend.provisioner.attester(), report_data).await?;
    Ok(hex::encode(raw))
}

async fn attestation_data(
    backend: &Backend,
    runtime_b64: &str,
) -> Result<new::KeyProviderGetAttestationDataOutput, ServiceError> {
    let runtime = b64("b64_runtime_data_string", runtime_b64)?;
    let attested = crate::snp::chain::attest(
        backend.provisioner.attester(),
        backend.provisioner.chains(),
        report_data_for_runtime(&runtime),
    )
    .await?;
    let e = &attested.endorsement;
    Ok(new::KeyProviderGetAttestationDataOutput {
        endorsed_tcb: format!("{:016x}", e.tcbm),
        certs: e.chain.to_pem(),
        attestation_report: hex::encode(&attested.raw),
        uvm_reference_info: e
            .uvm_reference_info
            .as_ref()
            .map(|r| STANDARD.encode(r))
            .unwrap_or_default(),
    })
}

fn hello(name: &str) -> String {
    format!("Hello {name}")
}

/// `keyprovider.KeyProviderService`.
pub struct Aasp(pub Arc<Backend>);

#[tonic::async_trait]
impl old::key_provider_service_server::KeyProviderService for Aasp {
    async fn wrap_key(
        &self,
        request: Request<old::KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<old::KeyProviderKeyWrapProtocolOutput>, Status> {
        rpc("keyprovider/WrapKey", async {
            let out = wrap_key(
                &self.0,
                &request.get_ref().key_provider_key_wrap_protocol_input,
            )
            .await?;
            Ok(old::KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            })
        })
        .await
    }

    async fn un_wrap_key(
        &self,
        request: Request<old::KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<old::KeyProviderKeyWrapProtocolOutput>, Status> {
        rpc("keyprovider/UnWrapKey", async {
            let out = unwrap_key(
                &self.0,
                &request.get_ref().key_provider_key_wrap_protocol_input,
            )
            .await?;
            Ok(old::KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            })
        })
        .await
    }

    async fn get_report(
        &self,
        request: Request<old::KeyProviderGetReportInput>,
    ) -> Result<Response<old::KeyProviderGetReportOutput>, Status> {
        rpc("keyprovider/GetReport", async {
            let report_hex_string =
                report_from_hex(&self.0, &request.get_ref().report_data_hex_string).await?;
            Ok(old::KeyProviderGetReportOutput { report_hex_string })
        })
        .await
    }

    async fn say_hello(
        &self,
        request: Request<old::HelloRequest>,
    ) -> Result<Response<old::HelloReply>, Status> {
        rpc("keyprovider/SayHello", async {
            Ok(old::HelloReply {
                message: hello(&request.get_ref().name),
            })
        })
        .await
    }
}

/// `key_provider.KeyProviderService`.
pub struct Sidecar(pub Arc<Backend>);

#[tonic::async_trait]
impl new::key_provider_service_server::KeyProviderService for Sidecar {
    async fn wrap_key(
        &self,
        request: Request<new::KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<new::KeyProviderKeyWrapProtocolOutput>, Status> {
        rpc("key_provider/WrapKey", async {
            let out = wrap_key(
                &self.0,
                &request.get_ref().key_provider_key_wrap_protocol_input,
            )
            .await?;
            Ok(new::KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            })
        })
        .await
    }

    async fn un_wrap_key(
        &self,
        request: Request<new::KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<new::KeyProviderKeyWrapProtocolOutput>, Status> {
        rpc("key_provider/UnWrapKey", async {
            let out = unwrap_key(
                &self.0,
                &request.get_ref().key_provider_key_wrap_protocol_input,
            )
            .await?;
            Ok(new::KeyProviderKeyWrapProtocolOutput {
                key_provider_key_wrap_protocol_output: out,
            })
        })
        .await
    }

    async fn get_report(
        &self,
        request: Request<new::KeyProviderGetReportInput>,
    ) -> Result<Response<new::KeyProviderGetReportOutput>, Status> {
        rpc("key_provider/GetReport", async {
            // The sidecar binds the digest of the string's text, whatever the text is.
            let report_data =
                report_data_for_runtime(request.get_ref().report_data_hex_string.as_bytes());
            Ok(new::KeyProviderGetReportOutput {
                report_hex_string: raw_report(&self.0, report_data).await?,
            })
        })
        .await
    }

    async fn get_attestation_data(
        &self,
        request: Request<new::KeyProviderGetAttestationDataInput>,
    ) -> Result<Response<new::KeyProviderGetAttestationDataOutput>, Status> {
        rpc(
            "key_provider/GetAttestationData",
            attestation_data(&self.0, &request.get_ref().b64_runtime_data_string),
        )
        .await
    }

    async fn say_hello(
        &self,
        request: Request<new::HelloRequest>,
    ) -> Result<Response<new::HelloReply>, Status> {
        rpc("key_provider/SayHello", async {
            Ok(new::HelloReply {
                message: hello(&request.get_ref().name),
            })
        })
        .await
    }
}
