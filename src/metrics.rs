//! Process-wide metrics in Prometheus text format, served on `--metrics-listen`.
//!
//! One registry owns every metric; the layers that observe something call the recording
//! functions here (the lowest module, so no layer depends upward to reach it). Labels are small
//! fixed vocabularies — method names, service names, status classes — never request data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Registry {
    rpc_total: Mutex<BTreeMap<(String, String), u64>>,
    rpc_seconds: Mutex<BTreeMap<String, Histogram>>,
    upstream_total: Mutex<BTreeMap<(String, String), u64>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    releases_in_flight: AtomicI64,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *map.entry(key).or_default() += 1;
}

/// One finished RPC: its method, gRPC status name and duration.
pub fn record_rpc(method: &str, status: &str, elapsed: Duration) {
    let r = registry();
    bump(&r.rpc_total, (method.to_owned(), status.to_owned()));
    let mut hist = r
        .rpc_seconds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let h = hist.entry(method.to_owned()).or_default();
    let secs = elapsed.as_secs_f64();
    for (bucket, bound) in h.buckets.iter_mut().zip(BUCKETS) {
        if secs <= bound {
            *bucket += 1;
        }
    }
    h.count += 1;
    h.sum += secs;
}

/// One outbound HTTP exchange: the upstream (maa, kms, identity, certs) and its outcome
/// (`2xx`…`5xx`, or `transport_error`).
pub fn record_upstream(service: &str, outcome: &str) {
    bump(
        &registry().upstream_total,
        (service.to_owned(), outcome.to_owned()),
    );
}

pub fn record_cache(hit: bool) {
    let counter = if hit {
        &registry().cache_hits
    } else {
        &registry().cache_misses
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts a release in flight until the guard drops.
pub struct InFlight(());

pub fn release_started() -> InFlight {
    registry()
        .releases_in_flight
        .fetch_add(1, Ordering::Relaxed);
    InFlight(())
}

impl Drop for InFlight {
    fn drop(&mut self) {
        registry()
            .releases_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream an outbound URL belongs to, by its path.
pub fn upstream_of(path: &str) -> &'static str {
    if path.starts_with("/attest") || path == "/certs" {
        "maa"
    } else if path.starts_with("/keys") {
        "kms"
    } else if path.contains("/oauth2/") {
        "identity"
    } else {
        "certs"
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    use std::fmt::Write;
    let r = registry();
    let mut out = String::new();
    let _ = writeln!(out, "# HELP aasp_rpc_requests_total gRPC calls by method and status.\n# TYPE aasp_rpc_requests_total counter");
    for ((method, status), n) in r
        .rpc_total
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "aasp_rpc_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP aasp_rpc_duration_seconds gRPC call latency by method.\n# TYPE aasp_rpc_duration_seconds histogram");
    for (method, h) in r
        .rpc_seconds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        for (bound, n) in BUCKETS.iter().zip(h.buckets) {
            let _ = writeln!(
                out,
                "aasp_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "aasp_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "aasp_rpc_duration_seconds_sum{{method=\"{method}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "aasp_rpc_duration_seconds_count{{method=\"{method}\"}} {}",
            h.count
        );
    }
    let _ = writeln!(out, "# HELP aasp_upstream_requests_total Outbound calls by upstream and outcome.\n# TYPE aasp_upstream_requests_total counter");
    for ((service, outcome), n) in r
        .upstream_total
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        let _ = writeln!(
            out,
            "aasp_upstream_requests_total{{service=\"{service}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP aasp_release_cache_total Released-key cache lookups.\n# TYPE aasp_release_cache_total counter");
    let _ = writeln!(
        out,
        "aasp_release_cache_total{{result=\"hit\"}} {}",
        r.cache_hits.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "aasp_release_cache_total{{result=\"miss\"}} {}",
        r.cache_misses.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP aasp_releases_in_flight Secure key releases under way.\n# TYPE aasp_releases_in_flight gauge");
    let _ = writeln!(
        out,
        "aasp_releases_in_flight {}",
        r.releases_in_flight.load(Ordering::Relaxed)
    );
    out
}

/// `GET /metrics`.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            ([("content-type", "text/plain; version=0.0.4")], render())
        }),
    )
}
