//! The `aasp` command line: one subcommand per job, each a thin layer over the library.

/// `println!` for long-running commands: a reader that went away (a closed pipe) must not take
/// a server down with it.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A server's start-up line (where it listens, which attester and chain it uses): plain text on
/// standard output, which people and scripts read; with `--log-format json`, a log record like
/// every other line, so that a container's log stays one JSON object per line (`kubectl logs`
/// merges stdout and stderr, and collectors parse each line). Shown at any log level, as the
/// text line is.
macro_rules! announce {
    ($($arg:tt)*) => {{
        if $crate::cli::json_logs() {
            tracing::info!(target: $crate::cli::STARTUP_TARGET, $($arg)*);
        } else {
            say!($($arg)*);
        }
    }};
}

/// `println!` for one-shot commands, as an expression of type `Result<(), String>`: a reader
/// that went away (`aasp … | head`) ends nothing worth reporting, as with any command-line
/// tool, so a broken pipe is `Ok`; any other failure to write (a full disk) is the error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        match writeln!(std::io::stdout(), $($arg)*) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(format!("standard output: {e}"))
            }
            _ => Ok::<(), String>(()),
        }
    }};
}
use out;

pub mod attestation_agent;
mod azure;
mod call;
mod config;
pub mod dev;
pub mod dev_encfs;
pub mod encfs;
mod encfs_run;
mod kbs;
mod report;
pub mod serve;
pub mod skr;
mod verify;
mod wrap;

use crate::env;
use crate::snp::attester::{self, Attester, AttesterKind};
use crate::snp::cert::Cert;
use crate::snp::chain::{self, CertSourceKind, ChainCache, SideCarArgs};
use crate::snp::sim::SimOptions;
use crate::snp::verify::TrustStore;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "aasp",
    version,
    about = "Attests an AMD SEV-SNP confidential container and provisions secrets into it",
    long_about = "aasp runs beside a confidential workload: it reads the SNP attestation report, \
gathers the VCEK certificate chain, verifies reports offline, obtains \
attestation tokens and releases keys. Without SNP hardware, `--attester sim` uses a local \
simulated device whose chain is rooted in its own ARK."
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, env = env::AASP_LOG_FORMAT, default_value_t = LogFormat::Text, global = true, help_heading = GLOBAL)]
    log_format: LogFormat,
    /// TOML file of options, keyed by long option name (`maa-endpoint = "..."`). Flags and
    /// environment variables override it.
    #[arg(long, env = env::AASP_CONFIG, global = true, value_name = "FILE", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Keep the process dumpable: allow core dumps and ptrace attach (debugging only; a dump
    /// would hold released keys). By default both are disabled.
    #[arg(long, env = env::AASP_ALLOW_CORE_DUMPS, global = true, help_heading = GLOBAL)]
    allow_core_dumps: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify an SNP report offline: signature, certificate chain to AMD's (or a given) root,
    /// TCB and chip id against the VCEK. Exits 0 only when every check passes.
    Verify(verify::VerifyArgs),
    /// Fetch a report from the attester, print it decoded, and optionally verify it.
    Report(report::ReportArgs),
    /// Run the local Azure emulator (THIM, IMDS, Entra ID, MAA, Managed HSM over HTTPS) for the
    /// simulated SNP device.
    Emulate(azure::EmulateArgs),
    /// Create, import or show a key in Managed HSM / Key Vault (or the emulator).
    Key {
        #[command(subcommand)]
        command: azure::KeyCommand,
    },
    /// Compute a security-policy digest (host_data) or generate a release policy.
    Policy {
        #[command(subcommand)]
        command: azure::PolicyCommand,
    },
    /// Serve the gRPC services (keyprovider, attestation agent, getresource, health, reflection).
    Serve(serve::ServeArgs),
    /// Start the whole local stack: Azure emulator, simulated SNP device, demo keys, gRPC server.
    Dev(dev::DevArgs),
    /// Protect a secret for an HSM key, offline: writes base64(annotation JSON).
    Wrap(wrap::WrapArgs),
    /// Call any method aasp serves (gRPC over TCP or a Unix socket, or ttrpc), with grpcurl's
    /// method names and protobuf JSON: unwrap an annotation, ask for evidence, check health.
    Call(call::CallArgs),
    /// Trustee KBS tools: TEE keys and JWE resources.
    Kbs {
        #[command(subcommand)]
        command: kbs::KbsCommand,
    },
    /// Drop-in for Microsoft's SKR sidecar (also run as `skr.sh`): reads its SkrSideCarArgs,
    /// Port, ServerType, LogLevel and LogFile and serves its REST API or gRPC on 127.0.0.1:Port.
    Skr(skr::SkrArgs),
    /// Encrypted filesystems (the SKR `encfs` sidecar's images): make and check them.
    Encfs(encfs::EncfsArgs),
    /// Ask a running aasp for its gRPC health; exits 0 only when it is SERVING (for container
    /// health checks and Kubernetes exec probes, which reach the loopback listener).
    Health {
        /// gRPC address of the server.
        #[arg(long, default_value = "127.0.0.1:50000")]
        target: String,
    },
}

