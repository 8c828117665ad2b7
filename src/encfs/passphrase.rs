//! The LUKS passphrase of a filesystem, from the key released for it.
//!
//! The rule is upstream's (`releaseRemoteFilesystemKey` in `cmd/remotefs/azurefs.go`,
//! microsoft/confidential-sidecar-containers), so images made for encfs open here:
//! - `oct` / `oct-HSM`: the 32 released bytes are the passphrase;
//! - `RSA` / `RSA-HSM`: HKDF-SHA256 with ikm = the private exponent D as minimal big-endian bytes
//!   (Go's `big.Int.Bytes()`), salt = hex-decoded `key_derivation.salt` (empty when absent),
//!   info = `key_derivation.label` (`"Symmetric Encryption Key"` when absent), 32 bytes;
//! - a `kbs:///` resource: its bytes as they are.
//!
//! Unlike upstream, a key of the wrong family or length is an error that says so, not an empty
//! key file.

use super::args::{KeyDerivation, KeyKind, DEFAULT_LABEL};
use crate::azure::jwk::{b64, Jwk, KeyFamily};
use zeroize::Zeroizing;

/// Bytes of an oct key, and of a derived passphrase.
pub const KEY_LEN: usize = 32;

/// Longest KBS resource taken as a passphrase (cryptsetup's own limit for an interactive
/// passphrase is 512 bytes; a key file may be longer, but a resource this long is a mistake).
pub const MAX_RESOURCE_LEN: usize = 8192;

/// Why a released key cannot become a passphrase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassphraseError {
    #[error(
        "the released key is {released} but the filesystem's key.kty says {expected:?}: fix kty"
    )]
    WrongFamily { released: String, expected: KeyKind },
    #[error("the released oct key is {0} bytes; an encfs key is 32 bytes (AES-256): import a 32-byte key")]
    OctLength(usize),
    #[error("the released RSA key has no private exponent (d)")]
    NoPrivateExponent,
    #[error("the released key is malformed: {0}")]
    Malformed(String),
    #[error("key_derivation.salt is not hex")]
    SaltNotHex,
    #[error("the KBS resource is {0} bytes: a passphrase is 1 to 8192 bytes")]
    ResourceLength(usize),
}

/// A LUKS passphrase: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// From a released (or locally held) JWK, by the rule of the module doc. `expected` is the
    /// family the filesystem's `kty` names; `derivation` is used only for RSA keys.
    pub fn from_jwk(
        jwk: &Jwk,
        expected: KeyKind,
        derivation: &KeyDerivation,
    ) -> Result<Self, PassphraseError> {
        let family = jwk
            .family()
            .map_err(|_| PassphraseError::Malformed(format!("unsupported kty {:?}", jwk.kty)))?;
        match (family, expected) {
            (KeyFamily::Oct, KeyKind::Oct) => {
                let key = jwk
                    .oct_bytes()
                    .map_err(|e| PassphraseError::Malformed(e.to_string()))?;
                if key.len() != KEY_LEN {
                    return Err(PassphraseError::OctLength(key.len()));
                }
                Ok(Passphrase(key))
            }
            (KeyFamily::Rsa, KeyKind::Rsa) => {
                if jwk.d.is_none() {
                    return Err(PassphraseError::NoPrivateExponent);
                }
                let d = Zeroizing::new(
                    b64(&jwk.d, "d").map_err(|e| PassphraseError::Malformed(e.to_string()))?,
                );
                Self::derive_rsa(&d, derivation)
            }
            (family, expected) => Err(PassphraseError::WrongFamily {
                released: format!("{family:?}"),
                expected,
            }),
        }
    }

    /// HKDF-SHA256 of the private exponent `d` (big-endian; leading zeros are dropped, as Go's
    /// `big.Int.Bytes()` never has them).
    pub fn derive_rsa(d: &[u8], derivation: &KeyDerivation) -> Result<Self, PassphraseError> {
        use aws_lc_rs::hkdf;
        let first = d.iter().position(|b| *b != 0).unwrap_or(d.len());
        let ikm = d.get(first..).unwrap_or_default();
        let salt = match derivation.salt.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(hex_text) => hex::decode(hex_text).map_err(|_| PassphraseError::SaltNotHex)?,
        };
        let label = match derivation.label.as_deref() {
            None | Some("") => DEFAULT_LABEL,
            Some(label) => label,
        };
        let info = [label.as_bytes()];
        let mut out = Zeroizing::new(vec![0u8; KEY_LEN]);
        hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
            .extract(ikm)
            .expand(&info, PassphraseLen)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| PassphraseError::Malformed("HKDF failed".into()))?;
        Ok(Passphrase(out))
    }

    /// A KBS resource's bytes, as they are.
    pub fn from_kbs_resource(bytes: Zeroizing<Vec<u8>>) -> Result<Self, PassphraseError> {
        if bytes.is_empty() || bytes.len() > MAX_RESOURCE_LEN {
            return Err(PassphraseError::ResourceLength(bytes.len()));
        }
        Ok(Passphrase(bytes))
    }

    /// The bytes, for the KDF (or cryptsetup's `--key-file`).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// What to say when a passphrase from an Azure key does not open the image: the one mistake
