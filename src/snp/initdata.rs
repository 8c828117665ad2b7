//! Confidential Containers init-data: the TOML document a pod carries, and the digest of it
//! that the host puts into SNP's HOST_DATA at launch.
//!
//! The document is `version = "0.1.0"`, `algorithm = "sha256" | "sha384" | "sha512"` and a
//! `[data]` table of strings; its digest is that algorithm over the file's exact bytes
//! (guest-components `attestation-agent/src/initdata.rs`). HOST_DATA holds 32 bytes, so the
//! initdata rule fits any digest to it: longer digests are cut to their first 32 bytes, shorter
//! ones zero-padded (kata-types `initdata.rs` `adjust_digest`, the SNP attester's `pad`).

use serde::Deserialize;
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;

/// SNP's HOST_DATA size.
pub const HOST_DATA_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitdataError {
    #[error("the init-data TOML does not parse: {0}")]
    Toml(String),
    #[error("init-data algorithm {0:?} is not one of sha256, sha384, sha512")]
    Algorithm(String),
}

#[derive(Deserialize)]
struct Document {
    #[allow(dead_code)] // Required by the format; no version changes the digest.
    version: String,
    algorithm: String,
    data: HashMap<String, String>,
}

/// The digest of an init-data document: its `algorithm` over the text exactly as given.
pub fn digest(toml_text: &str) -> Result<Vec<u8>, InitdataError> {
    parse(toml_text).map(|(_, digest)| digest)
}

fn parse(toml_text: &str) -> Result<(Document, Vec<u8>), InitdataError> {
    let document: Document =
        toml::from_str(toml_text).map_err(|e| InitdataError::Toml(e.to_string()))?;
    let bytes = toml_text.as_bytes();
    let digest = match document.algorithm.as_str() {
        "sha256" => sha2::Sha256::digest(bytes).to_vec(),
        "sha384" => sha2::Sha384::digest(bytes).to_vec(),
        "sha512" => sha2::Sha512::digest(bytes).to_vec(),
        other => return Err(InitdataError::Algorithm(other.to_owned())),
    };
    Ok((document, digest))
}

/// The `[data]` table of an init-data document (what Trustee turns into `init_data_claims`).
pub fn data(toml_text: &str) -> Result<HashMap<String, String>, InitdataError> {
    parse(toml_text).map(|(document, _)| document.data)
}

/// Why init-data could not be bound to this TEE.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Both values are public (HOST_DATA is in every report): naming them lets the operator see
    /// which init-data the platform was launched with.
    #[error(
        "the init-data digest does not match the report's HOST_DATA: digest {digest}{}, HOST_DATA {host_data}",
        as_host_data.as_ref().map(|h| format!(" (cut or zero-padded to 32 bytes: {h})")).unwrap_or_default()
    )]
    Mismatch {
        /// The digest, hex.
        digest: String,
        /// The digest as HOST_DATA under the initdata rule, hex, when that differs from it.
        as_host_data: Option<String>,
        /// The report's HOST_DATA, hex.
        host_data: String,
    },
    #[error(transparent)]
    Report(#[from] crate::snp::Error),
}

/// Checks a digest against this TEE's HOST_DATA under the initdata rule, in constant time.
pub async fn check_host_data(
    attester: &Arc<dyn crate::snp::attester::Attester>,
    digest: &[u8],
) -> Result<(), BindError> {
    let expected = host_data_for(digest);
    let (report, _) = crate::snp::attester::fetch_report(attester, [0u8; 64]).await?;
    aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &report.host_data).map_err(|_| {
        BindError::Mismatch {
            digest: hex::encode(digest),
            as_host_data: (digest.len() != expected.len()).then(|| hex::encode(expected)),
            host_data: hex::encode(report.host_data),
        }
    })
}

/// An init-data document whose digest matched this TEE's HOST_DATA: only then may its settings
/// (`aa.toml`) be used and its text be sent to a KBS, as upstream's agent does after its
/// start-up check (guest-components `attestation-agent/src/bin/ttrpc-aa.rs`).
#[derive(Debug)]
pub struct VerifiedInitData {
    toml: String,
    data: HashMap<String, String>,
}

impl VerifiedInitData {
    /// Parses `toml_text` and checks its digest against the attester's HOST_DATA.
    pub async fn verify(
        attester: &Arc<dyn crate::snp::attester::Attester>,
        toml_text: String,
    ) -> Result<Self, VerifyError> {
        let (document, digest) = parse(&toml_text)?;
        check_host_data(attester, &digest).await?;
        Ok(VerifiedInitData {
            toml: toml_text,
            data: document.data,
        })
    }

    /// The document exactly as given (its bytes are what the digest covers).
    pub fn toml(&self) -> &str {
        &self.toml
    }

    /// `data."aa.toml"`: the attestation agent's configuration the workload owner chose.
    pub fn aa_toml(&self) -> Option<&str> {
        self.data.get("aa.toml").map(String::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Document(#[from] InitdataError),
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// The HOST_DATA a digest stands for under the initdata rule: the first 32 bytes of a longer
/// digest (SHA-384, SHA-512), a shorter one zero-padded.
pub fn host_data_for(digest: &[u8]) -> [u8; HOST_DATA_LEN] {
    let mut host_data = [0u8; HOST_DATA_LEN];
    for (dst, src) in host_data.iter_mut().zip(digest) {
        *dst = *src;
    }
    host_data
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://kbs\"\n'''\n";

    #[test]
    fn digest_is_the_algorithm_over_the_exact_text() {
        assert_eq!(
            digest(DOC).unwrap(),
            sha2::Sha384::digest(DOC.as_bytes()).to_vec()
        );
        let sha256 = DOC.replace("sha384", "sha256");
        assert_eq!(digest(&sha256).unwrap().len(), 32);
        let sha512 = DOC.replace("sha384", "sha512");
        assert_eq!(digest(&sha512).unwrap().len(), 64);
        // A byte more (even whitespace) is another document.
        assert_ne!(digest(&format!("{DOC}\n")).unwrap(), digest(DOC).unwrap());
        assert_eq!(
            digest(&DOC.replace("sha384", "md5")),
            Err(InitdataError::Algorithm("md5".into()))
        );
        assert!(matches!(digest("not toml ["), Err(InitdataError::Toml(_))));
        assert!(matches!(
            digest("algorithm = \"sha256\""),
            Err(InitdataError::Toml(_))
        ));
    }

    #[test]
    fn data_table_is_read() {
        let table = data(DOC).unwrap();
        assert!(table["aa.toml"].contains("[token_configs.kbs]"));
        assert!(data("version = \"0.1.0\"").is_err());
    }

    #[test]
    fn host_data_rule_per_length() {
        let d: Vec<u8> = (1..=64).collect();
        // 32: as is. 48 and 64: the first 32 bytes. Shorter: zero-padded.
        assert_eq!(host_data_for(&d[..32]).as_slice(), &d[..32]);
        assert_eq!(host_data_for(&d[..48]).as_slice(), &d[..32]);
        assert_eq!(host_data_for(&d).as_slice(), &d[..32]);
        let mut padded = [0u8; 32];
        padded[..20].copy_from_slice(&d[..20]);
        assert_eq!(host_data_for(&d[..20]), padded);
    }
}
