//! Every environment variable aasp reads, in one place. `AASP_*` variables mirror a `--flag`
//! (clap reads them through `#[arg(env = ...)]`); the others are the platform's or the upstream
//! sidecars' names, accepted for compatibility.

/// `--state-dir`: simulator identity, emulator CA and keys.
pub const AASP_STATE_DIR: &str = "AASP_STATE_DIR";
/// `--attester`: `auto`, `sev-guest`, `sev` or `sim`.
pub const AASP_ATTESTER: &str = "AASP_ATTESTER";
/// `--cert-source`: where the VCEK chain comes from.
pub const AASP_CERT_SOURCE: &str = "AASP_CERT_SOURCE";
/// `--cert-endpoint`: the chain source's endpoint.
pub const AASP_CERT_ENDPOINT: &str = "AASP_CERT_ENDPOINT";
/// `--extra-ca`: PEM file of additional trusted CAs for outbound HTTPS.
pub const AASP_EXTRA_CA: &str = "AASP_EXTRA_CA";
/// `--trust-root`: PEM file of additional trusted ARKs (for example the simulator's).
pub const AASP_TRUST_ROOT: &str = "AASP_TRUST_ROOT";

/// The SKR sidecar's configuration: standard base64 of its JSON.
pub const SKR_SIDECAR_ARGS: &str = "SkrSideCarArgs";
/// The AASP sidecar's name for the same configuration.
pub const AASP_SIDECAR_ARGS: &str = "AaspSideCarArgs";
/// `--shutdown-grace`: seconds in-flight calls may take after SIGTERM/SIGINT.
pub const AASP_SHUTDOWN_GRACE: &str = "AASP_SHUTDOWN_GRACE";
/// `--provider-name`: extra ocicrypt provider names, comma-separated.
pub const AASP_PROVIDER_NAME: &str = "AASP_PROVIDER_NAME";
/// `aasp skr`: the SKR sidecar's port (its `/skr.sh` reads `Port`), 8080 by default.
pub const SKR_PORT: &str = "Port";
/// `aasp skr`: `grpc` for gRPC, anything else for the REST API (the sidecar's `ServerType`).
pub const SKR_SERVER_TYPE: &str = "ServerType";
/// `aasp skr`: the sidecar's log level (`LogLevel`: trace … panic).
pub const SKR_LOG_LEVEL: &str = "LogLevel";
/// `aasp skr`: the sidecar's log file (`LogFile`), appended to.
pub const SKR_LOG_FILE: &str = "LogFile";

