//! `aasp emulate`, `aasp key` and `aasp policy` as a user runs them: a release reproduced by
//! hand, over the emulator's real sockets.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

fn aasp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(args)
        .env_remove("AZURE_CLIENT_ID")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Emulator {
    child: Child,
    url: String,
    ca: String,
    hostdata: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_emulator(state_dir: &str, policy_file: &str) -> Emulator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state_dir,
            "--sim-security-policy",
            policy_file,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut field = |prefix: &str| loop {
        let line = lines.next().expect("the emulator exited early").unwrap();
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    };
    let url = field("aasp emulator listening on");
    let ca = field("dev CA (pass as --extra-ca):");
    let hostdata = field("simulated host_data:");
    Emulator {
        child,
        url,
        ca,
        hostdata,
    }
}

#[test]
fn a_release_reproduced_by_hand() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let policy_file = state.path().join("policy.rego");
    std::fs::write(&policy_file, "package policy\n\ndefault allow := true\n").unwrap();
    let emulator = start_emulator(state_dir, policy_file.to_str().unwrap());
    let host = emulator.url.trim_start_matches("https://").to_owned();

    let digest = ok(&aasp(&[
        "policy",
        "digest",
        "--security-policy",
        policy_file.to_str().unwrap(),
    ]));
    assert_eq!(
        digest.trim(),
        emulator.hostdata,
        "policy digest and the simulator's host_data agree"
    );

    let kms = [
        "--kms",
        &emulator.url,
        "--imds-endpoint",
        &emulator.url,
        "--extra-ca",
        &emulator.ca,
    ];
    let mut create = vec![
        "key",
        "create",
        "--name",
        "demo",
        "--kty",
        "oct",
        "--maa",
        &host,
        "--hostdata",
        &emulator.hostdata,
    ];
    create.extend(kms);
    let created: serde_json::Value = serde_json::from_str(&ok(&aasp(&create))).unwrap();
    assert!(created["key"]["kid"]
        .as_str()
        .unwrap()
        .contains("/keys/demo/"));
    assert!(
        created["key"].get("k").is_none(),
        "create must not print key material"
    );

    let mut show = vec!["key", "show", "--name", "demo"];
    show.extend(kms);
    let shown: serde_json::Value = serde_json::from_str(&ok(&aasp(&show))).unwrap();
    assert_eq!(shown["key"]["kid"], created["key"]["kid"]);

    let mut release = vec![
        "key",
        "release",
        "--name",
        "demo",
        "--maa",
        &host,
        "--attester",
        "sim",
        "--state-dir",
        state_dir,
    ];
    release.extend(kms);
    // Simulator settings hold for one run only: the guest runs under the same policy again.
    let mut same = release.clone();
    same.extend(["--sim-security-policy", policy_file.to_str().unwrap()]);
    let out: serde_json::Value = serde_json::from_str(&ok(&aasp(&same))).unwrap();
    assert_eq!(out["released"], true);
    assert_eq!(out["kid"], created["key"]["kid"]);

    // The same workload under another security policy is refused, and says why.
    let other = state.path().join("other.rego");
    std::fs::write(&other, "package policy\n\ndefault allow := false\n").unwrap();
    let mut refused = release.clone();
    refused.extend(["--sim-security-policy", other.to_str().unwrap()]);
    let out = aasp(&refused);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("x-ms-sevsnpvm-hostdata"),
        "{err}"
    );

    // Another launch measurement: the emulated MAA says azure-non-compliant, the generated
    // policy (which requires azure-compliant-uvm) refuses, although host_data matches.
    let mut other_image = same.clone();
    let measurement = "42".repeat(48);
    other_image.extend(["--sim-measurement", &measurement]);
    let out = aasp(&other_image);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("azure-non-compliant"),
        "{err}"
    );

    // A key created non-exportable is never released, whatever the guest.
    let mut create_fixed = vec![
        "key",
        "create",
        "--name",
        "fixed",
        "--kty",
        "oct",
        "--non-exportable",
    ];
    create_fixed.extend(kms);
    let created: serde_json::Value = serde_json::from_str(&ok(&aasp(&create_fixed))).unwrap();
    assert_eq!(created["attributes"]["exportable"], false);
    let mut release_fixed = same.clone();
    release_fixed[3] = "fixed";
    let out = aasp(&release_fixed);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("403") && err.contains("not exportable"),
        "{err}"
    );
}

