//! `aasp serve`: the gRPC server.

pub use super::verify::RequirementArgs;
use super::{AttesterArgs, ChainArgs, TlsArgs};
use crate::azure::identity::IdentityProvider;
use crate::azure::kms::KmsClient;
use crate::env;
use crate::provision::{Provisioner, ProvisionerParts};
use crate::service::conn::ConnectionLimits;
use crate::service::{grpc_router, report_readiness, Backend, Bound, Limits, Listen};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// `--help` headings of the server's options.
const LISTENERS: &str = "Listeners";
const AZURE: &str = "Azure: MAA, Managed HSM / Key Vault, identity";
const KEYPROVIDER: &str = "Keyprovider (image layer keys)";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on: host:port or unix:///path; repeatable. Every listener serves
    /// every service.
    #[arg(long, env = env::AASP_LISTEN, value_delimiter = ',', default_value = "127.0.0.1:50000", help_heading = LISTENERS)]
    pub listen: Vec<Listen>,
    /// Serve the SKR sidecar's REST API (/status, /attest/*, /key/release) on this address, e.g.
    /// 127.0.0.1:8080. Off by default.
    #[arg(long, env = env::AASP_REST_LISTEN, value_name = "HOST:PORT", help_heading = LISTENERS)]
    pub rest_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics at /metrics on this address, e.g. 127.0.0.1:9090. Off by default.
    #[arg(long, env = env::AASP_METRICS_LISTEN, value_name = "HOST:PORT", help_heading = LISTENERS)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the attestation-agent, keyprovider and getresource APIs over ttrpc (as Kata guest
    /// components call their attestation agent) on this Unix socket; repeatable. Off by default.
    #[arg(long, env = env::AASP_TTRPC_LISTEN, value_delimiter = ',', value_name = "unix:///PATH", help_heading = LISTENERS)]
    pub ttrpc_listen: Vec<Listen>,
    /// Allow non-loopback TCP listeners (aasp hands out keys: keep it inside the pod).
    #[arg(long, env = env::AASP_ALLOW_REMOTE, help_heading = LISTENERS)]
    pub allow_remote: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Seconds to let in-flight calls finish after SIGTERM/SIGINT.
    #[arg(long, env = env::AASP_SHUTDOWN_GRACE, default_value_t = 10, value_name = "SECS", help_heading = LISTENERS)]
    pub shutdown_grace: u64,
}

