//! `aasp encfs run` (also run as `/encfs.sh`): a drop-in for the `encfs` sidecar of Microsoft's
//! confidential-sidecar-containers, configured as its `/encfs.sh` configures it:
//! `EncfsSideCarArgs` (or the first argument) is the base64 JSON, `LogLevel` and `LogFile` steer
//! logging, every `AASP_*` setting of `aasp skr` applies too. Each filesystem's key is released
//! through the same flow as every aasp key (or read from the Trustee KBS for a `kbs:///` kid),
//! its image opened from blob storage, and its ext4 mounted for the workload at
//! `<parent>/.filesystem-<i>` behind the `mount_point` symlink. SIGTERM or SIGINT writes back
//! what was written, unmounts everything and exits 0.
//!
//! `aasp encfs upload IMAGE URL` puts an image made by `aasp encfs create` into a page blob.

use super::serve::BackendArgs;
use crate::encfs::args::{AzureFilesystem, EncfsSideCarArgs, KeySource};
use crate::encfs::blob::{BlobClient, BlobUrl, Credential, StorageHosts};
use crate::encfs::cache::{BlockCache, CacheConfig};
use crate::encfs::device::{read_header, CryptDevice, RawDevice};
use crate::encfs::mount::{self, FlushFn, Layout, Mounted};
use crate::encfs::passphrase::{wrong_key_hint, Passphrase};
use crate::env;
use crate::service::Backend;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How sectors are decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CryptMode {
    /// dm-crypt when device-mapper and cryptsetup are present, else userspace.
    Auto,
    /// `cryptsetup open` with the validated header onto dm-crypt (needs device-mapper).
    Kernel,
    /// aasp decrypts and serves the plaintext device over FUSE, loop-mounted (needs FUSE and
    /// loop devices only).
    Userspace,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base64 of the encfs JSON (standard or URL-safe), as `/encfs.sh $1`.
    #[arg(env = env::ENCFS_SIDECAR_ARGS, value_name = "ENCFS_SIDECAR_ARGS", hide_env_values = true)]
    pub sidecar_args: Option<String>,
    /// The sidecar's log level: trace, debug, info, warning, error, fatal or panic (RUST_LOG,
    /// when set, wins).
    #[arg(long, env = env::SKR_LOG_LEVEL, default_value = "info")]
    pub log_level: String,
    /// Append logs to this file instead of standard error.
    #[arg(long, env = env::SKR_LOG_FILE, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// How sectors are decrypted: auto (kernel where device-mapper exists, else userspace),
    /// kernel or userspace.
    #[arg(long, value_enum, env = env::AASP_ENCFS_CRYPT, default_value_t = CryptMode::Auto)]
    pub crypt: CryptMode,
    /// Block cache per filesystem, with an optional K, M or G suffix (powers of 1024); written
    /// data waiting for upload (at most 16 MiB) comes on top.
    #[arg(long, env = env::AASP_ENCFS_CACHE_SIZE, default_value = "64M", value_parser = super::encfs::parse_size)]
    pub cache_size: u64,
    /// Seconds a storage read or write may take, retries included, before the reader gets an
    /// I/O error (EIO) and the log a line.
    #[arg(long, env = env::AASP_ENCFS_READ_DEADLINE, default_value_t = 30)]
    pub read_deadline: u64,
    /// Also send storage bearer tokens to this host (`host`, `host:port` or `*.suffix[:port]`);
    /// repeatable. Allowed by default: *.blob.core.windows.net. Anonymous and SAS URLs need no
    /// entry.
    #[arg(long, env = env::AASP_ALLOW_STORAGE_HOST, value_delimiter = ',', value_name = "PATTERN")]
    pub allow_storage_host: Vec<String>,
    /// File holding a storage access token for private blobs (instead of managed or workload
    /// identity); read again for every token.
    #[arg(long, env = env::AASP_STORAGE_TOKEN_FILE, value_name = "FILE")]
    pub storage_token_file: Option<PathBuf>,
    /// Private directory for the FUSE files (one subdirectory per filesystem).
    #[arg(long, env = env::AASP_ENCFS_WORK_DIR, default_value = "/run/aasp-encfs", value_name = "DIR")]
    pub work_dir: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Before logging and the runtime start (one thread): the encfs JSON is decoded, and its
/// `azure_info` (certcache, identity) becomes `AaspSideCarArgs`, which the chain source and the
/// identity read, as for `aasp skr`. The log file is opened for append.
pub fn prepare(args: &RunArgs) -> Result<Option<std::fs::File>, String> {
    super::skr::filter_for(&args.log_level)?;
    if let Some(text) = args
        .sidecar_args
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        let parsed = EncfsSideCarArgs::parse(text).map_err(|e| e.to_string())?;
        let info = serde_json::json!({
            "certcache": parsed.azure_info.certcache.as_ref().map(|c| serde_json::json!({
                "endpoint_type": c.endpoint_type,
                "endpoint": c.endpoint,
                "tee_type": c.tee_type,
                "api_version": c.api_version,
                "client_id": c.client_id,
            })),
            "identity": parsed.azure_info.identity.as_ref().map(|i| serde_json::json!({
                "client_id": i.client_id,
            })),
        });
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(info.to_string());
        std::env::set_var(env::AASP_SIDECAR_ARGS, encoded);
    }
    super::skr::open_log_file(args.log_file.as_deref())
}

