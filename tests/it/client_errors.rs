//! The client commands' errors: `aasp call` names a refusal's status code the same way over gRPC
//! and over ttrpc (as tonic and grpcurl spell it: `PermissionDenied`), and `aasp health` and
//! `aasp call` that reach nothing say why and how to start a server.

use crate::common;
use aasp::service::Listen;

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_reads_the_same_over_grpc_and_ttrpc() {
    let dev = common::Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("attestation-agent.sock");
    let mut ttrpc = aasp::cli::serve::start(std::sync::Arc::clone(&dev.backend), &[])
        .await
        .unwrap();
    aasp::cli::serve::serve_ttrpc(&mut ttrpc, &dev.backend, &[Listen::Unix(socket.clone())])
        .unwrap();
    // An init-data digest that is not this guest's HOST_DATA: PermissionDenied.
    let method = "attestation_agent.AttestationAgentService/BindInitData";
    let body = r#"{"Digest":"YWFh"}"#;
    let grpc = dev.stack.server.listeners[0].to_string();
    let ttrpc_target = format!("unix://{}", socket.display());
    let mut errors = Vec::new();
    for args in [
        vec!["--target".to_owned(), grpc.clone()],
        vec![
            "--ttrpc".to_owned(),
            "--target".to_owned(),
            ttrpc_target.clone(),
        ],
    ] {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_aasp"))
                .arg("call")
                .args(args)
                .args([method, "-d", body])
                .env_remove("RUST_LOG")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(!out.status.success());
        errors.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    for error in &errors {
        assert!(
            error.starts_with(&format!("error: {method}: PermissionDenied: ")),
            "{error}"
        );
    }
    assert_eq!(errors[0], errors[1]);
}

#[test]
fn nothing_listening_names_the_cause_and_how_to_start_aasp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}/none.sock", dir.path().display());
    for args in [
        vec!["health", "--target", addr.as_str()],
        vec![
            "call",
            "--target",
            addr.as_str(),
            "grpc.health.v1.Health/Check",
        ],
        vec![
            "call",
            "--ttrpc",
            "--target",
            socket.as_str(),
            "grpc.health.v1.Health/Check",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aasp"))
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot connect to"), "{args:?}: {stderr}");
        // The cause, not only "transport error".
        assert!(
            stderr.contains("Connection refused") || stderr.contains("No such file"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("Start it (`aasp dev`"),
            "{args:?}: {stderr}"
        );
    }
}
