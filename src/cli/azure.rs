//! `aasp emulate`, `aasp key` and `aasp policy`.

use super::{read_input, SimArgs};
use crate::azure::identity::{resource_for_host, IdentityProvider, IdentitySource};
use crate::azure::jwk::Jwk;
use crate::azure::kms::{KeySpec, KeyUrl, KmsClient};
use crate::azure::policy::{ReleasePolicy, UvmRequirement};
use crate::azure::Secret;
use crate::emulator::faults::Faults;
use crate::snp::attester::Attester;
use crate::snp::sim::Simulated;
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Address to serve HTTPS on (THIM, IMDS, Entra ID, MAA and Managed HSM on their real paths).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Allow a non-loopback --listen address.
    #[arg(long)]
    allow_remote: bool,
    /// Also name HOST in the TLS certificate (besides localhost and 127.0.0.1), for clients that
    /// reach the emulator by a host name of their own, e.g. from /etc/hosts; repeatable.
    #[arg(long, value_name = "HOST")]
    tls_name: Vec<String>,
    /// Inject faults, e.g. "status=503@0.2,latency=1500ms@0.1,malformed@0.05,drop@0.05"
    /// (kind[=value][@rate], rate 0..1, default 1).
    #[arg(long, value_parser = clap::value_parser!(Faults), default_value = "")]
    faults: Faults,
    /// Launch measurement (96 hex digits) MAA reports as `azure-compliant-uvm`; repeatable.
    /// Every other measurement gets `azure-non-compliant`. Default: the simulator's own.
    #[arg(long, value_name = "HEX", value_parser = super::parse_hex_array::<48>)]
    accept_measurement: Vec<[u8; 48]>,
    /// Seed the emulated Trustee KBS: `<repository>/<type>/<tag>=FILE`; repeatable. The KBS
    /// releases resources to the measurements MAA calls compliant.
    #[arg(long, value_name = "PATH=FILE")]
    kbs_resource: Vec<String>,
    #[command(flatten)]
    sim: SimArgs,
}

pub async fn emulate(args: EmulateArgs) -> Result<ExitCode, String> {
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        return Err(format!(
            "--listen {} is not a loopback address; add --allow-remote to serve it",
            args.listen
        ));
    }
    // Before the simulator's keys are made: a taken port ends here, named.
    super::probe_port(
        args.listen,
        &format!("pass --listen {}:<a free port>", args.listen.ip()),
    )?;
    // The emulated platform hosts the simulated device: THIM serves its chain and MAA trusts
    // its root.
    let sim = Simulated::open(&args.sim.sim_options()?).map_err(|e| e.to_string())?;
    let mut config = crate::emulator::Config::new(args.sim.state_dir());
    config.listen = args.listen;
    config.tls_names = args.tls_name;
    config.extra_roots = sim.simulated_root().into_iter().collect();
    config.thim_json = Some(sim.thim_json());
    config.accepted_measurements = accepted_measurements(args.accept_measurement, &sim);
    config.faults = args.faults;
    config.kbs.policy.measurements = config.accepted_measurements.clone();
    let running = crate::emulator::start(config)
        .await
        .map_err(|e| e.to_string())?;
    for seed in &args.kbs_resource {
        let (path, file) = seed
            .split_once('=')
            .ok_or_else(|| format!("--kbs-resource {seed:?}: expected <repo>/<type>/<tag>=FILE"))?;
        let value = zeroize::Zeroizing::new(
            std::fs::read(file).map_err(|e| format!("--kbs-resource {file}: {e}"))?,
        );
        running
            .kbs
            .put_resource(path, &value)
            .map_err(|e| format!("--kbs-resource {path}: {e}"))?;
    }
    say!("aasp emulator listening on {}", running.url);
    say!(
        "  dev CA (pass as --extra-ca):  {}",
        running.ca_path.display()
    );
    say!(
        "  THIM:     {}/metadata/THIM/amd/certification",
        running.url
    );
    say!("  IMDS:     {}/metadata/identity/oauth2/token", running.url);
    say!("  Entra ID: {}/<tenant>/oauth2/v2.0/token", running.url);
    say!(
        "  MAA:      {}/attest/SevSnpVm   (authority {})",
        running.url,
        running.url
    );
    say!("  MHSM:     {}/keys/<name>", running.url);
    say!(
        "  KBS:      {}/kbs/v0   ({} seeded resource(s))",
        running.url,
        args.kbs_resource.len()
    );
    say!("  simulated host_data: {}", hex::encode(sim.host_data()));
    say!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    running.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// The measurements the emulated MAA calls compliant: those given, else the simulator's own, so
