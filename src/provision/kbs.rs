//! The Trustee KBS backend of the secret flow: a KBS client whose evidence is this TEE's CoCo
//! SNP evidence (the same attester and chain source as the Azure flow), tokens for
//! `GetToken("kbs")`, and resources by `kbs:///` URI.

use super::layer::{AnnotationPacket, WRAP_TYPE_AES_GCM};
use super::{coco_evidence_of, Error, Provisioner, Result};
use crate::kbs::coco_as::{CocoAsClient, CocoAsOptions};
use crate::kbs::config::{CocoAsSettings, KbsSettings};
use crate::kbs::{EvidenceSource, KbsClient, KbsOptions, ResourceUri};
use crate::snp::attester::Attester;
use crate::snp::chain::ChainCache;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use zeroize::Zeroizing;

/// This TEE's evidence for the KBS: a report binding the KBS's report_data, with its chain.
struct TeeEvidence {
    attester: Arc<dyn Attester>,
    chains: Arc<ChainCache>,
}

impl EvidenceSource for TeeEvidence {
    fn evidence(
        &self,
        report_data: [u8; 64],
    ) -> BoxFuture<'_, std::result::Result<serde_json::Value, String>> {
        Box::pin(async move {
            let json = coco_evidence_of(&self.attester, &self.chains, report_data)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice(&json).map_err(|e| e.to_string())
        })
    }
}

/// What `GetToken("kbs")` returns: upstream AA's `{"token", "tee_keypair"}`. The PEM is the TEE
/// key's private half: this goes only to local callers inside the TEE, as upstream's does.
pub struct KbsTokenReply(pub Zeroizing<Vec<u8>>);

impl Provisioner {
    /// Adds the KBS backend. `http` must already trust the KBS (see `crate::http::client_pinned`
    /// for a pinned certificate); `max_resource` bounds a resource body. `init_data` is init-data
    /// TOML that matched HOST_DATA: it goes with every attestation.
    pub fn with_kbs(
        mut self,
        settings: &KbsSettings,
        http: reqwest::Client,
        max_resource: usize,
        init_data: Option<String>,
    ) -> Result<Self> {
        let evidence = self.tee_evidence();
        let client = KbsClient::new(
            http,
            KbsOptions {
                url: settings.url.clone(),
                key_algorithm: settings.key_algorithm,
                retry: crate::http::RetryPolicy {
                    trust_option: crate::http::TRUST_KBS_CERT,
                    ..self.retry
                },
                max_resource,
                init_data,
            },
            evidence,
        )?;
        self.kbs = Some(Arc::new(client));
        Ok(self)
    }

    fn tee_evidence(&self) -> Arc<TeeEvidence> {
        Arc::new(TeeEvidence {
            attester: Arc::clone(&self.attester),
            chains: Arc::clone(&self.chains),
        })
    }

    /// Adds the Trustee attestation service `GetToken("coco_as")` attests to.
    pub fn with_coco_as(
        mut self,
        settings: &CocoAsSettings,
        http: reqwest::Client,
        init_data: Option<String>,
    ) -> Result<Self> {
        let client = CocoAsClient::new(
            http,
            CocoAsOptions {
                url: settings.url.clone(),
                retry: self.retry,
                init_data,
            },
            self.tee_evidence(),
        )?;
        self.coco_as = Some(Arc::new(client));
        Ok(self)
    }

    /// `GetToken("coco_as")`: a token from the configured Trustee attestation service, for this
    /// TEE's fresh evidence.
    pub async fn coco_as_token(&self) -> Result<crate::kbs::KbsToken> {
        let client = self.coco_as.as_ref().ok_or_else(|| {
            Error::NotConfigured(
                "no Trustee attestation service is configured ([token_configs.coco_as] in the \
                 AA config or in the init-data's aa.toml)"
                    .into(),
            )
        })?;
        Ok(client.token().await?)
    }

    fn kbs(&self) -> Result<&Arc<KbsClient>> {
        self.kbs.as_ref().ok_or_else(|| {
            Error::NotConfigured(
                "no Trustee KBS is configured (--kbs-url, [token_configs.kbs] in the AA config, \
                 or agent.aa_kbc_params=cc_kbc::<url>)"
                    .into(),
            )
        })
    }

