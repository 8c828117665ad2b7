//! Serving connections with bounds that hold whatever clients do: a connection cap per listener,
//! idle and header-read timeouts, HTTP/2 keep-alive and stream limits, and a request-body stage
//! that runs before a concurrency permit is taken.
//!
//! - **Connections**: at most `max_connections` per listener, and every listener of the process
//!   (gRPC TCP and Unix, REST, metrics, ttrpc) draws from one [`ConnectionBudget`]: half of the
//!   descriptor limit, however many listeners are configured. Past either cap a connection with
//!   no request in flight is asked to close gracefully to make room: one that never completed a
//!   request first (a client that connects and sends nothing), then the one idle longest; when
//!   every connection is busy, the new one is closed at once. So idle or slow clients cannot keep
//!   a health probe out, and busy ones cannot push the process past its descriptor limit.
//! - **Accept errors** ([`AcceptPause`]): at the descriptor limit accepting pauses instead of
//!   spinning, and the error is logged once per interval with a count.
//! - **Idle**: a connection with no request in flight for `idle_timeout` is closed gracefully
//!   (HTTP/2 GOAWAY: streams in progress still finish). That includes a connection that never
//!   completes its preface or first request line.
//! - **HTTP/1** headers must arrive within `header_read_timeout` (slowloris).
//! - **HTTP/2**: `max_concurrent_streams` per connection; a PING every `keepalive_interval`, and
//!   a peer that does not answer within `keepalive_timeout` is dropped. A connection's streams
//!   run inside the connection's own task (`ConnectionStreams`): side by side, but on one
//!   worker at a time, so one client cannot occupy every core.
//! - **Requests** ([`RequestStage`]): the call's deadline covers everything; within it the body
//!   is read (bounded in size and time) *before* a concurrency permit is taken, so streams that
//!   send headers and never a body cannot starve the calls that do. Health and reflection take no
//!   permit: they are cheap, and health must answer while the server is busy. One tower layer
//!   with one boxed future per call: it runs on every request.

use super::held_writes::{held_writes, WriteHold};
use futures_util::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore};

/// Connection-level limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// How long a connection asked to close (idle, evicted, shutting down) may take to finish
    /// before it is dropped. A peer that stops reading would otherwise hold it, and its
    /// descriptor, forever: its GOAWAY never leaves, and a closing connection is no longer
    /// counted against `max_connections`.
    pub closing_grace: Duration,
    /// What every listener's connections are drawn from.
    pub budget: Arc<ConnectionBudget>,
}

impl ConnectionLimits {
    /// gRPC listeners. 512 connections leave room under the common 1024-descriptor limit for a
    /// REST listener, upstream HTTPS and files; local clients (containerd, kubelet probes, CDH)
    /// use a handful. Two minutes idle outlives any client's pause between calls. 100 streams
    /// per connection is the HTTP/2 recommended minimum, and far above what a client needs.
    pub fn grpc() -> Self {
        ConnectionLimits {
            max_connections: 512,
            idle_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            // Long enough for any call to end on its own deadline.
            closing_grace: super::RPC_DEADLINE,
            budget: ConnectionBudget::process(),
        }
    }

    /// REST and metrics listeners: HTTP/1 clients open a connection per call or keep one alive
    /// briefly.
    pub fn http() -> Self {
        ConnectionLimits {
            max_connections: 128,
            idle_timeout: Duration::from_secs(30),
            ..Self::grpc()
        }
    }
}

/// The connections of every listener of the process, held to one budget: half of the
/// descriptor limit (`RLIMIT_NOFILE`), so that however many listeners are configured the other
/// half stays for upstream connections, files and each connection's closing moments.
pub struct ConnectionBudget {
    limit: usize,
    started: Instant,
    conns: Mutex<Vec<Arc<Conn>>>,
    listeners: AtomicUsize,
}

impl std::fmt::Debug for ConnectionBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionBudget")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The budget where the descriptor limit cannot be read (or is unlimited).
const UNKNOWN_LIMIT_BUDGET: usize = 512;

/// Which of a listener's connections may be closed to make room for a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Any connection with no request in flight (HTTP clients reconnect when told to go).
    Idle,
    /// Only connections that never completed a request: a ttrpc client may keep the connection
    /// of its first call for its lifetime and not reconnect (CDH's hub and its agent client).
    NeverCompleted,
}

/// One connection's state, as the budget sees it.
struct Conn {
    listener: usize,
    eviction: Eviction,
    in_flight: AtomicUsize,
    /// Milliseconds since the budget was made, at the last request's start or end.
    last_active_ms: AtomicU64,
    /// A whole request has arrived on it (HTTP: a call finished).
    completed: AtomicBool,
    closing: AtomicBool,
    close: Notify,
    /// Woken with `close`, for a connection whose reads are its only task (ttrpc).
    close_waker: futures_util::task::AtomicWaker,
}

impl Conn {
    /// Asks the connection to close: it no longer counts against any cap.
    fn evict(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
        self.close_waker.wake();
    }

    fn evictable(&self) -> bool {
        !self.closing.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && (self.eviction == Eviction::Idle || !self.completed.load(Ordering::Relaxed))
    }
}

impl ConnectionBudget {
    pub fn new(limit: usize) -> Self {
        ConnectionBudget {
            limit: limit.max(1),
            started: Instant::now(),
            conns: Mutex::new(Vec::new()),
            listeners: AtomicUsize::new(0),
        }
    }

    /// The process's budget, shared by every listener: half of `RLIMIT_NOFILE` as it was at
    /// the first call.
    pub fn process() -> Arc<Self> {
        static PROCESS: OnceLock<Arc<ConnectionBudget>> = OnceLock::new();
        Arc::clone(PROCESS.get_or_init(|| {
            let limit = descriptor_limit().map_or(UNKNOWN_LIMIT_BUDGET, |n| n / 2);
            Arc::new(ConnectionBudget::new(limit))
        }))
    }

