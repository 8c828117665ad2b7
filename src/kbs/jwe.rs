//! The TEE key pair and the JWE (flattened JSON serialization) that carries KBS resources.
//!
//! The key-management algorithms Trustee offers and `kbs_protocol`'s `tee_key_algorithm` selects
//! (guest-components `kbs_protocol/src/keypair.rs`): `ECDH-ES+A256KW` on P-256 (the default, as
//! upstream's `TeeKeyPair::new`) or on P-521, and `RSA-OAEP-256`; the content is always
//! `A256GCM`. All of it is aws-lc-rs: ECDH through `agreement`, AES key wrap through `key_wrap`,
//! the Concat KDF of RFC 7518 §4.6.2 over SHA-256 by hand, OAEP-SHA256 through `rsa`.
//!
//! The private key never leaves this type except through [`TeeKeyPair::private_pem`], which
//! upstream's `GetToken("kbs")` hands to local callers (as upstream does).

use super::{Error, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256, ECDH_P521};
use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPublicKeyUncompressedBin};
use aws_lc_rs::key_wrap::{AesKek, KeyWrap, AES_256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, UintRef};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
pub const RSA_OAEP_256: &str = "RSA-OAEP-256";
pub const A256GCM: &str = "A256GCM";

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Which TEE key to make. Names as upstream AA's config spells them (`tee_key_algorithm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "ECDH-ES+A256KW-P256", alias = "ECDH-ES+A256KW")]
    EcdhEsA256KwP256,
    #[serde(rename = "ECDH-ES+A256KW-P521")]
    EcdhEsA256KwP521,
    #[serde(rename = "RSA-OAEP-256")]
    RsaOaep256,
}

/// The curves of `ECDH-ES+A256KW` TEE keys, with their JWK names (`crv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P521,
}

impl Curve {
    fn agreement(self) -> &'static agreement::Algorithm {
        match self {
            Curve::P256 => &ECDH_P256,
            Curve::P521 => &ECDH_P521,
        }
    }

    /// The JWK `crv`.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P521 => "P-521",
        }
    }

    /// Bytes of one affine coordinate (RFC 7518 §6.2.1.2: the full field size, leading zeros kept).
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P521 => 66,
        }
    }

    fn from_name(crv: &str) -> Result<Self> {
        match crv {
            "P-256" => Ok(Curve::P256),
            "P-521" => Ok(Curve::P521),
            other => Err(Error::Key(format!(
                "unsupported curve {other:?} (P-256, P-521)"
            ))),
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ECDH-ES+A256KW" | "ECDH-ES+A256KW-P256" | "ec" | "EC" => {
                Ok(KeyAlgorithm::EcdhEsA256KwP256)
            }
            "ECDH-ES+A256KW-P521" => Ok(KeyAlgorithm::EcdhEsA256KwP521),
            "RSA-OAEP-256" | "rsa" | "RSA" => Ok(KeyAlgorithm::RsaOaep256),
            other => Err(format!(
                "unknown TEE key algorithm {other:?} (ECDH-ES+A256KW or ECDH-ES+A256KW-P256, \
                 ECDH-ES+A256KW-P521, RSA-OAEP-256)"
            )),
        }
    }
}

/// The public half as it goes into the attestation's `runtime-data.tee-pubkey` (kbs-types
/// `TeePubKey`: `{"kty":"EC","crv","alg","x","y"}` or `{"kty":"RSA","alg","n","e"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum TeePubKey {
    #[serde(rename = "RSA")]
    Rsa { alg: String, n: String, e: String },
    #[serde(rename = "EC")]
    Ec {
        crv: String,
        alg: String,
        x: String,
        y: String,
    },
}

/// The ephemeral key pair the TEE proves it holds (its public half is bound into report_data).
pub struct TeeKeyPair {
    inner: Inner,
}

enum Inner {
    Ec {
        curve: Curve,
        private: PrivateKey,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        private: OaepPrivateDecryptingKey,
        /// PKCS#1 RSAPrivateKey DER, for the PEM export.
        pkcs1: Zeroizing<Vec<u8>>,
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

impl std::fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeKeyPair")
            .field("algorithm", &self.algorithm())
            .field("private", &"<redacted>")
            .finish()
    }
}

