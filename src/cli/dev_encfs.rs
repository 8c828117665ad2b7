//! `aasp dev`'s encrypted demo filesystems: two small LUKS2/ext4 images (made as `aasp encfs
//! create` makes them), one opening with the demo oct key, one with a passphrase derived from
//! the demo RSA key and a salt (upstream's `RSA-HSM` rule), both keys released by the emulated
//! Managed HSM to the simulated workload only; served from the emulator's blob endpoint, with
//! the `aasp encfs run` command that mounts them and the `aasp encfs check` lines that check
//! the released keys against the images.

use super::dev::{command_line, shell_word, sidecar_env, DevStack, DEMO_OCT_KEY, DEMO_RSA_KEY};
use super::encfs::entry_path;
use crate::azure::jwk::Jwk;
use crate::emulator::blob::{ACCOUNT, PUBLIC_CONTAINER};
use crate::encfs::args::{KeyDerivation, KeyKind};
use crate::encfs::image;
use crate::encfs::passphrase::Passphrase;
use std::path::{Path, PathBuf};

/// The file each demo filesystem holds, and its text.
pub const DEMO_ENCFS_FILE: &str = "hello.txt";
pub const DEMO_ENCFS_TEXT: &str = "hello from aasp dev's encrypted filesystem\n";
/// Room for the file, ext4's metadata and the 1 MiB LUKS2 header: small, so start-up stays quick.
const DEMO_IMAGE_SIZE: u64 = 6 << 20;

/// One demo filesystem as the guide shows it.
pub struct DemoFilesystem {
    pub url: String,
    pub mount_point: PathBuf,
    /// `aasp encfs check` of the local image with the key released as the sidecar gets it.
    pub check_command: String,
}

/// The seeded demo: the filesystems, and the command that mounts them all.
pub struct EncfsDemo {
    pub filesystems: Vec<DemoFilesystem>,
    /// `EncfsSideCarArgs=… AASP_…=… <exe> encfs run`, shell-quoted.
    pub command: String,
}

/// A demo image and what opens it.
struct Demo {
    kid: &'static str,
    kind: KeyKind,
    jwk: Jwk,
    /// `<state>/encfs/<kid>.img`; its entry is `<kid>.img.encfs.json` beside it.
    image: PathBuf,
}

