//! LUKS2 interop with real cryptsetup (both directions), hostile headers, and the parser under
//! random input. Fixtures are made at test time: `mkfs.ext4` and `cryptsetup` (packages
//! e2fsprogs and cryptsetup-bin, installed by buildall.sh) on plain files, no root, no
//! device-mapper.

use aasp::encfs::image;
use aasp::encfs::luks2::{Luks2Error, Luks2Header, BINARY_HEADER_LEN};
use aasp::encfs::passphrase::Passphrase;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use zeroize::Zeroizing;

const AASP: &str = env!("CARGO_BIN_EXE_aasp");

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed: buildall.sh installs cryptsetup-bin and e2fsprogs");
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn passphrase(bytes: &[u8]) -> Passphrase {
    Passphrase::from_kbs_resource(Zeroizing::new(bytes.to_vec())).unwrap()
}

/// A directory with a file in it, for `create`.
fn content(dir: &Path) -> PathBuf {
    let from = dir.join("content");
    std::fs::create_dir_all(from.join("sub")).unwrap();
    std::fs::write(from.join("hello.txt"), b"hello from an encfs image\n").unwrap();
    std::fs::write(from.join("sub/data.bin"), vec![0xa5u8; 100_000]).unwrap();
    from
}

/// An ext4 image of `content` encrypted by real cryptsetup (offline `reencrypt --encrypt`,
/// which encrypts the data in user space), with the given extra options.
fn cryptsetup_image(dir: &Path, name: &str, key: &[u8], extra: &[&str]) -> PathBuf {
    let from = content(&dir.join(format!("{name}.content")));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&key_file, key).unwrap();
    let img = dir.join(name);
    let file = std::fs::File::create(&img).unwrap();
    file.set_len(48 << 20).unwrap();
    run(Command::new(tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&from)
        .arg(&img)
        .arg("32M"));
    run(Command::new(tool("cryptsetup"))
        .args(["reencrypt", "--encrypt", "--type", "luks2", "--batch-mode"])
        .args(["--reduce-device-size", "16M", "--key-file"])
        .arg(&key_file)
        .args(extra)
        .arg(&img));
    img
}

/// Reads `img`'s header the way the mount side does, and opens it.
fn open(img: &Path, key: &[u8]) -> Result<(Luks2Header, aasp::encfs::luks2::Volume), Luks2Error> {
    let bytes = std::fs::read(img).unwrap();
    let header = parse_prefixes(&bytes)?;
    let volume = header.unlock(&passphrase(key))?;
    Ok((header, volume))
}

/// Calls `parse` with growing prefixes as it asks, checking it asks at most twice.
fn parse_prefixes(bytes: &[u8]) -> Result<Luks2Header, Luks2Error> {
    let mut want = BINARY_HEADER_LEN;
    for _ in 0..3 {
        match Luks2Header::parse(&bytes[..want.min(bytes.len())]) {
            Err(Luks2Error::Truncated { needed }) if (needed as usize) > want => {
                want = needed as usize;
            }
            other => return other,
        }
    }
    panic!("parse asked for more than twice");
}

/// Decrypts the whole payload with aasp and reads `/hello.txt` from it with debugfs (which
/// reads an ext4 file system without mounting it): every block the file system needs to find
/// the file must have decrypted right, not only the first sector.
fn hello_in(volume: &aasp::encfs::luks2::Volume, image: &[u8], dir: &Path) -> Vec<u8> {
    let mut plain = image[volume.data_offset() as usize..].to_vec();
    let len = volume.data_size(image.len() as u64) as usize;
    volume.decrypt(0, &mut plain[..len]).unwrap();
    let plain_file = dir.join("plain.ext4");
    std::fs::write(&plain_file, &plain[..len]).unwrap();
    run(Command::new(tool("debugfs"))
        .args(["-R", "cat /hello.txt"])
        .arg(&plain_file))
    .stdout
}

fn ext4_magic_of(volume: &aasp::encfs::luks2::Volume, image: &[u8]) -> [u8; 2] {
    let off = volume.data_offset() as usize;
    // 4096 bytes: whole sectors whatever the sector size, and the superblock at 1024.
    let mut first = image[off..off + 4096].to_vec();
    volume.decrypt(0, &mut first).unwrap();
    [first[1080], first[1081]]
}

