//! Where the KBS is, read as upstream's attestation agent reads it
//! (guest-components `attestation-agent/src/config/{kbs,aa_kbc_params}.rs`): the AA config
//! TOML's `[token_configs.kbs]` (`url`, `cert` as PEM text, `tee_key_algorithm`), else
//! `AA_KBC_PARAMS`, else `agent.aa_kbc_params=cc_kbc::<url>` on the kernel command line. aasp's
//! own `--kbs-url`/`--kbs-cert` come first, then the `aa.toml` of init-data that matched
//! HOST_DATA (kata-agent writes that file and passes it as `-c`, so the two agree in practice).
//! Never from a request.
//!
//! `AA_KBC_PARAMS` and the kernel command line are the host's choice: a plain `http://` KBS from
//! them is refused unless `AASP_ALLOW_INSECURE_KBS` allows it. The operator's flags, the AA
//! config and the init-data are the operator's and the workload owner's, and may name one.

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
    coco_as: Option<AaCocoAs>,
}

/// `[token_configs.coco_as]` (guest-components `attestation-agent/src/config/coco_as.rs`).
#[derive(Deserialize)]
struct AaCocoAs {
    url: String,
}

/// The Trustee attestation service `GetToken("coco_as")` attests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CocoAsSettings {
    pub url: String,
    /// Where the URL came from, for the log.
    pub source: &'static str,
}

#[derive(Deserialize)]
struct AaKbs {
    url: String,
    cert: Option<String>,
    #[serde(default)]
    tee_key_algorithm: Option<KeyAlgorithm>,
}

fn token_configs(text: &str) -> Result<Option<TokenConfigs>> {
    let config: AaConfig =
        toml::from_str(text).map_err(|e| Error::Config(format!("AA config TOML: {e}")))?;
    Ok(config.token_configs)
}

/// `[token_configs.kbs]` of an AA config TOML, if it has one.
pub fn from_aa_toml(text: &str) -> Result<Option<KbsSettings>> {
    Ok(token_configs(text)?
        .and_then(|t| t.kbs)
        .map(|kbs| KbsSettings {
            url: kbs.url,
            cert: kbs.cert,
            key_algorithm: kbs.tee_key_algorithm.unwrap_or_default(),
            source: "[token_configs.kbs]",
        }))
}

/// The attestation service of `[token_configs.coco_as]`: from the verified init-data's
/// `aa.toml`, else from the AA config (`-c`). Both are the operator's or the workload owner's,
/// so plain http is theirs to choose, as for the KBS.
pub fn resolve_coco_as(
    initdata_aa_toml: Option<&str>,
    aa_toml: Option<&str>,
) -> Result<Option<CocoAsSettings>> {
    for (text, source) in [
        (
            initdata_aa_toml,
            "init-data aa.toml [token_configs.coco_as]",
        ),
        (aa_toml, "[token_configs.coco_as]"),
    ] {
        let Some(text) = text else { continue };
        if let Some(coco_as) = token_configs(text)?.and_then(|t| t.coco_as) {
            let url = coco_as.url.trim().to_owned();
            check_url(&url, source, false)?;
            return Ok(Some(CocoAsSettings { url, source }));
        }
    }
    Ok(None)
}