/// What the services need to attest and release keys.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// MAA endpoint used when a request names none (GetToken, GetResource, key references).
    #[arg(long, env = env::AASP_MAA_ENDPOINT, value_name = "HOST", help_heading = AZURE)]
    pub maa_endpoint: Option<String>,
    /// Directory of `<name>-info.json` key-info files for keyprovider key references.
    #[arg(long, env = env::AASP_KEYS_DIR, value_name = "DIR", help_heading = KEYPROVIDER)]
    pub keys_dir: Option<PathBuf>,
    /// Extra ocicrypt provider name accepted besides "attestation-agent"; repeatable.
    #[arg(long, env = env::AASP_PROVIDER_NAME, value_delimiter = ',', value_name = "NAME", help_heading = KEYPROVIDER)]
    pub provider_name: Vec<String>,
    /// IMDS base URL for managed identity [default: http://169.254.169.254].
    #[arg(long, env = env::AASP_IMDS_ENDPOINT, value_name = "URL", help_heading = AZURE)]
    pub imds_endpoint: Option<String>,
    /// Client id of a user-assigned managed identity.
    #[arg(long, env = env::AASP_CLIENT_ID, value_name = "ID", help_heading = AZURE)]
    pub client_id: Option<String>,
    /// File holding a KMS access token (instead of managed or workload identity).
    #[arg(long, env = env::AASP_ACCESS_TOKEN_FILE, value_name = "FILE", help_heading = AZURE)]
    pub access_token_file: Option<PathBuf>,
    /// Also send credentials to this Managed HSM / Key Vault host (`host[:port]` or
    /// `*.suffix[:port]`; no port: 443); repeatable. Always allowed: *.managedhsm.azure.net,
    /// *.vault.azure.net; requests naming any other KMS are refused.
    #[arg(long, env = env::AASP_ALLOW_KMS_HOST, value_delimiter = ',', value_name = "PATTERN", help_heading = AZURE)]
    pub allow_kms_host: Vec<String>,
    /// Also attest with this MAA host (same patterns); repeatable. Allowed by default:
    /// *.attest.azure.net and the --maa-endpoint.
    #[arg(long, env = env::AASP_ALLOW_MAA_HOST, value_delimiter = ',', value_name = "PATTERN", help_heading = AZURE)]
    pub allow_maa_host: Vec<String>,
    /// Seconds released keys and MAA tokens stay cached; 0 turns caching off.
    #[arg(long, env = env::AASP_CACHE_TTL, default_value_t = 300, value_name = "SECS", help_heading = AZURE)]
    pub cache_ttl: u64,
    /// Seconds between transfer-key rotations (made in the background); 0 keeps one key.
    #[arg(long, env = env::AASP_TRANSFER_KEY_ROTATION, default_value_t = 3600, value_name = "SECS", help_heading = AZURE)]
    pub transfer_key_rotation: u64,
    /// Layer-key RSA decrypts that may run at once on threads of their own; 0 runs each in its
    /// call's connection (docs/performance.md) [default: the number of CPUs].
    #[arg(long, env = env::AASP_DECRYPT_THREADS, value_name = "N", help_heading = KEYPROVIDER)]
    pub decrypt_threads: Option<usize>,
    #[command(flatten)]
    pub kbs: KbsArgs,
    #[command(flatten)]
    pub attester: AttesterArgs,
    #[command(flatten)]
    pub chain: ChainArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Verify the server's own report (signature, chain to the trusted roots) before health says
    /// SERVING; implied by the requirement flags below.
    #[arg(long, help_heading = super::verify::REQUIREMENTS)]
    pub self_check: bool,
    /// Requirements the server's own report must meet before it serves.
    #[command(flatten)]
    pub requirements: RequirementArgs,
    /// Flags or only the environment (`aasp skr`): what refusals tell the operator to set.
    #[arg(skip)]
    pub configured: crate::provision::allow::Configured,
}

impl BackendArgs {
    /// The simulated device wired to a running emulator (in this process or not) through the
    /// production clients: THIM for the chain, IMDS for identity, the emulator's MAA, its dev CA
    /// trusted.
    pub fn for_emulator(
        emulator_url: &str,
        emulator_ca: &std::path::Path,
        state_dir: &std::path::Path,
        keys_dir: Option<PathBuf>,
    ) -> Self {
        let emulator_host = emulator_url.trim_start_matches("https://").to_owned();
        BackendArgs {
            maa_endpoint: Some(emulator_host.clone()),
            keys_dir,
            // The emulator's own loopback address, and nothing else, besides Azure's defaults.
            allow_kms_host: vec![emulator_host.clone()],
            allow_maa_host: vec![emulator_host],
            provider_name: Vec::new(),
            imds_endpoint: Some(emulator_url.to_owned()),
            client_id: None,
            access_token_file: None,
            cache_ttl: 300,
            transfer_key_rotation: 3600,
            decrypt_threads: None,
            kbs: KbsArgs {
                kbs_url: Some(emulator_url.to_owned()),
                ..KbsArgs::default()
            },
            attester: AttesterArgs {
                attester: crate::snp::attester::AttesterKind::Sim,
                sim: super::SimArgs {
                    state_dir: Some(state_dir.to_path_buf()),
                    sim_security_policy: None,
                    sim_debug: false,
                    sim_tcb: None,
                    sim_measurement: None,
                },
            },
            chain: ChainArgs {
                cert_source: crate::snp::chain::CertSourceKind::Thim,
                cert_endpoint: Some(emulator_url.to_owned()),
                trust_root: Vec::new(),
            },
            tls: TlsArgs::with_extra_ca(Some(emulator_ca.to_path_buf())),
            self_check: false,
            requirements: Default::default(),
            configured: Default::default(),
        }
    }

    /// Builds the backend for a server; the transfer key starts generating in the background.
    /// A missing guest device is awaited (see [`AttesterArgs::open_or_await`]).
    pub fn build(&self) -> Result<Arc<Backend>, String> {
        self.build_with(self.attester.open_or_await()?)
    }

