//! `aasp call`: a client for every method aasp serves, over TCP or a Unix socket (gRPC) and over
//! ttrpc (the CoCo attestation-agent socket).
//!
//! Requests and replies are protobuf JSON as grpcurl writes them (JSON field names, bytes as
//! base64) and methods are named as grpcurl names them (`package.Service/Method`), so a grpcurl
//! line and an `aasp call` line carry the same text. The JSON is converted through the descriptor
//! set build.rs compiles from `proto/` (plus tonic-health's): the very protos the server serves,
//! so no reflection round trip and no generated client per method. On the wire the message is
//! opaque bytes, the same for gRPC and ttrpc.

use crate::files::{self, Mode};
use base64::Engine;
use clap::Args;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MethodDescriptor};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use zeroize::Zeroizing;

mod json;

/// What `aasp dev` and `aasp wrap` put in the keyprovider document's decryption parameters: the
/// attestation-agent keyprovider's `dc` entry (its value is not read by aasp).
const DC_PARAMETER: &str = "aasp";

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The method as grpcurl names it, `package.Service/Method`: e.g.
    /// keyprovider.KeyProviderService/UnWrapKey, attestation_agent.AttestationAgentService/GetEvidence,
    /// grpc.health.v1.Health/Check. `list` prints every method aasp serves.
    #[arg(value_name = "METHOD")]
    method: String,
    /// Server: host:port (gRPC over TCP) or unix:///path (gRPC over a Unix socket; ttrpc with
    /// --ttrpc).
    #[arg(long, default_value = "127.0.0.1:50000", value_name = "ADDRESS")]
    target: String,
    /// Speak ttrpc on the unix:///path target (the Kata / CoCo attestation-agent socket of
    /// `aasp serve --ttrpc-listen`) instead of gRPC.
    #[arg(long)]
    ttrpc: bool,
    /// The request in protobuf JSON, as grpcurl's -d takes it (bytes fields as base64); `@` reads
    /// it from standard input. Default: `{}`.
    #[arg(short = 'd', long = "data", value_name = "JSON")]
    data: Option<String>,
    /// UnWrapKey: build the request around this annotation file (what `aasp wrap --out` writes,
    /// base64 of the annotation JSON) instead of -d.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    annotation: Option<PathBuf>,
    /// Print the reply's bytes fields decoded: JSON documents (the keyprovider document with its
    /// annotation and secret, evidence) as JSON, text (tokens, secrets) as text.
    #[arg(long)]
    decode: bool,
    /// Write the reply's payload as raw bytes instead of printing JSON: the unwrapped secret
    /// (UnWrapKey), the annotation in `aasp wrap`'s form (WrapKey), the resource, token or
    /// evidence. `-` is standard output, refused when that is a terminal. Written mode 0600.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "FILE",
        conflicts_with = "decode"
    )]
    out: Option<PathBuf>,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    timeout: u64,
}

