//! The generated gRPC types of `proto/`, and the descriptor set that reflection serves.
//!
//! Messages that carry layer keys, released keys or tokens get a hand-written `Debug` that
//! prints only their length (build.rs leaves them without a derived one).
#![allow(
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod keyprovider {
    tonic::include_proto!("keyprovider");
}

pub mod key_provider {
    tonic::include_proto!("key_provider");
}

pub mod attestation_agent {
    tonic::include_proto!("attestation_agent");
}

pub mod getresource {
    tonic::include_proto!("getresource");
}

/// Encoded `FileDescriptorSet` of every service, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/aasp_descriptor.bin"));

macro_rules! redacted_debug {
    ($($ty:path => $field:ident),* $(,)?) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}(<redacted {} bytes>)", stringify!($ty), self.$field.len())
            }
        }
    )*};
}

redacted_debug! {
    keyprovider::KeyProviderKeyWrapProtocolInput => key_provider_key_wrap_protocol_input,
    keyprovider::KeyProviderKeyWrapProtocolOutput => key_provider_key_wrap_protocol_output,
    key_provider::KeyProviderKeyWrapProtocolInput => key_provider_key_wrap_protocol_input,
    key_provider::KeyProviderKeyWrapProtocolOutput => key_provider_key_wrap_protocol_output,
    attestation_agent::GetTokenResponse => token,
    getresource::GetResourceResponse => resource,
}
