//! Protobuf JSON (the proto3 JSON mapping, as grpcurl reads and writes it) for the messages
//! `aasp call` sends and receives, over prost-reflect's dynamic messages.
//!
//! Written here rather than taken from prost-reflect's `serde` feature: that feature brings
//! `ordered-float`, whose blanket operator impls break type inference elsewhere in the crate
//! (`|s| s % PAGE` no longer compiles). aasp's messages need only scalars, bytes, enums, repeated
//! and nested fields; maps (none in aasp's protos) are refused on input and written as objects.

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};
use serde_json::{Map, Number, Value as Json};

/// The message as JSON: JSON field names, fields at their default value left out, 64-bit
/// integers as strings, bytes as standard base64, enums by name.
pub fn to_json(message: &DynamicMessage) -> Json {
    let mut object = Map::new();
    for (field, value) in message.fields() {
        if !field.supports_presence() && value.is_default_for_field(&field) {
            continue;
        }
        object.insert(
            field.json_name().to_owned(),
            value_to_json(&field.kind(), value),
        );
    }
    Json::Object(object)
}

fn value_to_json(kind: &Kind, value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::from(*n),
        Value::U32(n) => Json::from(*n),
        Value::I64(n) => Json::String(n.to_string()),
        Value::U64(n) => Json::String(n.to_string()),
        Value::F32(n) => float(f64::from(*n)),
        Value::F64(n) => float(*n),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or_else(|| Json::from(*n), |v| Json::String(v.name().to_owned())),
            _ => Json::from(*n),
        },
        Value::Message(m) => to_json(m),
        Value::List(items) => Json::Array(items.iter().map(|v| value_to_json(kind, v)).collect()),
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            Json::Object(
                entries
                    .iter()
                    .map(|(k, v)| (map_key(k), value_to_json(&value_kind, v)))
                    .collect(),
            )
        }
    }
}

fn float(n: f64) -> Json {
    Number::from_f64(n).map_or_else(|| Json::String(n.to_string()), Json::Number)
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// A `desc` from JSON: fields by JSON name or proto name, `null` as absent; anything else that
/// does not fit is an error naming the field.
pub fn from_json(desc: &MessageDescriptor, json: &Json) -> Result<DynamicMessage, String> {
    let Json::Object(object) = json else {
        return Err(format!("{} must be a JSON object", desc.full_name()));
    };
    let mut message = DynamicMessage::new(desc.clone());
    for (name, value) in object {
        let field = desc
            .get_field_by_json_name(name)
            .or_else(|| desc.get_field_by_name(name))
            .ok_or_else(|| format!("{} has no field {name:?}", desc.full_name()))?;
        if value.is_null() {
            continue;
        }
        let value = field_from_json(&field, value)
            .map_err(|e| format!("{}.{}: {e}", desc.full_name(), field.json_name()))?;
        message.set_field(&field, value);
    }
    Ok(message)
}

fn field_from_json(field: &FieldDescriptor, json: &Json) -> Result<Value, String> {
    if field.is_map() {
        return Err("map fields are not supported".into());
    }
    if field.is_list() {
        let Json::Array(items) = json else {
            return Err("expected an array".into());
        };
        return items
            .iter()
            .map(|item| scalar_from_json(&field.kind(), item))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List);
    }
    scalar_from_json(&field.kind(), json)
}

fn scalar_from_json(kind: &Kind, json: &Json) -> Result<Value, String> {
    Ok(match kind {
        Kind::Bool => Value::Bool(json.as_bool().ok_or("expected true or false")?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(
            i32::try_from(integer(json)?).map_err(|_| "out of range for a 32-bit integer")?,
        ),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(
            i64::try_from(integer(json)?).map_err(|_| "out of range for a 64-bit integer")?,
        ),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(
            u32::try_from(integer(json)?)
                .map_err(|_| "out of range for an unsigned 32-bit integer")?,
        ),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(
            u64::try_from(integer(json)?)
                .map_err(|_| "out of range for an unsigned 64-bit integer")?,
        ),
        Kind::Double => Value::F64(number(json)?),
        // JSON numbers are doubles; a float field keeps the nearest f32, as protobuf's own
        // JSON parsers do.
        #[allow(clippy::cast_possible_truncation)]
        Kind::Float => Value::F32(number(json)? as f32),
        Kind::String => Value::String(json.as_str().ok_or("expected a string")?.to_owned()),
        Kind::Bytes => Value::Bytes(bytes(json.as_str().ok_or("expected base64 text")?)?.into()),
        Kind::Enum(e) => Value::EnumNumber(match json {
            Json::String(name) => e
                .get_value_by_name(name)
                .map(|v| v.number())
                .ok_or_else(|| format!("{name:?} is not a value of {}", e.full_name()))?,
            _ => i32::try_from(integer(json)?).map_err(|_| "out of range for an enum")?,
        }),
        Kind::Message(m) => Value::Message(from_json(m, json)?),
    })
}

/// An integer as a JSON number or a decimal string (how proto3 JSON writes 64-bit values).
fn integer(json: &Json) -> Result<i128, String> {
    let parsed = match json {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Json::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("expected an integer, got {json}"))
}

fn number(json: &Json) -> Result<f64, String> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("expected a number, got {json}"))
}