pub async fn run(args: CallArgs) -> Result<ExitCode, String> {
    let pool = pool()?;
    if args.method == "list" {
        for service in pool.services() {
            for method in service.methods() {
                super::out!("{}/{}", service.full_name(), method.name())?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let method = find_method(&pool, &args.method)?;
    let request = request(&method, &args)?;
    let target = Target::parse(&args.target, args.ttrpc)?;
    let timeout = Duration::from_secs(args.timeout);
    let call = async {
        match &target {
            Target::Ttrpc(path) => call_ttrpc(path, &method, request, timeout).await,
            _ => call_grpc(&target, &method, request, timeout).await,
        }
    };
    let reply = tokio::time::timeout(timeout, call).await.map_err(|_| {
        format!(
            "{}: no reply within {} s (--timeout)",
            args.target, args.timeout
        )
    })??;
    let reply = DynamicMessage::decode(method.output(), reply.as_slice()).map_err(|e| {
        format!(
            "{}: the reply is not a {}: {e}",
            args.target,
            method.output().full_name()
        )
    })?;
    if let Some(out) = &args.out {
        let payload = payload(&method, &reply)?;
        files::write_output(Some(out), &payload, true, Mode::Private).map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut json = json::to_json(&reply);
    if args.decode {
        decode_bytes_fields(&method, &mut json);
    }
    let mut text = Zeroizing::new(String::new());
    pretty(&json, 0, &mut text);
    wipe(json);
    super::out!("{}", text.as_str())?;
    Ok(ExitCode::SUCCESS)
}

/// aasp's services and the health service, as the server registers them.
fn pool() -> Result<DescriptorPool, String> {
    let mut pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("aasp's own descriptor set: {e}"))?;
    pool.decode_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("the health service's descriptor set: {e}"))?;
    Ok(pool)
}

/// `package.Service/Method`, or grpcurl's other spelling `package.Service.Method`.
fn find_method(pool: &DescriptorPool, name: &str) -> Result<MethodDescriptor, String> {
    let (service, method) = name
        .rsplit_once('/')
        .or_else(|| name.rsplit_once('.'))
        .ok_or_else(|| {
            format!("{name:?} is not a method: write package.Service/Method (`aasp call list` prints them)")
        })?;
    let service = pool.get_service_by_name(service).ok_or_else(|| {
        let known: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        format!(
            "aasp serves no service {service:?}; it serves {} (`aasp call list` prints every method)",
            known.join(", ")
        )
    })?;
    let found = service.methods().find(|m| m.name() == method);
    found.ok_or_else(|| {
        let known: Vec<String> = service.methods().map(|m| m.name().to_owned()).collect();
        format!(
            "{} has no method {method:?}; it has {}",
            service.full_name(),
            known.join(", ")
        )
    })
}

/// The request message, encoded: from -d, from --annotation, or empty.
fn request(method: &MethodDescriptor, args: &CallArgs) -> Result<Zeroizing<Vec<u8>>, String> {
    let input = method.input();
    let message = match (&args.annotation, &args.data) {
        (Some(path), _) => unwrap_request(method, path)?,
        (None, data) => {
            let text = match data.as_deref() {
                Some("@") => Zeroizing::new(
                    String::from_utf8(super::read_input(Path::new("-"))?)
                        .map_err(|_| "standard input: the request is not UTF-8 JSON".to_owned())?,
                ),
                Some(text) => Zeroizing::new(text.to_owned()),
                None => Zeroizing::new("{}".to_owned()),
            };
            let json: Value = serde_json::from_str(&text).map_err(|e| {
                format!("-d is not JSON: {e} (grpcurl's form: '{{\"field\":\"value\"}}')")
            })?;
            let message = json::from_json(&input, &json)
                .map_err(|e| format!("-d: {e} (its fields: {})", field_names(&input)));
            wipe(json);
            message?
        }
    };
    Ok(Zeroizing::new(message.encode_to_vec()))
}

fn field_names(message: &prost_reflect::MessageDescriptor) -> String {
    let names: Vec<String> = message
        .fields()
        .map(|f| format!("{} ({:?})", f.json_name(), f.kind()))
        .collect();
    if names.is_empty() {
        "none: send {}".to_owned()
    } else {
        names.join(", ")
    }
}

/// An UnWrapKey request for an annotation as `aasp wrap` writes it.
fn unwrap_request(method: &MethodDescriptor, path: &Path) -> Result<DynamicMessage, String> {
    let field = single_bytes_field(&method.input())
        .filter(|_| method.name() == "UnWrapKey")
        .ok_or_else(|| {
            format!(
                "--annotation builds an UnWrapKey request, not a {} one: use -d",
                method.name()
            )
        })?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let annotation = text.trim();
    if annotation.is_empty() {
        return Err(format!(
            "{}: empty; --annotation takes the file `aasp wrap --out` wrote",
            path.display()
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let document = serde_json::json!({
        "op": "keyunwrap",
        "keyunwrapparams": {
            "dc": { "Parameters": { "attestation-agent": [b64.encode(DC_PARAMETER)] } },
            "annotation": annotation,
        }
    });
    let mut message = DynamicMessage::new(method.input());
    message.set_field(
        &field,
        prost_reflect::Value::Bytes(document.to_string().into_bytes().into()),
    );
    Ok(message)
}

/// The one bytes field of a message (the keyprovider messages, evidence, token, resource).
fn single_bytes_field(
    message: &prost_reflect::MessageDescriptor,
) -> Option<prost_reflect::FieldDescriptor> {
    let mut bytes = message
        .fields()
        .filter(|f| f.kind() == Kind::Bytes && !f.is_list());
    match (bytes.next(), bytes.next()) {
        (Some(field), None) => Some(field),
        _ => None,
    }
}

/// Where to call.
enum Target {
    Tcp(String),
    Unix(PathBuf),
    Ttrpc(String),
}

impl Target {
    fn parse(target: &str, ttrpc: bool) -> Result<Target, String> {
        match (target.strip_prefix("unix://"), ttrpc) {
            (Some(""), _) => Err("--target unix:// needs a socket path: unix:///path".into()),
            (Some(_), true) => Ok(Target::Ttrpc(target.to_owned())),
            (Some(path), false) => Ok(Target::Unix(PathBuf::from(path))),
            (None, true) => Err(format!(
                "--ttrpc speaks on a Unix socket: give --target unix:///path, not {target}"
            )),
            (None, false) if target.contains("://") => Err(format!(
                "--target {target}: write host:port (plain gRPC, as aasp serves it) or unix:///path"
            )),
            (None, false) => Ok(Target::Tcp(format!("http://{target}"))),
        }
    }
}

async fn call_grpc(
    target: &Target,
    method: &MethodDescriptor,
    request: Zeroizing<Vec<u8>>,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let endpoint = match target {
        Target::Tcp(url) => url.clone(),
        // The URI is not used to connect; aasp accepts any :authority on a Unix socket.
        Target::Unix(_) | Target::Ttrpc(_) => "http://localhost".to_owned(),
    };
    let endpoint = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| format!("--target {endpoint}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    let channel = match target {
        Target::Unix(path) => {
            let path = path.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
        }
        _ => endpoint.connect().await,
    }
    .map_err(|e| super::cannot_connect(&target.name(), &e))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| super::cannot_connect(&target.name(), &e))?;
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.as_str())
        .map_err(|e| format!("{path}: {e}"))?;
    let reply = grpc
        .unary(tonic::Request::new(request), path, RawCodec)
        .await
        .map_err(|status| {
            format!(
                "{}/{}: {:?}: {}",
                method.parent_service().full_name(),
                method.name(),
                status.code(),
                status.message()
            )
        })?;
    Ok(reply.into_inner())
}

async fn call_ttrpc(
    target: &str,
    method: &MethodDescriptor,
    request: Zeroizing<Vec<u8>>,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, String> {
    use ttrpc::proto::RequestInit;
    let client = ttrpc::r#async::Client::connect(target)
        .await
        .map_err(|e| super::cannot_connect(target, &e))?;
    let mut req = ttrpc::Request::init_request(
        method.parent_service().full_name().to_owned(),
        method.name().to_owned(),
        i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
        Vec::new(),
    );
    req.set_payload(request.to_vec());
    let name = format!("{}/{}", method.parent_service().full_name(), method.name());
    let mut reply = match client.request(req).await {
        Ok(reply) => reply,
        // Named as over gRPC (and as grpcurl names it): one refusal reads the same on both.
        Err(ttrpc::Error::RpcStatus(status)) => {
            let code = tonic::Code::from(status.code() as i32);
            return Err(format!("{name}: {code:?}: {}", status.message()));
        }
        Err(e) => return Err(format!("{name} over ttrpc on {target}: {e}")),
    };
    Ok(Zeroizing::new(std::mem::take(&mut reply.payload)))
}

impl Target {
    fn name(&self) -> String {
        match self {
            Target::Tcp(url) => url.trim_start_matches("http://").to_owned(),
            Target::Unix(path) => format!("unix://{}", path.display()),
            Target::Ttrpc(target) => target.clone(),
        }
    }
}

/// The error and its causes: tonic's transport error alone says only "transport error".
/// The message as bytes both ways: the descriptor pool, not a generated type, knows its shape.
/// The reply may hold a released key: it lives in a zeroizing buffer.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Zeroizing<Vec<u8>>;
    type Decode = Zeroizing<Vec<u8>>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Zeroizing<Vec<u8>>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Zeroizing<Vec<u8>>;
    type Error = tonic::Status;

    // tonic bounds the message (4 MiB by default) before it gets here.
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let mut out = Zeroizing::new(Vec::with_capacity(src.remaining()));
        while src.has_remaining() {
            let chunk = src.chunk();
            out.extend_from_slice(chunk);
            let n = chunk.len();
            src.advance(n);
        }
        Ok(Some(out))
    }
}

/// Replaces each bytes field's base64 by what the bytes are: a JSON document (with the
/// keyprovider document's own byte fields, the annotation packet and the secret, decoded in
/// turn), text, or else base64 as before.
fn decode_bytes_fields(method: &MethodDescriptor, json: &mut Value) {
    let b64 = base64::engine::general_purpose::STANDARD;
    for field in method.output().fields() {
        if field.kind() != Kind::Bytes || field.is_list() {
            continue;
        }
        let Some(value) = json.get_mut(field.json_name()) else {
            continue;
        };
        let Some(bytes) = value.as_str().and_then(|s| b64.decode(s).ok()) else {
            continue;
        };
        let bytes = Zeroizing::new(bytes);
        let mut document = decoded(&bytes);
        for (results, inner) in [
            ("keywrapresults", "annotation"),
            ("keyunwrapresults", "optsdata"),
        ] {
            if let Some(inner) = document.get_mut(results).and_then(|r| r.get_mut(inner)) {
                if let Some(bytes) = byte_field(inner) {
                    *inner = decoded(&bytes);
                }
            }
        }
        *value = document;
    }
}

/// A JSON document as JSON, text as text, anything else as base64.
fn decoded(bytes: &[u8]) -> Value {
    if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
        if json.is_object() || json.is_array() {
            return json;
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            Value::String(text.to_owned())
        }
        _ => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// A keyprovider byte field as peers write it: base64 text or an array of numbers.
fn byte_field(value: &Value) -> Option<Zeroizing<Vec<u8>>> {
    match value {
        Value::String(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()
            .map(Zeroizing::new),
        Value::Array(items) => items
            .iter()
            .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect::<Option<Vec<u8>>>()
            .map(Zeroizing::new),
        _ => None,
    }
}

/// The bytes `-o` writes: the secret UnWrapKey released, WrapKey's annotation in the form
/// `aasp wrap --out` writes (so `--annotation` reads it back), or the reply's bytes field.
fn payload(
    method: &MethodDescriptor,
    reply: &DynamicMessage,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let name = format!("{}/{}", method.parent_service().full_name(), method.name());
    let field = single_bytes_field(&method.output()).ok_or_else(|| {
        format!("{name} replies with no bytes to write: omit -o to print the reply as JSON")
    })?;
    let value = reply.get_field(&field);
    let bytes = Zeroizing::new(value.as_bytes().map(|b| b.to_vec()).unwrap_or_default());
    let inner = match method.name() {
        "UnWrapKey" => ("keyunwrapresults", "optsdata"),
        "WrapKey" => ("keywrapresults", "annotation"),
        _ => return Ok(bytes),
    };
    let document: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{name}: the reply is not a keyprovider document: {e}"))?;
    let found = document
        .get(inner.0)
        .and_then(|results| results.get(inner.1))
        .and_then(byte_field);
    wipe(document);
    let found = found.ok_or_else(|| format!("{name}: the reply has no {}.{}", inner.0, inner.1))?;
    Ok(if method.name() == "WrapKey" {
        Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .encode(found.as_slice())
                .into_bytes(),
        )
    } else {
        found
    })
}

/// Indented JSON as grpcurl prints it, except that an array of numbers (the byte arrays of SNP
/// evidence) stays on one line instead of one line per byte.
fn pretty(value: &Value, indent: usize, out: &mut String) {
    fn pad(out: &mut String, indent: usize) {
        out.extend(std::iter::repeat_n(' ', indent));
    }
    match value {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            let numbers: Vec<String> = items.iter().map(Value::to_string).collect();
            out.push('[');
            out.push_str(&numbers.join(", "));
            out.push(']');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                pad(out, indent + 2);
                pretty(item, indent + 2, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push_str("{\n");
            for (i, (key, item)) in map.iter().enumerate() {
                pad(out, indent + 2);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                pretty(item, indent + 2, out);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Overwrites the strings of a JSON value that held a secret before it is dropped.
fn wipe(mut value: Value) {
    use zeroize::Zeroize;
    fn walk(value: &mut Value) {
        match value {
            Value::String(s) => s.zeroize(),
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_found_by_its_grpcurl_name() {
        let pool = pool().unwrap();
        for name in [
            "keyprovider.KeyProviderService/UnWrapKey",
            "key_provider.KeyProviderService/GetAttestationData",
            "attestation_agent.AttestationAgentService/GetEvidence",
            "getresource.GetResourceService/GetResource",
            "grpc.health.v1.Health/Check",
            "keyprovider.KeyProviderService.SayHello",
        ] {
            find_method(&pool, name).unwrap();
        }
        let err = find_method(&pool, "keyprovider.KeyProviderService/Unwrap").unwrap_err();
        assert!(err.contains("UnWrapKey"), "{err}");
    }

    #[test]
    fn requests_read_grpcurl_json_with_base64_bytes() {
        let pool = pool().unwrap();
        let method = find_method(
            &pool,
            "attestation_agent.AttestationAgentService/GetEvidence",
        )
        .unwrap();
        let args = CallArgs {
            method: String::new(),
            target: String::new(),
            ttrpc: false,
            data: Some(r#"{"RuntimeData":"aGVsbG8="}"#.into()),
            annotation: None,
            decode: false,
            out: None,
            timeout: 1,
        };
        let encoded = request(&method, &args).unwrap();
        let decoded =
            crate::proto::attestation_agent::GetEvidenceRequest::decode(encoded.as_slice())
                .unwrap();
        assert_eq!(decoded.runtime_data, b"hello");
    }

    #[test]
    fn keyprovider_replies_decode_to_the_secret_and_the_annotation() {
        let pool = pool().unwrap();
        let method = find_method(&pool, "keyprovider.KeyProviderService/UnWrapKey").unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let inner = serde_json::json!({
            "keywrapresults": { "annotation": b64.encode(r#"{"kid":"k"}"#) },
            "keyunwrapresults": { "optsdata": b"my secret".to_vec() },
        });
        let mut json = serde_json::json!({
            "KeyProviderKeyWrapProtocolOutput": b64.encode(inner.to_string())
        });
        decode_bytes_fields(&method, &mut json);
        let doc = &json["KeyProviderKeyWrapProtocolOutput"];
        assert_eq!(doc["keyunwrapresults"]["optsdata"], "my secret");
        assert_eq!(doc["keywrapresults"]["annotation"]["kid"], "k");
    }

    #[test]
    fn replies_print_indented_with_byte_arrays_on_one_line() {
        let mut out = String::new();
        pretty(
            &serde_json::json!({ "a": [1, 2], "b": { "c": "d", "e": [] }, "f": [{ "g": true }] }),
            0,
            &mut out,
        );
        assert_eq!(
            out,
            "{\n  \"a\": [1, 2],\n  \"b\": {\n    \"c\": \"d\",\n    \"e\": []\n  },\n  \"f\": [\n    {\n      \"g\": true\n    }\n  ]\n}"
        );
    }
}
