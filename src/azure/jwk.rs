//! JSON Web Keys: the one key type that crosses aasp's boundaries (Key Vault's wire format, the
//! released key handed to callers), with conversions to and from the DER the crypto needs.
//!
//! A `Jwk` may hold private material, so it zeroizes on drop and its `Debug` shows only public
//! members.

use crate::azure::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Jwk {
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dq: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qi: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    /// Key Vault's wrapped key material (`CKM_RSA_AES_KEY_WRAP` envelope) in a release response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hsm: Option<String>,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("kid", &self.kid)
            .field("crv", &self.crv)
            .field(
                "private",
                &if self.has_private_material() {
                    "<redacted>"
                } else {
                    "none"
                },
            )
            .finish()
    }
}

/// The key family, with Key Vault's `-HSM` suffix folded away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    Ec,
    Oct,
}

impl Jwk {
    pub fn family(&self) -> Result<KeyFamily> {
        match self.kty.trim_end_matches("-HSM") {
            "RSA" => Ok(KeyFamily::Rsa),
            "EC" => Ok(KeyFamily::Ec),
            "oct" => Ok(KeyFamily::Oct),
            other => Err(Error::Key(format!("unsupported key type {other:?}"))),
        }
    }

    pub fn has_private_material(&self) -> bool {
        self.d.is_some() || self.k.is_some()
    }

    /// The public part only (for an oct key: nothing but the type and id).
    pub fn public(&self) -> Jwk {
        let mut public = Jwk::new(&self.kty);
        public.kid.clone_from(&self.kid);
        public.key_ops.clone_from(&self.key_ops);
        public.n.clone_from(&self.n);
        public.e.clone_from(&self.e);
        public.crv.clone_from(&self.crv);
        public.x.clone_from(&self.x);
        public.y.clone_from(&self.y);
        public
    }

    /// An empty key of type `kty` (a `Jwk` zeroizes on drop, so struct-update syntax is out).
    pub fn new(kty: &str) -> Jwk {
        let mut jwk = Jwk::default();
        jwk.kty = kty.to_owned();
        jwk
    }

    pub fn rsa_public(n: String, e: String) -> Jwk {
        let mut jwk = Jwk::new("RSA");
        jwk.n = Some(n);
        jwk.e = Some(e);
        jwk
    }

    /// RFC 7638 thumbprint (SHA-256, base64url) of an RSA or EC key.
    pub fn thumbprint(&self) -> Result<String> {
        let canonical = match self.family()? {
            KeyFamily::Rsa => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                field(&self.e, "e")?,
                field(&self.n, "n")?
            ),
            KeyFamily::Ec => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                field(&self.crv, "crv")?,
                field(&self.x, "x")?,
                field(&self.y, "y")?
            ),
            KeyFamily::Oct => return Err(Error::Key("an oct key has no public thumbprint".into())),
        };
        Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
    }

    /// SubjectPublicKeyInfo DER of an RSA JWK (what aws-lc-rs takes for encryption).
    pub fn rsa_public_spki(&self) -> Result<Vec<u8>> {
        let n = b64(&self.n, "n")?;
        let e = b64(&self.e, "e")?;
        let pkcs1 = pkcs1::RsaPublicKey {
            modulus: uint(&n)?,
            public_exponent: uint(&e)?,
        }
        .to_der()?;
        spki_der(OID_RSA_ENCRYPTION, Some(AnyRef::NULL), &pkcs1)
    }

    /// A JWK from a public key's SubjectPublicKeyInfo DER (RSA only).
    pub fn from_rsa_spki(spki: &[u8]) -> Result<Jwk> {
        let info = spki::SubjectPublicKeyInfoRef::from_der(spki)?;
        let key = pkcs1::RsaPublicKey::from_der(info.subject_public_key.raw_bytes())?;
        Ok(Jwk::rsa_public(
            URL_SAFE_NO_PAD.encode(key.modulus.as_bytes()),
            URL_SAFE_NO_PAD.encode(key.public_exponent.as_bytes()),
        ))
    }

    pub fn oct(key: &[u8]) -> Jwk {
        let mut jwk = Jwk::new("oct");
        jwk.k = Some(URL_SAFE_NO_PAD.encode(key));
        jwk
    }

    /// The raw bytes of an oct key.
    pub fn oct_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        b64(&self.k, "k").map(Zeroizing::new)
    }

    /// A private JWK from PKCS#8 DER of the given family (the form Key Vault releases).
    pub fn from_pkcs8(family: KeyFamily, der: &[u8]) -> Result<Jwk> {
        let info = pkcs8::PrivateKeyInfo::from_der(der)?;
        let enc = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
        match family {
            KeyFamily::Rsa => {
                let k = pkcs1::RsaPrivateKey::from_der(info.private_key)?;
                let mut jwk = Jwk::new("RSA");
                jwk.n = enc(k.modulus.as_bytes());
                jwk.e = enc(k.public_exponent.as_bytes());
                jwk.d = enc(k.private_exponent.as_bytes());
                jwk.p = enc(k.prime1.as_bytes());
                jwk.q = enc(k.prime2.as_bytes());
                jwk.dp = enc(k.exponent1.as_bytes());
                jwk.dq = enc(k.exponent2.as_bytes());
                jwk.qi = enc(k.coefficient.as_bytes());
                Ok(jwk)
            }
            KeyFamily::Ec => {
                let curve: ObjectIdentifier = info
                    .algorithm
                    .parameters
                    .ok_or_else(|| Error::Key("EC key without a named curve".into()))?
                    .decode_as()?;
                let (crv, len) = curve_name(curve)?;
                let k = sec1::EcPrivateKey::from_der(info.private_key)?;
                let point = k
                    .public_key
                    .ok_or_else(|| Error::Key("EC private key without its public point".into()))?;
                let coords = point
                    .strip_prefix(&[0x04])
                    .filter(|c| c.len() == 2 * len)
                    .ok_or_else(|| Error::Key("EC public point is not uncompressed".into()))?;
                let (x, y) = coords.split_at(len);
                let mut jwk = Jwk::new("EC");
                jwk.crv = Some(crv.into());
                jwk.x = enc(x);
                jwk.y = enc(y);
                jwk.d = enc(k.private_key);
                Ok(jwk)
            }
            KeyFamily::Oct => Err(Error::Key("an oct key has no PKCS#8 form".into())),
        }
    }

    /// PKCS#8 DER of a private RSA or EC JWK.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>> {
        match self.family()? {
            KeyFamily::Rsa => {
                let parts: Vec<Zeroizing<Vec<u8>>> = [
                    (&self.n, "n"),
                    (&self.e, "e"),
                    (&self.d, "d"),
                    (&self.p, "p"),
                    (&self.q, "q"),
                    (&self.dp, "dp"),
                    (&self.dq, "dq"),
                    (&self.qi, "qi"),
                ]
                .into_iter()
                .map(|(v, name)| b64(v, name).map(Zeroizing::new))
                .collect::<Result<_>>()?;
                let [n, e, d, p, q, dp, dq, qi] = parts.as_slice() else {
                    return Err(Error::Key("RSA key is incomplete".into()));
                };
                let key = pkcs1::RsaPrivateKey {
                    modulus: uint(n)?,
                    public_exponent: uint(e)?,
                    private_exponent: uint(d)?,
                    prime1: uint(p)?,
                    prime2: uint(q)?,
                    exponent1: uint(dp)?,
                    exponent2: uint(dq)?,
                    coefficient: uint(qi)?,
                    other_prime_infos: None,
                };
                let inner = Zeroizing::new(key.to_der()?);
                pkcs8_der(OID_RSA_ENCRYPTION, Some(AnyRef::NULL), &inner)
            }
            KeyFamily::Ec => {
                let crv = field(&self.crv, "crv")?;
                let (oid, len) = match crv {
                    "P-256" => (OID_P256, 32),
                    "P-384" => (OID_P384, 48),
                    other => return Err(Error::Key(format!("unsupported curve {other:?}"))),
                };
                let d = Zeroizing::new(left_pad(&b64(&self.d, "d")?, len)?);
                let mut point = vec![0x04];
                point.extend(left_pad(&b64(&self.x, "x")?, len)?);
                point.extend(left_pad(&b64(&self.y, "y")?, len)?);
                let key = sec1::EcPrivateKey {
                    private_key: &d,
                    parameters: None,
                    public_key: Some(&point),
                };
                let inner = Zeroizing::new(key.to_der()?);
                let curve = oid.to_der()?;
                pkcs8_der(OID_EC_PUBLIC_KEY, Some(AnyRef::from_der(&curve)?), &inner)
            }
            KeyFamily::Oct => Err(Error::Key("an oct key has no PKCS#8 form".into())),
        }
    }
}

