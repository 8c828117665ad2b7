//! `aasp call` names a refusal's status code the same way over gRPC and over ttrpc (as tonic and
//! grpcurl spell it: `PermissionDenied`), so one refusal reads the same on both transports.

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
