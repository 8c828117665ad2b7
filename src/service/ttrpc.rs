//! The ttrpc transport: what Kata / Confidential Containers guest components speak to their
//! attestation agent (confidential-data-hub, kbs_protocol's evidence and token providers,
//! api-server-rest), on a Unix socket.
//!
//! A thin shell over the gRPC services: each method decodes the ttrpc payload into the same prost
//! message, calls the very handler gRPC calls (so the error map, the metrics and the log line are
//! the same), and encodes the reply. The shell adds only what tonic adds for gRPC: the deadline
//! (the caller's `timeout_nano`, at most [`RPC_DEADLINE`]) and a bound on calls in flight.
//!
//! Connections are accepted by aasp, not by the crate's accept loop (which logs every failed
//! accept and spins at the descriptor limit), and draw from the same [`ConnectionBudget`] as
//! every other listener. Each is read through a [`Framed`] guard that enforces, below the crate:
//! the message size (the gRPC listeners' limit) against each frame header before the crate
//! allocates for it, and a deadline for a frame's bytes once its first byte arrived.
//!
//! No connection is closed for being idle. CDH's hub connects to the agent at its first image
//! pull and keeps that client for its lifetime, calling it again only at the next pull, which
//! may be hours later (guest-components 8246e5e `confidential-data-hub/hub/src/hub.rs`,
//! `aa_client`); it never reconnects. Its KBS requests open a connection each, which stays open
//! through the KBS's retries. So idle connections are bounded by the cap alone: past it, a
//! connection that never completed a request makes room, the oldest first; one that completed a
//! request is never evicted.
//!
//! Served: `attestation_agent.AttestationAgentService`, `keyprovider.KeyProviderService` and
//! `getresource.GetResourceService`. Must not know any backend's wire format.

use super::attestation_agent::Agent;
use super::conn::{AcceptPause, Admitted, ConnectionBudget, Eviction};
use super::getresource::Resources;
use super::keyprovider::Aasp;
use super::{unix_socket, Backend, Limits, RPC_DEADLINE};
use crate::proto::attestation_agent::attestation_agent_service_server::AttestationAgentService;
use crate::proto::getresource::get_resource_service_server::GetResourceService;
use crate::proto::keyprovider::key_provider_service_server::KeyProviderService;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use ttrpc::proto::ResponseInit;
use ttrpc::r#async::{MethodHandler, Server, Service, TtrpcContext};
use zeroize::Zeroize;

/// Service and method names, as upstream's protos declare them.
const AA: &str = "attestation_agent.AttestationAgentService";
const AA_METHODS: [&str; 7] = [
    "GetEvidence",
    "GetAdditionalEvidence",
    "GetToken",
    "ExtendRuntimeMeasurement",
    "BindInitData",
    "GetTeeType",
    "GetAdditionalTees",
];
const KEYPROVIDER: &str = "keyprovider.KeyProviderService";
const KEYPROVIDER_METHODS: [&str; 4] = ["WrapKey", "UnWrapKey", "GetReport", "SayHello"];
const GETRESOURCE: &str = "getresource.GetResourceService";
const GETRESOURCE_METHODS: [&str; 1] = ["GetResource"];

/// The handlers every method shares, and the bound on calls in flight.
struct Handlers {
    agent: Agent,
    keyprovider: Aasp,
    resources: Resources,
    in_flight: tokio::sync::Semaphore,
}

/// One method of one service; dispatches on its name.
struct Method {
    handlers: Arc<Handlers>,
    service: &'static str,
    name: &'static str,
}

