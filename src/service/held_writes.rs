//! A connection's writes, held back while its task writes the replies of calls that finished
//! together, then sent as one write.
//!
//! h2 does not copy a DATA frame larger than 256 bytes into its write buffer: it writes the
//! frame with a write (and a flush) of its own. So when several calls of one connection finish
//! in the same poll, each reply left in its own write and TCP segment, and on loopback each
//! such write also runs the receiving side of TCP and wakes the reader. For WrapKey at 64
//! streams on one connection that was a tenth of the server's CPU (BENCHMARKS.md, "Where a
//! call's CPU goes"). [`super::conn`] holds the writes of the one poll of the connection that
//! writes such a batch, and sends them as soon as that poll returns.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

/// At most this much is held; a write past it first sends what is held, so order is kept.
/// A batch of 64 WrapKey replies (~190 KB) fits: at 64 KiB it left in three writes or more,
/// each waking the reader, and at 64 streams the server spent 0.04-0.08 wake-ups and
/// 0.2-0.3 writes per call instead of 0.005 and 0.03 (`perf stat`), 1-4 µs of CPU per call.
const HOLD_LIMIT: usize = 256 * 1024;

/// The buffer's first size: a few replies, without reserving a whole batch for two.
const FIRST_RESERVE: usize = 16 * 1024;

/// The connection's I/O as the protocol sees it. Reads pass through; writes pass through too,
/// except while [`WriteHold::hold`] is in effect.
pub(crate) struct HeldWrites<T>(Arc<Mutex<Shared<T>>>);

/// The connection task's side: hold the writes, then send them.
pub(crate) struct WriteHold<T>(Arc<Mutex<Shared<T>>>);

struct Shared<T> {
    io: T,
    held: HeldBytes,
    holding: bool,
}

/// Reply bytes waiting to be sent. An UnWrapKey reply holds a layer key, so no copy is left
/// behind: growing moves them into a new buffer and wipes the old one, and a buffer is wiped
/// whole (capacity included) when it is freed.
#[derive(Default)]
struct HeldBytes(Zeroizing<Vec<u8>>);

impl HeldBytes {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.capacity()
    }

    fn push(&mut self, data: &[u8]) {
        let needed = self.0.len() + data.len();
        if needed > self.0.capacity() {
            // Room for a few replies at first, rather than growing by doubling from the first.
            let capacity = needed.max(2 * self.0.capacity()).max(FIRST_RESERVE);
            let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
            grown.extend_from_slice(&self.0);
            self.0 = grown;
        }
        self.0.extend_from_slice(data);
    }

    /// Drops the first `sent` bytes; what they leave behind in the capacity is wiped on free.
    fn consume(&mut self, sent: usize) {
        self.0.drain(..sent);
    }

    fn free(&mut self) {
        self.0 = Zeroizing::default();
    }
}

/// `io`, split into the side the protocol reads and writes and the side that holds its writes.
pub(crate) fn held_writes<T>(io: T) -> (HeldWrites<T>, WriteHold<T>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        held: HeldBytes::default(),
        holding: false,
    }));
    (HeldWrites(Arc::clone(&shared)), WriteHold(shared))
}

/// Both sides run in the connection's one task, one at a time: the lock is never contended,
/// and a panic while it is held (in the I/O itself) leaves nothing half-done that matters.
fn lock<T>(shared: &Mutex<Shared<T>>) -> MutexGuard<'_, Shared<T>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: AsyncWrite + Unpin> Shared<T> {
    /// Writes out what is held.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held.0))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.consume(written);
        }
        // A batch past HOLD_LIMIT refills the buffer rather than freeing and growing it again;
        // between batches a connection keeps none.
        if !self.holding {
            self.held.free();
        }
        Poll::Ready(Ok(()))
    }

    fn may_hold(&self, len: usize) -> bool {
        self.holding && self.held.len() + len <= HOLD_LIMIT
    }
}

impl<T: AsyncWrite + Unpin> WriteHold<T> {
    /// From now on, writes are kept here instead of being sent.
    pub(crate) fn hold(&self) {
        lock(&self.0).holding = true;
    }

    /// Stops holding and sends what was held, flushing the stream beneath (h2's own flushes
    /// were answered while holding; a TLS stream would otherwise keep the records it made). If
    /// the socket cannot take it all now, the rest goes first when it can: this task is woken
    /// then, and every later write waits for it.
    pub(crate) fn release(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        shared.holding = false;
        ready!(shared.poll_send_held(cx))?;
        Pin::new(&mut shared.io).poll_flush(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeldWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeldWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        if shared.may_hold(data.len()) {
            shared.held.push(data);
            return Poll::Ready(Ok(data.len()));
        }
        ready!(shared.poll_send_held(cx))?;
        Pin::new(&mut shared.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.0);
        let len = slices.iter().map(|s| s.len()).sum();
        if shared.may_hold(len) {
            for slice in slices {
                shared.held.push(slice);
            }
            return Poll::Ready(Ok(len));
        }
        ready!(shared.poll_send_held(cx))?;
        Pin::new(&mut shared.io).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.0).io.is_write_vectored()
    }

