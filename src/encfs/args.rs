//! `EncfsSideCarArgs`: the configuration of Microsoft's `encfs` sidecar, accepted as is.
//!
//! Upstream (`cmd/remotefs/main.go`, `pkg/common/keyblob.go`, `pkg/common/akv.go` in
//! microsoft/confidential-sidecar-containers) reads base64 of
//! `{"azure_info":{"identity":{"client_id"},"certcache":{…}},"azure_filesystems":[{"azure_url",
//! "azure_url_private","mount_point","read_write","key":{"kid","kty","authority":{"endpoint"},
//! "akv":{"endpoint","bearer_token"}},"key_derivation":{"salt","label"}}]}`. Its own code decodes
//! standard base64 while its test encodes URL-safe, so both alphabets are accepted, padded or not.
//!
//! Everything is checked here, once, with errors that name the filesystem and say what to fix,
//! instead of upstream's silent coercions (a wrong `kty` there becomes an empty key file). The
//! mount point's relation to the file system (it must not exist, its parent must) is the mount
//! side's check; here it must only be absolute and unique.
//!
//! The arguments hold secrets: an inline `bearer_token`, and a SAS signature in a blob URL's
//! query. `Debug` shows neither, and [`AzureFilesystem::describe`] names a filesystem without
//! its query.

use crate::kbs::resource::ResourceUri;
use crate::snp::chain::{CertCacheArgs, IdentityArgs};
use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

/// The HKDF `info` when `key_derivation.label` is absent (upstream `releaseRemoteFilesystemKey`).
pub const DEFAULT_LABEL: &str = "Symmetric Encryption Key";

/// Largest decoded configuration accepted: a few filesystems take a few KiB.
const MAX_ARGS_LEN: usize = 1 << 20;

/// A configuration that cannot be used, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("EncfsSideCarArgs is not base64 (standard or URL-safe, padded or not)")]
    Base64,
    #[error("EncfsSideCarArgs is {0} bytes decoded, more than the 1 MiB accepted")]
    TooLarge(usize),
    #[error("EncfsSideCarArgs is not the encfs JSON: {0}")]
    Json(String),
    #[error("EncfsSideCarArgs lists no filesystem: add one to \"azure_filesystems\"")]
    NoFilesystem,
    #[error("{fs}: {problem}")]
    Filesystem { fs: String, problem: String },
}

/// The decoded, checked configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct EncfsSideCarArgs {
    #[serde(default)]
    pub azure_info: AzureInfo,
    #[serde(default)]
    pub azure_filesystems: Vec<AzureFilesystem>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AzureInfo {
    #[serde(default)]
    pub identity: Option<IdentityArgs>,
    #[serde(default)]
    pub certcache: Option<CertCacheArgs>,
}

/// One encrypted filesystem image and where to mount it.
#[derive(Clone, Deserialize)]
pub struct AzureFilesystem {
    #[serde(default)]
    azure_url: String,
    /// Whether reaching the blob needs a bearer token (upstream: a managed-identity token).
    #[serde(default)]
    pub azure_url_private: bool,
    #[serde(default)]
    pub mount_point: String,
    #[serde(default)]
    pub read_write: bool,
    #[serde(default)]
    pub key: KeyBlob,
    #[serde(default)]
    pub key_derivation: KeyDerivation,
}

/// `key`: which key to release (`pkg/common/keyblob.go` `KeyBlob`).
#[derive(Clone, Default, Deserialize)]
pub struct KeyBlob {
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub kty: String,
    #[serde(default)]
    pub authority: Authority,
    #[serde(default)]
    pub akv: Akv,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Authority {
    #[serde(default)]
    pub endpoint: String,
}

/// `key.akv`: the Key Vault or Managed HSM holding the key.
#[derive(Clone, Default, Deserialize)]
pub struct Akv {
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub api_version: String,
    /// A KMS access token inline, as upstream's contract allows (a token file is the better way).
    #[serde(default)]
    pub bearer_token: Option<BearerToken>,
}

/// An access token from the configuration: zeroized on drop, never printed.
#[derive(Clone)]
pub struct BearerToken(Zeroizing<String>);

impl BearerToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for BearerToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|token| BearerToken(Zeroizing::new(token)))
    }
}

