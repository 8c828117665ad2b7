//! AMD's certificates: parsing (DER or PEM), the SEV-specific extensions, and the two signature
//! schemes of the chain (RSA-PSS SHA-384 for ARK/ASK/ASVK, ECDSA P-384 for reports).
//!
//! AMD's VCEK and VLEK certificates carry serial number zero; x509-cert's default profile
//! accepts that, which is why it is used here rather than a stricter parser.

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED, RSA_PSS_2048_8192_SHA384};
use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use der::oid::ObjectIdentifier;
use der::{Decode, Encode, Reader, SliceReader};
use x509_cert::Certificate;

/// DER of `AlgorithmIdentifier{ rsassaPss, {sha384, mgf1(sha384), salt 48, trailer 1} }`, as AMD
/// writes it in ARKs, ASKs and older VCEKs.
pub const RSA_PSS_SHA384_ALGORITHM: &[u8] = &[
    0x30, 0x46, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x39, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];

/// The same with the trailer field left at its default, as newer VCEKs and VLEKs write it.
pub const RSA_PSS_SHA384_ALGORITHM_DEFAULT_TRAILER: &[u8] = &[
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x30,
];

pub const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
pub const OID_PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
pub const OID_TCB_BOOTLOADER: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
pub const OID_TCB_TEE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
pub const OID_TCB_SNP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
pub const OID_TCB_MICROCODE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
pub const OID_TCB_FMC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
pub const OID_HWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a DER certificate: {0}")]
    Der(der::Error),
    #[error("no PEM certificate found: {0}")]
    Pem(String),
    #[error("certificate {subject}: extension {oid} is malformed")]
    Extension {
        subject: String,
        oid: ObjectIdentifier,
    },
    #[error("certificate {subject}: extension {oid} is missing")]
    MissingExtension {
        subject: String,
        oid: ObjectIdentifier,
    },
}

/// Which place a certificate takes in an AMD chain, read from its common name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ARK-<product>`: the self-signed root.
    Ark,
    /// `SEV-<product>`: signs VCEKs.
    Ask,
    /// `SEV-VLEK-<product>`: signs VLEKs.
    Asvk,
    /// `SEV-VCEK`
    Vcek,
    /// `SEV-VLEK`
    Vlek,
    Unknown,
}

/// A parsed certificate together with the exact bytes it came from.
#[derive(Clone)]
pub struct Cert {
    der: Vec<u8>,
    cert: Certificate,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cert({})", self.subject_cn())
    }
}

impl PartialEq for Cert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

