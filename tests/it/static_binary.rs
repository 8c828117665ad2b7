//! The static build (`./buildall.sh static`) as a Kata guest image carries it: the binary alone in
//! an otherwise empty root (no libc to load, no NSS module, no /proc/cmdline), started as
//! kata-agent starts the attestation agent, with the simulator. Its ttrpc socket answers, and it
//! reaches a KBS named by a host name that only the root's /etc/hosts knows.
//!
//! It needs the static binary (AASP_STATIC_BIN) and root for chroot, so `./buildall.sh static`
//! builds the binary and runs this test; the regular suite skips it (the release build with
//! static glibc does not fit the suite's time budget).

use crate::common;

use aasp::proto::attestation_agent as aa;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name the guest knows the KBS by; resolvable only through the root's /etc/hosts.
const KBS_HOST: &str = "kbs.aasp-static.test";

/// Kills the process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `log` holds a line starting with `prefix` and returns the rest of that line.
fn wait_for_line(process: &mut Running, log: &Path, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return rest.trim().to_owned();
        }
        assert!(
            process.0.try_wait().unwrap().is_none(),
            "exited before printing {prefix:?}:\n{text}"
        );
        assert!(Instant::now() < deadline, "no {prefix:?} line:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn static_binary() -> PathBuf {
    let bin = PathBuf::from(
        std::env::var_os("AASP_STATIC_BIN").expect("AASP_STATIC_BIN names the static aasp binary"),
    );
    let elf = std::fs::read(&bin).unwrap();
    // A dynamic executable names its loader (PT_INTERP); a static one has none to name.
    assert!(
        !elf.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux"),
        "{} names a dynamic loader: not a static build",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the static binary and root: ./buildall.sh static builds it and runs this"]
async fn alone_in_an_empty_root_it_serves_ttrpc_and_reaches_a_kbs_by_host_name() {
    let bin = static_binary();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for sub in ["usr/local/bin", "etc", "var/lib/aasp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(&bin, root.join("usr/local/bin/attestation-agent")).unwrap();
    std::fs::write(root.join("etc/hosts"), format!("127.0.0.1 {KBS_HOST}\n")).unwrap();

    // The KBS outside the root (same network): the emulator, on the simulator state the agent
    // will use, so that its KBS trusts the agent's chain and measurement.
    let emulator_log = dir.path().join("emulator.log");
    let mut emulator = Running(
        Command::new(&bin)
            .args(["emulate", "--listen", "127.0.0.1:0", "--tls-name", KBS_HOST])
            .arg("--state-dir")
            .arg(root.join("var/lib/aasp"))
            .stdout(std::fs::File::create(&emulator_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = wait_for_line(&mut emulator, &emulator_log, "aasp emulator listening on");
    let port = url.rsplit(':').next().unwrap().trim_end_matches('/');
    let ca = std::fs::read_to_string(root.join("var/lib/aasp/emulator/ca.pem")).unwrap();
    std::fs::write(
        root.join("etc/aa.toml"),
        format!("[token_configs.kbs]\nurl = \"https://{KBS_HOST}:{port}\"\ncert = '''\n{ca}'''\n"),
    )
    .unwrap();

    let agent_log = dir.path().join("agent.log");
    let mut agent = Running(
        Command::new("chroot")
            .arg(&root)
            .args([
                "/usr/local/bin/attestation-agent",
                "--attestation_sock",
                "unix:///run/attestation-agent/attestation-agent.sock",
                "-c",
                "/etc/aa.toml",
            ])
            .env_clear()
            // Only for finding chroot itself (in /usr/sbin): the root has no directories on it.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("AASP_ATTESTER", "sim")
            .env("AASP_STATE_DIR", "/var/lib/aasp")
            .stdout(std::fs::File::create(&agent_log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("agent.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    // kata-agent's wait: poll for the socket file while the agent lives.
    let socket = root.join("run/attestation-agent/attestation-agent.sock");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !socket.exists() {
        let status = agent.0.try_wait().unwrap();
        let err = std::fs::read_to_string(dir.path().join("agent.err")).unwrap_or_default();
        assert!(status.is_none(), "the agent exited ({status:?}):\n{err}");
        assert!(Instant::now() < deadline, "no socket:\n{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    assert_eq!(common::aa_tee_type(&client).await, "snp");

    // GetToken("kbs") is a full RCAR handshake with the KBS named by host name.
    let token: aa::GetTokenResponse = common::ttrpc_call(
        &client,
        common::AA_SERVICE,
        "GetToken",
        &aa::GetTokenRequest {
            token_type: "kbs".into(),
        },
    )
    .await
    .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&token.token).unwrap();
    let jwt = reply["token"].as_str().unwrap();
    assert_eq!(jwt.split('.').count(), 3, "not a JWT: {jwt}");
    assert!(reply["tee_keypair"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
}
