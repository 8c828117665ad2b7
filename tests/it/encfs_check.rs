//! `aasp encfs check IMAGE --key-ref KID`: the offline check with the key released as the
//! sidecar releases it (simulated SNP attester, the emulator's MAA and Managed HSM, or its
//! Trustee KBS for a `kbs:///` kid). The right key opens the image (exit 0); a wrong one, or an
//! RSA key without the salt, is refused (exit 1) with what to fix; a header that is not LUKS2
//! is refused before any key is released. No root needed.

use crate::common::Dev;
use crate::encfs_mount::{create_image, import_key, release_options};
use aasp::azure::jwk::Jwk;
use base64::Engine;
use std::path::Path;
use std::process::{Command, Output};

/// `aasp encfs check IMAGE --key-ref KID` with the release options `aasp encfs run` takes,
/// wired to the dev stack.
fn check(dev: &Dev, image: &Path, kid: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["encfs", "check"])
        .arg(image)
        .args(["--key-ref", kid])
        .args(["--akv-endpoint", &dev.emulator.url])
        .args(release_options(dev))
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_key_opens_its_image_and_a_wrong_one_is_refused_with_what_to_fix() {
    let dev = Dev::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (oct_image, oct_key, _) = create_image(dir, "chk-oct", "oct", false);
    let (_, other_key, _) = create_image(dir, "chk-other", "oct", false);
    let (rsa_image, rsa_key, _) = create_image(dir, "chk-rsa", "rsa", false);
    import_key(&dev, "chk-oct", &oct_key).await;
    import_key(&dev, "chk-other", &other_key).await;
    import_key(&dev, "chk-rsa", &rsa_key).await;

    // kty comes from IMAGE.encfs.json, as `aasp encfs create` wrote it.
    let out = check(&dev, &oct_image, "chk-oct", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("opens with this key") && text(&out).contains("ext4 inside"),
        "{}",
        text(&out)
    );
    let released = dev.emulator.counters.release();
    assert!(released > 0, "the key was released by the emulated HSM");

    // Another key: exit 1, naming the key and what to check.
    let out = check(&dev, &oct_image, "chk-other", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the released key (chk-other) does not open the image")
            && stderr.contains("no keyslot opens with this passphrase")
            && stderr.contains("check that key.kid names the key the image was made with"),
        "{stderr}"
    );

    // RSA: HKDF with the salt and label from IMAGE.encfs.json opens; without the salt, the
    // error says the salt is missing (upstream issue 233).
    let out = check(&dev, &rsa_image, "chk-rsa", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = check(&dev, &rsa_image, "chk-rsa", &["--salt", ""]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the key_derivation salt"),
        "{}",
        text(&out)
    );
    // The wrong kty for the key is refused as the sidecar refuses it.
    let out = check(&dev, &rsa_image, "chk-rsa", &["--kty", "oct-HSM"]);
    assert!(!out.status.success(), "{}", text(&out));

    // A Trustee KBS resource holding the oct key's bytes opens the image too.
    let jwk: Jwk = serde_json::from_slice(&std::fs::read(&oct_key).unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk.k.as_deref().unwrap())
        .unwrap();
    dev.emulator
        .kbs
        .put_resource("default/encfs/chk-oct", &bytes)
        .unwrap();
    let out = check(&dev, &oct_image, "kbs:///default/encfs/chk-oct", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = check(&dev, &oct_image, "kbs:///default/key/demo", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("check that the KBS resource is the image's passphrase"),
        "{}",
        text(&out)
    );

    // Not a LUKS2 image: refused before any key is released.
    let zeros = dir.join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let before = dev.emulator.counters.release();
    let out = check(&dev, &zeros, "chk-oct", &["--kty", "oct-HSM"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("LUKS2"), "{}", text(&out));
    assert_eq!(
        dev.emulator.counters.release(),
        before,
        "a key was released"
    );
}