    /// Builds the backend for a one-shot command: a missing guest device is the command's error,
    /// not something to wait for.
    pub fn build_for_command(&self) -> Result<Arc<Backend>, String> {
        self.build_with(self.attester.open()?)
    }

    /// Builds the backend around an attester already opened (the attestation-agent personality
    /// checks init-data with it first).
    pub fn build_with(
        &self,
        attester: Arc<dyn crate::snp::attester::Attester>,
    ) -> Result<Arc<Backend>, String> {
        let sidecar = crate::snp::chain::SideCarArgs::from_env()?;
        let (client, anchors) = self.tls.client_and_anchors()?;
        let chains =
            self.chain
                .chain_cache(attester.as_ref(), &self.attester.state_dir(), &client)?;
        let client_id = self.client_id.clone().or_else(|| {
            sidecar
                .as_ref()
                .and_then(|s| s.identity.as_ref())
                .map(|i| i.client_id.clone())
                .filter(|c| !c.is_empty())
        });
        let source = super::identity_source(
            self.access_token_file.as_deref(),
            self.imds_endpoint.clone(),
            client_id,
        )?;
        let retry = self.tls.retry_policy();
        let mut allow =
            crate::provision::allow::AllowList::with(&self.allow_kms_host, &self.allow_maa_host)?;
        allow.configured = self.configured;
        if let Some(maa) = &self.maa_endpoint {
            // The operator's own default MAA is allowed implicitly.
            let endpoint =
                crate::http::Endpoint::parse(maa).map_err(|e| format!("--maa-endpoint: {e}"))?;
            allow
                .maa
                .push(crate::provision::allow::HostPattern::exact(&endpoint));
        }
        let provisioner = Provisioner::new(ProvisionerParts {
            attester,
            chains: Arc::new(chains),
            identity: Arc::new(IdentityProvider::new(client.clone(), source, retry)),
            kms: Arc::new(KmsClient::new(client.clone(), anchors, retry)),
            http: client.clone(),
            retry,
            cache_ttl: Duration::from_secs(self.cache_ttl),
            allow,
        })
        .map_err(|e| e.to_string())?;
        let provisioner = match self.decrypt_threads {
            Some(threads) => provisioner.with_decrypt_threads(threads),
            None => provisioner,
        };
        let provisioner = Arc::new(self.kbs.attach(provisioner, &client)?);
        if tokio::runtime::Handle::try_current().is_ok() {
            provisioner.spawn_cache_sweeper();
        }
        let requirements = self.requirements.requirements();
        let self_check = if self.self_check || requirements != Default::default() {
            Some(crate::service::SelfCheck {
                trust: self
                    .chain
                    .trust_store(provisioner.attester().simulated_root())?,
                requirements,
            })
        } else {
            None
        };
        if self.transfer_key_rotation > 0 && tokio::runtime::Handle::try_current().is_ok() {
            provisioner
                .spawn_transfer_key_rotation(Duration::from_secs(self.transfer_key_rotation));
        }
        Ok(Arc::new(Backend {
            provisioner,
            keys: crate::provision::key_info::KeyInfos::new(
                self.keys_dir.clone(),
                self.maa_endpoint.clone(),
            ),
            default_maa: self.maa_endpoint.clone(),
            provider_names: self.provider_name.clone(),
            ready: std::sync::atomic::AtomicBool::new(false),
            self_check,
        }))
    }
}