    /// How many connections every listener together may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections open and not asked to close, over every listener.
    pub fn open(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .iter()
            .filter(|c| !c.closing.load(Ordering::Relaxed))
            .count()
    }

    fn now_ms(&self) -> u64 {
        millis_since(self.started)
    }

    /// A new listener's share of the budget: at most `cap` connections of its own.
    pub fn listener(self: &Arc<Self>, cap: usize, eviction: Eviction) -> Admission {
        Admission {
            budget: Arc::clone(self),
            id: self.listeners.fetch_add(1, Ordering::Relaxed),
            cap: cap.max(1),
            eviction,
        }
    }
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One listener's admission of new connections into the [`ConnectionBudget`].
pub struct Admission {
    budget: Arc<ConnectionBudget>,
    id: usize,
    cap: usize,
    eviction: Eviction,
}

impl Admission {
    /// This listener's own cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Registers a new connection. Past this listener's cap a connection of its own makes room;
    /// past the budget, one of any listener's. The victim is one that never completed a
    /// request if there is one, else the one idle longest; `None` when no connection may go.
    pub fn admit(&self) -> Option<Admitted> {
        let budget = &self.budget;
        let mut conns = budget.conns.lock().unwrap_or_else(|e| e.into_inner());
        let (mut mine, mut all) = (0usize, 0usize);
        for c in conns.iter().filter(|c| !c.closing.load(Ordering::Relaxed)) {
            all += 1;
            mine += usize::from(c.listener == self.id);
        }
        let own_cap_reached = mine >= self.cap;
        if own_cap_reached || all >= budget.limit {
            let victim = conns
                .iter()
                .filter(|c| c.evictable() && (!own_cap_reached || c.listener == self.id))
                .min_by_key(|c| {
                    (
                        c.completed.load(Ordering::Relaxed),
                        c.last_active_ms.load(Ordering::Relaxed),
                    )
                })?;
            victim.evict();
        }
        let conn = Arc::new(Conn {
            listener: self.id,
            eviction: self.eviction,
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(budget.now_ms()),
            completed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            close_waker: futures_util::task::AtomicWaker::new(),
        });
        conns.push(Arc::clone(&conn));
        Some(Admitted {
            conn,
            budget: Arc::clone(budget),
        })
    }
}

/// A connection's place in the budget, given back when dropped.
pub struct Admitted {
    conn: Arc<Conn>,
    budget: Arc<ConnectionBudget>,
}

impl Admitted {
    /// A whole request has arrived: under [`Eviction::NeverCompleted`] the connection is now
    /// never evicted.
    pub fn complete(&self) {
        self.conn.completed.store(true, Ordering::Relaxed);
    }

    /// Ready once the connection has been asked to close to make room for another.
    pub fn poll_evicted(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.conn.close_waker.register(cx.waker());
        if self.conn.closing.load(Ordering::Relaxed) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut conns = self.budget.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !Arc::ptr_eq(c, &self.conn));
    }
}

/// What a failed accept costs. An error of the one connection (reset or aborted before it was
/// accepted) is skipped at once. The others (EMFILE, ENFILE, ENOBUFS, ENOMEM) would fail again
/// at once: accepting pauses, 100 ms doubling up to 1 s, until an accept succeeds, and the
/// error is logged once per interval with a count, never per attempt.
#[derive(Debug, Default)]
pub struct AcceptPause {
    next: Option<Duration>,
}

impl AcceptPause {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    pub async fn after(&mut self, error: &std::io::Error) {
        let Some(pause) = self.pause_for(error) else {
            return;
        };
        crate::warn_throttled!(
            error = %error,
            ?pause,
            "accepting connections failed (at the descriptor limit?): pausing; open connections are still served"
        );
        tokio::time::sleep(pause).await;
    }