/// `key_derivation`: the public HKDF inputs for an RSA key (`pkg/common/keyblob.go`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct KeyDerivation {
    /// Hex; absent or empty means an empty salt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Absent or empty means [`DEFAULT_LABEL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl KeyDerivation {
    /// A new random 32-byte salt and `label` ([`DEFAULT_LABEL`] when absent), for a new RSA image:
    /// the salt goes into the image's entry, never into the (untrusted) image.
    pub fn random(label: Option<String>) -> Result<Self, String> {
        let mut salt = [0u8; 32];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no randomness for the salt".to_owned())?;
        Ok(KeyDerivation {
            salt: Some(hex::encode(salt)),
            label: Some(label.unwrap_or_else(|| DEFAULT_LABEL.into())),
        })
    }
}

/// The family of the released key, which decides how it becomes a passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `oct` / `oct-HSM`: the 32 key bytes are the passphrase.
    Oct,
    /// `RSA` / `RSA-HSM`: HKDF-SHA256 of the private exponent.
    Rsa,
}

impl KeyKind {
    /// Key Vault's `kty`, with or without `-HSM`.
    pub fn from_kty(kty: &str) -> Option<Self> {
        match kty {
            "oct" | "oct-HSM" => Some(KeyKind::Oct),
            "RSA" | "RSA-HSM" => Some(KeyKind::Rsa),
            _ => None,
        }
    }
}

/// Where a filesystem's passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Secure key release from Key Vault / Managed HSM.
    Azure {
        /// The key's name (or URL) as upstream's `kid`.
        kid: String,
        kind: KeyKind,
        /// `key.akv.endpoint`.
        akv_endpoint: String,
        /// `key.authority.endpoint` (the MAA); empty means aasp's configured default.
        maa_endpoint: String,
    },
    /// A Trustee KBS resource (`kid` = `kbs:///repo/type/tag`): the passphrase is its bytes.
    Kbs(ResourceUri),
}

impl EncfsSideCarArgs {
    /// Decodes and checks `EncfsSideCarArgs` (base64 of the JSON).
    pub fn parse(base64_text: &str) -> Result<Self, ArgsError> {
        let json = Zeroizing::new(decode_base64(base64_text)?);
        if json.len() > MAX_ARGS_LEN {
            return Err(ArgsError::TooLarge(json.len()));
        }
        Self::from_json(&json)
    }

    /// Checks the JSON itself (already decoded).
    pub fn from_json(json: &[u8]) -> Result<Self, ArgsError> {
        // serde_json's message names a line and column, never the value.
        let args: EncfsSideCarArgs =
            serde_json::from_slice(json).map_err(|e| ArgsError::Json(e.to_string()))?;
        args.validate()?;
        Ok(args)
    }