fn curve_name(oid: ObjectIdentifier) -> Result<(&'static str, usize)> {
    match oid {
        OID_P256 => Ok(("P-256", 32)),
        OID_P384 => Ok(("P-384", 48)),
        other => Err(Error::Key(format!("unsupported curve {other}"))),
    }
}

fn field<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str> {
    value
        .as_deref()
        .ok_or_else(|| Error::Key(format!("JWK member {name:?} is missing")))
}

/// A base64url JWK member, decoded.
pub fn b64(value: &Option<String>, name: &str) -> Result<Vec<u8>> {
    let text = field(value, name)?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| Error::Key(format!("JWK member {name:?} is not base64url")))
}

fn uint(bytes: &[u8]) -> Result<UintRef<'_>> {
    Ok(UintRef::new(bytes)?)
}

fn left_pad(bytes: &[u8], len: usize) -> Result<Vec<u8>> {
    let stripped: &[u8] = {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        bytes.get(first..).unwrap_or_default()
    };
    if stripped.len() > len {
        return Err(Error::Key(format!("EC coordinate longer than {len} bytes")));
    }
    let mut out = vec![0u8; len - stripped.len()];
    out.extend_from_slice(stripped);
    Ok(out)
}

fn spki_der(oid: ObjectIdentifier, parameters: Option<AnyRef<'_>>, key: &[u8]) -> Result<Vec<u8>> {
    let info = spki::SubjectPublicKeyInfoRef {
        algorithm: spki::AlgorithmIdentifier { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key)?,
    };
    Ok(info.to_der()?)
}

fn pkcs8_der(
    oid: ObjectIdentifier,
    parameters: Option<AnyRef<'_>>,
    key: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let info = pkcs8::PrivateKeyInfo {
        algorithm: spki::AlgorithmIdentifier { oid, parameters },
        private_key: OctetStringRef::new(key)?.as_bytes(),
        public_key: None,
    };
    Ok(Zeroizing::new(info.to_der()?))
}

impl From<der::Error> for Error {
    fn from(e: der::Error) -> Self {
        Error::Key(format!("malformed key encoding: {e}"))
    }
}

impl From<pkcs8::Error> for Error {
    fn from(e: pkcs8::Error) -> Self {
        Error::Key(format!("malformed PKCS#8: {e}"))
    }
}

impl From<pkcs1::Error> for Error {
    fn from(e: pkcs1::Error) -> Self {
        Error::Key(format!("malformed PKCS#1: {e}"))
    }
}

impl From<sec1::Error> for Error {
    fn from(e: sec1::Error) -> Self {
        Error::Key(format!("malformed SEC1 key: {e}"))
    }
}