    /// How long to pause after `error`, if at all.
    fn pause_for(&mut self, error: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind;
        if matches!(
            error.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::Interrupted
                | ErrorKind::WouldBlock
        ) {
            return None;
        }
        let pause = self.next.unwrap_or(Self::FIRST);
        self.next = Some(pause.saturating_mul(2).min(Self::MAX));
        Some(pause)
    }

    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// What else a request's connection task is doing, as a request extension: a connection's
/// streams share its task ([`WithStreams`]), so a handler that holds the task (a decrypt in
/// place) holds them all, and the replies they queued for the task to write.
#[derive(Clone)]
pub struct ConnectionCalls(Arc<TaskLoad>);

/// Kept up to date by [`WithStreams`] while it polls the streams.
#[derive(Default)]
struct TaskLoad {
    /// Streams not yet finished, the one asking included.
    streams: AtomicUsize,
    /// Finished streams whose replies wait in h2 for the task to write them.
    replies_waiting: AtomicUsize,
}

impl ConnectionCalls {
    /// Whether the asking call is the task's only work: no other stream of the connection
    /// under way, and no reply waiting to be written. HTTP/1 serves one call at a time.
    pub fn alone(&self) -> bool {
        self.0.streams.load(Ordering::Acquire) <= 1
            && self.0.replies_waiting.load(Ordering::Acquire) == 0
    }
}

/// Marks a request in flight on its connection until dropped.
struct InFlight {
    conn: Arc<Conn>,
    /// The budget's clock.
    started: Instant,
}

impl InFlight {
    fn new(conn: &Arc<Conn>, started: Instant) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        conn.last_active_ms
            .store(millis_since(started), Ordering::Relaxed);
        InFlight {
            conn: Arc::clone(conn),
            started,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .last_active_ms
            .store(millis_since(self.started), Ordering::Relaxed);
        self.conn.completed.store(true, Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Something that accepts connections.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (tcp, _) = tokio::net::TcpListener::accept(self).await?;
        // Without TCP_NODELAY, small replies wait for the peer's delayed ACK: ~40 ms a call.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

impl Accept for tokio::net::UnixListener {
    // Unix-socket clients send the socket path as `:authority`: accept it (see the module).
    type Io = super::any_authority::AnyAuthority<tokio::net::UnixStream>;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok(super::any_authority::AnyAuthority::new(stream))
    }
}

/// Serves `router` on every connection `listener` accepts until `shutdown` resolves, then asks
/// every connection to finish gracefully and waits for them.
pub async fn serve<L: Accept>(
    mut listener: L,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admission = limits
        .budget
        .listener(limits.max_connections, Eviction::Idle);
    let clock = limits.budget.started;
    let mut pause = AcceptPause::default();
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let io = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(io) => {
                    pause.reset();
                    io
                }
                Err(e) => {
                    // Existing connections keep being served meanwhile.
                    pause.after(&e).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(admitted) = admission.admit() else {
            crate::warn_throttled!(
                max = admission.cap(),
                budget = limits.budget.limit(),
                "connection refused: every connection is busy"
            );
            drop(io);
            continue;
        };
        let conn = Arc::clone(&admitted.conn);
        let router = router.clone();
        let limits = limits.clone();
        let mut stopped = stop.subscribe();
        let idle = limits.idle_timeout;
        tasks.spawn(async move {
            let load = Arc::new(TaskLoad::default());
            let service = {
                let (conn, load) = (Arc::clone(&conn), Arc::clone(&load));
                hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    let in_flight = InFlight::new(&conn, clock);
                    request.extensions_mut().insert(ConnectionCalls(Arc::clone(&load)));
                    let call = tower::ServiceExt::oneshot(
                        router.clone(),
                        request.map(axum::body::Body::new),
                    );
                    async move {
                        let response = call.await;
                        drop(in_flight);
                        response
                    }
                })
            };
            let (executor, started) = tokio::sync::mpsc::unbounded_channel();
            let builder = connection_builder(&limits, ConnectionStreams(executor));
            let (io, writes) = held_writes(io);
            let mut connection = WithStreams::new(
                builder.serve_connection(hyper_util::rt::TokioIo::new(io), service),
                writes,
                started,
                load,
            );
            let mut closing = false;
            let closing_deadline = tokio::time::sleep(limits.closing_grace);
            tokio::pin!(closing_deadline);
            loop {
                let idle_check = tokio::time::sleep(idle / 4);
                let was_closing = closing;
                tokio::select! {
                    () = &mut connection => break,
                    () = &mut closing_deadline, if closing => {
                        crate::warn_throttled!(
                            grace = ?limits.closing_grace,
                            "connection dropped: it did not finish closing in time (a peer that stops reading)"
                        );
                        break;
                    }
                    () = conn.close.notified(), if !closing => {
                        closing = true;
                        connection.connection.as_mut().graceful_shutdown();
                    }
                    _ = stopped.wait_for(|s| *s), if !closing => {
                        closing = true;
                        connection.connection.as_mut().graceful_shutdown();
                    }
                    () = idle_check, if !closing => {
                        let quiet = millis_since(clock).saturating_sub(conn.last_active_ms.load(Ordering::Relaxed));
                        if conn.in_flight.load(Ordering::Relaxed) == 0
                            && u128::from(quiet) >= idle.as_millis()
                        {
                            closing = true;
                            conn.closing.store(true, Ordering::Relaxed);
                            connection.connection.as_mut().graceful_shutdown();
                        }
                    }
                }
                if closing && !was_closing {
                    closing_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + limits.closing_grace);
                }
            }
            drop(admitted);
        });
    }
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The soft limit on open descriptors (`RLIMIT_NOFILE`), from `/proc/self/limits`.
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The protocol builder of one connection, whose HTTP/2 streams run on `streams`.
fn connection_builder(
    limits: &ConnectionLimits,
    streams: ConnectionStreams,
) -> hyper_util::server::conn::auto::Builder<ConnectionStreams> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(streams);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
}

type StreamFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where hyper starts a connection's HTTP/2 streams: in the connection's own task
/// ([`WithStreams`]), not one tokio task each. With a task per stream, tokio wakes the other
/// worker to steal stream tasks, and both workers then contend for h2's per-connection lock:
/// that doubled the context switches and multiplied the futex calls of an empty RPC by seven
/// (BENCHMARKS.md "Where a call's CPU goes"). Work that is heavy (decrypts, reports) leaves the
/// task for the blocking pool, unless nothing else waits on the task ([`ConnectionCalls`]);
/// separate connections still run on separate workers.
#[derive(Clone)]
struct ConnectionStreams(tokio::sync::mpsc::UnboundedSender<StreamFuture>);

impl<F> hyper::rt::Executor<F> for ConnectionStreams
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        use futures_util::FutureExt;
        // A panicking handler ends its stream only, as it would in a task of its own.
        let stream = Box::pin(
            std::panic::AssertUnwindSafe(stream)
                .catch_unwind()
                .map(|_| ()),
        );
        // Only the connection calls this, and its task holds the receiver while it runs.
        if let Err(orphan) = self.0.send(stream) {
            tokio::spawn(orphan.0);
        }
    }
}

/// A connection and the streams it started, polled together until the connection has ended
/// and its streams have finished.
struct WithStreams<C, Io> {
    connection: std::pin::Pin<Box<C>>,
    writes: WriteHold<Io>,
    /// Streams finished since the connection was last polled: their replies wait in h2.
    replies_queued: usize,
    connection_done: bool,
    started: tokio::sync::mpsc::UnboundedReceiver<StreamFuture>,
    streams: futures_util::stream::FuturesUnordered<StreamFuture>,
    /// The streams and waiting replies, for the handlers ([`ConnectionCalls`]).
    load: Arc<TaskLoad>,
    waker: Arc<PollWaker>,
}

