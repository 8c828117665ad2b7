//! `aasp dev`: the whole stack on one machine — the Azure emulator, the simulated SNP device,
//! two demo keys bound to the simulated workload, and the gRPC server wired to them through the
//! production clients.

use super::serve::{self, BackendArgs};
use super::{SimArgs, TlsArgs};
use crate::azure::identity::{IdentityProvider, IdentitySource, MHSM_RESOURCE};
use crate::azure::jwk::{Jwk, KeyFamily};
use crate::azure::jws::Anchors;
use crate::azure::kms::{KeyUrl, KmsClient};
use crate::azure::policy::ReleasePolicy;
use crate::http::RetryPolicy;
use crate::provision::layer::{spki_to_pem, KeyInfo};
use crate::service::{Backend, Listen};
use crate::snp::attester::Attester;
use crate::snp::sim::Simulated;
use aws_lc_rs::encoding::AsDer;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub const DEMO_RSA_KEY: &str = "demo-rsa";
pub const DEMO_OCT_KEY: &str = "demo-oct";

#[derive(Debug, Args)]
pub struct DevArgs {
    /// gRPC listeners (host:port or unix:///path); repeatable.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50000")]
    pub listen: Vec<Listen>,
    /// Where the Azure emulator listens (port 0 picks a free port). Loopback only, unless
    /// --emulator-allow-remote.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub emulator_listen: SocketAddr,
    /// Allow a non-loopback --emulator-listen: the emulator hands out keys to anyone who can
    /// reach it.
    #[arg(long)]
    pub emulator_allow_remote: bool,
    /// Launch measurement (96 hex digits) the emulated MAA reports as `azure-compliant-uvm`;
    /// repeatable. Every other measurement gets `azure-non-compliant`, and the demo keys'
    /// policies refuse it. Default: the simulator's own.
    #[arg(long, value_name = "HEX", value_parser = super::parse_hex_array::<48>)]
    pub accept_measurement: Vec<[u8; 48]>,
    /// State directory: simulator identity, emulator CA, keys, client configuration
    /// [default: ~/.local/state/aasp].
    #[arg(long, env = crate::env::AASP_STATE_DIR)]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics on this loopback address, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// The attestation-agent ttrpc socket (unix:///path), as `aasp serve --ttrpc-listen`
    /// [default: unix://<state-dir>/attestation-agent.sock].
    #[arg(long, value_name = "unix:///PATH")]
    pub ttrpc_listen: Option<Listen>,
    /// As `aasp serve --decrypt-threads` (the benchmark compares 0 with the default).
    #[arg(long, env = crate::env::AASP_DECRYPT_THREADS, value_name = "N")]
    pub decrypt_threads: Option<usize>,
}

/// The resource the emulated KBS holds for the demo (`kbs:///default/key/demo`).
pub const DEMO_KBS_RESOURCE: &str = "default/key/demo";

/// Seeds the demo KBS resource: 32 random bytes, a stand-in for a layer or disk key.
fn seed_kbs_resource(emulator: &crate::emulator::Running) -> Result<(), String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| "no randomness for the demo KBS resource".to_owned())?;
    emulator.kbs.put_resource(DEMO_KBS_RESOURCE, key.as_ref())
}

/// The running development stack.
pub struct DevStack {
    pub emulator: crate::emulator::Running,
    pub server: serve::Running,
    pub backend: Arc<Backend>,
    pub state_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub ocicrypt_config: PathBuf,
}

/// How `aasp dev` runs its emulator (and the one server option it passes on).
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    /// Serve the emulator on a non-loopback address.
    pub allow_remote: bool,
    /// Measurements MAA calls compliant; empty: the simulator's own.
    pub accept_measurements: Vec<[u8; 48]>,
    /// The server's `--decrypt-threads`; `None`: its default.
    pub decrypt_threads: Option<usize>,
}

/// Starts the emulator, imports the demo keys, writes client configuration and serves.
pub async fn start(
    listen: &[Listen],
    emulator_listen: SocketAddr,
    state_dir: &Path,
) -> Result<DevStack, String> {
    start_with(
        listen,
        emulator_listen,
        state_dir,
        &EmulatorOptions::default(),
    )
    .await
}

