//! `aasp encfs`: encrypted filesystems. `create` and `check` are the data owner's tools outside
//! the TEE (like upstream's `importkey`, they hold the key material).

use crate::azure::jwk::{Jwk, KeyFamily};
use crate::encfs::args::{AzureFilesystem, KeyDerivation, KeyKind};
use crate::encfs::image;
use crate::encfs::passphrase::{wrong_key_hint, Passphrase};
use clap::{Args, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct EncfsArgs {
    #[command(subcommand)]
    pub command: EncfsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EncfsCommand {
    /// Make an encrypted image (LUKS2 around ext4) from a directory, without root: writes IMAGE
    /// and IMAGE.encfs.json, the filesystem's EncfsSideCarArgs entry (kid, kty, salt, label).
    Create(CreateArgs),
    /// Say whether a key opens an image (exit 0) or not (exit 1, with what to fix): offline with
    /// --key-file, or released as the sidecar releases it with --key-ref.
    Check(Box<CheckArgs>),
    /// The encfs sidecar (also run as /encfs.sh): release each filesystem's key, open its image
    /// in blob storage and mount it for the workload; SIGTERM writes back and unmounts. Needs
    /// root (FUSE, loop devices, mount).
    Run(Box<super::encfs_run::RunArgs>),
    /// Put an image into a new page blob (4 MiB Put Page calls), with a SAS URL or a bearer
    /// token; refuses to replace an existing blob without --force.
    Upload(super::encfs_run::UploadArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Directory whose contents become the filesystem.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The image file to write (refused if it exists).
    #[arg(long = "out", value_name = "IMAGE")]
    out: PathBuf,
    /// Private JWK file of the key (oct: 32 bytes; RSA: the passphrase is derived from it).
    /// With --new-key it is created (owner-only) and must not exist.
    #[arg(long, value_name = "JWK")]
    key_file: PathBuf,
    /// Generate the key: `oct` (32 random bytes) or `rsa` (RSA-3072; a random salt is picked).
    #[arg(long, value_enum, value_name = "TYPE")]
    new_key: Option<NewKey>,
    /// Image size with an optional K, M, G or T suffix (powers of 1024), a multiple of 512.
    /// Default: the content plus ext4's overhead (and free room with --read-write).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Mark the filesystem read-write in IMAGE.encfs.json and leave free room for writes.
    #[arg(long)]
    read_write: bool,
    /// The key's name in Key Vault / Managed HSM (`kid` in IMAGE.encfs.json) [default: the JWK's
    /// `kid`, else the image's file name without extension].
    #[arg(long)]
    kid: Option<String>,
    /// HKDF label for an RSA key [default: "Symmetric Encryption Key"].
    #[arg(long)]
    label: Option<String>,
    /// Where the workload will see the filesystem (`mount_point` in IMAGE.encfs.json)
    /// [default: /mnt/remote/<kid>].
    #[arg(long, value_name = "PATH")]
    mount_point: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["key_file", "key_ref"])))]
