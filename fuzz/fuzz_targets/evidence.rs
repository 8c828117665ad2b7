#![no_main]
//! Report inputs as `aasp verify` and the MAA emulator take them: raw, hex, evidence JSON, MAA body.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = aasp::snp::evidence::load_report(data);
    let _ = aasp::snp::evidence::Evidence::from_json(data);
});
