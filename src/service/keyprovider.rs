//! The ocicrypt keyprovider protocol, under both service names.
//!
//! `keyprovider.KeyProviderService` (the original AASP) and `key_provider.KeyProviderService`
//! (the SKR sidecar) share every handler except GetReport: the former hex-decodes the string into
//! report_data (at most 64 bytes, zero-padded), the latter binds SHA-256 of the string's text.
//! Requests and replies are the JSON documents of DESIGN §4 inside a bytes field. The two
//! ocicrypt implementations write byte fields differently, so every form is accepted: Go ocicrypt
//! (skopeo, imgcrypt) sends standard base64 strings; ocicrypt-rs (image-rs, CDH) sends arrays of
//! numbers where its structs hold `Vec<u8>`, the wrap `optsdata` as the raw private-options JSON
//! text, and `"dc":{"Parameters":{}}` when no decryption key was named. Replies carry both result
//! keys with byte fields as arrays of numbers, never null: ocicrypt-rs reads them only that way
//! (plain `Vec<u8>`), and Go's `[]byte` decodes a JSON array as well. The exception is
//! `key_provider.*`, the SKR sidecar's name: it replies as the sidecar does (Go's `[]byte`:
//! standard base64 strings, null when empty), because that sidecar's clients (its own test
//! suite among them) base64-decode the fields; no ocicrypt-rs client calls that name.

use super::conn::ConnectionCalls;
use super::{rpc, Backend, ServiceError};
use crate::proto::{key_provider as new, keyprovider as old};
use crate::provision::decrypt::Caller;
use crate::provision::layer::AnnotationPacket;
use crate::snp::report::report_data_for_runtime;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
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
    optsdata: Option<ByteField>,
}

#[derive(Debug, Deserialize)]
struct UnwrapParams {
    #[serde(default)]
    dc: Option<Parameters>,
    #[serde(default)]
    annotation: Option<ByteField>,
}

#[derive(Debug, Deserialize)]
struct Parameters {
    #[serde(rename = "Parameters", default)]
    parameters: Option<HashMap<String, Vec<ByteField>>>,
}

/// A byte field as a peer wrote it: a string (base64, or for the wrap `optsdata` of ocicrypt-rs
/// the raw text) or an array of numbers. Read straight into zeroizing buffers: `optsdata` is the
/// layer key, so it never passes through a `serde_json::Value` or a plain `String`.
enum ByteField {
    Text(Zeroizing<String>),
    Array(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for ByteField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteField(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for ByteField {
    /// Arrays are read by [`byte_array`]: serde's element-by-element path took ~7 µs of a warm
    /// UnWrapKey's annotation (~700 numbers), the hand-written one about a fifth of that.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = <&serde_json::value::RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        if text.starts_with('[') {
            return byte_array(text).map(ByteField::Array).ok_or_else(|| {
                D::Error::custom("an array of byte values may hold integers from 0 to 255 only")
            });
        }
        if text.starts_with('"') {
            let text: String = serde_json::from_str(text).map_err(D::Error::custom)?;
            return Ok(ByteField::Text(Zeroizing::new(text)));
        }
        Err(D::Error::custom(
            "expected a base64 string or an array of byte values",
        ))
    }
}

/// A JSON array of integers from 0 to 255 as JSON writes them (no sign, fraction, exponent or
/// leading zero; whitespace anywhere between tokens); `None` for anything else. The buffer is
/// sized once for the most elements `text` can hold, so no reallocation leaves a copy behind.
fn byte_array(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];
    let elements = text
        .trim_matches(WHITESPACE)
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(elements.len().div_ceil(2)));
    if elements.trim_matches(WHITESPACE).is_empty() {
        return Some(bytes);
    }
    for element in elements.split(',') {
        let digits = element.trim_matches(WHITESPACE).as_bytes();
        let well_formed = matches!(digits.len(), 1..=3)
            && digits.iter().all(u8::is_ascii_digit)
            && (digits.len() == 1 || digits.first() != Some(&b'0'));
        if !well_formed {
            return None;
        }
        let value = digits
            .iter()
            .fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0'));
        bytes.push(u8::try_from(value).ok()?);
    }
    Some(bytes)
}

