//! Image layer keys: wrapping a layer key into an annotation packet, and unwrapping it by a
//! secure key release inside the TEE.
//!
//! Annotation packet (the JSON ocicrypt stores, base64, in the image's annotation):
//! `{"kid","wrapped_data":b64,"iv":b64 (omitted when empty),"wrap_type","kms_endpoint","attester_endpoint"}`.
//! RSA keys wrap with RSA-OAEP-SHA256 (empty label), `wrap_type` `rsa_<bits>`; oct keys with
//! AES-256-GCM (12-byte IV, tag appended), `wrap_type` `A256GCM`.

use crate::azure::jwk::{Jwk, KeyFamily};
use crate::azure::Error as AzureError;
use crate::provision::cache::Lookup;
use crate::provision::decrypt::Caller;
use crate::provision::{invalid, Error, KeyRef, Provisioner, ReleasedKey, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use zeroize::Zeroizing;

pub use super::key_info::{resolve, spki_to_pem, KeyInfo, ResolvedKey, WrappingKey};

pub const WRAP_TYPE_AES_GCM: &str = "A256GCM";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnotationPacket {
    pub kid: String,
    pub wrapped_data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iv: String,
    pub wrap_type: String,
    /// Optional on the wire, as the SKR sidecar has them (`omitempty`); an unwrap without one
    /// fails with a message naming it. Confidential Containers' packets (coco_keyprovider
    /// writes only kid, wrapped_data, iv, wrap_type) have neither: their `kid` is a KBS resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kms_endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attester_endpoint: String,
}

impl AnnotationPacket {
    /// Parses the base64 annotation ocicrypt hands back.
    pub fn from_annotation(annotation_b64: &str) -> Result<Self> {
        let json = STANDARD
            .decode(annotation_b64.trim())
            .map_err(|_| invalid("the annotation is not standard base64"))?;
        serde_json::from_slice(&json).map_err(|e| {
            invalid(format!(
                "the annotation is not an aasp annotation packet: {e}"
            ))
        })
    }

    pub fn to_annotation(&self) -> String {
        let mut json = Vec::with_capacity(self.encoded_len_hint());
        let _ = serde_json::to_writer(&mut json, self);
        STANDARD.encode(json)
    }

    /// Room for the packet's JSON with its names and punctuation, so that it is written without
    /// growing its buffer again and again (a field that needs escapes still fits, after a grow).
    pub fn encoded_len_hint(&self) -> usize {
        const NAMES_AND_PUNCTUATION: usize = 128;
        [
            &self.kid,
            &self.wrapped_data,
            &self.iv,
            &self.wrap_type,
            &self.kms_endpoint,
            &self.attester_endpoint,
        ]
        .iter()
        .map(|field| field.len())
        .sum::<usize>()
            + NAMES_AND_PUNCTUATION
    }
}

/// Wraps `layer_key` to an RSA public key (offline: no TEE needed).
pub fn wrap_rsa(
    resolved: &ResolvedKey,
    key: &WrappingKey,
    layer_key: &[u8],
) -> Result<AnnotationPacket> {
    let public = key.oaep();
    let bits = public.key_size_bits();
    // RSA-OAEP with SHA-256 carries at most k - 2*32 - 2 bytes (RFC 8017 §7.1.1): 318 for
    // RSA-3072. Name the limit and the way past it rather than a bare "too long".
    let max = public.key_size_bytes().saturating_sub(66);
    if layer_key.len() > max {
        return Err(invalid(format!(
            "the secret is {} bytes; RSA-OAEP-SHA256 with this RSA-{bits} key wraps at most {max}. \
             Wrap a key instead of the data (envelope): encrypt the data with a random 32-byte \
             AES key and wrap that key (README \"Protect a secret\")",
            layer_key.len()
        )));
    }
    let mut out = vec![0u8; public.ciphertext_size()];
    let wrapped = public
        .encrypt(&OAEP_SHA256_MGF1SHA256, layer_key, &mut out, None)
        .map_err(|_| invalid(format!("RSA-OAEP with this RSA-{bits} key failed")))?;
    Ok(packet(
        resolved,
        STANDARD.encode(wrapped),
        String::new(),
        format!("rsa_{bits}"),
    ))
}

fn packet(
    resolved: &ResolvedKey,
    wrapped_data: String,
    iv: String,
    wrap_type: String,
) -> AnnotationPacket {
    AnnotationPacket {
        kid: resolved.key.name().to_owned(),
        wrapped_data,
        iv,
        wrap_type,
        kms_endpoint: resolved.key.kms().origin(),
        attester_endpoint: resolved.key.maa().authority(),
    }
}

/// Wraps `layer_key` with a released key: RSA (its public half) or oct (AES-256-GCM).
pub fn wrap_with(resolved: &ResolvedKey, key: &Jwk, layer_key: &[u8]) -> Result<AnnotationPacket> {
    match key.family()? {
        KeyFamily::Rsa => wrap_rsa(
            resolved,
            &WrappingKey::from_spki(&key.rsa_public_spki()?)?,
            layer_key,
        ),
        KeyFamily::Oct => {
            let secret = key.oct_bytes()?;
            let mut iv = [0u8; 12];
            SystemRandom::new()
                .fill(&mut iv)
                .map_err(|_| invalid("no randomness"))?;
            let aead = aes_gcm_key(&secret)?;
            let mut sealed = layer_key.to_vec();
            aead.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| invalid("AES-GCM encryption failed"))?;
            Ok(packet(
                resolved,
                STANDARD.encode(sealed),
                STANDARD.encode(iv),
                WRAP_TYPE_AES_GCM.into(),
            ))
        }
        KeyFamily::Ec => Err(invalid(
            "EC keys cannot wrap layer keys; use an RSA or oct key",
        )),
    }
}

