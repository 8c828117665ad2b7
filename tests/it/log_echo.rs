//! Huge caller strings are echoed cut short into logs and statuses, and JSON log lines carry
//! each key once.

use crate::common;

use aasp::proto::getresource::{
    get_resource_service_client::GetResourceServiceClient, GetResourceRequest,
};
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, KeyProviderKeyWrapProtocolInput,
};
use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The most a status message may carry (`aasp::echo::MESSAGE_MAX`).
const MESSAGE_MAX: usize = 1024;

/// The start of a long text, for an assertion message.
fn cut(text: &str) -> String {
    text.chars().take(300).collect()
}

/// A JSON value that refuses an object with the same key twice, at any depth.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_caller_strings_are_cut_and_json_lines_have_unique_keys() {
    let captured = common::capture_logs(tracing::Level::INFO, true).await;

    let stack = common::Dev::start().await;
    let url = stack.grpc_url();
    let b64 = base64::engine::general_purpose::STANDARD;
    let before = captured.len();

    // A 2.5 MB key reference, five times (it fits the 4 MiB message limit as base64).
    let key_ref = format!("aasp:{}", "k".repeat(2_500_000));
    let wrap = serde_json::json!({"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":[b64.encode(&key_ref)]}},"optsdata":b64.encode([7u8; 32])}});
    let input = wrap.to_string().into_bytes();
    let mut kp = KeyProviderServiceClient::connect(url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    for _ in 0..5 {
        let status = kp
            .wrap_key(KeyProviderKeyWrapProtocolInput {
                key_provider_key_wrap_protocol_input: input.clone(),
            })
            .await
            .unwrap_err();
        assert_ne!(status.code(), tonic::Code::Ok);
        assert!(
            status.message().len() <= MESSAGE_MAX + 64,
            "status message of {} bytes",
            status.message().len()
        );
    }

    // A 300 kB resource name: the status that echoes it must still reach the client whole.
    let mut resources = GetResourceServiceClient::connect(url).await.unwrap();
    for (kbc, path) in [("nope", "key".to_owned()), ("aasp", "n".repeat(300_000))] {
        let status = resources
            .get_resource(GetResourceRequest {
                resource_path: path,
                kbc_name: if kbc == "nope" {
                    "x".repeat(300_000)
                } else {
                    kbc.to_owned()
                },
                kbs_uri: stack.emulator.url.trim_start_matches("https://").to_owned(),
            })
            .await
            .unwrap_err();
        // aasp's own classification (a transport failure to deliver the status would be
        // INTERNAL or UNKNOWN on the client).
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unavailable
            ),
            "{:?}: {}",
            status.code(),
            cut(status.message())
        );
        assert!(status.message().len() <= MESSAGE_MAX + 64);
    }

    let log = captured.bytes();
    // The capture also holds other tests' lines written meanwhile, so the bound is per line:
    // an uncut 2.5 MB key reference would make one line of megabytes.
    let grown = log.len() - before;
    assert!(grown < 8 << 20, "the log grew by {grown} bytes");
    let text = String::from_utf8(log).unwrap();
    let mut rpc_lines = 0;
    for line in text.lines() {
        assert!(line.len() < 64 << 10, "a log line of {} bytes", line.len());
        serde_json::from_str::<NoDuplicateKeys>(line)
            .unwrap_or_else(|e| panic!("{e}: {}", cut(line)));
        rpc_lines += usize::from(line.contains("rpc failed"));
    }
    assert!(rpc_lines >= 7, "{rpc_lines} failed-RPC lines");
}