/// The command line for a binary invoked as `encfs.sh`: `aasp encfs run` with its arguments.
pub fn personality(argv: &[String]) -> Option<Vec<String>> {
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())?
        .to_str()?;
    (name == "encfs.sh").then(|| {
        ["aasp", "encfs", "run"]
            .into_iter()
            .map(str::to_owned)
            .chain(argv.iter().skip(1).cloned())
            .collect()
    })
}

/// Everything one filesystem needs besides its own entry.
struct Shared {
    backend: Arc<Backend>,
    http: reqwest::Client,
    storage_identity: Arc<crate::azure::identity::IdentityProvider>,
    hosts: StorageHosts,
    cache: CacheConfig,
    deadline: Duration,
    crypt: CryptMode,
    work_dir: PathBuf,
}

pub async fn run(args: RunArgs) -> Result<ExitCode, String> {
    // Installed first: a SIGTERM while filesystems are being mounted must still clean up.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::serve::wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let text = args
        .sidecar_args
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .ok_or("EncfsSideCarArgs is not set: give the base64 encfs JSON (as the encfs sidecar takes it) in EncfsSideCarArgs or as the first argument")?;
    let config = EncfsSideCarArgs::parse(text).map_err(|e| e.to_string())?;
    crate::cli::serve::warm_up_randomness();
    let backend = args.backend.build()?;
    let (http, _) = args.backend.tls.client_and_anchors()?;
    let client_id = args.backend.client_id.clone().or_else(|| {
        config
            .azure_info
            .identity
            .as_ref()
            .map(|i| i.client_id.clone())
            .filter(|c| !c.is_empty())
    });
    let source = super::identity_source(
        args.storage_token_file.as_deref(),
        args.backend.imds_endpoint.clone(),
        client_id,
    )?;
    let shared = Shared {
        storage_identity: Arc::new(crate::azure::identity::IdentityProvider::new(
            http.clone(),
            source,
            crate::http::RetryPolicy::default(),
        )),
        backend,
        http,
        hosts: StorageHosts::with(&args.allow_storage_host)?,
        cache: CacheConfig {
            capacity: usize::try_from(args.cache_size).map_err(|_| "--cache-size is too large")?,
            ..CacheConfig::default()
        },
        deadline: Duration::from_secs(args.read_deadline.max(1)),
        crypt: resolve_crypt(args.crypt)?,
        work_dir: args.work_dir.clone(),
    };
    shared.cache.check()?;
    let mut mounted: Vec<Mounted> = Vec::new();
    for (index, fs) in config.azure_filesystems.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        let what = fs.describe(index);
        let outcome = tokio::select! {
            outcome = mount_one(&shared, index, fs) => outcome,
            _ = stop.wait_for(|s| *s) => Err("stopped by a signal while mounting".into()),
        };
        match outcome {
            Ok(done) => {
                tracing::info!(
                    filesystem = index,
                    mount_point = %done.layout.mount_point.display(),
                    "{what} is ready"
                );
                mounted.push(done);
            }
            Err(e) => {
                tracing::error!(filesystem = index, "{what}: {e}");
                let _ = unmount_all(mounted).await;
                return Err(format!("{what}: {e}"));
            }
        }
    }
    let _ = stop.wait_for(|s| *s).await;
    tracing::info!("shutting down: writing back, unmounting");
    unmount_all(mounted).await?;
    Ok(ExitCode::SUCCESS)
}

