//! Evidence documents: the report plus what endorses it, in the two JSON shapes verifiers take.
//!
//! - MAA's (`Evidence`), inside the `report` field of `attest/SevSnpVm`:
//!   `{"SnpReport": b64url(report), "VcekCertChain": b64url(PEM VCEK+ASK+ARK),
//!     "Endorsements": b64url(JSON {"Uvm": [b64url(COSE_Sign1)]})}`
//! - Confidential Containers' (`coco_evidence_json`), what the upstream attestation agent's SNP
//!   attester returns from GetEvidence and Trustee's SNP verifier deserializes:
//!   `{"attestation_report": <sev AttestationReport>, "cert_chain": [<sev CertTableEntry>] | null}`.
//!   It is written with the `sev` crate's own serde types, so the field names, the TCB and
//!   version objects and the number arrays are exactly what those peers parse.

use crate::snp::cert::{Cert, Role};
use crate::snp::report::{AttestationReport, REPORT_SIZE};
use crate::snp::verify::Chain;
use crate::snp::{Error, Result};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub report: Vec<u8>,
    /// PEM: VCEK (or VLEK), then ASK, then ARK.
    pub cert_chain_pem: String,
    /// COSE_Sign1 UVM endorsements (Azure's reference info), if the platform provides them.
    pub uvm_endorsements: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Document {
    #[serde(rename = "SnpReport")]
    snp_report: String,
    #[serde(rename = "VcekCertChain", default)]
    vcek_cert_chain: String,
    #[serde(
        rename = "Endorsements",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    endorsements: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Endorsements {
    #[serde(rename = "Uvm", default)]
    uvm: Vec<String>,
}

impl Evidence {
    pub fn to_json(&self) -> String {
        let endorsements = self.uvm_endorsements.as_ref().map(|cose| {
            let inner = Endorsements {
                uvm: vec![URL_SAFE.encode(cose)],
            };
            URL_SAFE.encode(serde_json::to_vec(&inner).unwrap_or_default())
        });
        let doc = Document {
            snp_report: URL_SAFE.encode(&self.report),
            vcek_cert_chain: URL_SAFE.encode(&self.cert_chain_pem),
            endorsements,
        };
        serde_json::to_string(&doc).unwrap_or_default()
    }

    pub fn from_json(json: &[u8]) -> Result<Self> {
        let doc: Document = serde_json::from_slice(json)
            .map_err(|e| Error::Evidence(format!("not an evidence document: {e}")))?;
        let report = decode_b64("SnpReport", &doc.snp_report)?;
        let chain = decode_b64("VcekCertChain", &doc.vcek_cert_chain)?;
        let cert_chain_pem = String::from_utf8(chain)
            .map_err(|_| Error::Evidence("VcekCertChain is not PEM text".into()))?;
        let uvm_endorsements = match doc.endorsements {
            None => None,
            Some(e) => {
                let inner: Endorsements = serde_json::from_slice(&decode_b64("Endorsements", &e)?)
                    .map_err(|e| Error::Evidence(format!("Endorsements: {e}")))?;
                inner
                    .uvm
                    .first()
                    .map(|u| decode_b64("Endorsements.Uvm", u))
                    .transpose()?
            }
        };
        Ok(Evidence {
            report,
            cert_chain_pem,
            uvm_endorsements,
        })
    }
}

/// Base64 as peers actually send it: URL-safe or standard alphabet, padded or not.
pub fn decode_b64(field: &str, value: &str) -> Result<Vec<u8>> {
    let value = value.trim();
    [URL_SAFE, URL_SAFE_NO_PAD, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(value).ok())
        .ok_or_else(|| Error::Evidence(format!("{field} is not valid base64")))
}

/// What a report file held.
pub struct LoadedReport {
    pub report: AttestationReport,
    pub raw: Vec<u8>,
    /// Set when the input was an evidence document.
    pub evidence: Option<Evidence>,
}

/// Reads a report given as raw bytes, hex text, an evidence document, or an MAA request body
/// (`{"report": b64url(evidence)}`).
pub fn load_report(input: &[u8]) -> Result<LoadedReport> {
    if input.len() == REPORT_SIZE {
        return loaded(input.to_vec(), None);
    }
    let text = std::str::from_utf8(input)
        .map(str::trim)
        .unwrap_or_default();
    if text.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Evidence(format!("the JSON input does not parse: {e}")))?;
        if let Some(inner) = value.get("report").and_then(|r| r.as_str()) {
            return load_report(&decode_b64("report", inner)?);
        }
        if value.get("attestation_report").is_some() {
            let evidence = from_coco_json(value)?;
            return loaded(evidence.report.clone(), Some(evidence));
        }
        let evidence = Evidence::from_json(text.as_bytes())?;
        return loaded(evidence.report.clone(), Some(evidence));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(raw) = hex::decode(&compact) {
        return loaded(raw, None);
    }
    Err(Error::Evidence(format!(
        "the input is {} bytes and neither a raw {REPORT_SIZE}-byte report, hex, nor an evidence JSON document",
        input.len()
    )))
}