/// [`start`] with explicit emulator options.
pub async fn start_with(
    listen: &[Listen],
    emulator_listen: SocketAddr,
    state_dir: &Path,
    options: &EmulatorOptions,
) -> Result<DevStack, String> {
    check_loopback(listen, "--listen")?;
    // Before anything is written to the state directory: a taken port ends here, named.
    for l in listen {
        if let Listen::Tcp(addr) = l {
            super::probe_port(*addr, &format!("pass --listen {}:<a free port>", addr.ip()))?;
        }
    }
    if !emulator_listen.ip().is_loopback() && !options.allow_remote {
        return Err(format!(
            "--emulator-listen {emulator_listen} is not a loopback address; add --emulator-allow-remote to serve it"
        ));
    }
    let sim_args = SimArgs {
        state_dir: Some(state_dir.to_path_buf()),
        sim_security_policy: None,
        sim_debug: false,
        sim_tcb: None,
        sim_measurement: None,
    };
    let sim = Simulated::open(&sim_args.sim_options()?).map_err(|e| e.to_string())?;
    let mut config = crate::emulator::Config::new(state_dir.to_path_buf());
    config.listen = emulator_listen;
    config.extra_roots = sim.simulated_root().into_iter().collect();
    config.thim_json = Some(sim.thim_json());
    config.accepted_measurements =
        super::azure::accepted_measurements(options.accept_measurements.clone(), &sim);
    // The emulated KBS releases resources to the same measurements MAA calls compliant.
    config.kbs.policy.measurements = config.accepted_measurements.clone();
    // The emulator's URL is inside every annotation wrapped for the demo keys: reuse the port
    // of the previous run (when none was asked for), so those annotations still unwrap.
    let listen_file = state_dir.join("emulator").join("listen");
    let remembered = (emulator_listen.port() == 0)
        .then(|| std::fs::read_to_string(&listen_file).ok())
        .flatten()
        .and_then(|text| text.trim().parse::<SocketAddr>().ok())
        .filter(|addr| addr.ip() == emulator_listen.ip());
    let emulator = match remembered {
        Some(addr) => {
            let mut again = config.clone();
            again.listen = addr;
            match crate::emulator::start(again).await {
                Ok(emulator) => emulator,
                Err(e) => {
                    tracing::warn!(
                        "the emulator's previous address {addr} is not available ({e}): annotations \
                         wrapped in earlier runs name it and will not unwrap in this one"
                    );
                    crate::emulator::start(config)
                        .await
                        .map_err(|e| e.to_string())?
                }
            }
        }
        None => crate::emulator::start(config)
            .await
            .map_err(|e| e.to_string())?,
    };
    crate::files::write_private(&listen_file, emulator.host().as_bytes())
        .map_err(|e| format!("{}: {e}", listen_file.display()))?;
    seed_kbs_resource(&emulator)?;

    let keys_dir = state_dir.join("keys");
    let key_store = demo_key_store(state_dir);
    import_demo_keys(
        &emulator,
        &hex::encode(sim.host_data()),
        &keys_dir,
        &key_store,
    )
    .await?;
    let mut backend_args = BackendArgs::for_emulator(
        &emulator.url,
        &emulator.ca_path,
        state_dir,
        Some(keys_dir.clone()),
    );
    backend_args.decrypt_threads = options.decrypt_threads;
    let backend = backend_args.build()?;
    let server = serve::start(Arc::clone(&backend), listen).await?;
    let grpc = server
        .listeners
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let ocicrypt_config = state_dir.join("ocicrypt_keyprovider.conf");
    let conf = serde_json::json!({ "key-providers": { "attestation-agent": { "grpc": grpc } } });
    // Read by ocicrypt clients that may run as other users: public, but only aasp writes it.
    crate::files::write_public(&ocicrypt_config, conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(DevStack {
        emulator,
        server,
        backend,
        state_dir: state_dir.to_path_buf(),
        keys_dir,
        ocicrypt_config,
    })
}

/// `aasp dev` listens on loopback only, and has no `--allow-remote` (`aasp serve`'s): its demo
/// keys would go to whoever can connect. The refusal names what works instead.
fn check_loopback(listen: &[Listen], flag: &str) -> Result<(), String> {
    for l in listen {
        if let Listen::Tcp(addr) = l {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{flag} {addr}: aasp dev listens on loopback only (127.0.0.1 or [::1]), since \
                     anyone who connects gets its demo keys; to reach it from another machine, \
                     forward a port over SSH (ssh -L {port}:127.0.0.1:{port} THIS-HOST) and \
                     listen on 127.0.0.1:{port}",
                    port = addr.port()
                ));
            }
        }
    }
    Ok(())
}

