#![no_main]
//! JSON documents from outside: THIM, SkrSideCarArgs, annotation packets, JWKs, release policies.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = aasp::snp::chain::ThimDocument::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = aasp::snp::chain::SideCarArgs::parse(text);
        let _ = aasp::provision::layer::AnnotationPacket::from_annotation(text);
    }
    if let Ok(jwk) = serde_json::from_slice::<aasp::azure::jwk::Jwk>(data) {
        let _ = (jwk.family(), jwk.thumbprint(), jwk.to_pkcs8(), jwk.rsa_public_spki(), jwk.oct_bytes());
    }
    if let Ok(policy) = aasp::azure::policy::ReleasePolicy::parse(data) {
        let _ = policy.evaluate("https://maa.example", &serde_json::json!({"x-ms-sevsnpvm-hostdata": "00"}));
    }
    let _ = aasp::azure::jwk::Jwk::from_pkcs8(aasp::azure::jwk::KeyFamily::Rsa, data);
    let _ = aasp::azure::jwk::Jwk::from_pkcs8(aasp::azure::jwk::KeyFamily::Ec, data);
});