/// that the development stack works and any other guest image is refused.
pub fn accepted_measurements(given: Vec<[u8; 48]>, sim: &Simulated) -> Vec<[u8; 48]> {
    if given.is_empty() {
        vec![sim.measurement()]
    } else {
        given
    }
}

/// How `aasp key` reaches the KMS and authenticates.
#[derive(Debug, Args)]
pub struct KmsArgs {
    /// Managed HSM or Key Vault endpoint, e.g. myhsm.managedhsm.azure.net (or https://host:port).
    #[arg(long, value_name = "HOST")]
    kms: String,
    /// Key name.
    #[arg(long)]
    name: String,
    /// File holding an access token (otherwise workload identity when AKS set it up, else IMDS).
    #[arg(long, value_name = "FILE")]
    access_token_file: Option<PathBuf>,
    /// IMDS base URL [default: http://169.254.169.254].
    #[arg(long, value_name = "URL")]
    imds_endpoint: Option<String>,
    /// Client id of a user-assigned managed identity.
    #[arg(long)]
    client_id: Option<String>,
    #[command(flatten)]
    tls: super::TlsArgs,
}

impl KmsArgs {
    fn identity_source(&self) -> Result<IdentitySource, String> {
        super::identity_source(
            self.access_token_file.as_deref(),
            self.imds_endpoint.clone(),
            self.client_id.clone(),
        )
    }

    fn key(&self) -> Result<KeyUrl, String> {
        KeyUrl::new(&self.kms, &self.name).map_err(|e| e.to_string())
    }

    async fn connect(&self) -> Result<(KmsClient, Secret), String> {
        let (client, anchors) = self.tls.client_and_anchors()?;
        let identity = IdentityProvider::new(
            client.clone(),
            self.identity_source()?,
            self.tls.retry_policy(),
        );
        let access = identity
            .token(resource_for_host(self.key()?.host()))
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            KmsClient::new(client, anchors, self.tls.retry_policy()),
            access,
        ))
    }
}

/// What a generated release policy requires of the guest's launched code besides host_data.
#[derive(Debug, Args)]
pub struct UvmArgs {
    /// The `x-ms-compliance-status` MAA must give the UVM: azure-compliant-uvm (Container
    /// Instances) or azure-signed-katacc-uvm (AKS Kata confidential containers).
    #[arg(long, value_enum, value_name = "STATUS", default_value_t = ComplianceStatus::AzureCompliantUvm)]
    compliance_status: ComplianceStatus,
    /// Require this exact launch measurement (96 hex digits, `x-ms-sevsnpvm-launchmeasurement`)
    /// instead of a compliance status, for a UVM that MAA does not know.
    #[arg(long, value_name = "HEX", conflicts_with = "compliance_status")]
    launch_measurement: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ComplianceStatus {
    AzureCompliantUvm,
    AzureSignedKataccUvm,
}

impl UvmArgs {
    fn requirement(&self) -> Result<UvmRequirement, String> {
        if let Some(text) = &self.launch_measurement {
            return match hex::decode(text) {
                Ok(bytes) if bytes.len() == 48 => {
                    Ok(UvmRequirement::LaunchMeasurement(text.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "--launch-measurement must be 96 hex digits (a SHA-384), got {text:?}"
                )),
            };
        }
        Ok(match self.compliance_status {
            ComplianceStatus::AzureCompliantUvm => UvmRequirement::CompliantUvm,
            ComplianceStatus::AzureSignedKataccUvm => UvmRequirement::SignedKataccUvm,
        })
    }
}

/// The release policy a key is created with.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Release policy JSON file. Without it, one is generated from --maa and --hostdata.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["maa", "hostdata", "launch_measurement"])]
    policy: Option<PathBuf>,
    /// MAA endpoint whose tokens may release the key (generated policy).
    #[arg(long, value_name = "HOST", requires = "hostdata")]
    maa: Option<String>,
    /// host_data (security policy digest, 64 hex digits) the workload must run under.
    #[arg(long, value_name = "HEX", requires = "maa")]
    hostdata: Option<String>,
    #[command(flatten)]
    uvm: UvmArgs,
}

impl PolicyArgs {
    fn policy(&self) -> Result<ReleasePolicy, String> {
        match (&self.policy, &self.maa, &self.hostdata) {
            (Some(path), _, _) => checked_policy_file(path),
            (None, Some(maa), Some(hostdata)) => Ok(ReleasePolicy::for_workload(
                maa,
                &check_hostdata(hostdata)?,
                &self.uvm.requirement()?,
                &[],
            )),
            _ => Err("give --policy FILE, or --maa HOST and --hostdata HEX".into()),
        }
    }

