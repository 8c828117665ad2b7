//! The serving process cannot be dumped or attached to, and every file aasp writes has an
//! explicit mode whatever the umask.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A user other than the test's own, so that a dumpable process's /proc entries (owned by its
/// user) differ from a non-dumpable one's (owned by root). As root, `nobody`; otherwise the
/// test's own user (whose processes' entries turn root-owned when not dumpable).
fn serving_uid() -> u32 {
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me == 0 {
        65534
    } else {
        me
    }
}

struct Serving {
    child: Child,
    _state: tempfile::TempDir,
    _binary: Option<tempfile::TempDir>,
}

/// A copy of aasp that `uid` can run: the build's own path lies under the clone, which may be
/// closed to other users (`mktemp -d` makes 0700 directories).
fn binary_for(uid: u32) -> (std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
    let binary = dir.path().join("aasp");
    std::fs::copy(env!("CARGO_BIN_EXE_aasp"), &binary).unwrap();
    (binary, dir)
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Serving {
    let state = tempfile::tempdir().unwrap();
    let uid = serving_uid();
    let other_user = uid != std::fs::metadata("/proc/self").unwrap().uid();
    if other_user {
        std::os::unix::fs::chown(state.path(), Some(uid), Some(uid)).unwrap();
    }
    let (binary, binary_dir) = if other_user {
        let (binary, dir) = binary_for(uid);
        (binary, Some(dir))
    } else {
        (env!("CARGO_BIN_EXE_aasp").into(), None)
    };
    let mut command = Command::new(binary);
    command
        .args(["serve", "--attester", "sim", "--listen", "127.0.0.1:0"])
        .args(["--state-dir", state.path().to_str().unwrap()])
        .args(extra)
        .env_remove("AASP_ALLOW_CORE_DUMPS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if other_user {
        command.uid(uid).gid(uid);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("serve exited early").unwrap();
        if line.starts_with("aasp serving gRPC on ") {
            break;
        }
    }
    Serving {
        child,
        _state: state,
        _binary: binary_dir,
    }
}

fn core_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .split_whitespace()
        .skip(4)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_serving_process_is_not_dumpable_and_has_no_core_limit() {
    let s = serve(&[]);
    let pid = s.child.id();
    // Not /proc/<pid> itself: the kernel keeps world-readable directories owned by the user.
    let proc_dir = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(
        proc_dir.uid(),
        0,
        "a non-dumpable process's /proc entries belong to root (the process runs as uid {})",
        serving_uid()
    );
    assert_eq!(core_limit(pid), "0 0");
}

#[test]
fn allow_core_dumps_keeps_the_process_dumpable() {
    let s = serve(&["--allow-core-dumps"]);
    let pid = s.child.id();
    let proc_dir = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(proc_dir.uid(), serving_uid());
    assert_ne!(core_limit(pid), "0 0");
}

fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        out.push((entry.path(), meta.mode() & 0o7777, meta.is_dir()));
        if meta.is_dir() {
            walk(&entry.path(), out);
        }
    }
}

/// `aasp dev` under umask 000 writes its whole state (simulator keys, dev CA, key-info files,
/// ocicrypt configuration): nothing may be group- or world-writable, and secrets are owner-only.
#[test]
fn files_written_under_umask_000_have_explicit_modes() {
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("state");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_aasp"))
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("aasp dev exited early").unwrap();
        if line.contains("Ctrl-C stops everything") {
            break;
        }
    }
    let wrapped = state.path().join("layer.annotation");
    let secret = state.path().join("secret");
    std::fs::write(&secret, b"layer key").unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_aasp"))
        .args(["wrap", "--keys-dir"])
        .arg(root.join("keys"))
        .args(["--key-ref", aasp::cli::dev::DEMO_RSA_KEY, "--in"])
        .arg(&secret)
        .arg("--out")
        .arg(&wrapped)
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut entries = vec![(
        wrapped.clone(),
        std::fs::metadata(&wrapped).unwrap().mode() & 0o7777,
        false,
    )];
    walk(&root, &mut entries);
    assert!(entries.len() > 10, "{entries:?}");
    // Certificates, the demo public key, the client configuration and the annotations (wrapped,
    // so public).
    let public = |p: &Path| {
        let name = p.file_name().unwrap().to_str().unwrap();
        [
            "ca.pem",
            "ark.pem",
            "demo-rsa.pem",
            "ocicrypt_keyprovider.conf",
            "layer.annotation",
            "demo-secret.annotation",
        ]
        .contains(&name)
    };
    for (path, mode, is_dir) in &entries {
        assert_eq!(
            mode & 0o022,
            0,
            "{} is writable by others: {mode:o}",
            path.display()
        );
        let expected = if *is_dir {
            0o700
        } else if public(path) {
            0o644
        } else {
            0o600
        };
        assert_eq!(*mode, expected, "{}: {mode:o}", path.display());
    }
    assert_eq!(
        std::fs::metadata(&root).unwrap().mode() & 0o7777,
        0o700,
        "the state directory"
    );
}
