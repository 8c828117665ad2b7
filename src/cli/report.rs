//! `aasp report`: a report from the attester, decoded, optionally verified.

use super::verify::{exit_code, now_unix, print_checks};
use super::{read_input, AttesterArgs, ChainArgs, TlsArgs};
use crate::snp::chain::attest;
use crate::snp::evidence::Evidence;
use crate::snp::report::{report_data_for_runtime, ReportView};
use crate::snp::verify::verify_report_with;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    attester: AttesterArgs,
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Runtime data to bind: report_data = SHA-256(data) followed by 32 zero bytes. `-` reads
    /// stdin. Without it report_data is all zeros.
    #[arg(long, value_name = "FILE")]
    runtime_data: Option<PathBuf>,
    /// Output: decoded `text` or `json`, the report as `hex` or `raw` bytes, or an `evidence`
    /// JSON document (report plus chain, the shape MAA accepts; needs the chain source).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Fetch the certificate chain and verify the report (AMD's roots, plus the simulator's
    /// root when `--attester sim`). Exits non-zero when verification fails.
    #[arg(long)]
    verify: bool,
    /// Requirements checked with --verify.
    #[command(flatten)]
    requirements: super::verify::RequirementArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
    Hex,
    Raw,
    Evidence,
}

pub async fn run(args: ReportArgs) -> Result<ExitCode, String> {
    let report_data = match &args.runtime_data {
        Some(path) => report_data_for_runtime(&read_input(path)?),
        None => [0u8; 64],
    };
    if !args.verify && args.requirements.requirements() != Default::default() {
        return Err(
            "--min-tcb, --max-vmpl, --deny-smt and --deny-migration-agent need --verify".into(),
        );
    }
    let attester = args.attester.open()?;
    if !(args.verify || args.format == ReportFormat::Evidence) {
        let (report, raw) = crate::snp::attester::fetch_report(&attester, report_data)
            .await
            .map_err(|e| e.to_string())?;
        print_report(&report, &raw, args.format, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.tls.client()?;
    let chains = args
        .chain
        .chain_cache(attester.as_ref(), &args.attester.state_dir(), &client)?;
    let attested = attest(&attester, &chains, report_data)
        .await
        .map_err(|e| e.to_string())?;
    let evidence = Evidence {
        report: attested.raw.clone(),
        cert_chain_pem: attested.endorsement.chain.to_pem(),
        uvm_endorsements: attested.endorsement.uvm_reference_info.clone(),
    };
    if !args.verify {
        print_report(
            &attested.report,
            &attested.raw,
            args.format,
            Some(&evidence),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let trust = args.chain.trust_store(attester.simulated_root())?;
    let verification = verify_report_with(
        &attested.report,
        &attested.endorsement.chain,
        &trust,
        now_unix(),
        &args.requirements.requirements(),
    );
    match args.format {
        ReportFormat::Json => {
            let doc = serde_json::json!({
                "attester": attester.name(),
                "chain_source": chains.describe(),
                "report": ReportView::from(&attested.report),
                "verified": verification.passed(),
                "checks": verification.checks,
            });
            super::out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())?;
        }
        ReportFormat::Text => {
            super::out!("{}", attested.report.to_string().trim_end())?;
            super::out!("chain source       {}", chains.describe())?;
            print_checks(&verification)?;
        }
        other => {
            print_report(&attested.report, &attested.raw, other, Some(&evidence))?;
            eprintln!(
                "verification: {}",
                if verification.passed() {
                    "verified"
                } else {
                    "NOT verified"
                }
            );
        }
    }
    Ok(exit_code(&verification))
}

fn print_report(
    report: &crate::snp::AttestationReport,
    raw: &[u8],
    format: ReportFormat,
    evidence: Option<&Evidence>,
) -> Result<(), String> {
    match format {
        ReportFormat::Text => super::out!("{}", report.to_string().trim_end())?,
        ReportFormat::Json => super::out!(
            "{}",
            serde_json::to_string_pretty(&ReportView::from(report)).unwrap_or_default()
        )?,
        ReportFormat::Hex => super::out!("{}", hex::encode(raw))?,
        ReportFormat::Raw => {
            crate::files::write_output(None, raw, true, crate::files::Mode::Public)
                .map_err(|e| e.to_string())?
        }
        ReportFormat::Evidence => match evidence {
            Some(evidence) => super::out!("{}", evidence.to_json())?,
            None => return Err("evidence output needs the certificate chain".into()),
        },
    }
    Ok(())
}