#[test]
fn cryptsetup_images_parse_unlock_and_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let key = b"0123456789abcdef0123456789abcdef";
    let cases: [(&str, &[&str]); 2] = [
        // upstream generatefs.sh's settings
        (
            "pbkdf2-4k.img",
            &[
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--sector-size",
                "4096",
            ],
        ),
        // cryptsetup's default KDF (small memory for the test), AES-128-XTS, 512-byte sectors
        (
            "argon2id-512.img",
            &[
                "--pbkdf",
                "argon2id",
                "--pbkdf-memory",
                "32768",
                "--pbkdf-force-iterations",
                "4",
                "--pbkdf-parallel",
                "2",
                "--key-size",
                "256",
                "--sector-size",
                "512",
            ],
        ),
    ];
    for (name, extra) in cases {
        let img = cryptsetup_image(dir.path(), name, key, extra);
        let bytes = std::fs::read(&img).unwrap();
        let (header, volume) = open(&img, key).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(volume.data_offset(), header.data_offset());
        assert_eq!(ext4_magic_of(&volume, &bytes), [0x53, 0xef], "{name}");
        assert_eq!(
            hello_in(&volume, &bytes, dir.path()),
            b"hello from an encfs image\n",
            "{name}"
        );
        // The whole filesystem decrypts: its last block is readable too (sizes agree).
        let size = volume.data_size(bytes.len() as u64);
        assert!(size >= 32 << 20, "{name}: payload {size}");
        // A wrong passphrase opens nothing.
        assert_eq!(
            open(&img, b"wrong passphrase").unwrap_err(),
            Luks2Error::WrongPassphrase { tried: 1 },
            "{name}"
        );
    }
}

#[test]
fn aasp_images_open_with_cryptsetup() {
    let dir = tempfile::tempdir().unwrap();
    let from = content(dir.path());
    let img = dir.path().join("aasp.img");
    let key = [0x42u8; 32];
    let created = image::create(&from, &img, 16 << 20, &passphrase(&key)).unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    assert_eq!(created.filesystem_size, 15 << 20);
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, key).unwrap();

    let dump = run(Command::new(tool("cryptsetup")).arg("luksDump").arg(&img));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("cipher: aes-xts-plain64"), "{dump}");
    assert!(dump.contains("sector: 4096 [bytes]"), "{dump}");
    assert!(dump.contains("PBKDF:      pbkdf2"), "{dump}");
    run(Command::new(tool("cryptsetup"))
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&key_file)
        .arg(&img));
    std::fs::write(&key_file, [0x43u8; 32]).unwrap();
    let wrong = Command::new(tool("cryptsetup"))
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&key_file)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        !wrong.status.success(),
        "cryptsetup opened with a wrong key"
    );

    // aasp reads back its own image: ext4 with the content's file in it (debugfs reads the
    // decrypted filesystem without mounting).
    let checked = image::check(&img, &passphrase(&key)).unwrap();
    assert!(checked.ext4);
    let (_, volume) = open(&img, &key).unwrap();
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(
        hello_in(&volume, &bytes, dir.path()),
        b"hello from an encfs image\n"
    );
}

#[test]
fn validated_copy_is_what_cryptsetup_reads() {
    let dir = tempfile::tempdir().unwrap();
    let key = b"0123456789abcdef0123456789abcdef";
    let img = cryptsetup_image(
        dir.path(),
        "detached.img",
        key,
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    );
    let (header, _) = open(&img, key).unwrap();
    let copy = header.to_bytes();
    assert_eq!(copy.len() as u64, header.header_size());
    let header_file = dir.path().join("header");
    std::fs::write(&header_file, &copy).unwrap();
    let key_file = dir.path().join("detached.img.key");
    run(Command::new(tool("cryptsetup"))
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(&key_file)
        .arg("--header")
        .arg(&header_file)
        .arg(&img));
    // The copy parses to the same header.
    let again = Luks2Header::parse(&copy).unwrap();
    assert_eq!(again.data_offset(), header.data_offset());
    assert_eq!(again.uuid(), header.uuid());
}

// ---- hostile headers ----

/// An aasp-made image's first MiB (header and keyslot) and its passphrase.
fn fixture() -> (Vec<u8>, Passphrase) {
    let p = passphrase(&[9u8; 32]);
    let key = aasp::encfs::format::new_volume_key().unwrap();
    let (bytes, _) = aasp::encfs::format::header(&key, &p).unwrap();
    (bytes, p)
}