impl ByteField {
    /// The bytes of a base64 (standard, padded) or array field.
    fn decode(&self, field: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        match self {
            ByteField::Array(bytes) => Ok(bytes.clone()),
            ByteField::Text(text) => b64(field, text),
        }
    }

    /// The wrap `optsdata`: ocicrypt-rs sends the private-options JSON as raw text, Go ocicrypt
    /// its base64. A JSON document starts with `{`, which base64 never contains, so the two
    /// cannot be confused.
    fn decode_optsdata(&self, field: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        match self {
            ByteField::Text(text) if text.trim_start().starts_with('{') => {
                Ok(Zeroizing::new(text.as_bytes().to_vec()))
            }
            other => other.decode(field),
        }
    }
}

/// How a reply writes its byte fields: number arrays (every ocicrypt client parses them), or
/// the SKR sidecar's base64 strings with null for empty (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Arrays,
    Base64,
}

/// The reply, written straight into a zeroizing buffer sized up front (no reallocation leaves a
/// copy of the layer key behind): both result keys, byte fields in `form`.
fn output(form: Form, annotation: &[u8], optsdata: &[u8]) -> Zeroizing<Vec<u8>> {
    let capacity = reply_capacity(annotation.len(), optsdata.len());
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    let push = match form {
        Form::Arrays => push_array,
        Form::Base64 => push_base64_or_null,
    };
    out.extend_from_slice(HEAD);
    push(&mut out, annotation);
    out.extend_from_slice(MIDDLE);
    push(&mut out, optsdata);
    out.extend_from_slice(TAIL);
    out
}

const HEAD: &[u8] = br#"{"keywrapresults":{"annotation":"#;
const MIDDLE: &[u8] = br#"},"keyunwrapresults":{"optsdata":"#;
const TAIL: &[u8] = b"}}";

fn reply_capacity(annotation_len: usize, optsdata_len: usize) -> usize {
    HEAD.len()
        + MIDDLE.len()
        + TAIL.len()
        + field_capacity(annotation_len)
        + field_capacity(optsdata_len)
}

/// The most a byte field's text takes, in either form, while it is written: two quotes or
/// brackets and four bytes per value (three digits and a comma; base64 needs at most four per
/// byte), where an empty field (`[]`, `null`) counts as one value.
fn field_capacity(len: usize) -> usize {
    2 + 4 * len.max(1)
}

/// Go's `json.Marshal` of a `[]byte`: a standard base64 string, `null` for none.
fn push_base64_or_null(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    if let Some(dst) = out.get_mut(start..) {
        let _ = STANDARD.encode_slice(bytes, dst);
    }
    out.push(b'"');
}

/// Each byte value's decimal text followed by a comma, and the text's length (without it).
#[allow(clippy::indexing_slicing)] // `value` < 256, the table's length.
const DECIMAL: [([u8; 4], usize); 256] = {
    let mut table = [([0u8; 4], 0usize); 256];
    let mut value = 0;
    while value < 256 {
        let (hundreds, tens, ones) = (value / 100, value / 10 % 10, value % 10);
        let (text, len) = match (hundreds, tens) {
            (0, 0) => ([b'0' + ones as u8, b',', 0, 0], 1),
            (0, _) => ([b'0' + tens as u8, b'0' + ones as u8, b',', 0], 2),
            _ => (
                [
                    b'0' + hundreds as u8,
                    b'0' + tens as u8,
                    b'0' + ones as u8,
                    b',',
                ],
                3,
            ),
        };
        table[value] = (text, len);
        value += 1;
    }
    table
};

// A `u8` indexes a 256-entry table, and each byte's four-byte store ends at most
// `field_capacity` past `start`, the length the buffer is first given.
#[allow(clippy::indexing_slicing)]
fn push_array(out: &mut Vec<u8>, bytes: &[u8]) {
    // Sized once and written by index: growing the Vec byte by byte checked its capacity for
    // each of the ~2,800 bytes of a WrapKey reply.
    let start = out.len();
    out.resize(start + field_capacity(bytes.len()), 0);
    out[start] = b'[';
    let mut end = start + 1;
    for byte in bytes {
        // A fixed four-byte copy (one store) and a shorter step: a copy of the text's own
        // length is a call to memmove per byte.
        let (text, len) = &DECIMAL[usize::from(*byte)];
        out[end..end + 4].copy_from_slice(text);
        end += len + 1;
    }
    // The last byte's comma becomes the closing bracket.
    if bytes.is_empty() {
        out[end] = b']';
        end += 1;
    } else {
        out[end - 1] = b']';
    }
    out.truncate(end);
}