impl<C, Io> WithStreams<C, Io> {
    fn new(
        connection: C,
        writes: WriteHold<Io>,
        started: tokio::sync::mpsc::UnboundedReceiver<StreamFuture>,
        load: Arc<TaskLoad>,
    ) -> Self {
        WithStreams {
            connection: Box::pin(connection),
            writes,
            replies_queued: 0,
            connection_done: false,
            started,
            streams: futures_util::stream::FuturesUnordered::new(),
            load,
            waker: Arc::new(PollWaker {
                state: std::sync::atomic::AtomicU8::new(WAKER_IDLE),
                task: futures_util::task::AtomicWaker::new(),
            }),
        }
    }

    /// Tells the streams polled next what else the task has (see [`ConnectionCalls`]).
    fn publish_load(&self) {
        self.load
            .streams
            .store(self.streams.len(), Ordering::Release);
        self.load
            .replies_waiting
            .store(self.replies_queued, Ordering::Release);
    }
}

/// The waker the connection and its streams are polled with. h2, the stream channel and the
/// streams wake the task while it is polling them (a reply queued, a stream started); passed
/// on, such a wake makes tokio run the task again at once as a yield, and a yield wakes the
/// other worker to steal it. Noted instead, it is one more round of the poll under way.
struct PollWaker {
    state: std::sync::atomic::AtomicU8,
    task: futures_util::task::AtomicWaker,
}

const WAKER_IDLE: u8 = 0;
const WAKER_POLLING: u8 = 1;
const WAKER_WOKEN: u8 = 2;

impl futures_util::task::ArcWake for PollWaker {
    fn wake_by_ref(arc: &Arc<Self>) {
        loop {
            match arc.state.load(Ordering::Acquire) {
                WAKER_POLLING => {
                    if arc
                        .state
                        .compare_exchange(
                            WAKER_POLLING,
                            WAKER_WOKEN,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return;
                    }
                }
                WAKER_WOKEN => return,
                _ => {
                    arc.task.wake();
                    return;
                }
            }
        }
    }
}

impl<C: Future, Io: tokio::io::AsyncWrite + Unpin> Future for WithStreams<C, Io> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        task: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = &mut *self;
        this.waker.task.register(task.waker());
        this.waker.state.store(WAKER_POLLING, Ordering::Release);
        let waker = futures_util::task::waker(Arc::clone(&this.waker));
        let cx = &mut std::task::Context::from_waker(&waker);
        // A stream that finished has queued its reply: poll the connection again to write it,
        // rather than waking this task, which tokio would offer to the other worker. A few
        // rounds at most: a connection that keeps producing work then yields to other tasks.
        for _ in 0..4 {
            if !this.connection_done {
                // Several replies are queued: send them as one write (see `held_writes`). A
                // failed send is h2's to see, on its next write; one that has to wait for the
                // socket wakes this task.
                let batch = std::mem::take(&mut this.replies_queued) > 1;
                if batch {
                    this.writes.hold();
                }
                this.connection_done = this.connection.as_mut().poll(cx).is_ready();
                if batch {
                    let _ = this.writes.release(cx);
                }
            }
            let mut progressed = false;
            while let Poll::Ready(Some(stream)) = this.started.poll_recv(cx) {
                this.streams.push(stream);
                progressed = true;
            }
            this.publish_load();
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {
                progressed = true;
                this.replies_queued += 1;
                this.publish_load();
            }
            if this.connection_done && this.streams.is_empty() {
                // h2's close path sends what is held (a shutdown); an ending on an error or
                // the peer's EOF may not: one last try, for a peer that still reads.
                let _ = this.writes.release(cx);
                this.waker.state.store(WAKER_IDLE, Ordering::Release);
                return Poll::Ready(());
            }
            // Done unless something woke the task meanwhile: then it is one more round.
            if !progressed
                && this
                    .waker
                    .state
                    .compare_exchange(
                        WAKER_POLLING,
                        WAKER_IDLE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            {
                return Poll::Pending;
            }
            this.waker.state.store(WAKER_POLLING, Ordering::Release);
        }
        this.waker.state.store(WAKER_IDLE, Ordering::Release);
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The request stage of [`serve`]'s bounds, as a tower layer: the deadline, then the body
/// (bounded in size and time), then a concurrency permit.
#[derive(Debug, Clone)]
pub struct RequestStage(Arc<RequestLimit>);

#[derive(Debug)]
struct RequestLimit {
    permits: Semaphore,
    max_body_bytes: usize,
    body_timeout: Duration,
    protocol: Protocol,
}

/// How a refusal is written, and which deadline applies: gRPC's is the caller's `grpc-timeout`
/// within [`RPC_DEADLINE`], REST's is [`RPC_DEADLINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Rest,
}

/// A request body that did not arrive whole.
enum BodyError {
    TooLarge,
    Slow,
    Broken,
}

impl RequestStage {
    pub fn new(
        concurrency: usize,
        max_body_bytes: usize,
        body_timeout: Duration,
        protocol: Protocol,
    ) -> Self {
        RequestStage(Arc::new(RequestLimit {
            permits: Semaphore::new(concurrency),
            max_body_bytes,
            body_timeout,
            protocol,
        }))
    }
}

impl<S> tower::Layer<S> for RequestStage {
    type Service = Staged<S>;

    fn layer(&self, inner: S) -> Staged<S> {
        Staged {
            inner,
            limit: Arc::clone(&self.0),
        }
    }
}