const HDR: usize = 16384;

/// Rewrites both JSON copies through `edit` and recomputes both checksums, so only the
/// semantic checks can refuse the result.
fn rewrite_json(bytes: &mut [u8], edit: impl Fn(&mut serde_json::Value)) {
    for base in [0, HDR] {
        let area = &mut bytes[base + 4096..base + HDR];
        let end = area.iter().position(|b| *b == 0).unwrap();
        let mut json: serde_json::Value = serde_json::from_slice(&area[..end]).unwrap();
        edit(&mut json);
        let text = json.to_string();
        area.fill(0);
        area[..text.len()].copy_from_slice(text.as_bytes());
        fix_checksum(bytes, base);
    }
}

fn fix_checksum(bytes: &mut [u8], base: usize) {
    bytes[base + 448..base + 512].fill(0);
    let sum = Sha256::digest(&bytes[base..base + HDR]);
    bytes[base + 448..base + 448 + 32].copy_from_slice(&sum);
}

#[test]
fn hostile_headers_are_refused_with_clear_errors() {
    let (good, p) = fixture();
    Luks2Header::parse(&good).unwrap().unlock(&p).unwrap();

    // cipher_null in the segment (CVE-2025-59054 class) and in the keyslot.
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["segments"]["0"]["encryption"] = "cipher_null-ecb".into()
    });
    let err = Luks2Header::parse(&bytes).unwrap_err();
    assert_eq!(err, Luks2Error::CipherNull("cipher_null-ecb".into()));
    assert!(err.to_string().contains("does not encrypt"), "{err}");
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["keyslots"]["0"]["area"]["encryption"] = "cipher_null".into()
    });
    assert!(matches!(
        Luks2Header::parse(&bytes).unwrap_err(),
        Luks2Error::CipherNull(_)
    ));

    // Another cipher.
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["segments"]["0"]["encryption"] = "serpent-xts-plain64".into()
    });
    assert!(Luks2Header::parse(&bytes)
        .unwrap_err()
        .to_string()
        .contains("aasp opens only aes-xts-plain64"));

    // Unknown mandatory requirement.
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["config"]["requirements"] = serde_json::json!({"mandatory": ["future-feature"]})
    });
    assert_eq!(
        Luks2Header::parse(&bytes).unwrap_err(),
        Luks2Error::Requirement("future-feature".into())
    );

    // Bad checksum: one JSON byte changed, checksum left alone; in either copy.
    for (base, which) in [(0, "primary"), (HDR, "secondary")] {
        let mut bytes = good.clone();
        bytes[base + 4096 + 2] ^= 0x01;
        assert_eq!(
            Luks2Header::parse(&bytes).unwrap_err(),
            Luks2Error::Checksum { which }
        );
    }

    // Copies that disagree (each with a valid checksum).
    let mut bytes = good.clone();
    bytes[HDR + 16..HDR + 24].copy_from_slice(&7u64.to_be_bytes());
    fix_checksum(&mut bytes, HDR);
    assert_eq!(
        Luks2Header::parse(&bytes).unwrap_err(),
        Luks2Error::CopiesDisagree("seqid")
    );

    // Wrong digest: the right passphrase yields a key the digest does not confirm.
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["digests"]["0"]["digest"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()
    });
    let header = Luks2Header::parse(&bytes).unwrap();
    assert_eq!(
        header.unlock(&p).unwrap_err(),
        Luks2Error::WrongPassphrase { tried: 1 }
    );

    // A hostile KDF cost is refused before any work.
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["keyslots"]["0"]["kdf"]["iterations"] = 4_000_000_000u32.into()
    });
    assert!(matches!(
        Luks2Header::parse(&bytes).unwrap_err(),
        Luks2Error::Bounds { .. }
    ));

    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        let salt = j["keyslots"]["0"]["kdf"]["salt"].clone();
        j["keyslots"]["0"]["kdf"] = serde_json::json!({
            "type": "argon2id", "time": 1000, "memory": 1_048_576, "cpus": 4, "salt": salt
        });
    });
    let err = Luks2Header::parse(&bytes).unwrap_err();
    assert!(err.to_string().contains("argon2 cost"), "{err}");

    // A keyslot area outside the keyslots area.
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["keyslots"]["0"]["area"]["offset"] = "4096".into()
    });
    assert!(matches!(
        Luks2Header::parse(&bytes).unwrap_err(),
        Luks2Error::Bounds {
            what: "keyslot area",
            ..
        }
    ));

    // Tokens, and a second segment (a reencryption in progress).
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        j["tokens"] = serde_json::json!({"0": {"type": "systemd-tpm2", "keyslots": ["0"]}})
    });
    assert!(Luks2Header::parse(&bytes)
        .unwrap_err()
        .to_string()
        .contains("token"));
    let mut bytes = good.clone();
    rewrite_json(&mut bytes, |j| {
        let seg = j["segments"]["0"].clone();
        j["segments"]["1"] = seg;
    });
    assert!(Luks2Header::parse(&bytes)
        .unwrap_err()
        .to_string()
        .contains("exactly one segment"));
}

