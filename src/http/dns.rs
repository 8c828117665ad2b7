//! Name resolution for the statically linked build (`--features static-dns`).
//!
//! A static glibc binary resolves names through NSS modules it loads at run time and cannot load
//! (a Kata guest image holds no glibc to load them from), so reqwest's default resolver
//! (`getaddrinfo`) is swapped for hickory-resolver: `/etc/hosts` first, then the nameservers of
//! `/etc/resolv.conf`. A missing `/etc/resolv.conf` means "no DNS": names resolve from
//! `/etc/hosts` only. hickory's and reqwest's own fallback in that case is a public resolver
//! (Google), which would announce every upstream a guest talks to on the network it sits on.

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::system_conf::parse_resolv_conf;
use hickory_resolver::TokioResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The process's one resolver: every HTTP client shares its cache and its reading of the files.
pub fn resolver() -> Arc<HostsThenDns> {
    static SHARED: OnceLock<Arc<HostsThenDns>> = OnceLock::new();
    Arc::clone(SHARED.get_or_init(|| Arc::new(HostsThenDns::default())))
}

/// Built on first use, inside the runtime that drives the lookups; the files are read then, once.
#[derive(Default)]
pub struct HostsThenDns {
    built: OnceLock<Result<TokioResolver, String>>,
}

impl HostsThenDns {
    fn get(&self) -> Result<&TokioResolver, String> {
        self.built.get_or_init(build).as_ref().map_err(Clone::clone)
    }
}

fn build() -> Result<TokioResolver, String> {
    let (config, mut options) = config(std::fs::read(RESOLV_CONF))?;
    options.use_hosts_file = ResolveHosts::Always;
    // Both families, as getaddrinfo answers; the connector tries them in turn.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder
        .build()
        .map_err(|e| format!("cannot set up name resolution: {e}"))
}

/// The nameservers and options of `/etc/resolv.conf`; none when the file is missing or names no
/// nameserver (Kata's rootfs builder leaves an empty one for kata-agent to bind-mount over).
fn config(resolv_conf: std::io::Result<Vec<u8>>) -> Result<(ResolverConfig, ResolverOpts), String> {
    let text = match resolv_conf {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {RESOLV_CONF}: {e}")),
    };
    let names_a_server = String::from_utf8_lossy(&text)
        .lines()
        .any(|line| line.trim_start().starts_with("nameserver"));
    if !names_a_server {
        return Ok((
            ResolverConfig::from_name_servers(Vec::new()),
            ResolverOpts::default(),
        ));
    }
    parse_resolv_conf(&text).map_err(|e| format!("{RESOLV_CONF}: {e}"))
}

impl Resolve for HostsThenDns {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.get().cloned();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolver = resolver.map_err(|reason| Unresolved {
                host: host.clone(),
                reason,
            })?;
            let lookup = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| Unresolved {
                    host: host.clone(),
                    reason: format!("not in /etc/hosts, and DNS ({RESOLV_CONF}) answered: {e}"),
                })?;
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
struct Unresolved {
    host: String,
    reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_missing_or_without_nameserver_means_no_dns() {
        let missing = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        for given in [
            missing,
            Ok(Vec::new()),
            Ok(b"search example.com\n".to_vec()),
        ] {
            let (none, _) = config(given).unwrap();
            assert!(none.name_servers().is_empty());
        }
        let (named, _) = config(Ok(b"nameserver 10.0.0.53\n".to_vec())).unwrap();
        let servers: Vec<_> = named.name_servers().iter().map(|s| s.ip).collect();
        assert_eq!(servers, ["10.0.0.53".parse::<std::net::IpAddr>().unwrap()]);
        let unreadable = Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(config(unreadable).unwrap_err().contains(RESOLV_CONF));
    }

    /// Without nameservers a name outside /etc/hosts is an error that names the host (not a
    /// query to some fallback resolver).
    #[tokio::test]
    async fn without_nameservers_an_unknown_name_fails_naming_it() {
        let (no_servers, mut options) = config(Ok(Vec::new())).unwrap();
        options.use_hosts_file = ResolveHosts::Never;
        let mut builder =
            TokioResolver::builder_with_config(no_servers, TokioRuntimeProvider::default());
        *builder.options_mut() = options;
        let resolver = HostsThenDns {
            built: OnceLock::from(builder.build().map_err(|e| e.to_string())),
        };
        let name: Name = "kbs.aasp-test.invalid".parse().unwrap();
        let err = match resolver.resolve(name).await {
            Ok(addrs) => panic!("resolved: {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("cannot resolve kbs.aasp-test.invalid"),
            "{err}"
        );
    }
}
