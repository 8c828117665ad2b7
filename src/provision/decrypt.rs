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

use super::{Error, Result};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Runs CPU-heavy private-key operations off the async workers, bounded.
#[derive(Debug, Clone)]
pub struct DecryptPool {
    /// `None`: run inline on the calling worker.
    permits: Option<Arc<Semaphore>>,
}

impl DecryptPool {
    /// At most `threads` operations at once on the blocking pool; 0 runs them inline.
    pub fn new(threads: usize) -> Self {
        DecryptPool {
            permits: (threads > 0).then(|| Arc::new(Semaphore::new(threads))),
        }
    }

    /// One thread per CPU: as many decrypts as can really run at once.
    pub fn per_cpu() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Runs `op`, off the async worker unless this pool is inline. A caller that goes away
    /// while `op` runs does not free its slot early: the permit lives with the operation, and
    /// the result (a zeroizing type for key material) is dropped there.
    pub async fn run<T, F>(&self, op: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let Some(permits) = &self.permits else {
            return op();
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::ThreadId;

    /// Runs 8 operations at once through `pool` on a current-thread runtime; returns the most
    /// that ran at the same time and the threads they ran on.
    fn run_eight(pool: DecryptPool) -> (usize, Vec<ThreadId>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads = runtime.block_on(async {
            let calls = (0..8).map(|_| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Long enough for unbounded operations to overlap.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(std::thread::current().id())
                })
            });
            futures_util::future::join_all(calls).await
        });
        let threads = threads.into_iter().map(Result::unwrap).collect();
        (most.load(Ordering::SeqCst), threads)
    }

    #[test]
    fn decrypts_run_off_the_runtime_thread_at_most_n_at_once() {
        let me = std::thread::current().id();
        for n in [1, 2] {
            let (most, threads) = run_eight(DecryptPool::new(n));
            assert!(most <= n, "{most} decrypts ran at once with {n} threads");
            assert!(threads.iter().all(|t| *t != me), "a decrypt ran inline");
        }
    }

    /// On a server runtime with one worker: while a decrypt runs, another task on that worker
    /// still runs (with the decrypt inline it would wait for it).
    fn other_task_runs_during_decrypt(pool: DecryptPool) -> bool {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let decrypting = Arc::new(std::sync::Barrier::new(2));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<&str>();
        runtime.block_on(async {
            let (barrier, done) = (Arc::clone(&decrypting), done_tx.clone());
            let decrypt = tokio::spawn(async move {
                pool.run(move || {
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
    fn a_decrypt_does_not_hold_the_worker() {
        assert!(other_task_runs_during_decrypt(DecryptPool::new(1)));
        assert!(!other_task_runs_during_decrypt(DecryptPool::new(0)));
    }

    #[test]
    fn zero_threads_runs_inline() {
        let me = std::thread::current().id();
        let (most, threads) = run_eight(DecryptPool::new(0));
        assert_eq!(most, 1);
        assert!(threads.iter().all(|t| *t == me));
    }

    #[test]
    fn errors_come_back() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = runtime
            .block_on(DecryptPool::new(1).run(|| -> Result<()> { Err(Error::Invalid("x".into())) }))
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
    }
}
