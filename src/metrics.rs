//! Process-wide metrics in Prometheus text format, served on `--metrics-listen`.
//!
//! One registry owns every metric; the layers that observe something call the recording
//! functions here (the lowest module, so no layer depends upward to reach it). Labels are small
//! fixed vocabularies — method names, service names, status classes — never request data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// gRPC status names by code number, as the `status` label spells them.
const STATUS_NAMES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// One method's calls: counts by status and a latency histogram, all atomic so that recording
/// a call takes no lock and allocates nothing (it runs on every RPC).
struct RpcStats {
    by_status: [AtomicU64; STATUS_NAMES.len()],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl RpcStats {
    fn new() -> Self {
        RpcStats {
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Registry {
    /// Methods are the services' own `&'static str` names: a fixed, small set, so entries are
    /// created once and never removed.
    rpc: RwLock<BTreeMap<&'static str, &'static RpcStats>>,
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

fn rpc_stats(method: &'static str) -> &'static RpcStats {
    let rpc = &registry().rpc;
    if let Some(stats) = rpc
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(method)
    {
        return stats;
    }
    let mut map = rpc
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Leaked on purpose: one per method name, for the life of the process.
    map.entry(method)
        .or_insert_with(|| Box::leak(Box::new(RpcStats::new())))
}

/// One finished RPC: its method, gRPC status code (0–16; others count as Unknown) and duration.
pub fn record_rpc(method: &'static str, code: usize, elapsed: Duration) {
    let stats = rpc_stats(method);
    let code = if code < STATUS_NAMES.len() { code } else { 2 };
    if let Some(counter) = stats.by_status.get(code) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    let secs = elapsed.as_secs_f64();
    for (bucket, bound) in stats.buckets.iter().zip(BUCKETS) {
        if secs <= bound {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.count.fetch_add(1, Ordering::Relaxed);
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    stats.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
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
    let rpc: Vec<(&str, &RpcStats)> = r
        .rpc
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(method, stats)| (*method, *stats))
        .collect();
    for (method, stats) in &rpc {
        for (status, n) in STATUS_NAMES.iter().zip(&stats.by_status) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "aasp_rpc_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
    let _ = writeln!(out, "# HELP aasp_rpc_duration_seconds gRPC call latency by method.\n# TYPE aasp_rpc_duration_seconds histogram");
    for (method, stats) in &rpc {
        for (bound, n) in BUCKETS.iter().zip(&stats.buckets) {
            let _ = writeln!(
                out,
                "aasp_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let count = stats.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "aasp_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "aasp_rpc_duration_seconds_sum{{method=\"{method}\"}} {}",
            stats.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "aasp_rpc_duration_seconds_count{{method=\"{method}\"}} {count}"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_counts_by_status_and_latency() {
        let method = "test/Counted";
        record_rpc(method, 0, Duration::from_micros(500));
        record_rpc(method, 0, Duration::from_millis(20));
        record_rpc(method, 3, Duration::from_millis(2));
        record_rpc(method, 99, Duration::from_millis(2));
        let text = render();
        let line = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(label))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        let count = |status: &str| {
            line(&format!(
                "aasp_rpc_requests_total{{method=\"{method}\",status=\"{status}\"}}"
            ))
        };
        assert_eq!(count("Ok").as_deref(), Some("2"));
        assert_eq!(count("InvalidArgument").as_deref(), Some("1"));
        assert_eq!(count("Unknown").as_deref(), Some("1"), "out of range");
        assert_eq!(count("NotFound"), None, "no line for a status never seen");
        let bucket = |le: &str| {
            line(&format!(
                "aasp_rpc_duration_seconds_bucket{{method=\"{method}\",le=\"{le}\"}}"
            ))
        };
        assert_eq!(bucket("0.001").as_deref(), Some("1"));
        assert_eq!(bucket("0.005").as_deref(), Some("3"));
        assert_eq!(bucket("0.05").as_deref(), Some("4"));
        assert_eq!(bucket("+Inf").as_deref(), Some("4"));
        let sum: f64 = line(&format!(
            "aasp_rpc_duration_seconds_sum{{method=\"{method}\"}}"
        ))
        .unwrap()
        .parse()
        .unwrap();
        assert!((sum - 0.0245).abs() < 1e-9, "{sum}");
    }
}
