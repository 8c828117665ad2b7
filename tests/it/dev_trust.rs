//! `aasp dev` as a trust boundary: which guests its emulated MAA vouches for, where its emulator
//! may listen, and what it tells the user about its listeners.

use aasp::cli::dev::{start_with, EmulatorOptions, DEMO_OCT_KEY};
use aasp::provision::KeyRef;
use aasp::service::Listen;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn loopback() -> Vec<Listen> {
    vec![Listen::Tcp("127.0.0.1:0".parse().unwrap())]
}

/// By default the demo keys release to the simulator's own guest; with another accepted
/// measurement the emulated MAA calls the simulator's guest `azure-non-compliant` and the demo
/// key's policy refuses it.
#[tokio::test]
async fn demo_keys_release_only_to_accepted_measurements() {
    let dir = tempfile::tempdir().unwrap();
    let stack = start_with(
        &loopback(),
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
        &EmulatorOptions::default(),
    )
    .await
    .unwrap();
    let key = KeyRef::azure(&stack.emulator.url, DEMO_OCT_KEY, &stack.emulator.host()).unwrap();
    stack.backend.provisioner.release(&key).await.unwrap();
    stack
        .server
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    stack.emulator.shutdown();

    let dir = tempfile::tempdir().unwrap();
    let options = EmulatorOptions {
        accept_measurements: vec![[0x77; 48]],
        ..Default::default()
    };
    let stack = start_with(
        &loopback(),
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
        &options,
    )
    .await
    .unwrap();
    let key = KeyRef::azure(&stack.emulator.url, DEMO_OCT_KEY, &stack.emulator.host()).unwrap();
    let err = stack
        .backend
        .provisioner
        .release(&key)
        .await
        .expect_err("a guest MAA does not vouch for must get no key")
        .to_string();
    assert!(
        err.contains("403") && err.contains("azure-non-compliant"),
        "{err}"
    );
    assert_eq!(stack.emulator.counters.release(), 0);
    stack
        .server
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    stack.emulator.shutdown();
}

#[tokio::test]
async fn the_emulator_listens_on_loopback_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_with(
        &loopback(),
        "0.0.0.0:0".parse().unwrap(),
        dir.path(),
        &EmulatorOptions::default(),
    )
    .await
    .err()
    .expect("a non-loopback emulator address must be refused");
    assert!(err.contains("--emulator-allow-remote"), "{err}");
}

/// The guide lists the gRPC listeners; the metrics listener is printed as metrics only.
#[test]
fn dev_prints_the_metrics_listener_as_metrics_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--state-dir",
            dir.path().to_str().unwrap(),
        ])
        .env_remove("AZURE_CLIENT_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut grpc = Vec::new();
    let mut metrics = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("aasp serving gRPC on ") {
            grpc.push(addr.trim().to_owned());
        }
        if let Some(url) = line.strip_prefix("metrics: http://") {
            metrics = url.strip_suffix("/metrics").map(str::to_owned);
        }
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let metrics = metrics.expect("the metrics listener is announced");
    assert_eq!(grpc.len(), 1, "{grpc:?}");
    assert!(
        !grpc.contains(&metrics),
        "metrics {metrics} listed as gRPC: {grpc:?}"
    );
}

/// `aasp serve --self-check` and the requirement flags: the server verifies its own report
/// before health says SERVING, so a platform below the requirements never serves keys.
#[tokio::test]
async fn the_self_check_holds_back_a_platform_below_the_requirements() {
    use aasp::cli::serve::{BackendArgs, RequirementArgs};
    let dir = tempfile::tempdir().unwrap();
    let sim = aasp::snp::sim::Simulated::open(&aasp::snp::sim::SimOptions {
        state_dir: dir.path().into(),
        ..Default::default()
    })
    .unwrap();
    let mut config = aasp::emulator::Config::new(dir.path().into());
    config.extra_roots = aasp::snp::attester::Attester::simulated_root(&sim)
        .into_iter()
        .collect();
    config.thim_json = Some(sim.thim_json());
    let emulator = aasp::emulator::start(config).await.unwrap();
    let backend_with = |requirements: RequirementArgs, self_check: bool| {
        let mut args =
            BackendArgs::for_emulator(&emulator.url, &emulator.ca_path, dir.path(), None);
        args.requirements = requirements;
        args.self_check = self_check;
        args.build().unwrap()
    };

    // The simulated platform has SMT enabled.
    let backend = backend_with(
        RequirementArgs {
            deny_smt: true,
            ..Default::default()
        },
        false,
    );
    let err = aasp::service::ready(&backend).await.unwrap_err();
    assert!(err.contains("SMT disabled"), "{err}");
    let backend = backend_with(
        RequirementArgs {
            min_tcb: Some("snp=9".parse().unwrap()),
            ..Default::default()
        },
        false,
    );
    let err = aasp::service::ready(&backend).await.unwrap_err();
    assert!(err.contains("minimum TCB"), "{err}");

    // Requirements it meets (the simulator reports SNP 8 at VMPL 0, no migration agent).
    let backend = backend_with(
        RequirementArgs {
            min_tcb: Some("bootloader=3,snp=8,microcode=115".parse().unwrap()),
            max_vmpl: Some(0),
            deny_migration_agent: true,
            ..Default::default()
        },
        false,
    );
    aasp::service::ready(&backend).await.unwrap();
    let backend = backend_with(RequirementArgs::default(), true);
    assert!(backend.self_check.is_some());
    aasp::service::ready(&backend).await.unwrap();
    emulator.shutdown();
}

/// Issue 11 item 3 through `aasp dev`'s other listener: the emulator runs in the same process, so
/// idle connections to it took the descriptors the gRPC server needs (it accepted without bound
/// and never timed out a TLS handshake). 300 idle connections to the emulator of an `aasp dev`
/// allowed 256 descriptors (the emulator serves 128 at once): health on the gRPC listener must still
/// answer.
#[test]
fn idle_connections_to_the_emulator_cannot_starve_the_server() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_aasp"))
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut grpc, mut emulator) = (String::new(), String::new());
    while grpc.is_empty() || emulator.is_empty() {
        let line = lines.next().expect("dev exited early").unwrap();
        if let Some(addr) = line.strip_prefix("aasp serving gRPC on ") {
            grpc = addr.to_owned();
        } else if let Some(rest) = line.strip_prefix("Azure emulator: https://") {
            emulator = rest.split_whitespace().next().unwrap().to_owned();
        }
    }
    let _idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&emulator).unwrap())
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let health = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
            let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))?
                .connect()
                .await?;
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
        })
        .await
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        matches!(health, Ok(Ok(_))),
        "health did not answer: {health:?}"
    );
}
