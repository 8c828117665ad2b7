//! Where layer-key decrypts run. An RSA-3072 private-key operation takes about 0.7 ms of CPU:
//! on an async worker it holds that worker, and every task queued behind it (health, SayHello,
//! the connection tasks that flush other replies) waits, while tokio's LIFO slot cannot even be
//! stolen by the other worker. So decrypts run on the blocking pool (`spawn_blocking`), at most
//! `threads` at once (a semaphore, FIFO): the workers stay free for everything else, the number
//! of decrypt threads stays bounded however many calls arrive, and the kernel shares the cores
//! between them. Measured against `block_in_place` (which runs the decrypt in place and moves the
//! worker's queue to another thread instead): SayHello's p99 under concurrent UnWrapKeys was
//! 2–3x lower with the blocking pool, and a single warm UnWrapKey no slower (BENCHMARKS.md
//! "Warm UnWrapKey"). `threads = 0` keeps the decrypt on the worker that took the call (the old
//! placement, kept to measure against).
//!
//! The hand-off has a price: two thread wake-ups, each through the hypervisor on a VM whose idle
//! vCPUs halt (40–65 µs of wall time, ~55 µs of CPU per call, BENCHMARKS.md "Hand-off"). It buys
//! nothing when nobody waits behind the decrypt. So a [`Caller::Alone`] decrypts in place: its
//! caller vouches that nothing waits on its task (no other call or reply of its connection) and
//! that it woke no other task on the way (tokio runs a task woken from a worker on that worker,
//! next: it would wait for the decrypt, and the other worker cannot take it). Here, at most
//! `workers - 1` decrypts run in place at once, so they never hold every worker; each holds one
//! of the `threads` permits; and a runtime with one worker never decrypts in place.

use super::{Error, Result};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a decrypt in the caller's own task would hold up besides the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Nothing: no other work waits on the caller's task, and the caller woke no other task
    /// on its way here.
    Alone,
    /// Other work may wait (other calls of the connection, a task it woke), or the caller
    /// cannot tell.
    Shared,
}

/// Runs CPU-heavy private-key operations where they hold up nobody, bounded.
#[derive(Debug, Clone)]
pub struct DecryptPool {
    /// `None`: run inline on the calling worker.
    permits: Option<Arc<Semaphore>>,
    /// Decrypts running in place on a worker (for [`Caller::Alone`]).
    in_place: Arc<AtomicUsize>,
    /// Decrypts that ran in place, ever.
    in_place_total: Arc<AtomicU64>,
}

