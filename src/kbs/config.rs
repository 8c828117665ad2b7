//! Where the KBS is, read as upstream's attestation agent reads it
//! (guest-components `attestation-agent/src/config/{kbs,aa_kbc_params}.rs`): the AA config
//! TOML's `[token_configs.kbs]` (`url`, `cert` as PEM text, `tee_key_algorithm`), else
//! `AA_KBC_PARAMS`, else `agent.aa_kbc_params=cc_kbc::<url>` on the kernel command line. aasp's
//! own `--kbs-url`/`--kbs-cert` come first. Never from a request.

use super::jwe::KeyAlgorithm;
use super::{Error, Result};
use serde::Deserialize;

/// The KBS to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsSettings {
    pub url: String,
    /// PEM of the KBS certificate (or its CA) to trust instead of the system roots.
    pub cert: Option<String>,
    pub key_algorithm: KeyAlgorithm,
    /// Where the URL came from, for the log.
    pub source: &'static str,
}

#[derive(Deserialize)]
struct AaConfig {
    #[serde(default)]
    token_configs: Option<TokenConfigs>,
}

#[derive(Deserialize)]
struct TokenConfigs {
    kbs: Option<AaKbs>,
}

#[derive(Deserialize)]
struct AaKbs {
    url: String,
    cert: Option<String>,
    #[serde(default)]
    tee_key_algorithm: Option<KeyAlgorithm>,
}

/// `[token_configs.kbs]` of an AA config TOML, if it has one.
pub fn from_aa_toml(text: &str) -> Result<Option<KbsSettings>> {
    let config: AaConfig =
        toml::from_str(text).map_err(|e| Error::Config(format!("AA config TOML: {e}")))?;
    Ok(config
        .token_configs
        .and_then(|t| t.kbs)
        .map(|kbs| KbsSettings {
            url: kbs.url,
            cert: kbs.cert,
            key_algorithm: kbs.tee_key_algorithm.unwrap_or_default(),
            source: "[token_configs.kbs]",
        }))
}

/// `cc_kbc::<url>` (the value of `agent.aa_kbc_params` / `AA_KBC_PARAMS`): the URL when the KBC
/// is `cc_kbc`, `None` for other KBCs (upstream's `offline_fs_kbc` default has no KBS).
pub fn from_kbc_params(value: &str) -> Result<Option<String>> {
    let parts: Vec<&str> = value.trim().split("::").collect();
    let [kbc, uri] = parts.as_slice() else {
        return Err(Error::Config(format!(
            "illegal aa_kbc_params format {value:?} (expected <kbc>::<uri>)"
        )));
    };
    Ok((*kbc == "cc_kbc" && !uri.is_empty()).then(|| (*uri).to_owned()))
}

/// `agent.aa_kbc_params=` on a kernel command line.
pub fn kbc_params_in_cmdline(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|p| p.strip_prefix("agent.aa_kbc_params="))
}

/// Resolves the KBS in upstream's order, after aasp's own settings (`flag_url`, `flag_cert`).
/// `aa_kbc_params` is the `AA_KBC_PARAMS` value if set; `cmdline` the kernel command line.
pub fn resolve(
    flag_url: Option<&str>,
    flag_cert: Option<String>,
    key_algorithm: KeyAlgorithm,
    aa_toml: Option<&str>,
    aa_kbc_params: Option<&str>,
    cmdline: Option<&str>,
) -> Result<Option<KbsSettings>> {
    if let Some(url) = flag_url.filter(|u| !u.trim().is_empty()) {
        return Ok(Some(KbsSettings {
            url: url.trim().to_owned(),
            cert: flag_cert,
            key_algorithm,
            source: "--kbs-url",
        }));
    }
    if let Some(mut settings) = aa_toml.map(from_aa_toml).transpose()?.flatten() {
        if flag_cert.is_some() {
            settings.cert = flag_cert;
        }
        return Ok(Some(settings));
    }
    let (params, source) = match aa_kbc_params {
        Some(value) => (Some(value), "AA_KBC_PARAMS"),
        None => (
            cmdline.and_then(kbc_params_in_cmdline),
            "agent.aa_kbc_params (kernel command line)",
        ),
    };
    Ok(params
        .map(from_kbc_params)
        .transpose()?
        .flatten()
        .map(|url| KbsSettings {
            url,
            cert: flag_cert,
            key_algorithm,
            source,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[token_configs.coco_as]
url = "http://as.example:8080"

[token_configs.kbs]
url = "https://kbs.example:8080"
cert = """
-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----
"""
tee_key_algorithm = "RSA-OAEP-256"
"#;

    #[test]
    fn reads_the_aa_config_toml() {
        let s = from_aa_toml(TOML).unwrap().unwrap();
        assert_eq!(s.url, "https://kbs.example:8080");
        assert!(s.cert.unwrap().contains("BEGIN CERTIFICATE"));
        assert_eq!(s.key_algorithm, KeyAlgorithm::RsaOaep256);
        assert_eq!(from_aa_toml("[token_configs]\n").unwrap(), None);
        assert!(from_aa_toml("token_configs = 3").is_err());
    }

    #[test]
    fn reads_kbc_params_as_upstream() {
        assert_eq!(
            from_kbc_params("cc_kbc::http://10.0.0.1:8080").unwrap(),
            Some("http://10.0.0.1:8080".into())
        );
        assert_eq!(from_kbc_params("offline_fs_kbc::null").unwrap(), None);
        assert!(from_kbc_params("cc_kbc").is_err());
        let cmdline = "console=ttyS0 agent.aa_kbc_params=cc_kbc::https://kbs:8080 quiet";
        assert_eq!(
            kbc_params_in_cmdline(cmdline),
            Some("cc_kbc::https://kbs:8080")
        );
    }

    #[test]
    fn flags_then_toml_then_env_then_cmdline() {
        let alg = KeyAlgorithm::default();
        let cmdline = Some("agent.aa_kbc_params=cc_kbc::https://cmdline:1");
        let pick = |flag, toml, env| {
            resolve(flag, None, alg, toml, env, cmdline)
                .unwrap()
                .map(|s| (s.url, s.source))
        };
        assert_eq!(
            pick(
                Some("https://flag:1"),
                Some(TOML),
                Some("cc_kbc::https://env:1")
            )
            .unwrap()
            .1,
            "--kbs-url"
        );
        assert_eq!(
            pick(None, Some(TOML), Some("cc_kbc::https://env:1"))
                .unwrap()
                .0,
            "https://kbs.example:8080"
        );
        assert_eq!(
            pick(None, None, Some("cc_kbc::https://env:1")).unwrap().0,
            "https://env:1"
        );
        assert_eq!(pick(None, None, None).unwrap().0, "https://cmdline:1");
        assert_eq!(
            resolve(None, None, alg, None, None, Some("quiet")).unwrap(),
            None
        );
    }
}
