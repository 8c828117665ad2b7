//! The secret flow: attest → MAA token → access token → secure key release → unwrap.
//!
//! `release(kms, key, maa)`: the transfer key's JWK set is the runtime data; the report binds its
//! SHA-256; the report and its chain go to MAA; the token and an access token go to the KMS; the
//! signed response is verified and the key unwrapped inside the TEE. Released keys and MAA tokens
//! are cached (TTL configurable, zero turns caching off) and concurrent callers for the same key
//! share one flight. A failure is never cached.
//!
//! Owns the flow, its caches and single-flight. Must not know transports (gRPC, REST).

pub mod layer;

use crate::azure::ckm::{TransferKey, WrapAlgorithm};
use crate::azure::identity::{resource_for_host, IdentityProvider};
use crate::azure::jwk::Jwk;
use crate::azure::kms::{KeyUrl, KmsClient};
use crate::azure::maa::{MaaClient, MaaToken};
use crate::azure::policy::normalize_authority;
use crate::azure::Secret;
use crate::http::RetryPolicy;
use crate::snp::attester::{fetch_report, Attester};
use crate::snp::chain::{attest, ChainCache};
use crate::snp::evidence::Evidence;
use crate::snp::report::report_data_for_runtime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Snp(#[from] crate::snp::Error),
    #[error(transparent)]
    Azure(#[from] crate::azure::Error),
    /// The caller's request cannot be acted on (malformed packet, unknown key reference).
    #[error("{0}")]
    Invalid(String),
    /// This process has no transfer key to release keys to.
    #[error("no transfer key: {0}")]
    NoTransferKey(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A key released into the TEE. Its JWK zeroizes on drop and prints redacted.
pub struct ReleasedKey {
    pub key: KeyUrl,
    pub jwk: Jwk,
    /// The RSA private key, parsed on first use: PKCS#8 parsing with its key checks costs about
    /// a millisecond for RSA-3072, more than the decrypt itself.
    rsa: std::sync::OnceLock<aws_lc_rs::rsa::OaepPrivateDecryptingKey>,
}

impl std::fmt::Debug for ReleasedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasedKey")
            .field("key", &self.key)
            .field("jwk", &self.jwk)
            .finish()
    }
}

impl ReleasedKey {
    pub fn new(key: KeyUrl, jwk: Jwk) -> Self {
        ReleasedKey {
            key,
            jwk,
            rsa: std::sync::OnceLock::new(),
        }
    }

    /// The released RSA key ready for OAEP decryption.
    pub fn rsa_private(&self) -> Result<&aws_lc_rs::rsa::OaepPrivateDecryptingKey> {
        if let Some(key) = self.rsa.get() {
            return Ok(key);
        }
        let unusable = || Error::Invalid("the released RSA key is not usable".into());
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&self.jwk.to_pkcs8()?)
            .map_err(|_| unusable())?;
        let oaep =
            aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(private).map_err(|_| unusable())?;
        // A concurrent first use may have parsed it too; either copy serves.
        let _ = self.rsa.set(oaep);
        self.rsa.get().ok_or_else(unusable)
    }
}

/// Counters of upstream work, for metrics and for tests that count flights.
#[derive(Debug, Default)]
pub struct Counters {
    pub maa_calls: AtomicU64,
    pub release_calls: AtomicU64,
    pub cache_hits: AtomicU64,
}

#[derive(Clone)]
enum TransferKeyState {
    Generating,
    Ready(Arc<TransferKey>),
    Failed(String),
}

type Slot<T> = Arc<Mutex<Option<(T, Instant)>>>;
type Slots<K, T> = std::sync::Mutex<HashMap<K, Slot<T>>>;

pub struct Provisioner {
    attester: Arc<dyn Attester>,
    chains: Arc<ChainCache>,
    identity: Arc<IdentityProvider>,
    kms: Arc<KmsClient>,
    http: reqwest::Client,
    retry: RetryPolicy,
    /// Generated in the background from start-up and replaced by `rotate_transfer_key`; each
    /// release uses one snapshot for both its token and its unwrap.
    transfer_key: Arc<tokio::sync::watch::Sender<TransferKeyState>>,
    ttl: Duration,
    keys: Slots<(KeyUrl, String), Arc<ReleasedKey>>,
    tokens: Slots<String, MaaToken>,
    pub counters: Counters,
}

pub struct ProvisionerParts {
    pub attester: Arc<dyn Attester>,
    pub chains: Arc<ChainCache>,
    pub identity: Arc<IdentityProvider>,
    pub kms: Arc<KmsClient>,
    pub http: reqwest::Client,
    pub retry: RetryPolicy,
    pub cache_ttl: Duration,
}