/// Directory of the security context Azure mounts into a confidential container.
pub const UVM_SECURITY_CONTEXT_DIR: &str = "UVM_SECURITY_CONTEXT_DIR";
/// Legacy: base64 of the security policy, before the security-context directory existed.
pub const UVM_SECURITY_POLICY: &str = "UVM_SECURITY_POLICY";
/// Legacy: base64 of the THIM certification document.
pub const UVM_HOST_AMD_CERTIFICATE: &str = "UVM_HOST_AMD_CERTIFICATE";
/// Legacy: base64 of the UVM reference info (COSE_Sign1).
pub const UVM_REFERENCE_INFO: &str = "UVM_REFERENCE_INFO";
/// `--listen`: gRPC listeners, comma-separated (`host:port` or `unix:///path`).
pub const AASP_LISTEN: &str = "AASP_LISTEN";
/// `--allow-remote`: permit non-loopback listeners.
pub const AASP_ALLOW_REMOTE: &str = "AASP_ALLOW_REMOTE";
/// `--maa-endpoint`: the default MAA.
pub const AASP_MAA_ENDPOINT: &str = "AASP_MAA_ENDPOINT";
/// `--keys-dir`: key-info files for keyprovider key references.
pub const AASP_KEYS_DIR: &str = "AASP_KEYS_DIR";
/// `--imds-endpoint`: IMDS base URL for managed identity.
pub const AASP_IMDS_ENDPOINT: &str = "AASP_IMDS_ENDPOINT";
/// `--client-id`: user-assigned managed identity.
pub const AASP_CLIENT_ID: &str = "AASP_CLIENT_ID";
/// `--access-token-file`: a KMS access token in a file (secrets come from files, not values).
pub const AASP_ACCESS_TOKEN_FILE: &str = "AASP_ACCESS_TOKEN_FILE";
/// `--cache-ttl`: seconds released keys and tokens stay cached (0 = off).
pub const AASP_CACHE_TTL: &str = "AASP_CACHE_TTL";
/// `--rest-listen`: address of the SKR-sidecar REST API (off when unset).
pub const AASP_REST_LISTEN: &str = "AASP_REST_LISTEN";
/// `--metrics-listen`: address of the Prometheus `/metrics` endpoint (off when unset).
pub const AASP_METRICS_LISTEN: &str = "AASP_METRICS_LISTEN";
/// `--ttrpc-listen`: Unix sockets serving the attestation-agent API over ttrpc (Kata / CoCo).
pub const AASP_TTRPC_LISTEN: &str = "AASP_TTRPC_LISTEN";
/// `--config`: an optional TOML file of options (see `cli/config.rs`).
pub const AASP_CONFIG: &str = "AASP_CONFIG";
/// `--log-format`: `text` or `json`.
pub const AASP_LOG_FORMAT: &str = "AASP_LOG_FORMAT";
/// `--decrypt-threads`: layer-key decrypts at once off the async workers (0 = on the async worker).
pub const AASP_DECRYPT_THREADS: &str = "AASP_DECRYPT_THREADS";
/// `--transfer-key-rotation`: seconds between transfer-key rotations (0 = never).
pub const AASP_TRANSFER_KEY_ROTATION: &str = "AASP_TRANSFER_KEY_ROTATION";
/// `--allow-core-dumps`: keep the process dumpable (core dumps, ptrace attach) for debugging.
pub const AASP_ALLOW_CORE_DUMPS: &str = "AASP_ALLOW_CORE_DUMPS";
/// `--allow-kms-host`: extra Managed HSM / Key Vault host patterns, comma-separated.
pub const AASP_ALLOW_KMS_HOST: &str = "AASP_ALLOW_KMS_HOST";
/// `--allow-maa-host`: extra MAA host patterns, comma-separated.
pub const AASP_ALLOW_MAA_HOST: &str = "AASP_ALLOW_MAA_HOST";
/// `--kbs-url`: the Trustee KBS base URL.
pub const AASP_KBS_URL: &str = "AASP_KBS_URL";
/// `--kbs-cert`: PEM file of the KBS certificate (or CA) to trust instead of the system roots.
pub const AASP_KBS_CERT: &str = "AASP_KBS_CERT";
/// `--kbs-max-resource`: the largest KBS resource body aasp reads, in bytes.
pub const AASP_KBS_MAX_RESOURCE: &str = "AASP_KBS_MAX_RESOURCE";
/// `--retry-budget`: seconds an upstream call keeps retrying when no RPC deadline bounds it.
pub const AASP_RETRY_BUDGET: &str = "AASP_RETRY_BUDGET";
/// `--kbs-key-algorithm`: the TEE key for KBS resources (`ECDH-ES+A256KW`, `ECDH-ES+A256KW-P521`
/// or `RSA-OAEP-256`).
pub const AASP_KBS_KEY_ALGORITHM: &str = "AASP_KBS_KEY_ALGORITHM";
/// `--aa-config`: an upstream attestation-agent config TOML (`[token_configs.kbs]`).
pub const AASP_AA_CONFIG: &str = "AASP_AA_CONFIG";
/// `--allow-insecure-kbs`: accept a plain `http://` KBS named by `AA_KBC_PARAMS` or the kernel
/// command line (the host's choice); an environment variable because kata-agent's command line
/// for the agent is fixed.
pub const AASP_ALLOW_INSECURE_KBS: &str = "AASP_ALLOW_INSECURE_KBS";
/// Upstream attestation agent's `<kbc>::<uri>` (`cc_kbc::https://kbs:8080`), read before the
/// kernel command line's `agent.aa_kbc_params=`.
pub const AA_KBC_PARAMS: &str = "AA_KBC_PARAMS";

/// `aasp encfs run`: the encfs sidecar's configuration, base64 of its JSON.
pub const ENCFS_SIDECAR_ARGS: &str = "EncfsSideCarArgs";
/// `--crypt`: `auto`, `kernel` (dm-crypt) or `userspace` (FUSE + loop).
pub const AASP_ENCFS_CRYPT: &str = "AASP_ENCFS_CRYPT";
/// `--cache-size`: block cache per encrypted filesystem (`64M`).
pub const AASP_ENCFS_CACHE_SIZE: &str = "AASP_ENCFS_CACHE_SIZE";
/// `--read-deadline`: seconds a storage call may take, retries included.
pub const AASP_ENCFS_READ_DEADLINE: &str = "AASP_ENCFS_READ_DEADLINE";
/// `--allow-storage-host`: extra storage host patterns bearer tokens may go to.
pub const AASP_ALLOW_STORAGE_HOST: &str = "AASP_ALLOW_STORAGE_HOST";
/// `--storage-token-file`: a storage access token in a file.
pub const AASP_STORAGE_TOKEN_FILE: &str = "AASP_STORAGE_TOKEN_FILE";
/// `--work-dir`: private directory of the encfs FUSE files.
pub const AASP_ENCFS_WORK_DIR: &str = "AASP_ENCFS_WORK_DIR";