/// One PEM block (RFC 7468): `der` in standard base64, 64 characters a line, between the
/// BEGIN and END lines of `label`.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Cert {
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let cert = Certificate::from_der(der).map_err(CertError::Der)?;
        Ok(Cert {
            der: der.to_vec(),
            cert,
        })
    }

    /// Every certificate in a PEM bundle, in order. Text outside the blocks (RFC 7468's
    /// explanatory text) is skipped; a block of another kind is an error. Each block's base64 is
    /// decoded once and parsed as DER, and those bytes are kept: no PEM reader streaming the
    /// base64 through the parser, no re-encoding (that cost ~0.1 ms per THIM chain of three).
    pub fn from_pem_bundle(pem: &[u8]) -> Result<Vec<Self>, CertError> {
        const BEGIN: &str = "-----BEGIN ";
        const LABEL: &str = "CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let text = std::str::from_utf8(pem)
            .map_err(|_| CertError::Pem("the input is not PEM text".into()))?;
        let mut certs = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let block = rest.get(start + BEGIN.len()..).unwrap_or_default();
            let block = block.strip_prefix(LABEL).ok_or_else(|| {
                CertError::Pem("a PEM block other than CERTIFICATE in the input".into())
            })?;
            let (body, after) = block
                .split_once(END)
                .ok_or_else(|| CertError::Pem("a CERTIFICATE block without its END line".into()))?;
            let b64: String = body.split_ascii_whitespace().collect();
            let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .map_err(|_| CertError::Pem("a CERTIFICATE block is not base64".into()))?;
            let cert = Certificate::from_der(&der).map_err(CertError::Der)?;
            certs.push(Cert { der, cert });
            rest = after;
        }
        if certs.is_empty() {
            return Err(CertError::Pem("the input holds no PEM certificate".into()));
        }
        Ok(certs)
    }

    /// DER, or a PEM bundle holding exactly one certificate.
    pub fn from_der_or_pem(bytes: &[u8]) -> Result<Self, CertError> {
        if bytes.starts_with(b"-----") || bytes.starts_with(b"\n-----") {
            let mut certs = Self::from_pem_bundle(bytes)?;
            return match certs.len() {
                1 => certs.pop().ok_or_else(|| CertError::Pem("empty".into())),
                n => Err(CertError::Pem(format!(
                    "expected one certificate, found {n}"
                ))),
            };
        }
        Self::from_der(bytes)
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn to_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.der)
    }

    pub fn subject_cn(&self) -> String {
        common_name(&self.cert.tbs_certificate.subject).unwrap_or_default()
    }

    pub fn issuer_cn(&self) -> String {
        common_name(&self.cert.tbs_certificate.issuer).unwrap_or_default()
    }

    pub fn role(&self) -> Role {
        let cn = self.subject_cn();
        match cn.as_str() {
            "SEV-VCEK" => Role::Vcek,
            "SEV-VLEK" => Role::Vlek,
            _ if cn.starts_with("ARK-") => Role::Ark,
            _ if cn.starts_with("SEV-VLEK-") => Role::Asvk,
            _ if cn.starts_with("SEV-") => Role::Ask,
            _ => Role::Unknown,
        }
    }

    /// The processor generation a chain certificate belongs to: `Milan` from `ARK-Milan`,
    /// `SEV-Milan` or `SEV-VLEK-Milan`; for a VCEK/VLEK, from its issuer's name.
    pub fn product(&self) -> Option<String> {
        let name = match self.role() {
            Role::Vcek | Role::Vlek => self.issuer_cn(),
            _ => self.subject_cn(),
        };
        ["ARK-", "SEV-VLEK-", "SEV-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .map(str::to_owned)
    }

    /// Seconds since the Unix epoch of notBefore and notAfter.
    pub fn validity(&self) -> (u64, u64) {
        let v = &self.cert.tbs_certificate.validity;
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    pub fn is_self_issued(&self) -> bool {
        self.cert.tbs_certificate.subject == self.cert.tbs_certificate.issuer
    }

    fn public_key_bytes(&self) -> &[u8] {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes()
    }

    /// Whether `issuer`'s key made this certificate's RSA-PSS SHA-384 signature.
    pub fn is_signed_by(&self, issuer: &Cert) -> bool {
        let Ok(alg) = self.cert.signature_algorithm.to_der() else {
            return false;
        };
        if alg != RSA_PSS_SHA384_ALGORITHM && alg != RSA_PSS_SHA384_ALGORITHM_DEFAULT_TRAILER {
            return false;
        }
        let Some(tbs) = tbs_bytes(&self.der) else {
            return false;
        };
        let Some(signature) = self.cert.signature.as_bytes() else {
            return false;
        };
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA384, issuer.public_key_bytes())
            .verify(tbs, signature)
            .is_ok()
    }

    /// Whether this (VCEK/VLEK) certificate's P-384 key made `signature` (`r ‖ s`, big-endian).
    pub fn verifies_p384(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, self.public_key_bytes())
            .verify(message, signature)
            .is_ok()
    }

    fn extension(&self, oid: ObjectIdentifier) -> Option<&[u8]> {
        self.cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|ext| ext.extn_id == oid)
            .map(|ext| ext.extn_value.as_bytes())
    }

    fn tcb_extension(&self, oid: ObjectIdentifier) -> Result<Option<u8>, CertError> {
        self.extension(oid)
            .map(|value| {
                u8::from_der(value).map_err(|_| CertError::Extension {
                    subject: self.subject_cn(),
                    oid,
                })
            })
            .transpose()
    }

    /// The TCB a VCEK/VLEK was issued for, and the chip it belongs to.
    pub fn sev_extensions(&self) -> Result<SevExtensions, CertError> {
        let required = |oid| {
            self.tcb_extension(oid)?.ok_or(CertError::MissingExtension {
                subject: self.subject_cn(),
                oid,
            })
        };
        let hwid = match self.extension(OID_HWID) {
            None => None,
            Some(value) => Some(decode_hwid(value).ok_or(CertError::Extension {
                subject: self.subject_cn(),
                oid: OID_HWID,
            })?),
        };
        let product_name = self.extension(OID_PRODUCT_NAME).and_then(|value| {
            Ia5StringRef::from_der(value)
                .ok()
                .map(|s| s.as_str().to_owned())
        });
        Ok(SevExtensions {
            bootloader: required(OID_TCB_BOOTLOADER)?,
            tee: required(OID_TCB_TEE)?,
            snp: required(OID_TCB_SNP)?,
            microcode: required(OID_TCB_MICROCODE)?,
            fmc: self.tcb_extension(OID_TCB_FMC)?,
            hwid,
            product_name,
        })
    }
}