/// A service behind the [`RequestStage`].
#[derive(Debug, Clone)]
pub struct Staged<S> {
    inner: S,
    limit: Arc<RequestLimit>,
}

impl<S> tower::Service<axum::extract::Request> for Staged<S>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        // The service made ready is the one called; its clone waits for the next call.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let limit = Arc::clone(&self.limit);
        Box::pin(async move { Ok(limit.run(inner, request).await) })
    }
}

impl RequestLimit {
    async fn run<S>(&self, inner: S, request: axum::extract::Request) -> axum::response::Response
    where
        S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
    {
        let deadline = match self.protocol {
            Protocol::Grpc => request
                .headers()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(super::parse_grpc_timeout)
                .map_or(super::RPC_DEADLINE, |d| d.min(super::RPC_DEADLINE)),
            Protocol::Rest => super::RPC_DEADLINE,
        };
        // Upstream retries inside the call stop at the same deadline.
        let call = crate::http::with_deadline(
            tokio::time::Instant::now() + deadline,
            self.admit(inner, request),
        );
        match tokio::time::timeout(deadline, call).await {
            Ok(response) => response,
            Err(_) => self.late(deadline),
        }
    }

    /// Body, then permit, then the call.
    async fn admit<S>(
        &self,
        mut inner: S,
        request: axum::extract::Request,
    ) -> axum::response::Response
    where
        S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
    {
        if self.protocol == Protocol::Grpc && exempt(request.uri().path()) {
            return inner
                .call(request)
                .await
                .unwrap_or_else(|never| match never {});
        }
        let (parts, body) = request.into_parts();
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(e) => return self.refuse(e),
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return self.refuse(BodyError::Broken);
        };
        let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(body));
        inner
            .call(request)
            .await
            .unwrap_or_else(|never| match never {})
    }

    /// The reply of a call that outlived its deadline, whatever it was waiting for.
    fn late(&self, deadline: Duration) -> axum::response::Response {
        match self.protocol {
            Protocol::Grpc => tonic::Status::deadline_exceeded(format!(
                "the call did not finish within its deadline ({deadline:?})"
            ))
            .into_http::<axum::body::Body>(),
            Protocol::Rest => axum::response::IntoResponse::into_response((
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({
                    "error": format!("the call did not finish within {deadline:?}")
                })),
            )),
        }
    }

    async fn read_body(&self, body: axum::body::Body) -> Result<axum::body::Bytes, BodyError> {
        // Request bodies carry access tokens and layer keys: the copy made here is zeroized
        // once the call is done with it.
        let hint = usize::try_from(axum::body::HttpBody::size_hint(&body).lower())
            .unwrap_or(usize::MAX)
            .min(self.max_body_bytes);
        let read = async {
            let mut stream = body.into_data_stream();
            let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(hint));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|_| BodyError::Broken)?;
                if buf.len().saturating_add(chunk.len()) > self.max_body_bytes {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(super::secret_json::bytes(buf))
        };
        tokio::time::timeout(self.body_timeout, read)
            .await
            .unwrap_or(Err(BodyError::Slow))
    }

    fn refuse(&self, error: BodyError) -> axum::response::Response {
        let (code, http, message) = match error {
            BodyError::TooLarge => (
                tonic::Code::OutOfRange,
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request is larger than {} bytes", self.max_body_bytes),
            ),
            BodyError::Slow => (
                tonic::Code::DeadlineExceeded,
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    self.body_timeout
                ),
            ),
            BodyError::Broken => (
                tonic::Code::Cancelled,
                axum::http::StatusCode::BAD_REQUEST,
                "the request body ended abnormally".to_owned(),
            ),
        };
        match self.protocol {
            Protocol::Grpc => tonic::Status::new(code, message).into_http::<axum::body::Body>(),
            Protocol::Rest => axum::response::IntoResponse::into_response((
                http,
                axum::Json(serde_json::json!({ "error": message })),
            )),
        }
    }
}