/// The `--help` heading of the options every command takes.
const GLOBAL: &str = "Global options";

/// Which attester to open, and the simulator's settings when it is the simulator.
#[derive(Debug, Args)]
#[command(next_help_heading = "Attester (SNP report source)")]
pub struct AttesterArgs {
    /// Report source: `auto` (/dev/sev-guest, else /dev/sev; never the simulator), `sev-guest`,
    /// `sev` (the legacy device of Azure Container Instances) or `sim` (the local simulator).
    #[arg(long, value_enum, env = env::AASP_ATTESTER, default_value_t = AttesterKind::Auto)]
    pub attester: AttesterKind,
    #[command(flatten)]
    pub sim: SimArgs,
}

impl AttesterArgs {
    pub fn state_dir(&self) -> PathBuf {
        self.sim.state_dir()
    }

    pub fn open(&self) -> Result<Arc<dyn Attester>, String> {
        attester::open(self.attester, &self.sim.sim_options()?).map_err(|e| e.to_string())
    }

    /// For servers: a missing guest device is logged once and awaited (health stays
    /// NOT_SERVING) instead of ending the process, so a pod without the device does not
    /// crash-loop and says why it is not ready.
    pub fn open_or_await(&self) -> Result<Arc<dyn Attester>, String> {
        let (attester, missing) = attester::open_or_await(self.attester, &self.sim.sim_options()?)
            .map_err(|e| e.to_string())?;
        if missing {
            tracing::warn!(
                "no SNP guest device (/dev/sev-guest, /dev/sev): serving with health NOT_SERVING; \
                 calls that need a report fail with FAILED_PRECONDITION until the device appears \
                 (mount it into the container, or use --attester sim for development)"
            );
        }
        Ok(attester)
    }
}

/// The state directory and the simulated device's settings.
#[derive(Debug, Args)]
#[command(next_help_heading = "Attester (SNP report source)")]
pub struct SimArgs {
    /// State directory (simulator identity and keys) [default: ~/.local/state/aasp].
    #[arg(long, env = env::AASP_STATE_DIR)]
    pub state_dir: Option<PathBuf>,
    /// Simulator: security policy file; host_data becomes SHA-256 of its text.
    #[arg(long, value_name = "FILE")]
    pub sim_security_policy: Option<PathBuf>,
    /// Simulator: set the guest policy's debug bit (MAA reports it as debuggable).
    #[arg(long)]
    pub sim_debug: bool,
    /// Simulator: reported TCB as 16 hex digits (re-issues the simulated VCEK to match).
    #[arg(long, value_name = "HEX", value_parser = parse_u64_hex)]
    pub sim_tcb: Option<u64>,
    /// Simulator: launch measurement, 96 hex digits.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_array::<48>)]
    pub sim_measurement: Option<[u8; 48]>,
}

impl SimArgs {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }

    pub fn sim_options(&self) -> Result<SimOptions, String> {
        let security_policy = self
            .sim_security_policy
            .as_deref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| format!("--sim-security-policy {}: {e}", p.display()))
            })
            .transpose()?;
        Ok(SimOptions {
            state_dir: self.state_dir(),
            measurement: self.sim_measurement,
            policy: self
                .sim_debug
                .then_some(crate::snp::sim::DEFAULT_POLICY | crate::snp::report::POLICY_DEBUG_BIT),
            security_policy,
            reported_tcb: self.sim_tcb,
            chip_id: None,
        })
    }
}