impl Provisioner {
    /// Starts generating the transfer key on its own thread: RSA key generation takes tens to
    /// hundreds of milliseconds, which start-up (health SERVING) should not wait for. It is
    /// ready long before the first release in practice; a release that comes sooner waits.
    pub fn new(parts: ProvisionerParts) -> Result<Self> {
        let transfer_key = Arc::new(tokio::sync::watch::Sender::new(
            TransferKeyState::Generating,
        ));
        let generated = Arc::clone(&transfer_key);
        std::thread::Builder::new()
            .name("transfer-key".into())
            .spawn(move || {
                generated.send_replace(match TransferKey::generate() {
                    Ok(key) => TransferKeyState::Ready(Arc::new(key)),
                    Err(e) => TransferKeyState::Failed(e.to_string()),
                });
            })
            .map_err(|e| Error::NoTransferKey(format!("cannot start its thread: {e}")))?;
        Ok(Provisioner {
            attester: parts.attester,
            chains: parts.chains,
            identity: parts.identity,
            kms: parts.kms,
            http: parts.http,
            retry: parts.retry,
            transfer_key,
            ttl: parts.cache_ttl,
            keys: std::sync::Mutex::new(HashMap::new()),
            tokens: std::sync::Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    pub fn attester(&self) -> &Arc<dyn Attester> {
        &self.attester
    }

    pub fn chains(&self) -> &Arc<ChainCache> {
        &self.chains
    }

    pub fn maa(&self, endpoint: &str) -> MaaClient {
        MaaClient::new(self.http.clone(), endpoint, self.retry)
    }

    /// Evidence binding `runtime_data`: the report (report_data = SHA-256(runtime_data)) and its
    /// chain, with the TCB refresh rule applied.
    pub async fn evidence(&self, runtime_data: &[u8]) -> Result<Evidence> {
        let attested = attest(
            &self.attester,
            &self.chains,
            report_data_for_runtime(runtime_data),
        )
        .await?;
        Ok(Evidence {
            report: attested.raw,
            cert_chain_pem: attested.endorsement.chain.to_pem(),
            uvm_endorsements: attested.endorsement.uvm_reference_info.clone(),
        })
    }

    /// Confidential Containers SNP evidence (JSON) for a report binding `report_data` as given:
    /// `{"attestation_report": .., "cert_chain": [..] | null}`, the shape Trustee's verifier and
    /// the upstream attestation agent use. The chain comes from the configured source with the
    /// TCB refresh rule; when the source cannot be reached the chain is `null`, as upstream sends
    /// when the host supplies no certificates (the verifier then fetches the VCEK itself).
    pub async fn coco_evidence(&self, report_data: [u8; 64]) -> Result<Vec<u8>> {
        use crate::snp::evidence::coco_evidence_json;
        match attest(&self.attester, &self.chains, report_data).await {
            Ok(attested) => Ok(coco_evidence_json(
                &attested.raw,
                Some(&attested.endorsement.chain),
            )?),
            Err(crate::snp::Error::ChainSource {
                source_name,
                reason,
            }) => {
                tracing::warn!(
                    source = %source_name,
                    %reason,
                    "no certificate chain for the CoCo evidence; sending cert_chain null"
                );
                let (_, raw) = fetch_report(&self.attester, report_data).await?;
                Ok(coco_evidence_json(&raw, None)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An MAA token for `runtime_data` (not cached: each caller's data differs).
    pub async fn token_for(&self, maa_endpoint: &str, runtime_data: &[u8]) -> Result<MaaToken> {
        // MAA takes it as dataType JSON and answers anything else with a 400 that cannot be told
        // apart from a refused report; the caller's mistake is named here instead.
        serde_json::from_slice::<serde::de::IgnoredAny>(runtime_data).map_err(|e| {
            Error::Invalid(format!(
                "runtime data must be a JSON document (MAA binds it as JSON): {e}"
            ))
        })?;
        let evidence = self.evidence(runtime_data).await?;
        self.counters.maa_calls.fetch_add(1, Ordering::Relaxed);
        let maa = self.maa(maa_endpoint);
        let token = maa.attest(&evidence, runtime_data).await?;
        // A token another issuer signed is not used: something other than the MAA asked answered.
        let claims = token.unverified_claims()?;
        let issuer = claims
            .get("iss")
            .and_then(|i| i.as_str())
            .unwrap_or_default();
        if normalize_authority(issuer) != normalize_authority(maa.authority()) {
            return Err(Error::Azure(crate::azure::Error::Jws(format!(
                "the MAA token was issued by {issuer:?}, not by the configured authority {}",
                maa.authority()
            ))));
        }
        Ok(token)
    }

    /// The current transfer key, once generated.
    pub async fn transfer_key_ready(&self) -> Result<Arc<TransferKey>> {
        let mut state = self.transfer_key.subscribe();
        let settled = state
            .wait_for(|s| !matches!(s, TransferKeyState::Generating))
            .await
            .map(|s| s.clone());
        match settled {
            Ok(TransferKeyState::Ready(key)) => Ok(key),
            Ok(TransferKeyState::Failed(e)) => Err(Error::NoTransferKey(e)),
            Ok(TransferKeyState::Generating) | Err(_) => {
                Err(Error::NoTransferKey("its generation stopped".into()))
            }
        }
    }

    /// Replaces the transfer key with a freshly generated one (slow: call it off the request
    /// path, as `spawn_transfer_key_rotation` does). Tokens bound to the old key are not reused.
    pub fn rotate_transfer_key(&self) -> Result<()> {
        let fresh = Arc::new(TransferKey::generate()?);
        self.transfer_key
            .send_replace(TransferKeyState::Ready(fresh));
        Ok(())
    }

    /// Rotates the transfer key every `every`, generating the new key on the blocking pool.
    pub fn spawn_transfer_key_rotation(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(provisioner) = this.upgrade() else {
                    return;
                };
                match tokio::task::spawn_blocking(move || provisioner.rotate_transfer_key()).await {
                    Ok(Ok(())) => tracing::info!("transfer key rotated"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "transfer key rotation failed; keeping the old key")
                    }
                    Err(e) => tracing::warn!(error = %e, "transfer key rotation task failed"),
                }
            }
        })
    }

    /// The release token: runtime data = the transfer key's JWK set. Cached per MAA and transfer
    /// key until shortly before it expires (and at most the TTL).
    async fn release_token(
        &self,
        maa_endpoint: &str,
        transfer_key: &TransferKey,
    ) -> Result<MaaToken> {
        let kid = transfer_key.public_jwk().kid.clone().unwrap_or_default();
        let slot = slot(&self.tokens, format!("{maa_endpoint} {kid}"));
        let mut guard = slot.lock().await;
        if let Some((token, at)) = guard.as_ref() {
            if self.fresh(*at) && token.expires_at > unix_now() + 60 {
                return Ok(token.clone());
            }
        }
        let token = self
            .token_for(maa_endpoint, &transfer_key.runtime_data())
            .await?;
        if !self.ttl.is_zero() {
            *guard = Some((token.clone(), Instant::now()));
        }
        Ok(token)
    }

    /// Secure key release of `key`, attested by `maa_endpoint`.
    pub async fn release(&self, key: &KeyUrl, maa_endpoint: &str) -> Result<Arc<ReleasedKey>> {
        let slot = slot(&self.keys, (key.clone(), maa_endpoint.to_owned()));
        // Holding the per-key lock across the flight is the single flight: later callers wait
        // here and then find the result in the slot.
        let mut guard = slot.lock().await;
        if let Some((released, at)) = guard.as_ref() {
            if self.fresh(*at) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                crate::metrics::record_cache(true);
                return Ok(Arc::clone(released));
            }
        }
        crate::metrics::record_cache(false);
        let jwk = self
            .release_uncached(key, maa_endpoint, None)
            .instrument(tracing::info_span!("release", key = %key, maa = maa_endpoint))
            .await?;
        let released = Arc::new(ReleasedKey::new(key.clone(), jwk));
        if !self.ttl.is_zero() {
            *guard = Some((Arc::clone(&released), Instant::now()));
        }
        Ok(released)
    }

    /// A release authorized by the caller's own access token. Not cached or shared: another
    /// caller's token must not stand in for this one's.
    pub async fn release_with_access(
        &self,
        key: &KeyUrl,
        maa_endpoint: &str,
        access: &Secret,
    ) -> Result<Arc<ReleasedKey>> {
        let jwk = self
            .release_uncached(key, maa_endpoint, Some(access))
            .instrument(tracing::info_span!("release", key = %key, maa = maa_endpoint))
            .await?;
        Ok(Arc::new(ReleasedKey::new(key.clone(), jwk)))
    }

    async fn release_uncached(
        &self,
        key: &KeyUrl,
        maa_endpoint: &str,
        access: Option<&Secret>,
    ) -> Result<Jwk> {
        let transfer_key = self
            .transfer_key_ready()
            .instrument(tracing::debug_span!("transfer_key"))
            .await?;
        let token = self.release_token(maa_endpoint, &transfer_key).await?;
        let access = match access {
            Some(given) => given.clone(),
            None => self.identity.token(resource_for_host(key.host())).await?,
        };
        self.counters.release_calls.fetch_add(1, Ordering::Relaxed);
        let wrap = WrapAlgorithm::CkmRsaAesKeyWrap;
        Ok(self
            .kms
            .release(key, &token.jwt, &access, &transfer_key, wrap)
            .await?)
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.ttl
    }
}

fn slot<K: std::hash::Hash + Eq, T>(
    map: &std::sync::Mutex<HashMap<K, Slot<T>>>,
    key: K,
) -> Slot<T> {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(map.entry(key).or_insert_with(|| Arc::new(Mutex::new(None))))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