/// The demo keys' material, kept in the state directory (mode 0600) so that secrets wrapped
/// for them survive a restart of `aasp dev`. Development keys of the emulator's HSM only.
#[derive(serde::Serialize, serde::Deserialize)]
struct DemoKeys {
    /// PKCS#8 DER of the RSA-3072 key, standard base64.
    rsa_pkcs8: String,
    /// The AES-256 key, standard base64.
    oct: String,
}

impl Drop for DemoKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.rsa_pkcs8.zeroize();
        self.oct.zeroize();
    }
}

fn demo_key_store(state_dir: &Path) -> PathBuf {
    state_dir.join("emulator").join("demo-keys.json")
}

/// Loads the demo keys from `store`, or makes and stores new ones.
fn demo_keys(store: &Path) -> Result<(Jwk, Jwk), String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let keys = match std::fs::read(store) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            serde_json::from_slice::<DemoKeys>(&text).map_err(|e| {
                format!("{}: {e} (delete it to make new demo keys)", store.display())
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072)
                .map_err(|_| "RSA generation failed")?;
            let rsa_der = rsa.as_der().map_err(|_| "RSA encoding failed")?;
            let mut oct = zeroize::Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::SecureRandom::fill(
                &aws_lc_rs::rand::SystemRandom::new(),
                oct.as_mut(),
            )
            .map_err(|_| "no randomness")?;
            let keys = DemoKeys {
                rsa_pkcs8: b64.encode(rsa_der.as_ref()),
                oct: b64.encode(oct.as_ref()),
            };
            let text =
                zeroize::Zeroizing::new(serde_json::to_vec(&keys).map_err(|e| e.to_string())?);
            if let Some(dir) = store.parent() {
                crate::files::create_private_dir(dir).map_err(|e| e.to_string())?;
            }
            crate::files::write_private(store, &text)
                .map_err(|e| format!("{}: {e}", store.display()))?;
            keys
        }
        Err(e) => return Err(format!("{}: {e}", store.display())),
    };
    let bad = |what: &str| {
        format!(
            "{}: {what} is not valid (delete the file to make new demo keys)",
            store.display()
        )
    };
    let rsa_der =
        zeroize::Zeroizing::new(b64.decode(&keys.rsa_pkcs8).map_err(|_| bad("rsa_pkcs8"))?);
    let oct = zeroize::Zeroizing::new(b64.decode(&keys.oct).map_err(|_| bad("oct"))?);
    let rsa_jwk = Jwk::from_pkcs8(KeyFamily::Rsa, &rsa_der).map_err(|_| bad("rsa_pkcs8"))?;
    Ok((rsa_jwk, Jwk::oct(&oct)))
}