/// Outbound HTTPS settings: trust and patience.
#[derive(Debug, Args)]
#[command(next_help_heading = "Certificates and trust")]
pub struct TlsArgs {
    /// PEM file of extra CA certificates trusted for outbound HTTPS and for release-response
    /// signatures (TLS verification always stays on).
    #[arg(long, env = env::AASP_EXTRA_CA, value_name = "FILE")]
    pub extra_ca: Option<PathBuf>,
    /// Seconds an upstream call keeps retrying transient failures (429, 503, 408, connection
    /// errors, with backoff honouring Retry-After) when no RPC deadline bounds it: one-shot
    /// commands, start-up, background work. Calls made for an RPC retry until its deadline.
    #[arg(long, env = env::AASP_RETRY_BUDGET, value_name = "SECONDS",
        default_value_t = crate::http::DEFAULT_RETRY_BUDGET.as_secs())]
    pub retry_budget: u64,
}

impl TlsArgs {
    /// Trusts `extra_ca`, with the default retry budget.
    pub fn with_extra_ca(extra_ca: Option<PathBuf>) -> Self {
        TlsArgs {
            extra_ca,
            retry_budget: crate::http::DEFAULT_RETRY_BUDGET.as_secs(),
        }
    }

    /// How upstream calls retry: for `--retry-budget` seconds unless an RPC deadline says less.
    pub fn retry_policy(&self) -> crate::http::RetryPolicy {
        crate::http::RetryPolicy {
            budget: std::time::Duration::from_secs(self.retry_budget),
            ..Default::default()
        }
    }

    pub fn client(&self) -> Result<reqwest::Client, String> {
        self.client_with_roots(&crate::http::system_roots())
    }

    /// The HTTP client and the release-signature anchors a KMS client needs, both trusting the
    /// system's roots (read once for the two) and the extra CA.
    pub fn client_and_anchors(
        &self,
    ) -> Result<(reqwest::Client, crate::azure::jws::Anchors), String> {
        let roots = crate::http::system_roots();
        let client = self.client_with_roots(&roots)?;
        let anchors = crate::azure::jws::Anchors::roots_and(&roots, self.extra_ca.as_deref())
            .map_err(|e| e.to_string())?;
        Ok((client, anchors))
    }

    fn client_with_roots(
        &self,
        roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<reqwest::Client, String> {
        crate::http::client_with_roots(
            &crate::http::HttpOptions {
                extra_ca: self.extra_ca.clone(),
                ..Default::default()
            },
            roots,
        )
        .map_err(|e| e.to_string())
    }
}

/// Where the certificate chain comes from and which roots are trusted.
#[derive(Debug, Args)]
#[command(next_help_heading = "Certificates and trust")]
pub struct ChainArgs {
    /// Certificate chain source: `auto` (SkrSideCarArgs' certcache, else the security context
    /// if present, else THIM), `thim`, `azcache`, `kds` (AMD) or `security-context`.
    #[arg(long, value_enum, env = env::AASP_CERT_SOURCE, default_value_t = CertSourceKind::Auto)]
    pub cert_source: CertSourceKind,
    /// Endpoint of the chain source (THIM base URL, AzCache host, KDS base URL).
    #[arg(long, env = env::AASP_CERT_ENDPOINT)]
    pub cert_endpoint: Option<String>,
    /// PEM file of additional trusted ARKs, beside AMD's embedded Milan, Genoa and Turin roots.
    #[arg(long, env = env::AASP_TRUST_ROOT, value_name = "FILE")]
    pub trust_root: Vec<PathBuf>,
}

impl ChainArgs {
    /// The chain cache for `attester`. With the simulator and `--cert-source auto`, the chain
    /// is read from the simulator's security-context directory, through the same code that
    /// reads the platform's.
    pub fn chain_cache(
        &self,
        attester: &dyn Attester,
        state_dir: &Path,
        client: &reqwest::Client,
    ) -> Result<ChainCache, String> {
        let sidecar = SideCarArgs::from_env()?;
        let sim_context = (attester.name() == "sim" && self.cert_source == CertSourceKind::Auto)
            .then(|| state_dir.join("sim").join("security-context"));
        let kind = if sim_context.is_some() {
            CertSourceKind::SecurityContext
        } else {
            self.cert_source
        };
        Ok(ChainCache::new(chain::source(
            kind,
            self.cert_endpoint.as_deref(),
            sidecar.as_ref(),
            sim_context.as_deref(),
            client,
        )))
    }

