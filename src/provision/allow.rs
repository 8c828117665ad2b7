//! Which hosts aasp sends credentials to. A request (an image annotation, a REST body, a
//! GetResource URI) may name any endpoint; aasp attests, fetches tokens and sends them only to
//! a KMS and an MAA on these lists. By default Azure's own domains; the operator adds hosts with
//! `--allow-kms-host` / `--allow-maa-host` (the configured `--maa-endpoint` is allowed
//! implicitly: it comes from the operator, not from a request).
//!
//! A pattern is an exact host or `*.suffix` (any name under the suffix, not the suffix itself),
//! optionally with `:port`; without a port only https's 443 matches. IP literals match exactly.

use crate::http::Endpoint;

/// Managed HSM and Key Vault (Azure public cloud).
pub const DEFAULT_KMS_HOSTS: [&str; 2] = ["*.managedhsm.azure.net", "*.vault.azure.net"];
/// Microsoft Azure Attestation (Azure public cloud).
pub const DEFAULT_MAA_HOSTS: [&str; 1] = ["*.attest.azure.net"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// `Some(".suffix")` for `*.suffix`, else the exact host.
    suffix: Option<String>,
    host: String,
    port: u16,
    text: String,
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |e: String| format!("host pattern {}: {e}", crate::http::quoted(text));
        let trimmed = text.trim();
        let (wildcard, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if rest.contains('*') {
            return Err(bad("only a leading \"*.\" is a wildcard".into()));
        }
        let endpoint = Endpoint::parse(rest).map_err(|e| bad(e.to_string()))?;
        if wildcard && endpoint.host().starts_with('[') {
            return Err(bad("a wildcard needs a DNS suffix".into()));
        }
        Ok(HostPattern {
            suffix: wildcard.then(|| format!(".{}", endpoint.host())),
            host: endpoint.host().to_owned(),
            port: endpoint.port(),
            text: trimmed.to_owned(),
        })
    }

    /// The pattern allowing exactly this endpoint.
    pub fn exact(endpoint: &Endpoint) -> Self {
        HostPattern {
            suffix: None,
            host: endpoint.host().to_owned(),
            port: endpoint.port(),
            text: endpoint.authority(),
        }
    }

    pub fn matches(&self, endpoint: &Endpoint) -> bool {
        if endpoint.port() != self.port {
            return false;
        }
        match &self.suffix {
            Some(suffix) => {
                endpoint.host().len() > suffix.len() && endpoint.host().ends_with(suffix.as_str())
            }
            None => endpoint.host() == self.host,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// What kind of backend an endpoint is for: it picks the list and names the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Kms,
    Maa,
}

/// How the operator extends the lists in the running mode: `aasp serve` takes flags; `aasp skr`,
/// started as the sidecar's `/skr.sh`, gets no flags, only environment variables. A refusal names
/// the one that mode can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Configured {
    #[default]
    ByFlags,
    ByEnvironment,
}

impl Role {
    fn option(self) -> &'static str {
        match self {
            Role::Kms => "--allow-kms-host",
            Role::Maa => "--allow-maa-host",
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Role::Kms => crate::env::AASP_ALLOW_KMS_HOST,
            Role::Maa => crate::env::AASP_ALLOW_MAA_HOST,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Kms => "KMS (Managed HSM / Key Vault)",
            Role::Maa => "MAA",
        }
    }
}

/// The KMS and MAA hosts credentials may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    pub kms: Vec<HostPattern>,
    pub maa: Vec<HostPattern>,
    /// What a refusal tells the operator to set.
    pub configured: Configured,
}

impl Default for AllowList {
    fn default() -> Self {
        let parse = |list: &[&str]| {
            list.iter()
                .filter_map(|p| HostPattern::parse(p).ok())
                .collect()
        };
        AllowList {
            kms: parse(&DEFAULT_KMS_HOSTS),
            maa: parse(&DEFAULT_MAA_HOSTS),
            configured: Configured::ByFlags,
        }
    }
}