    /// While holding, a flush is complete once the bytes are held: the hold's owner sends them
    /// when it releases, in the same poll of the connection's task.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        if shared.holding {
            return Poll::Ready(Ok(()));
        }
        ready!(shared.poll_send_held(cx))?;
        Pin::new(&mut shared.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.0);
        ready!(shared.poll_send_held(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// Records each write it is given; always ready.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(data.to_vec());
            Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn recorded(hold: &WriteHold<Recorder>) -> (Vec<Vec<u8>>, usize) {
        let shared = lock(&hold.0);
        (shared.io.writes.clone(), shared.io.flushes)
    }

    #[tokio::test]
    async fn held_writes_leave_as_one_write_in_order_at_release() {
        let (mut io, hold) = held_writes(Recorder::default());
        hold.hold();
        for part in [&b"one "[..], b"two ", b"three"] {
            io.write_all(part).await.unwrap();
            io.flush().await.unwrap();
        }
        assert_eq!(recorded(&hold), (vec![], 0), "nothing may leave while held");
        poll_fn(|cx| hold.release(cx)).await.unwrap();
        assert_eq!(recorded(&hold).0, vec![b"one two three".to_vec()]);
    }

    #[tokio::test]
    async fn writes_pass_through_when_not_held() {
        let (mut io, hold) = held_writes(Recorder::default());
        io.write_all(b"a").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"b").await.unwrap();
        assert_eq!(recorded(&hold), (vec![b"a".to_vec(), b"b".to_vec()], 1));
    }

    #[tokio::test]
    async fn a_write_past_the_limit_sends_what_is_held_first() {
        let (mut io, hold) = held_writes(Recorder::default());
        hold.hold();
        let big = vec![7u8; HOLD_LIMIT];
        io.write_all(b"first").await.unwrap();
        io.write_all(&big).await.unwrap();
        assert_eq!(recorded(&hold).0, vec![b"first".to_vec(), big]);
    }

    /// Growing past the first reservation, twice over, keeps every byte in order.
    #[tokio::test]
    async fn a_growing_batch_keeps_its_bytes_in_order() {
        let (mut io, hold) = held_writes(Recorder::default());
        hold.hold();
        let parts = [
            vec![1u8; FIRST_RESERVE - 1],
            vec![2u8; 10],
            vec![3u8; 3 * FIRST_RESERVE],
        ];
        for part in &parts {
            io.write_all(part).await.unwrap();
        }
        poll_fn(|cx| hold.release(cx)).await.unwrap();
        assert_eq!(recorded(&hold).0, vec![parts.concat()]);
    }

    /// A batch past the limit refills the one buffer; after the batch none is kept.
    #[tokio::test]
    async fn a_batch_keeps_its_buffer_and_an_idle_connection_none() {
        let (mut io, hold) = held_writes(Recorder::default());
        let capacity = || lock(&hold.0).held.capacity();
        hold.hold();
        io.write_all(&vec![1u8; HOLD_LIMIT - 1]).await.unwrap();
        let grown = capacity();
        io.write_all(b"past the limit").await.unwrap();
        assert_eq!(capacity(), grown, "the buffer was freed within the batch");
        poll_fn(|cx| hold.release(cx)).await.unwrap();
        assert_eq!(capacity(), 0, "an idle connection keeps its buffer");
        io.write_all(b"unheld").await.unwrap();
        assert_eq!(capacity(), 0);
    }

    #[tokio::test]
    async fn what_a_full_socket_cannot_take_goes_first_when_it_can() {
        let (socket, mut peer) = tokio::io::duplex(8);
        let (mut io, hold) = held_writes(socket);
        hold.hold();
        io.write_all(b"held: sixteen by").await.unwrap();
        assert!(
            poll_fn(|cx| Poll::Ready(hold.release(cx)))
                .await
                .is_pending(),
            "an 8-byte pipe took 16 bytes"
        );
        let (mut io, reader) = (
            tokio::spawn(async move {
                io.write_all(b"; later").await.unwrap();
                io.flush().await.unwrap();
                io
            }),
            tokio::spawn(async move {
                let mut got = vec![0u8; 23];
                tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
                    .await
                    .unwrap();
                got
            }),
        );
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the held bytes were never sent")
            .unwrap();
        assert_eq!(got, b"held: sixteen by; later");
        (&mut io).await.unwrap();
        assert_eq!(
            lock(&hold.0).held.capacity(),
            0,
            "the buffer outlived the bytes it held"
        );
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held() {
        let (mut io, hold) = held_writes(Recorder::default());
        hold.hold();
        io.write_all(b"last words").await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(recorded(&hold).0, vec![b"last words".to_vec()]);
    }
}
