//! `aasp kbs`: the Trustee KBS backend from the command line: fetch a resource (attest + get),
//! and JWE tools for scripts and interop tests (make a TEE key, encrypt, decrypt).

use super::read_input;
use crate::kbs::jwe::{encrypt, KeyAlgorithm, TeeKeyPair, TeePubKey};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum KbsCommand {
    /// Attest to the configured Trustee KBS (RCAR) and print a resource's plaintext: for scripts.
    GetResource {
        /// `kbs:///<repository>/<type>/<tag>`.
        uri: String,
        /// Where to write the resource (0600; not onto a link or a non-regular file); without
        /// it, or with `-`, standard output, which must not be a terminal (raw bytes).
        #[arg(long = "out", value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        backend: Box<super::serve::BackendArgs>,
    },
    /// Make a TEE key pair: writes the private key PEM (as GetToken("kbs") returns it in
    /// `tee_keypair`) to --out and prints the public JWK (the `tee-pubkey` of an attestation).
    Keygen {
        /// ECDH-ES+A256KW (P-256), ECDH-ES+A256KW-P521 or RSA-OAEP-256.
        #[arg(long, default_value = "ECDH-ES+A256KW")]
        alg: KeyAlgorithm,
        /// Where to write the private key PEM (0600; not onto a link or a non-regular file).
        #[arg(long = "out", value_name = "FILE")]
        output: PathBuf,
    },
    /// Encrypt standard input to a TEE public key (JWK file), as a KBS does: prints the
    /// flattened JSON JWE (A256GCM).
    Encrypt {
        /// The TEE public key as a JWK (what `aasp kbs keygen` prints).
        #[arg(long, value_name = "FILE")]
        jwk: PathBuf,
    },
    /// Decrypt a KBS resource (flattened JSON JWE on standard input) with a TEE private key
    /// (PEM: PKCS#8, SEC1 or PKCS#1); writes the plaintext to standard output.
    Decrypt {
        /// The TEE private key PEM (PKCS#8, SEC1 or PKCS#1).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where to write the plaintext (0600); without it, or with `-`, standard output, which
        /// must not be a terminal (raw bytes).
        #[arg(long = "out", value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub async fn run(command: KbsCommand) -> Result<ExitCode, String> {
    match command {
        KbsCommand::GetResource {
            uri,
            output,
            backend,
        } => {
            let backend = backend.build_for_command()?;
            let plaintext = backend
                .provisioner
                .kbs_resource(&uri)
                .await
                .map_err(|e| e.to_string())?;
            write_secret(output.as_deref(), &plaintext)?;
        }
        KbsCommand::Keygen { alg, output } => {
            let pair = TeeKeyPair::generate(alg).map_err(|e| e.to_string())?;
            let pem = pair.private_pem().map_err(|e| e.to_string())?;
            write_private(&output, pem.as_bytes())?;
            let public = serde_json::to_string(&pair.public()).map_err(|e| e.to_string())?;
            say!("{public}");
        }
        KbsCommand::Encrypt { jwk } => {
            let public: TeePubKey = serde_json::from_slice(&read_input(&jwk)?)
                .map_err(|e| format!("{}: not a TEE public JWK: {e}", jwk.display()))?;
            let plaintext = zeroize::Zeroizing::new(read_input(std::path::Path::new("-"))?);
            let jwe = encrypt(&public, &plaintext).map_err(|e| e.to_string())?;
            say!("{jwe}");
        }
        KbsCommand::Decrypt { key, output } => {
            let pem = zeroize::Zeroizing::new(read_input(&key)?);
            let pem = std::str::from_utf8(&pem)
                .map_err(|_| format!("{}: not PEM text", key.display()))?;
            let pair = TeeKeyPair::from_pem(pem).map_err(|e| e.to_string())?;
            let jwe = read_input(std::path::Path::new("-"))?;
            let plaintext = pair.decrypt(&jwe).map_err(|e| e.to_string())?;
            write_secret(output.as_deref(), &plaintext)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Plaintext resource bytes: to `--out` (owner-only) or standard output, never a terminal.
fn write_secret(output: Option<&std::path::Path>, bytes: &[u8]) -> Result<(), String> {
    crate::files::write_output(output, bytes, true, crate::files::Mode::Private)
        .map_err(|e| e.to_string())
}

/// A private key file: owner-only whatever the umask or an existing file's mode.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    crate::files::write_private(path, bytes).map_err(|e| e.to_string())
}
