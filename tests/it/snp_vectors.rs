//! The real hardware vectors: they verify against AMD's embedded roots, every tampering fails,
//! and parsing round-trips byte for byte.

use crate::common;

use aasp::snp::cert::Cert;
use aasp::snp::report::{AttestationReport, SIGNED_LEN};
use aasp::snp::verify::{verify_report, Chain, TrustStore, Verification};
use common::{read, vectors, Vector};

fn chain_of(v: &Vector) -> Chain {
    let mut certs = vec![Cert::from_der(&read(&format!("{}/{}", v.name, v.signer_file))).unwrap()];
    certs.extend(Cert::from_pem_bundle(&read(&format!("{}/chain.pem", v.name))).unwrap());
    Chain::from_certs(certs).unwrap()
}

fn verify_bytes(raw: &[u8], chain: &Chain, at: u64) -> Option<Verification> {
    let report = AttestationReport::from_bytes(raw).ok()?;
    Some(verify_report(&report, chain, &TrustStore::amd(), at))
}

fn failed(v: &Verification) -> Vec<&'static str> {
    v.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect()
}

#[test]
fn every_valid_vector_verifies_against_amd_roots() {
    for v in vectors() {
        let raw = read(&format!("{}/report.bin", v.name));
        let verification = verify_bytes(&raw, &chain_of(&v), v.verify_at).unwrap();
        assert!(
            verification.passed(),
            "{}: {:?}",
            v.name,
            failed(&verification)
        );
        assert!(
            verification.checks.len() >= 9,
            "{}: too few checks ran",
            v.name
        );
    }
}

#[test]
fn every_valid_vector_verifies_with_only_its_signer_and_embedded_intermediates() {
    for v in vectors() {
        let raw = read(&format!("{}/report.bin", v.name));
        let signer = Cert::from_der(&read(&format!("{}/{}", v.name, v.signer_file))).unwrap();
        let chain = Chain {
            signer,
            intermediate: None,
            ark: None,
        };
        let verification = verify_bytes(&raw, &chain, v.verify_at).unwrap();
        assert!(
            verification.passed(),
            "{}: {:?}",
            v.name,
            failed(&verification)
        );
    }
}

#[test]
fn parsing_round_trips_byte_for_byte() {
    for v in vectors() {
        let raw = read(&format!("{}/report.bin", v.name));
        let report = AttestationReport::from_bytes(&raw).unwrap();
        assert_eq!(report.to_bytes(), raw, "{}", v.name);
    }
}

#[test]
fn flipping_any_signed_report_byte_fails_the_signature() {
    for v in vectors() {
        let raw = read(&format!("{}/report.bin", v.name));
        let chain = chain_of(&v);
        for i in 0..SIGNED_LEN {
            let mut tampered = raw.clone();
            tampered[i] ^= 0x01;
            // A flip may also make the report unparsable (its version): that is a failure too.
            if let Some(verification) = verify_bytes(&tampered, &chain, v.verify_at) {
                let signature = verification
                    .checks
                    .iter()
                    .find(|c| c.name == "report signature")
                    .unwrap();
                assert!(
                    !signature.passed,
                    "{}: flipping byte {i:#x} still verified",
                    v.name
                );
                assert!(!verification.passed());
            }
        }
    }
}

#[test]
fn flipping_a_signature_byte_fails() {
    for v in vectors() {
        let raw = read(&format!("{}/report.bin", v.name));
        let chain = chain_of(&v);
        for i in [0x2A0, 0x2A0 + 20, 0x2E8, 0x2E8 + 47] {
            let mut tampered = raw.clone();
            tampered[i] ^= 0x80;
            let verification = verify_bytes(&tampered, &chain, v.verify_at).unwrap();
            assert_eq!(
                failed(&verification),
                vec!["report signature"],
                "{} byte {i:#x}",
                v.name
            );
        }
    }
}

#[test]
fn flipping_a_certificate_signature_byte_fails_the_chain() {
    for v in vectors() {
        let raw = read(&format!("{}/report.bin", v.name));
        let chain = chain_of(&v);
        let mut signer = chain.signer.der().to_vec();
        let last = signer.len() - 1;
        signer[last] ^= 0x01;
        let tampered = Chain {
            signer: Cert::from_der(&signer).unwrap(),
            ..chain.clone()
        };
        let verification = verify_bytes(&raw, &tampered, v.verify_at).unwrap();
        assert!(
            failed(&verification).contains(&"signer signed by intermediate"),
            "{}",
            v.name
        );

        let mut intermediate = chain.intermediate.clone().unwrap().der().to_vec();
        let last = intermediate.len() - 1;
        intermediate[last] ^= 0x01;
        let tampered = Chain {
            intermediate: Some(Cert::from_der(&intermediate).unwrap()),
            ..chain.clone()
        };
        let verification = verify_bytes(&raw, &tampered, v.verify_at).unwrap();
        assert!(
            failed(&verification).contains(&"intermediate signed by pinned root"),
            "{}",
            v.name
        );
    }
}

#[test]
fn certificates_are_checked_for_validity_at_the_given_time() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "milan-vlek-trustee")
        .unwrap();
    let raw = read(&format!("{}/report.bin", v.name));
    // The VLEK expired on 2025-12-10; a year later it must fail, and only for that reason.
    let later = v.verify_at + 365 * 24 * 3600;
    let verification = verify_bytes(&raw, &chain_of(&v), later).unwrap();
    assert_eq!(failed(&verification), vec!["certificate validity"]);
}

#[test]
fn a_report_with_another_chips_vcek_fails() {
    let go = vectors()
        .into_iter()
        .find(|v| v.name == "milan-go-sev-guest")
        .unwrap();
    let trustee = vectors()
        .into_iter()
        .find(|v| v.name == "milan-trustee")
        .unwrap();
    let raw = read(&format!("{}/report.bin", go.name));
    let verification = verify_bytes(&raw, &chain_of(&trustee), go.verify_at).unwrap();
    let failures = failed(&verification);
    assert!(failures.contains(&"report signature"), "{failures:?}");
    assert!(
        failures.contains(&"chip id equals certificate hwid"),
        "{failures:?}"
    );
}

#[test]
fn edited_vceks_no_amd_key_signed_fail() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "milan-trustee")
        .unwrap();
    let raw = read(&format!("{}/report.bin", v.name));
    for file in [
        "negative/test-vcek-invalid-legacy.der",
        "negative/test-vcek-invalid-new.der",
    ] {
        let chain = Chain {
            signer: Cert::from_der(&read(file)).unwrap(),
            intermediate: None,
            ark: None,
        };
        let verification = verify_bytes(&raw, &chain, v.verify_at).unwrap();
        assert!(
            failed(&verification).contains(&"signer signed by intermediate"),
            "{file}"
        );
    }
}

#[test]
fn a_foreign_root_in_the_chain_is_not_trusted() {
    // The chain carries Genoa's ARK for a Milan VCEK: the pinned Milan root is used to verify,
    // and the mismatching root the chain carried is reported.
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "milan-virtee")
        .unwrap();
    let raw = read(&format!("{}/report.bin", v.name));
    let genoa_ark = Cert::from_pem_bundle(&read("roots/genoa-ark.pem"))
        .unwrap()
        .remove(0);
    let chain = Chain {
        ark: Some(genoa_ark),
        ..chain_of(&v)
    };
    let verification = verify_bytes(&raw, &chain, v.verify_at).unwrap();
    assert_eq!(failed(&verification), vec!["chain root is the pinned root"]);
}