/// Paths that skip the request stage: cheap, and health must answer while the server is busy;
/// reflection is a bidirectional stream whose body never ends while the client is connected.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A listener serving an empty router with `idle` as its idle timeout, until the sender
    /// fires.
    async fn start(
        idle: Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        start_with(axum::Router::new(), idle).await
    }

    /// [`start`] serving `router`.
    async fn start_with(
        router: axum::Router,
        idle: Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            idle_timeout: idle,
            ..ConnectionLimits::grpc()
        };
        let (stop, server) = start_on(listener, router, limits);
        (addr, stop, server)
    }

    /// `serve` on `listener` until the sender is used or dropped.
    fn start_on(
        listener: impl Accept,
        router: axum::Router,
        limits: ConnectionLimits,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, async move {
            let _ = stopped.await;
        }));
        (stop, server)
    }

    /// Whether the server closes `stream` within 10 s (EOF or reset; a read timeout is not).
    fn closed_by_peer(mut stream: std::net::TcpStream) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }

    /// Whether `admitted` has been asked to close.
    fn evicted(admitted: &Admitted) -> bool {
        admitted.conn.closing.load(Ordering::Relaxed)
    }

    #[test]
    fn past_its_cap_a_listener_evicts_its_own_never_completed_connection_first() {
        let budget = Arc::new(ConnectionBudget::new(100));
        let grpc = budget.listener(3, Eviction::Idle);
        let other = budget.listener(3, Eviction::Idle);
        let theirs = other.admit().unwrap();
        let oldest = grpc.admit().unwrap();
        // The oldest has completed a call; the younger one never sent anything.
        drop(InFlight::new(&oldest.conn, budget.started));
        let silent = grpc.admit().unwrap();
        let busy = grpc.admit().unwrap();
        let _call = InFlight::new(&busy.conn, budget.started);
        let new = grpc.admit().unwrap();
        assert!(evicted(&silent), "the never-completed connection stayed");
        assert!(!evicted(&oldest) && !evicted(&busy) && !evicted(&theirs));
        // Next the one idle longest; a busy one never.
        drop(InFlight::new(&new.conn, budget.started));
        let _newer = grpc.admit().unwrap();
        assert!(evicted(&oldest));
        assert!(!evicted(&busy) && !evicted(&theirs));
        assert_eq!(budget.open(), 4);
    }

    #[test]
    fn the_budget_is_shared_by_every_listener() {
        let budget = Arc::new(ConnectionBudget::new(4));
        let ttrpc = budget.listener(128, Eviction::NeverCompleted);
        let grpc = budget.listener(512, Eviction::Idle);
        let cdh = ttrpc.admit().unwrap();
        cdh.complete();
        let idle: Vec<_> = (0..3).map(|_| ttrpc.admit().unwrap()).collect();
        // A gRPC client (a health probe) gets in past the budget: another listener's
        // never-completed connection makes room.
        let probe = grpc.admit().unwrap();
        assert!(evicted(&idle[0]), "no room was made for the probe");
        assert!(
            !evicted(&cdh),
            "the connection CDH keeps for its life was evicted"
        );
        assert_eq!(budget.open(), 4);
        // With every other connection busy, completed ttrpc ones are kept and the new one is
        // refused.
        let _calls: Vec<_> = idle[1..]
            .iter()
            .chain(std::iter::once(&probe))
            .map(|a| InFlight::new(&a.conn, budget.started))
            .collect();
        assert!(grpc.admit().is_none());
        assert!(!evicted(&cdh));
        // A closed connection gives its place back.
        drop(idle);
        assert_eq!(budget.open(), 2);
        assert!(grpc.admit().is_some());
    }

    #[test]
    fn the_process_budget_is_half_the_descriptor_limit() {
        let budget = ConnectionBudget::process();
        assert!(Arc::ptr_eq(&budget, &ConnectionBudget::process()));
        if let Some(n) = descriptor_limit() {
            assert_eq!(budget.limit(), (n / 2).max(1));
        }
    }

    #[test]
    fn accept_errors_pause_growing_and_connection_errors_do_not() {
        let mut pause = AcceptPause::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<_> = (0..6)
            .map(|_| pause.pause_for(&emfile).unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(pause.pause_for(&aborted), None);
        pause.reset();
        assert_eq!(pause.pause_for(&emfile), Some(Duration::from_millis(100)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_idle_for_the_timeout_is_closed() {
        let (addr, _stop, _server) = start(Duration::from_millis(400)).await;
        let started = Instant::now();
        let idle = std::net::TcpStream::connect(addr).unwrap();
        let closed = tokio::task::spawn_blocking(move || closed_by_peer(idle))
            .await
            .unwrap();
        assert!(closed, "the idle connection was not closed");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(400),
            "closed after {waited:?}, before the idle timeout"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_closes_open_connections_and_returns() {
        let (addr, stop, server) = start(Duration::from_secs(120)).await;
        let open = std::net::TcpStream::connect(addr).unwrap();
        // Accepted and registered before the shutdown.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let closed = tokio::task::spawn_blocking(move || closed_by_peer(open))
            .await
            .unwrap();
        assert!(closed, "the open connection was not closed at shutdown");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
    }

    /// An HTTP/2 connection to `addr`, ready for requests, and the task driving it (aborting it
    /// drops the connection).
    async fn h2_client(
        addr: std::net::SocketAddr,
    ) -> (
        h2::client::SendRequest<axum::body::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        (client.ready().await.unwrap(), connection)
    }

    /// The status of a GET of `path` sent on `client`, or the stream's error.
    async fn get(
        client: &mut h2::client::SendRequest<axum::body::Bytes>,
        path: &str,
    ) -> Result<u16, h2::Error> {
        let request = axum::http::Request::get(format!("http://localhost{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true)?;
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no response within 10 s")?;
        Ok(response.status().as_u16())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_of_one_connection_run_side_by_side() {
        // The first call waits for the second, on the same connection: it can only finish if
        // the connection's streams make progress side by side.
        let released = Arc::new(Notify::new());
        let (waiting, releasing) = (Arc::clone(&released), Arc::clone(&released));
        let router = axum::Router::new()
            .route(
                "/wait",
                axum::routing::get(move || async move { waiting.notified().await }),
            )
            .route(
                "/release",
                axum::routing::get(move || async move { releasing.notify_one() }),
            );
        let (addr, _stop, _server) = start_with(router, Duration::from_secs(120)).await;
        let (client, _connection) = h2_client(addr).await;
        let mut first = client.clone();
        let wait = tokio::spawn(async move { get(&mut first, "/wait").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(&mut client.clone(), "/release").await.unwrap(), 200);
        assert_eq!(wait.await.unwrap().unwrap(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_ends_its_stream_only() {
        let router = axum::Router::new()
            .route(
                "/panic",
                axum::routing::get(|| async {
                    if true {
                        panic!("a handler bug");
                    }
                }),
            )
            .route("/ok", axum::routing::get(|| async {}));
        let (addr, _stop, _server) = start_with(router, Duration::from_secs(120)).await;
        let (mut client, _connection) = h2_client(addr).await;
        assert!(get(&mut client, "/panic").await.is_err());
        assert_eq!(get(&mut client, "/ok").await.unwrap(), 200);
    }

    /// Notifies when dropped.
    struct DropAlarm(Arc<Notify>);

    impl Drop for DropAlarm {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_whose_client_went_away_is_dropped() {
        let dropped = Arc::new(Notify::new());
        let alarm = Arc::clone(&dropped);
        let router = axum::Router::new().route(
            "/forever",
            axum::routing::get(move || {
                let alarm = DropAlarm(Arc::clone(&alarm));
                async move {
                    let _alarm = alarm;
                    std::future::pending::<()>().await;
                }
            }),
        );
        let (addr, _stop, _server) = start_with(router, Duration::from_secs(120)).await;
        let (mut client, connection) = h2_client(addr).await;
        let request = axum::http::Request::get("http://localhost/forever")
            .body(())
            .unwrap();
        let (_response, _) = client.send_request(request, true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let early = tokio::time::timeout(Duration::from_millis(1), dropped.notified()).await;
        assert!(early.is_err(), "the call ended before its client went away");
        connection.abort();
        tokio::time::timeout(Duration::from_secs(10), dropped.notified())
            .await
            .expect("the call outlived its connection by 10 s");
    }

    /// Accepts TCP connections and counts the writes that reach their sockets.
    struct CountingListener {
        listener: tokio::net::TcpListener,
        writes: Arc<AtomicUsize>,
    }

    impl Accept for CountingListener {
        type Io = CountingIo;
        async fn accept(&mut self) -> std::io::Result<CountingIo> {
            let (tcp, _) = self.listener.accept().await?;
            tcp.set_nodelay(true)?;
            Ok(CountingIo {
                tcp,
                writes: Arc::clone(&self.writes),
            })
        }
    }

    struct CountingIo {
        tcp: tokio::net::TcpStream,
        writes: Arc<AtomicUsize>,
    }

    impl CountingIo {
        fn count<T>(
            &self,
            write: std::task::Poll<std::io::Result<T>>,
        ) -> std::task::Poll<std::io::Result<T>> {
            if let std::task::Poll::Ready(Ok(_)) = write {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            write
        }
    }

    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let write = std::pin::Pin::new(&mut self.tcp).poll_write(cx, data);
            self.count(write)
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            slices: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let write = std::pin::Pin::new(&mut self.tcp).poll_write_vectored(cx, slices);
            self.count(write)
        }

        fn is_write_vectored(&self) -> bool {
            self.tcp.is_write_vectored()
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    /// The body of a GET of `path` sent on `client`, read to its end.
    async fn get_body(
        client: &mut h2::client::SendRequest<axum::body::Bytes>,
        path: &str,
    ) -> Result<Vec<u8>, h2::Error> {
        let request = axum::http::Request::get(format!("http://localhost{path}"))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true)?;
        let mut body = response.await?.into_body();
        let mut read = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
            read.extend_from_slice(&chunk);
        }
        Ok(read)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_sees_whether_its_call_is_alone_on_its_connection() {
        let release = Arc::new(tokio::sync::Notify::new());
        let router = axum::Router::new()
            .route(
                "/alone",
                axum::routing::get(|request: axum::extract::Request| async move {
                    match request.extensions().get::<ConnectionCalls>() {
                        Some(calls) if calls.alone() => "alone",
                        Some(_) => "shared",
                        None => "unknown",
                    }
                }),
            )
            .route(
                "/held",
                axum::routing::get({
                    let release = Arc::clone(&release);
                    move || async move { release.notified().await }
                }),
            );
        let (addr, _stop, _server) = start_with(router, Duration::from_secs(120)).await;
        let (client, _connection) = h2_client(addr).await;
        let alone = || {
            let mut client = client.clone();
            async move { String::from_utf8(get_body(&mut client, "/alone").await.unwrap()).unwrap() }
        };
        assert_eq!(alone().await, "alone");
        let held = tokio::spawn({
            let mut client = client.clone();
            async move { get(&mut client, "/held").await }
        });
        // The held call is in flight once a call beside it is told so.
        tokio::time::timeout(Duration::from_secs(10), async {
            while alone().await != "shared" {}
        })
        .await
        .expect("a call beside a held one was never told it shares the connection");
        release.notify_one();
        assert_eq!(held.await.unwrap().unwrap(), 200);
        assert_eq!(alone().await, "alone");
        // Another connection's calls are not this one's.
        let held = tokio::spawn({
            let mut client = client.clone();
            async move { get(&mut client, "/held").await }
        });
        while alone().await != "shared" {}
        let (other, _other_connection) = h2_client(addr).await;
        let body = get_body(&mut other.clone(), "/alone").await.unwrap();
        assert_eq!(body, b"alone");
        release.notify_one();
        assert_eq!(held.await.unwrap().unwrap(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_that_finish_together_leave_in_one_write() {
        const CALLS: usize = 8;
        // Every call waits for all of them, so they finish in the same poll of the connection.
        // Each reply is larger than the 256 bytes up to which h2 copies a DATA frame into its
        // own write buffer.
        let together = Arc::new(tokio::sync::Barrier::new(CALLS));
        let reply = vec![b'x'; 1000];
        let router = axum::Router::new()
            .route("/warm-up", axum::routing::get(|| async {}))
            .route(
                "/together",
                axum::routing::get({
                    let reply = reply.clone();
                    move || {
                        let (together, reply) = (Arc::clone(&together), reply.clone());
                        async move {
                            together.wait().await;
                            reply
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counting = CountingListener {
            listener,
            writes: Arc::clone(&writes),
        };
        let (_stop, _server) = start_on(counting, router, ConnectionLimits::grpc());
        let (client, _connection) = h2_client(addr).await;
        // A whole call first: the handshake's writes are over once its reply is in.
        get_body(&mut client.clone(), "/warm-up").await.unwrap();
        let before = writes.load(Ordering::SeqCst);
        let calls: Vec<_> = (0..CALLS)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { get_body(&mut client, "/together").await })
            })
            .collect();
        for call in calls {
            let body = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("no whole reply within 10 s")
                .unwrap()
                .unwrap();
            assert_eq!(body, reply, "a reply arrived cut or changed");
        }
        let replies_sent_in = writes.load(Ordering::SeqCst) - before;
        assert_eq!(
            replies_sent_in, 1,
            "{CALLS} replies that finished together took {replies_sent_in} writes"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_reading_cannot_hold_a_closing_connection() {
        static CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];
        // 64 MiB, far more than the two sockets' buffers hold.
        let router = axum::Router::new().route(
            "/flood",
            axum::routing::get(|| async {
                let chunks = futures_util::stream::repeat_with(|| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from_static(&CHUNK))
                })
                .take(1024);
                axum::body::Body::from_stream(chunks)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            closing_grace: Duration::from_millis(300),
            ..ConnectionLimits::grpc()
        };
        let (stop, server) = start_on(listener, router, limits);
        // A raw HTTP/2 client that opens every flow-control window, asks for the flood and
        // never reads: the server's writes stop once the socket buffers are full.
        let mut peer = std::net::TcpStream::connect(addr).unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS: INITIAL_WINDOW_SIZE = 2^31 - 1.
        hello.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0x7f, 0xff, 0xff, 0xff]);
        // WINDOW_UPDATE on the connection: + 2^31 - 2^16.
        hello.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0x7f, 0xff, 0, 0]);
        // HEADERS on stream 1, END_STREAM | END_HEADERS: GET http://localhost/flood (HPACK:
        // indexed :method GET and :scheme http, literal :path and :authority).
        let mut block = vec![0x82, 0x86, 0x04, 6];
        block.extend_from_slice(b"/flood");
        block.extend_from_slice(&[0x01, 9]);
        block.extend_from_slice(b"localhost");
        hello.extend_from_slice(&[
            0,
            0,
            u8::try_from(block.len()).unwrap(),
            0x1,
            0x5,
            0,
            0,
            0,
            1,
        ]);
        hello.extend_from_slice(&block);
        std::io::Write::write_all(&mut peer, &hello).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the connection whose peer stopped reading held serve's shutdown for 10 s")
            .unwrap()
            .unwrap();
        drop(peer);
    }

    /// A connection that wakes its own task while being polled, as h2 does when a stream
    /// queues a reply, the first `self_wakes` times; keeps the last waker it was given.
    struct SelfWaking {
        polls: usize,
        self_wakes: usize,
        waker: Arc<Mutex<Option<std::task::Waker>>>,
    }

    impl Future for SelfWaking {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            self.polls += 1;
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.polls <= self.self_wakes {
                cx.waker().wake_by_ref();
            }
            std::task::Poll::Pending
        }
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl futures_util::task::ArcWake for CountingWaker {
        fn wake_by_ref(arc: &Arc<Self>) {
            arc.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn with_streams(connection: SelfWaking) -> WithStreams<SelfWaking, tokio::io::Sink> {
        let (_, started) = tokio::sync::mpsc::unbounded_channel();
        WithStreams::new(
            connection,
            held_writes(tokio::io::sink()).1,
            started,
            Arc::default(),
        )
    }

    /// Polls `connection` once, with a waker that counts its wakes; it must be pending.
    fn poll_once(connection: &mut WithStreams<SelfWaking, tokio::io::Sink>) -> Arc<CountingWaker> {
        let task = Arc::new(CountingWaker::default());
        let waker = futures_util::task::waker(Arc::clone(&task));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::Pin::new(connection).poll(&mut cx).is_pending());
        task
    }

    #[test]
    fn a_call_is_alone_only_with_no_other_stream_or_reply_to_write() {
        let load = Arc::<TaskLoad>::default();
        let (start, started) = tokio::sync::mpsc::unbounded_channel::<StreamFuture>();
        let mut connection = WithStreams::new(
            SelfWaking {
                polls: 0,
                self_wakes: 0,
                waker: Arc::default(),
            },
            held_writes(tokio::io::sink()).1,
            started,
            Arc::clone(&load),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let asking = || -> StreamFuture {
            let (calls, seen) = (ConnectionCalls(Arc::clone(&load)), Arc::clone(&seen));
            Box::pin(async move { seen.lock().unwrap().push(calls.alone()) })
        };
        // On its own.
        start.send(asking()).unwrap();
        poll_once(&mut connection);
        // Behind a call that finished first in the same poll: its reply waits for the task.
        start.send(Box::pin(async {})).unwrap();
        start.send(asking()).unwrap();
        poll_once(&mut connection);
        // Beside a call still under way.
        start.send(Box::pin(std::future::pending())).unwrap();
        start.send(asking()).unwrap();
        poll_once(&mut connection);
        assert_eq!(*seen.lock().unwrap(), [true, false, false]);
    }

    #[test]
    fn a_wake_during_the_poll_is_another_round_not_another_poll() {
        let latest = Arc::new(Mutex::new(None));
        let mut connection = with_streams(SelfWaking {
            polls: 0,
            self_wakes: 1,
            waker: Arc::clone(&latest),
        });
        let task = poll_once(&mut connection);
        assert_eq!(
            connection.connection.polls, 2,
            "the wake did not lead to a second round"
        );
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            0,
            "a wake from inside the poll reached the task: tokio would run it again as a yield"
        );
        // A wake after the poll (the socket, a timer) must reach the task.
        latest.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "a wake after the poll was lost"
        );
    }

    #[test]
    fn a_connection_that_keeps_waking_itself_yields_after_four_rounds() {
        let mut connection = with_streams(SelfWaking {
            polls: 0,
            self_wakes: usize::MAX,
            waker: Arc::new(Mutex::new(None)),
        });
        let task = poll_once(&mut connection);
        assert_eq!(connection.connection.polls, 4);
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "it must be polled again later"
        );
    }
}