/// Hands the reply to the transport: the buffer moves (no copy) into the message, which the
/// transport encodes and drops.
fn into_message_bytes(mut reply: Zeroizing<Vec<u8>>) -> Vec<u8> {
    std::mem::take(&mut *reply)
}

fn b64(field: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    STANDARD
        .decode(value.trim())
        .map(Zeroizing::new)
        .map_err(|_| {
            ServiceError::invalid(format!(
                "{field} is neither standard base64 nor an array of byte values"
            ))
        })
}

/// What the parameters say for this provider: `None` when they name it not at all (or are
/// empty, as ocicrypt-rs sends them when no key was named), else the first value decoded.
fn our_parameter(
    backend: &Backend,
    params: Option<Parameters>,
    field: &str,
) -> Result<Option<String>, ServiceError> {
    let Some(params) = params.and_then(|p| p.parameters) else {
        return Ok(None);
    };
    let names =
        std::iter::once(PROVIDER_NAME).chain(backend.provider_names.iter().map(String::as_str));
    let Some(values) = names.clone().find_map(|name| params.get(name)) else {
        return Ok(None);
    };
    let first = values.first().ok_or_else(|| {
        ServiceError::invalid(format!("{field}.Parameters has an empty value list"))
    })?;
    String::from_utf8(first.decode(field)?.to_vec())
        .map(Some)
        .map_err(|_| ServiceError::invalid(format!("{field} parameter is not UTF-8")))
}

/// The value a decryption key names the default provider with: ocicrypt (Go and Rust) writes
/// `Enabled` for `provider:attestation-agent` without a suffix.
const DEFAULT_SELECTORS: [&str; 2] = ["", "enabled"];

const SCHEMES: [&str; 3] = ["aasp", "skr", "aaa"];

async fn wrap_key(
    backend: &Backend,
    input: &[u8],
    form: Form,
) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
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
    // Wrapping needs a key reference: there is no default recipient.
    let recipient = our_parameter(backend, params.ec, "keywrapparams.ec")?.ok_or_else(|| {
        ServiceError::invalid(format!(
            "keywrapparams.ec.Parameters names no provider this server is ({})",
            provider_names(backend)
        ))
    })?;
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
    let optsdata = match &params.optsdata {
        Some(field) => field.decode_optsdata("keywrapparams.optsdata")?,
        None => Zeroizing::new(Vec::new()),
    };
    if optsdata.is_empty() {
        return Err(ServiceError::invalid(
            "keywrapparams.optsdata (the layer key) is empty",
        ));
    }
    let resolved = backend.keys.resolve(key_ref)?;
    let packet = backend
        .provisioner
        .wrap_layer_key(&resolved, &optsdata)
        .await?;
    let mut annotation = Vec::with_capacity(packet.encoded_len_hint());
    serde_json::to_writer(&mut annotation, &packet)
        .map_err(|e| ServiceError::invalid(format!("cannot encode the annotation: {e}")))?;
    Ok(output(form, &annotation, &[]))
}

