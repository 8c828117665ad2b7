//! Compiles `proto/` with protox (pure Rust, so no system `protoc`) and writes the descriptor set
//! that server reflection serves.

use prost::Message;
use std::path::PathBuf;

const PROTOS: [&str; 4] = [
    "proto/keyprovider.proto",
    "proto/key_provider.proto",
    "proto/attestation-agent.proto",
    "proto/getresource.proto",
];

/// Messages that carry layer keys, released keys or tokens: their `Debug` is written by hand in
/// `src/proto.rs` so that logging one cannot leak it.
const SECRET_MESSAGES: [&str; 6] = [
    ".keyprovider.keyProviderKeyWrapProtocolInput",
    ".keyprovider.keyProviderKeyWrapProtocolOutput",
    ".key_provider.KeyProviderKeyWrapProtocolInput",
    ".key_provider.KeyProviderKeyWrapProtocolOutput",
    ".attestation_agent.GetTokenResponse",
    ".getresource.GetResourceResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("aasp_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .skip_debug(SECRET_MESSAGES)
        // A request that is not protobuf is INVALID_ARGUMENT (tonic's codec says INTERNAL).
        .codec_path("crate::service::codec::ProtobufCodec")
        // The released key: `Bytes` whose owner zeroizes it once the reply is sent.
        .bytes(".getresource.GetResourceResponse.Resource")
        .compile_fds(descriptors)?;
    Ok(())
}
