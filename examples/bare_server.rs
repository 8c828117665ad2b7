//! The floor `rpc_cost` measures aasp against: `keyprovider.KeyProviderService` on a bare tonic
//! server (`tonic::transport::Server`, the same tonic, hyper and generated code as aasp, and no
//! middleware), and on a bare ttrpc server (the same ttrpc crate, no deadline, no permit).
//!
//! SayHello answers `Hello <name>`: an empty RPC. WrapKey does nothing but what a wrap cannot do
//! without: one RSA-OAEP-SHA256 encryption of a 32-byte key with a public key parsed once at start,
//! and the ciphertext as the reply. GetReport and UnWrapKey are not served.
//!
//! ```text
//! cargo run --release --example bare_server -- --listen 127.0.0.1:50100 \
//!   --public-key key.pub.pem --ttrpc unix:///tmp/bare.sock
//! ```

use aasp::proto::keyprovider::key_provider_service_server::{
    KeyProviderService, KeyProviderServiceServer,
};
use aasp::proto::keyprovider::*;
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
use clap::Parser;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use ttrpc::proto::ResponseInit;

#[derive(Debug, Parser)]
struct Args {
    /// gRPC address (TCP).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The RSA public key WrapKey encrypts to (PEM SubjectPublicKeyInfo).
    #[arg(long)]
    public_key: std::path::PathBuf,
    /// Also serve the same two methods over ttrpc on this Unix socket (unix:///path).
    #[arg(long)]
    ttrpc: Option<String>,
}

struct Bare {
    key: OaepPublicEncryptingKey,
}

impl Bare {
    fn hello(request: &HelloRequest) -> HelloReply {
        HelloReply {
            message: format!("Hello {}", request.name),
        }
    }

    fn wrap(&self) -> Result<KeyProviderKeyWrapProtocolOutput, Status> {
        let mut out = vec![0u8; self.key.ciphertext_size()];
        let len = self
            .key
            .encrypt(&OAEP_SHA256_MGF1SHA256, &[7; 32], &mut out, None)
            .map_err(|_| Status::internal("encrypt"))?
            .len();
        out.truncate(len);
        Ok(KeyProviderKeyWrapProtocolOutput {
            key_provider_key_wrap_protocol_output: out,
        })
    }
}

/// The gRPC service: the shared state behind the generated trait.
struct Grpc(Arc<Bare>);

#[tonic::async_trait]
impl KeyProviderService for Grpc {
    async fn wrap_key(
        &self,
        _request: Request<KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        self.0.wrap().map(Response::new)
    }

    async fn un_wrap_key(
        &self,
        _request: Request<KeyProviderKeyWrapProtocolInput>,
    ) -> Result<Response<KeyProviderKeyWrapProtocolOutput>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn get_report(
        &self,
        _request: Request<KeyProviderGetReportInput>,
    ) -> Result<Response<KeyProviderGetReportOutput>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(Bare::hello(request.get_ref())))
    }
}

/// One ttrpc method: decode, answer, encode; nothing else.
struct TtrpcMethod {
    bare: Arc<Bare>,
    wrap: bool,
}

#[tonic::async_trait]
impl ttrpc::r#async::MethodHandler for TtrpcMethod {
    async fn handler(
        &self,
        _ctx: ttrpc::r#async::TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let payload = if self.wrap {
            self.bare
                .wrap()
                .map_err(|e| ttrpc::Error::Others(e.message().to_owned()))?
                .encode_to_vec()
        } else {
            let request = HelloRequest::decode(req.payload.as_slice())
                .map_err(|e| ttrpc::Error::Others(e.to_string()))?;
            Bare::hello(&request).encode_to_vec()
        };
        let mut response =
            ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
        response.set_payload(payload);
        Ok(response)
    }
}

fn ttrpc_services(bare: &Arc<Bare>) -> HashMap<String, ttrpc::r#async::Service> {
    let methods = [("SayHello", false), ("WrapKey", true)]
        .into_iter()
        .map(|(name, wrap)| {
            let method: Box<dyn ttrpc::r#async::MethodHandler + Send + Sync> =
                Box::new(TtrpcMethod {
                    bare: Arc::clone(bare),
                    wrap,
                });
            (name.to_owned(), method)
        })
        .collect();
    HashMap::from([(
        "keyprovider.KeyProviderService".to_owned(),
        ttrpc::r#async::Service {
            methods,
            streams: HashMap::new(),
        },
    )])
}

fn public_key(path: &std::path::Path) -> Result<OaepPublicEncryptingKey, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let key = PublicEncryptingKey::from_der(&der).map_err(|e| format!("public key: {e}"))?;
    OaepPublicEncryptingKey::new(key).map_err(|e| format!("public key: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let bare = Arc::new(Bare {
        key: public_key(&args.public_key)?,
    });
    let mut ttrpc_server = match &args.ttrpc {
        Some(socket) => {
            let _ = std::fs::remove_file(socket.trim_start_matches("unix://"));
            let mut server = ttrpc::r#async::Server::new()
                .bind(socket)?
                .register_service(ttrpc_services(&bare));
            server.start().await?;
            Some(server)
        }
        None => None,
    };
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(KeyProviderServiceServer::new(Grpc(Arc::clone(&bare))))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    if let Some(server) = ttrpc_server.as_mut() {
        server.shutdown().await?;
    }
    Ok(served?)
}