fn provider_names(backend: &Backend) -> String {
    std::iter::once(PROVIDER_NAME)
        .chain(backend.provider_names.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn unwrap_key(
    backend: &Backend,
    input: &[u8],
    form: Form,
    caller: Caller,
) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
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
    // The annotation packet says which key to release; the decryption parameters only select a
    // provider, and a missing or empty selection means this one (ocicrypt-rs sends
    // `{"Parameters":{}}` when no key was named, Go calls every provider of the image).
    if let Some(scheme) = our_parameter(backend, params.dc, "keyunwrapparams.dc")? {
        let scheme = scheme.trim();
        let known = SCHEMES
            .iter()
            .chain(DEFAULT_SELECTORS.iter())
            .any(|s| s.eq_ignore_ascii_case(scheme));
        if !known {
            return Err(ServiceError::invalid(format!(
                "decryption parameter {scheme:?} is not \"aasp\""
            )));
        }
    }
    let annotation = params
        .annotation
        .ok_or_else(|| ServiceError::invalid("keyunwrapparams.annotation is missing"))?
        .decode("keyunwrapparams.annotation")?;
    let packet: AnnotationPacket = serde_json::from_slice(&annotation).map_err(|e| {
        ServiceError::invalid(format!(
            "the annotation is not an aasp annotation packet: {e}"
        ))
    })?;
    let layer_key = backend
        .provisioner
        .unwrap_layer_key(&packet, caller)
        .await?;
    Ok(output(form, &[], &layer_key))
}

/// Whether an UnWrapKey's decrypt may run in its connection's task: only if no other call of
/// the connection waits there (and never for a request that did not come through `serve`:
/// nobody can tell).
fn caller<T>(request: &Request<T>) -> Caller {
    let calls = request.extensions().get::<ConnectionCalls>();
    if calls.is_some_and(ConnectionCalls::alone) {
        Caller::Alone
    } else {
        Caller::Shared
    }
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
    // The SKR sidecar's encodings (its grpcserver GetAttestationData): THIM's tcbm text, base64
    // of the PEM chain (VCEK first), base64 of the raw report.
    Ok(new::KeyProviderGetAttestationDataOutput {
        endorsed_tcb: e.tcbm_text.clone(),
        certs: STANDARD.encode(e.chain.to_pem()),
        attestation_report: STANDARD.encode(&attested.raw),
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
            let input = Zeroizing::new(request.into_inner().key_provider_key_wrap_protocol_input);
            let out = into_message_bytes(wrap_key(&self.0, &input, Form::Arrays).await?);
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
            let caller = caller(&request);
            let input = Zeroizing::new(request.into_inner().key_provider_key_wrap_protocol_input);
            let out = into_message_bytes(unwrap_key(&self.0, &input, Form::Arrays, caller).await?);
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
            let input = Zeroizing::new(request.into_inner().key_provider_key_wrap_protocol_input);
            let out = into_message_bytes(wrap_key(&self.0, &input, Form::Base64).await?);
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
            let caller = caller(&request);
            let input = Zeroizing::new(request.into_inner().key_provider_key_wrap_protocol_input);
            let out = into_message_bytes(unwrap_key(&self.0, &input, Form::Base64, caller).await?);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest replies of both forms (every value three digits; both fields empty) fit
    /// the buffer they are given.
    #[test]
    fn replies_fit_the_buffer_they_are_given() {
        for (annotation, optsdata) in [(0, 0), (1, 0), (0, 1), (1, 1), (300, 0), (300, 300)] {
            let (a, o) = (vec![255u8; annotation], vec![255u8; optsdata]);
            for form in [Form::Arrays, Form::Base64] {
                // A reallocation (which would leave a copy behind) grows the capacity.
                assert_eq!(
                    output(form, &a, &o).capacity(),
                    reply_capacity(annotation, optsdata),
                    "{form:?}, {annotation} and {optsdata} bytes"
                );
            }
        }
    }

    #[test]
    fn reply_arrays_hold_every_byte_value() {
        let every: Vec<u8> = (0..=255).collect();
        let reply = output(Form::Arrays, b"{\"kid\":\"k\"}", &every);
        let doc: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        let optsdata: Vec<u8> =
            serde_json::from_value(doc["keyunwrapresults"]["optsdata"].clone()).unwrap();
        assert_eq!(optsdata, every);
        let annotation: Vec<u8> =
            serde_json::from_value(doc["keywrapresults"]["annotation"].clone()).unwrap();
        assert_eq!(annotation, b"{\"kid\":\"k\"}");
        assert_eq!(
            &*output(Form::Arrays, &[], &[]),
            br#"{"keywrapresults":{"annotation":[]},"keyunwrapresults":{"optsdata":[]}}"#
        );
    }

    /// `key_provider.*` replies as the SKR sidecar (Go `[]byte`): base64 strings, null if empty.
    #[test]
    fn sidecar_replies_in_base64() {
        let every: Vec<u8> = (0..=255).collect();
        let reply = output(Form::Base64, &[], &every);
        let doc: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert!(doc["keywrapresults"]["annotation"].is_null());
        let optsdata = doc["keyunwrapresults"]["optsdata"].as_str().unwrap();
        assert_eq!(STANDARD.decode(optsdata).unwrap(), every);
        let reply = output(Form::Base64, b"{}", &[]);
        assert_eq!(
            &*reply,
            br#"{"keywrapresults":{"annotation":"e30="},"keyunwrapresults":{"optsdata":null}}"#
        );
    }

    /// The hand-written array reader accepts exactly what serde reads as a `Vec<u8>` (but
    /// `-0`, which no JSON writer of bytes produces).
    #[test]
    fn byte_arrays_read_as_serde_reads_them() {
        let cases = [
            "[]",
            "[ ]",
            " [\t]\n",
            "[0]",
            "[255]",
            "[256]",
            "[1000]",
            "[-1]",
            "[1.0]",
            "[1e2]",
            "[01]",
            "[00]",
            "[0,1, 2 ,\n3\r,\t4]",
            "[1,]",
            "[,1]",
            "[1,,2]",
            "[1 2]",
            "[[1]]",
            "[\"1\"]",
            "[true]",
            "[null]",
            "[",
            "]",
            "[1",
            "1]",
            "[+1]",
            "[ 7 ]",
            "[0x1]",
            "[١]",
            "[12345678901234567890]",
        ];
        for case in cases {
            let serde = serde_json::from_str::<Vec<u8>>(case).ok();
            let ours = byte_array(case).map(|bytes| bytes.to_vec());
            assert_eq!(ours, serde, "{case:?}");
        }
        let every: Vec<u8> = (0..=255).collect();
        let json = serde_json::to_string(&every).unwrap();
        let read = byte_array(&json).unwrap();
        assert_eq!(*read, every);
        assert!(read.len() <= read.capacity());
    }

    #[test]
    fn byte_fields_in_every_form() {
        let field = |json: &str| serde_json::from_str::<ByteField>(json).unwrap();
        assert_eq!(&*field(r#""AQID""#).decode("f").unwrap(), &[1, 2, 3]);
        assert_eq!(&*field("[1,2,3]").decode("f").unwrap(), &[1, 2, 3]);
        assert_eq!(&*field("[]").decode("f").unwrap(), &[] as &[u8]);
        let raw = field(r#""{\"symkey\":\"AQID\"}""#);
        assert_eq!(&*raw.decode_optsdata("f").unwrap(), br#"{"symkey":"AQID"}"#);
        assert_eq!(
            &*field(r#""AQID""#).decode_optsdata("f").unwrap(),
            &[1, 2, 3]
        );
        assert!(field(r#""%%""#).decode("f").is_err());
        assert!(serde_json::from_str::<ByteField>("[256]").is_err());
        assert!(serde_json::from_str::<ByteField>("[-1]").is_err());
        assert!(serde_json::from_str::<ByteField>("12").is_err());
        assert!(serde_json::from_str::<ByteField>("{}").is_err());
        let long: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        let json = serde_json::to_string(&long).unwrap();
        assert_eq!(&*field(&json).decode("f").unwrap(), long.as_slice());
        // Inside a document, as the keyprovider input has them.
        let doc: HashMap<String, Vec<ByteField>> =
            serde_json::from_str(r#"{"a": [ [1, 2] , "AQID" ], "b": []}"#).unwrap();
        assert_eq!(&*doc["a"][0].decode("f").unwrap(), &[1, 2]);
        assert_eq!(&*doc["a"][1].decode("f").unwrap(), &[1, 2, 3]);
        assert!(serde_json::from_str::<HashMap<String, ByteField>>(r#"{"a": [1, 02]}"#).is_err());
        assert_eq!(
            format!("{:?}", field(r#""c2VjcmV0""#)),
            "ByteField(<redacted>)"
        );
    }
}