/// encfs users make most (confidential-sidecar-containers issue 233) gets its own hint.
pub fn wrong_key_hint(kind: KeyKind, derivation: &KeyDerivation) -> &'static str {
    match kind {
        KeyKind::Oct => "check that key.kid names the key the image was made with",
        KeyKind::Rsa
            if derivation
                .salt
                .as_deref()
                .is_none_or(|s| s.trim().is_empty()) =>
        {
            "an RSA key needs the key_derivation salt (and label) the image was made with: copy \
             them from IMAGE.encfs.json (or what importkey printed)"
        }
        KeyKind::Rsa => {
            "check key_derivation.salt and label against IMAGE.encfs.json, and that key.kid names \
             the key the image was made with"
        }
    }
}

/// The HKDF output length (aws-lc-rs takes it as a `KeyType`).
struct PassphraseLen;

impl aws_lc_rs::hkdf::KeyType for PassphraseLen {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    // HKDF-SHA256 vectors computed independently with Python's standard library only
    // (RFC 5869 by hand with `hmac`/`hashlib`):
    //   prk = hmac.new(salt, ikm, "sha256").digest()
    //   okm = hmac.new(prk, info + b"\x01", "sha256").digest()      # 32 bytes = one block
    // with ikm = bytes.fromhex(D_HEX) (D_HEX starts with a non-zero byte, so it is minimal).
    const D_HEX: &str = "5f3e9a0c7b21d4e6f80912a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7\
                         11223344556677889900aabbccddeeff";
    /// salt = bytes.fromhex("00112233445566778899aabbccddeeff"), info = b"my label".
    const OKM_SALT_LABEL: &str = "33653ef4e3201eba6a82b76dfc3bd481cd9cad0da58d5d58d8adf2074a87e214";
    /// salt = b"" (absent), info = b"Symmetric Encryption Key" (absent label).
    const OKM_DEFAULTS: &str = "2da882544c1a241417a398a1b4556791456ef6ce34b22d5610912ce7e88f33df";

    fn derivation(salt: Option<&str>, label: Option<&str>) -> KeyDerivation {
        KeyDerivation {
            salt: salt.map(str::to_owned),
            label: label.map(str::to_owned),
        }
    }

    #[test]
    fn hkdf_matches_independent_vectors() {
        let d = hex::decode(D_HEX).unwrap();
        let p = Passphrase::derive_rsa(
            &d,
            &derivation(Some("00112233445566778899aabbccddeeff"), Some("my label")),
        )
        .unwrap();
        assert_eq!(hex::encode(p.expose()), OKM_SALT_LABEL);
        let p = Passphrase::derive_rsa(&d, &derivation(None, None)).unwrap();
        assert_eq!(hex::encode(p.expose()), OKM_DEFAULTS);
        // Empty strings are the defaults too, and leading zeros of D are not part of the ikm.
        let mut padded = vec![0, 0];
        padded.extend_from_slice(&d);
        let p = Passphrase::derive_rsa(&padded, &derivation(Some(""), Some(""))).unwrap();
        assert_eq!(hex::encode(p.expose()), OKM_DEFAULTS);
    }

    #[test]
    fn from_jwk_applies_family_and_length_rules() {
        let oct = Jwk::oct(&[7u8; 32]);
        let p = Passphrase::from_jwk(&oct, KeyKind::Oct, &KeyDerivation::default()).unwrap();
        assert_eq!(p.expose(), &[7u8; 32]);
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
        assert_eq!(
            Passphrase::from_jwk(
                &Jwk::oct(&[7u8; 16]),
                KeyKind::Oct,
                &KeyDerivation::default()
            )
            .unwrap_err(),
            PassphraseError::OctLength(16)
        );
        assert!(matches!(
            Passphrase::from_jwk(&oct, KeyKind::Rsa, &KeyDerivation::default()).unwrap_err(),
            PassphraseError::WrongFamily { .. }
        ));
        let mut rsa = Jwk::new("RSA-HSM");
        rsa.d = Some(URL_SAFE_NO_PAD.encode(hex::decode(D_HEX).unwrap()));
        let p = Passphrase::from_jwk(&rsa, KeyKind::Rsa, &KeyDerivation::default()).unwrap();
        assert_eq!(hex::encode(p.expose()), OKM_DEFAULTS);
        assert!(matches!(
            Passphrase::from_jwk(&rsa, KeyKind::Oct, &KeyDerivation::default()).unwrap_err(),
            PassphraseError::WrongFamily { .. }
        ));
        rsa.d = None;
        assert_eq!(
            Passphrase::from_jwk(&rsa, KeyKind::Rsa, &KeyDerivation::default()).unwrap_err(),
            PassphraseError::NoPrivateExponent
        );
    }

    #[test]
    fn kbs_resource_is_taken_as_is_within_bounds() {
        let p = Passphrase::from_kbs_resource(Zeroizing::new(b"resource".to_vec())).unwrap();
        assert_eq!(p.expose(), b"resource");
        assert_eq!(
            Passphrase::from_kbs_resource(Zeroizing::new(Vec::new())).unwrap_err(),
            PassphraseError::ResourceLength(0)
        );
    }

    #[test]
    fn hint_names_the_missing_salt() {
        assert!(wrong_key_hint(KeyKind::Rsa, &KeyDerivation::default()).contains("salt"));
        assert!(!wrong_key_hint(KeyKind::Oct, &KeyDerivation::default()).contains("salt"));
    }
}