fn loaded(raw: Vec<u8>, evidence: Option<Evidence>) -> Result<LoadedReport> {
    Ok(LoadedReport {
        report: AttestationReport::from_bytes(&raw)?,
        raw,
        evidence,
    })
}

/// Reads CoCo evidence back into the report's bytes (re-encoded by `sev`; reserved bytes, which
/// the JSON does not carry, are zero as the firmware writes them) and its chain as PEM.
fn from_coco_json(value: serde_json::Value) -> Result<Evidence> {
    use sev::parser::ByteParser;
    let doc: CocoEvidence = serde_json::from_value(value)
        .map_err(|e| Error::Evidence(format!("not a CoCo SNP evidence document: {e}")))?;
    let report = doc
        .attestation_report
        .to_bytes()
        .map_err(|e| Error::Evidence(format!("attestation_report cannot be encoded: {e}")))?
        .to_vec();
    let mut cert_chain_pem = String::new();
    for entry in doc.cert_chain.unwrap_or_default() {
        cert_chain_pem.push_str(&Cert::from_der(&entry.data)?.to_pem());
    }
    Ok(Evidence {
        report,
        cert_chain_pem,
        uvm_endorsements: None,
    })
}

/// The report_data a CoCo caller's RuntimeData stands for: the bytes themselves, zero-padded to
/// 64 (upstream's SNP attester does the same); `None` when there are more than 64.
pub fn coco_report_data(runtime_data: &[u8]) -> Option<[u8; 64]> {
    let mut report_data = [0u8; 64];
    report_data
        .get_mut(..runtime_data.len())?
        .copy_from_slice(runtime_data);
    Some(report_data)
}

/// Upstream's `SnpEvidence`, field for field.
#[derive(Serialize, Deserialize)]
struct CocoEvidence {
    attestation_report: sev::firmware::guest::AttestationReport,
    cert_chain: Option<Vec<sev::firmware::host::CertTableEntry>>,
}