    fn given(&self) -> bool {
        self.policy.is_some() || self.maa.is_some() || self.hostdata.is_some()
    }
}

/// A release policy file, refused when it is malformed or has an empty group, with a warning on
/// standard error for each rule that would release to any UVM.
fn checked_policy_file(path: &std::path::Path) -> Result<ReleasePolicy, String> {
    let policy = ReleasePolicy::parse(&read_input(path)?)
        .and_then(|p| p.validate().map(|()| p))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for warning in policy.any_uvm_warnings() {
        eprintln!("warning: {}: {warning}", path.display());
    }
    Ok(policy)
}

fn check_hostdata(hex_text: &str) -> Result<String, String> {
    match hex::decode(hex_text) {
        Ok(bytes) if bytes.len() == 32 => Ok(hex_text.to_ascii_lowercase()),
        _ => Err(format!(
            "--hostdata must be 64 hex digits (a SHA-256), got {hex_text:?}"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an exportable HSM key bound to a release policy (or, with --non-exportable, a key
    /// that never leaves the HSM).
    Create {
        #[command(flatten)]
        kms: KmsArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Create the key non-exportable, without a release policy: it can never be released.
        #[arg(long)]
        non_exportable: bool,
        /// Key type.
        #[arg(long, value_enum, default_value_t = KeyType::Rsa)]
        kty: KeyType,
        /// RSA: 2048, 3072 or 4096 [default 3072]; oct: 256.
        #[arg(long)]
        size: Option<u32>,
        /// EC curve.
        #[arg(long, default_value = "P-384")]
        curve: String,
    },
    /// Import key material (a private JWK file) as an exportable HSM key with a release policy.
    Import {
        #[command(flatten)]
        kms: KmsArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Private JWK file (RSA, EC or oct).
        #[arg(long, value_name = "FILE")]
        jwk: PathBuf,
    },
    /// Show a key's public part and release policy.
    Show {
        #[command(flatten)]
        kms: KmsArgs,
    },
    /// Perform a secure key release into this TEE (attest, MAA token, release, unwrap) and print
    /// the released key's id, type and a SHA-256 fingerprint of its material.
    Release {
        #[command(flatten)]
        kms: KmsArgs,
        /// MAA endpoint to attest with.
        #[arg(long, value_name = "HOST")]
        maa: String,
        #[command(flatten)]
        attester: super::AttesterArgs,
        #[command(flatten)]
        chain: super::ChainArgs,
        /// Print the released private key (JWK) itself. It is secret: use only for development.
        #[arg(long)]
        show_secret: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyType {
    Rsa,
    Oct,
    Ec,
}

pub async fn key(command: KeyCommand) -> Result<ExitCode, String> {
    let bundle = match command {
        KeyCommand::Release {
            kms,
            maa,
            attester,
            chain,
            show_secret,
        } => {
            return release(kms, &maa, attester, chain, show_secret).await;
        }
        KeyCommand::Create {
            kms,
            policy,
            non_exportable,
            kty,
            size,
            curve,
        } => {
            let spec = match kty {
                KeyType::Rsa => KeySpec::Rsa {
                    bits: size.unwrap_or(3072),
                },
                KeyType::Oct => KeySpec::Oct {
                    bits: size.unwrap_or(256),
                },
                KeyType::Ec => KeySpec::Ec { curve },
            };
            let policy = match (non_exportable, policy.given()) {
                (true, true) => {
                    return Err(
                        "--non-exportable keys have no release policy: drop --policy, --maa and --hostdata".into(),
                    )
                }
                (true, false) => None,
                (false, _) => Some(policy.policy()?),
            };
            let (client, access) = kms.connect().await?;
            client
                .create(&kms.key()?, &spec, policy.as_ref(), &access)
                .await
        }
        KeyCommand::Import { kms, policy, jwk } => {
            let material: Jwk = serde_json::from_slice(&zeroize::Zeroizing::new(read_input(&jwk)?))
                .map_err(|e| format!("{}: not a JWK: {e}", jwk.display()))?;
            let policy = policy.policy()?;
            let (client, access) = kms.connect().await?;
            client
                .import(&kms.key()?, &material, &policy, &access)
                .await
        }
        KeyCommand::Show { kms } => {
            let (client, access) = kms.connect().await?;
            client.get(&kms.key()?, &access).await
        }
    }
    .map_err(|e| e.to_string())?;
    super::out!(
        "{}",
        serde_json::to_string_pretty(&bundle).map_err(|e| e.to_string())?
    )?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print host_data for a security policy: hex SHA-256 of its text (a base64 file, as in
    /// `security-policy-base64` or an ARM ccePolicy, is decoded first).
    Digest {
        /// The security policy (Rego text, its base64, or an ARM ccePolicy); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        security_policy: PathBuf,
    },
    /// Print a release policy that binds a key to an MAA and a security-policy digest.
    Release {
        /// MAA endpoint (its tokens' issuer).
        #[arg(long, value_name = "HOST")]
        maa: String,
        /// host_data the workload must run under (64 hex digits).
        #[arg(long, value_name = "HEX")]
        hostdata: String,
        /// Extra claim the token must carry, as claim=value; repeatable.
        #[arg(long, value_name = "CLAIM=VALUE", value_parser = parse_claim)]
        claim: Vec<(String, String)>,
        #[command(flatten)]
        uvm: UvmArgs,
    },
    /// Check a release policy file: refuse it when malformed or when a group is empty, and warn
    /// (standard error) about every rule that would release to any UVM.
    Check {
        /// The release policy JSON (`{"version","anyOf":[...]}`) to check.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
    },
}

fn parse_claim(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{s:?} is not claim=value"))
}

/// The text of a security policy file, decoding base64 when the whole file is base64.
pub fn security_policy_text(bytes: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let trimmed: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    match base64::engine::general_purpose::STANDARD.decode(&trimmed) {
        Ok(decoded) if !trimmed.is_empty() && std::str::from_utf8(&decoded).is_ok() => decoded,
        _ => bytes.to_vec(),
    }
}

pub fn policy(command: PolicyCommand) -> Result<ExitCode, String> {
    match command {
        PolicyCommand::Digest { security_policy } => {
            let text = security_policy_text(&read_input(&security_policy)?);
            super::out!("{}", hex::encode(Sha256::digest(&text)))?;
        }
        PolicyCommand::Check { policy } => {
            let policy = checked_policy_file(&policy)?;
            if policy.any_uvm_warnings().is_empty() {
                super::out!("ok: every rule requires a compliant UVM or a launch measurement")?;
            } else {
                super::out!("valid, but releases to any UVM (see the warnings)")?;
            }
        }
        PolicyCommand::Release {
            maa,
            hostdata,
            claim,
            uvm,
        } => {
            let policy = ReleasePolicy::for_workload(
                &maa,
                &check_hostdata(&hostdata)?,
                &uvm.requirement()?,
                &claim,
            );
            // Extra claims cannot loosen the generated rule, but say so if one ever does.
            for warning in policy.any_uvm_warnings() {
                eprintln!("warning: {warning}");
            }
            super::out!(
                "{}",
                serde_json::to_string_pretty(&policy).map_err(|e| e.to_string())?
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn release(
    kms: KmsArgs,
    maa: &str,
    attester_args: super::AttesterArgs,
    chain_args: super::ChainArgs,
    show_secret: bool,
) -> Result<ExitCode, String> {
    let attester = attester_args.open()?;
    let (client, anchors) = kms.tls.client_and_anchors()?;
    let chains = chain_args.chain_cache(attester.as_ref(), &attester_args.state_dir(), &client)?;
    let source = kms.identity_source()?;
    let retry = kms.tls.retry_policy();
    let provisioner = crate::provision::Provisioner::new(crate::provision::ProvisionerParts {
        attester,
        chains: std::sync::Arc::new(chains),
        identity: std::sync::Arc::new(IdentityProvider::new(client.clone(), source, retry)),
        kms: std::sync::Arc::new(KmsClient::new(client.clone(), anchors, retry)),
        http: client,
        retry,
        cache_ttl: std::time::Duration::ZERO,
        // The operator named both on the command line: they are allowed as given.
        allow: crate::provision::allow::AllowList::with(
            std::slice::from_ref(&kms.kms),
            &[maa.to_owned()],
        )?,
    })
    .map_err(|e| e.to_string())?;
    let key = crate::provision::KeyRef::from_key_url(kms.key()?, maa).map_err(|e| e.to_string())?;
    let released = provisioner.release(&key).await.map_err(|e| e.to_string())?;
    let jwk = &released.jwk;
    if show_secret {
        super::out!(
            "{}",
            serde_json::to_string_pretty(jwk).map_err(|e| e.to_string())?
        )?;
    } else {
        let material = serde_json::to_vec(jwk).map_err(|e| e.to_string())?;
        let fingerprint = hex::encode(Sha256::digest(zeroize::Zeroizing::new(material)));
        let summary = serde_json::json!({ "released": true, "kid": jwk.kid, "kty": jwk.kty, "jwk_sha256": fingerprint });
        super::out!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
