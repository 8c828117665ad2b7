//! The evidence document: the report plus what endorses it, in the exact JSON shape MAA's
//! `attest/SevSnpVm` accepts inside its `report` field, so any verifier can consume it.
//!
//! `{"SnpReport": b64url(report), "VcekCertChain": b64url(PEM VCEK+ASK+ARK),
//!   "Endorsements": b64url(JSON {"Uvm": [b64url(COSE_Sign1)]})}`

use crate::snp::report::{AttestationReport, REPORT_SIZE};
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