#[test]
fn cli_create_then_check() {
    let dir = tempfile::tempdir().unwrap();
    let from = content(dir.path());
    for kind in ["oct", "rsa"] {
        let img = dir.path().join(format!("{kind}.img"));
        let jwk = dir.path().join(format!("{kind}.jwk"));
        let out = Command::new(AASP)
            .args([
                "encfs",
                "create",
                "--new-key",
                kind,
                "--size",
                "12M",
                "--from",
            ])
            .arg(&from)
            .arg("--out")
            .arg(&img)
            .arg("--key-file")
            .arg(&jwk)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&jwk).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let entry: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{kind}.img.encfs.json"))).unwrap(),
        )
        .unwrap();
        let check = |extra: &[&str]| {
            Command::new(AASP)
                .args(["encfs", "check"])
                .arg(&img)
                .arg("--key-file")
                .arg(&jwk)
                .args(extra)
                .output()
                .unwrap()
        };
        let ok = check(&[]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).contains("ext4 inside"));
        if kind == "rsa" {
            assert_eq!(entry["key"]["kty"], "RSA-HSM");
            let salt = entry["key_derivation"]["salt"].as_str().unwrap();
            assert_eq!(hex::decode(salt).unwrap().len(), 32);
            // Without the salt the key does not open the image, and the error says why.
            let no_salt = dir.path().join("no-salt.json");
            std::fs::write(&no_salt, r#"{"key_derivation": {}}"#).unwrap();
            let bad = check(&["--args", no_salt.to_str().unwrap()]);
            assert_eq!(bad.status.code(), Some(1));
            let stderr = String::from_utf8_lossy(&bad.stderr);
            assert!(stderr.contains("needs the key_derivation salt"), "{stderr}");
        } else {
            assert_eq!(entry["key"]["kty"], "oct-HSM");
            assert!(entry["key_derivation"].as_object().unwrap().is_empty());
        }
    }
    // --new-key never overwrites a key file.
    let again = Command::new(AASP)
        .args(["encfs", "create", "--new-key", "oct", "--from"])
        .arg(&from)
        .arg("--out")
        .arg(dir.path().join("other.img"))
        .arg("--key-file")
        .arg(dir.path().join("oct.jwk"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes never panic the parser.
    #[test]
    fn parse_never_panics_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..40_000)) {
        let _ = Luks2Header::parse(&bytes);
    }

    /// A valid header with bytes changed in its metadata (both copies alike) or its keyslot
    /// never panics the parser or the unlock; with the checksums fixed up, the JSON checks are
    /// reached too.
    #[test]
    fn mutated_headers_never_panic(
        edits in proptest::collection::vec((0usize..HDR + 4096, any::<u8>()), 1..8),
        fix in any::<bool>(),
    ) {
        static FIXTURE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let mut bytes = FIXTURE.get_or_init(|| fixture().0).clone();
        for (at, value) in edits {
            if at < HDR {
                bytes[at] = value;
                bytes[HDR + at] = value;
            } else {
                bytes[2 * HDR + at - HDR] = value;
            }
        }
        if fix {
            fix_checksum(&mut bytes, 0);
            fix_checksum(&mut bytes, HDR);
        }
        if let Ok(header) = Luks2Header::parse(&bytes) {
            let _ = header.unlock(&passphrase(&[9u8; 32]));
            let _ = header.to_bytes();
        }
    }
}
