//! A bounded cache with single flight: concurrent callers for one key share one upstream flight
//! and its outcome — its value, or its error (a failure is shared with those who waited for it,
//! never kept for later callers). Entries exist only while a flight runs or a value is fresh:
//! the entry of a failed flight goes when its last waiter leaves, expired values go in the
//! background sweep (`sweep`), and the map never holds more than `capacity` entries.

use super::{Error, Result};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

enum State<T> {
    Empty,
    Ready {
        value: T,
        at: Instant,
    },
    /// The error of the flight that finished at `at`, for the callers that waited on it.
    Failed {
        error: Arc<Error>,
        at: Instant,
    },
}

type Slot<T> = Arc<tokio::sync::Mutex<State<T>>>;

pub struct FlightCache<K, T> {
    map: std::sync::Mutex<HashMap<K, Slot<T>>>,
    ttl: Duration,
    capacity: usize,
}

/// Whether a lookup was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

impl<K: Hash + Eq + Clone, T: Clone> FlightCache<K, T> {
    /// `ttl` zero keeps nothing (flights are still shared).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        FlightCache {
            map: std::sync::Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<T>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Entries held (fresh values and flights under way).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value for `key` if `usable` accepts it while fresh, else the outcome of one
    /// flight of `run` shared by every caller that arrives while it runs.
    pub async fn get_or_run<F, Fut>(
        &self,
        key: &K,
        usable: impl Fn(&T) -> bool,
        run: F,
    ) -> Result<(T, Lookup)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let joined = Instant::now();
        // Declared first so that it drops last, after the slot's lock guard below.
        let entry = Entry {
            cache: self,
            key,
            slot: self.slot(key)?,
        };
        let mut state = entry.slot.lock().await;
        match &*state {
            State::Ready { value, at } if at.elapsed() < self.ttl && usable(value) => {
                return Ok((value.clone(), Lookup::Hit));
            }
            // This caller waited for that flight: it shares its outcome instead of running
            // the same failing call again after it.
            State::Failed { error, at } if *at >= joined => {
                return Err(Error::Shared(Arc::clone(error)));
            }
            _ => {}
        }
        match run().await {
            Ok(value) => {
                *state = if self.ttl.is_zero() {
                    State::Empty
                } else {
                    State::Ready {
                        value: value.clone(),
                        at: Instant::now(),
                    }
                };
                Ok((value, Lookup::Miss))
            }
            Err(error) => {
                let error = Arc::new(error);
                *state = State::Failed {
                    error: Arc::clone(&error),
                    at: Instant::now(),
                };
                Err(Error::Shared(error))
            }
        }
    }

    /// Drops the cached value for `key` (it was refused upstream); a flight under way is left
    /// alone.
    pub fn forget(&self, key: &K) {
        let Some(slot) = self.map().get(key).map(Arc::clone) else {
            return;
        };
        if let Ok(mut state) = slot.try_lock() {
            *state = State::Empty;
        };
    }

    /// Removes every entry no caller uses and holding no fresh value: expired values are
    /// dropped (and zeroized, for keys) here rather than on the next request.
    pub fn sweep(&self) {
        let mut map = self.map();
        map.retain(|_, slot| self.keep(slot));
    }

    fn keep(&self, slot: &Slot<T>) -> bool {
        // The map's reference is the only one: no caller holds or waits on it.
        if Arc::strong_count(slot) > 1 {
            return true;
        }
        match slot.try_lock() {
            Ok(state) => matches!(&*state, State::Ready { at, .. } if at.elapsed() < self.ttl),
            Err(_) => true,
        }
    }

    fn slot(&self, key: &K) -> Result<Slot<T>> {
        let mut map = self.map();
        if let Some(slot) = map.get(key) {
            return Ok(Arc::clone(slot));
        }
        if map.len() >= self.capacity {
            map.retain(|_, slot| self.keep(slot));
        }
        if map.len() >= self.capacity {
            // Full of fresh values: the oldest unused one makes room.
            let oldest = map
                .iter()
                .filter(|(_, slot)| Arc::strong_count(slot) == 1)
                .filter_map(|(k, slot)| match slot.try_lock().ok().as_deref() {
                    Some(State::Ready { at, .. }) => Some((k.clone(), *at)),
                    _ => None,
                })
                .min_by_key(|(_, at)| *at)
                .map(|(k, _)| k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        if map.len() >= self.capacity {
            return Err(Error::Busy(format!(
                "{} releases are under way; try again shortly",
                map.len()
            )));
        }
        let slot: Slot<T> = Arc::new(tokio::sync::Mutex::new(State::Empty));
        map.insert(key.clone(), Arc::clone(&slot));
        Ok(slot)
    }
}

/// A caller's hold on an entry; when the last caller leaves an entry without a fresh value
/// (a failed or uncached flight, or a caller that gave up), the entry goes.
struct Entry<'a, K: Hash + Eq + Clone, T: Clone> {
    cache: &'a FlightCache<K, T>,
    key: &'a K,
    slot: Slot<T>,
}

