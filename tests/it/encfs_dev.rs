//! `aasp dev`'s encrypted demo filesystem as a newcomer meets it: dev prints an `aasp encfs run`
//! line (not a `$` line: it needs root and runs until stopped, and the line before it says so);
//! that line, run exactly as printed, mounts both demo images from the emulator's blob endpoint
//! with the demo keys the emulated Managed HSM releases to the simulated workload (oct, and RSA
//! with a salt); each demo file reads through its mount point symlink; SIGTERM leaves nothing
//! mounted.

use crate::encfs_mount::{is_root, left_behind};
use aasp::cli::dev_encfs::{DEMO_ENCFS_FILE, DEMO_ENCFS_TEXT};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child in its own process group, ended with the whole group: SIGTERM (the sidecar unmounts
/// on it), then SIGKILL if it is still there after 10 s.
struct Group(Child);

impl Group {
    fn spawn(command: &mut Command) -> Self {
        Group(command.process_group(0).spawn().unwrap())
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.0.id())])
            .status();
    }

    /// SIGTERM to the group, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        for _ in 0..200 {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("did not exit within 10 s of SIGTERM");
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.signal("-TERM");
            std::thread::sleep(Duration::from_secs(2));
            self.signal("-KILL");
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_encfs_line_aasp_dev_prints_mounts_the_demo_images_until_sigterm() {
    if !is_root() {
        eprintln!("skipped: FUSE, loop devices and mount(2) need root (CI runs as root)");
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: this kernel has no FUSE (/dev/fuse)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut dev = Group::spawn(
        Command::new(env!("CARGO_BIN_EXE_aasp"))
            .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut guide = Vec::new();
    for line in std::io::BufReader::new(dev.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let ready = line.contains("Ctrl-C stops everything");
        guide.push(line);
        if ready {
            break;
        }
    }
    let text = guide.join("\n");
    let intro = guide
        .iter()
        .position(|l| l.contains("encfs sidecar") && l.contains("so no `$`"))
        .unwrap_or_else(|| panic!("no encfs line:\n{text}"));
    let command = guide[intro + 1]
        .strip_prefix("    ")
        .unwrap_or_else(|| panic!("no command after the intro:\n{text}"));
    assert!(command.ends_with(" encfs run"), "{command}");
    // "  then read <file> and <file> from another terminal; …"
    let files: Vec<PathBuf> = guide[intro + 2]
        .strip_prefix("  then read ")
        .and_then(|rest| rest.split(" from another terminal").next())
        .unwrap_or_else(|| panic!("no file to read:\n{text}"))
        .split(" and ")
        .map(PathBuf::from)
        .collect();
    assert_eq!(files.len(), 2, "the oct and the RSA demo:\n{text}");
    let mount_points: Vec<PathBuf> = files
        .iter()
        .map(|file| {
            assert_eq!(file.file_name().unwrap(), DEMO_ENCFS_FILE);
            let mount_point = file.parent().unwrap().to_path_buf();
            assert!(mount_point.starts_with(&state), "{}", mount_point.display());
            mount_point
        })
        .collect();

    let log = dir.path().join("sidecar.log");
    let mut sidecar = Group::spawn(
        Command::new("bash")
            .arg("-c")
            .arg(command)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut waited = 0;
    while mount_points
        .iter()
        .any(|m| std::fs::symlink_metadata(m).is_err())
    {
        if let Some(status) = sidecar.0.try_wait().unwrap() {
            panic!("the printed command ended ({status}):\n{}", read_log());
        }
        assert!(waited < 1200, "not mounted within 60 s:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
    }
    for file in &files {
        assert_eq!(
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}:\n{}", read_log())),
            DEMO_ENCFS_TEXT
        );
    }
    assert!(read_log().contains("is ready"), "{}", read_log());

    let status = sidecar.terminate();
    assert!(status.success(), "{status}:\n{}", read_log());
    assert!(left_behind(&state).is_empty(), "{:?}", left_behind(&state));
    for mount_point in &mount_points {
        assert!(
            std::fs::symlink_metadata(mount_point).is_err(),
            "{} is left",
            mount_point.display()
        );
    }
    dev.terminate();
}