    pub fn trust_store(&self, extra: Option<Cert>) -> Result<TrustStore, String> {
        let mut roots: Vec<Cert> = extra.into_iter().collect();
        for path in &self.trust_root {
            let pem =
                std::fs::read(path).map_err(|e| format!("--trust-root {}: {e}", path.display()))?;
            roots.extend(
                Cert::from_pem_bundle(&pem)
                    .map_err(|e| format!("--trust-root {}: {e}", path.display()))?,
            );
        }
        Ok(TrustStore::amd_and(roots))
    }
}

/// Where KMS access tokens come from: a token file if given, else AKS workload identity when its
/// variables are set, else IMDS.
pub fn identity_source(
    access_token_file: Option<&Path>,
    imds_endpoint: Option<String>,
    client_id: Option<String>,
) -> Result<crate::azure::identity::IdentitySource, String> {
    use crate::azure::identity::IdentitySource;
    Ok(match access_token_file {
        Some(path) => {
            // Read at start-up to fail early, then again for every token (it may be rotated).
            std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
            IdentitySource::TokenFile(path.to_path_buf())
        }
        None => IdentitySource::from_env(imds_endpoint, client_id),
    })
}

/// An error and its causes, outermost first ("transport error" alone says nothing).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A client command (`aasp health`, `aasp call`) that reaches no server: the cause, and the way
/// to one, since a first try usually meets nothing listening yet.
fn cannot_connect(target: &str, e: &dyn std::error::Error) -> String {
    format!(
        "cannot connect to {target}: {}; is aasp serving there? Start it (`aasp dev`, or `aasp \
         serve`), or give its address with --target",
        source_chain(e)
    )
}

async fn health(target: &str) -> Result<ExitCode, String> {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let url = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| format!("{target}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| cannot_connect(target, &e))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("{target}: {}", e.message()))?;
    let status =
        ServingStatus::try_from(reply.into_inner().status).unwrap_or(ServingStatus::Unknown);
    out!("{}", status.as_str_name())?;
    Ok(if status == ServingStatus::Serving {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Why `addr` cannot be listened on, and `fix`. A taken port is named without guessing who holds
/// it (an earlier aasp, or any other program): `ss` says.
pub fn listen_failure(addr: std::net::SocketAddr, e: &std::io::Error, fix: &str) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "cannot listen on {addr}: port {port} is already in use (`ss -ltnp 'sport = :{port}'` \
             shows which program holds it): stop that program, or {fix}",
            port = addr.port()
        )
    } else {
        format!("cannot listen on {addr}: {e}")
    }
}

/// Fails with [`listen_failure`] when `addr` cannot be bound now (port 0 always binds): before a
/// command writes state or starts work it would have to undo.
pub fn probe_port(addr: std::net::SocketAddr, fix: &str) -> Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| listen_failure(addr, &e, fix))
}

pub fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("aasp")
}

fn parse_u64_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("not a hex u64: {e}"))
}

