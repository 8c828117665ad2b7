//! `aasp encfs run` end to end, as root (FUSE, loop devices and ext4 exist here; device-mapper
//! does not, so the userspace path runs): images made by `aasp encfs create`, uploaded by
//! `aasp encfs upload` to the emulator's blob endpoint (bearer token) and to Azurite (SAS),
//! keys released from the emulated Managed HSM through the simulated SNP attester, or read
//! from the emulated Trustee KBS. The workload's view is checked through the symlink; SIGTERM
//! must leave nothing mounted and lose nothing written.

use crate::common::Dev;
use crate::encfs_blob::{account_sas, create_container, Azurite, ContainerAuth};
use aasp::azure::jwk::Jwk;
use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: FUSE, loop devices and mount(2) need root (CI runs as root)");
            return;
        }
    };
}

fn aasp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An image of `content` for a new key (`oct` or `rsa`): the image, its key file and the
/// EncfsSideCarArgs entry `aasp encfs create` wrote.
pub(crate) fn create_image(
    dir: &Path,
    name: &str,
    key: &str,
    read_write: bool,
) -> (PathBuf, PathBuf, Value) {
    let content = dir.join(format!("{name}-content"));
    std::fs::create_dir_all(content.join("sub")).unwrap();
    std::fs::write(content.join("hello.txt"), format!("hello from {name}\n")).unwrap();
    std::fs::write(content.join("sub/big.bin"), big(name)).unwrap();
    let image = dir.join(format!("{name}.img"));
    let key_file = dir.join(format!("{name}.jwk"));
    let mut args = vec![
        "encfs",
        "create",
        "--from",
        content.to_str().unwrap(),
        "--out",
        image.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
        "--new-key",
        key,
        "--kid",
        name,
        "--size",
        "24M",
    ];
    if read_write {
        args.push("--read-write");
    }
    ok(aasp(&args));
    let mut entry_path = image.clone().into_os_string();
    entry_path.push(".encfs.json");
    let entry: Value = serde_json::from_slice(&std::fs::read(entry_path).unwrap()).unwrap();
    (image, key_file, entry)
}

/// A file larger than the block cache's read-ahead window, different per image.
fn big(name: &str) -> Vec<u8> {
    (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ name.len() as u8)
        .collect()
}

/// Imports `key_file` into the emulated HSM as `name`, releasable to the simulated workload.
pub(crate) async fn import_key(dev: &Dev, name: &str, key_file: &Path) {
    let jwk: Jwk = serde_json::from_slice(&std::fs::read(key_file).unwrap()).unwrap();
    let sim = aasp::snp::sim::Simulated::open(&aasp::snp::sim::SimOptions {
        state_dir: dev.state_dir.clone(),
        ..Default::default()
    })
    .unwrap();
    let emulator = &dev.emulator;
    let http = aasp::http::client(&aasp::http::HttpOptions {
        extra_ca: Some(emulator.ca_path.clone()),
        ..Default::default()
    })
    .unwrap();
    let access = aasp::azure::identity::IdentityProvider::new(
        http.clone(),
        aasp::azure::identity::IdentitySource::Imds {
            base: emulator.url.clone(),
            client_id: None,
        },
        aasp::http::RetryPolicy::default(),
    )
    .token(aasp::azure::identity::MHSM_RESOURCE)
    .await
    .unwrap();
    let kms = aasp::azure::kms::KmsClient::new(
        http,
        aasp::azure::jws::Anchors::from_pem_file(&emulator.ca_path).unwrap(),
        aasp::http::RetryPolicy::default(),
    );
    let policy = aasp::azure::policy::ReleasePolicy::for_hostdata(
        &emulator.host(),
        &hex::encode(sim.host_data()),
        &[],
    );
    kms.import(
        &aasp::azure::kms::KeyUrl::new(&emulator.url, name).unwrap(),
        &jwk,
        &policy,
        &access,
    )
    .await
    .unwrap();
}

/// The filesystem entry for `aasp encfs run`: what `create` wrote, plus where it is.
fn filesystem(entry: &Value, dev: &Dev, url: &str, private: bool, mount_point: &Path) -> Value {
    let mut entry = entry.clone();
    entry["azure_url"] = json!(url);
    entry["azure_url_private"] = json!(private);
    entry["mount_point"] = json!(mount_point.to_str().unwrap());
    entry["key"]["akv"]["endpoint"] = json!(dev.emulator.url);
    entry["key"]["authority"]["endpoint"] = json!(dev.emulator.host());
    entry
}

