//! The ttrpc transport: what Kata / Confidential Containers guest components speak to their
//! attestation agent (confidential-data-hub, kbs_protocol's evidence and token providers,
//! api-server-rest), on a Unix socket.
//!
//! A thin shell over the gRPC services: each method decodes the ttrpc payload into the same prost
//! message, calls the very handler gRPC calls (so the error map, the metrics and the log line are
//! the same), and encodes the reply. The shell adds only what tonic adds for gRPC: the deadline
//! (the caller's `timeout_nano`, at most [`RPC_DEADLINE`]) and a bound on calls in flight. The
//! message size limit is ttrpc's own 4 MiB, the gRPC limit too.
//!
//! Served: `attestation_agent.AttestationAgentService`, `keyprovider.KeyProviderService` and
//! `getresource.GetResourceService`. Must not know any backend's wire format.

use super::attestation_agent::Agent;
use super::getresource::Resources;
use super::keyprovider::Aasp;
use super::{unix_socket, Backend, Limits, RPC_DEADLINE};
use crate::proto::attestation_agent::attestation_agent_service_server::AttestationAgentService;
use crate::proto::getresource::get_resource_service_server::GetResourceService;
use crate::proto::keyprovider::key_provider_service_server::KeyProviderService;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
        let mut server = Server::new()
            .add_listener(ttrpc::r#async::transport::Listener::from(self.listener))
            .register_service(services(&backend, &Limits::default()));
        let started = server.start().await.map_err(std::io::Error::other);
        if started.is_ok() {
            shutdown.await;
        }
        let stopped = server.shutdown().await.map_err(std::io::Error::other);
        unix_socket::remove_unix_socket(&self.path);
        started.and(stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