/// The SEV extensions of a VCEK or VLEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevExtensions {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    pub fmc: Option<u8>,
    pub hwid: Option<[u8; 64]>,
    /// `Milan-B0`, `Genoa-B1`, …
    pub product_name: Option<String>,
}

impl SevExtensions {
    /// The TCB as the u64 the report uses, in the layout of the given generation.
    pub fn tcb_raw(&self, turin_layout: bool) -> u64 {
        let mut b = [0u8; 8];
        if turin_layout {
            b[0] = self.fmc.unwrap_or(0);
            b[1] = self.bootloader;
            b[2] = self.tee;
            b[3] = self.snp;
        } else {
            b[0] = self.bootloader;
            b[1] = self.tee;
            b[6] = self.snp;
        }
        b[7] = self.microcode;
        u64::from_le_bytes(b)
    }
}

/// AMD stores the 64-byte chip id as the raw extension value; some tools wrap it in an OCTET
/// STRING. Accept both, nothing else.
fn decode_hwid(value: &[u8]) -> Option<[u8; 64]> {
    if let Ok(raw) = <[u8; 64]>::try_from(value) {
        return Some(raw);
    }
    let inner = der::asn1::OctetStringRef::from_der(value).ok()?;
    <[u8; 64]>::try_from(inner.as_bytes()).ok()
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == OID_CN)
        .and_then(|atv| {
            Utf8StringRef::try_from(&atv.value)
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    PrintableStringRef::try_from(&atv.value).map(|s| s.as_str().to_owned())
                })
                .ok()
        })
}

/// The exact bytes of `tbsCertificate` inside a certificate's DER: the signature covers these,
/// so they are sliced out rather than re-encoded.
fn tbs_bytes(cert_der: &[u8]) -> Option<&[u8]> {
    let outer = SliceReader::new(cert_der).ok()?;
    let header = outer.peek_header().ok()?;
    let header_len = usize::try_from(header.encoded_len().ok()?).ok()?;
    let mut inner = SliceReader::new(cert_der.get(header_len..)?).ok()?;
    inner.tlv_bytes().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/data/snp/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn pem_input_without_a_certificate_is_an_error_not_a_panic() {
        for input in [&b""[..], b"\n", b"\r\n\r\n", b"-----END CERTIFICATE-----\n"] {
            assert!(Cert::from_pem_bundle(input).is_err());
        }
    }

    /// The bundle reader keeps each block's exact DER, skips explanatory text, and refuses
    /// other block kinds, unterminated blocks and bad base64.
    #[test]
    fn pem_bundle_blocks_text_and_errors() {
        use base64::Engine;
        let vcek = data("milan-go-sev-guest/vcek.der");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&vcek);
        let block = |body: &str| {
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
        };
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let two = format!(
            "# a comment\r\n{}between\n{}\n\n",
            block(&wrapped.join("\r\n")),
            block(&b64)
        );
        let certs = Cert::from_pem_bundle(two.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().all(|c| c.der() == vcek.as_slice()));
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        for bad in [
            format!("{}{key}", block(&b64)),
            block(&b64).replace("-----END CERTIFICATE-----", ""),
            block(&b64.replace('A', "*")),
            block(&b64[..b64.len() - 8]),
        ] {
            assert!(Cert::from_pem_bundle(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_amd_vcek_with_zero_serial() {
        let vcek = Cert::from_der(&data("milan-go-sev-guest/vcek.der")).unwrap();
        assert_eq!(vcek.role(), Role::Vcek);
        assert_eq!(vcek.product().as_deref(), Some("Milan"));
        let ext = vcek.sev_extensions().unwrap();
        assert_eq!(ext.product_name.as_deref(), Some("Milan-B0"));
        assert_eq!(ext.bootloader, 2);
        assert!(ext.hwid.is_some());
    }

    #[test]
    fn chain_signatures_verify_and_a_flipped_signature_byte_fails() {
        let chain = Cert::from_pem_bundle(&data("milan-go-sev-guest/chain.pem")).unwrap();
        let (ask, ark) = (&chain[0], &chain[1]);
        assert_eq!((ask.role(), ark.role()), (Role::Ask, Role::Ark));
        assert!(ark.is_signed_by(ark));
        assert!(ask.is_signed_by(ark));
        let vcek_der = data("milan-go-sev-guest/vcek.der");
        assert!(Cert::from_der(&vcek_der).unwrap().is_signed_by(ask));
        let mut tampered = vcek_der.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(!Cert::from_der(&tampered).unwrap().is_signed_by(ask));
        assert!(!Cert::from_der(&vcek_der).unwrap().is_signed_by(ark));
    }
}