impl TeeKeyPair {
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self> {
        match algorithm {
            KeyAlgorithm::EcdhEsA256KwP256 => Self::generate_ec(Curve::P256),
            KeyAlgorithm::EcdhEsA256KwP521 => Self::generate_ec(Curve::P521),
            KeyAlgorithm::RsaOaep256 => {
                let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)
                    .map_err(|_| Error::Key("RSA key generation failed".into()))?;
                let pkcs8 = private
                    .as_der()
                    .map_err(|_| Error::Key("RSA key encoding failed".into()))?;
                Self::from_rsa_pkcs8(pkcs8.as_ref())
            }
        }
    }

    fn generate_ec(curve: Curve) -> Result<Self> {
        let private = PrivateKey::generate(curve.agreement())
            .map_err(|_| Error::Key(format!("{} key generation failed", curve.name())))?;
        Self::from_ec(private, curve)
    }

    /// Reads a private key PEM: PKCS#8 (`PRIVATE KEY`: EC P-256, EC P-521 or RSA, what upstream
    /// writes for EC keys), SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`, what upstream
    /// writes for RSA).
    pub fn from_pem(pem: &str) -> Result<Self> {
        let (label, der) = der::pem::decode_vec(pem.trim().as_bytes())
            .map_err(|e| Error::Key(format!("not a PEM private key: {e}")))?;
        let der = Zeroizing::new(der);
        match label {
            "RSA PRIVATE KEY" => Self::from_rsa_pkcs8(&pkcs1_to_pkcs8(&der)?),
            "EC PRIVATE KEY" => Self::from_ec_der(&der)
                .ok_or_else(|| Error::Key("not a P-256 or P-521 private key".into()))?,
            "PRIVATE KEY" => match Self::from_ec_der(&der) {
                Some(ec) => ec,
                None => Self::from_rsa_pkcs8(&der),
            },
            other => Err(Error::Key(format!("unsupported PEM label {other:?}"))),
        }
    }

    /// An EC private key on one of the supported curves, if `der` is one.
    fn from_ec_der(der: &[u8]) -> Option<Result<Self>> {
        [Curve::P256, Curve::P521].into_iter().find_map(|curve| {
            PrivateKey::from_private_key_der(curve.agreement(), der)
                .ok()
                .map(|private| Self::from_ec(private, curve))
        })
    }

    fn from_ec(private: PrivateKey, curve: Curve) -> Result<Self> {
        let name = curve.name();
        let public = private
            .compute_public_key()
            .map_err(|_| Error::Key(format!("{name} public key")))?;
        let point: EcPublicKeyUncompressedBin = public
            .as_be_bytes()
            .map_err(|_| Error::Key(format!("{name} public key encoding")))?;
        let len = curve.coordinate_len();
        // Uncompressed SEC1 point: 0x04 ‖ x ‖ y, each coordinate the full field size.
        let (x, y) = match point.as_ref().split_first() {
            Some((4, xy)) if xy.len() == 2 * len => xy.split_at(len),
            _ => return Err(Error::Key(format!("unexpected {name} point encoding"))),
        };
        Ok(TeeKeyPair {
            inner: Inner::Ec {
                curve,
                x: x.to_vec(),
                y: y.to_vec(),
                private,
            },
        })
    }

    fn from_rsa_pkcs8(pkcs8: &[u8]) -> Result<Self> {
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8)
            .map_err(|_| Error::Key("not an RSA or P-256 private key".into()))?;
        let spki = private
            .public_key()
            .as_der()
            .map_err(|_| Error::Key("RSA public key encoding".into()))?;
        let (n, e) = rsa_components(spki.as_ref())?;
        let info = pkcs8::PrivateKeyInfo::from_der(pkcs8)
            .map_err(|e| Error::Key(format!("PKCS#8: {e}")))?;
        let pkcs1 = Zeroizing::new(info.private_key.to_vec());
        let private = OaepPrivateDecryptingKey::new(private)
            .map_err(|_| Error::Key("RSA key unusable for OAEP".into()))?;
        Ok(TeeKeyPair {
            inner: Inner::Rsa {
                private,
                pkcs1,
                n,
                e,
            },
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::Ec {
                curve: Curve::P256, ..
            } => KeyAlgorithm::EcdhEsA256KwP256,
            Inner::Ec {
                curve: Curve::P521, ..
            } => KeyAlgorithm::EcdhEsA256KwP521,
            Inner::Rsa { .. } => KeyAlgorithm::RsaOaep256,
        }
    }

    pub fn public(&self) -> TeePubKey {
        match &self.inner {
            Inner::Ec { curve, x, y, .. } => TeePubKey::Ec {
                crv: curve.name().into(),
                alg: ECDH_ES_A256KW.into(),
                x: URL_SAFE_NO_PAD.encode(x),
                y: URL_SAFE_NO_PAD.encode(y),
            },
            Inner::Rsa { n, e, .. } => TeePubKey::Rsa {
                alg: RSA_OAEP_256.into(),
                n: URL_SAFE_NO_PAD.encode(n),
                e: URL_SAFE_NO_PAD.encode(e),
            },
        }
    }

    /// The private key as PEM, the form upstream AA's `GetToken("kbs")` returns in
    /// `tee_keypair`: PKCS#8 for EC, PKCS#1 for RSA (upstream's `to_pkcs8_pem`/`to_pkcs1_pem`).
    /// Only for local callers inside the TEE.
    pub fn private_pem(&self) -> Result<Zeroizing<String>> {
        let (label, der) = match &self.inner {
            Inner::Ec { private, .. } => {
                let der: aws_lc_rs::encoding::Pkcs8V1Der = private
                    .as_der()
                    .map_err(|_| Error::Key("EC key encoding".into()))?;
                ("PRIVATE KEY", Zeroizing::new(der.as_ref().to_vec()))
            }
            Inner::Rsa { pkcs1, .. } => ("RSA PRIVATE KEY", pkcs1.clone()),
        };
        der::pem::encode_string(label, der::pem::LineEnding::LF, &der)
            .map(Zeroizing::new)
            .map_err(|e| Error::Key(format!("PEM: {e}")))
    }

    /// Decrypts a KBS resource response: a flattened JWE `{"protected","encrypted_key","iv",
    /// "ciphertext","tag"[,"aad"]}` made for this key. Any tampering fails the AES-GCM tag (or
    /// the key unwrap) and yields [`Error::Jwe`].
    pub fn decrypt(&self, jwe: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let jwe: Flattened = serde_json::from_slice(jwe)
            .map_err(|e| Error::Jwe(format!("not a flattened JWE: {e}")))?;
        let header_bytes = b64("protected", &jwe.protected)?;
        let mut header: Value = serde_json::from_slice(&header_bytes)
            .map_err(|e| Error::Jwe(format!("protected header: {e}")))?;
        // RFC 7516 §7.2.1: the JOSE header is the union of the protected, shared unprotected and
        // per-recipient headers. Trustee puts everything in `protected`; jwcrypto puts `epk` in
        // the recipient's `header`. Protected members win: an unprotected one never replaces them.
        if let Value::Object(members) = &mut header {
            for extra in [&jwe.unprotected, &jwe.header].into_iter().flatten() {
                for (name, value) in extra {
                    members.entry(name.clone()).or_insert_with(|| value.clone());
                }
            }
        }
        let text = |name: &str| header.get(name).and_then(Value::as_str).unwrap_or_default();
        if text("enc") != A256GCM {
            return Err(Error::Jwe(format!(
                "content encryption {:?}, expected {A256GCM}",
                text("enc")
            )));
        }
        let encrypted_key = b64("encrypted_key", &jwe.encrypted_key)?;
        let cek = match (&self.inner, text("alg")) {
            (Inner::Ec { curve, private, .. }, ECDH_ES_A256KW) => {
                let epk = header
                    .get("epk")
                    .ok_or_else(|| Error::Jwe("ECDH-ES header without epk".into()))?;
                let field = |name: &str| {
                    b64(
                        name,
                        epk.get(name).and_then(Value::as_str).unwrap_or_default(),
                    )
                };
                if epk.get("crv").and_then(Value::as_str) != Some(curve.name()) {
                    return Err(Error::Jwe(format!(
                        "epk is not a {} key, as the TEE key is",
                        curve.name()
                    )));
                }
                let point = ec_point(*curve, &field("x")?, &field("y")?)
                    .ok_or_else(|| Error::Jwe("epk coordinates of the wrong size".into()))?;
                let kek = agreement::agree(
                    private,
                    UnparsedPublicKey::new(curve.agreement(), &point),
                    Error::Jwe("ECDH with the epk failed".into()),
                    |z| Ok(concat_kdf(z, ECDH_ES_A256KW)),
                )?;
                aes_unwrap(&kek, &encrypted_key)?
            }
            (Inner::Rsa { private, .. }, RSA_OAEP_256) => {
                let mut out = Zeroizing::new(vec![0u8; private.min_output_size()]);
                let len = private
                    .decrypt(&OAEP_SHA256_MGF1SHA256, &encrypted_key, &mut out, None)
                    .map_err(|_| Error::Jwe("RSA-OAEP-256 key decryption failed".into()))?
                    .len();
                out.truncate(len);
                out
            }
            (_, alg) => {
                return Err(Error::Jwe(format!(
                    "key algorithm {alg:?} does not match the TEE key ({:?})",
                    self.algorithm()
                )))
            }
        };
        if cek.len() != 32 {
            return Err(Error::Jwe("content key is not 256 bits".into()));
        }
        let iv = b64("iv", &jwe.iv)?;
        let nonce = Nonce::try_assume_unique_for_key(&iv)
            .map_err(|_| Error::Jwe("iv is not 96 bits".into()))?;
        // RFC 7516 §5.2: AAD = ASCII(protected as sent) [‖ '.' ‖ aad]. The string as received,
        // never a re-serialization of the parsed header.
        let mut aad = jwe.protected.clone().into_bytes();
        if let Some(extra) = &jwe.aad {
            aad.push(b'.');
            aad.extend_from_slice(extra.as_bytes());
        }
        let mut buf = Zeroizing::new(b64("ciphertext", &jwe.ciphertext)?);
        buf.extend_from_slice(&b64("tag", &jwe.tag)?);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &cek).map_err(|_| Error::Jwe("content key".into()))?,
        );
        let plain_len = key
            .open_in_place(nonce, Aad::from(&aad), &mut buf)
            .map_err(|_| {
                Error::Jwe(
                    "authentication failed: the JWE was altered or is not for this key".into(),
                )
            })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// A flattened JWE as Trustee's KBS sends it (kbs-types `Response`).
