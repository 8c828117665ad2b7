//! The binary started exactly as kata-agent starts the Confidential Containers attestation agent
//! (kata `src/agent/src/main.rs`: `/usr/local/bin/attestation-agent --attestation_sock unix:///…
//! -c CONFIG`, then it waits for the socket file): the socket appears and answers ttrpc.

use crate::common;

use aasp::proto::attestation_agent as aa;
use std::process::{Command, Stdio};

/// Kills the agent when the test ends, however it ends.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn started_as_kata_starts_the_attestation_agent() {
    let dir = tempfile::tempdir().unwrap();
    // The guest image's /usr/local/bin/attestation-agent is a link to aasp.
    let agent_bin = dir.path().join("attestation-agent");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_aasp"), &agent_bin).unwrap();
    // The socket's directory does not exist yet: the agent creates it, as upstream's does.
    let socket = dir
        .path()
        .join("run/attestation-agent/attestation-agent.sock");
    let config = dir.path().join("aa.toml");
    std::fs::write(
        &config,
        "[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n\n[eventlog_config]\ninit_pcr = 17\nenable_eventlog = false\n",
    )
    .unwrap();
    let mut agent = Agent(
        Command::new(&agent_bin)
            .args([
                "--attestation_sock",
                &format!("unix://{}", socket.display()),
            ])
            .args(["-c", config.to_str().unwrap()])
            .env("AASP_ATTESTER", "sim")
            .env("AASP_STATE_DIR", dir.path().join("state"))
            .env_remove("AASP_LISTEN")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // kata-agent's wait: poll for the socket file while the agent lives.
    while !socket.exists() {
        assert!(agent.0.try_wait().unwrap().is_none(), "the agent exited");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    assert_eq!(common::aa_tee_type(&client).await, "snp");
    let evidence: aa::GetEvidenceResponse = common::ttrpc_call(
        &client,
        common::AA_SERVICE,
        "GetEvidence",
        &aa::GetEvidenceRequest {
            runtime_data: b"kata".to_vec(),
        },
    )
    .await
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&evidence.evidence).unwrap();
    assert_eq!(doc["attestation_report"]["report_data"][0], b'k');
}

#[test]
fn a_wrong_option_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let agent_bin = dir.path().join("attestation-agent");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_aasp"), &agent_bin).unwrap();
    let out = Command::new(&agent_bin)
        .args([
            "--attestation_sock",
            "unix:///tmp/x.sock",
            "--kbc",
            "cc_kbc",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kbc"), "{stderr}");
    // Upstream's option also selects the personality when aasp is called by its own name.
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["--attestation_sock", "tcp://127.0.0.1:1"])
        .env("AASP_ATTESTER", "sim")
        .env("AASP_STATE_DIR", dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unix:///path"), "{stderr}");
}
