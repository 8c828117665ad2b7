//! Every read of outside bytes is bounded, and outputs and retries behave, as the aasp process
//! does it: hostile upstreams answering huge bodies (peak memory of the child measured from its
//! VmHWM), `--out` onto a symlink, a TLS server of unknown issuer, IMDS off Azure, throttling.

use aasp::proto::attestation_agent::{
    attestation_agent_service_client::AttestationAgentServiceClient, GetTokenRequest,
};
use axum::response::IntoResponse as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A body of `size` bytes in 64 KiB chunks, without holding it: chunked, or with its length
/// announced.
fn huge_body(size: u64, announce: bool) -> axum::response::Response {
    let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = size / chunk.len() as u64;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(stream));
    if announce {
        response.headers_mut().insert(
            axum::http::header::CONTENT_LENGTH,
            axum::http::HeaderValue::from(chunks * 64 * 1024),
        );
    }
    response
}

/// `VmHWM` (peak resident set) of a process, in bytes.
/// VmHWM, the process's peak resident memory. The kernel's RSS counters are approximate (per-CPU
/// batches), so two readings with no growth between them can come out a few pages apart either
/// way: compare with `saturating_sub`.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap() * 1024)
        .unwrap()
}

/// `aasp serve --attester sim` with `args`, its log in a file; returns the child, its gRPC
/// address and the log path.
struct Serve {
    child: Child,
    grpc: String,
    log: std::path::PathBuf,
    _state: tempfile::TempDir,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aasp"))
            .args(["serve", "--attester", "sim", "--listen", "127.0.0.1:0"])
            .args(["--state-dir", state.path().to_str().unwrap()])
            .args(args)
            .env_remove("AASP_KBS_URL")
            .env_remove("AA_KBC_PARAMS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let grpc = loop {
            let line = lines.next().expect("serve exited early").unwrap();
            if let Some(addr) = line.strip_prefix("aasp serving gRPC on ") {
                break addr.to_owned();
            }
        };
        // The rest of stdout is drained so that serve never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Serve {
            child,
            grpc,
            log,
            _state: state,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hostile KBS answers `/auth` with 32 MiB (chunked): GetToken("kbs") fails naming the limit,
/// and the aasp process's peak memory grows by far less than the body.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_kbs_auth_body_is_refused_at_the_limit() {
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    let kbs = crate::common::serve(axum::Router::new().route(
        "/kbs/v0/auth",
        axum::routing::post(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { huge_body(32 * MIB, false) }
        }),
    ))
    .await;
    let serve = Serve::start(&["--kbs-url", &format!("http://{kbs}")]);
    let mut client = AttestationAgentServiceClient::connect(format!("http://{}", serve.grpc))
        .await
        .unwrap();
    let before = peak_rss(serve.child.id());
    let err = client
        .get_token(GetTokenRequest {
            token_type: "kbs".into(),
        })
        .await
        .expect_err("a 32 MiB challenge must be refused");
    let after = peak_rss(serve.child.id());
    assert_eq!(served.load(Ordering::SeqCst), 1, "not retried");
    assert!(
        err.message().contains("KBS challenge") && err.message().contains("limit of 4096 bytes"),
        "{err:?}"
    );
    assert!(
        after.saturating_sub(before) < 64 * MIB,
        "peak RSS grew by {} MiB for a refused body",
        (after.saturating_sub(before)) / MIB
    );
}

/// The host's THIM answers 64 MiB (length announced, then sent): the chain fetch fails naming
/// the limit, readiness keeps failing closed, and peak memory stays bounded across refetches.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_thim_body_is_refused_at_the_limit() {
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    let thim = crate::common::serve(axum::Router::new().route(
        "/metadata/THIM/amd/certification",
        axum::routing::get(move || {
            // The first answer is small, for a baseline once serve has made its first fetch.
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    axum::http::StatusCode::NOT_FOUND.into_response()
                } else {
                    huge_body(64 * MIB, true)
                }
            }
        }),
    ))
    .await;
    let serve = Serve::start(&[
        "--cert-source",
        "thim",
        "--cert-endpoint",
        &format!("http://{thim}"),
    ]);
    let wait_for = |n: usize| {
        let served = Arc::clone(&served);
        async move {
            while served.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(1).await;
    // The 404 was answered; let serve read it before the baseline.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = peak_rss(serve.child.id());
    wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = peak_rss(serve.child.id());
    let log = serve.log();
    assert!(
        log.contains("certificate chain is larger than aasp's limit of 65536 bytes")
            && log.contains("Content-Length 67108864"),
        "{log}"
    );
    assert!(
        after.saturating_sub(before) < 64 * MIB,
        "peak RSS grew by {} MiB for refused bodies",
        (after.saturating_sub(before)) / MIB
    );
    let health = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["health", "--target", &serve.grpc])
        .output()
        .unwrap();
    assert!(!health.status.success(), "fails closed");
}

/// `--out` onto a symlink (here to a file standing for `/proc/self/fd/1`): refused, the link and
/// its target untouched, no key written anywhere.
#[test]
fn out_onto_a_symlink_is_refused_and_the_link_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("stdout-stand-in");
    std::fs::write(&target, b"untouched").unwrap();
    let link = dir.path().join("key.pem");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["kbs", "keygen", "--out", link.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // A device node is no destination either.
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["kbs", "keygen", "--out", "/dev/null"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

/// A KBS whose certificate has an issuer aasp does not trust: the first attempt fails, nothing
/// is retried, and the error names the option that trusts it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_issuer_is_not_retried_and_names_the_trust_option() {
    let (addr, handshakes) = untrusted_tls_server().await;
    let state = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["kbs", "get-resource", "kbs:///default/key/k"])
        .args(["--kbs-url", &format!("https://{addr}")])
        .args(["--attester", "sim", "--state-dir"])
        .arg(state.path())
        .env_remove("AASP_KBS_URL")
        .env_remove("AA_KBC_PARAMS")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("UnknownIssuer") && stderr.contains("--kbs-cert"),
        "{stderr}"
    );
    assert!(stderr.contains("(1 attempt in"), "{stderr}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1, "not retried");
}

/// A TLS server with a self-signed certificate nobody trusts; counts the handshakes it sees.
async fn untrusted_tls_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&handshakes);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (addr, handshakes)
}

/// Off Azure, IMDS never answers: the first failure logs at once how to give a token instead.
#[test]
fn off_azure_the_first_imds_failure_names_the_token_file() {
    // A port nothing listens on: connection refused, as off Azure.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"layer key").unwrap();
    // `aasp wrap` of a KMS key: the public key needs an access token first.
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args([
            "wrap",
            "--key-ref",
            "https://kv.managedhsm.azure.net/keys/k",
        ])
        .args(["--maa", "maa.attest.azure.net", "--in"])
        .arg(&secret)
        .args(["--imds-endpoint", &imds, "--retry-budget", "1"])
        .env("RUST_LOG", "warn")
        .env_remove("AASP_ACCESS_TOKEN_FILE")
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("WARN")
            && stderr.contains("--access-token-file")
            && stderr
                .contains("az account get-access-token --resource https://managedhsm.azure.net"),
        "{stderr}"
    );
}