/// Refuses a URL that is not http(s), and plain http from a host-chosen source unless allowed.
fn check_url(url: &str, source: &str, host_chosen_refused: bool) -> Result<()> {
    let parsed =
        url::Url::parse(url).map_err(|e| Error::Config(format!("{source}: URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if !host_chosen_refused => Ok(()),
        "http" => Err(Error::Config(format!(
            "the KBS URL {url:?} comes from {source}, which the host chooses, and is plain http: \
             refused, since a host-chosen KBS must be authenticated by TLS. Use https, name the KBS \
             with --kbs-url/AASP_KBS_URL, -c or the init-data's aa.toml, or set \
             {}=1 to accept it",
            crate::env::AASP_ALLOW_INSECURE_KBS
        ))),
        other => Err(Error::Config(format!(
            "{source}: URL {url:?} has scheme {other:?}; expected https:// (or http://)"
        ))),
    }
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

/// Where [`resolve`] looks for the KBS, highest first after the flags.
#[derive(Debug, Default, Clone, Copy)]
pub struct KbsSources<'a> {
    /// `aa.toml` of init-data whose digest matched HOST_DATA.
    pub initdata_aa_toml: Option<&'a str>,
    /// The AA config TOML (`-c`, `--aa-config`).
    pub aa_toml: Option<&'a str>,
    /// The `AA_KBC_PARAMS` value, if set.
    pub aa_kbc_params: Option<&'a str>,
    /// The kernel command line.
    pub cmdline: Option<&'a str>,
    /// `AASP_ALLOW_INSECURE_KBS`: accept plain http from the host-chosen sources.
    pub allow_insecure: bool,
}

/// Resolves the KBS: aasp's own settings (`flag_url`, `flag_cert`) first, then the verified
/// init-data's `aa.toml`, then upstream's order (AA config, `AA_KBC_PARAMS`, kernel command
/// line).
pub fn resolve(
    flag_url: Option<&str>,
    flag_cert: Option<String>,
    key_algorithm: KeyAlgorithm,
    sources: &KbsSources<'_>,
) -> Result<Option<KbsSettings>> {
    if let Some(url) = flag_url.filter(|u| !u.trim().is_empty()) {
        return Ok(Some(KbsSettings {
            url: url.trim().to_owned(),
            cert: flag_cert,
            key_algorithm,
            source: "--kbs-url",
        }));
    }
    for (text, source) in [
        (
            sources.initdata_aa_toml,
            "init-data aa.toml [token_configs.kbs]",
        ),
        (sources.aa_toml, "[token_configs.kbs]"),
    ] {
        if let Some(mut settings) = text.map(from_aa_toml).transpose()?.flatten() {
            settings.source = source;
            if flag_cert.is_some() {
                settings.cert = flag_cert;
            }
            return Ok(Some(settings));
        }
    }
    let (params, source) = match sources.aa_kbc_params {
        Some(value) => (Some(value), "AA_KBC_PARAMS"),
        None => (
            sources.cmdline.and_then(kbc_params_in_cmdline),
            "agent.aa_kbc_params (kernel command line)",
        ),
    };
    let Some(url) = params.map(from_kbc_params).transpose()?.flatten() else {
        return Ok(None);
    };
    check_url(&url, source, !sources.allow_insecure)?;
    Ok(Some(KbsSettings {
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
            let sources = KbsSources {
                aa_toml: toml,
                aa_kbc_params: env,
                cmdline,
                ..Default::default()
            };
            resolve(flag, None, alg, &sources)
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
        let quiet = KbsSources {
            cmdline: Some("quiet"),
            ..Default::default()
        };
        assert_eq!(resolve(None, None, alg, &quiet).unwrap(), None);
    }

    /// The order issue 25 sets: `--kbs-url` > verified init-data `aa.toml` > `-c` >
    /// `AA_KBC_PARAMS` > `/proc/cmdline`.
    #[test]
    fn initdata_aa_toml_comes_after_the_flag_and_before_the_config() {
        let alg = KeyAlgorithm::default();
        let initdata = "[token_configs.kbs]\nurl = \"http://initdata:1\"\n";
        let sources = KbsSources {
            initdata_aa_toml: Some(initdata),
            aa_toml: Some(TOML),
            aa_kbc_params: Some("cc_kbc::https://env:1"),
            ..Default::default()
        };
        let picked = resolve(None, None, alg, &sources).unwrap().unwrap();
        assert_eq!(picked.url, "http://initdata:1");
        assert_eq!(picked.source, "init-data aa.toml [token_configs.kbs]");
        let flag = resolve(Some("https://flag:1"), None, alg, &sources).unwrap();
        assert_eq!(flag.unwrap().url, "https://flag:1");
        // Init-data without a KBS section leaves the choice to the next source.
        let no_kbs = KbsSources {
            initdata_aa_toml: Some("[token_configs.coco_as]\nurl = \"http://as:1\"\n"),
            ..sources
        };
        let picked = resolve(None, None, alg, &no_kbs).unwrap().unwrap();
        assert_eq!(picked.url, "https://kbs.example:8080");
    }

    /// Issue 25 item 6: plain http from AA_KBC_PARAMS or the kernel command line is refused
    /// unless allowed; the operator's and the workload owner's sources keep working.
    #[test]
    fn host_chosen_http_kbs_is_refused_unless_allowed() {
        let alg = KeyAlgorithm::default();
        let env = KbsSources {
            aa_kbc_params: Some("cc_kbc::http://10.0.0.1:8080"),
            ..Default::default()
        };
        let err = resolve(None, None, alg, &env).unwrap_err().to_string();
        assert!(
            err.contains("AA_KBC_PARAMS") && err.contains("AASP_ALLOW_INSECURE_KBS"),
            "{err}"
        );
        let cmdline = KbsSources {
            cmdline: Some("agent.aa_kbc_params=cc_kbc::http://10.0.0.1:8080"),
            ..Default::default()
        };
        let err = resolve(None, None, alg, &cmdline).unwrap_err().to_string();
        assert!(err.contains("kernel command line"), "{err}");
        for allowed in [
            KbsSources {
                allow_insecure: true,
                ..env
            },
            KbsSources {
                allow_insecure: true,
                ..cmdline
            },
        ] {
            let url = resolve(None, None, alg, &allowed).unwrap().unwrap().url;
            assert_eq!(url, "http://10.0.0.1:8080");
        }
        let https = KbsSources {
            aa_kbc_params: Some("cc_kbc::https://10.0.0.1:8080"),
            ..Default::default()
        };
        assert!(resolve(None, None, alg, &https).unwrap().is_some());
        // The operator's -c, the init-data and --kbs-url may name an http KBS.
        let config = KbsSources {
            aa_toml: Some("[token_configs.kbs]\nurl = \"http://kbs:1\"\n"),
            ..env
        };
        assert_eq!(
            resolve(None, None, alg, &config).unwrap().unwrap().url,
            "http://kbs:1"
        );
        assert!(resolve(Some("http://flag:1"), None, alg, &env).is_ok());
    }

    #[test]
    fn coco_as_from_initdata_then_config() {
        assert_eq!(
            resolve_coco_as(None, Some("[token_configs.kbs]\nurl = \"https://k\"\n")).unwrap(),
            None
        );
        let picked = resolve_coco_as(None, Some(TOML)).unwrap().unwrap();
        assert_eq!(picked.url, "http://as.example:8080");
        let initdata = "[token_configs.coco_as]\nurl = \"https://as.initdata\"\n";
        let picked = resolve_coco_as(Some(initdata), Some(TOML))
            .unwrap()
            .unwrap();
        assert_eq!(picked.url, "https://as.initdata");
        let ftp = "[token_configs.coco_as]\nurl = \"ftp://as\"\n";
        assert!(resolve_coco_as(None, Some(ftp)).is_err());
    }
}
