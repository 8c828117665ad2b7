//! Certificate sources against a local HTTP server and a temporary security-context directory,
//! and the TCB refresh rule.

use crate::common;

use aasp::snp::attester::Attester;
use aasp::snp::chain::{
    attest, AzCache, ChainCache, ChainSource, Kds, SecurityContext, SideCarArgs, Thim,
};
use aasp::snp::report::AttestationReport;
use aasp::snp::sim::{SimOptions, Simulated};
use aasp::snp::verify::{verify_report, TrustStore};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use common::{read, serve, vectors};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn report(name: &str) -> AttestationReport {
    AttestationReport::from_bytes(&read(&format!("{name}/report.bin"))).unwrap()
}

fn verify_at(name: &str) -> u64 {
    vectors()
        .into_iter()
        .find(|v| v.name == name)
        .unwrap()
        .verify_at
}

async fn thim_handler(headers: HeaderMap) -> Result<Vec<u8>, StatusCode> {
    if headers.get("Metadata").map(|v| v.as_bytes()) != Some(b"true") {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(read("milan-aci-sidecar/thim.json"))
}

#[tokio::test]
async fn thim_document_from_the_metadata_endpoint() {
    let addr =
        serve(Router::new().route("/metadata/THIM/amd/certification", get(thim_handler))).await;
    let source = Thim {
        client: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };
    let r = report("milan-aci-sidecar");
    let e = source.fetch(&r).await.unwrap();
    assert_eq!(e.tcbm, 0x7308_0000_0000_0003);
    let v = verify_report(
        &r,
        &e.chain,
        &TrustStore::amd(),
        verify_at("milan-aci-sidecar"),
    );
    assert!(v.passed(), "{:?}", v.checks);
}

#[tokio::test]
async fn thim_errors_name_the_endpoint_and_status() {
    let addr = serve(Router::new()).await;
    let source = Thim {
        client: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };
    let err = source
        .fetch(&report("milan-aci-sidecar"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&addr.to_string()) && err.contains("404"),
        "{err}"
    );
}

#[tokio::test]
async fn azcache_by_chip_id_and_tcb() {
    let r = report("milan-go-sev-guest");
    let (chip, tcb) = (hex::encode(r.chip_id), format!("{:x}", r.reported_tcb));
    let router = Router::new().route(
        "/{tee}/certificates/{chip}/{tcb}",
        get(
            move |Path((tee, c, t)): Path<(String, String, String)>,
                  Query(q): Query<HashMap<String, String>>| {
                let expected = (chip.clone(), tcb.clone());
                async move {
                    if tee != "SevSnpVM"
                        || (c, t) != expected
                        || q.get("api-version").map(String::as_str) != Some("2020-10-15-preview")
                    {
                        return Err(StatusCode::NOT_FOUND);
                    }
                    let mut pem =
                        aasp::snp::cert::Cert::from_der(&read("milan-go-sev-guest/vcek.der"))
                            .unwrap()
                            .to_pem()
                            .into_bytes();
                    pem.extend(read("milan-go-sev-guest/chain.pem"));
                    Ok(pem)
                }
            },
        ),
    );
    let addr = serve(router).await;
    let source = AzCache {
        client: reqwest::Client::new(),
        endpoint: format!("http://{addr}"),
        tee_type: "SevSnpVM".into(),
        api_version: "api-version=2020-10-15-preview".into(),
    };
    let e = source.fetch(&r).await.unwrap();
    assert_eq!(e.tcbm, r.reported_tcb);
    assert!(verify_report(
        &r,
        &e.chain,
        &TrustStore::amd(),
        verify_at("milan-go-sev-guest")
    )
    .passed());
}

#[tokio::test]
async fn kds_vcek_der_and_cert_chain() {
    let r = report("genoa-azure");
    let tcb = r.tcb(r.reported_tcb);
    let chip = hex::encode(r.chip_id);
    let expected_query: HashMap<String, String> = [
        ("blSPL", tcb.bootloader),
        ("teeSPL", tcb.tee),
        ("snpSPL", tcb.snp),
        ("ucodeSPL", tcb.microcode),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_string()))
    .collect();
    let router = Router::new()
        .route(
            "/vcek/v1/Genoa/cert_chain",
            get(|| async { read("genoa-azure/chain.pem") }),
        )
        .route(
            "/vcek/v1/Genoa/{chip}",
            get(
                move |Path(c): Path<String>, Query(q): Query<HashMap<String, String>>| {
                    let ok = c == chip && q == expected_query;
                    async move {
                        if ok {
                            Ok(read("genoa-azure/vcek.der"))
                        } else {
                            Err(StatusCode::NOT_FOUND)
                        }
                    }
                },
            ),
        );
    let addr = serve(router).await;
    // No product configured: it comes from the report's CPUID (family 0x19, Genoa model).
    let source = Kds {
        client: reqwest::Client::new(),
        endpoint: format!("http://{addr}/vcek/v1"),
        product: None,
    };
    let e = source.fetch(&r).await.unwrap();
    let v = verify_report(&r, &e.chain, &TrustStore::amd(), verify_at("genoa-azure"));
    assert!(v.passed(), "{:?}", v.checks);
}

