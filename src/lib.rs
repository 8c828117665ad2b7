//! aasp attests an AMD SEV-SNP confidential container and provisions secrets into it.
//!
//! # Layout
//! Dependencies point down the list, never up.
//! - `cli`: the `aasp` command and its subcommands.
//! - `snp`: the attestation core: report, devices and simulator, certificate chain, verification.
//! - `http`: the one outbound HTTP client builder (rustls, explicit extra CA, timeouts).
//! - `echo`: caller-supplied text cut to a bounded length before it reaches a log or a status.
//! - `env`: every environment variable aasp reads.
//! - `files`: every file aasp writes, with an explicit mode whatever the umask.
//! - `hardening`: no core dumps, no ptrace attach of a process holding keys.
//! - `metrics`: the one metrics registry (Prometheus text on `--metrics-listen`).
//! - `throttle`: log lines for errors that repeat, one per interval per call site.
//! - `azure`: MAA, identity, Managed HSM / Key Vault, the key unwrap, release policies.
//! - `kbs`: the Trustee Key Broker Service client (RCAR, sessions, TEE key, JWE resources).
//! - `provision`: the secret flow (attest → token → release → unwrap), caches, layer keys.
//! - `service`: the gRPC services and the SKR REST API.
//! - `encfs`: encrypted remote filesystems: `EncfsSideCarArgs`, LUKS2, sector crypto, images,
//!   blob storage, FUSE and loop mounts.
//! - `emulator`: the local Azure stack for development and tests.
//! - `proto`: the generated gRPC types of `proto/`.

#![deny(unsafe_code)]

pub mod azure;
pub mod cli;
pub mod echo;
pub mod emulator;
pub mod encfs;
pub mod env;
pub mod files;
pub mod hardening;
pub mod http;
pub mod kbs;
pub mod metrics;
pub mod proto;
pub mod provision;
pub mod service;
pub mod snp;
pub mod throttle;