#[tonic::async_trait]
impl MethodHandler for Method {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        mut req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let deadline = deadline(ctx.timeout_nano);
        let result = match self.handlers.in_flight.acquire().await {
            Ok(_permit) => {
                let call = crate::http::with_deadline(
                    tokio::time::Instant::now() + deadline,
                    dispatch(&self.handlers, self.service, self.name, &req.payload),
                );
                let result = tokio::time::timeout(deadline, call).await;
                result.unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(format!(
                        "no reply within {deadline:?}"
                    )))
                })
            }
            Err(_) => Err(tonic::Status::unavailable("the server is shutting down")),
        };
        // The request may hold a layer key (WrapKey's optsdata): it goes as soon as it is read.
        req.payload.zeroize();
        Ok(match result {
            Ok(payload) => {
                let mut response =
                    ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, ""));
                response.set_payload(payload);
                response
            }
            Err(status) => ttrpc::Response::init_status(ttrpc::get_status(
                code(status.code()),
                status.message(),
            )),
        })
    }
}

/// The caller's deadline (ttrpc's `timeout_nano`, zero for none), never beyond [`RPC_DEADLINE`].
fn deadline(timeout_nano: i64) -> Duration {
    u64::try_from(timeout_nano)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_nanos)
        .map_or(RPC_DEADLINE, |d| d.min(RPC_DEADLINE))
}

/// Decodes `payload` as `Req`, runs the gRPC handler, encodes its reply.
async fn unary<Req, Resp, Fut>(
    payload: &[u8],
    call: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Result<Vec<u8>, tonic::Status>
where
    Req: prost::Message + Default,
    Resp: prost::Message,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let request = Req::decode(payload).map_err(|e| {
        tonic::Status::invalid_argument(format!("the request is not a valid message: {e}"))
    })?;
    let reply = call(tonic::Request::new(request)).await?;
    Ok(reply.into_inner().encode_to_vec())
}

async fn dispatch(
    h: &Handlers,
    service: &str,
    method: &str,
    payload: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    match (service, method) {
        (AA, "GetEvidence") => unary(payload, |r| h.agent.get_evidence(r)).await,
        (AA, "GetAdditionalEvidence") => {
            unary(payload, |r| h.agent.get_additional_evidence(r)).await
        }
        (AA, "GetToken") => unary(payload, |r| h.agent.get_token(r)).await,
        (AA, "ExtendRuntimeMeasurement") => {
            unary(payload, |r| h.agent.extend_runtime_measurement(r)).await
        }
        (AA, "BindInitData") => unary(payload, |r| h.agent.bind_init_data(r)).await,
        (AA, "GetTeeType") => unary(payload, |r| h.agent.get_tee_type(r)).await,
        (AA, "GetAdditionalTees") => unary(payload, |r| h.agent.get_additional_tees(r)).await,
        (KEYPROVIDER, "WrapKey") => unary(payload, |r| h.keyprovider.wrap_key(r)).await,
        (KEYPROVIDER, "UnWrapKey") => unary(payload, |r| h.keyprovider.un_wrap_key(r)).await,
        (KEYPROVIDER, "GetReport") => unary(payload, |r| h.keyprovider.get_report(r)).await,
        (KEYPROVIDER, "SayHello") => unary(payload, |r| h.keyprovider.say_hello(r)).await,
        (GETRESOURCE, "GetResource") => unary(payload, |r| h.resources.get_resource(r)).await,
        _ => Err(tonic::Status::unimplemented(format!(
            "{service}/{method} is not served"
        ))),
    }
}

/// gRPC and ttrpc number their status codes alike; the map is spelled out all the same.
fn code(code: tonic::Code) -> ttrpc::Code {
    use tonic::Code as G;
    use ttrpc::Code as T;
    match code {
        G::Ok => T::OK,
        G::Cancelled => T::CANCELLED,
        G::Unknown => T::UNKNOWN,
        G::InvalidArgument => T::INVALID_ARGUMENT,
        G::DeadlineExceeded => T::DEADLINE_EXCEEDED,
        G::NotFound => T::NOT_FOUND,
        G::AlreadyExists => T::ALREADY_EXISTS,
        G::PermissionDenied => T::PERMISSION_DENIED,
        G::ResourceExhausted => T::RESOURCE_EXHAUSTED,
        G::FailedPrecondition => T::FAILED_PRECONDITION,
        G::Aborted => T::ABORTED,
        G::OutOfRange => T::OUT_OF_RANGE,
        G::Unimplemented => T::UNIMPLEMENTED,
        G::Internal => T::INTERNAL,
        G::Unavailable => T::UNAVAILABLE,
        G::DataLoss => T::DATA_LOSS,
        G::Unauthenticated => T::UNAUTHENTICATED,
    }
}