fn parse_hex_array<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(s).map_err(|e| format!("not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("expected {N} bytes, got {}", b.len()))
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("standard input: {e}"))?;
        return Ok(buf);
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The tracing target of `announce!`'s records.
pub(crate) const STARTUP_TARGET: &str = "aasp::startup";

static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process logs JSON (`--log-format json`), set once by `init_logging`.
pub(crate) fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

fn init_logging(format: LogFormat, file: Option<std::fs::File>) {
    use tracing_subscriber::filter::{FilterExt as _, Targets};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        // Start-up lines pass at any level, as their text form on stdout does.
        .or(Targets::new().with_target(STARTUP_TARGET, tracing::Level::INFO));
    // Colour only for a person at a terminal: never in a log file, a pipe or a container log,
    // and never when NO_COLOR is set to anything but "" (no-color.org).
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()) && {
        std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    };
    let writer = match file {
        Some(file) => BoxMakeWriter::new(std::sync::Mutex::new(file)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
        LogFormat::Json => {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            registry.with(layer.json().with_filter(filter)).init();
        }
    }
}

/// Most threads the runtime's blocking pool starts.
const BLOCKING_THREADS: usize = 16;

/// Freed memory a heap keeps until the periodic trim (`serve`'s TRIM_PERIOD) rather than
/// returning it at once: more than a burst of 64 calls on one connection frees.
const KEEP_FREED_MEMORY: usize = 4 << 20;

/// Allocations up to this size come from the heap, not a mapping of their own: a connection's
/// write hold (at most 256 KiB) among them.
const HEAP_ALLOCATIONS_UP_TO: usize = 1 << 20;

/// Sets up logging and hardening, then runs one command on the async runtime: every command
/// line (aasp's own, the SKR sidecar's, the attestation agent's) ends here.
fn run_command(
    log_format: LogFormat,
    log_file: Option<std::fs::File>,
    allow_core_dumps: bool,
    command: impl std::future::Future<Output = Result<ExitCode, String>>,
) -> ExitCode {
    init_logging(log_format, log_file);
    if !allow_core_dumps {
        // Before any thread or secret exists. A failure (e.g. a seccomp filter) is reported,
        // not fatal: refusing to start would not make the keys safer.
        if let Err(e) = crate::hardening::disable_dumps() {
            tracing::warn!(error = %e, "cannot disable core dumps and ptrace attach");
        }
    }
    // One arena per core, set before any other thread exists (see the function).
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    crate::hardening::limit_malloc_arenas(cores);
    crate::hardening::keep_freed_memory_until_trimmed(KEEP_FREED_MEMORY, HEAP_ALLOCATIONS_UP_TO);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The blocking pool runs the attester's report and DNS lookups. 512 threads (tokio's
        // default) for a sidecar on a few cores only hold memory: 64 concurrent GetReports
        // started ~30 of them. Sixteen keep every core busy and leave room for slow lookups.
        .max_blocking_threads(BLOCKING_THREADS)
        // Idle blocking threads (and their stacks) go after 2 s instead of tokio's 10 s.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command line; the process exit code is the result.
pub fn main() -> ExitCode {
    // The file feeds the options' environment variables before clap reads them; this runs
    // before any thread exists.
    let args: Vec<String> = std::env::args().collect();
    // Started as Kata starts the CoCo attestation agent: upstream's command line, not aasp's.
    if attestation_agent::invoked(&args) {
        let agent = attestation_agent::AgentArgs::parse_from(&args);
        return run_command(LogFormat::Text, None, false, attestation_agent::run(agent));
    }
    if let Some(path) = config::config_path(&args) {
        match config::variables(std::path::Path::new(&path)) {
            Ok(vars) => vars
                .into_iter()
                .for_each(|(var, value)| std::env::set_var(var, value)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let cli = match skr::personality(&args).or_else(|| encfs_run::personality(&args)) {
        Some(argv) => Cli::parse_from(argv),
        None => Cli::parse(),
    };
    // A client's connection ends with the command: the ttrpc crate logs its own tasks being
    // cancelled then, and any failure that matters is the command's error already.
    if matches!(cli.command, Command::Call(_)) && std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,ttrpc=off");
    }
    let mut log_file = None;
    if let Command::Skr(skr_args) = &cli.command {
        match skr::prepare(skr_args) {
            Ok(file) => log_file = file,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            if let Ok(filter) = skr::filter_for(&skr_args.log_level) {
                std::env::set_var("RUST_LOG", filter);
            }
        }
    }
    if let Command::Encfs(encfs::EncfsArgs {
        command: encfs::EncfsCommand::Run(run_args),
    }) = &cli.command
    {
        match encfs_run::prepare(run_args) {
            Ok(file) => log_file = file,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            if let Ok(filter) = skr::filter_for(&run_args.log_level) {
                std::env::set_var("RUST_LOG", filter);
            }
        }
    }
    run_command(cli.log_format, log_file, cli.allow_core_dumps, async move {
        match cli.command {
            Command::Verify(args) => verify::run(args),
            Command::Report(args) => report::run(args).await,
            Command::Emulate(args) => azure::emulate(args).await,
            Command::Key { command } => azure::key(command).await,
            Command::Policy { command } => azure::policy(command),
            Command::Serve(args) => serve::run(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Wrap(args) => wrap::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Kbs { command } => kbs::run(command).await,
            Command::Skr(args) => skr::run(args).await,
            Command::Encfs(args) => encfs::run(args).await,
            Command::Health { target } => health(&target).await,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
