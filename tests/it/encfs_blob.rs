//! The encfs blob client against both storage peers it must work with: the emulator's blob
//! endpoint (in process) and Azurite, Microsoft's storage emulator (npm `azurite`, installed
//! into target/azurite on first use): http with anonymous and SAS access, https with bearer
//! tokens from the emulator's IMDS, which Azurite's `--oauth basic` checks (aud, iss, times).

use aasp::azure::identity::{IdentityProvider, IdentitySource};
use aasp::encfs::blob::{
    BlobClient, BlobError, BlobUrl, Credential, StorageHosts, DEFAULT_DEADLINE,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The account Azurite serves and its published development key.
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `azurite-blob` from target/azurite, installed with npm the first time.
pub fn azurite_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let prefix = root().join("target/azurite");
        let bin = prefix.join("node_modules/.bin/azurite-blob");
        if !bin.exists() {
            std::fs::create_dir_all(&prefix).unwrap();
            if !prefix.join("package.json").exists() {
                std::fs::write(prefix.join("package.json"), "{}").unwrap();
            }
            // Run from the prefix: npm reads a bare name as a local directory when one exists.
            let status = Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    ".",
                    "azurite@3",
                ])
                .current_dir(&prefix)
                .status()
                .expect("npm (Node.js) is needed to install Azurite for these tests");
            assert!(status.success(), "npm install azurite failed");
        }
        bin
    })
    .clone()
}

/// A running Azurite blob service; killed when dropped.
pub struct Azurite {
    child: Child,
    pub port: u16,
    pub https: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// Starts Azurite on a free port below 32768: plain http, or https with `--oauth basic`
    /// using `cert`/`key` (PEM files).
    pub fn start(tls: Option<(&Path, &Path)>) -> Self {
        let bin = azurite_bin();
        let dir = tempfile::tempdir().unwrap();
        for attempt in 0..5u16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let port = 20000 + ((nanos / 1000 + u32::from(attempt) * 7919) % 12000) as u16;
            let mut command = Command::new(&bin);
            command
                .args([
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--silent",
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                ])
                // Its debug log and extents stay out of the source tree.
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some((cert, key)) = tls {
                command
                    .args(["--oauth", "basic", "--cert"])
                    .arg(cert)
                    .arg("--key")
                    .arg(key);
            }
            let mut child = command.spawn().unwrap();
            // Node takes seconds to start on two busy cores (10 s was seen to be too short with
            // the suite's six test threads): up to 60 s, a bound on a hang, not a timing check.
            for _ in 0..1200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Azurite {
                        child,
                        port,
                        https: tls.is_some(),
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("Azurite did not start");
    }

    pub fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/{ACCOUNT}", self.port)
    }
}

/// An account SAS for every blob operation, signed with the development key (Azure's account
/// SAS string-to-sign, version 2020-12-06 and later: a trailing encryption-scope line).
pub fn account_sas() -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let version = "2021-08-06";
    let (permissions, services, types, expiry, protocol) =
        ("rwdlacup", "b", "sco", "2099-01-01T00:00:00Z", "https,http");
    let to_sign = format!(
        "{ACCOUNT}\n{permissions}\n{services}\n{types}\n\n{expiry}\n\n{protocol}\n{version}\n\n"
    );
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &b64.decode(ACCOUNT_KEY).unwrap(),
    );
    let signature = b64.encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", version)
        .append_pair("ss", services)
        .append_pair("srt", types)
        .append_pair("sp", permissions)
        .append_pair("se", expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &signature)
        .finish();
    query
}