/// Every served service, keyed as ttrpc looks them up.
fn services(backend: &Arc<Backend>, limits: &Limits) -> HashMap<String, Service> {
    let handlers = Arc::new(Handlers {
        agent: Agent(Arc::clone(backend)),
        keyprovider: Aasp(Arc::clone(backend)),
        resources: Resources(Arc::clone(backend)),
        in_flight: tokio::sync::Semaphore::new(limits.concurrency),
    });
    [
        (AA, &AA_METHODS[..]),
        (KEYPROVIDER, &KEYPROVIDER_METHODS[..]),
        (GETRESOURCE, &GETRESOURCE_METHODS[..]),
    ]
    .into_iter()
    .map(|(service, names)| {
        let methods = names
            .iter()
            .map(|name| {
                let method: Box<dyn MethodHandler + Send + Sync> = Box::new(Method {
                    handlers: Arc::clone(&handlers),
                    service,
                    name,
                });
                ((*name).to_owned(), method)
            })
            .collect();
        (
            service.to_owned(),
            Service {
                methods,
                streams: HashMap::new(),
            },
        )
    })
    .collect()
}

/// Connection limits of a ttrpc listener.
#[derive(Debug, Clone)]
pub struct TtrpcLimits {
    /// This listener's cap, within `budget`. Guest components use a handful of connections.
    pub max_connections: usize,
    /// Message size, deadline for a request's bytes, calls in flight: as on gRPC.
    pub calls: Limits,
    pub budget: Arc<ConnectionBudget>,
}

impl Default for TtrpcLimits {
    fn default() -> Self {
        TtrpcLimits {
            max_connections: 128,
            calls: Limits::default(),
            budget: ConnectionBudget::process(),
        }
    }
}

