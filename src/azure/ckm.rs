//! `CKM_RSA_AES_KEY_WRAP`: how Key Vault hands a released key to a TEE.
//!
//! The HSM draws an ephemeral AES-256 key, encrypts it with RSA-OAEP under the TEE's transfer key,
//! and wraps the key material with it (RFC 5649 AES key wrap with padding). The ciphertext is the
//! two concatenated; the split point is the transfer key's modulus size, taken from the key,
//! never assumed. RSA private operations use aws-lc-rs, which is constant-time (the `rsa` crate
//! is open to the Marvin timing attack, RUSTSEC-2023-0071).

use crate::azure::jwk::{Jwk, KeyFamily};
use crate::azure::{Error, Result};
use aes_kw::{KeyInit, KwpAes256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OaepAlgorithm, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256,
    OAEP_SHA384_MGF1SHA384,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The `enc` values Key Vault accepts for a release, and the OAEP hash each implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapAlgorithm {
    /// `CKM_RSA_AES_KEY_WRAP`: OAEP with SHA-1 (Key Vault's default).
    CkmRsaAesKeyWrap,
    /// `RSA_AES_KEY_WRAP_256`: OAEP with SHA-256.
    RsaAesKeyWrap256,
    /// `RSA_AES_KEY_WRAP_384`: OAEP with SHA-384.
    RsaAesKeyWrap384,
}

impl WrapAlgorithm {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "CKM_RSA_AES_KEY_WRAP" => Ok(Self::CkmRsaAesKeyWrap),
            "RSA_AES_KEY_WRAP_256" => Ok(Self::RsaAesKeyWrap256),
            "RSA_AES_KEY_WRAP_384" => Ok(Self::RsaAesKeyWrap384),
            other => Err(Error::Unwrap(format!(
                "unsupported key wrap algorithm {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::CkmRsaAesKeyWrap => "CKM_RSA_AES_KEY_WRAP",
            Self::RsaAesKeyWrap256 => "RSA_AES_KEY_WRAP_256",
            Self::RsaAesKeyWrap384 => "RSA_AES_KEY_WRAP_384",
        }
    }

    fn oaep(self) -> &'static OaepAlgorithm {
        match self {
            Self::CkmRsaAesKeyWrap => &OAEP_SHA1_MGF1SHA1,
            Self::RsaAesKeyWrap256 => &OAEP_SHA256_MGF1SHA256,
            Self::RsaAesKeyWrap384 => &OAEP_SHA384_MGF1SHA384,
        }
    }
}

/// `key_hsm`, decoded: `{"schema_version","header":{"kid","alg":"dir","enc"},"ciphertext"}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyHsm {
    pub schema_version: String,
    pub header: KeyHsmHeader,
    pub ciphertext: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyHsmHeader {
    pub kid: String,
    pub alg: String,
    pub enc: String,
}

/// The TEE-held RSA key a released key is wrapped to. Its private half never leaves this value.
pub struct TransferKey {
    private: OaepPrivateDecryptingKey,
    public_jwk: Jwk,
    modulus_len: usize,
}

impl std::fmt::Debug for TransferKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TransferKey(kid={:?}, private=<redacted>)",
            self.public_jwk.kid
        )
    }
}

