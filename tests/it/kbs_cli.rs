//! The KBS backend as a user runs it: `aasp emulate --kbs-resource` in one process, then
//! `aasp kbs get-resource` attesting to it with the simulated device in another.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn get_resource_from_a_separately_running_emulated_kbs() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let secret_file = state.path().join("secret.bin");
    let secret: Vec<u8> = (0u8..=255).rev().collect();
    std::fs::write(&secret_file, &secret).unwrap();
    let seed = format!("default/key/cli={}", secret_file.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state_dir,
        ])
        .args(["--kbs-resource", &seed])
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
    let get = |uri: &str| {
        Command::new(env!("CARGO_BIN_EXE_aasp"))
            .args([
                "kbs",
                "get-resource",
                uri,
                "--kbs-url",
                &url,
                "--extra-ca",
                &ca,
            ])
            .args(["--attester", "sim", "--state-dir", state_dir])
            .env_remove("AASP_KBS_URL")
            .env_remove("AA_KBC_PARAMS")
            .output()
            .unwrap()
    };
    let out = get("kbs:///default/key/cli");
    let missing = get("kbs:///default/key/none");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, secret);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no resource"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