/// A ttrpc listener bound on a Unix socket (owner-only, stale sockets replaced, see
/// [`unix_socket`]).
pub struct TtrpcBound {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl TtrpcBound {
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let listener = unix_socket::bind_unix_socket(path)?;
        listener.set_nonblocking(true)?;
        Ok(TtrpcBound {
            listener: tokio::net::UnixListener::from_std(listener)?,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight calls finish and
    /// removes the socket.
    pub async fn serve(
        self,
        backend: Arc<Backend>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(backend, TtrpcLimits::default(), shutdown)
            .await
    }

    /// [`TtrpcBound::serve`] with other limits.
    pub async fn serve_with(
        self,
        backend: Arc<Backend>,
        limits: TtrpcLimits,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The crate's server takes its connections from this channel: its own accept loop
        // never sees an accept error.
        let (admitted, mut incoming) =
            tokio::sync::mpsc::channel::<Framed<tokio::net::UnixStream>>(16);
        let incoming = futures_util::stream::poll_fn(move |cx| {
            incoming
                .poll_recv(cx)
                .map(|io| io.map(Ok::<_, std::io::Error>))
        });
        let mut server = Server::new()
            .add_listener(ttrpc::r#async::transport::Listener::new(incoming))
            .register_service(services(&backend, &limits.calls));
        let started = server.start().await.map_err(std::io::Error::other);
        if started.is_ok() {
            accept(&self.listener, &admitted, &limits, shutdown).await;
        }
        // The crate's shutdown hands its listener back through the loop reading `incoming`: the
        // sender must outlive it.
        let stopped = server.shutdown().await.map_err(std::io::Error::other);
        drop(admitted);
        unix_socket::remove_unix_socket(&self.path);
        started.and(stopped)
    }
}

/// Accepts connections into the budget and hands them to the crate's server until `shutdown`.
async fn accept(
    listener: &tokio::net::UnixListener,
    admitted: &tokio::sync::mpsc::Sender<Framed<tokio::net::UnixStream>>,
    limits: &TtrpcLimits,
    shutdown: impl Future<Output = ()>,
) {
    let admission = limits
        .budget
        .listener(limits.max_connections, Eviction::NeverCompleted);
    let frames = FrameLimits {
        max_frame_bytes: u32::try_from(limits.calls.max_message_bytes).unwrap_or(u32::MAX),
        request_timeout: limits.calls.body_timeout,
    };
    let mut pause = AcceptPause::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause.reset();
                    stream
                }
                Err(e) => {
                    pause.after(&e).await;
                    continue;
                }
            },
        };
        let Some(slot) = admission.admit() else {
            crate::warn_throttled!(
                max = admission.cap(),
                budget = limits.budget.limit(),
                "ttrpc connection refused: every connection has completed a call or is busy"
            );
            continue;
        };
        if admitted
            .send(Framed::new(stream, slot, frames))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The ttrpc frame header: length (u32 BE), stream id (u32 BE), type, flags.
const HEADER_LEN: usize = 10;
/// The only frame type a client sends to unary services (ttrpc `MESSAGE_TYPE_REQUEST`).
const REQUEST: u8 = 1;

/// What [`Framed`] enforces.
#[derive(Debug, Clone, Copy)]
struct FrameLimits {
    max_frame_bytes: u32,
    request_timeout: Duration,
}

/// A ttrpc connection as the crate reads it, with the bounds the crate lacks. It follows the
/// frames as their bytes pass: a header announcing more than the limit, or a frame that is not
/// a request, ends the connection before the crate sees the header (the crate allocates the
/// announced length at once). Time runs only inside a frame whose bytes stopped coming: reads
/// that find a whole frame ready, and a connection idle between frames, touch no clock and take
/// no lock.
pub(crate) struct Framed<S> {
    io: S,
    slot: Admitted,
    limits: FrameLimits,
    header: [u8; HEADER_LEN],
    /// Header bytes seen of the current frame; `HEADER_LEN` once in its payload.
    header_seen: usize,
    payload_left: u32,
    completed: bool,
    /// When the frame under way must be whole; set when a read first waits inside it.
    frame_due: Option<tokio::time::Instant>,
    /// One timer for the connection's life, moved to each frame's deadline; made when first
    /// needed.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Framed<S> {
    fn new(io: S, slot: Admitted, limits: FrameLimits) -> Self {
        Framed {
            io,
            slot,
            limits,
            header: [0; HEADER_LEN],
            header_seen: 0,
            payload_left: 0,
            completed: false,
            frame_due: None,
            timer: None,
        }
    }

    fn in_frame(&self) -> bool {
        self.header_seen > 0
    }

    /// Follows the frames through `bytes`, just read.
    fn follow(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if self.header_seen < HEADER_LEN {
                let take = (HEADER_LEN - self.header_seen).min(bytes.len());
                let (head, rest) = bytes.split_at(take);
                if let Some(slot) = self
                    .header
                    .get_mut(self.header_seen..self.header_seen + take)
                {
                    slot.copy_from_slice(head);
                }
                self.header_seen += take;
                bytes = rest;
                if self.header_seen == HEADER_LEN {
                    self.header_done()?;
                }
            } else {
                let take = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = bytes.get(take..).unwrap_or_default();
                // `take` is at most `payload_left`, a u32.
                self.payload_left -= u32::try_from(take).unwrap_or(self.payload_left);
                if self.payload_left == 0 {
                    self.frame_done();
                }
            }
        }
        Ok(())
    }

    fn header_done(&mut self) -> std::io::Result<()> {
        let [l0, l1, l2, l3, _, _, _, _, kind, _] = self.header;
        let length = u32::from_be_bytes([l0, l1, l2, l3]);
        if kind != REQUEST {
            return Err(self.refuse(format!(
                "a frame of type {kind}: only requests (type {REQUEST}) are served"
            )));
        }
        if length > self.limits.max_frame_bytes {
            return Err(self.refuse(format!(
                "a frame of {length} bytes, over the {}-byte message limit",
                self.limits.max_frame_bytes
            )));
        }
        self.payload_left = length;
        if length == 0 {
            self.frame_done();
        }
        Ok(())
    }

