//! The `aasp` binary: `verify` and `report` as a user runs them.

use crate::common;

use common::{data_dir, vectors};
use std::process::{Command, Output};

fn aasp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(args)
        .env_remove("AASP_ATTESTER")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn verify_accepts_every_valid_vector() {
    for v in vectors() {
        let dir = data_dir().join(v.name);
        let out = aasp(&[
            "verify",
            "--report",
            dir.join("report.bin").to_str().unwrap(),
            "--vcek",
            dir.join(v.signer_file).to_str().unwrap(),
            "--chain",
            dir.join("chain.pem").to_str().unwrap(),
            "--at",
            &rfc3339(v.verify_at),
        ]);
        assert!(out.status.success(), "{}: {}", v.name, stdout(&out));
        assert!(
            stdout(&out).ends_with("verified\n") && !stdout(&out).contains("FAIL"),
            "{}",
            v.name
        );
    }
}

#[test]
fn verify_rejects_a_tampered_report_and_says_which_check_failed() {
    let dir = data_dir().join("milan-trustee");
    let mut raw = std::fs::read(dir.join("report.bin")).unwrap();
    raw[0x90] ^= 1; // measurement
    let tmp = tempfile::tempdir().unwrap();
    let hex_path = tmp.path().join("report.hex");
    std::fs::write(&hex_path, hex::encode(&raw)).unwrap();
    let out = aasp(&[
        "verify",
        "--report",
        hex_path.to_str().unwrap(),
        "--vcek",
        dir.join("vcek.der").to_str().unwrap(),
        "--at",
        "2026-07-26T00:00:00Z",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["verified"], false);
    let failed: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["report signature"]);
}

#[test]
fn verify_without_a_signer_explains_what_to_give() {
    let out = aasp(&[
        "verify",
        "--report",
        data_dir()
            .join("milan-trustee/report.bin")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcek"));
}

#[test]
fn simulated_report_verifies_and_its_evidence_verifies_offline_only_with_its_root() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let out = aasp(&[
        "report",
        "--attester",
        "sim",
        "--state-dir",
        state_dir,
        "--verify",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["verified"], true);
    assert_eq!(doc["attester"], "sim");

    let runtime = state.path().join("runtime.json");
    std::fs::write(&runtime, br#"{"keys":[]}"#).unwrap();
    let out = aasp(&[
        "report",
        "--attester",
        "sim",
        "--state-dir",
        state_dir,
        "--runtime-data",
        runtime.to_str().unwrap(),
        "--format",
        "evidence",
    ]);
    assert!(out.status.success());
    let evidence = state.path().join("evidence.json");
    std::fs::write(&evidence, &out.stdout).unwrap();

    let ark = state.path().join("sim/ark.pem");
    let trusted = aasp(&[
        "verify",
        "--report",
        evidence.to_str().unwrap(),
        "--trust-root",
        ark.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(trusted.status.success(), "{}", stdout(&trusted));
    let doc: serde_json::Value = serde_json::from_slice(&trusted.stdout).unwrap();
    let expected = hex::encode(aasp::snp::report::report_data_for_runtime(
        br#"{"keys":[]}"#,
    ));
    assert_eq!(doc["report"]["report_data"], expected);

    let untrusted = aasp(&["verify", "--report", evidence.to_str().unwrap()]);
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(stdout(&untrusted).contains("[FAIL] intermediate signed by pinned root"));
}

#[test]
fn report_formats() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let hex_out = aasp(&[
        "report",
        "--attester",
        "sim",
        "--state-dir",
        state_dir,
        "--format",
        "hex",
    ]);
    assert!(hex_out.status.success());
    assert_eq!(stdout(&hex_out).trim().len(), 2 * 1184);
    let raw = aasp(&[
        "report",
        "--attester",
        "sim",
        "--state-dir",
        state_dir,
        "--format",
        "raw",
    ]);
    assert_eq!(raw.stdout.len(), 1184);
    let text = aasp(&["report", "--attester", "sim", "--state-dir", state_dir]);
    assert!(stdout(&text).contains("host_data"));
}

#[test]
fn legacy_uvm_variables_feed_the_security_context_source() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    assert!(
        aasp(&["report", "--attester", "sim", "--state-dir", state_dir])
            .status
            .success()
    );
    let thim = std::fs::read_to_string(
        state
            .path()
            .join("sim/security-context/host-amd-cert-base64"),
    )
    .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "report",
            "--attester",
            "sim",
            "--state-dir",
            state_dir,
            "--cert-source",
            "security-context",
            "--verify",
        ])
        .env("UVM_SECURITY_CONTEXT_DIR", empty.path())
        .env("UVM_HOST_AMD_CERTIFICATE", thim.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("security context"));

    let without = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "report",
            "--attester",
            "sim",
            "--state-dir",
            state_dir,
            "--cert-source",
            "security-context",
            "--verify",
        ])
        .env("UVM_SECURITY_CONTEXT_DIR", empty.path())
        .env_remove("UVM_HOST_AMD_CERTIFICATE")
        .output()
        .unwrap();
    assert_eq!(without.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&without.stderr).contains("host-amd-cert-base64 is missing"));
}

#[test]
fn auto_attester_without_a_device_lists_the_paths_it_tried() {
    if std::path::Path::new("/dev/sev-guest").exists() || std::path::Path::new("/dev/sev").exists()
    {
        return; // On SNP hardware the device answers; this test is about machines without one.
    }
    let out = aasp(&["report"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/dev/sev-guest")
            && err.contains("/dev/sev")
            && err.contains("--attester sim"),
        "{err}"
    );
}

#[test]
fn help_explains_every_flag() {
    let out = aasp(&["report", "--help"]);
    let help = stdout(&out);
    for flag in [
        "--attester",
        "--runtime-data",
        "--format",
        "--verify",
        "--cert-source",
        "--extra-ca",
        "--trust-root",
        "--state-dir",
    ] {
        assert!(help.contains(flag), "{flag} missing from report --help");
    }
}