/// Where the Trustee KBS is. When none is configured, KBS requests fail with
/// FAILED_PRECONDITION and everything else works as before.
#[derive(Debug, Args)]
#[command(next_help_heading = "Trustee KBS")]
pub struct KbsArgs {
    /// Trustee KBS base URL (https://kbs.example:8080). Without it: the init-data's aa.toml,
    /// --aa-config, AA_KBC_PARAMS, then the kernel command line (docs/coco.md).
    #[arg(long, env = env::AASP_KBS_URL, value_name = "URL")]
    pub kbs_url: Option<String>,
    /// PEM file of the KBS certificate (or its CA): trusted for the KBS instead of the system
    /// roots (upstream AA's `cert`).
    #[arg(long, env = env::AASP_KBS_CERT, value_name = "FILE")]
    pub kbs_cert: Option<PathBuf>,
    /// TEE key the KBS encrypts resources to: ECDH-ES+A256KW (P-256), ECDH-ES+A256KW-P521 or
    /// RSA-OAEP-256.
    #[arg(long, env = env::AASP_KBS_KEY_ALGORITHM, default_value = "ECDH-ES+A256KW", value_name = "ALG")]
    pub kbs_key_algorithm: crate::kbs::KeyAlgorithm,
    /// Upstream attestation-agent config TOML: its `[token_configs.kbs]` names the KBS when
    /// --kbs-url does not, its `[token_configs.coco_as]` the attestation service.
    #[arg(long, env = env::AASP_AA_CONFIG, value_name = "FILE")]
    pub aa_config: Option<PathBuf>,
    /// Largest KBS resource aasp reads, in bytes of the KBS's answer (the JWE, about 4/3 of the
    /// plaintext plus a few hundred bytes); a larger one fails naming this limit.
    #[arg(long, env = env::AASP_KBS_MAX_RESOURCE, value_name = "BYTES",
        default_value_t = crate::http::limits::KBS_RESOURCE_DEFAULT)]
    pub kbs_max_resource: usize,
    /// Accept a plain http:// KBS named by AA_KBC_PARAMS or agent.aa_kbc_params on the kernel
    /// command line. Those are the host's choice, so by default they must name an https:// KBS.
    /// AASP_ALLOW_INSECURE_KBS takes 1/0, true/false, yes/no or on/off.
    #[arg(long, env = env::AASP_ALLOW_INSECURE_KBS,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_kbs: bool,
    /// Init-data whose digest matched HOST_DATA (the attestation-agent personality's
    /// --initdata-toml): sent with every attestation, and its aa.toml names the KBS.
    #[arg(skip)]
    pub initdata: Option<Arc<crate::snp::initdata::VerifiedInitData>>,
}

impl Default for KbsArgs {
    fn default() -> Self {
        KbsArgs {
            kbs_url: None,
            kbs_cert: None,
            kbs_key_algorithm: crate::kbs::KeyAlgorithm::default(),
            aa_config: None,
            kbs_max_resource: crate::http::limits::KBS_RESOURCE_DEFAULT,
            allow_insecure_kbs: false,
            initdata: None,
        }
    }
}

impl KbsArgs {
    /// The KBS settings from flags, AA config, AA_KBC_PARAMS or the kernel command line.
    pub fn settings(&self) -> Result<Option<crate::kbs::config::KbsSettings>, String> {
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let cert = self.kbs_cert.as_ref().map(read).transpose()?;
        let aa_toml = self.aa_config.as_ref().map(read).transpose()?;
        let params = std::env::var(env::AA_KBC_PARAMS).ok();
        let cmdline = std::fs::read_to_string("/proc/cmdline").ok();
        let sources = crate::kbs::config::KbsSources {
            initdata_aa_toml: self.initdata.as_deref().and_then(|i| i.aa_toml()),
            aa_toml: aa_toml.as_deref(),
            aa_kbc_params: params.as_deref(),
            cmdline: cmdline.as_deref(),
            allow_insecure: self.allow_insecure_kbs,
        };
        crate::kbs::config::resolve(
            self.kbs_url.as_deref(),
            cert,
            self.kbs_key_algorithm,
            &sources,
        )
        .map_err(|e| e.to_string())
    }

    /// Adds the KBS and coco_as backends to `provisioner` when they are configured.
    pub fn attach(
        &self,
        mut provisioner: Provisioner,
        client: &reqwest::Client,
    ) -> Result<Provisioner, String> {
        let init_data = self.initdata.as_deref().map(|i| i.toml().to_owned());
        let aa_toml = self
            .aa_config
            .as_ref()
            .map(|p| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())))
            .transpose()?;
        let coco_as = crate::kbs::config::resolve_coco_as(
            self.initdata.as_deref().and_then(|i| i.aa_toml()),
            aa_toml.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        if let Some(settings) = coco_as {
            tracing::info!(url = %settings.url, source = settings.source, "Trustee attestation service");
            provisioner = provisioner
                .with_coco_as(&settings, client.clone(), init_data.clone())
                .map_err(|e| e.to_string())?;
        }
        let Some(settings) = self.settings()? else {
            return Ok(provisioner);
        };
        let http = match &settings.cert {
            Some(pem) => crate::http::client_pinned(&crate::http::HttpOptions::default(), pem)
                .map_err(|e| format!("--kbs-cert: {e}"))?,
            None => client.clone(),
        };
        tracing::info!(url = %settings.url, source = settings.source, "Trustee KBS backend");
        provisioner
            .with_kbs(&settings, http, self.kbs_max_resource, init_data)
            .map_err(|e| e.to_string())
    }
}