impl TransferKey {
    /// Generates a 2048-bit key. Slow (tens of milliseconds): keep it off request paths.
    pub fn generate() -> Result<Self> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| Error::Unwrap("transfer key generation failed".into()))?;
        Self::from_key(key)
    }

    fn from_key(key: PrivateDecryptingKey) -> Result<Self> {
        let modulus_len = key.key_size_bytes();
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| Error::Unwrap("cannot encode the transfer public key".into()))?;
        let mut public_jwk = Jwk::from_rsa_spki(spki.as_ref())?;
        public_jwk.key_ops = Some(vec!["encrypt".into()]);
        public_jwk.kid = Some(public_jwk.thumbprint()?);
        let public = OaepPublicEncryptingKey::new(key.public_key())
            .map_err(|_| Error::Unwrap("transfer key rejected".into()))?;
        let private = OaepPrivateDecryptingKey::new(key)
            .map_err(|_| Error::Unwrap("transfer key rejected".into()))?;
        pairwise_check(&public, &private)?;
        Ok(TransferKey {
            private,
            public_jwk,
            modulus_len,
        })
    }

    pub fn public_jwk(&self) -> &Jwk {
        &self.public_jwk
    }

    /// The runtime data bound into the report and sent to MAA: `{"keys":[transfer JWK]}`.
    pub fn runtime_data(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": [self.public_jwk] })).unwrap_or_default()
    }

    /// Unwraps a released key's `key_hsm` into a private JWK of the released key's family.
    pub fn unwrap_key_hsm(&self, key_hsm_b64: &str, family: KeyFamily) -> Result<Jwk> {
        let json = URL_SAFE_NO_PAD
            .decode(key_hsm_b64.trim_end_matches('='))
            .map_err(|_| Error::Unwrap("key_hsm is not base64url".into()))?;
        let envelope: KeyHsm = serde_json::from_slice(&json)
            .map_err(|e| Error::Unwrap(format!("key_hsm is not the expected JSON: {e}")))?;
        if envelope.header.kid != self.public_jwk.kid.clone().unwrap_or_default() {
            return Err(Error::Unwrap(format!(
                "the key was wrapped to transfer key {:?}, not ours",
                envelope.header.kid
            )));
        }
        let algorithm = WrapAlgorithm::parse(&envelope.header.enc)?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(envelope.ciphertext.trim_end_matches('='))
            .map_err(|_| Error::Unwrap("key_hsm ciphertext is not base64url".into()))?;
        let material = self.unwrap(algorithm, &ciphertext)?;
        match family {
            KeyFamily::Oct => Ok(Jwk::oct(&material)),
            other => Jwk::from_pkcs8(other, &material),
        }
    }

    /// RSA-OAEP-decrypts the AES key, then AES-KWP-unwraps the material.
    pub fn unwrap(
        &self,
        algorithm: WrapAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        if ciphertext.len() <= self.modulus_len {
            return Err(Error::Unwrap(format!(
                "ciphertext of {} bytes is too short for a {}-byte RSA block plus wrapped key",
                ciphertext.len(),
                self.modulus_len
            )));
        }
        let (rsa_block, wrapped) = ciphertext.split_at(self.modulus_len);
        let mut aes_key = Zeroizing::new(vec![0u8; self.private.min_output_size()]);
        let aes_key = self
            .private
            .decrypt(algorithm.oaep(), rsa_block, &mut aes_key, None)
            .map_err(|_| Error::Unwrap("RSA-OAEP decryption of the wrapping key failed".into()))?;
        aes_kwp_unwrap(aes_key, wrapped)
    }
}

/// Pairwise consistency check of a fresh key pair, before its public half is published: a
/// random 32-byte value (the size of a wrapping key) encrypted to the public key must decrypt to
/// itself. It also makes aws-lc do, here and off the request path, what it otherwise does on a
/// key's first private operation (Montgomery contexts for n, p and q, the blinding values):
/// without it the first release's unwrap paid about 0.35 ms more than later ones.
fn pairwise_check(
    public: &OaepPublicEncryptingKey,
    private: &OaepPrivateDecryptingKey,
) -> Result<()> {
    let failed = || Error::Unwrap("the transfer key failed its pairwise check".into());
    let mut probe = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(probe.as_mut())
        .map_err(|_| Error::Unwrap("no randomness".into()))?;
    let algorithm = WrapAlgorithm::CkmRsaAesKeyWrap.oaep();
    let mut ciphertext = vec![0u8; public.ciphertext_size()];
    let ciphertext = public
        .encrypt(algorithm, probe.as_ref(), &mut ciphertext, None)
        .map_err(|_| failed())?;
    let mut plaintext = Zeroizing::new(vec![0u8; private.min_output_size()]);
    let plaintext = private
        .decrypt(algorithm, ciphertext, &mut plaintext, None)
        .map_err(|_| failed())?;
    if plaintext != probe.as_ref() {
        return Err(failed());
    }
    Ok(())
}

/// RFC 5649 unwrap with AES-256.
pub fn aes_kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let kw = KwpAes256::new_from_slice(kek)
        .map_err(|_| Error::Unwrap("the wrapping key is not 256 bits".into()))?;
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = kw
        .unwrap_key(wrapped, &mut out)
        .map_err(|_| Error::Unwrap("AES key unwrap failed the integrity check".into()))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// RFC 5649 wrap with AES-256.
pub fn aes_kwp_wrap(kek: &[u8], key: &[u8]) -> Result<Vec<u8>> {
    let kw = KwpAes256::new_from_slice(kek)
        .map_err(|_| Error::Unwrap("the wrapping key is not 256 bits".into()))?;
    let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 8];
    let len = kw
        .wrap_key(key, &mut out)
        .map_err(|_| Error::Unwrap("AES key wrap failed".into()))?
        .len();
    out.truncate(len);
    Ok(out)
}

