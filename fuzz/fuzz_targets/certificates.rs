#![no_main]
//! Certificate inputs (DER, PEM bundles) and the AMD-specific reads on what parses.
use aasp::snp::cert::Cert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = Cert::from_der(data) {
        let _ = (cert.role(), cert.product(), cert.validity(), cert.sev_extensions(), cert.is_signed_by(&cert));
        let _ = aasp::snp::verify::Chain::from_certs(vec![cert]);
    }
    let _ = Cert::from_pem_bundle(data);
});
