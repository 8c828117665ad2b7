//! What a slow, hostile or unusual client can do to the server: malformed protobuf, Unix-socket
//! clients that send the socket path as `:authority`, slow or idle connections, oversized
//! strings echoed back.

use crate::common;

use std::sync::OnceLock;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Code;

struct Shared {
    runtime: tokio::runtime::Runtime,
    stack: common::Dev,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let stack = runtime.block_on(common::Dev::start());
        Shared { runtime, stack }
    })
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    shared().runtime.block_on(f)
}

async fn channel() -> Channel {
    Channel::from_shared(shared().stack.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Sends and receives message bodies as raw bytes, whatever they contain.
#[derive(Default)]
struct RawCodec;

struct Raw;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes_put::PutSlice;
        dst.put_all(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

mod bytes_put {
    pub trait PutSlice {
        fn put_all(&mut self, bytes: &[u8]);
    }
    impl PutSlice for tonic::codec::EncodeBuf<'_> {
        fn put_all(&mut self, bytes: &[u8]) {
            prost::bytes::BufMut::put_slice(self, bytes);
        }
    }
}

async fn raw_call(path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel().await);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[test]
fn a_request_that_is_not_protobuf_is_invalid_argument() {
    run(async {
        // Field 1, wire type 2 (length-delimited), length 100, but only 2 bytes follow.
        let truncated = vec![0x0a, 100, b'h', b'i'];
        // Wire type 7 does not exist.
        let bad_wire_type = vec![0x0f, 0x00];
        for path in [
            "/keyprovider.KeyProviderService/SayHello",
            "/keyprovider.KeyProviderService/UnWrapKey",
            "/getresource.GetResourceService/GetResource",
        ] {
            for body in [truncated.clone(), bad_wire_type.clone()] {
                let status = raw_call(path, body).await.unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            }
        }
        // The same path with a valid message still works.
        let hello = raw_call(
            "/keyprovider.KeyProviderService/SayHello",
            vec![0x0a, 2, b'h', b'i'],
        )
        .await
        .unwrap();
        assert!(hello.ends_with(b"Hello hi"), "{hello:?}");
    });
}

/// Opens `n` raw TCP connections to `addr`, each sending `first` (possibly nothing) and then
/// nothing more.
fn idle_connections(addr: &str, n: usize, first: &[u8]) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            if !first.is_empty() {
                tcp.write_all(first).unwrap();
            }
            tcp
        })
        .collect()
}

/// 300 idle gRPC connections and 300 REST clients stuck in their headers, against a server
/// allowed 256 descriptors: health and REST must still answer (the old server stopped accepting
/// once its descriptors ran out).
#[test]
fn idle_and_slow_connections_cannot_keep_health_or_rest_out() {
    use std::io::{BufRead, BufReader};
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--attester", "sim", "--listen", "127.0.0.1:0"])
        .args(["--rest-listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut grpc, mut rest) = (String::new(), String::new());
    while grpc.is_empty() || rest.is_empty() {
        let line = lines.next().expect("serve exited early").unwrap();
        if let Some(addr) = line.strip_prefix("aasp serving gRPC on ") {
            grpc = addr.to_owned();
        } else if let Some(url) = line.strip_prefix("aasp serving the SKR REST API on http://") {
            rest = url.to_owned();
        }
    }
    let _idle = idle_connections(&grpc, 300, b"");
    let _slow = idle_connections(&rest, 300, b"GET /status HTTP/1.1\r\nHost: x\r\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let health = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
            let channel = Channel::from_shared(format!("http://{grpc}"))?
                .connect()
                .await?;
            let mut client = HealthClient::new(channel);
            client
                .check(HealthCheckRequest::default())
                .await
                .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
        })
        .await;
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            reqwest::get(format!("http://{rest}/status"))
                .await?
                .text()
                .await
        })
        .await;
        (health, status)
    });
    let _ = child.kill();
    let _ = child.wait();
    let (health, status) = result;
    assert!(
        matches!(health, Ok(Ok(_))),
        "health did not answer: {health:?}"
    );
    let status = status.expect("REST did not answer").unwrap();
    assert!(status.contains("Status OK"), "{status}");
}