impl AllowList {
    /// Azure's defaults plus the operator's patterns.
    pub fn with(kms: &[String], maa: &[String]) -> Result<Self, String> {
        let mut list = AllowList::default();
        for p in kms {
            list.kms.push(HostPattern::parse(p)?);
        }
        for p in maa {
            list.maa.push(HostPattern::parse(p)?);
        }
        Ok(list)
    }

    /// `Ok` when `endpoint` may receive credentials as a `role`; else a refusal that names the
    /// option allowing it.
    pub fn check(&self, role: Role, endpoint: &Endpoint) -> Result<(), String> {
        let list = match role {
            Role::Kms => &self.kms,
            Role::Maa => &self.maa,
        };
        if list.iter().any(|p| p.matches(endpoint)) {
            return Ok(());
        }
        let allowed: Vec<String> = list.iter().map(ToString::to_string).collect();
        let fix = match self.configured {
            Configured::ByFlags => format!("adds {} {}", role.option(), endpoint.authority()),
            Configured::ByEnvironment => format!(
                "sets {}={} (comma-separated, beside the others)",
                role.variable(),
                endpoint.authority()
            ),
        };
        Err(format!(
            "{} host {} is not allowed (allowed: {}); an operator who trusts it {fix}",
            role.name(),
            endpoint.authority(),
            allowed.join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(text: &str) -> Endpoint {
        Endpoint::parse(text).unwrap()
    }

    #[test]
    fn defaults_allow_azure_domains_only() {
        let list = AllowList::default();
        assert!(list
            .check(Role::Kms, &ep("myhsm.managedhsm.azure.net"))
            .is_ok());
        assert!(list
            .check(Role::Kms, &ep("https://kv.vault.azure.net/"))
            .is_ok());
        assert!(list
            .check(Role::Maa, &ep("sharedeus.eus.attest.azure.net"))
            .is_ok());
        for (role, bad) in [
            (Role::Kms, "managedhsm.azure.net"),
            (Role::Kms, "evil-managedhsm.azure.net"),
            (Role::Kms, "kv.vault.azure.net.evil.example"),
            (Role::Kms, "kv.vault.azure.net:8443"),
            (Role::Kms, "sharedeus.eus.attest.azure.net"),
            (Role::Maa, "myhsm.managedhsm.azure.net"),
            (Role::Kms, "127.0.0.1"),
        ] {
            let err = list.check(role, &ep(bad)).unwrap_err();
            assert!(err.contains(role.option()), "{err}");
        }
    }

    #[test]
    fn a_refusal_names_the_variable_where_only_the_environment_configures() {
        let list = AllowList {
            configured: Configured::ByEnvironment,
            ..AllowList::default()
        };
        let err = list.check(Role::Kms, &ep("127.0.0.1:9443")).unwrap_err();
        assert!(err.contains("AASP_ALLOW_KMS_HOST=127.0.0.1:9443"), "{err}");
        assert!(!err.contains("--allow"), "{err}");
        let err = list.check(Role::Maa, &ep("maa.example")).unwrap_err();
        assert!(err.contains("AASP_ALLOW_MAA_HOST=maa.example"), "{err}");
    }

    #[test]
    fn operator_patterns_take_ports_and_ipv6() {
        let list = AllowList::with(
            &["127.0.0.1:18443".into(), "*.hsm.example".into()],
            &["[::1]:9443".into()],
        )
        .unwrap();
        assert!(list.check(Role::Kms, &ep("127.0.0.1:18443")).is_ok());
        assert!(list.check(Role::Kms, &ep("127.0.0.1:18444")).is_err());
        assert!(list.check(Role::Kms, &ep("a.hsm.example")).is_ok());
        assert!(list.check(Role::Kms, &ep("a.hsm.example:444")).is_err());
        assert!(list.check(Role::Maa, &ep("https://[::1]:9443")).is_ok());
        assert!(list.check(Role::Maa, &ep("[::1]")).is_err());
        for bad in ["*", "*.", "a.*.example", "http://x.example", "*.[::1]"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