#[derive(Debug, Serialize, Deserialize)]
struct Flattened {
    protected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unprotected: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<Map<String, Value>>,
    encrypted_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aad: Option<String>,
    iv: String,
    ciphertext: String,
    tag: String,
}

/// Encrypts `plaintext` to a TEE public key (the KBS side: the emulator). The protected header
/// is serialized `alg`, `enc`, then the other members sorted (epk's members sorted), compactly:
/// the exact bytes upstream's kbs_protocol re-creates from the parsed header to form its AAD
/// (kbs-types `ProtectedHeader::generate_aad`), so both our client and upstream's decrypt it.
pub fn encrypt(tee_pubkey: &TeePubKey, plaintext: &[u8]) -> Result<Value> {
    let rng = SystemRandom::new();
    let mut cek = Zeroizing::new([0u8; 32]);
    rng.fill(cek.as_mut())
        .map_err(|_| Error::Key("no randomness".into()))?;
    let (header, encrypted_key) = match tee_pubkey {
        TeePubKey::Ec { crv, x, y, .. } => {
            let curve = Curve::from_name(crv)?;
            let invalid = || Error::Key(format!("the TEE public key is not a valid {crv} point"));
            let point = ec_point(curve, &b64("x", x)?, &b64("y", y)?).ok_or_else(invalid)?;
            let ephemeral = PrivateKey::generate(curve.agreement())
                .map_err(|_| Error::Key(format!("{crv} key generation failed")))?;
            let kek = agreement::agree(
                &ephemeral,
                UnparsedPublicKey::new(curve.agreement(), &point),
                invalid(),
                |z| Ok(concat_kdf(z, ECDH_ES_A256KW)),
            )?;
            let epk = TeeKeyPair::from_ec(ephemeral, curve)?;
            let TeePubKey::Ec { x, y, .. } = epk.public() else {
                return Err(Error::Key("ephemeral key".into()));
            };
            let mut wrapped = vec![0u8; 40];
            let len = AesKek::new(&AES_256, kek.as_ref())
                .and_then(|k| k.wrap(cek.as_ref(), &mut wrapped).map(|w| w.len()))
                .map_err(|_| Error::Key("AES key wrap failed".into()))?;
            wrapped.truncate(len);
            let mut other = Map::new();
            other.insert(
                "epk".into(),
                json!({ "crv": curve.name(), "kty": "EC", "x": x, "y": y }),
            );
            (header_json(ECDH_ES_A256KW, other), wrapped)
        }
        TeePubKey::Rsa { n, e, .. } => {
            let spki = rsa_spki(&b64("n", n)?, &b64("e", e)?)?;
            let public = PublicEncryptingKey::from_der(&spki)
                .map_err(|_| Error::Key("the TEE public key is not a usable RSA key".into()))?;
            let public = OaepPublicEncryptingKey::new(public)
                .map_err(|_| Error::Key("RSA key unusable for OAEP".into()))?;
            let mut out = vec![0u8; public.ciphertext_size()];
            let len = public
                .encrypt(&OAEP_SHA256_MGF1SHA256, cek.as_ref(), &mut out, None)
                .map_err(|_| Error::Key("RSA-OAEP-256 failed".into()))?
                .len();
            out.truncate(len);
            (header_json(RSA_OAEP_256, Map::new()), out)
        }
    };
    let protected = URL_SAFE_NO_PAD.encode(header.as_bytes());
    let mut iv = [0u8; 12];
    rng.fill(&mut iv)
        .map_err(|_| Error::Key("no randomness".into()))?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, cek.as_ref())
            .map_err(|_| Error::Key("content key".into()))?,
    );
    let mut buf = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected.as_bytes()),
            &mut buf,
        )
        .map_err(|_| Error::Key("AES-GCM failed".into()))?;
    serde_json::to_value(Flattened {
        protected,
        unprotected: None,
        header: None,
        encrypted_key: URL_SAFE_NO_PAD.encode(encrypted_key),
        aad: None,
        iv: URL_SAFE_NO_PAD.encode(iv),
        ciphertext: URL_SAFE_NO_PAD.encode(&buf),
        tag: URL_SAFE_NO_PAD.encode(tag.as_ref()),
    })
    .map_err(|e| Error::Key(e.to_string()))
}