async fn unmount_all(mut mounted: Vec<Mounted>) -> Result<(), String> {
    let mut problems = Vec::new();
    while let Some(fs) = mounted.pop() {
        let index = fs.layout.index;
        match fs.unmount().await {
            Ok(()) => tracing::info!(filesystem = index, "unmounted"),
            Err(e) => {
                tracing::error!(filesystem = index, error = %e, "unmounting");
                problems.push(e);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `auto` becomes what this machine can do; `kernel` is refused where it cannot.
fn resolve_crypt(mode: CryptMode) -> Result<CryptMode, String> {
    let kernel = kernel_crypt_available();
    match (mode, kernel) {
        (CryptMode::Userspace, _) | (CryptMode::Kernel, Ok(())) => Ok(mode),
        (CryptMode::Kernel, Err(why)) => Err(format!(
            "--crypt kernel: {why}; use --crypt userspace (or auto)"
        )),
        (CryptMode::Auto, Ok(())) => Ok(CryptMode::Kernel),
        (CryptMode::Auto, Err(why)) => {
            tracing::info!("decrypting in userspace: {why}");
            Ok(CryptMode::Userspace)
        }
    }
}

/// dm-crypt needs device-mapper in the kernel and cryptsetup in the image.
fn kernel_crypt_available() -> Result<(), String> {
    // The kernel's list of misc devices, not /dev/mapper/control: that node can exist (made
    // by a cryptsetup run) on a kernel without device-mapper.
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    if !misc
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
    {
        return Err("this kernel has no device-mapper (none in /proc/misc)".into());
    }
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("cryptsetup").is_file())
    });
    if !found {
        return Err("cryptsetup is not installed".into());
    }
    Ok(())
}

async fn mount_one(shared: &Shared, index: usize, fs: &AzureFilesystem) -> Result<Mounted, String> {
    let layout = Layout::new(index, &fs.mount_point, &shared.work_dir)?;
    let url = BlobUrl::parse(fs.azure_url()).map_err(|e| e.to_string())?;
    let credential = if fs.azure_url_private {
        Credential::Bearer(Arc::clone(&shared.storage_identity))
    } else {
        Credential::Anonymous
    };
    let client = BlobClient::new(
        shared.http.clone(),
        url,
        credential,
        &shared.hosts,
        shared.deadline,
    )
    .map_err(|e| e.to_string())?;
    let properties = client.properties().await.map_err(|e| match e.status() {
        Some(404) => format!(
            "{e}: no blob at this URL (check azure_url; a private blob needs azure_url_private \
             true and a token)"
        ),
        Some(401 | 403) => format!(
            "{e}: storage refused access (a private blob needs azure_url_private true and an \
             identity with the Storage Blob Data Reader role; a SAS may have expired)"
        ),
        _ => e.to_string(),
    })?;
    if fs.read_write && properties.blob_type != "PageBlob" {
        return Err(format!(
            "read_write needs a page blob, and this blob is a {}: upload the image with `aasp \
             encfs upload` (or azcopy --blob-type PageBlob)",
            if properties.blob_type.is_empty() {
                "blob of unknown type"
            } else {
                &properties.blob_type
            }
        ));
    }
    let name = format!("filesystem {index}");
    let cache = BlockCache::new(Arc::new(client), properties.size, shared.cache)?;
    let header = read_header(&cache).await?;
    let passphrase = Arc::new(passphrase(&shared.backend, fs).await?);
    let header = Arc::new(header);
    // Unlocked here on both paths: a key that does not open the validated header is reported
    // by aasp, with what to fix, before anything is mounted.
    let unlocked = {
        let (header, passphrase) = (Arc::clone(&header), Arc::clone(&passphrase));
        tokio::task::spawn_blocking(move || header.unlock(&passphrase))
            .await
            .map_err(|e| e.to_string())?
    };
    let volume = unlocked.map_err(|e| {
        format!(
            "the released key does not open the image: {e}; {}",
            wrong_key_advice(fs)
        )
    })?;
    let flush: FlushFn = {
        let cache = Arc::clone(&cache);
        Arc::new(move || {
            let cache = Arc::clone(&cache);
            Box::pin(async move { cache.flush().await.map_err(|e| e.to_string()) })
        })
    };
    let read_only = !fs.read_write;
    let mut done = match shared.crypt {
        CryptMode::Kernel => {
            drop(volume);
            let device = Arc::new(RawDevice::new(Arc::clone(&cache)));
            let kernel = mount::Kernel {
                header: header.to_bytes(),
                passphrase: zeroize::Zeroizing::new(passphrase.expose().to_vec()),
            };
            mount::mount_kernel(layout, device, kernel, read_only, name.clone(), flush).await?
        }
        _ => {
            let device = Arc::new(CryptDevice::new(Arc::clone(&cache), volume)?);
            mount::mount_device(layout, device, read_only, name.clone(), flush).await?
        }
    };
    if fs.read_write {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(Arc::clone(&cache).run_flusher(name, stopped));
        done.stop_flusher_with(stop);
    }
    Ok(done)
}

/// What to check when a filesystem's released key does not open its image.
pub(super) fn wrong_key_advice(fs: &AzureFilesystem) -> &'static str {
    match fs.key_source() {
        Ok(KeySource::Azure { kind, .. }) => wrong_key_hint(kind, &fs.key_derivation),
        _ => "check that the KBS resource is the image's passphrase",
    }
}