    fn frame_done(&mut self) {
        self.header_seen = 0;
        self.frame_due = None;
        if !self.completed {
            self.completed = true;
            self.slot.complete();
        }
    }

    fn refuse(&self, what: String) -> std::io::Error {
        crate::warn_throttled!(refused = %what, "ttrpc connection closed");
        std::io::Error::new(std::io::ErrorKind::InvalidData, what)
    }

    /// After a read found nothing: whether the frame under way is past its deadline, arming
    /// the timer otherwise.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if !self.in_frame() {
            return Ok(());
        }
        let timeout = self.limits.request_timeout;
        let due = *self
            .frame_due
            .get_or_insert_with(|| tokio::time::Instant::now() + timeout);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let what = format!("a request's bytes did not arrive within {timeout:?}");
        crate::warn_throttled!(reason = %what, "ttrpc connection closed");
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Only a connection that never completed a request is ever evicted.
        if !this.completed && this.slot.poll_evicted(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed to make room: no whole request yet and the connection cap was reached",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().get(before..).unwrap_or_default();
                Poll::Ready(this.follow(read))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_deadline(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: FrameLimits = FrameLimits {
        max_frame_bytes: 1000,
        request_timeout: Duration::from_millis(200),
    };
    /// Far past the request deadline: whatever it would close is closed by then.
    const LONG: Duration = Duration::from_secs(1);

    /// A ttrpc connection through [`Framed`] and the client's end of it.
    fn framed(
        budget: &Arc<ConnectionBudget>,
    ) -> (Framed<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let slot = budget
            .listener(8, Eviction::NeverCompleted)
            .admit()
            .unwrap();
        let (client, server) = tokio::io::duplex(1 << 16);
        (Framed::new(server, slot, LIMITS), client)
    }

    fn header(length: u32, kind: u8) -> Vec<u8> {
        let mut header = length.to_be_bytes().to_vec();
        header.extend_from_slice(&1u32.to_be_bytes());
        header.extend_from_slice(&[kind, 0]);
        header
    }

    /// Reads what the crate would, in its own steps: a header, then the payload.
    async fn read_frame(framed: &mut Framed<tokio::io::DuplexStream>) -> std::io::Result<Vec<u8>> {
        let mut head = [0u8; HEADER_LEN];
        framed.read_exact(&mut head).await?;
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let mut payload = vec![0; length as usize];
        framed.read_exact(&mut payload).await?;
        Ok(payload)
    }

    #[tokio::test]
    async fn frames_pass_whole_and_a_completed_connection_may_idle_for_ever() {
        let budget = Arc::new(ConnectionBudget::new(8));
        let (mut framed, mut client) = framed(&budget);
        // Bytes trickle in, split anywhere (well within the deadline).
        let mut wire = header(5, REQUEST);
        wire.extend_from_slice(b"hello");
        wire.extend_from_slice(&header(0, REQUEST));
        wire.extend_from_slice(&header(100, REQUEST));
        wire.extend_from_slice(&[7; 100]);
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(7) {
                client.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client
        });
        assert_eq!(read_frame(&mut framed).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut framed).await.unwrap(), b"");
        assert_eq!(read_frame(&mut framed).await.unwrap(), [7; 100]);
        let _client = writer.await.unwrap();
        // Idle past the deadline: CDH's connection between two calls.
        let mut byte = [0u8; 1];
        let idle = tokio::time::timeout(LONG, framed.read(&mut byte)).await;
        assert!(
            idle.is_err(),
            "a completed connection was closed while idle: {idle:?}"
        );
    }

