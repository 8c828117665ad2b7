//! Every parser that sees outside bytes returns a typed result for arbitrary input and never
//! panics (proptest, 256 cases per property by default; PROPTEST_CASES raises it).

use aasp::azure::jwk::{Jwk, KeyFamily};
use aasp::azure::jws::{verify_x5c, Anchors, Compact};
use aasp::azure::policy::ReleasePolicy;
use aasp::provision::layer::AnnotationPacket;
use aasp::snp::cert::Cert;
use aasp::snp::chain::{SideCarArgs, ThimDocument};
use aasp::snp::evidence::{load_report, Evidence};
use aasp::snp::report::{AttestationReport, REPORT_SIZE};
use aasp::snp::verify::Chain;
use proptest::prelude::*;

fn real_report() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/snp/milan-trustee/report.bin"
    ))
    .unwrap()
}

fn real_vcek() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/snp/milan-trustee/vcek.der"
    ))
    .unwrap()
}

/// Arbitrary bytes, and mutations of a valid input (which reach deeper into a parser).
fn bytes_near(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        (proptest::collection::vec((0..len, any::<u8>()), 1..8)).prop_map(move |edits| {
            let mut v = valid.clone();
            for (i, b) in edits {
                v[i] = b;
            }
            v
        }),
    ]
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,300}",
        "[\\[\\]{}\":,0-9a-zA-Z_ -]{0,300}",
        Just("{\"SnpReport\": 5, \"VcekCertChain\": [1]}".to_owned()),
        Just("[".repeat(10_000)),
    ]
}

proptest! {
    #[test]
    fn report(bytes in bytes_near(real_report())) {
        if let Ok(report) = AttestationReport::from_bytes(&bytes) {
            prop_assert_eq!(report.to_bytes(), bytes);
            let _ = report.signature_p1363();
            let _ = report.to_string();
        }
    }

    #[test]
    fn report_of_exact_size(bytes in proptest::collection::vec(any::<u8>(), REPORT_SIZE..=REPORT_SIZE)) {
        let _ = AttestationReport::from_bytes(&bytes);
    }

    #[test]
    fn certificates(bytes in bytes_near(real_vcek())) {
        if let Ok(cert) = Cert::from_der(&bytes) {
            let _ = (cert.role(), cert.product(), cert.validity(), cert.sev_extensions(), cert.is_signed_by(&cert));
            let _ = Chain::from_certs(vec![cert]);
        }
        let _ = Cert::from_der_or_pem(&bytes);
        let _ = Cert::from_pem_bundle(&bytes);
    }

    #[test]
    fn report_inputs_and_evidence(text in json_text(), bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = load_report(text.as_bytes());
        let _ = load_report(&bytes);
        let _ = Evidence::from_json(text.as_bytes());
    }

    #[test]
    fn thim_and_sidecar_config(text in json_text()) {
        let _ = ThimDocument::parse(text.as_bytes());
        let _ = SideCarArgs::parse(&text);
        use base64::Engine;
        let _ = SideCarArgs::parse(&base64::engine::general_purpose::STANDARD.encode(&text));
    }

    #[test]
    fn annotation_packets(text in json_text()) {
        let _ = AnnotationPacket::from_annotation(&text);
        use base64::Engine;
        let _ = AnnotationPacket::from_annotation(&base64::engine::general_purpose::STANDARD.encode(&text));
    }

    #[test]
    fn jws(parts in proptest::collection::vec("[A-Za-z0-9_=-]{0,80}", 0..5), host in "[a-z0-9.:]{0,20}") {
        let token = parts.join(".");
        if let Ok(compact) = Compact::parse(&token) {
            let _ = compact.claims();
            let _ = compact.verify_rs256_spki(&[0x30, 0x00]);
        }
        let _ = verify_x5c(&token, &host, &Anchors::default());
    }

    #[test]
    fn jwk(text in json_text(), der in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(jwk) = serde_json::from_str::<Jwk>(&text) {
            let _ = (jwk.family(), jwk.thumbprint(), jwk.to_pkcs8(), jwk.rsa_public_spki(), jwk.oct_bytes());
        }
        let _ = Jwk::from_pkcs8(KeyFamily::Rsa, &der);
        let _ = Jwk::from_pkcs8(KeyFamily::Ec, &der);
        let _ = Jwk::from_rsa_spki(&der);
    }

    #[test]
    fn release_policies(policy in json_text(), claims in json_text(), issuer in ".{0,40}") {
        if let Ok(policy) = ReleasePolicy::parse(policy.as_bytes()) {
            let claims: serde_json::Value = serde_json::from_str(&claims).unwrap_or_default();
            let _ = policy.evaluate(&issuer, &claims);
        }
    }

    #[test]
    fn command_line_values(text in ".{0,60}") {
        let _ = text.parse::<aasp::service::Listen>();
        let _ = text.parse::<aasp::emulator::faults::Faults>();
    }
}
