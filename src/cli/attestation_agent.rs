//! The attestation-agent personality: aasp started as Kata's kata-agent starts the Confidential
//! Containers attestation agent, in its place.
//!
//! kata-agent runs `/usr/local/bin/attestation-agent --attestation_sock unix:///run/confidential-containers/attestation-agent/attestation-agent.sock
//! [--initdata-toml PATH] [-c CONFIG]` and waits for the socket file (kata `src/agent/src/main.rs`).
//! aasp takes that command line when it is invoked as `attestation-agent` (argv[0], e.g. a
//! symlink in the guest image) or when its first argument is an upstream AA option, and then
//! serves the ttrpc services on that socket. The options are upstream's
//! (guest-components `attestation-agent/src/bin/ttrpc-aa.rs`); aasp's own settings (attester,
//! certificate source, MAA endpoint, ...) come from their `AASP_*` environment variables or
//! flags. With `--initdata-toml` (or `--initdata-digest`) the init-data must match HOST_DATA
//! before the socket appears, or the agent exits, as upstream's does. Init-data that matched
//! goes to the KBS in every RCAR attest request (Trustee checks it and puts its claims in the
//! token), and its `aa.toml` names the KBS unless `--kbs-url` does.

use super::serve::{self, BackendArgs, Running};
use crate::env;
use crate::service::Listen;
use crate::snp::initdata::{check_host_data, VerifiedInitData};
use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Where upstream's AA listens, and kata-agent waits.
pub const DEFAULT_ATTESTATION_SOCK: &str =
    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock";

/// The name that selects this personality.
pub const AGENT_NAME: &str = "attestation-agent";

/// Upstream AA's options, spelled as upstream spells them.
const UPSTREAM_OPTIONS: [&str; 5] = [
    "--attestation_sock",
    "--config-file",
    "--initdata-toml",
    "--initdata-digest",
    "--initdata_toml",
];

/// aasp serving the Confidential Containers attestation-agent API over ttrpc, started as Kata
/// starts the attestation agent.
#[derive(Debug, Parser)]
#[command(name = "attestation-agent", version)]
pub struct AgentArgs {
    /// Attestation ttRPC Unix socket address.
    #[arg(short = 'a', long = "attestation_sock", value_name = "unix:///PATH",
          default_value = DEFAULT_ATTESTATION_SOCK)]
    pub attestation_sock: String,
    /// Configuration file of the attestation agent (TOML; upstream's sections such as
    /// `[token_configs.kbs]` are read, unknown ones ignored).
    #[arg(short = 'c', long)]
    pub config_file: Option<PathBuf>,
    /// Init-data TOML to check against HOST_DATA before serving (takes precedence over
    /// `--initdata-digest`). Once it matches, it is sent to the KBS with every attestation, and
    /// its `aa.toml` names the KBS and the attestation service unless --kbs-url does.
    #[arg(short = 't', long, visible_alias = "initdata_toml")]
    pub initdata_toml: Option<PathBuf>,
    /// Init-data digest (standard base64) to check against HOST_DATA before serving.
    #[arg(short = 'i', long)]
    pub initdata_digest: Option<String>,
    /// Also serve gRPC here (host:port or unix:///path); off by default, as upstream's ttrpc
    /// agent serves ttrpc only.
    #[arg(long, env = env::AASP_LISTEN, value_delimiter = ',')]
    pub listen: Vec<Listen>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// The attestation agent's configuration file. Sections aasp does not use are ignored, so a
/// stock upstream file works; each consumer reads its own section.
#[derive(Debug, Default, Deserialize)]
pub struct AgentConfig {
    #[serde(default)]
    pub token_configs: TokenConfigs,
}

#[derive(Debug, Default, Deserialize)]
pub struct TokenConfigs {
    /// `[token_configs.kbs]`: the Trustee KBS that GetToken("kbs") asks.
    pub kbs: Option<KbsTokenConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KbsTokenConfig {
    /// KBS base URL.
    pub url: String,
    /// PEM of a CA certificate for the KBS's HTTPS endpoint.
    pub cert: Option<String>,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| format!("the config file {} is not valid TOML: {e}", path.display()))
    }
}

/// Whether this command line is for the attestation-agent personality.
pub fn invoked(args: &[String]) -> bool {
    let by_name = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .is_some_and(|name| name == AGENT_NAME);
    let by_option = args.get(1).is_some_and(|first| {
        UPSTREAM_OPTIONS
            .iter()
            .any(|o| first == o || first.starts_with(&format!("{o}=")))
    });
    by_name || by_option
}

/// The socket path of `--attestation_sock` (only `unix://` is served, as upstream).
fn socket_path(uri: &str) -> Result<PathBuf, String> {
    match uri.strip_prefix("unix://") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(format!(
            "--attestation_sock {uri:?}: expected unix:///path, as upstream's ttrpc agent takes"
        )),
    }
}

/// `--initdata-digest`, decoded. An empty digest binds nothing (upstream would pad it to zeros
/// and match a launch without init-data), so it is refused.
fn initdata_digest(b64: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
        Ok(digest) if !digest.is_empty() => Ok(digest),
        Ok(_) => Err(
            "--initdata-digest is empty; it is the init-data digest (SHA-256, -384 or -512)".into(),
        ),
        Err(_) => Err("--initdata-digest is not standard base64".into()),
    }
}