fn aes_gcm_key(secret: &[u8]) -> Result<LessSafeKey> {
    let unbound = UnboundKey::new(&AES_256_GCM, secret)
        .map_err(|_| invalid("the oct key is not 256 bits"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Recovers the layer key from `packet` with the released key.
pub fn unwrap_with(
    packet: &AnnotationPacket,
    released: &ReleasedKey,
) -> Result<Zeroizing<Vec<u8>>> {
    let key = &released.jwk;
    let wrapped = STANDARD
        .decode(&packet.wrapped_data)
        .map_err(|_| invalid("wrapped_data is not base64"))?;
    match (key.family()?, packet.wrap_type.as_str()) {
        (KeyFamily::Rsa, t) if t.starts_with("rsa_") => {
            let private = released.rsa_private()?;
            let mut out = Zeroizing::new(vec![0u8; private.min_output_size()]);
            let len = private
                .decrypt(&OAEP_SHA256_MGF1SHA256, &wrapped, &mut out, None)
                .map_err(|_| {
                    Error::Azure(AzureError::Unwrap(
                        "the layer key does not decrypt with the released key".into(),
                    ))
                })?
                .len();
            out.truncate(len);
            Ok(out)
        }
        (KeyFamily::Oct, WRAP_TYPE_AES_GCM) => {
            let iv: [u8; 12] = STANDARD
                .decode(&packet.iv)
                .ok()
                .and_then(|iv| iv.try_into().ok())
                .ok_or_else(|| invalid("iv must be 12 bytes of base64 for A256GCM"))?;
            let aead = aes_gcm_key(&key.oct_bytes()?)?;
            let mut buf = Zeroizing::new(wrapped);
            let len = aead
                .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
                .map_err(|_| {
                    Error::Azure(AzureError::Unwrap(
                        "the layer key does not decrypt with the released key".into(),
                    ))
                })?
                .len();
            buf.truncate(len);
            Ok(buf)
        }
        (family, wrap_type) => Err(invalid(format!(
            "wrap_type {wrap_type:?} does not match the released {family:?} key"
        ))),
    }
}

/// An annotation packet's key fields and the key they name.
pub(super) struct PacketKey {
    kms: String,
    kid: String,
    maa: String,
    key: KeyRef,
}

impl Provisioner {
    /// Wraps a layer key to `resolved`: offline for RSA keys whose public key is known, else
    /// with the key itself, released into this TEE (oct keys need their secret to encrypt).
    pub async fn wrap_layer_key(
        &self,
        resolved: &ResolvedKey,
        layer_key: &[u8],
    ) -> Result<AnnotationPacket> {
        // An annotation naming a host this server would refuse to unwrap from is no use.
        self.check_key(&resolved.key)?;
        if let Some(public) = &resolved.public {
            return wrap_rsa(resolved, public, layer_key);
        }
        let released = self.release(&resolved.key).await?;
        wrap_with(resolved, &released.jwk, layer_key)
    }

    /// The key a packet names, parsed. An image's layers name the same key, and parsing its two
    /// endpoints (URL parsing with IDNA) cost ~5 µs per warm unwrap, so the last packet's
    /// parse is kept: the same three strings give the same key.
    fn packet_key(&self, packet: &AnnotationPacket) -> Result<KeyRef> {
        let last = || {
            self.last_packet_key
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some(last) = last().as_ref() {
            if last.kms == packet.kms_endpoint
                && last.kid == packet.kid
                && last.maa == packet.attester_endpoint
            {
                return Ok(last.key.clone());
            }
        }
        let key = KeyRef::azure(&packet.kms_endpoint, &packet.kid, &packet.attester_endpoint)?;
        *last() = Some(PacketKey {
            kms: packet.kms_endpoint.clone(),
            kid: packet.kid.clone(),
            maa: packet.attester_endpoint.clone(),
            key: key.clone(),
        });
        Ok(key)
    }

    /// Unwraps a layer key: secure key release of the packet's key, then decrypt, in the
    /// caller's task if `caller` is alone in it (see `decrypt`).
    pub async fn unwrap_layer_key(
        &self,
        packet: &AnnotationPacket,
        caller: Caller,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if packet.kms_endpoint.is_empty()
            && packet.attester_endpoint.is_empty()
            && super::kbs::is_kbs_key_id(&packet.kid)
        {
            // Boxed for the same reason as the release (see `release_looked_up`).
            return Box::pin(self.unwrap_kbs_layer_key(packet)).await;
        }
        if packet.kms_endpoint.is_empty()
            || packet.attester_endpoint.is_empty()
            || packet.kid.is_empty()
        {
            return Err(invalid(
                "the annotation packet lacks kid, kms_endpoint or attester_endpoint",
            ));
        }
        // The packet is the image's: untrusted. Its endpoints are parsed and allow-list checked
        // (in `release`) before anything is attested or sent.
        let key = self.packet_key(packet)?;
        let (released, lookup) = self.release_looked_up(&key).await?;
        if !packet.wrap_type.starts_with("rsa_") {
            // AES-GCM of a few bytes: cheaper than handing it to another thread.
            return unwrap_with(packet, &released);
        }
        // The RSA private-key operation (~0.7 ms for RSA-3072) goes where it holds up nobody
        // (see `decrypt`). In this task only for a key that was cached, with no other release
        // under way: a release (ours, cold; another's, waiting for the key) wakes tasks, and
        // tokio runs a task woken from a worker on that same worker next, after this one.
        let caller = match lookup {
            Lookup::Hit if self.releasing.load(Ordering::Acquire) == 0 => caller,
            _ => Caller::Shared,
        };
        // The packet, a few short strings, is cloned for it.
        let packet = packet.clone();
        self.decrypt
            .run(caller, move || unwrap_with(&packet, &released))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(jwk: &Jwk) -> ReleasedKey {
        ReleasedKey::new(
            crate::azure::kms::KeyUrl::new("kms.example", "k").unwrap(),
            jwk.clone(),
        )
    }

    fn resolved() -> ResolvedKey {
        ResolvedKey {
            key: KeyRef::azure("kms.example", "k", "maa.example").unwrap(),
            public: None,
        }
    }

    #[test]
    fn oct_round_trip_and_tamper() {
        let key = Jwk::oct(&[9; 32]);
        let packet = wrap_with(&resolved(), &key, b"layer key bytes").unwrap();
        assert_eq!(packet.wrap_type, "A256GCM");
        assert_eq!(STANDARD.decode(&packet.iv).unwrap().len(), 12);
        let back = AnnotationPacket::from_annotation(&packet.to_annotation()).unwrap();
        assert_eq!(back, packet);
        assert_eq!(
            unwrap_with(&back, &released(&key)).unwrap().as_slice(),
            b"layer key bytes"
        );
        let mut tampered = back.clone();
        tampered.wrapped_data = STANDARD.encode([0u8; 31]);
        assert!(unwrap_with(&tampered, &released(&key)).is_err());
        assert!(unwrap_with(&back, &released(&Jwk::oct(&[8; 32]))).is_err());
    }

    #[test]
    fn rsa_round_trip() {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let jwk = Jwk::from_pkcs8(KeyFamily::Rsa, pair.as_der().unwrap().as_ref()).unwrap();
        let packet = wrap_with(&resolved(), &jwk, &[7; 32]).unwrap();
        assert_eq!(packet.wrap_type, "rsa_2048");
        assert!(packet.iv.is_empty() && !packet.to_annotation().is_empty());
        assert!(
            !String::from_utf8(STANDARD.decode(packet.to_annotation()).unwrap())
                .unwrap()
                .contains("\"iv\"")
        );
        assert_eq!(
            unwrap_with(&packet, &released(&jwk)).unwrap().as_slice(),
            &[7; 32]
        );
        // The OAEP-SHA256 limit is named, with the way past it: 190 bytes for RSA-2048.
        let public = WrappingKey::from_spki(&jwk.rsa_public_spki().unwrap()).unwrap();
        assert!(wrap_rsa(&resolved(), &public, &[1; 190]).is_ok());
        let too_long = wrap_rsa(&resolved(), &public, &[1; 191])
            .unwrap_err()
            .to_string();
        assert!(
            too_long.contains("191 bytes") && too_long.contains("at most 190"),
            "{too_long}"
        );
        assert!(too_long.contains("envelope"), "{too_long}");
    }

    #[test]
    fn annotation_packets_without_endpoints_parse() {
        // They fail later, naming the missing endpoints.
        let packet = STANDARD.encode(r#"{"kid":"k","wrapped_data":"AA==","wrap_type":"rsa_3072"}"#);
        let parsed = AnnotationPacket::from_annotation(&packet).unwrap();
        assert!(parsed.kms_endpoint.is_empty() && parsed.attester_endpoint.is_empty());
    }
}