/// Once start-up is over (health SERVING, the transfer key generated), gives back what only
/// start-up used: the allocator's freed memory and this process's mappings of the executable's
/// start-up code (see `hardening::release_executable_pages`; the pages stay in the page cache
/// and fault back in when used); then trims the allocator every `TRIM_PERIOD`. Idle RSS of
/// `aasp serve --attester sim`: see BENCHMARKS.md.
async fn release_start_up_memory(backend: Arc<Backend>) {
    while !backend.ready.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A failed generation is reported where the key is used; start-up is over either way.
    let _ = backend.provisioner.transfer_key_ready().await;
    crate::hardening::trim_heap();
    match crate::hardening::release_executable_pages() {
        Ok(bytes) => tracing::debug!(bytes, "start-up pages of the executable released"),
        Err(e) => tracing::debug!(error = %e, "cannot release the executable's start-up pages"),
    }
    // After a burst of connections glibc keeps their freed buffers (~0.7 MB after 64 clients);
    // a trim every few seconds hands them back. It walks the free lists of one arena per core
    // (two here): far below a millisecond, every TRIM_PERIOD.
    let mut every = tokio::time::interval(TRIM_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        crate::hardening::trim_heap();
    }
}

/// How often the allocator's free memory is returned to the kernel.
const TRIM_PERIOD: Duration = Duration::from_secs(5);

/// Refuses non-loopback TCP listeners unless allowed, and warns when they are.
pub fn check_listeners(listen: &[Listen], allow_remote: bool) -> Result<(), String> {
    for l in listen {
        if let Listen::Tcp(addr) = l {
            if !addr.ip().is_loopback() {
                if !allow_remote {
                    return Err(format!(
                        "--listen {addr} is not a loopback address: aasp releases keys to whoever asks, so it \
                         listens inside the pod only; add --allow-remote if the network is really private"
                    ));
                }
                tracing::warn!(%addr, "listening on a non-loopback address (--allow-remote)");
            }
        }
    }
    Ok(())
}

/// A running server: its bound addresses and a way to stop it.
pub struct Running {
    pub listeners: Vec<Listen>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Serves one more gRPC listener under the same shutdown signal.
    pub fn add(&mut self, bound: Bound, router: axum::Router) {
        self.add_with(bound, router, ConnectionLimits::grpc());
    }

    /// Serves one more listener with its own connection limits (REST and metrics: `http()`).
    pub fn add_with(&mut self, bound: Bound, router: axum::Router, limits: ConnectionLimits) {
        let mut stopped = self.stop.subscribe();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        self.listeners.push(bound.local());
        self.tasks
            .push(tokio::spawn(bound.serve_with(router, limits, shutdown)));
    }

    /// Serves the ttrpc services on one more Unix socket under the same shutdown signal.
    pub fn add_ttrpc(&mut self, bound: crate::service::ttrpc::TtrpcBound, backend: Arc<Backend>) {
        let mut stopped = self.stop.subscribe();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        self.listeners
            .push(Listen::Unix(bound.path().to_path_buf()));
        self.tasks
            .push(tokio::spawn(bound.serve(backend, shutdown)));
    }

    /// Serves until SIGTERM or SIGINT, then drains in-flight calls for at most `grace`: the
    /// end of every serving command (`serve`, `skr`, the attestation-agent personality).
    pub async fn until_signal(self, grace: Duration) -> Result<ExitCode, String> {
        wait_for_signal().await;
        tracing::info!("shutting down");
        self.shutdown(grace).await;
        Ok(ExitCode::SUCCESS)
    }

    /// Stops accepting, lets in-flight calls finish for up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                ?grace,
                "in-flight calls did not finish within the grace period"
            );
        }
    }
}

/// Why a listener could not bind. A taken port is named, with how to find its holder: it may be
/// an earlier aasp, or any other program.
pub fn listen_error(listen: &Listen, e: &std::io::Error) -> String {
    match listen {
        Listen::Tcp(addr) => super::listen_failure(*addr, e, "choose a free port"),
        Listen::Unix(_) => format!("cannot listen on {listen}: {e}"),
    }
}

