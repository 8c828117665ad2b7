//! aasp's integration tests, one module per area, linked into one binary: one link instead of
//! one per file is most of the suite's build time on a 2-core machine (cargo's own
//! `tests/testsuite` does the same). Tests share one simulator through `common`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

mod attestation_agent_cli;
mod azure_flow;
mod bounds_listeners;
mod bounds_readers;
mod cli;
mod cli_azure;
mod client_errors;
mod coco_real;
mod container_logs;
mod deploy;
mod dev_trust;
mod docs;
mod encfs_blob;
mod encfs_check;
mod encfs_deploy;
mod encfs_dev;
mod encfs_luks2;
mod encfs_mount;
mod first_hour;
mod hardening;
mod kbs_cli;
mod kbs_flow;
mod kbs_services;
mod log_echo;
mod parsers_never_panic;
mod resilience;
mod rest;
mod secrets_in_logs;
mod serve_process;
mod server_end;
mod server_limits;
mod services;
mod single_flight;
mod snp_sim;
mod snp_sources;
mod snp_vectors;
mod snp_verify_rules;
mod static_binary;
mod ttrpc;
mod untrusted_endpoints;
