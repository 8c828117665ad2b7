//! A newcomer's first hour (issue 27): `aasp call` against every transport, errors that name a
//! fix the user's mode has, and command-line manners (colour, broken pipes, empty input, taken
//! ports). Each test runs the real binary.

use crate::common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn aasp() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aasp"));
    // The runner's environment must not steer the commands under test.
    for var in ["AASP_ATTESTER", "AASP_STATE_DIR", "NO_COLOR", "RUST_LOG"] {
        command.env_remove(var);
    }
    command
}

/// Runs a command off the async workers, so the in-process server keeps answering it.
async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The first gRPC listener of the in-process `aasp dev` stack, as `--target` takes it.
fn target(dev: &common::Dev) -> String {
    dev.stack.server.listeners[0].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn your_own_secret_round_trips_through_wrap_and_call() {
    let dev = common::Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "my secret").unwrap();
    let annotation = dir.path().join("secret.annotation");
    let mut wrap = aasp();
    wrap.args(["wrap", "--key-ref", "demo-rsa", "--keys-dir"])
        .arg(&dev.keys_dir)
        .arg("--in")
        .arg(&secret)
        .arg("--out")
        .arg(&annotation);
    let wrapped = output(wrap).await;
    assert!(wrapped.status.success(), "{}", text(&wrapped.stderr));
    // `aasp wrap` prints the way back.
    let hint = format!(
        "call keyprovider.KeyProviderService/UnWrapKey --annotation {} --decode",
        annotation.display()
    );
    assert!(
        text(&wrapped.stderr).contains(&hint),
        "{}",
        text(&wrapped.stderr)
    );

    let out = dir.path().join("secret.out");
    let mut call = aasp();
    call.args(["call", "--target", &target(&dev)])
        .args(["keyprovider.KeyProviderService/UnWrapKey", "--annotation"])
        .arg(&annotation)
        .arg("-o")
        .arg(&out);
    let called = output(call).await;
    assert!(called.status.success(), "{}", text(&called.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), b"my secret");

    let mut decode = aasp();
    decode
        .args(["call", "--target", &target(&dev)])
        .args([
            "keyprovider.KeyProviderService/UnWrapKey",
            "--decode",
            "--annotation",
        ])
        .arg(&annotation);
    let decoded = output(decode).await;
    assert!(decoded.status.success(), "{}", text(&decoded.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&decoded.stdout).unwrap();
    assert_eq!(
        reply["KeyProviderKeyWrapProtocolOutput"]["keyunwrapresults"]["optsdata"],
        "my secret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn call_reaches_every_transport_with_grpcurl_json() {
    use aasp::service::Listen;
    let dev = common::Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc_socket = dir.path().join("aasp.sock");
    let unix = aasp::cli::serve::start(
        std::sync::Arc::clone(&dev.backend),
        &[Listen::Unix(grpc_socket.clone())],
    )
    .await
    .unwrap();
    let ttrpc_socket = dir.path().join("attestation-agent.sock");
    let mut ttrpc = aasp::cli::serve::start(std::sync::Arc::clone(&dev.backend), &[])
        .await
        .unwrap();
    aasp::cli::serve::serve_ttrpc(
        &mut ttrpc,
        &dev.backend,
        &[Listen::Unix(ttrpc_socket.clone())],
    )
    .unwrap();

    // TCP, grpcurl's body: bytes as base64, JSON field names.
    let mut hello = aasp();
    hello.args([
        "call",
        "--target",
        &target(&dev),
        "keyprovider.KeyProviderService/SayHello",
        "-d",
        r#"{"name":"tcp"}"#,
    ]);
    let hello = output(hello).await;
    assert!(hello.status.success(), "{}", text(&hello.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&hello.stdout).unwrap();
    assert_eq!(reply, serde_json::json!({ "message": "Hello tcp" }));

    // gRPC on a Unix socket; the evidence's runtime data comes back as report_data.
    let mut evidence = aasp();
    evidence
        .args(["call", "--target"])
        .arg(format!("unix://{}", grpc_socket.display()))
        .args([
            "attestation_agent.AttestationAgentService/GetEvidence",
            "--decode",
            "-d",
            r#"{"RuntimeData":"bm9uY2U="}"#,
        ]);
    let evidence = output(evidence).await;
    assert!(evidence.status.success(), "{}", text(&evidence.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&evidence.stdout).unwrap();
    let report_data = &reply["Evidence"]["attestation_report"]["report_data"];
    assert_eq!(report_data[0], u32::from(b'n'), "{reply}");
    assert_eq!(report_data[5], 0, "{reply}");

    // ttrpc, the agent socket Kata's guest components call.
    let mut tee = aasp();
    tee.args(["call", "--ttrpc", "--target"])
        .arg(format!("unix://{}", ttrpc_socket.display()))
        .arg("attestation_agent.AttestationAgentService/GetTeeType");
    let tee = output(tee).await;
    assert!(tee.status.success(), "{}", text(&tee.stderr));
    // Nothing on standard error: not even the ttrpc crate's note that its connection tasks were
    // cancelled when the command ended.
    assert_eq!(text(&tee.stderr), "");
    let reply: serde_json::Value = serde_json::from_slice(&tee.stdout).unwrap();
    assert_eq!(reply, serde_json::json!({ "tee": "snp" }));

    // Health, the same way.
    let mut health = aasp();
    health.args([
        "call",
        "--target",
        &target(&dev),
        "grpc.health.v1.Health/Check",
    ]);
    let health = output(health).await;
    assert!(health.status.success(), "{}", text(&health.stderr));
    assert!(
        text(&health.stdout).contains("\"status\""),
        "{}",
        text(&health.stdout)
    );

    unix.shutdown(std::time::Duration::from_secs(5)).await;
    ttrpc.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn call_errors_name_the_method_the_code_and_what_exists() {
    let dev = common::Dev::start().await;
    let mut wrong = aasp();
    wrong.args([
        "call",
        "--target",
        &target(&dev),
        "keyprovider.KeyProviderService/Unwrap",
    ]);
    let wrong = output(wrong).await;
    assert!(!wrong.status.success());
    let stderr = text(&wrong.stderr);
    assert!(
        stderr.contains("UnWrapKey") && stderr.contains("SayHello"),
        "{stderr}"
    );

    let mut refused = aasp();
    refused.args([
        "call",
        "--target",
        &target(&dev),
        "keyprovider.KeyProviderService/UnWrapKey",
        "-d",
        r#"{"KeyProviderKeyWrapProtocolInput":"e30="}"#,
    ]);
    let refused = output(refused).await;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("keyprovider.KeyProviderService/UnWrapKey: InvalidArgument"),
        "{stderr}"
    );

    let mut not_json = aasp();
    not_json.args([
        "call",
        "--target",
        &target(&dev),
        "keyprovider.KeyProviderService/SayHello",
        "-d",
        r#"{"nme":"x"}"#,
    ]);
    let not_json = output(not_json).await;
    assert!(!not_json.status.success());
    let stderr = text(&not_json.stderr);
    assert!(
        stderr.contains("keyprovider.HelloRequest") && stderr.contains("name"),
        "{stderr}"
    );
}

/// Runs `command` with a terminal as its standard output (util-linux `script`, in Debian's
/// essential set); returns what the terminal showed and the exit status.
fn on_a_terminal(command: &str) -> (String, bool) {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs commands on a pseudo-terminal");
    (text(&out.stdout), out.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_bytes_are_refused_on_a_terminal_and_written_to_a_pipe() {
    let dev = common::Dev::start().await;
    let call = format!(
        "{} call --target {} attestation_agent.AttestationAgentService/GetEvidence -o -",
        env!("CARGO_BIN_EXE_aasp"),
        target(&dev)
    );
    let (shown, ok) = tokio::task::spawn_blocking(move || on_a_terminal(&call))
        .await
        .unwrap();
    assert!(!ok, "{shown}");
    assert!(shown.contains("standard output is a terminal"), "{shown}");

    let mut piped = aasp();
    piped.args([
        "call",
        "--target",
        &target(&dev),
        "attestation_agent.AttestationAgentService/GetEvidence",
        "-o",
        "-",
    ]);
    let piped = output(piped).await;
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    let evidence: serde_json::Value = serde_json::from_slice(&piped.stdout).unwrap();
    assert!(evidence["attestation_report"].is_object());
}

#[test]
fn dev_on_a_public_address_names_a_fix_dev_has() {
    let state = tempfile::tempdir().unwrap();
    let fresh = state.path().join("state");
    let out = aasp()
        .args(["dev", "--state-dir", fresh.to_str().unwrap()])
        .args(["--listen", "0.0.0.0:23997"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("--allow-remote"), "{stderr}");
    assert!(stderr.contains("ssh -L 23997:127.0.0.1:23997"), "{stderr}");
    assert!(!fresh.exists(), "nothing is written before the refusal");
}

/// A key-info directory with an RSA public key and `info` as its `demo-info.json`.
fn key_info(dir: &Path, info: serde_json::Value) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let spki = pair.public_key().as_der().unwrap();
    std::fs::write(
        dir.join("demo.pem"),
        aasp::provision::layer::spki_to_pem(spki.as_ref()),
    )
    .unwrap();
    std::fs::write(dir.join("demo-info.json"), info.to_string()).unwrap();
}

fn wrap(keys: &Path, key_ref: &str, secret: &[u8]) -> Output {
    let input = keys.join("secret");
    std::fs::write(&input, secret).unwrap();
    aasp()
        .args(["wrap", "--key-ref", key_ref, "--keys-dir"])
        .arg(keys)
        .arg("--in")
        .arg(&input)
        .arg("--out")
        .arg(keys.join("out"))
        .output()
        .unwrap()
}

#[test]
fn wrap_errors_name_wraps_own_flag_and_the_real_problem() {
    let keys = tempfile::tempdir().unwrap();
    key_info(
        keys.path(),
        serde_json::json!({ "public_key_path": "demo.pem", "kms_endpoint": "myhsm.managedhsm.azure.net", "attester_endpoint": "" }),
    );
    let out = wrap(keys.path(), "demo", b"x");
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--maa HOST"), "{stderr}");
    assert!(!stderr.contains("--maa-endpoint"), "{stderr}");

    // An http:// KMS is reported as such, not as a missing MAA.
    for key_ref in ["demo", "http://myhsm.example/keys/demo"] {
        key_info(
            keys.path(),
            serde_json::json!({ "public_key_path": "demo.pem", "kms_endpoint": "http://myhsm.example", "attester_endpoint": "" }),
        );
        let out = wrap(keys.path(), key_ref, b"x");
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("https"), "{key_ref}: {stderr}");
        assert!(!stderr.contains("MAA"), "{key_ref}: {stderr}");
    }
}

#[test]
fn wrapping_an_empty_secret_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    key_info(
        keys.path(),
        serde_json::json!({ "public_key_path": "demo.pem", "kms_endpoint": "myhsm.managedhsm.azure.net", "attester_endpoint": "maa.attest.azure.net" }),
    );
    let out = wrap(keys.path(), "demo", b"");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the secret is empty"), "{stderr}");
    assert!(!keys.path().join("out").exists());
    // The same key wraps a secret that is there.
    let out = wrap(keys.path(), "demo", b"x");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn taken_ports_are_named_without_blaming_another_aasp() {
    // Held by this test: "another program".
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    for args in [
        vec!["emulate", "--listen"],
        vec!["serve", "--attester", "sim", "--listen"],
        vec!["dev", "--listen"],
    ] {
        let out = aasp()
            .args(&args)
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(state.path().join(args[0]))
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("port {port} is already in use")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("another aasp"), "{args:?}: {stderr}");
        assert!(stderr.contains("ss -ltnp"), "{args:?}: {stderr}");
    }
    drop(holder);
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let mut child = aasp()
        .args(["policy", "digest", "--security-policy", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command writes (it writes after reading its input).
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"package policy\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stderr), "");
    assert!(out.status.success(), "{:?}", out.status);
}

#[test]
fn one_shot_commands_speak_as_commands() {
    let out = aasp()
        .args(["kbs", "get-resource", "kbs:///default/key/demo"])
        .args([
            "--kbs-url",
            "https://127.0.0.1:9",
            "--attester",
            "sev-guest",
        ])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("NOT_SERVING"), "{stderr}");
    assert!(stderr.contains("--attester sim"), "{stderr}");
}

#[test]
fn an_init_data_mismatch_names_both_digests() {
    use base64::Engine;
    let state = tempfile::tempdir().unwrap();
    let digest = [0x61u8; 48];
    let out = aasp()
        .env("AASP_ATTESTER", "sim")
        .env("AASP_STATE_DIR", state.path())
        .arg("--attestation_sock")
        .arg(format!("unix://{}/aa.sock", state.path().display()))
        .arg("--initdata-digest")
        .arg(base64::engine::general_purpose::STANDARD.encode(digest))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&hex::encode(digest)), "{stderr}");
    // HOST_DATA of the simulator: what its policy-less launch reports.
    let sim = aasp::snp::sim::Simulated::open(&aasp::snp::sim::SimOptions {
        state_dir: state.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    assert!(stderr.contains(&hex::encode(sim.host_data())), "{stderr}");
    assert!(!stderr.contains("was cancelled"), "{stderr}");
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let state = tempfile::tempdir().unwrap();
    // Logs an info line at once ("Trustee KBS backend"); `timeout` ends its retries.
    let command = format!(
        "RUST_LOG=info timeout 3 {} kbs get-resource kbs:///a/b/c --kbs-url https://127.0.0.1:9 \
         --attester sim --state-dir {}",
        env!("CARGO_BIN_EXE_aasp"),
        state.path().display()
    );
    let (terminal, _) = on_a_terminal(&format!("{command} 2>&1"));
    assert!(terminal.contains("Trustee KBS backend"), "{terminal}");
    assert!(
        terminal.contains('\u{1b}'),
        "a terminal gets colour: {terminal}"
    );
    let (no_color, _) = on_a_terminal(&format!("NO_COLOR=1 {command} 2>&1"));
    assert!(no_color.contains("Trustee KBS backend"), "{no_color}");
    assert!(!no_color.contains('\u{1b}'), "{no_color}");
    let piped = Command::new("bash")
        .args(["-c", &format!("{command} 2>&1 | cat")])
        .output()
        .unwrap();
    let piped = text(&piped.stdout);
    assert!(piped.contains("Trustee KBS backend"), "{piped}");
    assert!(!piped.contains('\u{1b}'), "{piped}");
}