pub struct CheckArgs {
    /// The image file.
    image: PathBuf,
    /// Private JWK file of the key: the check runs offline.
    #[arg(long, value_name = "JWK")]
    key_file: Option<PathBuf>,
    /// Release the key instead, as `aasp encfs run` does for a filesystem (inside a TEE, or
    /// against `aasp dev`): the key's name or URL (`key.kid`), or kbs:///<repo>/<type>/<tag> for
    /// a Trustee KBS resource. kty, akv, authority, salt and label come from the entry (--args,
    /// else IMAGE.encfs.json) unless given below; the release options are `aasp encfs run`'s.
    #[arg(long, value_name = "KID")]
    key_ref: Option<String>,
    /// The filesystem's EncfsSideCarArgs entry, for an RSA key's salt and label (and with
    /// --key-ref its kty, akv and authority) [default: IMAGE.encfs.json when it exists].
    #[arg(long, value_name = "FILE")]
    args: Option<PathBuf>,
    /// With --key-ref: the key type (`key.kty`), oct-HSM or RSA-HSM.
    #[arg(long, requires = "key_ref")]
    kty: Option<String>,
    /// With --key-ref: the Key Vault or Managed HSM holding the key (`key.akv.endpoint`).
    #[arg(long, value_name = "HOST", requires = "key_ref")]
    akv_endpoint: Option<String>,
    /// With --key-ref: the attestation service whose token the release policy checks
    /// (`key.authority.endpoint`) [default: --maa-endpoint].
    #[arg(long, value_name = "HOST", requires = "key_ref")]
    authority_endpoint: Option<String>,
    /// An RSA key's HKDF salt, hex (`key_derivation.salt`).
    #[arg(long, value_name = "HEX")]
    salt: Option<String>,
    /// An RSA key's HKDF label (`key_derivation.label`) [default: "Symmetric Encryption Key"].
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    backend: Box<super::serve::BackendArgs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NewKey {
    Oct,
    Rsa,
}

pub async fn run(args: EncfsArgs) -> Result<ExitCode, String> {
    match args.command {
        EncfsCommand::Create(create) => run_create(create),
        EncfsCommand::Check(check) => run_check(*check).await,
        EncfsCommand::Run(run) => Box::pin(super::encfs_run::run(*run)).await,
        EncfsCommand::Upload(upload) => super::encfs_run::upload(upload).await,
    }
}

fn run_create(args: CreateArgs) -> Result<ExitCode, String> {
    if args.out.exists() {
        return Err(format!(
            "{} exists: choose another --out or remove it",
            args.out.display()
        ));
    }
    if !args.from.is_dir() {
        return Err(format!("--from {}: not a directory", args.from.display()));
    }
    let jwk = match args.new_key {
        Some(kind) => new_key(&args.key_file, kind)?,
        None => read_jwk(&args.key_file)?,
    };
    let kind = key_kind(&jwk, &args.key_file)?;
    let derivation = match kind {
        KeyKind::Oct => KeyDerivation::default(),
        KeyKind::Rsa => KeyDerivation::random(args.label.clone())?,
    };
    let passphrase = Passphrase::from_jwk(&jwk, kind, &derivation)
        .map_err(|e| format!("{}: {e}", args.key_file.display()))?;
    let size = match args.size {
        Some(size) => size,
        None => image::default_size(&args.from, args.read_write).map_err(|e| e.to_string())?,
    };
    let created =
        image::create(&args.from, &args.out, size, &passphrase).map_err(|e| e.to_string())?;

    let kid = args
        .kid
        .clone()
        .or_else(|| jwk.kid.clone())
        .unwrap_or_else(|| file_stem(&args.out));
    let entry = serde_json::json!({
        "mount_point": args.mount_point.clone().unwrap_or_else(|| format!("/mnt/remote/{kid}")),
        "azure_url": "",
        "azure_url_private": false,
        "read_write": args.read_write,
        "key": {
            "kid": kid,
            "kty": match kind { KeyKind::Oct => "oct-HSM", KeyKind::Rsa => "RSA-HSM" },
            "authority": {"endpoint": ""},
            "akv": {"endpoint": ""},
        },
        "key_derivation": derivation,
    });
    let entry_path = entry_path(&args.out);
    let text = serde_json::to_string_pretty(&entry).map_err(|e| e.to_string())?;
    crate::files::write_public(&entry_path, format!("{text}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    say!(
        "{}: {} bytes, ext4 of {} bytes in LUKS2 (aes-xts-plain64, PBKDF2 keyslot)",
        args.out.display(),
        created.image_size,
        created.filesystem_size
    );
    say!(
        "{}: its EncfsSideCarArgs entry (fill in azure_url, akv and authority)",
        entry_path.display()
    );
    say!(
        "next: import {} into the HSM with its release policy (`aasp key import --jwk`), then \
         delete the local copy",
        args.key_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_check(args: CheckArgs) -> Result<ExitCode, String> {
    let entry = read_entry(&args)?;
    // The header is read and validated before any key is asked for, as the sidecar does.
    let mut local = image::LocalImage::open(&args.image)
        .map_err(|e| format!("{}: {e}", args.image.display()))?;
    let (passphrase, hint, released) = match (&args.key_file, &args.key_ref) {
        (Some(key_file), _) => {
            let jwk = read_jwk(key_file)?;
            let kind = key_kind(&jwk, key_file)?;
            let derivation = match kind {
                KeyKind::Oct => KeyDerivation::default(),
                KeyKind::Rsa => entry.key_derivation.clone(),
            };
            let passphrase = Passphrase::from_jwk(&jwk, kind, &derivation)
                .map_err(|e| format!("{}: {e}", key_file.display()))?;
            (passphrase, wrong_key_hint(kind, &derivation), false)
        }
        (None, _) => {
            entry.key_source()?;
            let backend = args.backend.build_for_command()?;
            let passphrase = super::encfs_run::passphrase(&backend, &entry).await?;
            (passphrase, super::encfs_run::wrong_key_advice(&entry), true)
        }
    };
    match local.check(&passphrase) {
        Ok(checked) => {
            say!(
                "{}: opens with this key (LUKS2 {}, data at {} bytes, {}-byte sectors, {} bytes \
                 of payload{})",
                args.image.display(),
                checked.uuid,
                checked.data_offset,
                checked.sector_size,
                checked.data_size,
                if checked.ext4 {
                    ", ext4 inside"
                } else {
                    "; no ext4 superblock inside"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(image::ImageError::Luks2(
            e @ crate::encfs::luks2::Luks2Error::WrongPassphrase { .. },
        )) => {
            let which = if released {
                format!(
                    "the released key ({}) does not open the image: ",
                    entry.key.kid
                )
            } else {
                String::new()
            };
            eprintln!("{}: {which}{e}: {hint}", args.image.display());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(format!("{}: {e}", args.image.display())),
    }
}

/// The filesystem's entry (--args, else IMAGE.encfs.json, else empty) with the options on top.
fn read_entry(args: &CheckArgs) -> Result<AzureFilesystem, String> {
    let path = match &args.args {
        Some(path) => Some(path.clone()),
        None => Some(entry_path(&args.image)).filter(|p| p.exists()),
    };
    let mut entry: AzureFilesystem = match path {
        Some(path) => {
            // Upstream's entry may carry an inline KMS token.
            let text = Zeroizing::new(super::read_input(&path)?);
            serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not an EncfsSideCarArgs entry: {e}", path.display()))?
        }
        None => serde_json::from_str("{}").map_err(|e| e.to_string())?,
    };
    let set = |field: &mut String, value: &Option<String>| {
        if let Some(value) = value {
            field.clone_from(value);
        }
    };
    set(&mut entry.key.kid, &args.key_ref);
    set(&mut entry.key.kty, &args.kty);
    set(&mut entry.key.akv.endpoint, &args.akv_endpoint);
    set(&mut entry.key.authority.endpoint, &args.authority_endpoint);
    if args.salt.is_some() {
        entry.key_derivation.salt.clone_from(&args.salt);
    }
    if args.label.is_some() {
        entry.key_derivation.label.clone_from(&args.label);
    }
    Ok(entry)
}

/// IMAGE.encfs.json.
pub(super) fn entry_path(image: &Path) -> PathBuf {
    let mut name = image.file_name().unwrap_or_default().to_os_string();
    name.push(".encfs.json");
    image.with_file_name(name)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "encfs".into())
}

fn read_jwk(path: &Path) -> Result<Jwk, String> {
    let text = Zeroizing::new(super::read_input(path)?);
    serde_json::from_slice(&text).map_err(|e| format!("{}: not a JWK: {e}", path.display()))
}

fn key_kind(jwk: &Jwk, path: &Path) -> Result<KeyKind, String> {
    match jwk.family() {
        Ok(KeyFamily::Oct) => Ok(KeyKind::Oct),
        Ok(KeyFamily::Rsa) => Ok(KeyKind::Rsa),
        _ => Err(format!(
            "{}: kty {:?}: encfs uses an oct (32-byte) or an RSA key",
            path.display(),
            jwk.kty
        )),
    }
}

fn new_key(path: &Path, kind: NewKey) -> Result<Jwk, String> {
    if path.exists() {
        return Err(format!(
            "--key-file {} exists: remove it, or drop --new-key to use it",
            path.display()
        ));
    }
    let jwk = match kind {
        NewKey::Oct => {
            let mut key = Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(key.as_mut()).map_err(|_| "no randomness".to_owned())?;
            Jwk::oct(key.as_ref())
        }
        NewKey::Rsa => {
            use aws_lc_rs::encoding::AsDer as _;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa3072)
                .map_err(|_| "RSA key generation failed".to_owned())?;
            let der = pair
                .as_der()
                .map_err(|_| "RSA key encoding failed".to_owned())?;
            Jwk::from_pkcs8(KeyFamily::Rsa, der.as_ref()).map_err(|e| e.to_string())?
        }
    };
    let text = Zeroizing::new(serde_json::to_vec_pretty(&jwk).map_err(|e| e.to_string())?);
    crate::files::write_private(path, &text).map_err(|e| e.to_string())?;
    Ok(jwk)
}

/// A size with an optional K, M, G or T suffix (powers of 1024; `KiB`, `MB` … are read alike).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional K, M, G or T"))?;
    let shift = match suffix
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i')
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        other => return Err(format!("{text:?}: unknown suffix {other:?} (K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_the_usual_suffixes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert!(parse_size("64X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