/// Reuses each demo image in the state directory while its key (and, for RSA, the salt in its
/// entry) still opens it, so a restart costs no mkfs; else makes it. Then serves them and
/// composes the commands.
pub async fn seed(stack: &DevStack, oct: Jwk, rsa: Jwk, exe: &str) -> Result<EncfsDemo, String> {
    let dir = stack.state_dir.join("encfs");
    crate::files::create_private_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The mount points' parent must exist (the sidecar's contract), the mount points must not.
    let remote = dir.join("remote");
    crate::files::create_private_dir(&remote).map_err(|e| format!("{}: {e}", remote.display()))?;
    let demos = [
        (DEMO_OCT_KEY, KeyKind::Oct, oct),
        (DEMO_RSA_KEY, KeyKind::Rsa, rsa),
    ]
    .map(|(kid, kind, jwk)| Demo {
        kid,
        kind,
        jwk,
        image: dir.join(format!("{kid}.img")),
    });
    // Both at once: mkfs and the fsync of a new image are mostly waiting.
    let made = futures_util::future::join_all(demos.into_iter().map(|demo| {
        tokio::task::spawn_blocking(move || make_or_reuse(&demo).map(|made| (demo, made)))
    }))
    .await;
    let mut filesystems = Vec::new();
    let mut entries = Vec::new();
    for outcome in made {
        let (demo, (bytes, derivation)) = outcome.map_err(|e| e.to_string())??;
        let blob = format!("encfs-{}.img", demo.kid);
        stack.emulator.blobs.put(PUBLIC_CONTAINER, &blob, bytes)?;
        let url = format!("{}/{ACCOUNT}/{PUBLIC_CONTAINER}/{blob}", stack.emulator.url);
        let mount_point = remote.join(demo.kid);
        let entry = serde_json::json!({
            "azure_url": url,
            "azure_url_private": false,
            "mount_point": mount_point.display().to_string(),
            "read_write": false,
            "key": {
                "kid": demo.kid,
                "kty": match demo.kind { KeyKind::Oct => "oct-HSM", KeyKind::Rsa => "RSA-HSM" },
                "authority": { "endpoint": stack.emulator.host() },
                "akv": { "endpoint": stack.emulator.url },
            },
            "key_derivation": derivation,
        });
        // Beside the image, as `aasp encfs create` writes it: `aasp encfs check` reads the
        // salt from here, never from the image.
        let entry_path = entry_path(&demo.image);
        let text = serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?;
        crate::files::write_private(&entry_path, text.as_bytes())
            .map_err(|e| format!("{}: {e}", entry_path.display()))?;
        entries.push(entry);
        filesystems.push(DemoFilesystem {
            url,
            mount_point,
            check_command: check_command(stack, exe, &demo),
        });
    }
    let args = serde_json::json!({
        "azure_info": { "certcache": super::dev::certcache(stack) },
        "azure_filesystems": entries,
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
    Ok(EncfsDemo {
        filesystems,
        command: command_line(&vars, &format!("{exe} encfs run")),
    })
}

/// `aasp encfs check IMAGE --key-ref KID` with the options of the sidecar line as flags (kty and
/// salt come from the entry beside the image).
fn check_command(stack: &DevStack, exe: &str, demo: &Demo) -> String {
    let emulator = &stack.emulator.url;
    let host = stack.emulator.host();
    let word = |path: &Path| shell_word(&path.display().to_string());
    format!(
        "{exe} encfs check {image} --key-ref {kid} --akv-endpoint {emulator} --attester sim \
         --state-dir {state} --cert-source thim --cert-endpoint {emulator} --imds-endpoint \
         {emulator} --extra-ca {ca} --maa-endpoint {host} --allow-kms-host {host}",
        image = word(&demo.image),
        kid = demo.kid,
        state = word(&stack.state_dir),
        ca = word(&stack.emulator.ca_path),
    )
}

/// The image's bytes and the derivation that opens it: the existing image when it still opens,
/// else a new one (an RSA key gets a new random salt).
fn make_or_reuse(demo: &Demo) -> Result<(Vec<u8>, KeyDerivation), String> {
    let derivation = match demo.kind {
        KeyKind::Oct => KeyDerivation::default(),
        KeyKind::Rsa => previous_derivation(&entry_path(&demo.image)).unwrap_or_default(),
    };
    let opens = Passphrase::from_jwk(&demo.jwk, demo.kind, &derivation)
        .ok()
        .is_some_and(|passphrase| {
            image::check(&demo.image, &passphrase).is_ok_and(|checked| checked.ext4)
        });
    let derivation = if opens {
        derivation
    } else {
        let derivation = match demo.kind {
            KeyKind::Oct => KeyDerivation::default(),
            KeyKind::Rsa => KeyDerivation::random(None)?,
        };
        let passphrase =
            Passphrase::from_jwk(&demo.jwk, demo.kind, &derivation).map_err(|e| e.to_string())?;
        make(&demo.image, &passphrase)?;
        derivation
    };
    let bytes = std::fs::read(&demo.image).map_err(|e| format!("{}: {e}", demo.image.display()))?;
    Ok((bytes, derivation))
}

/// The salt and label of the entry written with the image, if any.
fn previous_derivation(entry: &Path) -> Option<KeyDerivation> {
    #[derive(serde::Deserialize)]
    struct Entry {
        key_derivation: KeyDerivation,
    }
    let text = std::fs::read(entry).ok()?;
    serde_json::from_slice::<Entry>(&text)
        .ok()
        .map(|e| e.key_derivation)
}

fn make(image_path: &Path, passphrase: &Passphrase) -> Result<(), String> {
    match std::fs::remove_file(image_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", image_path.display()))
        }
        _ => {}
    }
    // The filesystem's root takes this directory's mode: readable by any workload user.
    let content = image_path.with_extension(format!("content-{}", std::process::id()));
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
