//! `aasp skr`, also run when the binary is invoked as `skr.sh` or `skr` (the image links
//! `/skr.sh` to it): a drop-in for Microsoft's confidential SKR sidecar, configured exactly as
//! that sidecar's `/skr.sh` configures it, so a pod swaps the image and keeps its env and command.
//!
//! The contract (`docker/skr/skr.sh` and `cmd/skr/main.go` upstream): `SkrSideCarArgs` (or the
//! first argument) is the base64 sidecar JSON; `Port` (or the second argument) the port, 8080 by
//! default; `ServerType` `grpc` serves gRPC, anything else the REST API; `LogLevel` (trace, debug,
//! info, warning, error, fatal, panic; default warning) and `LogFile` (append) steer logging. The
//! listener is on loopback only, as the sidecar's `localhost`. Every `AASP_*` variable still
//! applies on top.

use super::serve::{self, BackendArgs};
use crate::env;
use crate::service::{Bound, Listen};
use clap::Args;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SkrArgs {
    /// Base64 of the sidecar JSON (`{"certcache":{…},"identity":{…}}`), as `/skr.sh $1`.
    #[arg(env = env::SKR_SIDECAR_ARGS, value_name = "SKR_SIDECAR_ARGS")]
    pub sidecar_args: Option<String>,
    /// Port on 127.0.0.1, as `/skr.sh $2`.
    #[arg(env = env::SKR_PORT, value_name = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// `grpc` serves gRPC (every aasp service, `key_provider.KeyProviderService` among them);
    /// anything else the SKR REST API.
    #[arg(long, env = env::SKR_SERVER_TYPE, default_value = "http")]
    pub server_type: String,
    /// The sidecar's log level: trace, debug, info, warning, error, fatal or panic (RUST_LOG,
    /// when set, wins).
    #[arg(long, env = env::SKR_LOG_LEVEL, default_value = "warning")]
    pub log_level: String,
    /// Append logs to this file instead of standard error.
    #[arg(long, env = env::SKR_LOG_FILE, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// The `tracing` filter for one of the sidecar's logrus levels.
pub fn filter_for(level: &str) -> Result<&'static str, String> {
    Ok(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" | "" => "warn",
        "error" | "fatal" | "panic" => "error",
        other => {
            return Err(format!(
                "LogLevel {other:?}: expected trace, debug, info, warning, error, fatal or panic"
            ))
        }
    })
}

/// Applies the start-up settings that must exist before logging and the runtime start: a
/// positional sidecar JSON becomes `SkrSideCarArgs` (the chain source and identity read it
/// there), an empty one is unset (as skr.sh ignores it), and the log file is opened for append.
/// Runs while the process has one thread.
pub fn prepare(args: &SkrArgs) -> Result<Option<std::fs::File>, String> {
    match args.sidecar_args.as_deref().map(str::trim) {
        Some(value) if !value.is_empty() => std::env::set_var(env::SKR_SIDECAR_ARGS, value),
        _ => std::env::remove_var(env::SKR_SIDECAR_ARGS),
    }
    filter_for(&args.log_level)?;
    open_log_file(args.log_file.as_deref())
}

/// The sidecars' `LogFile` (SKR and encfs take the same variable): appended to, created if absent.
pub(crate) fn open_log_file(
    path: Option<&std::path::Path>,
) -> Result<Option<std::fs::File>, String> {
    path.map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("LogFile {}: {e}", path.display()))
    })
    .transpose()
}

/// The command line for a binary invoked as `skr.sh` or `skr`: `aasp skr` with its arguments.
pub fn personality(argv: &[String]) -> Option<Vec<String>> {
    let name = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())?
        .to_str()?;
    matches!(name, "skr.sh" | "skr").then(|| {
        ["aasp".to_owned(), "skr".to_owned()]
            .into_iter()
            .chain(argv.iter().skip(1).cloned())
            .collect()
    })
}

pub async fn run(mut args: SkrArgs) -> Result<ExitCode, String> {
    serve::warm_up_randomness();
    // The sidecar's `/skr.sh` passes no flags: refusals name the AASP_* variables instead.
    args.backend.configured = crate::provision::allow::Configured::ByEnvironment;
    let backend = args.backend.build()?;
    let addr = Listen::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)));
    let grpc = args.server_type.eq_ignore_ascii_case("grpc");
    // `start` with no gRPC listener still reports readiness, which REST's /status reads.
    let grpc_listeners = if grpc {
        std::slice::from_ref(&addr)
    } else {
        &[]
    };
    let mut running = serve::start(Arc::clone(&backend), grpc_listeners).await?;
    if grpc {
        announce!("aasp (SKR sidecar mode) serving gRPC on {addr}");
    } else {
        let bound = Bound::bind(&addr).await.map_err(|e| match &addr {
            Listen::Tcp(tcp) => super::listen_failure(*tcp, &e, "set Port to a free port"),
            Listen::Unix(_) => format!("cannot listen on {addr}: {e}"),
        })?;
        announce!(
            "aasp (SKR sidecar mode) serving the SKR REST API on http://{}",
            bound.local()
        );
        running.add(bound, crate::service::rest::router(Arc::clone(&backend)));
    }
    announce!(
        "attester: {}; certificate chain: {}",
        backend.provisioner.attester().name(),
        backend.provisioner.chains().describe()
    );
    running.until_signal(Duration::from_secs(10)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_map_to_filters() {
        assert_eq!(filter_for("warning").unwrap(), "warn");
        assert_eq!(filter_for("Info").unwrap(), "info");
        assert_eq!(filter_for("fatal").unwrap(), "error");
        assert!(filter_for("loud").unwrap_err().contains("LogLevel"));
    }

    #[test]
    fn invoked_as_skr_sh_runs_the_skr_command() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            personality(&argv(&["/skr.sh", "e30=", "50000"])),
            Some(argv(&["aasp", "skr", "e30=", "50000"]))
        );
        assert_eq!(
            personality(&argv(&["/bin/skr"])),
            Some(argv(&["aasp", "skr"]))
        );
        assert_eq!(personality(&argv(&["/usr/local/bin/aasp", "serve"])), None);
    }
}