    pub fn kbs_url(&self) -> Option<&str> {
        self.kbs.as_ref().map(|k| k.url())
    }

    /// Upstream AA's `GetToken("kbs")` reply: `{"token": <JWT>, "tee_keypair": <PEM>}`, from a
    /// fresh RCAR handshake on every call (as upstream's agent), apart from the session aasp's
    /// own resource reads share.
    pub async fn kbs_token(&self) -> Result<KbsTokenReply> {
        let session = self.kbs()?.fresh_session().await?;
        let pem = session.tee_key.private_pem()?;
        let reply = serde_json::json!({
            "token": session.token.expose(),
            "tee_keypair": pem.as_str(),
        });
        // The JSON holds the token and the private key: build it straight into zeroizing bytes.
        let mut bytes = Zeroizing::new(Vec::new());
        serde_json::to_writer(&mut *bytes, &reply)
            .map_err(|e| Error::Invalid(format!("token reply: {e}")))?;
        Ok(KbsTokenReply(bytes))
    }

    /// A resource from the KBS, decrypted inside the TEE. `uri` is `kbs:///repo/type/tag` (or
    /// `repo/type/tag`); which KBS answers comes from configuration only.
    pub async fn kbs_resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>> {
        let uri = ResourceUri::parse(uri)?;
        Ok(self.kbs()?.get_resource(&uri).await?)
    }
}

/// Whether an annotation packet's `kid` names a KBS resource, as coco_keyprovider writes it:
/// `kbs:///repo/type/tag`, `kbs://<addr>/repo/type/tag` or `/repo/type/tag` (its default,
/// `/default/image-kek/<uuid>`).
pub(crate) fn is_kbs_key_id(kid: &str) -> bool {
    (kid.starts_with("kbs://") || kid.starts_with('/')) && ResourceUri::parse(kid).is_ok()
}

impl Provisioner {
    /// A layer key from a Confidential Containers annotation packet
    /// (`{"kid","wrapped_data","iv","wrap_type"}`, guest-components `coco_keyprovider`
    /// `enc_mods/mod.rs`): the KEK is the KBS resource `kid` (32 bytes), `wrapped_data` the
    /// AES-256-GCM encryption of the layer options under it (tag appended, no AAD), `iv` 12
    /// bytes; both standard base64.
    pub(crate) async fn unwrap_kbs_layer_key(
        &self,
        packet: &AnnotationPacket,
    ) -> Result<Zeroizing<Vec<u8>>> {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        if packet.wrap_type != WRAP_TYPE_AES_GCM {
            return Err(Error::Invalid(format!(
                "wrap_type {:?}: KBS-wrapped layers are supported with A256GCM",
                packet.wrap_type
            )));
        }
        let iv: [u8; 12] = STANDARD
            .decode(&packet.iv)
            .ok()
            .and_then(|iv| iv.try_into().ok())
            .ok_or_else(|| Error::Invalid("iv must be 12 bytes of base64 for A256GCM".into()))?;
        let mut buf = Zeroizing::new(
            STANDARD
                .decode(&packet.wrapped_data)
                .map_err(|_| Error::Invalid("wrapped_data is not base64".into()))?,
        );
        let kek = self.kbs_resource(&packet.kid).await?;
        let key = UnboundKey::new(&AES_256_GCM, &kek).map_err(|_| {
            Error::Kbs(crate::kbs::Error::Jwe(format!(
                "the KBS resource {} is not a 256-bit key",
                packet.kid
            )))
        })?;
        let len = LessSafeKey::new(key)
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
            .map_err(|_| {
                Error::Kbs(crate::kbs::Error::Jwe(
                    "the layer key does not decrypt with the KBS key".into(),
                ))
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbs_key_ids_as_coco_keyprovider_writes_them() {
        assert!(is_kbs_key_id("kbs:///default/image-kek/1"));
        assert!(is_kbs_key_id("kbs://kbs.example:8080/default/image-kek/1"));
        assert!(is_kbs_key_id("/default/image-kek/0b1f-4c"));
        assert!(!is_kbs_key_id("my-hsm-key"));
        assert!(!is_kbs_key_id("https://kms.example/keys/k"));
        assert!(!is_kbs_key_id("kbs:///default/key"));
    }
}
