//! Compact JWS/JWT: parsing, RS256 signing and verification, JWKS, and the x5c chain check of
//! Key Vault's release responses. Nothing inside a JWS is used before its signature verifies.

use crate::azure::jwk::Jwk;
use crate::azure::{Error, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A compact JWS split into its parts. `payload` is untrusted until a `verify_*` call succeeds.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    pub header: Value,
    pub payload: Vec<u8>,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> Compact<'a> {
    pub fn parse(token: &'a str) -> Result<Self> {
        let token = token.trim();
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Jws(
                "not a compact JWS (three dot-separated parts)".into(),
            ));
        };
        let signing_input = token.get(..h.len() + 1 + p.len()).unwrap_or_default();
        let header = serde_json::from_slice(&decode("header", h)?)
            .map_err(|e| Error::Jws(format!("header: {e}")))?;
        Ok(Compact {
            header,
            payload: decode("payload", p)?,
            signing_input,
            signature: decode("signature", s)?,
        })
    }

    pub fn alg(&self) -> &str {
        self.header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    /// Verifies an RS256 signature with an RSA public key given as SubjectPublicKeyInfo DER.
    pub fn verify_rs256_spki(&self, spki: &[u8]) -> Result<()> {
        self.check_alg_rs256()?;
        let info = spki::SubjectPublicKeyInfoRef::try_from(spki)
            .map_err(|e| Error::Jws(format!("signing key: {e}")))?;
        UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            info.subject_public_key.raw_bytes(),
        )
        .verify(self.signing_input.as_bytes(), &self.signature)
        .map_err(|_| Error::Jws("the signature does not verify".into()))
    }

    fn check_alg_rs256(&self) -> Result<()> {
        if self.alg() != "RS256" {
            return Err(Error::Jws(format!(
                "algorithm {:?} is not accepted (RS256 only)",
                self.alg()
            )));
        }
        Ok(())
    }

    pub fn claims(&self) -> Result<Value> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::Jws(format!("payload is not JSON: {e}")))
    }
}

fn decode(part: &str, value: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| Error::Jws(format!("the {part} is not base64url")))
}

/// Signs `claims` with RS256 (used by the emulator; aasp itself never mints tokens).
pub fn sign_rs256(header: &Value, claims: &Value, key: &RsaKeyPair) -> Result<String> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| Error::Jws("signing failed".into()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// One key of a JWKS as MAA publishes it: `n`/`e`, or only an `x5c` certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwksKey {
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub kty: Option<String>,
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub e: Option<String>,
    #[serde(default)]
    pub x5c: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<JwksKey>,
}

impl JwksKey {
    /// The key's SubjectPublicKeyInfo DER: from `n`/`e`, else from its first certificate.
    pub fn spki(&self) -> Result<Vec<u8>> {
        {
            if let (Some(n), Some(e)) = (&self.n, &self.e) {
                return Jwk::rsa_public(n.clone(), e.clone()).rsa_public_spki();
            }
        }
        let cert = self
            .x5c
            .first()
            .ok_or_else(|| Error::Jws("JWKS key has neither n/e nor x5c".into()))?;
        let der = STANDARD
            .decode(cert)
            .map_err(|_| Error::Jws("JWKS x5c is not base64".into()))?;
        spki_of_cert(&der)
    }
}

impl Jwks {
    /// Verifies `token` against the key its header names (or any key when it names none).
    pub fn verify(&self, token: &Compact<'_>) -> Result<()> {
        let candidates: Vec<&JwksKey> = match token.kid() {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => self.keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(Error::Jws(format!(
                "no signing key {:?} in the issuer's JWKS",
                token.kid()
            )));
        }
        if candidates.iter().any(|k| {
            k.spki()
                .is_ok_and(|spki| token.verify_rs256_spki(&spki).is_ok())
        }) {
            Ok(())
        } else {
            Err(Error::Jws(
                "the token signature does not verify with the issuer's keys".into(),
            ))
        }
    }
}

fn spki_of_cert(der: &[u8]) -> Result<Vec<u8>> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| Error::Jws(format!("certificate: {e}")))?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| Error::Jws(format!("certificate key: {e}")))
}

/// Trust anchors for release-response signing certificates, parsed once when loaded: parsing
/// the ~140 system roots on every release cost about 0.1 ms of its CPU. Roots that do not parse
/// are left out, as webpki would skip them.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    anchors: Vec<TrustAnchor<'static>>,
}

impl Anchors {
    /// `roots` (the system's, `http::system_roots`) plus the extra CA file, if any.
    pub fn roots_and(
        roots: &[CertificateDer<'static>],
        extra_ca: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut anchors = Self::from_certs(roots);
        if let Some(path) = extra_ca {
            anchors.anchors.extend(Self::from_pem_file(path)?.anchors);
        }
        Ok(anchors)
    }

    fn from_certs(certs: &[CertificateDer<'static>]) -> Self {
        let anchors = certs
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .map(|a| a.to_owned())
            .collect();
        Anchors { anchors }
    }

    pub fn from_pem_file(path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Jws(format!("CA file {}: {e}", path.display())))?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let certs = crate::snp::cert::Cert::from_pem_bundle(pem)
            .map_err(|e| Error::Jws(format!("CA bundle: {e}")))?
            .into_iter()
            .map(|c| CertificateDer::from(c.der().to_vec()))
            .collect::<Vec<_>>();
        Ok(Self::from_certs(&certs))
    }
}

/// Verifies a release response's JWS: RS256 by `x5c[0]`, whose certificate chains (through the
/// rest of `x5c`) to `anchors` and is valid for `host`. Returns the verified payload.
pub fn verify_x5c(jws: &str, host: &str, anchors: &Anchors) -> Result<Value> {
    let token = Compact::parse(jws)?;
    let x5c: Vec<Vec<u8>> = token
        .header
        .get("x5c")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Jws("the release JWS has no x5c header".into()))?
        .iter()
        .map(|c| {
            c.as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| Error::Jws("x5c entry is not base64".into()))
        })
        .collect::<Result<_>>()?;
    let (leaf, intermediates) = x5c
        .split_first()
        .ok_or_else(|| Error::Jws("x5c is empty".into()))?;
    let leaf = CertificateDer::from(leaf.as_slice());
    let ee =
        webpki::EndEntityCert::try_from(&leaf).map_err(|e| Error::Jws(format!("x5c[0]: {e}")))?;
    // The signature, by the key of the certificate webpki parsed (not a second parse of it).
    token.check_alg_rs256()?;
    ee.verify_signature(
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        token.signing_input.as_bytes(),
        &token.signature,
    )
    .map_err(|_| Error::Jws("the signature does not verify".into()))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors.anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::required_if_present(SERVER_AUTH_EKU),
        None,
        None,
    )
    .map_err(|e| {
        Error::Jws(format!(
            "the signing certificate does not chain to a trusted root: {e}"
        ))
    })?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Error::Jws(format!("{host:?} is not a host name")))?;
    ee.verify_is_valid_for_subject_name(&name).map_err(|e| {
        Error::Jws(format!(
            "the signing certificate is not valid for {host}: {e}"
        ))
    })?;
    token.claims()
}

/// id-kp-serverAuth (1.3.6.1.5.5.7.3.1), DER content octets.
const SERVER_AUTH_EKU: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