fn header_json(alg: &str, other: Map<String, Value>) -> String {
    // `Map` is ordered by key (serde_json without `preserve_order`), and so are nested objects.
    let mut text = json!({ "alg": alg, "enc": A256GCM }).to_string();
    if !other.is_empty() {
        let rest = Value::Object(other).to_string();
        text.pop();
        text.push(',');
        text.push_str(rest.get(1..).unwrap_or_default());
    }
    text
}

/// RFC 7518 §4.6.2 Concat KDF with SHA-256 for a 256-bit key: AlgorithmID = the `alg` name,
/// empty PartyUInfo/PartyVInfo (no `apu`/`apv`), SuppPubInfo = keydatalen in bits.
fn concat_kdf(z: &[u8], alg: &str) -> Zeroizing<[u8; 32]> {
    let mut hasher = Sha256::new();
    hasher.update(1u32.to_be_bytes());
    hasher.update(z);
    hasher.update((alg.len() as u32).to_be_bytes());
    hasher.update(alg.as_bytes());
    hasher.update(0u32.to_be_bytes());
    hasher.update(0u32.to_be_bytes());
    hasher.update(256u32.to_be_bytes());
    Zeroizing::new(hasher.finalize().into())
}

/// The uncompressed SEC1 point of JWK coordinates, which must each be the curve's full size.
fn ec_point(curve: Curve, x: &[u8], y: &[u8]) -> Option<Vec<u8>> {
    let len = curve.coordinate_len();
    if x.len() != len || y.len() != len {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(4u8);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Some(point)
}

fn aes_unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = AesKek::new(&AES_256, kek)
        .and_then(|k| k.unwrap(wrapped, &mut out).map(|o| o.len()))
        .map_err(|_| {
            Error::Jwe("AES key unwrap failed: the JWE was altered or is not for this key".into())
        })?;
    out.truncate(len);
    Ok(out)
}

