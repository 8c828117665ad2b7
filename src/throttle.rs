//! Log lines for errors that repeat: at most one line per interval for each call site, carrying
//! how many occurrences were left out since the previous line.
//!
//! An error a client or the host can provoke at will (a failed accept at the descriptor limit, a
//! refused connection, a malformed frame) would otherwise write a line per occurrence: the
//! `ttrpc` crate's accept loop wrote 7.4 million lines in 30 s that way. [`warn_throttled!`] is a
//! `tracing::warn!` with a static [`Throttle`] of its own; the first occurrence always logs at
//! once, so a person sees the problem when it starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often one call site may log.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The log budget of one call site.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which the site stays quiet.
    quiet_until_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        // An interval beyond u64 milliseconds (584 million years) is as good as forever.
        let ms = interval.as_millis();
        Throttle {
            interval_ms: if ms > u64::MAX as u128 {
                u64::MAX
            } else {
                ms as u64
            },
            quiet_until_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` when this occurrence is to be logged, `None` when it
    /// is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(elapsed_ms())
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let quiet_until = self.quiet_until_ms.load(Ordering::Relaxed);
        // Of several threads seeing the interval over, the one whose exchange succeeds logs.
        if now_ms >= quiet_until
            && self
                .quiet_until_ms
                .compare_exchange(
                    quiet_until,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Milliseconds since the first throttled log of the process: a monotonic clock that fits a
/// static atomic.
fn elapsed_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `tracing::warn!` at most once per [`INTERVAL`] for this call site, with a `suppressed` field
/// counting the occurrences left out since its previous line.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle =
            $crate::throttle::Throttle::new($crate::throttle::INTERVAL);
        if let Some(suppressed) = THROTTLE.admit() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carrying_the_count_left_out() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit_at(5), Some(0), "the first occurrence logs");
        for ms in [6, 1_000, 10_004] {
            assert_eq!(throttle.admit_at(ms), None, "at {ms} ms");
        }
        assert_eq!(throttle.admit_at(10_005), Some(3));
        assert_eq!(throttle.admit_at(10_006), None);
        assert_eq!(throttle.admit_at(60_000), Some(1));
    }

    #[test]
    fn each_call_site_has_its_own_budget() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let lines = std::sync::Arc::clone(&lines);
                move || Capture(std::sync::Arc::clone(&lines))
            })
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..1000 {
                crate::warn_throttled!("first site");
                crate::warn_throttled!(error = "x", "second site");
            }
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("first site").count(), 1, "{text}");
        assert_eq!(text.matches("second site").count(), 1, "{text}");
        assert!(text.contains("suppressed=0"), "{text}");
    }

    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