/// Base64 as proto3 JSON accepts it: standard or URL-safe alphabet, padded or not.
fn bytes(text: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| "not base64".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> prost_reflect::DescriptorPool {
        prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn round_trips_every_kind_aasp_uses() {
        let pool = pool();
        let desc = pool
            .get_message_by_name("attestation_agent.ExtendRuntimeMeasurementRequest")
            .unwrap();
        let json = serde_json::json!({ "Domain": "d", "Content": "c", "RegisterIndex": "7" });
        let message = from_json(&desc, &json).unwrap();
        assert_eq!(to_json(&message), json);
        // A number is accepted where proto3 JSON writes a 64-bit string.
        let numeric = serde_json::json!({ "RegisterIndex": 7 });
        assert_eq!(
            to_json(&from_json(&desc, &numeric).unwrap()),
            serde_json::json!({ "RegisterIndex": "7" })
        );

        let desc = pool
            .get_message_by_name("attestation_agent.ExtendRuntimeMeasurementResponse")
            .unwrap();
        let json = serde_json::json!({ "Result": "NOT_SUPPORTED" });
        assert_eq!(to_json(&from_json(&desc, &json).unwrap()), json);
        // The default enum value is left out, as grpcurl leaves it out.
        let ok = from_json(&desc, &serde_json::json!({ "Result": 0 })).unwrap();
        assert_eq!(to_json(&ok), serde_json::json!({}));

        let desc = pool
            .get_message_by_name("attestation_agent.GetAdditionalTeesResponse")
            .unwrap();
        let json = serde_json::json!({ "additionalTees": ["tdx", "snp"] });
        assert_eq!(to_json(&from_json(&desc, &json).unwrap()), json);
    }

    #[test]
    fn names_and_bytes_as_grpcurl_writes_them() {
        let pool = pool();
        let desc = pool
            .get_message_by_name("key_provider.KeyProviderGetReportInput")
            .unwrap();
        // Proto name and JSON name both address the field; output uses the JSON name.
        for json in [
            serde_json::json!({ "report_data_hex_string": "00" }),
            serde_json::json!({ "reportDataHexString": "00" }),
        ] {
            assert_eq!(
                to_json(&from_json(&desc, &json).unwrap()),
                serde_json::json!({ "reportDataHexString": "00" })
            );
        }
        let desc = pool
            .get_message_by_name("attestation_agent.GetEvidenceRequest")
            .unwrap();
        for text in ["+/8=", "+/8", "-_8=", "-_8"] {
            let message = from_json(&desc, &serde_json::json!({ "RuntimeData": text })).unwrap();
            assert_eq!(
                to_json(&message),
                serde_json::json!({ "RuntimeData": "+/8=" })
            );
        }
    }

    #[test]
    fn what_does_not_fit_is_an_error_naming_the_field() {
        let pool = pool();
        let desc = pool
            .get_message_by_name("attestation_agent.GetEvidenceRequest")
            .unwrap();
        for (json, says) in [
            (serde_json::json!({ "Runtime": "" }), "no field \"Runtime\""),
            (
                serde_json::json!({ "RuntimeData": "%%%" }),
                "RuntimeData: not base64",
            ),
            (
                serde_json::json!({ "RuntimeData": 5 }),
                "RuntimeData: expected base64",
            ),
            (serde_json::json!([]), "must be a JSON object"),
        ] {
            let err = from_json(&desc, &json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
        let desc = pool
            .get_message_by_name("attestation_agent.ExtendRuntimeMeasurementRequest")
            .unwrap();
        let err = from_json(&desc, &serde_json::json!({ "RegisterIndex": -1 })).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }
}