    #[tokio::test]
    async fn a_header_over_the_limit_ends_the_connection_before_its_bytes_are_kept() {
        let budget = Arc::new(ConnectionBudget::new(8));
        let (mut framed, mut client) = framed(&budget);
        let mut at_the_limit = header(1000, REQUEST);
        at_the_limit.extend_from_slice(&[1; 1000]);
        client.write_all(&at_the_limit).await.unwrap();
        assert_eq!(read_frame(&mut framed).await.unwrap(), [1; 1000]);
        client.write_all(&header(1001, REQUEST)).await.unwrap();
        let mut head = [0u8; HEADER_LEN];
        let refused = framed.read_exact(&mut head).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        assert!(refused.to_string().contains("1001 bytes"), "{refused}");
    }

    #[tokio::test]
    async fn only_request_frames_are_read() {
        let budget = Arc::new(ConnectionBudget::new(8));
        let (mut framed, mut client) = framed(&budget);
        client.write_all(&header(0, 3)).await.unwrap();
        let refused = read_frame(&mut framed).await.unwrap_err();
        assert!(refused.to_string().contains("type 3"), "{refused}");
    }

    #[tokio::test]
    async fn a_request_whose_bytes_stop_is_closed_at_its_deadline() {
        let budget = Arc::new(ConnectionBudget::new(8));
        let (mut framed, mut client) = framed(&budget);
        let mut first = header(2, REQUEST);
        first.extend_from_slice(b"ok");
        client.write_all(&first).await.unwrap();
        read_frame(&mut framed).await.unwrap();
        tokio::time::sleep(LONG).await;
        // All but one byte of the next frame, then nothing.
        let mut parked = header(10, REQUEST);
        parked.extend_from_slice(&[0; 9]);
        client.write_all(&parked).await.unwrap();
        let started = tokio::time::Instant::now();
        let closed = tokio::time::timeout(LONG * 10, read_frame(&mut framed))
            .await
            .expect("the parked frame was never closed")
            .unwrap_err();
        assert_eq!(closed.kind(), std::io::ErrorKind::TimedOut, "{closed}");
        assert!(started.elapsed() >= LIMITS.request_timeout);
    }

    #[tokio::test]
    async fn a_connection_that_has_sent_nothing_yet_is_not_timed_out() {
        let budget = Arc::new(ConnectionBudget::new(8));
        let (mut framed, mut client) = framed(&budget);
        let mut byte = [0u8; 1];
        let idle = tokio::time::timeout(LONG, framed.read(&mut byte)).await;
        assert!(
            idle.is_err(),
            "a connection without a request was closed: {idle:?}"
        );
        // Its first request, late (CDH's, after a KBS outage), is read.
        let mut first = header(2, REQUEST);
        first.extend_from_slice(b"ok");
        client.write_all(&first).await.unwrap();
        let mut whole = [0u8; HEADER_LEN + 2];
        framed.read_exact(&mut whole).await.unwrap();
        assert!(framed.completed);
    }

    #[tokio::test]
    async fn an_evicted_connection_ends_at_once() {
        let budget = Arc::new(ConnectionBudget::new(1));
        let (mut framed, _client) = framed(&budget);
        let reading = tokio::spawn(async move { read_frame(&mut framed).await });
        tokio::task::yield_now().await;
        let _newcomer = budget
            .listener(8, Eviction::NeverCompleted)
            .admit()
            .unwrap();
        let closed = tokio::time::timeout(LONG * 10, reading)
            .await
            .expect("the evicted connection stayed open")
            .unwrap()
            .unwrap_err();
        assert_eq!(closed.kind(), std::io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn deadline_is_the_callers_within_the_cap() {
        assert_eq!(deadline(0), RPC_DEADLINE);
        assert_eq!(deadline(-5), RPC_DEADLINE);
        assert_eq!(deadline(2_000_000_000), Duration::from_secs(2));
        assert_eq!(deadline(i64::MAX), RPC_DEADLINE);
    }

    #[test]
    fn status_codes_keep_their_numbers() {
        for n in 0..=16 {
            let grpc = tonic::Code::from_i32(n);
            assert_eq!(code(grpc) as i32, n, "{grpc:?}");
        }
    }
}