impl<K: Hash + Eq + Clone, T: Clone> Drop for Entry<'_, K, T> {
    fn drop(&mut self) {
        let mut map = self.cache.map();
        let ours = map
            .get(self.key)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot));
        // Ours and the map's: nobody else holds it (new callers clone it under the map lock).
        if ours && Arc::strong_count(&self.slot) == 2 {
            let fresh = match self.slot.try_lock() {
                Ok(state) => {
                    matches!(&*state, State::Ready { at, .. } if at.elapsed() < self.cache.ttl)
                }
                Err(_) => true,
            };
            if !fresh {
                map.remove(self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fail() -> Error {
        Error::Invalid("upstream said no".into())
    }

    #[tokio::test]
    async fn failures_are_shared_with_waiters_and_not_kept() {
        let cache: Arc<FlightCache<String, u32>> =
            Arc::new(FlightCache::new(Duration::from_secs(60), 16));
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (cache, runs, gate) = (cache.clone(), runs.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_run(
                            &"k".to_owned(),
                            |_| true,
                            || async {
                                runs.fetch_add(1, Ordering::SeqCst);
                                gate.notified().await;
                                Err::<u32, _>(fail())
                            },
                        )
                        .await
                })
            })
            .collect();
        // Let every caller join the flight, then let it fail.
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for call in calls {
            let err = call.await.unwrap().unwrap_err();
            assert!(err.to_string().contains("upstream said no"), "{err}");
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one flight for every waiter"
        );
        assert!(cache.is_empty(), "no entry is kept for a failed flight");
        // A later caller runs a new flight.
        let (v, lookup) = cache
            .get_or_run(&"k".to_owned(), |_| true, || async { Ok(7) })
            .await
            .unwrap();
        assert_eq!((v, lookup, cache.len()), (7, Lookup::Miss, 1));
        let (_, lookup) = cache
            .get_or_run(&"k".to_owned(), |_| true, || async { Ok(8) })
            .await
            .unwrap();
        assert_eq!(lookup, Lookup::Hit);
        cache.forget(&"k".to_owned());
        let (v, _) = cache
            .get_or_run(&"k".to_owned(), |_| true, || async { Ok(9) })
            .await
            .unwrap();
        assert_eq!(v, 9);
    }

    #[tokio::test]
    async fn bounded_and_swept() {
        let cache: FlightCache<u32, u32> = FlightCache::new(Duration::from_millis(50), 4);
        for k in 0..10 {
            cache
                .get_or_run(&k, |_| true, || async { Ok(k) })
                .await
                .unwrap();
            assert!(cache.len() <= 4);
        }
        for k in 10..20 {
            let _ = cache
                .get_or_run(&k, |_| true, || async { Err::<u32, _>(fail()) })
                .await;
        }
        assert!(cache.len() <= 4);
        std::thread::sleep(Duration::from_millis(60));
        cache.sweep();
        assert!(cache.is_empty());
        let uncached: FlightCache<u32, u32> = FlightCache::new(Duration::ZERO, 4);
        uncached
            .get_or_run(&1, |_| true, || async { Ok(1) })
            .await
            .unwrap();
        assert!(uncached.is_empty());
    }
}