/// Binds every listener and serves the backend on each.
pub async fn start(backend: Arc<Backend>, listen: &[Listen]) -> Result<Running, String> {
    let (router, health) = grpc_router(Arc::clone(&backend), &Limits::default());
    let (stop, _) = tokio::sync::watch::channel(false);
    // Readiness ends with the server, also when a command fails after this start and drops it.
    tokio::spawn(report_readiness(
        Arc::clone(&backend),
        health,
        stop.subscribe(),
    ));
    let mut stopped = stop.subscribe();
    let release = release_start_up_memory(Arc::clone(&backend));
    // Ends with the server (tests and benches start many in one process).
    tokio::spawn(async move {
        tokio::select! {
            () = release => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    });
    let mut running = Running {
        listeners: Vec::new(),
        stop,
        tasks: Vec::new(),
    };
    for l in listen {
        let bound = Bound::bind(l).await.map_err(|e| listen_error(l, &e))?;
        running.add(bound, router.clone());
    }
    Ok(running)
}

/// Binds the `--ttrpc-listen` sockets (Unix only: ttrpc callers are on the same machine).
pub fn serve_ttrpc(
    running: &mut Running,
    backend: &Arc<Backend>,
    listen: &[Listen],
) -> Result<(), String> {
    for l in listen {
        let Listen::Unix(path) = l else {
            return Err(format!(
                "--ttrpc-listen {l}: ttrpc is served on Unix sockets only (unix:///path)"
            ));
        };
        let bound = crate::service::ttrpc::TtrpcBound::bind(path)
            .map_err(|e| format!("cannot listen on {l}: {e}"))?;
        announce!("aasp serving ttrpc on {l}");
        running.add_ttrpc(bound, Arc::clone(backend));
    }
    Ok(())
}

/// aws-lc seeds its RNG from CPU jitter entropy on first use in a process: about 40 ms of CPU
/// here. Starting that now, on its own thread, overlaps it with the rest of start-up instead of
/// leaving it in front of the first report (and of health SERVING). Jitter entropy stays on:
/// inside a TEE a second entropy source beside the guest kernel's is worth 40 ms once.
pub fn warm_up_randomness() {
    let _ = std::thread::Builder::new()
        .name("rng-warm-up".into())
        .spawn(|| {
            let mut byte = [0u8; 1];
            let _ = aws_lc_rs::rand::SecureRandom::fill(
                &aws_lc_rs::rand::SystemRandom::new(),
                &mut byte,
            );
        });
}

pub async fn run(args: ServeArgs) -> Result<ExitCode, String> {
    warm_up_randomness();
    let rest: Vec<Listen> = args.rest_listen.map(Listen::Tcp).into_iter().collect();
    let metrics: Vec<Listen> = args.metrics_listen.map(Listen::Tcp).into_iter().collect();
    check_listeners(&args.listen, args.allow_remote)?;
    check_listeners(&rest, args.allow_remote)?;
    check_listeners(&metrics, args.allow_remote)?;
    let backend = args.backend.build()?;
    let mut running = start(Arc::clone(&backend), &args.listen).await?;
    for l in &running.listeners {
        announce!("aasp serving gRPC on {l}");
    }
    for l in &rest {
        let bound = Bound::bind(l).await.map_err(|e| listen_error(l, &e))?;
        announce!("aasp serving the SKR REST API on http://{}", bound.local());
        running.add_with(
            bound,
            crate::service::rest::router(Arc::clone(&backend)),
            ConnectionLimits::http(),
        );
    }
    serve_ttrpc(&mut running, &backend, &args.ttrpc_listen)?;
    for l in &metrics {
        let bound = Bound::bind(l).await.map_err(|e| listen_error(l, &e))?;
        announce!("aasp serving metrics on http://{}/metrics", bound.local());
        running.add_with(bound, crate::metrics::router(), ConnectionLimits::http());
    }
    announce!(
        "attester: {}; certificate chain: {}",
        backend.provisioner.attester().name(),
        backend.provisioner.chains().describe()
    );
    running
        .until_signal(Duration::from_secs(args.shutdown_grace))
        .await
}

/// SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