/// Checks the init-data against HOST_DATA, before anything reads it (upstream's agent exits on
/// a mismatch too); `--initdata-toml` takes precedence over `--initdata-digest`, as upstream.
async fn verified_init_data(
    args: &AgentArgs,
    attester: &Arc<dyn crate::snp::attester::Attester>,
) -> Result<Option<VerifiedInitData>, String> {
    const MISMATCH: &str = "the init-data does not match this platform's HOST_DATA";
    if let Some(path) = &args.initdata_toml {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --initdata-toml {}: {e}", path.display()))?;
        let verified = VerifiedInitData::verify(attester, text)
            .await
            .map_err(|e| format!("--initdata-toml {}: {MISMATCH}: {e}", path.display()))?;
        tracing::info!("init-data matches HOST_DATA");
        return Ok(Some(verified));
    }
    if let Some(b64) = &args.initdata_digest {
        check_host_data(attester, &initdata_digest(b64)?)
            .await
            .map_err(|e| format!("{MISMATCH}: {e}"))?;
        tracing::info!("init-data matches HOST_DATA");
    }
    Ok(None)
}

pub async fn run(mut args: AgentArgs) -> Result<ExitCode, String> {
    serve::warm_up_randomness();
    let path = socket_path(&args.attestation_sock)?;
    // Read now so that a broken file stops the start, as upstream's does.
    let _config = args
        .config_file
        .as_deref()
        .map(AgentConfig::load)
        .transpose()?
        .unwrap_or_default();
    // `-c`'s `[token_configs.kbs]` names the Trustee KBS, as upstream's agent reads it.
    if args.backend.kbs.aa_config.is_none() {
        args.backend.kbs.aa_config.clone_from(&args.config_file);
    }
    serve::check_listeners(&args.listen, args.backend_allows_remote())?;
    let attester = args.backend.attester.open_or_await()?;
    args.backend.kbs.initdata = verified_init_data(&args, &attester).await?.map(Arc::new);
    let backend = args.backend.build_with(attester)?;
    // Upstream creates the socket's directory (kata-agent does not).
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut running: Running = serve::start(Arc::clone(&backend), &args.listen).await?;
    for l in &running.listeners {
        announce!("aasp serving gRPC on {l}");
    }
    serve::serve_ttrpc(&mut running, &backend, &[Listen::Unix(path)])?;
    announce!(
        "attestation-agent (aasp): attester {}; certificate chain: {}",
        backend.provisioner.attester().name(),
        backend.provisioner.chains().describe()
    );
    running.until_signal(Duration::from_secs(10)).await
}

impl AgentArgs {
    /// The personality keeps aasp inside the guest: gRPC listeners must be loopback or Unix.
    fn backend_allows_remote(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn invoked_by_name_or_by_upstream_option() {
        assert!(invoked(&strings(&["/usr/local/bin/attestation-agent"])));
        assert!(invoked(&strings(&[
            "aasp",
            "--attestation_sock",
            "unix:///run/aa.sock"
        ])));
        assert!(invoked(&strings(&["aasp", "--attestation_sock=unix:///x"])));
        assert!(!invoked(&strings(&["aasp", "serve"])));
        assert!(!invoked(&strings(&["/usr/bin/aasp"])));
    }

    #[test]
    fn kata_agents_command_line_parses() {
        let args = AgentArgs::try_parse_from([
            "attestation-agent",
            "--attestation_sock",
            DEFAULT_ATTESTATION_SOCK,
            "--initdata-toml",
            "/run/confidential-containers/initdata.toml",
            "-c",
            "/run/confidential-containers/aa.toml",
        ])
        .unwrap();
        assert_eq!(
            socket_path(&args.attestation_sock).unwrap(),
            PathBuf::from("/run/confidential-containers/attestation-agent/attestation-agent.sock")
        );
        assert_eq!(
            args.config_file.as_deref(),
            Some(Path::new("/run/confidential-containers/aa.toml"))
        );
        assert!(args.initdata_toml.is_some());
        let wrong = AgentArgs::try_parse_from(["attestation-agent", "--kbc", "x"]).unwrap_err();
        assert!(wrong.to_string().contains("--kbc"), "{wrong}");
        assert!(socket_path("tcp://127.0.0.1:50002").is_err());
    }

    #[test]
    fn config_keeps_the_kbs_section_and_ignores_the_rest() {
        let config: AgentConfig = toml::from_str(
            "[token_configs.kbs]\nurl = \"https://kbs:8080\"\n\n[token_configs.coco_as]\nurl = \"x\"\n\n[eventlog_config]\ninit_pcr = 17\nenable_eventlog = false\n\n[log]\nlevel = \"info\"\n",
        )
        .unwrap();
        let kbs = config.token_configs.kbs.unwrap();
        assert_eq!(kbs.url, "https://kbs:8080");
        assert!(kbs.cert.is_none());
        let empty: AgentConfig = toml::from_str("").unwrap();
        assert!(empty.token_configs.kbs.is_none());
    }
}