/// A decrypt's right to run on the worker that took its call; freed when dropped.
struct InPlace {
    running: Arc<AtomicUsize>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for InPlace {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DecryptPool {
    /// At most `threads` operations at once, on the blocking pool or in place; 0 runs them all
    /// inline.
    pub fn new(threads: usize) -> Self {
        DecryptPool {
            permits: (threads > 0).then(|| Arc::new(Semaphore::new(threads))),
            in_place: Arc::new(AtomicUsize::new(0)),
            in_place_total: Arc::new(AtomicU64::new(0)),
        }
    }

    /// One thread per CPU: as many decrypts as can really run at once.
    pub fn per_cpu() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Runs `op`, off the async worker unless this pool is inline or `caller` is alone and a
    /// slot to decrypt in place is free (see the module's notes). A caller that goes away while `op`
    /// runs does not free its slot early: the permit lives with the operation, and the result
    /// (a zeroizing type for key material) is dropped there.
    pub async fn run<T, F>(&self, caller: Caller, op: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let Some(permits) = &self.permits else {
            return op();
        };
        if caller == Caller::Alone {
            if let Some(_in_place) = self.in_place(permits) {
                self.in_place_total.fetch_add(1, Ordering::Relaxed);
                return op();
            }
        }
        // The semaphore is never closed; an error would mean it was.
        let permit = Arc::clone(permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Stopped("the decrypt pool is closed".into()))?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Polled by an executor other than tokio: there is no tokio worker to hold up (and
            // no blocking pool to use).
            let _permit = permit;
            return op();
        };
        runtime
            .spawn_blocking(move || {
                let _permit = permit;
                op()
            })
            .await
            // Cancelled at runtime shutdown (the closures here do not panic).
            .map_err(|e| Error::Stopped(format!("the decrypt did not run: {e}")))?
    }

    /// Decrypts that ran in place so far.
    pub fn in_place_total(&self) -> u64 {
        self.in_place_total.load(Ordering::Relaxed)
    }

    /// A slot to decrypt on this worker, if that leaves at least one worker that no decrypt
    /// holds in place, and a permit is free now (waiting for one is the pool's FIFO queue's job).
    fn in_place(&self, permits: &Arc<Semaphore>) -> Option<InPlace> {
        let workers = tokio::runtime::Handle::try_current()
            .ok()?
            .metrics()
            .num_workers();
        let running = self.in_place.fetch_add(1, Ordering::AcqRel);
        if running + 1 < workers {
            if let Ok(permit) = Arc::clone(permits).try_acquire_owned() {
                return Some(InPlace {
                    running: Arc::clone(&self.in_place),
                    _permit: permit,
                });
            }
        }
        self.in_place.fetch_sub(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::ThreadId;

    fn runtime(workers: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Runs 8 operations at once through `pool`, each from a task of its own on a runtime with
    /// `workers` workers; returns the most that ran at the same time and, for each, the thread
    /// of its task and the thread it ran on.
    fn run_eight(
        pool: &DecryptPool,
        caller: Caller,
        workers: usize,
    ) -> (usize, Vec<(ThreadId, ThreadId)>) {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads = runtime(workers).block_on(async {
            let calls = (0..8).map(|_| {
                let (running, most, pool) = (Arc::clone(&running), Arc::clone(&most), pool.clone());
                tokio::spawn(async move {
                    let task = std::thread::current().id();
                    let ran_on = pool
                        .run(caller, move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            // Long enough for unbounded operations to overlap.
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(std::thread::current().id())
                        })
                        .await
                        .unwrap();
                    (task, ran_on)
                })
            });
            futures_util::future::join_all(calls).await
        });
        let threads = threads.into_iter().map(Result::unwrap).collect();
        (most.load(Ordering::SeqCst), threads)
    }

    fn in_place(threads: &[(ThreadId, ThreadId)]) -> usize {
        threads
            .iter()
            .filter(|(task, ran_on)| task == ran_on)
            .count()
    }

    #[test]
    fn decrypts_run_off_the_workers_at_most_n_at_once() {
        for n in [1, 2] {
            let (most, threads) = run_eight(&DecryptPool::new(n), Caller::Shared, 2);
            assert!(most <= n, "{most} decrypts ran at once with {n} threads");
            assert_eq!(
                in_place(&threads),
                0,
                "a shared caller's decrypt ran in place"
            );
        }
    }

    #[test]
    fn a_lone_caller_decrypts_in_place_while_a_worker_stays_free() {
        let pool = DecryptPool::new(2);
        let ran = runtime(2).block_on(async {
            let pool = pool.clone();
            tokio::spawn(async move {
                let task = std::thread::current().id();
                let ran_on = pool.run(Caller::Alone, || Ok(std::thread::current().id()));
                (task, ran_on.await.unwrap())
            })
            .await
            .unwrap()
        });
        assert_eq!(
            in_place(&[ran]),
            1,
            "a lone caller's decrypt left its worker"
        );
        assert_eq!(
            pool.in_place.load(Ordering::SeqCst),
            0,
            "its slot was not freed"
        );
    }

    #[test]
    fn in_place_decrypts_leave_a_worker_free() {
        // Two workers, two lone callers whose decrypts wait for each other: one runs in place,
        // the other on the pool (both in place would hold both workers).
        let pool = DecryptPool::new(2);
        let both = Arc::new(std::sync::Barrier::new(2));
        let threads = runtime(2).block_on(async {
            let calls = (0..2).map(|_| {
                let (pool, both) = (pool.clone(), Arc::clone(&both));
                tokio::spawn(async move {
                    let task = std::thread::current().id();
                    let ran_on = pool.run(Caller::Alone, move || {
                        both.wait();
                        Ok(std::thread::current().id())
                    });
                    (task, ran_on.await.unwrap())
                })
            });
            futures_util::future::join_all(calls).await
        });
        let threads: Vec<_> = threads.into_iter().map(Result::unwrap).collect();
        assert_eq!(in_place(&threads), 1);
    }

    #[test]
    fn in_place_decrypts_count_against_the_threads() {
        let (most, _) = run_eight(&DecryptPool::new(1), Caller::Alone, 3);
        assert_eq!(most, 1, "decrypts in place ignored --decrypt-threads");
    }

    /// On a server runtime with one worker: while a decrypt runs, another task on that worker
    /// still runs (with the decrypt inline it would wait for it).
    fn other_task_runs_during_decrypt(pool: DecryptPool, caller: Caller) -> bool {
        let runtime = runtime(1);
        let decrypting = Arc::new(std::sync::Barrier::new(2));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<&str>();
        runtime.block_on(async {
            let (barrier, done) = (Arc::clone(&decrypting), done_tx.clone());
            let decrypt = tokio::spawn(async move {
                pool.run(caller, move || {
                    barrier.wait();
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(())
                })
                .await
                .unwrap();
                done.send("decrypt").unwrap();
            });
            // Spawned once the decrypt holds its thread; queued on the one worker.
            let barrier = Arc::clone(&decrypting);
            tokio::task::spawn_blocking(move || barrier.wait())
                .await
                .unwrap();
            let other = tokio::spawn(async move { done_tx.send("other").unwrap() });
            other.await.unwrap();
            decrypt.await.unwrap();
        });
        done_rx.recv().unwrap() == "other"
    }

    #[test]
    fn a_decrypt_does_not_hold_the_only_worker() {
        assert!(other_task_runs_during_decrypt(
            DecryptPool::new(1),
            Caller::Shared
        ));
        assert!(other_task_runs_during_decrypt(
            DecryptPool::new(1),
            Caller::Alone
        ));
        assert!(!other_task_runs_during_decrypt(
            DecryptPool::new(0),
            Caller::Shared
        ));
    }

    #[test]
    fn zero_threads_runs_in_place() {
        let (most, threads) = run_eight(&DecryptPool::new(0), Caller::Shared, 2);
        assert!(most <= 2, "{most} decrypts ran at once on two workers");
        assert_eq!(in_place(&threads), 8);
    }

    #[test]
    fn errors_come_back() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = runtime
            .block_on(DecryptPool::new(1).run(Caller::Shared, || -> Result<()> {
                Err(Error::Invalid("x".into()))
            }))
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
    }
}