/// The filesystem's passphrase: a released Azure key (oct bytes, or HKDF of the RSA key), or a
/// Trustee KBS resource.
pub(super) async fn passphrase(
    backend: &Arc<Backend>,
    fs: &AzureFilesystem,
) -> Result<Passphrase, String> {
    let provisioner = &backend.provisioner;
    match fs.key_source()? {
        KeySource::Kbs(uri) => {
            let bytes = provisioner
                .kbs_resource(&uri.to_string())
                .await
                .map_err(|e| format!("reading the key from the Trustee KBS: {e}"))?;
            Passphrase::from_kbs_resource(bytes).map_err(|e| e.to_string())
        }
        KeySource::Azure {
            kid,
            kind,
            akv_endpoint,
            maa_endpoint,
        } => {
            let maa = if maa_endpoint.trim().is_empty() {
                backend.default_maa.clone().ok_or(
                    "key.authority.endpoint is empty and no --maa-endpoint is configured: name \
                     the attestation service",
                )?
            } else {
                maa_endpoint
            };
            let key = if kid.starts_with("https://") {
                crate::provision::KeyRef::azure_url(&kid, &maa)
            } else {
                crate::provision::KeyRef::azure(&akv_endpoint, &kid, &maa)
            }
            .map_err(|e| e.to_string())?;
            let inline = fs.key.akv.bearer_token.as_ref().map(|t| t.expose());
            let released = match inline.filter(|t| !t.is_empty()) {
                Some(token) => {
                    // Upstream's contract puts the KMS token in the arguments.
                    let access = crate::azure::Secret::new(token.to_owned());
                    provisioner.release_with_access(&key, &access).await
                }
                None => provisioner.release(&key).await,
            }
            .map_err(|e| format!("releasing the key: {e}"))?;
            Passphrase::from_jwk(&released.jwk, kind, &fs.key_derivation).map_err(|e| e.to_string())
        }
    }
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The image file (what `aasp encfs create` wrote): its size must be a multiple of 512.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The page blob to create, https://<account>.blob.core.windows.net/<container>/<blob>: with
    /// a SAS in its query (write permission), or, with --private, without.
    #[arg(value_name = "URL")]
    pub url: String,
    /// Replace an existing blob (without it, an existing blob is left alone and the upload
    /// refused).
    #[arg(long)]
    pub force: bool,
    /// Authenticate with a storage bearer token (--storage-token-file, else workload identity
    /// or IMDS managed identity) instead of a SAS.
    #[arg(long)]
    pub private: bool,
    /// File holding a storage access token (with --private).
    #[arg(long, env = env::AASP_STORAGE_TOKEN_FILE, value_name = "FILE")]
    pub storage_token_file: Option<PathBuf>,
    /// IMDS base URL for managed identity [default: http://169.254.169.254].
    #[arg(long, env = env::AASP_IMDS_ENDPOINT, value_name = "URL")]
    pub imds_endpoint: Option<String>,
    /// Client id of a user-assigned managed identity.
    #[arg(long, env = env::AASP_CLIENT_ID)]
    pub client_id: Option<String>,
    /// Also send storage bearer tokens to this host (as for `aasp encfs run`); repeatable.
    #[arg(long, env = env::AASP_ALLOW_STORAGE_HOST, value_delimiter = ',', value_name = "PATTERN")]
    pub allow_storage_host: Vec<String>,
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

/// Bytes per Put Page call when uploading (the most one call may write).
const UPLOAD_CHUNK: usize = crate::encfs::blob::MAX_PUT_PAGE;
/// Put Page calls in flight while uploading.
const UPLOADS_IN_FLIGHT: usize = 4;

pub async fn upload(args: UploadArgs) -> Result<ExitCode, String> {
    use futures_util::StreamExt;
    use std::io::Read;
    let size = std::fs::metadata(&args.image)
        .map_err(|e| format!("{}: {e}", args.image.display()))?
        .len();
    if size == 0 || size % crate::encfs::blob::PAGE_SIZE != 0 {
        return Err(format!(
            "{}: {size} bytes is not a whole number of 512-byte pages, as a page blob needs \
             (`aasp encfs create` makes aligned images)",
            args.image.display()
        ));
    }
    let http = args.tls.client()?;
    let credential = if args.private {
        let source = super::identity_source(
            args.storage_token_file.as_deref(),
            args.imds_endpoint.clone(),
            args.client_id.clone(),
        )?;
        Credential::Bearer(Arc::new(crate::azure::identity::IdentityProvider::new(
            http.clone(),
            source,
            crate::http::RetryPolicy::default(),
        )))
    } else {
        Credential::Anonymous
    };
    let url = BlobUrl::parse(&args.url).map_err(|e| e.to_string())?;
    let shown = url.shown();
    let client = BlobClient::new(
        http,
        url,
        credential,
        &StorageHosts::with(&args.allow_storage_host)?,
        Duration::from_secs(120),
    )
    .map_err(|e| e.to_string())?;
    client
        .create_page_blob(size, args.force)
        .await
        .map_err(|e| match e.status() {
            Some(409) => format!("{shown} already exists: pass --force to replace it"),
            _ => e.to_string(),
        })?;
    let mut file =
        std::fs::File::open(&args.image).map_err(|e| format!("{}: {e}", args.image.display()))?;
    // A new page blob reads as zeros: all-zero chunks (an image's free space) are not sent.
    let mut chunks = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(UPLOAD_CHUNK as u64) as usize;
        let mut chunk = vec![0u8; len];
        file.read_exact(&mut chunk)
            .map_err(|e| format!("{}: {e}", args.image.display()))?;
        if chunk.iter().any(|b| *b != 0) {
            chunks.push((offset, chunk));
        }
        offset += len as u64;
        // Bounded memory: upload what is read every few chunks.
        if chunks.len() == UPLOADS_IN_FLIGHT || offset == size {
            let results: Vec<Result<(), crate::encfs::blob::BlobError>> =
                futures_util::stream::iter(chunks.drain(..).map(|(at, data)| {
                    let client = client.clone();
                    async move { client.put_pages(at, bytes::Bytes::from(data)).await }
                }))
                .buffer_unordered(UPLOADS_IN_FLIGHT)
                .collect()
                .await;
            for result in results {
                result.map_err(|e| e.to_string())?;
            }
        }
    }
    say!(
        "uploaded {} ({size} bytes) to {shown}",
        args.image.display()
    );
    Ok(ExitCode::SUCCESS)
}