#[tokio::test]
async fn security_context_directory() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "host-amd-cert-base64",
        "reference-info-base64",
        "security-policy-base64",
    ] {
        std::fs::write(
            dir.path().join(file),
            read(&format!("security-context/{file}")),
        )
        .unwrap();
    }
    let source = SecurityContext {
        dir: Some(dir.path().to_path_buf()),
    };
    let e = source.fetch(&report("milan-aci-sidecar")).await.unwrap();
    assert_eq!(e.tcbm, 0x7308_0000_0000_0003);
    let cose = e.uvm_reference_info.as_ref().unwrap();
    assert_eq!(cose[0], 0xD2, "COSE_Sign1 tag 18");
    // The chain is AMD's: its signatures verify up to the pinned Milan root even though this
    // context belongs to another report.
    let v = verify_report(
        &report("milan-aci-sidecar"),
        &e.chain,
        &TrustStore::amd(),
        verify_at("milan-aci-sidecar"),
    );
    for check in [
        "signer signed by intermediate",
        "intermediate signed by pinned root",
    ] {
        assert!(
            v.checks.iter().any(|c| c.name == check && c.passed),
            "{check}: {:?}",
            v.checks
        );
    }
    let policy = source.security_policy().unwrap().unwrap();
    assert!(policy.starts_with(b"package policy"));

    std::fs::remove_file(dir.path().join("host-amd-cert-base64")).unwrap();
    let err = source
        .fetch(&report("milan-aci-sidecar"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("host-amd-cert-base64 is missing"), "{err}");
}

#[test]
fn sidecar_args_decode() {
    use base64::Engine;
    let json = r#"{"certcache":{"endpoint_type":"AzCache","endpoint":"americas.acccache.azure.net","tee_type":"SevSnpVM","api_version":"api-version=2020-10-15-preview"},"identity":{"client_id":"abc"},"maaconfig":{"user_agent":"x"}}"#;
    let args = SideCarArgs::parse(&base64::engine::general_purpose::STANDARD.encode(json)).unwrap();
    let cache = args.certcache.unwrap();
    assert_eq!(
        (cache.endpoint_type.as_str(), cache.tee_type.as_str()),
        ("AzCache", "SevSnpVM")
    );
    assert_eq!(args.identity.unwrap().client_id, "abc");
    assert!(SideCarArgs::parse("not base64!")
        .unwrap_err()
        .contains("base64"));
    assert!(SideCarArgs::parse(&base64::engine::general_purpose::STANDARD.encode("[1]")).is_err());
}

/// A THIM that serves the simulator's chain with a declared tcbm of its choosing, counting calls.
struct StaleThim {
    calls: AtomicUsize,
    stale_calls: usize,
    thim: serde_json::Value,
}

async fn stale_thim(State(s): State<Arc<StaleThim>>) -> String {
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    let mut doc = s.thim.clone();
    if n < s.stale_calls {
        doc["tcbm"] = "7308000000000002".into();
    }
    doc.to_string()
}

async fn tcb_case(
    stale_calls: usize,
) -> (
    Result<aasp::snp::chain::Attested, aasp::snp::Error>,
    Arc<StaleThim>,
    ChainCache,
    Arc<dyn Attester>,
) {
    let sim = Simulated::open(&SimOptions {
        state_dir: common::sim_state_dir(),
        ..Default::default()
    })
    .unwrap();
    let thim: serde_json::Value = serde_json::from_str(&sim.thim_json()).unwrap();
    let state = Arc::new(StaleThim {
        calls: AtomicUsize::new(0),
        stale_calls,
        thim,
    });
    let addr = serve(
        Router::new()
            .route("/metadata/THIM/amd/certification", get(stale_thim))
            .with_state(Arc::clone(&state)),
    )
    .await;
    let cache = ChainCache::new(Box::new(Thim {
        client: reqwest::Client::new(),
        base: format!("http://{addr}"),
    }));
    let attester: Arc<dyn Attester> = Arc::new(sim);
    let result = attest(&attester, &cache, [7; 64]).await;
    (result, state, cache, attester)
}

#[tokio::test]
async fn tcb_mismatch_refreshes_the_chain_then_succeeds() {
    let (result, state, cache, attester) = tcb_case(1).await;
    let attested = result.unwrap();
    assert_eq!(attested.endorsement.tcbm, attested.report.reported_tcb);
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        2,
        "one stale fetch, one refresh"
    );
    // The refreshed chain is cached: the next attestation fetches nothing.
    attest(&attester, &cache, [8; 64]).await.unwrap();
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tcb_mismatch_that_persists_fails_naming_both_values() {
    let (result, state, _, _) = tcb_case(usize::MAX).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            aasp::snp::Error::TcbMismatch {
                reported: 0x7308_0000_0000_0003,
                certified: 0x7308_0000_0000_0002
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("7308000000000003") && message.contains("7308000000000002"),
        "{message}"
    );
    assert_eq!(state.calls.load(Ordering::SeqCst), 2);
}