/// What the HSM does: wraps `material` to the RSA public key `target` (a JWK) and returns the
/// `key_hsm` envelope, base64url.
pub fn wrap_to(target: &Jwk, algorithm: WrapAlgorithm, material: &[u8]) -> Result<String> {
    let public = PublicEncryptingKey::from_der(&target.rsa_public_spki()?)
        .map_err(|_| Error::Unwrap("the target key is not a usable RSA key".into()))?;
    let public = OaepPublicEncryptingKey::new(public)
        .map_err(|_| Error::Unwrap("the target key is rejected".into()))?;
    let mut aes_key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(aes_key.as_mut())
        .map_err(|_| Error::Unwrap("no randomness".into()))?;
    let mut ciphertext = vec![0u8; public.ciphertext_size()];
    let rsa_block = public
        .encrypt(algorithm.oaep(), aes_key.as_ref(), &mut ciphertext, None)
        .map_err(|_| Error::Unwrap("RSA-OAEP encryption failed".into()))?
        .to_vec();
    let mut all = rsa_block;
    all.extend(aes_kwp_wrap(aes_key.as_ref(), material)?);
    let envelope = KeyHsm {
        schema_version: "1.0".into(),
        header: KeyHsmHeader {
            kid: target.kid.clone().unwrap_or_default(),
            alg: "dir".into(),
            enc: algorithm.name().into(),
        },
        ciphertext: URL_SAFE_NO_PAD.encode(&all),
    };
    Ok(URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&envelope).map_err(|e| Error::Unwrap(e.to_string()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 5649 §6, both examples (192-bit KEK there; the test uses the same vectors through
    /// aes-kw's 192-bit type and checks our 256-bit helpers round-trip).
    #[test]
    fn rfc5649_known_answers() {
        use aes_kw::KwpAes192;
        let kek = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let kw = KwpAes192::new_from_slice(&kek).unwrap();
        for (key, wrapped) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let mut out = vec![0u8; 64];
            assert_eq!(
                kw.wrap_key(&h(key), &mut out).unwrap(),
                h(wrapped).as_slice()
            );
            let mut back = vec![0u8; 64];
            assert_eq!(
                kw.unwrap_key(&h(wrapped), &mut back).unwrap(),
                h(key).as_slice()
            );
        }
        let kek256 = [7u8; 32];
        let wrapped = aes_kwp_wrap(&kek256, b"seven bytes").unwrap();
        assert_eq!(
            aes_kwp_unwrap(&kek256, &wrapped).unwrap().as_slice(),
            b"seven bytes"
        );
        let mut tampered = wrapped.clone();
        tampered[3] ^= 1;
        assert!(aes_kwp_unwrap(&kek256, &tampered).is_err());
    }

    #[test]
    fn wrap_then_unwrap_for_every_algorithm() {
        let tk = TransferKey::generate().unwrap();
        for alg in [
            WrapAlgorithm::CkmRsaAesKeyWrap,
            WrapAlgorithm::RsaAesKeyWrap256,
            WrapAlgorithm::RsaAesKeyWrap384,
        ] {
            let key_hsm = wrap_to(tk.public_jwk(), alg, &[0x42; 32]).unwrap();
            let jwk = tk.unwrap_key_hsm(&key_hsm, KeyFamily::Oct).unwrap();
            assert_eq!(jwk.oct_bytes().unwrap().as_slice(), &[0x42; 32]);
        }
        let other = TransferKey::generate().unwrap();
        let key_hsm = wrap_to(
            other.public_jwk(),
            WrapAlgorithm::CkmRsaAesKeyWrap,
            &[1; 32],
        )
        .unwrap();
        assert!(tk
            .unwrap_key_hsm(&key_hsm, KeyFamily::Oct)
            .unwrap_err()
            .to_string()
            .contains("not ours"));
    }

    /// The pairwise check catches a private key that does not match its public half.
    #[test]
    fn pairwise_check_rejects_mismatched_halves() {
        let halves = || {
            let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
            let public = OaepPublicEncryptingKey::new(key.public_key()).unwrap();
            (public, OaepPrivateDecryptingKey::new(key).unwrap())
        };
        let (public, private) = halves();
        let (other_public, _) = halves();
        pairwise_check(&public, &private).unwrap();
        assert!(pairwise_check(&other_public, &private)
            .unwrap_err()
            .to_string()
            .contains("pairwise check"));
    }

    #[test]
    fn transfer_key_debug_hides_the_private_key() {
        let tk = TransferKey::generate().unwrap();
        let dbg = format!("{tk:?}");
        assert!(dbg.contains("redacted") && dbg.contains(tk.public_jwk().kid.as_deref().unwrap()));
    }
}
