//! The block cache between a remote blob and the FUSE file: bounded, single-flight, with
//! read-ahead for sequential readers and write-back with a bounded dirty set.
//!
//! Upstream azmount reads one 512 KiB block per miss, synchronously, into a 16 MiB LRU, and
//! keeps written blocks only in memory until they are evicted (a hard stop loses up to the
//! whole cache). Here:
//! - a read that misses and continues no sequential run fetches only the bytes it asks for,
//!   and nothing is cached: a random 4 KiB read costs one 4 KiB ranged GET, not a whole block
//!   (a 512 KiB GET from Azurite takes ~3x as long; BENCHMARKS.md "encfs throughput"), and the
//!   kernel's page cache above keeps what was read;
//! - the second read that continues where the previous one ended starts read-ahead: the next
//!   blocks are fetched in the background, `read_ahead` of them at once. Blocks read that way
//!   (or by a writer) are fetched once however many readers want them (the first fetches, the
//!   rest wait);
//! - clean blocks are evicted least recently used first once `capacity` bytes are held; dirty
//!   and in-flight blocks are never evicted, and dirty bytes are bounded by `max_dirty` (a
//!   writer past it flushes first), so memory stays within `capacity + max_dirty`;
//! - writes land in the cache and are uploaded (only the written pages) by [`BlockCache::flush`]:
//!   on fsync, on shutdown, and by the background flusher every `flush_interval`, so a hard
//!   kill loses at most the writes of the last `flush_interval` plus one upload.
//!
//! Holds ciphertext only: the crypt layer above decrypts what it reads out.

use crate::encfs::blob::{BlobClient, BlobError, PAGE_SIZE};
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Where blocks come from and go to: a blob, or a test's memory.
pub trait Storage: Send + Sync + 'static {
    fn read(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, BlobError>> + Send;
    fn write(&self, offset: u64, data: Bytes)
        -> impl Future<Output = Result<(), BlobError>> + Send;
}

impl Storage for BlobClient {
    fn read(
        &self,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, BlobError>> + Send {
        BlobClient::read(self, offset, len)
    }

    fn write(
        &self,
        offset: u64,
        data: Bytes,
    ) -> impl Future<Output = Result<(), BlobError>> + Send {
        BlobClient::put_pages(self, offset, data)
    }
}

/// The cache's sizes and pacing.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Bytes per block (a multiple of 512, at most 4 MiB: one block is one Put Page).
    pub block_size: usize,
    /// Clean bytes held before eviction.
    pub capacity: usize,
    /// Blocks fetched ahead of a sequential reader, at once.
    pub read_ahead: usize,
    /// Dirty bytes held before a writer must wait for a flush.
    pub max_dirty: usize,
    /// The background flusher's period: the bound on how long a write stays only in memory
    /// (plus the upload itself).
    pub flush_interval: Duration,
}

/// Default block size: upstream's 512 KiB.
pub const DEFAULT_BLOCK_SIZE: usize = 512 << 10;
/// Default cache size: 64 MiB.
pub const DEFAULT_CAPACITY: usize = 64 << 20;
/// Default blocks in flight ahead of a sequential reader.
pub const DEFAULT_READ_AHEAD: usize = 8;
/// Default dirty bound: 16 MiB.
pub const DEFAULT_MAX_DIRTY: usize = 16 << 20;
/// Default flush period: 2 s.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            block_size: DEFAULT_BLOCK_SIZE,
            capacity: DEFAULT_CAPACITY,
            read_ahead: DEFAULT_READ_AHEAD,
            max_dirty: DEFAULT_MAX_DIRTY,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

