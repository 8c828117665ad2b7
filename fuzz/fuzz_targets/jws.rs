#![no_main]
//! Compact JWS/JWT parsing and the release-response check.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(token) = aasp::azure::jws::Compact::parse(text) {
            let _ = token.claims();
        }
        let _ = aasp::azure::jws::verify_x5c(text, "kms.example", &aasp::azure::jws::Anchors::default());
    }
});
