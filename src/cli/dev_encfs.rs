//! `aasp dev`'s encrypted demo filesystem: a small LUKS2/ext4 image (made as `aasp encfs create`
//! makes one) that opens with the demo oct key, which the emulated Managed HSM releases to the
//! simulated workload; served from the emulator's blob endpoint, with the `aasp encfs run`
//! command that mounts it.

use super::dev::{command_line, shell_word, sidecar_env, DevStack, DEMO_OCT_KEY};
use crate::azure::jwk::Jwk;
use crate::emulator::blob::{ACCOUNT, PUBLIC_CONTAINER};
use crate::encfs::args::{KeyDerivation, KeyKind};
use crate::encfs::image;
use crate::encfs::passphrase::Passphrase;
use std::path::{Path, PathBuf};

/// The demo image's blob in the emulator's public container.
pub const DEMO_ENCFS_BLOB: &str = "encfs-demo.img";
/// The file the demo filesystem holds, and its text.
pub const DEMO_ENCFS_FILE: &str = "hello.txt";
pub const DEMO_ENCFS_TEXT: &str = "hello from aasp dev's encrypted filesystem\n";
/// Room for the file, ext4's metadata and the 1 MiB LUKS2 header: small, so start-up stays quick.
const DEMO_IMAGE_SIZE: u64 = 6 << 20;

/// The seeded demo: where it mounts and the command that mounts it.
pub struct EncfsDemo {
    pub url: String,
    pub mount_point: PathBuf,
    /// `EncfsSideCarArgs=… AASP_…=… <exe> encfs run`, shell-quoted.
    pub command: String,
    /// `aasp encfs check` of the local image with the key released as the sidecar gets it.
    pub check_command: String,
}

/// Reuses the demo image in the state directory when it still opens with the demo oct key
/// (a restart costs no mkfs), else makes it; then serves it and composes the command.
pub async fn seed(stack: &DevStack, oct: Jwk, exe: &str) -> Result<EncfsDemo, String> {
    let dir = stack.state_dir.join("encfs");
    crate::files::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let image_path = dir.join("demo.img");
    let passphrase = Passphrase::from_jwk(&oct, KeyKind::Oct, &KeyDerivation::default())
        .map_err(|e| e.to_string())?;
    let bytes = {
        let (dir, image_path) = (dir.clone(), image_path.clone());
        tokio::task::spawn_blocking(move || make_or_reuse(&dir, &image_path, &passphrase))
            .await
            .map_err(|e| e.to_string())??
    };
    stack
        .emulator
        .blobs
        .put(PUBLIC_CONTAINER, DEMO_ENCFS_BLOB, bytes)?;
    // The mount point's parent must exist (the sidecar's contract), the mount point must not.
    let remote = dir.join("remote");
    crate::files::create_private_dir(&remote).map_err(|e| format!("{}: {e}", remote.display()))?;
    let mount_point = remote.join("demo");
    let url = format!(
        "{}/{ACCOUNT}/{PUBLIC_CONTAINER}/{DEMO_ENCFS_BLOB}",
        stack.emulator.url
    );
    let args = serde_json::json!({
        "azure_info": { "certcache": super::dev::certcache(stack) },
        "azure_filesystems": [{
            "azure_url": url,
            "azure_url_private": false,
            "mount_point": mount_point.display().to_string(),
            "read_write": false,
            "key": {
                "kid": DEMO_OCT_KEY,
                "kty": "oct-HSM",
                "authority": { "endpoint": stack.emulator.host() },
                "akv": { "endpoint": stack.emulator.url },
            },
        }],
    });
    use base64::Engine;
    let mut vars = vec![(
        crate::env::ENCFS_SIDECAR_ARGS,
        base64::engine::general_purpose::STANDARD.encode(args.to_string()),
    )];
    vars.extend(sidecar_env(stack));
    // The FUSE files stay in the state directory too, not in /run.
    vars.push((
        crate::env::AASP_ENCFS_WORK_DIR,
        dir.join("work").display().to_string(),
    ));
    let emulator = &stack.emulator.url;
    let host = stack.emulator.host();
    let word = |path: &Path| shell_word(&path.display().to_string());
    let check_command = format!(
        "{exe} encfs check {image} --key-ref {DEMO_OCT_KEY} --kty oct-HSM --akv-endpoint \
         {emulator} --attester sim --state-dir {state} --cert-source thim --cert-endpoint \
         {emulator} --imds-endpoint {emulator} --extra-ca {ca} --maa-endpoint {host} \
         --allow-kms-host {host}",
        image = word(&image_path),
        state = word(&stack.state_dir),
        ca = word(&stack.emulator.ca_path),
    );
    Ok(EncfsDemo {
        url,
        mount_point,
        command: command_line(&vars, &format!("{exe} encfs run")),
        check_command,
    })
}

/// The image's bytes: the existing one if the key opens it, else a new one.
fn make_or_reuse(
    dir: &Path,
    image_path: &Path,
    passphrase: &Passphrase,
) -> Result<Vec<u8>, String> {
    let reusable = image::check(image_path, passphrase).is_ok_and(|checked| checked.ext4);
    if !reusable {
        make(dir, image_path, passphrase)?;
    }
    std::fs::read(image_path).map_err(|e| format!("{}: {e}", image_path.display()))
}

fn make(dir: &Path, image_path: &Path, passphrase: &Passphrase) -> Result<(), String> {
    match std::fs::remove_file(image_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", image_path.display()))
        }
        _ => {}
    }
    // The filesystem's root takes this directory's mode: readable by any workload user.
    let content = dir.join(format!(".content-{}", std::process::id()));
    let made = (|| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&content)
            .map_err(|e| format!("{}: {e}", content.display()))?;
        crate::files::write_public(&content.join(DEMO_ENCFS_FILE), DEMO_ENCFS_TEXT.as_bytes())
            .map_err(|e| e.to_string())?;
        image::create(&content, image_path, DEMO_IMAGE_SIZE, passphrase)
            .map(drop)
            .map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&content);
    made
}
