//! The Trustee KBS backend of the secret flow: a KBS client whose evidence is this TEE's CoCo
//! SNP evidence (the same attester and chain source as the Azure flow), tokens for
//! `GetToken("kbs")`, and resources by `kbs:///` URI.

use super::{coco_evidence_of, Error, Provisioner, Result};
use crate::kbs::config::KbsSettings;
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
    /// for a pinned certificate).
    pub fn with_kbs(mut self, settings: &KbsSettings, http: reqwest::Client) -> Result<Self> {
        let evidence = Arc::new(TeeEvidence {
            attester: Arc::clone(&self.attester),
            chains: Arc::clone(&self.chains),
        });
        let client = KbsClient::new(
            http,
            KbsOptions {
                url: settings.url.clone(),
                key_algorithm: settings.key_algorithm,
                retry: self.retry,
            },
            evidence,
        )?;
        self.kbs = Some(Arc::new(client));
        Ok(self)
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

    /// Upstream AA's `GetToken("kbs")` reply: `{"token": <JWT>, "tee_keypair": <PEM>}`.
    pub async fn kbs_token(&self) -> Result<KbsTokenReply> {
        let session = self.kbs()?.session().await?;
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
