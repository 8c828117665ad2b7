#![no_main]
//! The SNP report parser: never panics; whatever parses serializes back to the same bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = aasp::snp::report::AttestationReport::from_bytes(data) {
        assert_eq!(report.to_bytes(), data);
        let _ = report.signature_p1363();
        let _ = report.to_string();
    }
});