/// A running sidecar; a test that fails midway still stops it (SIGTERM, so it unmounts).
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            for _ in 0..200 {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Sidecar {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The options by which a key is released against the dev stack (simulated SNP, the emulator's
/// THIM, IMDS, MAA and Managed HSM, its Trustee KBS), as `aasp encfs run` and `check` take them.
pub(crate) fn release_options(dev: &Dev) -> Vec<std::ffi::OsString> {
    let (url, host) = (dev.emulator.url.as_str(), dev.emulator.host());
    let mut options: Vec<std::ffi::OsString> = ["--attester", "sim", "--state-dir"]
        .into_iter()
        .map(Into::into)
        .collect();
    options.push(dev.state_dir.clone().into());
    for (flag, value) in [
        ("--cert-source", "thim"),
        ("--cert-endpoint", url),
        ("--imds-endpoint", url),
        ("--maa-endpoint", &host),
        ("--allow-kms-host", &host),
        ("--kbs-url", url),
    ] {
        options.extend([flag.into(), value.into()]);
    }
    options.extend(["--extra-ca".into(), dev.emulator.ca_path.clone().into()]);
    options
}

/// `aasp encfs run` as the sidecar runs, wired to the dev stack's emulator.
fn start_sidecar(dev: &Dev, filesystems: &[Value], dir: &Path, extra_hosts: &[String]) -> Sidecar {
    let args = json!({ "azure_filesystems": filesystems });
    // URL-safe base64, as upstream's own test encodes it.
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(args.to_string());
    let log = std::fs::File::create(dir.join("sidecar.log")).unwrap();
    let mut hosts = vec![dev.emulator.host()];
    hosts.extend_from_slice(extra_hosts);
    Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["encfs", "run"])
        .args(release_options(dev))
        .args(["--allow-storage-host", &hosts.join(",")])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .env("EncfsSideCarArgs", encoded)
        .env("LogLevel", "info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Sidecar)
        .unwrap()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default()
}

/// Waits until every mount point is a symlink (the sidecar's readiness), or the sidecar ends.
fn wait_ready(child: &mut Child, mount_points: &[&Path], dir: &Path) {
    for _ in 0..1200 {
        if mount_points
            .iter()
            .all(|m| std::fs::symlink_metadata(m).is_ok())
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the sidecar ended ({status}) before it was ready:\n{}",
                log_of(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the sidecar was not ready within 60 s:\n{}", log_of(dir));
}

/// SIGTERM, then the exit status.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the sidecar did not exit within 30 s of SIGTERM");
}

/// Mounts (and loop devices) that mention `dir`.
pub(crate) fn left_behind(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_owned)
        .collect();
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    found.extend(
        String::from_utf8_lossy(&loops.stdout)
            .lines()
            .filter(|l| l.contains(&dir) || l.contains("aasp"))
            .map(str::to_owned),
    );
    found
}

fn upload(image: &Path, url: &str, dev: &Dev, private: bool, hosts: &[String]) {
    let mut args = vec!["encfs", "upload", image.to_str().unwrap(), url];
    let ca = dev.emulator.ca_path.to_str().unwrap().to_owned();
    let joined = hosts.join(",");
    if private {
        args.extend(["--private", "--imds-endpoint", &dev.emulator.url]);
        args.extend(["--allow-storage-host", &joined]);
    }
    args.extend(["--extra-ca", &ca]);
    ok(aasp(&args));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oct_and_rsa_filesystems_from_the_emulator_and_azurite_mount_write_and_unmount() {
    require_root!();
    let dev = Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // fs 0: an oct key, read-only, a private blob on the emulator (bearer token).
    let (image0, key0, entry0) = create_image(dir, "fs-oct", "oct", false);
    import_key(&dev, "fs-oct", &key0).await;
    let url0 = format!("{}/devstoreaccount1/private/fs-oct.img", dev.emulator.url);
    upload(&image0, &url0, &dev, true, &[dev.emulator.host()]);
    // Uploading again without --force is refused.
    let again = aasp(&[
        "encfs",
        "upload",
        image0.to_str().unwrap(),
        &url0,
        "--private",
        "--imds-endpoint",
        &dev.emulator.url,
        "--allow-storage-host",
        &dev.emulator.host(),
        "--extra-ca",
        dev.emulator.ca_path.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // fs 1: an RSA key (HKDF with the salt `create` picked), read-write, Azurite with a SAS.
    let (image1, key1, entry1) = create_image(dir, "fs-rsa", "rsa", true);
    assert!(entry1["key_derivation"]["salt"].as_str().unwrap().len() == 64);
    import_key(&dev, "fs-rsa", &key1).await;
    let azurite = Azurite::start(None);
    let http = aasp::http::client(&Default::default()).unwrap();
    create_container(&http, &azurite.base(), "images", ContainerAuth::Sas, false).await;
    let url1 = format!("{}/images/fs-rsa.img?{}", azurite.base(), account_sas());
    upload(&image1, &url1, &dev, false, &[]);

    let remote = dir.join("remote");
    std::fs::create_dir(&remote).unwrap();
    let (mp0, mp1) = (remote.join("oct"), remote.join("rsa"));
    let filesystems = [
        filesystem(&entry0, &dev, &url0, true, &mp0),
        filesystem(&entry1, &dev, &url1, false, &mp1),
    ];
    let mut sidecar = start_sidecar(&dev, &filesystems, dir, &[]);
    wait_ready(&mut sidecar, &[&mp0, &mp1], dir);
    assert_eq!(
        std::fs::read_link(&mp0).unwrap(),
        PathBuf::from(".filesystem-0")
    );
    assert_eq!(
        std::fs::read_link(&mp1).unwrap(),
        PathBuf::from(".filesystem-1")
    );
    assert_eq!(
        std::fs::read_to_string(mp0.join("hello.txt")).unwrap(),
        "hello from fs-oct\n"
    );
    assert_eq!(
        std::fs::read(mp0.join("sub/big.bin")).unwrap(),
        big("fs-oct")
    );
    assert_eq!(
        std::fs::read_to_string(mp1.join("hello.txt")).unwrap(),
        "hello from fs-rsa\n"
    );
    assert_eq!(
        std::fs::read(mp1.join("sub/big.bin")).unwrap(),
        big("fs-rsa")
    );
    // Read-only is read-only; read-write takes writes (not synced: SIGTERM must save them).
    assert!(std::fs::write(mp0.join("new.txt"), "x").is_err());
    let written: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(mp1.join("written.bin"), &written).unwrap();
    std::fs::remove_file(mp1.join("hello.txt")).unwrap();
    let log = log_of(dir);
    assert!(
        log.contains("filesystem 0") && log.contains("is ready"),
        "{log}"
    );
    // The SAS never reaches the log.
    assert!(!log.contains("sig="), "{log}");

    let status = terminate(&mut sidecar);
    assert!(status.success(), "{status}:\n{}", log_of(dir));
    assert!(left_behind(dir).is_empty(), "{:?}", left_behind(dir));
    for gone in [
        &mp0,
        &mp1,
        &remote.join(".filesystem-0"),
        &remote.join(".filesystem-1"),
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{} is left",
            gone.display()
        );
    }

    // Mounted again: what was written is in storage.
    let mut sidecar = start_sidecar(&dev, &filesystems[1..], dir, &[]);
    wait_ready(&mut sidecar, &[&mp1], dir);
    assert_eq!(std::fs::read(mp1.join("written.bin")).unwrap(), written);
    assert!(!mp1.join("hello.txt").exists());
    assert!(terminate(&mut sidecar).success());
    assert!(left_behind(dir).is_empty(), "{:?}", left_behind(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kbs_resource_opens_a_filesystem() {
    require_root!();
    let dev = Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (image, key, entry) = create_image(dir, "fs-kbs", "oct", false);
    // The KBS holds the oct key's bytes: they are the passphrase.
    let jwk: Jwk = serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk.k.as_deref().unwrap())
        .unwrap();
    dev.emulator
        .kbs
        .put_resource("default/encfs/fs-kbs", &bytes)
        .unwrap();
    dev.emulator
        .blobs
        .put("public", "fs-kbs.img", std::fs::read(&image).unwrap())
        .unwrap();
    let url = format!("{}/devstoreaccount1/public/fs-kbs.img", dev.emulator.url);
    let remote = dir.join("remote");
    std::fs::create_dir(&remote).unwrap();
    let mp = remote.join("kbs");
    let mut fs = filesystem(&entry, &dev, &url, false, &mp);
    fs["key"]["kid"] = json!("kbs:///default/encfs/fs-kbs");
    fs["key"]["kty"] = json!("");
    let mut sidecar = start_sidecar(&dev, &[fs], dir, &[]);
    wait_ready(&mut sidecar, &[&mp], dir);
    assert_eq!(
        std::fs::read_to_string(mp.join("hello.txt")).unwrap(),
        "hello from fs-kbs\n"
    );
    assert!(terminate(&mut sidecar).success());
    assert!(left_behind(dir).is_empty(), "{:?}", left_behind(dir));
}

/// Runs the sidecar for `filesystems` and expects it to fail without mounting anything.
fn expect_refusal(dev: &Dev, filesystems: &[Value], dir: &Path, mount_points: &[&Path]) -> String {
    let mut sidecar = start_sidecar(dev, filesystems, dir, &[]);
    let mut status = None;
    for _ in 0..1200 {
        if let Some(s) = sidecar.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = sidecar.kill();
        panic!("the sidecar did not give up:\n{}", log_of(dir));
    };
    assert!(!status.success(), "{}", log_of(dir));
    assert!(left_behind(dir).is_empty(), "{:?}", left_behind(dir));
    for mp in mount_points {
        assert!(
            std::fs::symlink_metadata(mp).is_err(),
            "{} is left",
            mp.display()
        );
    }
    log_of(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_and_hostile_headers_are_refused_with_nothing_mounted() {
    require_root!();
    let dev = Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let remote = dir.join("remote");
    std::fs::create_dir(&remote).unwrap();
    let (good, _key, entry) = create_image(dir, "fs-good", "oct", false);
    let (_, other_key, _) = create_image(dir, "fs-other", "oct", false);
    // The HSM holds another key under the image's kid: it does not open the image.
    import_key(&dev, "fs-good", &other_key).await;
    let bytes = std::fs::read(&good).unwrap();
    dev.emulator
        .blobs
        .put("public", "good.img", bytes.clone())
        .unwrap();
    let url = |name: &str| format!("{}/devstoreaccount1/public/{name}", dev.emulator.url);

    // fs 0 mounts, fs 1 has the wrong key: the sidecar fails and unmounts fs 0 too.
    let (mp0, mp1) = (remote.join("first"), remote.join("second"));
    let (_, key_ok, entry_ok) = create_image(dir, "fs-ok", "oct", false);
    import_key(&dev, "fs-ok", &key_ok).await;
    let ok_image = std::fs::read(dir.join("fs-ok.img")).unwrap();
    dev.emulator
        .blobs
        .put("public", "ok.img", ok_image)
        .unwrap();
    let log = expect_refusal(
        &dev,
        &[
            filesystem(&entry_ok, &dev, &url("ok.img"), false, &mp0),
            filesystem(&entry, &dev, &url("good.img"), false, &mp1),
        ],
        dir,
        &[&mp0, &mp1],
    );
    assert!(log.contains("filesystem 1"), "{log}");
    assert!(log.contains("does not open the image"), "{log}");
    assert!(log.contains(&url("good.img")), "{log}");

    // A header whose JSON was changed after its checksum (e.g. to cipher_null) is refused
    // before any key is asked for.
    let mut hostile = bytes.clone();
    let json_at = 4096
        + hostile[4096..8192]
            .windows(15)
            .position(|w| w == b"aes-xts-plain64")
            .unwrap();
    hostile[json_at..json_at + 15].copy_from_slice(b"cipher_null-ecb");
    dev.emulator
        .blobs
        .put("public", "hostile.img", hostile)
        .unwrap();
    let releases = dev.emulator.counters.release();
    let log = expect_refusal(
        &dev,
        &[filesystem(&entry, &dev, &url("hostile.img"), false, &mp0)],
        dir,
        &[&mp0],
    );
    assert!(log.contains("LUKS2 header is refused"), "{log}");
    assert_eq!(
        dev.emulator.counters.release(),
        releases,
        "no key was released for it"
    );

    // Not an image at all; and a mount point that already exists.
    dev.emulator
        .blobs
        .put("public", "zeros.img", vec![0; 1 << 20])
        .unwrap();
    let log = expect_refusal(
        &dev,
        &[filesystem(&entry, &dev, &url("zeros.img"), false, &mp0)],
        dir,
        &[&mp0],
    );
    assert!(log.contains("LUKS2"), "{log}");
    std::fs::create_dir(&mp1).unwrap();
    let log = expect_refusal(
        &dev,
        &[filesystem(&entry_ok, &dev, &url("ok.img"), false, &mp1)],
        dir,
        &[],
    );
    assert!(log.contains("already exists"), "{log}");
}