    fn validate(&self) -> Result<(), ArgsError> {
        if self.azure_filesystems.is_empty() {
            return Err(ArgsError::NoFilesystem);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, fs) in self.azure_filesystems.iter().enumerate() {
            fs.validate(index)?;
            if !seen.insert(fs.mount_point.trim_end_matches('/')) {
                return Err(ArgsError::Filesystem {
                    fs: fs.describe(index),
                    problem: "another filesystem has the same mount_point: give each its own"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

/// Standard or URL-safe base64, padded or not; surrounding white space is ignored.
fn decode_base64(text: &str) -> Result<Vec<u8>, ArgsError> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let trimmed = text.trim();
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    standard
        .decode(trimmed)
        .or_else(|_| url_safe.decode(trimmed))
        .map_err(|_| ArgsError::Base64)
}

impl AzureFilesystem {
    /// The blob URL, query included (it may hold a SAS: never log it; see [`Self::describe`]).
    pub fn azure_url(&self) -> &str {
        &self.azure_url
    }

    /// The blob URL without its query and fragment, safe to log.
    pub fn url_for_logs(&self) -> &str {
        self.azure_url.split(['?', '#']).next().unwrap_or_default()
    }

    /// "filesystem 0 (/mnt/remote/share, https://…/blob)": how errors and logs name it.
    pub fn describe(&self, index: usize) -> String {
        format!(
            "filesystem {index} ({}, {})",
            crate::echo::echo(&self.mount_point),
            crate::echo::echo(self.url_for_logs())
        )
    }

    /// Where the passphrase comes from, with the `kid`/`kty` rules applied.
    pub fn key_source(&self) -> Result<KeySource, String> {
        let kid = self.key.kid.trim();
        if kid.is_empty() {
            return Err(
                "key.kid is empty: name the Key Vault key (or a kbs:///repo/type/tag \
                        resource)"
                    .into(),
            );
        }
        if kid.starts_with("kbs://") {
            // For a KBS resource, kty and akv do not apply (the authority part, as elsewhere in
            // aasp, is ignored: the KBS is aasp's configured one).
            return ResourceUri::parse(kid).map(KeySource::Kbs).map_err(|e| {
                format!("key.kid: {e}; a KBS key is written kbs:///<repository>/<type>/<tag>")
            });
        }
        let kind = KeyKind::from_kty(&self.key.kty).ok_or_else(|| {
            format!(
                "key.kty {:?} is not a key type encfs can use: write \"oct-HSM\" (a 32-byte \
                 symmetric key) or \"RSA-HSM\" (an RSA key, with key_derivation)",
                crate::echo::echo(&self.key.kty)
            )
        })?;
        if self.key.akv.endpoint.trim().is_empty() {
            return Err("key.akv.endpoint is empty: give the Key Vault or Managed HSM host".into());
        }
        Ok(KeySource::Azure {
            kid: kid.to_owned(),
            kind,
            akv_endpoint: self.key.akv.endpoint.trim().to_owned(),
            maa_endpoint: self.key.authority.endpoint.trim().to_owned(),
        })
    }

    fn validate(&self, index: usize) -> Result<(), ArgsError> {
        let problem = |problem: String| ArgsError::Filesystem {
            fs: self.describe(index),
            problem,
        };
        if self.azure_url.trim().is_empty() {
            return Err(problem(
                "azure_url is empty: set it to the image's blob URL (`aasp encfs upload` prints \
                 it)"
                .into(),
            ));
        }
        let url = url::Url::parse(self.azure_url.trim()).map_err(|e| {
            problem(format!(
                "azure_url is not a URL ({e}): write https://<account>.blob.core.windows.net/\
                 <container>/<blob>"
            ))
        })?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(problem(format!(
                "azure_url scheme {:?}: use https (or http for a local emulator)",
                url.scheme()
            )));
        }
        if !self.mount_point.starts_with('/') || self.mount_point.trim_end_matches('/').is_empty() {
            return Err(problem(
                "mount_point must be an absolute path below an existing directory, e.g. \
                 /mnt/remote/share"
                    .into(),
            ));
        }
        let source = self.key_source().map_err(problem)?;
        if let KeySource::Azure {
            kind: KeyKind::Rsa, ..
        } = source
        {
            if let Some(salt) = self.key_derivation.salt.as_deref() {
                hex::decode(salt.trim()).map_err(|_| {
                    problem(
                        "key_derivation.salt is not hex: copy the salt `aasp encfs create` wrote \
                         to IMAGE.encfs.json (or importkey printed)"
                            .into(),
                    )
                })?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for AzureFilesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureFilesystem")
            .field("azure_url", &self.url_for_logs())
            .field("azure_url_private", &self.azure_url_private)
            .field("mount_point", &self.mount_point)
            .field("read_write", &self.read_write)
            .field("key", &self.key)
            .field("key_derivation", &self.key_derivation)
            .finish()
    }
}

impl std::fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBlob")
            .field("kid", &self.kid)
            .field("kty", &self.kty)
            .field("authority", &self.authority)
            .field("akv", &self.akv)
            .finish()
    }
}

impl std::fmt::Debug for Akv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Akv")
            .field("endpoint", &self.endpoint)
            .field("api_version", &self.api_version)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    fn one(fs: serde_json::Value) -> String {
        serde_json::json!({
            "azure_info": {"identity": {"client_id": "c"}},
            "azure_filesystems": [fs]
        })
        .to_string()
    }

    fn fs(kid: &str, kty: &str) -> serde_json::Value {
        serde_json::json!({
            "mount_point": "/mnt/remote/share",
            "azure_url": "https://acct.blob.core.windows.net/c/image.img?sv=1&sig=SECRETSIG",
            "azure_url_private": false,
            "read_write": true,
            "key": {
                "kid": kid, "kty": kty,
                "authority": {"endpoint": "sharedeus2.eus2.attest.azure.net"},
                "akv": {"endpoint": "vault.managedhsm.azure.net", "bearer_token": "SECRETTOKEN"}
            },
            "key_derivation": {"salt": "00aa", "label": "l"}
        })
    }

    #[test]
    fn accepts_every_base64_form() {
        // The JSON is chosen so its base64 has '+', '/' (or '-', '_') and padding.
        let json = one(fs("key??>>", "RSA-HSM"));
        for encoded in [
            STANDARD.encode(&json),
            STANDARD.encode(&json).trim_end_matches('=').to_owned(),
            base64::engine::general_purpose::URL_SAFE.encode(&json),
            URL_SAFE_NO_PAD.encode(&json),
            format!("  {}\n", STANDARD.encode(&json)),
        ] {
            let args = EncfsSideCarArgs::parse(&encoded).unwrap();
            let fs = &args.azure_filesystems[0];
            assert_eq!(fs.mount_point, "/mnt/remote/share");
            assert!(fs.read_write);
            assert_eq!(
                fs.key_source().unwrap(),
                KeySource::Azure {
                    kid: "key??>>".into(),
                    kind: KeyKind::Rsa,
                    akv_endpoint: "vault.managedhsm.azure.net".into(),
                    maa_endpoint: "sharedeus2.eus2.attest.azure.net".into(),
                }
            );
            assert_eq!(fs.key_derivation.salt.as_deref(), Some("00aa"));
        }
        assert!(matches!(
            EncfsSideCarArgs::parse("not base64 at all!"),
            Err(ArgsError::Base64)
        ));
    }

    #[test]
    fn debug_and_describe_hide_secrets() {
        let args = EncfsSideCarArgs::from_json(one(fs("k", "oct-HSM")).as_bytes()).unwrap();
        let debug = format!("{args:?}");
        assert!(!debug.contains("SECRETSIG"), "{debug}");
        assert!(!debug.contains("SECRETTOKEN"), "{debug}");
        assert!(debug.contains("<redacted>"));
        let described = args.azure_filesystems[0].describe(0);
        assert_eq!(
            described,
            "filesystem 0 (/mnt/remote/share, https://acct.blob.core.windows.net/c/image.img)"
        );
    }

    #[test]
    fn kbs_kid_ignores_kty_and_akv() {
        let mut value = fs("kbs:///default/encfs/share", "nonsense");
        value["key"]["akv"] = serde_json::json!({});
        let args = EncfsSideCarArgs::from_json(one(value).as_bytes()).unwrap();
        let KeySource::Kbs(uri) = args.azure_filesystems[0].key_source().unwrap() else {
            panic!("not a KBS source");
        };
        assert_eq!(uri.to_string(), "kbs:///default/encfs/share");
        let bad = EncfsSideCarArgs::from_json(one(fs("kbs:///default/encfs", "oct")).as_bytes())
            .unwrap_err()
            .to_string();
        assert!(bad.contains("kbs:///<repository>/<type>/<tag>"), "{bad}");
    }

    #[test]
    fn errors_name_the_filesystem_and_the_fix() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (fs("k", "EC-HSM"), "\"oct-HSM\""),
            (fs("", "oct-HSM"), "key.kid is empty"),
            (
                {
                    let mut v = fs("k", "oct-HSM");
                    v["azure_url"] = "".into();
                    v
                },
                "azure_url is empty",
            ),
            (
                {
                    let mut v = fs("k", "oct-HSM");
                    v["mount_point"] = "relative/dir".into();
                    v
                },
                "absolute path",
            ),
            (
                {
                    let mut v = fs("k", "RSA-HSM");
                    v["key_derivation"]["salt"] = "xyz".into();
                    v
                },
                "salt is not hex",
            ),
            (
                {
                    let mut v = fs("k", "oct-HSM");
                    v["key"]["akv"]["endpoint"] = "".into();
                    v
                },
                "akv.endpoint is empty",
            ),
        ];
        for (value, expected) in cases {
            let message = EncfsSideCarArgs::from_json(one(value).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("filesystem 0 ("), "{message}");
            assert!(message.contains(expected), "{expected:?} not in {message}");
            assert!(!message.contains("SECRET"), "{message}");
        }
        let twice = serde_json::json!({"azure_filesystems": [fs("a", "oct"), fs("b", "oct")]});
        let message = EncfsSideCarArgs::from_json(twice.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(message.contains("same mount_point"), "{message}");
        assert!(matches!(
            EncfsSideCarArgs::from_json(br#"{"azure_filesystems": []}"#),
            Err(ArgsError::NoFilesystem)
        ));
    }
}
