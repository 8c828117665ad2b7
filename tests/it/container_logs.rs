//! A container's log under `--log-format json` (what the shipped manifests set): every line the
//! server writes, on stdout and stderr alike, is one JSON object, because `kubectl logs` merges
//! both streams and log collectors parse each line. Its start-up lines are records there too.

use crate::common;
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn json_logs_are_json_on_both_streams_start_up_lines_included() {
    let state = tempfile::tempdir().unwrap();
    let (grpc, rest) = (free_port(), free_port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--attester", "sim", "--listen"])
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--rest-listen")
        .arg(format!("127.0.0.1:{rest}"))
        .env("AASP_LOG_FORMAT", "json")
        .env("AASP_STATE_DIR", state.path())
        .env_remove("RUST_LOG")
        .env_remove("SkrSideCarArgs")
        .env_remove("AASP_CERT_SOURCE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let answer = common::health_until(&format!("127.0.0.1:{grpc}"), &mut server, 200, |a| {
        a == "SERVING"
    });
    let _ = server.kill();
    let output = server.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(answer, "SERVING", "stdout:\n{stdout}\nstderr:\n{stderr}");

    let mut messages = Vec::new();
    for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let record: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{stream} line is not JSON ({e}): {line:?}"));
            messages.push(
                record["fields"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    for want in [
        format!("aasp serving gRPC on 127.0.0.1:{grpc}"),
        format!("aasp serving the SKR REST API on http://127.0.0.1:{rest}"),
        "attester: sim".to_owned(),
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(&want)),
            "no record starting {want:?} among {messages:?}"
        );
    }
}
