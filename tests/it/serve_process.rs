//! `aasp serve` as a process: start-up lines, metrics, loopback refusal, and a clean exit 0 on
//! SIGTERM.

use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, HelloRequest,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread")]
async fn serves_reports_metrics_and_exits_zero_on_sigterm() {
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "serve",
            "--attester",
            "sim",
            "--state-dir",
            state.path().to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut grpc = String::new();
    let mut metrics = String::new();
    let mut attester_line = String::new();
    while attester_line.is_empty() {
        let line = lines.next().expect("serve exited early").unwrap();
        if let Some(addr) = line.strip_prefix("aasp serving gRPC on ") {
            grpc = addr.to_owned();
        } else if let Some(url) = line.strip_prefix("aasp serving metrics on ") {
            metrics = url.to_owned();
        } else if line.starts_with("attester: ") {
            attester_line = line;
        }
    }
    assert!(
        attester_line.contains("sim") && attester_line.contains("security context"),
        "{attester_line}"
    );

    let mut client = KeyProviderServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let reply = client
        .say_hello(HelloRequest {
            name: "metrics".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "Hello metrics");
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"aasp_rpc_requests_total{method="keyprovider/SayHello",status="Ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("aasp_rpc_duration_seconds_count{method=\"keyprovider/SayHello\"} 1"),
        "{text}"
    );
    assert!(text.contains("aasp_releases_in_flight 0"));

    let mut serving = false;
    for _ in 0..50 {
        let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
            .args(["health", "--target", &grpc])
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(serving, "aasp health never saw SERVING");

    sigterm(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("rpc done") && stderr.contains("keyprovider/SayHello"),
        "one log line per RPC: {stderr}"
    );
    assert!(
        !stderr.contains("Hello metrics"),
        "payloads are never logged"
    );
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn non_loopback_listeners_need_allow_remote() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "serve",
            "--attester",
            "sim",
            "--state-dir",
            state.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

#[test]
fn serve_help_documents_every_option_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "[default: 127.0.0.1:50000]",
        "[env: AASP_LISTEN=]",
        "--rest-listen",
        "--metrics-listen",
        "--maa-endpoint",
        "--keys-dir",
        "--cache-ttl",
        "[default: 300]",
        "--attester",
        "--cert-source",
        "--extra-ca",
        "--allow-remote",
        "--shutdown-grace",
    ] {
        assert!(help.contains(needle), "serve --help lacks {needle}");
    }
}

#[test]
fn a_config_file_sets_options_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aasp.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        format!(
            "listen = [\"0.0.0.0:0\"]\nattester = \"sim\"\nstate-dir = {:?}\n",
            state.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0.0.0.0:0 is not a loopback address"),
        "the file's listen was used"
    );

    std::fs::write(&config, "maa_endpoint = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option \"maa_endpoint\""));
}

#[test]
fn health_fails_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["health", "--target", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// Issue 11 items 1 and 7: allow-list patterns and the configured MAA are checked at start-up,
/// from flags, environment and the config file alike, with a message naming what is wrong.
#[test]
fn bad_endpoints_and_host_patterns_stop_start_up_readably() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("aasp.toml");
    std::fs::write(
        &config,
        "allow-maa-host = [\"maa.example\", \"a.*.example\"]\n",
    )
    .unwrap();
    let base = [
        "serve",
        "--attester",
        "sim",
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (
            &["--allow-kms-host", "kms.example,http://x.example"],
            None,
            "only https",
        ),
        (&[], Some(("AASP_ALLOW_KMS_HOST", "*.")), "host pattern"),
        (
            &["--config", config.to_str().unwrap()],
            None,
            "only a leading \"*.\"",
        ),
        (
            &["--maa-endpoint", "https://victim.example:1@127.0.0.1:1"],
            None,
            "user information",
        ),
    ];
    for (extra, env, says) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aasp"));
        command.args(base).args(extra).env_remove("AASP_CONFIG");
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
}