/// Creates a container (with the SAS, or a bearer token), optionally public for blob reads.
pub async fn create_container(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    auth: ContainerAuth<'_>,
    public: bool,
) {
    let mut request = http
        .put(format!(
            "{base}/{name}?restype=container&{}",
            match auth {
                ContainerAuth::Sas => account_sas(),
                ContainerAuth::Bearer(_) => String::new(),
            }
        ))
        .header("x-ms-version", "2021-08-06")
        .header("content-length", "0");
    if let ContainerAuth::Bearer(token) = auth {
        request = request.bearer_auth(token);
    }
    if public {
        request = request.header("x-ms-blob-public-access", "blob");
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "create container: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
}

pub enum ContainerAuth<'a> {
    Sas,
    Bearer(&'a str),
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect()
}

/// The calls `aasp encfs` makes, on one blob: create, write, read back, size; and the refusals.
async fn exercise(client: &BlobClient, force_ok: bool) {
    let size = 64 * 1024u64;
    client.create_page_blob(size, false).await.unwrap();
    let err = client.create_page_blob(size, false).await.unwrap_err();
    assert_eq!(
        err.status(),
        Some(409),
        "an existing blob is not replaced: {err}"
    );
    if force_ok {
        client.create_page_blob(size, true).await.unwrap();
    }
    let props = client.properties().await.unwrap();
    assert_eq!(props.size, size);
    assert_eq!(props.blob_type, "PageBlob");
    assert_eq!(client.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
    let data = pattern(8192);
    client
        .put_pages(4096, bytes::Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(client.read(4096, 8192).await.unwrap(), data);
    assert_eq!(client.read(4096 + 100, 50).await.unwrap(), data[100..150]);
    // Misaligned writes are refused before they are sent.
    let err = client
        .put_pages(100, bytes::Bytes::from(vec![1u8; 512]))
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::BadRequest { .. }), "{err}");
}

fn http_trusting(ca: &Path) -> reqwest::Client {
    aasp::http::client(&aasp::http::HttpOptions {
        extra_ca: Some(ca.to_path_buf()),
        ..Default::default()
    })
    .unwrap()
}

fn bearer(http: &reqwest::Client, imds: &str) -> Credential {
    Credential::Bearer(Arc::new(IdentityProvider::new(
        http.clone(),
        IdentitySource::Imds {
            base: imds.to_owned(),
            client_id: None,
        },
        aasp::http::RetryPolicy::default(),
    )))
}

#[tokio::test]
async fn the_emulator_serves_page_blobs_to_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = aasp::emulator::start(aasp::emulator::Config::new(dir.path().to_path_buf()))
        .await
        .unwrap();
    let http = http_trusting(&emulator.ca_path);
    let hosts = StorageHosts::with(&[emulator.host()]).unwrap();
    let url = |container: &str, blob: &str| {
        BlobUrl::parse(&format!(
            "{}/devstoreaccount1/{container}/{blob}",
            emulator.url
        ))
        .unwrap()
    };
    let private = BlobClient::new(
        http.clone(),
        url("private", "fs.img"),
        bearer(&http, &emulator.url),
        &hosts,
        DEFAULT_DEADLINE,
    )
    .unwrap();
    exercise(&private, true).await;
    assert_eq!(
        emulator.blobs.get("private", "fs.img").unwrap()[4096..4096 + 8192],
        pattern(8192)
    );

    // Without a token, a private blob does not exist; a public one reads.
    let anonymous = BlobClient::new(
        http.clone(),
        url("private", "fs.img"),
        Credential::Anonymous,
        &hosts,
        DEFAULT_DEADLINE,
    )
    .unwrap();
    assert_eq!(
        anonymous.properties().await.unwrap_err().status(),
        Some(404)
    );
    emulator
        .blobs
        .put("public", "demo.img", pattern(4096))
        .unwrap();
    let public = BlobClient::new(
        http.clone(),
        url("public", "demo.img"),
        Credential::Anonymous,
        &hosts,
        DEFAULT_DEADLINE,
    )
    .unwrap();
    assert_eq!(
        public.read(512, 512).await.unwrap(),
        pattern(4096)[512..1024]
    );
    assert!(public
        .put_pages(0, bytes::Bytes::from(vec![0u8; 512]))
        .await
        .is_err());

    // A token for another resource (Managed HSM's) is not a storage token.
    let kms_token = IdentityProvider::new(
        http.clone(),
        IdentitySource::Imds {
            base: emulator.url.clone(),
            client_id: None,
        },
        aasp::http::RetryPolicy::default(),
    )
    .token(aasp::azure::identity::MHSM_RESOURCE)
    .await
    .unwrap();
    let wrong_audience = BlobClient::new(
        http.clone(),
        url("private", "fs.img"),
        Credential::Bearer(Arc::new(IdentityProvider::new(
            http.clone(),
            IdentitySource::Static(kms_token),
            aasp::http::RetryPolicy::default(),
        ))),
        &hosts,
        DEFAULT_DEADLINE,
    )
    .unwrap();
    assert_eq!(
        wrong_audience.properties().await.unwrap_err().status(),
        Some(401)
    );
    emulator.shutdown();
}