async fn import_demo_keys(
    emulator: &crate::emulator::Running,
    hostdata: &str,
    keys_dir: &Path,
    key_store: &Path,
) -> Result<(), String> {
    let client = TlsArgs::with_extra_ca(Some(emulator.ca_path.clone())).client()?;
    let identity = IdentityProvider::new(
        client.clone(),
        IdentitySource::Imds {
            base: emulator.url.clone(),
            client_id: None,
        },
        RetryPolicy::default(),
    );
    let access = identity
        .token(MHSM_RESOURCE)
        .await
        .map_err(|e| e.to_string())?;
    let anchors = Anchors::from_pem_file(&emulator.ca_path).map_err(|e| e.to_string())?;
    let kms = KmsClient::new(client, anchors, RetryPolicy::default());
    let policy = ReleasePolicy::for_hostdata(&emulator.host(), hostdata, &[]);

    let (rsa_jwk, oct_jwk) = demo_keys(key_store)?;
    for (name, jwk) in [(DEMO_RSA_KEY, &rsa_jwk), (DEMO_OCT_KEY, &oct_jwk)] {
        let key = KeyUrl::new(&emulator.url, name).map_err(|e| e.to_string())?;
        kms.import(&key, jwk, &policy, &access)
            .await
            .map_err(|e| e.to_string())?;
    }

    crate::files::create_private_dir(keys_dir).map_err(|e| e.to_string())?;
    let spki = rsa_jwk.rsa_public_spki().map_err(|e| e.to_string())?;
    crate::files::write_public(
        &keys_dir.join(format!("{DEMO_RSA_KEY}.pem")),
        spki_to_pem(&spki).as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    for (name, public_key_path) in [
        (DEMO_RSA_KEY, format!("{DEMO_RSA_KEY}.pem")),
        (DEMO_OCT_KEY, String::new()),
    ] {
        let info = KeyInfo {
            public_key_path,
            kms_endpoint: emulator.url.clone(),
            attester_endpoint: emulator.host(),
        };
        let path = keys_dir.join(format!("{name}-info.json"));
        let text = serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?;
        // Names the key layers are wrapped to: nobody else may change it.
        crate::files::write_private(&path, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub async fn run(args: DevArgs) -> Result<ExitCode, String> {
    serve::warm_up_randomness();
    // Absolute, so that the printed lines run from any directory.
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(super::default_state_dir);
    let state_dir = std::path::absolute(&state_dir)
        .map_err(|e| format!("--state-dir {}: {e}", state_dir.display()))?;
    let options = EmulatorOptions {
        allow_remote: args.emulator_allow_remote,
        accept_measurements: args.accept_measurement.clone(),
        decrypt_threads: args.decrypt_threads,
    };
    let mut stack = start_with(&args.listen, args.emulator_listen, &state_dir, &options).await?;
    let exe = running_binary();
    // Stored by start_with: a plain read now.
    let (rsa, oct) = demo_keys(&demo_key_store(&state_dir))?;
    let encfs = super::dev_encfs::seed(&stack, oct, rsa, &exe).await;
    // The guide lists the gRPC listeners only: the metrics listener joins the same server below.
    let grpc_listeners = stack.server.listeners.clone();
    if let Some(addr) = args.metrics_listen {
        let metrics = Listen::Tcp(addr);
        check_loopback(std::slice::from_ref(&metrics), "--metrics-listen")?;
        let bound = crate::service::Bound::bind(&metrics)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        say!("metrics: http://{}/metrics", bound.local());
        stack.server.add(bound, crate::metrics::router());
    }
    let ttrpc = args
        .ttrpc_listen
        .clone()
        .unwrap_or_else(|| Listen::Unix(state_dir.join("attestation-agent.sock")));
    serve::serve_ttrpc(
        &mut stack.server,
        &stack.backend,
        std::slice::from_ref(&ttrpc),
    )?;
    print_guide(&stack, &grpc_listeners, &ttrpc, &exe, &encfs);
    serve::wait_for_signal().await;
    say!("stopping");
    stack.server.shutdown(Duration::from_secs(5)).await;
    stack.emulator.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// The binary that is running, so the printed lines work after `cargo run` without aasp on PATH.
fn running_binary() -> String {
    std::env::current_exe()
        .map(|p| shell_word(&p.display().to_string()))
        .unwrap_or_else(|_| "aasp".into())
}

fn print_guide(
    stack: &DevStack,
    grpc_listeners: &[Listen],
    ttrpc: &Listen,
    exe: &str,
    encfs: &Result<super::dev_encfs::EncfsDemo, String>,
) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let grpc = grpc_listeners
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let call = format!("{exe} call --target {}", shell_word(&grpc));
    let keys_dir = shell_word(&stack.keys_dir.display().to_string());
    let state_dir = shell_word(&stack.state_dir.display().to_string());
    let ca = shell_word(&stack.emulator.ca_path.display().to_string());
    for l in grpc_listeners {
        say!("aasp serving gRPC on {l}");
    }
    say!(
        "attester: sim (simulated SEV-SNP); certificate chain: THIM at {}",
        stack.emulator.url
    );
    say!(
        "Azure emulator: {} (dev CA {})",
        stack.emulator.url,
        stack.emulator.ca_path.display()
    );
    say!(
        "demo keys: {DEMO_RSA_KEY} (RSA-3072), {DEMO_OCT_KEY} (AES-256), key info in {}",
        stack.keys_dir.display()
    );
    say!("ocicrypt config: {}", stack.ocicrypt_config.display());
    let wrap = serde_json::json!({
        "op": "keywrap",
        "keywrapparams": {
            "ec": { "Parameters": { "attestation-agent": [b64.encode(format!("aasp:{DEMO_RSA_KEY}"))] } },
            "optsdata": b64.encode([0x42u8; 32]),
        }
    });
    say!();
    say!("Try it: each `$` line runs as printed, from any directory (`{exe} call list` names every method):");
    say!("  $ {call} keyprovider.KeyProviderService/SayHello -d '{{\"name\":\"dev\"}}'");
    say!("  $ {call} keyprovider.KeyProviderService/GetReport -d '{{\"reportDataHexString\":\"00ff\"}}'");
    say!(
        "  $ {call} keyprovider.KeyProviderService/WrapKey --decode -d '{{\"KeyProviderKeyWrapProtocolInput\":\"{}\"}}'",
        b64.encode(wrap.to_string())
    );
    match write_demo_annotation(&stack.keys_dir, &stack.state_dir) {
        Ok(path) => say!(
            "  $ {call} keyprovider.KeyProviderService/UnWrapKey --decode --annotation {}",
            shell_word(&path.display().to_string())
        ),
        Err(e) => say!("  (no UnWrapKey example: {e})"),
    }
    say!("  $ {call} attestation_agent.AttestationAgentService/GetEvidence --decode -d '{{\"RuntimeData\":\"{}\"}}'", b64.encode("{}"));
    say!("  $ {call} attestation_agent.AttestationAgentService/GetToken --decode -d '{{\"TokenType\":\"maa\"}}'");
    say!("  # The same agent over ttrpc, as Kata's guest components call it:");
    say!(
        "  $ {exe} call --ttrpc --target {} attestation_agent.AttestationAgentService/GetTeeType",
        shell_word(&ttrpc.to_string())
    );
    say!("  # Trustee KBS (emulated): a token with its TEE key, then a resource over RCAR (raw bytes: -o FILE):");
    say!("  $ {call} attestation_agent.AttestationAgentService/GetToken --decode -d '{{\"TokenType\":\"kbs\"}}'");
    say!(
        "  $ {call} getresource.GetResourceService/GetResource -d '{{\"ResourcePath\":\"kbs:///{DEMO_KBS_RESOURCE}\",\"KbcName\":\"cc_kbc\"}}' -o /tmp/aasp-kbs-resource.bin"
    );
    say!(
        "  $ {exe} kbs get-resource kbs:///{DEMO_KBS_RESOURCE} --kbs-url {} --extra-ca {ca} --attester sim --state-dir {state_dir} > /tmp/aasp-kbs-resource.bin",
        stack.emulator.url,
    );
    say!(
        "  $ {call} getresource.GetResourceService/GetResource -d '{{\"ResourcePath\":\"{DEMO_OCT_KEY}\",\"KbcName\":\"aasp\",\"KbsUri\":\"{}\"}}' -o /tmp/aasp-demo-oct.key",
        stack.emulator.url
    );
    say!("  $ {call} grpc.health.v1.Health/Check");
    say!("Protect a secret of your own (up to 318 bytes for RSA-3072) for the demo key, then unwrap it:");
    say!(
        "  $ printf 'my secret' > /tmp/aasp-secret.txt && {exe} wrap --key-ref {DEMO_RSA_KEY} --keys-dir {keys_dir} --in /tmp/aasp-secret.txt --out /tmp/aasp-secret.annotation"
    );
    say!("  $ {call} keyprovider.KeyProviderService/UnWrapKey --annotation /tmp/aasp-secret.annotation -o /tmp/aasp-secret.out && cat /tmp/aasp-secret.out");
    say!("Python client (grpcio, a venv with generated stubs; run from the repository root):");
    say!(
        "  $ examples/python/setup.sh target/pyvenv target/pystubs && target/pyvenv/bin/python examples/python/aasp_client.py --target {grpc} --keys-dir {keys_dir} --stubs target/pystubs"
    );
    say!("The SKR sidecar's drop-in against this emulator (docs/skr.md; it runs until stopped, so no `$`):");
    say!("    {}", skr_command(exe, stack));
    match encfs {
        Ok(demo) => {
            let shown = |what: &dyn Fn(&super::dev_encfs::DemoFilesystem) -> String| {
                demo.filesystems
                    .iter()
                    .map(what)
                    .collect::<Vec<_>>()
                    .join(" and ")
            };
            say!(
                "The encfs sidecar's drop-in mounts the encrypted demo images {} (keys {DEMO_OCT_KEY}, and {DEMO_RSA_KEY} with a salt; docs/encfs.md) at {} (it needs root and runs until stopped, so no `$`):",
                shown(&|fs| fs.url.clone()),
                shown(&|fs| fs.mount_point.display().to_string())
            );
            say!("    {}", demo.command);
            say!(
                "  then read {} from another terminal; SIGTERM or Ctrl-C unmounts them.",
                shown(&|fs| fs
                    .mount_point
                    .join(super::dev_encfs::DEMO_ENCFS_FILE)
                    .display()
                    .to_string())
            );
            say!("  # Each key, released as the sidecar gets it, checked against its image (the salt is in IMAGE.encfs.json):");
            for fs in &demo.filesystems {
                say!("  $ {}", fs.check_command);
            }
        }
        Err(e) => say!("(no encrypted demo filesystem: {e})"),
    }
    say!(
        "Demo keys, the emulator's port and its CA persist in {}: annotations wrapped now still unwrap after a restart.",
        stack.state_dir.display()
    );
    say!("Ctrl-C stops everything.");
}

/// `aasp skr` as the sidecar's `/skr.sh` contract starts it (environment only), pointed at this
/// stack: the simulated device of the same state directory, the emulator as IMDS, THIM, MAA and
/// HSM, trusted through its dev CA.
fn skr_command(exe: &str, stack: &DevStack) -> String {
    use base64::Engine;
    let certcache = serde_json::json!({ "certcache": certcache(stack) });
    let mut vars = vec![(
        crate::env::SKR_SIDECAR_ARGS,
        base64::engine::general_purpose::STANDARD.encode(certcache.to_string()),
    )];
    vars.extend(sidecar_env(stack));
    vars.push(("Port", "8080".to_owned()));
    command_line(&vars, &format!("{exe} skr"))
}

/// `NAME=value … command`, each value one shell word.
pub(super) fn command_line(vars: &[(&str, String)], command: &str) -> String {
    let mut line: Vec<String> = vars
        .iter()
        .map(|(name, value)| format!("{name}={}", shell_word(value)))
        .collect();
    line.push(command.to_owned());
    line.join(" ")
}

/// The sidecars' `certcache`: the emulator's THIM.
pub(super) fn certcache(stack: &DevStack) -> serde_json::Value {
    serde_json::json!({
        "endpoint_type": "LocalTHIM",
        "endpoint": format!("{}/metadata/THIM/amd/certification", stack.emulator.url),
    })
}

/// The `AASP_*` settings a sidecar (`aasp skr`, `aasp encfs run`) needs for this stack.
pub(super) fn sidecar_env(stack: &DevStack) -> Vec<(&'static str, String)> {
    let host = stack.emulator.host();
    vec![
        (crate::env::AASP_ATTESTER, "sim".to_owned()),
        (
            crate::env::AASP_STATE_DIR,
            stack.state_dir.display().to_string(),
        ),
        (crate::env::AASP_CERT_SOURCE, "thim".to_owned()),
        (crate::env::AASP_IMDS_ENDPOINT, stack.emulator.url.clone()),
        (
            crate::env::AASP_EXTRA_CA,
            stack.emulator.ca_path.display().to_string(),
        ),
        (crate::env::AASP_ALLOW_MAA_HOST, host.clone()),
        (crate::env::AASP_ALLOW_KMS_HOST, host),
    ]
}

/// `word` as one shell word: as is when it holds nothing a shell would read, else single-quoted.
pub(super) fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Writes a demo annotation (a secret wrapped offline to demo-rsa, as `aasp wrap` would) into
/// the state directory, for the printed UnWrapKey line.
fn write_demo_annotation(keys_dir: &Path, state_dir: &Path) -> Result<PathBuf, String> {
    let resolved = crate::provision::layer::resolve(DEMO_RSA_KEY, Some(keys_dir), None)
        .map_err(|e| e.to_string())?;
    let public = resolved
        .public
        .as_ref()
        .ok_or("demo-rsa has no public key")?;
    let packet = crate::provision::layer::wrap_rsa(&resolved, public, DEMO_SECRET)
        .map_err(|e| e.to_string())?;
    let path = state_dir.join("demo-secret.annotation");
    crate::files::write_public(&path, packet.to_annotation().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(path)
}

/// What the demo annotation holds.
pub const DEMO_SECRET: &[u8] = b"hello from aasp dev";