/// The CoCo SNP evidence JSON of a raw report and, when there is one, the chain that endorses it
/// (signer, intermediate, root; `null` without a chain, as upstream sends when the host supplies
/// no certificates and the verifier fetches them itself).
pub fn coco_evidence_json(raw_report: &[u8], chain: Option<&Chain>) -> Result<Vec<u8>> {
    use sev::parser::ByteParser;
    let attestation_report = sev::firmware::guest::AttestationReport::from_bytes(raw_report)
        .map_err(|e| Error::Evidence(format!("the sev crate cannot read the report: {e}")))?;
    let cert_chain = chain.map(|chain| {
        [
            Some(&chain.signer),
            chain.intermediate.as_ref(),
            chain.ark.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(cert_table_entry)
        .collect()
    });
    serde_json::to_vec(&CocoEvidence {
        attestation_report,
        cert_chain,
    })
    .map_err(|e| Error::Evidence(format!("cannot serialize the CoCo evidence: {e}")))
}

/// A certificate as an entry of the guest's certificate table. The table has no ASVK type: the
/// VLEK's intermediate travels as `ASK`, the slot Trustee's verifier reads the intermediate from.
fn cert_table_entry(cert: &Cert) -> Option<sev::firmware::host::CertTableEntry> {
    use sev::firmware::host::CertType;
    let cert_type = match cert.role() {
        Role::Vcek => CertType::VCEK,
        Role::Vlek => CertType::VLEK,
        Role::Ask | Role::Asvk => CertType::ASK,
        Role::Ark => CertType::ARK,
        Role::Unknown => return None,
    };
    Some(sev::firmware::host::CertTableEntry::new(
        cert_type,
        cert.der().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snp::sim::{SimOptions, Simulated};
    use crate::snp::Attester;

    /// Upstream's evidence struct as built against the sev versions CoCo peers use
    /// (guest-components' attester: sev 6.3; Trustee's verifier: sev 7).
    #[derive(serde::Deserialize)]
    struct SnpEvidence6 {
        attestation_report: sev6::firmware::guest::AttestationReport,
        cert_chain: Option<Vec<sev6::firmware::host::CertTableEntry>>,
    }

    #[derive(serde::Deserialize)]
    struct SnpEvidence7 {
        attestation_report: sev7::firmware::guest::AttestationReport,
        cert_chain: Option<Vec<sev7::firmware::host::CertTableEntry>>,
    }

    fn simulated() -> (tempfile::TempDir, Simulated) {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulated::open(&SimOptions {
            state_dir: dir.path().into(),
            ..SimOptions::default()
        })
        .unwrap();
        (dir, sim)
    }

    #[test]
    fn report_data_is_the_runtime_data_zero_padded() {
        assert_eq!(coco_report_data(b""), Some([0u8; 64]));
        let mut expected = [0u8; 64];
        expected[..3].copy_from_slice(b"abc");
        assert_eq!(coco_report_data(b"abc"), Some(expected));
        assert_eq!(coco_report_data(&[7u8; 64]), Some([7u8; 64]));
        assert_eq!(coco_report_data(&[7u8; 65]), None);
    }

    #[test]
    fn coco_evidence_deserializes_with_sev_6_and_7() {
        let (_dir, sim) = simulated();
        let report_data = coco_report_data(b"trustee nonce").unwrap();
        let raw = sim.report(&report_data).unwrap();
        let ours = AttestationReport::from_bytes(&raw).unwrap();
        let json = coco_evidence_json(&raw, Some(sim.chain())).unwrap();

        let v7: SnpEvidence7 = serde_json::from_slice(&json).unwrap();
        let r7 = &v7.attestation_report;
        assert_eq!(r7.report_data, report_data);
        assert_eq!(r7.version, ours.version);
        assert_eq!(r7.measurement, ours.measurement);
        assert_eq!(r7.host_data, ours.host_data);
        assert_eq!(r7.chip_id, ours.chip_id);
        assert_eq!(r7.vmpl, ours.vmpl);
        assert_eq!(r7.cpuid_fam_id, Some(ours.cpuid[0]));
        // Trustee's verifier re-encodes nothing: it checks the signature over sev's encoding.
        {
            use sev7::parser::ByteParser;
            assert_eq!(
                r7.to_bytes().unwrap()[..SIGNED_LEN_FOR_TESTS],
                raw[..SIGNED_LEN_FOR_TESTS]
            );
        }
        let chain7 = v7.cert_chain.unwrap();
        let types7: Vec<_> = chain7.iter().map(|e| e.cert_type.clone()).collect();
        use sev7::firmware::host::CertType as T7;
        assert_eq!(types7, [T7::VCEK, T7::ASK, T7::ARK]);
        assert_eq!(chain7[0].data, sim.chain().signer.der());

        let v6: SnpEvidence6 = serde_json::from_slice(&json).unwrap();
        assert_eq!(v6.attestation_report.report_data.0, report_data);
        assert_eq!(v6.attestation_report.host_data.0, ours.host_data);
        assert_eq!(v6.attestation_report.measurement.0, ours.measurement);
        let chain6 = v6.cert_chain.unwrap();
        assert_eq!(chain6.len(), 3);
        assert_eq!(chain6[0].cert_type, sev6::firmware::host::CertType::VCEK);
        assert_eq!(chain6[2].data, sim.chain().ark.as_ref().unwrap().der());

        // The exact upstream field set, no more and no less.
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["attestation_report", "cert_chain"]);
        assert_eq!(value["attestation_report"]["policy"], ours.policy);
        assert_eq!(
            value["attestation_report"]["reported_tcb"]["snp"],
            ours.tcb(ours.reported_tcb).snp
        );
    }

    #[test]
    fn coco_evidence_without_a_chain_sends_null() {
        let (_dir, sim) = simulated();
        let raw = sim.report(&[1u8; 64]).unwrap();
        let json = coco_evidence_json(&raw, None).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(value["cert_chain"].is_null());
        let v7: SnpEvidence7 = serde_json::from_slice(&json).unwrap();
        assert!(v7.cert_chain.is_none());
    }

    #[test]
    fn coco_evidence_loads_back_to_the_same_report_and_chain() {
        let (_dir, sim) = simulated();
        let raw = sim.report(&[9u8; 64]).unwrap();
        let json = coco_evidence_json(&raw, Some(sim.chain())).unwrap();
        let loaded = load_report(&json).unwrap();
        assert_eq!(loaded.raw, raw);
        let evidence = loaded.evidence.unwrap();
        assert_eq!(evidence.cert_chain_pem, sim.chain().to_pem());
    }

    #[test]
    fn a_report_sev_cannot_read_is_an_evidence_error() {
        let (_dir, sim) = simulated();
        let mut raw = sim.report(&[0u8; 64]).unwrap();
        // Version 3 with an unknown CPU family: sev cannot tell the generation.
        raw[0x188] = 0x42;
        assert!(matches!(
            coco_evidence_json(&raw, None),
            Err(Error::Evidence(_))
        ));
        assert!(coco_evidence_json(&raw[..100], None).is_err());
    }

    const SIGNED_LEN_FOR_TESTS: usize = crate::snp::report::SIGNED_LEN;
}