#[tokio::test]
async fn transient_failures_are_retried_until_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = aasp::emulator::start(aasp::emulator::Config::new(dir.path().to_path_buf()))
        .await
        .unwrap();
    emulator.blobs.put("public", "b", pattern(4096)).unwrap();
    let http = http_trusting(&emulator.ca_path);
    let client = |deadline| {
        BlobClient::new(
            http.clone(),
            BlobUrl::parse(&format!("{}/devstoreaccount1/public/b", emulator.url)).unwrap(),
            Credential::Anonymous,
            &StorageHosts::default(),
            deadline,
        )
        .unwrap()
    };
    // Half the calls fail or drop: every read still succeeds.
    emulator.set_faults("status=503@0.3,drop@0.2".parse().unwrap());
    for i in 0..8 {
        assert_eq!(
            client(DEFAULT_DEADLINE).read(i * 512, 512).await.unwrap(),
            pattern(4096)[i as usize * 512..(i as usize + 1) * 512]
        );
    }
    // Always failing: the read gives up at its deadline, naming the last failure.
    emulator.set_faults("status=503".parse().unwrap());
    let err = client(Duration::from_millis(800))
        .read(0, 512)
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Deadline { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    // A refusal that no retry changes is not retried.
    emulator.set_faults("status=403".parse().unwrap());
    let err = client(DEFAULT_DEADLINE).read(0, 512).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    emulator.shutdown();
}

#[tokio::test]
async fn azurite_over_http_with_sas_and_anonymous_reads() {
    let azurite = Azurite::start(None);
    let http = aasp::http::client(&Default::default()).unwrap();
    create_container(&http, &azurite.base(), "images", ContainerAuth::Sas, true).await;
    let sas_url = BlobUrl::parse(&format!(
        "{}/images/fs.img?{}",
        azurite.base(),
        account_sas()
    ))
    .unwrap();
    let sas = BlobClient::new(
        http.clone(),
        sas_url,
        Credential::Anonymous,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )
    .unwrap();
    exercise(&sas, true).await;
    // The container is public for blob reads: the same blob reads without the SAS.
    let public = BlobClient::new(
        http.clone(),
        BlobUrl::parse(&format!("{}/images/fs.img", azurite.base())).unwrap(),
        Credential::Anonymous,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )
    .unwrap();
    assert_eq!(public.read(4096, 8192).await.unwrap(), pattern(8192));
    assert!(public
        .put_pages(0, bytes::Bytes::from(vec![1u8; 512]))
        .await
        .is_err());
    // The SAS never shows in errors.
    let missing = BlobClient::new(
        http,
        BlobUrl::parse(&format!(
            "{}/images/none.img?{}",
            azurite.base(),
            account_sas()
        ))
        .unwrap(),
        Credential::Anonymous,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )
    .unwrap();
    let err = missing.properties().await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(!err.to_string().contains("sig="), "{err}");
}

#[tokio::test]
async fn azurite_over_https_with_bearer_tokens_from_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = aasp::emulator::start(aasp::emulator::Config::new(dir.path().to_path_buf()))
        .await
        .unwrap();
    // Azurite serves the emulator's localhost certificate, so one dev CA covers both.
    let pki = aasp::emulator::pki::Pki::load_or_create(&dir.path().join("emulator")).unwrap();
    let pem = |label: &str, der: &[u8]| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let cert = dir.path().join("azurite-cert.pem");
    let key = dir.path().join("azurite-key.pem");
    let chain: String = pki
        .server_chain_der
        .iter()
        .map(|der| pem("CERTIFICATE", der))
        .collect();
    std::fs::write(&cert, chain).unwrap();
    std::fs::write(&key, pem("PRIVATE KEY", &pki.server_key_der)).unwrap();
    let azurite = Azurite::start(Some((&cert, &key)));
    let http = http_trusting(&emulator.ca_path);
    let credential = bearer(&http, &emulator.url);
    let Credential::Bearer(identity) = &credential else {
        unreachable!()
    };
    let token = identity
        .token(aasp::encfs::blob::STORAGE_RESOURCE)
        .await
        .unwrap();
    create_container(
        &http,
        &azurite.base(),
        "private",
        ContainerAuth::Bearer(token.expose()),
        false,
    )
    .await;
    let host = format!("127.0.0.1:{}", azurite.port);
    let url = BlobUrl::parse(&format!("{}/private/fs.img", azurite.base())).unwrap();
    let client = BlobClient::new(
        http.clone(),
        url.clone(),
        credential.clone(),
        &StorageHosts::with(&[host]).unwrap(),
        DEFAULT_DEADLINE,
    )
    .unwrap();
    exercise(&client, true).await;
    // Not on the allow-list: no token goes there.
    let err = BlobClient::new(
        http.clone(),
        url.clone(),
        credential,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("--allow-storage-host"), "{err}");
    // Azurite refuses the private blob to an anonymous caller.
    let anonymous = BlobClient::new(
        http,
        url,
        Credential::Anonymous,
        &StorageHosts::default(),
        DEFAULT_DEADLINE,
    )
    .unwrap();
    assert!(anonymous.properties().await.is_err());
    emulator.shutdown();
}
