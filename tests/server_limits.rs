//! What a slow, hostile or unusual client can do to the server: malformed protobuf, Unix-socket
//! clients that send the socket path as `:authority`, slow or idle connections, oversized
//! strings echoed back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

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