impl CacheConfig {
    /// Refuses sizes the cache cannot work with.
    pub fn check(&self) -> Result<(), String> {
        if self.block_size == 0
            || self.block_size as u64 % PAGE_SIZE != 0
            || self.block_size > crate::encfs::blob::MAX_PUT_PAGE
        {
            return Err(format!(
                "block size {} must be a non-zero multiple of 512 up to 4 MiB",
                self.block_size
            ));
        }
        if self.capacity < 4 * self.block_size {
            return Err(format!(
                "--cache-size {} must hold at least 4 blocks of {} bytes",
                self.capacity, self.block_size
            ));
        }
        if self.max_dirty < self.block_size {
            return Err(format!(
                "the dirty bound {} must hold at least one block of {} bytes",
                self.max_dirty, self.block_size
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Storage(Arc<str>),
    #[error("{len} bytes at {offset} are outside the {size}-byte device")]
    OutOfRange { offset: u64, len: usize, size: u64 },
}

/// A block's index, its bytes and the dirty range to upload.
type Upload = (u64, Arc<Vec<u8>>, (usize, usize));

type Fetch = Arc<tokio::sync::OnceCell<Result<Arc<Vec<u8>>, Arc<str>>>>;

struct Entry {
    /// The block's bytes, once fetched (or written whole).
    data: Option<Arc<Vec<u8>>>,
    /// The fetch in flight, which every reader of this block awaits.
    loading: Option<Fetch>,
    /// Written bytes not yet handed to a flush: `[start, end)` within the block, 512-aligned.
    dirty: Option<(usize, usize)>,
    /// Bytes being uploaded by a flush.
    flushing: Option<(usize, usize)>,
    used: u64,
}

#[derive(Default)]
struct State {
    blocks: HashMap<u64, Entry>,
    tick: u64,
    /// Bytes of fetched or written blocks held.
    held: usize,
    /// Bytes in `dirty` and `flushing` ranges.
    dirty_bytes: usize,
    /// Where the last read ended, and how many reads in a row continued there.
    seq_end: u64,
    seq_run: u32,
    /// Read-ahead fetches running.
    prefetching: usize,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub fetches: u64,
    pub uploads: u64,
}

pub struct BlockCache<S: Storage> {
    storage: Arc<S>,
    size: u64,
    config: CacheConfig,
    state: Mutex<State>,
    /// One flush at a time: each takes what is dirty when it starts.
    flush_lock: tokio::sync::Mutex<()>,
    stats: Mutex<CacheStats>,
}

impl<S: Storage> BlockCache<S> {
    pub fn new(storage: Arc<S>, size: u64, config: CacheConfig) -> Result<Arc<Self>, String> {
        config.check()?;
        Ok(Arc::new(BlockCache {
            storage,
            size,
            config,
            state: Mutex::new(State::default()),
            flush_lock: tokio::sync::Mutex::new(()),
            stats: Mutex::new(CacheStats::default()),
        }))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn stats(&self) -> CacheStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes held (clean and dirty) and dirty bytes.
    pub fn held(&self) -> (usize, usize) {
        let state = self.lock();
        (state.held, state.dirty_bytes)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    fn block_len(&self, index: u64) -> usize {
        let start = index * self.config.block_size as u64;
        (self.size.saturating_sub(start)).min(self.config.block_size as u64) as usize
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), CacheError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(CacheError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` (within the device).
    pub async fn read(self: &Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>, CacheError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = self.config.block_size as u64;
        let (first, last) = (offset / bs, (offset + len as u64 - 1) / bs);
        if !self.note_read(offset, len, last) {
            if let Some(bytes) = self.read_uncached(offset, len, first, last).await? {
                return Ok(bytes);
            }
        }
        let blocks =
            futures_util::future::try_join_all((first..=last).map(|i| self.block(i))).await?;
        let mut out = Vec::with_capacity(len);
        for (block, index) in blocks.iter().zip(first..) {
            let start = offset.saturating_sub(index * bs) as usize;
            let end = ((offset + len as u64).min((index + 1) * bs) - index * bs) as usize;
            out.extend_from_slice(block.get(start..end).unwrap_or_default());
        }
        Ok(out)
    }

    /// A read outside a sequential run whose blocks are neither held nor being fetched: just
    /// its bytes, straight from storage (`None`: the cache has some of them, so it answers).
    /// A write overlapping this read cannot complete meanwhile: the kernel holds the pages
    /// being read locked until the read is answered.
    async fn read_uncached(
        &self,
        offset: u64,
        len: usize,
        first: u64,
        last: u64,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        {
            let state = self.lock();
            if (first..=last).any(|i| state.blocks.contains_key(&i)) {
                return Ok(None);
            }
        }
        self.bump(|s| s.fetches += 1);
        self.storage
            .read(offset, len)
            .await
            .map(Some)
            .map_err(|e| CacheError::Storage(Arc::from(e.to_string())))
    }

    /// Sequential detection: a read that starts where the previous one ended continues a run;
    /// from the second such read on, the blocks after it are fetched ahead. Whether this read
    /// continues a run.
    fn note_read(self: &Arc<Self>, offset: u64, len: usize, last: u64) -> bool {
        let wanted: Vec<u64> = {
            let mut state = self.lock();
            state.seq_run = if offset == state.seq_end && offset != 0 {
                state.seq_run.saturating_add(1)
            } else {
                0
            };
            state.seq_end = offset + len as u64;
            if state.seq_run == 0 {
                return false;
            }
            let blocks = self.size.div_ceil(self.config.block_size as u64);
            let free = self.config.read_ahead.saturating_sub(state.prefetching);
            let wanted: Vec<u64> = (last + 1..blocks)
                .take(self.config.read_ahead)
                .filter(|i| !state.blocks.contains_key(i))
                .take(free)
                .collect();
            state.prefetching += wanted.len();
            wanted
        };
        for index in wanted {
            let cache = Arc::clone(self);
            tokio::spawn(async move {
                // A failed read-ahead is retried by the reader that needs the block.
                let _ = cache.block(index).await;
                cache.lock().prefetching -= 1;
            });
        }
        true
    }

    /// One block, from the cache or fetched once for every reader waiting on it.
    async fn block(&self, index: u64) -> Result<Arc<Vec<u8>>, CacheError> {
        let fetch = {
            let mut state = self.lock();
            state.tick += 1;
            let tick = state.tick;
            match state.blocks.get_mut(&index) {
                Some(entry) => {
                    entry.used = tick;
                    if let Some(data) = &entry.data {
                        return Ok(Arc::clone(data));
                    }
                    entry
                        .loading
                        .get_or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
                        .clone()
                }
                None => {
                    let fetch: Fetch = Arc::new(tokio::sync::OnceCell::new());
                    state.blocks.insert(
                        index,
                        Entry {
                            data: None,
                            loading: Some(Arc::clone(&fetch)),
                            dirty: None,
                            flushing: None,
                            used: tick,
                        },
                    );
                    fetch
                }
            }
        };
        let result = fetch
            .get_or_init(|| async {
                self.bump(|s| s.fetches += 1);
                let offset = index * self.config.block_size as u64;
                self.storage
                    .read(offset, self.block_len(index))
                    .await
                    .map(Arc::new)
                    .map_err(|e| Arc::from(e.to_string()))
            })
            .await
            .clone();
        let mut state = self.lock();
        let ours = |entry: &Entry| {
            entry
                .loading
                .as_ref()
                .is_some_and(|l| Arc::ptr_eq(l, &fetch))
        };
        match &result {
            Ok(data) => {
                if let Some(entry) = state.blocks.get_mut(&index).filter(|e| ours(e)) {
                    entry.loading = None;
                    if entry.data.is_none() {
                        entry.data = Some(Arc::clone(data));
                        state.held += data.len();
                    }
                }
                self.evict(&mut state);
            }
            Err(_) => {
                if state
                    .blocks
                    .get(&index)
                    .is_some_and(|e| ours(e) && e.data.is_none())
                {
                    state.blocks.remove(&index);
                }
            }
        }
        // A block written while it was being fetched holds the written bytes: return those.
        match state.blocks.get(&index).and_then(|e| e.data.clone()) {
            Some(current) => Ok(current),
            None => result.map_err(CacheError::Storage),
        }
    }

    /// Drops clean blocks, least recently used first, until at most `capacity` bytes are held.
    fn evict(&self, state: &mut State) {
        while state.held > self.config.capacity {
            let victim = state
                .blocks
                .iter()
                .filter(|(_, e)| e.data.is_some() && e.dirty.is_none() && e.flushing.is_none())
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| *i);
            let Some(victim) = victim else { break };
            if let Some(entry) = state.blocks.remove(&victim) {
                state.held -= entry.data.map_or(0, |d| d.len());
            }
        }
    }

    /// Writes `data` at `offset` into the cache; it reaches storage at the next flush.
    pub async fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<(), CacheError> {
        self.check_range(offset, data.len())?;
        while self.lock().dirty_bytes >= self.config.max_dirty {
            self.flush().await?;
        }
        let bs = self.config.block_size as u64;
        let mut written = 0usize;
        while written < data.len() {
            let at = offset + written as u64;
            let index = at / bs;
            let start = (at - index * bs) as usize;
            let block_len = self.block_len(index);
            let n = (block_len - start).min(data.len() - written);
            let part = data.get(written..written + n).unwrap_or_default();
            let whole = start == 0 && n == block_len;
            if !whole {
                // The rest of the block must be there to be kept.
                self.block(index).await?;
            }
            let mut state = self.lock();
            state.tick += 1;
            let tick = state.tick;
            let state = &mut *state;
            let entry = state.blocks.entry(index).or_insert_with(|| Entry {
                data: None,
                loading: None,
                dirty: None,
                flushing: None,
                used: tick,
            });
            entry.used = tick;
            let block = match (&mut entry.data, whole) {
                (Some(block), _) => Arc::make_mut(block),
                (None, true) => {
                    entry.loading = None;
                    state.held += block_len;
                    Arc::make_mut(entry.data.insert(Arc::new(vec![0; block_len])))
                }
                // Evicted between the fetch and here: fetch again.
                (None, false) => continue,
            };
            if let Some(target) = block.get_mut(start..start + n) {
                target.copy_from_slice(part);
            }
            let page = PAGE_SIZE as usize;
            let range = (start / page * page, (start + n).div_ceil(page) * page);
            let before = entry.dirty.map_or(0, |(a, b)| b - a);
            let merged = match entry.dirty {
                Some((a, b)) => (a.min(range.0), b.max(range.1)),
                None => range,
            };
            entry.dirty = Some(merged);
            state.dirty_bytes += (merged.1 - merged.0) - before;
            written += n;
        }
        Ok(())
    }

    /// Uploads every dirty range (one Put Page per block, up to `read_ahead` at once). A failed
    /// upload stays dirty, to be retried by the next flush.
    pub async fn flush(&self) -> Result<(), CacheError> {
        let _one = self.flush_lock.lock().await;
        let batch: Vec<Upload> = {
            let mut state = self.lock();
            state
                .blocks
                .iter_mut()
                .filter_map(|(index, entry)| {
                    let range = entry.dirty.take()?;
                    entry.flushing = Some(range);
                    Some((*index, Arc::clone(entry.data.as_ref()?), range))
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let bs = self.config.block_size as u64;
        // Owned before they become futures: the flush is awaited from tasks that must be Send.
        let uploads: Vec<(u64, u64, Bytes)> = batch
            .iter()
            .map(|(index, data, (a, b))| {
                let bytes = Bytes::copy_from_slice(data.get(*a..*b).unwrap_or_default());
                (*index, index * bs + *a as u64, bytes)
            })
            .collect();
        drop(batch);
        let uploads = uploads.into_iter().map(|(index, offset, bytes)| {
            let storage = Arc::clone(&self.storage);
            async move { (index, storage.write(offset, bytes).await) }
        });
        use futures_util::StreamExt;
        let results: Vec<(u64, Result<(), BlobError>)> = futures_util::stream::iter(uploads)
            .buffer_unordered(self.config.read_ahead.max(1))
            .collect()
            .await;
        let mut first_error = None;
        let mut state = self.lock();
        for (index, result) in results {
            self.bump(|s| s.uploads += 1);
            let Some(entry) = state.blocks.get_mut(&index) else {
                continue;
            };
            let Some((a, b)) = entry.flushing.take() else {
                continue;
            };
            match result {
                Ok(()) => state.dirty_bytes -= b - a,
                Err(e) => {
                    let before = entry.dirty.map_or(0, |(x, y)| y - x);
                    let merged = match entry.dirty {
                        Some((x, y)) => (x.min(a), y.max(b)),
                        None => (a, b),
                    };
                    entry.dirty = Some(merged);
                    state.dirty_bytes =
                        state.dirty_bytes + (merged.1 - merged.0) - before - (b - a);
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        self.evict(&mut state);
        match first_error {
            Some(e) => Err(CacheError::Storage(Arc::from(e))),
            None => Ok(()),
        }
    }

    /// Flushes every `flush_interval` until `stop` fires, then once more. A failed background
    /// flush is logged and retried on the next tick.
    pub async fn run_flusher(
        self: Arc<Self>,
        name: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut every = tokio::time::interval(self.config.flush_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.flush().await {
                tracing::error!(filesystem = %name, error = %e, "cannot write back to storage; retrying");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Storage in memory that counts its calls and can fail on demand.
    #[derive(Default)]
    pub(crate) struct Memory {
        pub data: Mutex<Vec<u8>>,
        pub reads: AtomicU64,
        pub bytes_read: AtomicU64,
        pub writes: AtomicU64,
        pub fail: std::sync::atomic::AtomicBool,
        pub delay: Option<Duration>,
    }

    impl Memory {
        pub fn with(data: Vec<u8>) -> Arc<Self> {
            Arc::new(Memory {
                data: Mutex::new(data),
                ..Memory::default()
            })
        }
    }

    impl Storage for Memory {
        fn read(
            &self,
            offset: u64,
            len: usize,
        ) -> impl Future<Output = Result<Vec<u8>, BlobError>> + Send {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.bytes_read.fetch_add(len as u64, Ordering::SeqCst);
            let result = if self.fail.load(Ordering::SeqCst) {
                Err(BlobError::BadRequest {
                    op: "GET",
                    reason: "injected".into(),
                })
            } else {
                Ok(self.data.lock().unwrap()[offset as usize..offset as usize + len].to_vec())
            };
            let delay = self.delay;
            async move {
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                result
            }
        }

        fn write(
            &self,
            offset: u64,
            data: Bytes,
        ) -> impl Future<Output = Result<(), BlobError>> + Send {
            self.writes.fetch_add(1, Ordering::SeqCst);
            assert_eq!(offset % 512, 0);
            assert_eq!(data.len() % 512, 0);
            let result = if self.fail.load(Ordering::SeqCst) {
                Err(BlobError::BadRequest {
                    op: "Put Page",
                    reason: "injected".into(),
                })
            } else {
                self.data.lock().unwrap()[offset as usize..offset as usize + data.len()]
                    .copy_from_slice(&data);
                Ok(())
            };
            async move { result }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    fn small() -> CacheConfig {
        CacheConfig {
            block_size: 4096,
            capacity: 4 * 4096,
            read_ahead: 2,
            max_dirty: 8192,
            flush_interval: Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn reads_return_the_bytes_across_blocks_and_the_cache_stays_bounded() {
        let data = pattern(64 * 1024 + 512);
        let memory = Memory::with(data.clone());
        let cache = BlockCache::new(Arc::clone(&memory), data.len() as u64, small()).unwrap();
        for (offset, len) in [(0, 10), (4090, 20), (100, 20000), (65000, 1024), (0, 0)] {
            let got = cache.read(offset, len).await.unwrap();
            assert_eq!(
                got,
                data[offset as usize..offset as usize + len],
                "{offset}+{len}"
            );
        }
        assert!(cache.held().0 <= small().capacity, "{:?}", cache.held());
        let err = cache.read(65000, 1049).await.unwrap_err();
        assert!(matches!(err, CacheError::OutOfRange { .. }), "{err}");
    }

    #[tokio::test]
    async fn concurrent_readers_of_a_block_fetch_it_once() {
        let data = pattern(16 * 1024);
        let memory = Arc::new(Memory {
            data: Mutex::new(data.clone()),
            delay: Some(Duration::from_millis(50)),
            ..Memory::default()
        });
        let config = CacheConfig {
            read_ahead: 0,
            ..small()
        };
        let cache = BlockCache::new(Arc::clone(&memory), data.len() as u64, config).unwrap();
        cache.read(0, 100).await.unwrap();
        let reads = (0..8).map(|i| {
            let cache = Arc::clone(&cache);
            // The first continues the read above, so block 0 is fetched through the cache;
            // the others find that fetch in flight and share it.
            async move { cache.read(100 + i * 200, 100).await.unwrap() }
        });
        futures_util::future::join_all(reads).await;
        // The first read's own bytes, then block 0 once.
        assert_eq!(memory.reads.load(Ordering::SeqCst), 2);
        assert_eq!(memory.bytes_read.load(Ordering::SeqCst), 100 + 4096);
    }

    #[tokio::test]
    async fn random_reads_fetch_only_their_bytes() {
        let data = pattern(64 * 1024);
        let memory = Memory::with(data.clone());
        let cache = BlockCache::new(Arc::clone(&memory), data.len() as u64, small()).unwrap();
        for (offset, len) in [(40960, 4096), (0, 512), (20480 + 100, 5000)] {
            let got = cache.read(offset, len).await.unwrap();
            assert_eq!(got, data[offset as usize..offset as usize + len]);
        }
        // Three GETs of the bytes asked for, not of the 4096-byte blocks around them, and
        // nothing cached.
        assert_eq!(memory.reads.load(Ordering::SeqCst), 3);
        assert_eq!(memory.bytes_read.load(Ordering::SeqCst), 4096 + 512 + 5000);
        assert_eq!(cache.held(), (0, 0));
        // A block the cache holds (here: written) answers reads of it, random or not.
        cache.write(8192, &[7u8; 4096]).await.unwrap();
        assert_eq!(cache.read(8192 + 10, 10).await.unwrap(), vec![7u8; 10]);
        assert_eq!(memory.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn sequential_reads_fetch_ahead() {
        let data = pattern(64 * 1024);
        let memory = Memory::with(data.clone());
        let cache = BlockCache::new(Arc::clone(&memory), data.len() as u64, small()).unwrap();
        cache.read(0, 4096).await.unwrap();
        cache.read(4096, 4096).await.unwrap();
        // The two blocks after the second read are being fetched without being asked for.
        for _ in 0..100 {
            if memory.reads.load(Ordering::SeqCst) == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(memory.reads.load(Ordering::SeqCst), 4);
        cache.read(8192, 8192).await.unwrap();
        // Random reads start no read-ahead.
        let random =
            BlockCache::new(Memory::with(data.clone()), data.len() as u64, small()).unwrap();
        random.read(40960, 10).await.unwrap();
        random.read(0, 10).await.unwrap();
        random.read(20480, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(random.stats().fetches, 3);
    }

    #[tokio::test]
    async fn writes_reach_storage_on_flush_as_whole_pages() {
        let data = pattern(32 * 1024);
        let memory = Memory::with(data.clone());
        let cache = BlockCache::new(Arc::clone(&memory), data.len() as u64, small()).unwrap();
        cache.write(5000, b"hello").await.unwrap();
        cache.write(8192, &[9u8; 4096]).await.unwrap();
        // Readable at once, not yet stored.
        assert_eq!(cache.read(5000, 5).await.unwrap(), b"hello");
        assert_eq!(memory.writes.load(Ordering::SeqCst), 0);
        cache.flush().await.unwrap();
        assert_eq!(memory.writes.load(Ordering::SeqCst), 2);
        let mut expected = data.clone();
        expected[5000..5005].copy_from_slice(b"hello");
        expected[8192..12288].fill(9);
        assert_eq!(*memory.data.lock().unwrap(), expected);
        assert_eq!(cache.held().1, 0);
        // A failed upload stays dirty and goes at the next flush.
        cache.write(0, b"again").await.unwrap();
        memory.fail.store(true, Ordering::SeqCst);
        assert!(cache.flush().await.is_err());
        assert_eq!(cache.held().1, 512);
        memory.fail.store(false, Ordering::SeqCst);
        cache.flush().await.unwrap();
        assert_eq!(&memory.data.lock().unwrap()[0..5], b"again");
        assert_eq!(cache.held().1, 0);
    }

    #[tokio::test]
    async fn the_dirty_set_is_bounded() {
        let data = pattern(64 * 1024);
        let memory = Memory::with(data.clone());
        let cache = BlockCache::new(Arc::clone(&memory), data.len() as u64, small()).unwrap();
        for block in 0..16u64 {
            cache
                .write(block * 4096, &[block as u8; 4096])
                .await
                .unwrap();
            assert!(cache.held().1 <= small().max_dirty, "{:?}", cache.held());
        }
        assert!(memory.writes.load(Ordering::SeqCst) >= 14);
        cache.flush().await.unwrap();
        for block in 0..16usize {
            assert!(
                memory.data.lock().unwrap()[block * 4096..(block + 1) * 4096]
                    .iter()
                    .all(|b| *b == block as u8)
            );
        }
    }
}
