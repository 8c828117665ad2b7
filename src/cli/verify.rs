//! `aasp verify`: offline verification of any report.

use super::{read_input, ChainArgs};
use crate::snp::cert::Cert;
use crate::snp::evidence::load_report;
use crate::snp::report::ReportView;
use crate::snp::verify::{verify_report_with, Chain, MinTcb, Requirements, Verification};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The report: raw 1184 bytes, hex text, or an evidence JSON document
    /// ({"SnpReport","VcekCertChain",...}, as `aasp report --format evidence` and MAA use). `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// The signing certificate (VCEK or VLEK), DER or PEM. Default: the one in the evidence.
    #[arg(long, value_name = "FILE")]
    vcek: Option<PathBuf>,
    /// PEM of the intermediate (ASK or ASVK) and optionally the ARK. Default: the evidence's
    /// chain, else AMD's embedded certificates. The ARK must always be a trusted root.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// Verify as of this time (RFC 3339, e.g. 2026-03-25T00:00:00Z) instead of now: certificate
    /// validity is checked at this instant.
    #[arg(long, value_name = "RFC3339|YYYY-MM-DD", value_parser = parse_rfc3339)]
    at: Option<u64>,
    /// PEM file of additional trusted ARKs (for example a simulator's `ark.pem`).
    #[arg(long, value_name = "FILE")]
    trust_root: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    #[command(flatten)]
    requirements: RequirementArgs,
}

/// The `--help` heading of the requirement options (and of `serve --self-check`).
pub const REQUIREMENTS: &str = "Requirements on the report";

/// Optional requirements on the platform and guest, checked after authenticity.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = REQUIREMENTS)]
pub struct RequirementArgs {
    /// Minimum reported TCB per component, e.g. bootloader=3,tee=0,snp=8,microcode=115
    /// (also bl, ucode, and fmc on Turin); components not named may be anything.
    #[arg(long, value_name = "COMPONENTS", value_parser = clap::value_parser!(MinTcb))]
    pub min_tcb: Option<MinTcb>,
    /// Highest VMPL allowed (0 is the most privileged level).
    #[arg(long, value_name = "N")]
    pub max_vmpl: Option<u32>,
    /// Refuse a platform with SMT (simultaneous multithreading) enabled.
    #[arg(long)]
    pub deny_smt: bool,
    /// Refuse a guest whose policy allows a migration agent (MIGRATE_MA).
    #[arg(long)]
    pub deny_migration_agent: bool,
}

impl RequirementArgs {
    pub fn requirements(&self) -> Requirements {
        Requirements {
            min_tcb: self.min_tcb,
            max_vmpl: self.max_vmpl,
            deny_smt: self.deny_smt,
            deny_migration_agent: self.deny_migration_agent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// An RFC 3339 time, or a plain date `YYYY-MM-DD` (midnight UTC).
fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let date_only = time::macros::format_description!("[year]-[month]-[day]");
    let t = match time::Date::parse(s.trim(), &date_only) {
        Ok(date) => date.midnight().assume_utc(),
        Err(_) => {
            time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    format!(
                        "not an RFC 3339 time (2024-05-01T00:00:00Z) or a date (2024-05-01): {e}"
                    )
                })?
        }
    };
    u64::try_from(t.unix_timestamp()).map_err(|_| "times before 1970 are not supported".into())
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub fn run(args: VerifyArgs) -> Result<ExitCode, String> {
    let loaded = load_report(&read_input(&args.report)?).map_err(|e| e.to_string())?;
    let mut certs: Vec<Cert> = Vec::new();
    if let Some(evidence) = &loaded.evidence {
        if !evidence.cert_chain_pem.trim().is_empty() {
            certs.extend(
                Cert::from_pem_bundle(evidence.cert_chain_pem.as_bytes())
                    .map_err(|e| format!("evidence chain: {e}"))?,
            );
        }
    }
    if let Some(path) = &args.chain {
        // An explicit chain replaces the evidence's intermediate and root, not its signer.
        certs.retain(|c| {
            matches!(
                c.role(),
                crate::snp::cert::Role::Vcek | crate::snp::cert::Role::Vlek
            )
        });
        certs.extend(
            Cert::from_pem_bundle(&read_input(path)?)
                .map_err(|e| format!("--chain {}: {e}", path.display()))?,
        );
    }
    if let Some(path) = &args.vcek {
        certs.retain(|c| {
            !matches!(
                c.role(),
                crate::snp::cert::Role::Vcek | crate::snp::cert::Role::Vlek
            )
        });
        certs.push(
            Cert::from_der_or_pem(&read_input(path)?)
                .map_err(|e| format!("--vcek {}: {e}", path.display()))?,
        );
    }
    let chain = Chain::from_certs(certs)
        .map_err(|e| format!("{e}: give --vcek, or an evidence document that holds the chain"))?;
    let trust = ChainArgs {
        cert_source: crate::snp::chain::CertSourceKind::Auto,
        cert_endpoint: None,
        trust_root: args.trust_root.clone(),
    }
    .trust_store(None)?;
    let verification = verify_report_with(
        &loaded.report,
        &chain,
        &trust,
        args.at.unwrap_or_else(now_unix),
        &args.requirements.requirements(),
    );
    print_verification(&loaded.report, &verification, args.format)?;
    Ok(exit_code(&verification))
}

pub fn exit_code(verification: &Verification) -> ExitCode {
    if verification.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn print_verification(
    report: &crate::snp::AttestationReport,
    v: &Verification,
    format: OutputFormat,
) -> Result<(), String> {
    match format {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "verified": v.passed(),
                "checks": v.checks,
                "report": ReportView::from(report),
            });
            super::out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())?;
        }
        OutputFormat::Text => print_checks(v)?,
    }
    Ok(())
}

pub fn print_checks(v: &Verification) -> Result<(), String> {
    for check in &v.checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        super::out!("[{mark}] {}: {}", check.name, check.detail)?;
    }
    super::out!(
        "{}",
        if v.passed() {
            "verified"
        } else {
            "NOT verified"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn at_takes_a_date_or_an_rfc3339_time() {
        assert_eq!(parse_rfc3339("2024-05-01").unwrap(), 1_714_521_600);
        assert_eq!(
            parse_rfc3339("2024-05-01T00:00:00Z").unwrap(),
            1_714_521_600
        );
        assert!(parse_rfc3339("2024-13-01").is_err());
        assert!(parse_rfc3339("yesterday")
            .unwrap_err()
            .contains("2024-05-01"));
    }
}
