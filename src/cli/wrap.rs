//! `aasp wrap`: protect a secret (a layer key, a small credential) for an HSM key, offline.

use super::{read_input, TlsArgs};
use crate::azure::identity::{resource_for_host, IdentityProvider};
use crate::azure::jwk::KeyFamily;
use crate::azure::kms::KmsClient;
use crate::provision::layer::{resolve, wrap_rsa, WrappingKey};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The key: a key-info name (with --keys-dir), or https://<kms>/keys/<name>?maa=<maa-host>.
    #[arg(long, value_name = "REF")]
    key_ref: String,
    /// Directory of `<name>-info.json` files.
    #[arg(long, env = crate::env::AASP_KEYS_DIR, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// MAA endpoint, when the key reference names none.
    #[arg(long, value_name = "HOST")]
    maa: Option<String>,
    /// The secret to protect (`-` reads stdin). RSA-OAEP bounds its size: 190 bytes for
    /// RSA-2048, 318 for RSA-3072, 446 for RSA-4096.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Where to write base64(annotation JSON): the value keyprovider's `annotation` carries
    /// (not onto a link or a non-regular file); without it, or with `-`, standard output.
    #[arg(long = "out", value_name = "FILE")]
    output: Option<PathBuf>,
    /// For a KMS URL: file holding an access token (else workload identity, else IMDS).
    #[arg(long, value_name = "FILE")]
    access_token_file: Option<PathBuf>,
    /// For a KMS URL: IMDS base URL.
    #[arg(long, value_name = "URL")]
    imds_endpoint: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

pub async fn run(args: WrapArgs) -> Result<ExitCode, String> {
    let secret = zeroize::Zeroizing::new(read_input(&args.input)?);
    // Refused rather than warned about: an empty secret protects nothing, and it is nearly always
    // a mistake upstream of aasp (a wrong path, an empty pipe) that would otherwise surface only
    // inside the TEE, as an unwrapped secret of 0 bytes.
    if secret.is_empty() {
        return Err(format!(
            "--in {}: the secret is empty; write it to the file first (printf 'my secret' > FILE)",
            args.input.display()
        ));
    }
    let resolved = resolve(&args.key_ref, args.keys_dir.as_deref(), args.maa.as_deref()).map_err(
        |e| match e {
            crate::provision::Error::NoMaa { subject } => {
                format!("{subject}: pass --maa HOST, the MAA the TEE will attest to")
            }
            other => other.to_string(),
        },
    )?;
    let public = match &resolved.public {
        Some(public) => public.clone(),
        // A key-info file without a public key: say so before any network call (an oct key such
        // as demo-oct has none, and IMDS would only fail first).
        None if !args.key_ref.contains("://") => {
            return Err(format!(
                "key {:?}: its key-info file names no public_key_path, so it cannot be wrapped \
                 offline: only RSA keys with a public key can. An oct (AES) key such as demo-oct \
                 wraps only inside the TEE, through the WrapKey RPC",
                args.key_ref
            ));
        }
        None => {
            // Only the public half is needed: fetch it from the KMS.
            let (client, anchors) = args.tls.client_and_anchors()?;
            let source = super::identity_source(
                args.access_token_file.as_deref(),
                args.imds_endpoint.clone(),
                None,
            )?;
            let access = IdentityProvider::new(client.clone(), source, args.tls.retry_policy())
                .token(resource_for_host(resolved.key.key_url().host()))
                .await
                .map_err(|e| e.to_string())?;
            let bundle = KmsClient::new(client, anchors, args.tls.retry_policy())
                .get(resolved.key.key_url(), &access)
                .await
                .map_err(|e| e.to_string())?;
            if bundle.key.family().map_err(|e| e.to_string())? != KeyFamily::Rsa {
                return Err(format!(
                    "{} has key type {}: only RSA keys can be wrapped offline; an oct (AES) key wraps only inside the TEE, through the WrapKey RPC",
                    resolved.key, bundle.key.kty
                ));
            }
            let spki = bundle.key.rsa_public_spki().map_err(|e| e.to_string())?;
            WrappingKey::from_spki(&spki).map_err(|e| e.to_string())?
        }
    };
    let packet = wrap_rsa(&resolved, &public, &secret).map_err(|e| e.to_string())?;
    // The annotation travels with the image: public, but written with an explicit mode.
    crate::files::write_output(
        args.output.as_deref(),
        packet.to_annotation().as_bytes(),
        false,
        crate::files::Mode::Public,
    )
    .map_err(|e| e.to_string())?;
    let file = args.output.as_deref().filter(|p| p.as_os_str() != "-");
    let into = file.map_or_else(|| "standard output".into(), |p| p.display().to_string());
    eprintln!(
        "wrapped {} bytes for {} ({}) into {into}",
        secret.len(),
        resolved.key,
        packet.wrap_type,
    );
    // The way back, for an aasp inside the TEE (`aasp dev` stands in for one).
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "aasp".into());
    let annotation = file.map_or_else(|| "FILE".into(), |p| p.display().to_string());
    eprintln!(
        "unwrap it where aasp serves (add --target HOST:PORT if not 127.0.0.1:50000):\n  \
         {exe} call keyprovider.KeyProviderService/UnWrapKey --annotation {annotation} --decode"
    );
    Ok(ExitCode::SUCCESS)
}