/// 300 streams that send headers and never a body, on 3 connections: SayHello on another
/// connection must still answer (the old server gave each waiting stream a concurrency permit,
/// and 256 permits were gone).
#[test]
fn header_only_streams_do_not_starve_other_calls() {
    run(async {
        let addr = shared().stack.server.listeners[0].to_string();
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
            let mut ping = {
                let mut connection = connection;
                let ping = connection.ping_pong().unwrap();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                ping
            };
            for _ in 0..100 {
                client = client.ready().await.unwrap();
                let request = tonic::codegen::http::Request::builder()
                    .method("POST")
                    .uri(format!(
                        "http://{addr}/keyprovider.KeyProviderService/SayHello"
                    ))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                let (response, stream) = client.send_request(request, false).unwrap();
                held.push((response, stream));
            }
            // The server handles frames in order: once the PING is answered, it has seen
            // every stream's headers.
            ping.ping(h2::Ping::opaque()).await.unwrap();
            clients.push(client);
        }
        for i in 0..3 {
            let mut client = aasp::proto::keyprovider::key_provider_service_client::KeyProviderServiceClient::new(channel().await);
            let mut request = tonic::Request::new(aasp::proto::keyprovider::HelloRequest {
                name: format!("starved {i}"),
            });
            request.set_timeout(std::time::Duration::from_secs(5));
            let reply = client.say_hello(request).await;
            assert!(reply.is_ok(), "SayHello {i} was starved: {reply:?}");
        }
        drop((held, clients));
    });
}

/// An HPACK literal never indexed, new name, no Huffman (lengths < 127 here).
fn hpack_literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0x10);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Raw HTTP/2 over the Unix socket with the `:authority` grpcio (percent-encoded path) and
/// grpc-java (raw path) send: each SayHello must be answered, not reset with PROTOCOL_ERROR.
#[test]
fn unix_socket_calls_with_a_socket_path_authority_are_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = shared();
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aasp.sock");
        let server = aasp::cli::serve::start(
            std::sync::Arc::clone(&s.stack.backend),
            &[aasp::service::Listen::Unix(path.clone())],
        )
        .await
        .unwrap();
        let raw_path = path.to_str().unwrap().to_owned();
        let encoded = raw_path.trim_start_matches('/').replace('/', "%2F");
        let mut socket = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        for (stream, authority) in [(1u32, encoded.as_str()), (3, raw_path.as_str())] {
            let mut block = Vec::new();
            hpack_literal(":method", "POST", &mut block);
            hpack_literal(":scheme", "http", &mut block);
            hpack_literal(
                ":path",
                "/keyprovider.KeyProviderService/SayHello",
                &mut block,
            );
            hpack_literal(":authority", authority, &mut block);
            hpack_literal("content-type", "application/grpc", &mut block);
            hpack_literal("te", "trailers", &mut block);
            out.extend(h2_frame(0x1, 0x4, stream, &block));
            let name = format!("uds{stream}");
            let mut message = vec![0x0a, name.len() as u8];
            message.extend_from_slice(name.as_bytes());
            let mut data = vec![0];
            data.extend_from_slice(&(message.len() as u32).to_be_bytes());
            data.extend_from_slice(&message);
            out.extend(h2_frame(0x0, 0x1, stream, &data));
        }
        socket.write_all(&out).await.unwrap();

        let mut answered = std::collections::BTreeSet::new();
        let read_all = async {
            let mut buf = Vec::new();
            while answered.len() < 2 {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the server closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 9 {
                    let len =
                        usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                    if buf.len() < 9 + len {
                        break;
                    }
                    let kind = buf[3];
                    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
                    let payload = buf[9..9 + len].to_vec();
                    buf.drain(..9 + len);
                    assert_ne!(kind, 0x3, "stream {stream} was reset: {payload:?}");
                    if kind == 0x0 && stream != 0 {
                        let text = String::from_utf8_lossy(&payload).into_owned();
                        assert!(text.contains(&format!("Hello uds{stream}")), "{text}");
                        answered.insert(stream);
                    }
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), read_all)
            .await
            .expect("no answer");
        drop(socket);
        server.shutdown(std::time::Duration::from_secs(5)).await;
    });
}
