//! A fleet scaling out against a throttling Azure: N `aasp key release` processes started
//! together against the emulator answering 429 (`Retry-After: 1`) to a share of all requests.
//! Every release must succeed (retries are bounded by time, not by a count); the figure is how
//! many upstream requests each release cost.
//!
//! ```text
//! cargo build --release --bin aasp --example fleet
//! target/release/examples/fleet --aasp target/release/aasp --processes 40 --faults status=429@0.5
//! ```
//! The emulator runs in this process (so that it can count every request it is sent); the
//! releases run as separate `aasp key release` processes with the simulated device, each with
//! the default retry budget of a one-shot command.

use aasp::azure::identity::{IdentityProvider, IdentitySource, MHSM_RESOURCE};
use aasp::azure::jwk::Jwk;
use aasp::azure::jws::Anchors;
use aasp::azure::kms::{KeyUrl, KmsClient};
use aasp::azure::policy::ReleasePolicy;
use aasp::emulator::faults::Faults;
use aasp::http::{HttpOptions, RetryPolicy};
use aasp::snp::attester::Attester as _;
use aasp::snp::sim::{SimOptions, Simulated};
use clap::Parser;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// The aasp binary whose `key release` each process runs.
    #[arg(long, default_value = "target/release/aasp")]
    aasp: PathBuf,
    /// Releases started together, one process each.
    #[arg(long, default_value_t = 40)]
    processes: usize,
    /// Faults the emulator injects (its `--faults` syntax).
    #[arg(long, default_value = "status=429@0.5")]
    faults: String,
    /// State directory (simulator identity, emulator CA); a temporary one by default.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let faults: Faults = args.faults.parse()?;
    let temp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let state = args
        .state_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let sim = Simulated::open(&SimOptions {
        state_dir: state.clone(),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let mut config = aasp::emulator::Config::new(state.clone());
    config.extra_roots = sim.simulated_root().into_iter().collect();
    config.thim_json = Some(sim.thim_json());
    config.accepted_measurements = vec![sim.measurement()];
    let emulator = aasp::emulator::start(config)
        .await
        .map_err(|e| e.to_string())?;

    // The key, imported before the faults start.
    let client = aasp::http::client(&HttpOptions {
        extra_ca: Some(emulator.ca_path.clone()),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let access = IdentityProvider::new(
        client.clone(),
        IdentitySource::Imds {
            base: emulator.url.clone(),
            client_id: None,
        },
        RetryPolicy::default(),
    )
    .token(MHSM_RESOURCE)
    .await
    .map_err(|e| e.to_string())?;
    let anchors = Anchors::from_pem_file(&emulator.ca_path).map_err(|e| e.to_string())?;
    let key = KeyUrl::new(&emulator.url, "fleet").map_err(|e| e.to_string())?;
    let policy = ReleasePolicy::for_hostdata(&emulator.host(), &hex::encode(sim.host_data()), &[]);
    KmsClient::new(client, anchors, RetryPolicy::default())
        .import(&key, &Jwk::oct(&[7; 32]), &policy, &access)
        .await
        .map_err(|e| e.to_string())?;

    emulator.set_faults(faults);
    let before = emulator.counters.requests();
    let started = Instant::now();
    let releases = (0..args.processes).map(|_| {
        tokio::process::Command::new(&args.aasp)
            .args(["key", "release", "--name", "fleet"])
            .args(["--kms", &emulator.url, "--maa", &emulator.host()])
            .args(["--imds-endpoint", &emulator.url])
            .arg("--extra-ca")
            .arg(&emulator.ca_path)
            .args(["--attester", "sim", "--state-dir"])
            .arg(&state)
            .env_remove("AASP_ACCESS_TOKEN_FILE")
            .env_remove("AZURE_FEDERATED_TOKEN_FILE")
            .output()
    });
    let outputs = futures_util::future::join_all(releases).await;
    let wall = started.elapsed();
    let requests = emulator.counters.requests() - before;
    let mut failed = 0;
    for output in outputs {
        let output = output.map_err(|e| e.to_string())?;
        if !output.status.success() {
            failed += 1;
            eprintln!(
                "a release failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    let n = args.processes;
    println!(
        "fleet: {n} aasp key release processes against --faults {}: {} of {n} released in {:.1} s; \
         {requests} upstream requests, {:.1} per release",
        args.faults,
        n - failed,
        wall.as_secs_f64(),
        requests as f64 / n as f64
    );
    emulator.shutdown();
    if failed > 0 {
        return Err(format!("{failed} of {n} releases failed"));
    }
    Ok(())
}