#[test]
fn policy_check_warns_about_policies_that_release_to_any_uvm() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.json");
    std::fs::write(
        &open,
        r#"{"version":"1.0.0","anyOf":[{"authority":"https://maa.example","allOf":[
            {"claim":"x-ms-attestation-type","equals":"sevsnpvm"},
            {"claim":"x-ms-sevsnpvm-hostdata","equals":"abcd"}]}]}"#,
    )
    .unwrap();
    let out = aasp(&["policy", "check", "--policy", open.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning") && err.contains("releases to any UVM"),
        "{err}"
    );

    let empty = dir.path().join("empty.json");
    std::fs::write(
        &empty,
        r#"{"version":"1.0.0","anyOf":[{"authority":"https://maa.example","allOf":[]}]}"#,
    )
    .unwrap();
    let out = aasp(&["policy", "check", "--policy", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty allOf"));

    // A generated policy pins the UVM: no warning.
    let generated = dir.path().join("generated.json");
    let text = ok(&aasp(&[
        "policy",
        "release",
        "--maa",
        "maa.example",
        "--hostdata",
        &"ab".repeat(32),
        "--compliance-status",
        "azure-signed-katacc-uvm",
    ]));
    assert!(text.contains("azure-signed-katacc-uvm"), "{text}");
    std::fs::write(&generated, text).unwrap();
    let out = aasp(&["policy", "check", "--policy", generated.to_str().unwrap()]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
}

#[test]
fn policy_release_prints_a_bound_policy() {
    let hostdata = "ab".repeat(32);
    let out = ok(&aasp(&[
        "policy",
        "release",
        "--maa",
        "sharedeus.eus.attest.azure.net",
        "--hostdata",
        &hostdata,
        "--claim",
        "x-ms-sevsnpvm-vmpl=0",
    ]));
    let policy: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        policy["anyOf"][0]["authority"],
        "https://sharedeus.eus.attest.azure.net"
    );
    let claims: Vec<&str> = policy["anyOf"][0]["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["claim"].as_str().unwrap())
        .collect();
    assert!(claims.contains(&"x-ms-sevsnpvm-hostdata") && claims.contains(&"x-ms-sevsnpvm-vmpl"));
    // The launched code is pinned too: host_data alone is the host's choice.
    let status = policy["anyOf"][0]["allOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["claim"] == "x-ms-compliance-status")
        .expect("the generated policy requires x-ms-compliance-status");
    assert_eq!(status["equals"], "azure-compliant-uvm");
    let pinned = ok(&aasp(&[
        "policy",
        "release",
        "--maa",
        "m",
        "--hostdata",
        &hostdata,
        "--launch-measurement",
        &"CD".repeat(48),
    ]));
    assert!(
        pinned.contains("x-ms-sevsnpvm-launchmeasurement") && pinned.contains(&"cd".repeat(48)),
        "{pinned}"
    );
    let bad = aasp(&["policy", "release", "--maa", "m", "--hostdata", "abc"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("64 hex digits"));
}

#[test]
fn policy_digest_decodes_base64_policies() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let text = b"package policy\n\napi_version := \"0.10.0\"\n";
    let b64 = dir.path().join("security-policy-base64");
    std::fs::write(&b64, base64::engine::general_purpose::STANDARD.encode(text)).unwrap();
    let raw = dir.path().join("policy.rego");
    std::fs::write(&raw, text).unwrap();
    let a = ok(&aasp(&[
        "policy",
        "digest",
        "--security-policy",
        b64.to_str().unwrap(),
    ]));
    let b = ok(&aasp(&[
        "policy",
        "digest",
        "--security-policy",
        raw.to_str().unwrap(),
    ]));
    assert_eq!(a, b);
    use sha2::Digest;
    assert_eq!(a.trim(), hex::encode(sha2::Sha256::digest(text)));
}

#[test]
fn emulate_refuses_a_non_loopback_listener() {
    let out = aasp(&[
        "emulate",
        "--listen",
        "0.0.0.0:0",
        "--state-dir",
        tempfile::tempdir().unwrap().path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}