fn b64(field: &str, value: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| Error::Jwe(format!("{field} is not base64url")))
}

fn rsa_components(spki: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki)
        .map_err(|e| Error::Key(format!("SPKI: {e}")))?;
    let key = pkcs1::RsaPublicKey::from_der(info.subject_public_key.raw_bytes())
        .map_err(|e| Error::Key(format!("RSA public key: {e}")))?;
    Ok((
        key.modulus.as_bytes().to_vec(),
        key.public_exponent.as_bytes().to_vec(),
    ))
}

fn rsa_spki(n: &[u8], e: &[u8]) -> Result<Vec<u8>> {
    let err = |e: der::Error| Error::Key(format!("RSA public key: {e}"));
    let key = pkcs1::RsaPublicKey {
        modulus: UintRef::new(n).map_err(err)?,
        public_exponent: UintRef::new(e).map_err(err)?,
    }
    .to_der()
    .map_err(err)?;
    spki::SubjectPublicKeyInfo::<AnyRef<'_>, BitStringRef<'_>> {
        algorithm: spki::AlgorithmIdentifier {
            oid: OID_RSA_ENCRYPTION,
            parameters: Some(AnyRef::NULL),
        },
        subject_public_key: BitStringRef::from_bytes(&key).map_err(err)?,
    }
    .to_der()
    .map_err(err)
}

fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let err = |e: der::Error| Error::Key(format!("PKCS#1: {e}"));
    let info = pkcs8::PrivateKeyInfo {
        algorithm: spki::AlgorithmIdentifier {
            oid: OID_RSA_ENCRYPTION,
            parameters: Some(AnyRef::NULL),
        },
        private_key: pkcs1,
        public_key: None,
    };
    info.to_der().map(Zeroizing::new).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(alg: KeyAlgorithm) {
        let pair = TeeKeyPair::generate(alg).unwrap();
        let jwe = encrypt(&pair.public(), b"top secret").unwrap();
        let bytes = serde_json::to_vec(&jwe).unwrap();
        assert_eq!(pair.decrypt(&bytes).unwrap().as_slice(), b"top secret");
        // The PEM export reads back as the same key.
        let again = TeeKeyPair::from_pem(&pair.private_pem().unwrap()).unwrap();
        assert_eq!(again.public(), pair.public());
        assert_eq!(again.decrypt(&bytes).unwrap().as_slice(), b"top secret");
        // Another key of the same kind cannot open it.
        let other = TeeKeyPair::generate(alg).unwrap();
        assert!(matches!(other.decrypt(&bytes), Err(Error::Jwe(_))));
        // Every tampered part is refused.
        for field in ["ciphertext", "tag", "iv", "encrypted_key", "protected"] {
            let mut altered = jwe.clone();
            let text = altered[field].as_str().unwrap().to_owned();
            let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            altered[field] = Value::String(URL_SAFE_NO_PAD.encode(raw));
            let result = pair.decrypt(&serde_json::to_vec(&altered).unwrap());
            assert!(result.is_err(), "{field} altered must fail");
        }
    }

    #[test]
    fn ec_roundtrip_and_tamper() {
        roundtrip(KeyAlgorithm::EcdhEsA256KwP256);
    }

    /// `tee_key_algorithm = "ECDH-ES+A256KW-P521"`, which guest-components
    /// `kbs_protocol/src/keypair.rs` allows and Trustee `kbs/src/jwe/mod.rs` encrypts to.
    #[test]
    fn p521_roundtrip_and_tamper() {
        roundtrip(KeyAlgorithm::EcdhEsA256KwP521);
        let pair = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP521).unwrap();
        let TeePubKey::Ec { crv, x, y, .. } = pair.public() else {
            panic!("an EC key")
        };
        assert_eq!(crv, "P-521");
        // 66-byte coordinates, as upstream's P521EcKeyPair exports them.
        assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap().len(), 66);
        assert_eq!(URL_SAFE_NO_PAD.decode(y).unwrap().len(), 66);
        assert_eq!(pair.algorithm(), KeyAlgorithm::EcdhEsA256KwP521);
        // A P-256 resource is refused by a P-521 key, by its curve, and the other way round.
        let p256 = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
        let for_p256 = serde_json::to_vec(&encrypt(&p256.public(), b"x").unwrap()).unwrap();
        let err = pair.decrypt(&for_p256).unwrap_err();
        assert!(err.to_string().contains("P-521"), "{err}");
        let for_p521 = serde_json::to_vec(&encrypt(&pair.public(), b"x").unwrap()).unwrap();
        assert!(p256.decrypt(&for_p521).is_err());
    }

    /// The names upstream AA's config accepts for `tee_key_algorithm`
    /// (guest-components `kbs_protocol/src/keypair.rs` `TeeKeyAlgorithm`).
    #[test]
    fn key_algorithm_names_as_upstream() {
        for (name, alg) in [
            ("ECDH-ES+A256KW-P256", KeyAlgorithm::EcdhEsA256KwP256),
            ("ECDH-ES+A256KW-P521", KeyAlgorithm::EcdhEsA256KwP521),
            ("RSA-OAEP-256", KeyAlgorithm::RsaOaep256),
        ] {
            let parsed: KeyAlgorithm = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(parsed, alg, "{name}");
            assert_eq!(name.parse::<KeyAlgorithm>().unwrap(), alg, "{name}");
        }
    }

    #[test]
    fn rsa_roundtrip_and_tamper() {
        roundtrip(KeyAlgorithm::RsaOaep256);
    }

    #[test]
    fn public_jwk_shapes_match_kbs_types() {
        let ec = TeeKeyPair::generate(KeyAlgorithm::EcdhEsA256KwP256).unwrap();
        let v = serde_json::to_value(ec.public()).unwrap();
        assert_eq!(v["kty"], "EC");
        assert_eq!(v["crv"], "P-256");
        assert_eq!(v["alg"], "ECDH-ES+A256KW");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(v["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(ec
            .private_pem()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        let rsa = TeeKeyPair::generate(KeyAlgorithm::RsaOaep256).unwrap();
        let v = serde_json::to_value(rsa.public()).unwrap();
        assert_eq!(v["kty"], "RSA");
        assert_eq!(v["alg"], "RSA-OAEP-256");
        assert_eq!(v["e"], "AQAB");
        assert!(rsa
            .private_pem()
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(!format!("{rsa:?}").contains("BEGIN"));
    }

    #[test]
    fn header_is_what_upstream_reserializes() {
        let mut other = Map::new();
        other.insert(
            "epk".into(),
            json!({"y": "b", "x": "a", "kty": "EC", "crv": "P-256"}),
        );
        assert_eq!(
            header_json(ECDH_ES_A256KW, other),
            r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"a","y":"b"}}"#
        );
        assert_eq!(
            header_json(RSA_OAEP_256, Map::new()),
            r#"{"alg":"RSA-OAEP-256","enc":"A256GCM"}"#
        );
    }

    /// The KDF input laid out byte by byte as RFC 7518 §4.6.2 lists it (the jwcrypto vectors in
    /// tests/interop check the whole ECDH-ES path against an independent implementation).
    #[test]
    fn concat_kdf_matches_manual_construction() {
        let z = [7u8; 32];
        let mut manual = Vec::new();
        manual.extend_from_slice(&[0, 0, 0, 1]);
        manual.extend_from_slice(&z);
        manual.extend_from_slice(&[0, 0, 0, 14]);
        manual.extend_from_slice(b"ECDH-ES+A256KW");
        manual.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let expected: [u8; 32] = Sha256::digest(&manual).into();
        assert_eq!(*concat_kdf(&z, ECDH_ES_A256KW), expected);
    }
}
