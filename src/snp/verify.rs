//! Verification of a report against its certificate chain and pinned roots.
//!
//! Every check is recorded, passed or not, so a user sees exactly which one failed
//! (`aasp verify` prints them); `Verification::into_result` turns the list into an error that
//! names the failures.

use crate::snp::cert::{Cert, Role};
use crate::snp::report::{AttestationReport, SigningKey, SIG_ALGO_ECDSA_P384_SHA384};
use serde::Serialize;

/// `KEY_INFO` bit 1, MASK_CHIP_KEY (SEV-SNP ABI, ATTESTATION_REPORT): when set, the firmware
/// writes zeros into SIGNATURE instead of signing. Such a report proves nothing.
pub const KEY_INFO_MASK_CHIP_KEY: u32 = 1 << 1;
/// Guest policy bit 18, MIGRATE_MA: the guest may be associated with a migration agent, which
/// can export its memory.
pub const POLICY_MIGRATE_MA_BIT: u64 = 1 << 18;
/// `PLATFORM_INFO` bit 0, SMT_EN: simultaneous multithreading is enabled on the platform.
pub const PLATFORM_SMT_EN_BIT: u64 = 1;

const EMBEDDED_AMD_BUNDLES: [&str; 3] = [
    include_str!("roots/milan-ask-ark-asvk.pem"),
    include_str!("roots/genoa-ask-ark-asvk.pem"),
    include_str!("roots/turin-ask-ark-asvk.pem"),
];

/// The roots a chain may end in, and the intermediates (ASK, ASVK) to use when a chain omits
/// them. Only ARKs listed here are trusted: a chain's own ARK is never taken on its word.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    arks: Vec<Cert>,
    intermediates: Vec<Cert>,
}

impl TrustStore {
    /// AMD's Milan, Genoa and Turin roots, as published by AMD's KDS.
    pub fn amd() -> Self {
        let mut store = TrustStore::default();
        for bundle in EMBEDDED_AMD_BUNDLES {
            // The bundles are compiled in and covered by tests; a parse failure cannot happen at
            // run time, and skipping one would only make verification stricter.
            for cert in Cert::from_pem_bundle(bundle.as_bytes()).unwrap_or_default() {
                store.add(cert);
            }
        }
        store
    }

    /// Adds a certificate: ARKs become trusted roots, ASKs/ASVKs become fallback intermediates.
    pub fn add(&mut self, cert: Cert) {
        match cert.role() {
            Role::Ark => self.arks.push(cert),
            Role::Ask | Role::Asvk => self.intermediates.push(cert),
            _ => {}
        }
    }

    /// AMD's roots plus explicitly configured ones (such as the simulator's ARK).
    pub fn amd_and(extra: impl IntoIterator<Item = Cert>) -> Self {
        let mut store = Self::amd();
        for cert in extra {
            store.add(cert);
        }
        store
    }

    fn intermediate_named<'a>(&'a self, cn: &'a str) -> impl Iterator<Item = &'a Cert> + 'a {
        self.intermediates
            .iter()
            .filter(move |c| c.subject_cn() == cn)
    }

    fn arks_named<'a>(&'a self, cn: &'a str) -> impl Iterator<Item = &'a Cert> + 'a {
        self.arks.iter().filter(move |c| c.subject_cn() == cn)
    }
}

/// The certificates that came with a report: the signer (VCEK or VLEK) and, optionally, its
/// intermediate and root.
#[derive(Debug, Clone)]
pub struct Chain {
    pub signer: Cert,
    pub intermediate: Option<Cert>,
    pub ark: Option<Cert>,
}

impl Chain {
    /// Sorts loose certificates into their places by their names.
    pub fn from_certs(certs: Vec<Cert>) -> Result<Self, String> {
        let mut signer = None;
        let mut intermediate = None;
        let mut ark = None;
        for cert in certs {
            match cert.role() {
                Role::Vcek | Role::Vlek => signer = Some(cert),
                Role::Ask | Role::Asvk => intermediate = Some(cert),
                Role::Ark => ark = Some(cert),
                Role::Unknown => {
                    return Err(format!(
                        "certificate {:?} is not part of an AMD chain",
                        cert.subject_cn()
                    ))
                }
            }
        }
        let signer = signer.ok_or("the chain has no VCEK or VLEK certificate")?;
        Ok(Chain {
            signer,
            intermediate,
            ark,
        })
    }

    /// PEM of signer, intermediate and root, the order MAA's `VcekCertChain` uses.
    pub fn to_pem(&self) -> String {
        [
            Some(&self.signer),
            self.intermediate.as_ref(),
            self.ark.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(Cert::to_pem)
        .collect()
    }
}

/// Requirements beyond authenticity that a relying party may put on the platform and the guest.
/// Each one given adds a check; the default adds none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Every component of `reported_tcb` at least this.
    pub min_tcb: Option<MinTcb>,
    /// The report's VMPL at most this (0 is the most privileged level).
    pub max_vmpl: Option<u32>,
    /// Refuse a platform with SMT enabled (`PLATFORM_INFO.SMT_EN`).
    pub deny_smt: bool,
    /// Refuse a guest whose policy allows a migration agent (`POLICY.MIGRATE_MA`).
    pub deny_migration_agent: bool,
}

/// A minimum TCB, per component (security version numbers), so one value fits every processor
/// generation: `bootloader=3,tee=0,snp=8,microcode=115` (also `bl`, `ucode`, and `fmc` for Turin).
/// Components not named must be at least 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinTcb {
    pub fmc: u8,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl std::str::FromStr for MinTcb {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut min = MinTcb::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not component=value"))?;
            let value: u8 = value
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the value must be 0 to 255"))?;
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "fmc" => &mut min.fmc,
                "bl" | "bootloader" => &mut min.bootloader,
                "tee" => &mut min.tee,
                "snp" => &mut min.snp,
                "ucode" | "microcode" => &mut min.microcode,
                other => {
                    return Err(format!(
                        "unknown TCB component {other:?} (bootloader, tee, snp, microcode, fmc)"
                    ))
                }
            };
            *slot = value;
        }
        Ok(min)
    }
}

impl std::fmt::Display for MinTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader={},tee={},snp={},microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )?;
        if self.fmc > 0 {
            write!(f, ",fmc={}", self.fmc)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub checks: Vec<Check>,
}

#[derive(Debug, thiserror::Error)]
#[error("SNP report verification failed: {}", failed.join("; "))]
pub struct VerificationFailed {
    pub failed: Vec<String>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    pub fn into_result(self) -> Result<(), VerificationFailed> {
        if self.passed() {
            return Ok(());
        }
        Err(VerificationFailed {
            failed: self
                .checks
                .into_iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect(),
        })
    }

    fn record(&mut self, name: &'static str, passed: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            name,
            passed,
            detail: detail.into(),
        });
        passed
    }
}

/// Verifies `report` with `chain` against `trust` at Unix time `now`.
pub fn verify_report(
    report: &AttestationReport,
    chain: &Chain,
    trust: &TrustStore,
    now: u64,
) -> Verification {
    verify_report_with(report, chain, trust, now, &Requirements::default())
}

/// [`verify_report`], plus the checks `requirements` asks for.
pub fn verify_report_with(
    report: &AttestationReport,
    chain: &Chain,
    trust: &TrustStore,
    now: u64,
    requirements: &Requirements,
) -> Verification {
    let mut v = Verification { checks: Vec::new() };
    let signer = &chain.signer;

    v.record(
        "signature algorithm",
        report.signature_algo == SIG_ALGO_ECDSA_P384_SHA384,
        format!(
            "report says {}, expected 1 (ECDSA P-384 SHA-384)",
            report.signature_algo
        ),
    );
    // With MASK_CHIP_KEY the firmware does not sign at all; say so rather than only report a
    // bad signature, and never let the bit relax another check.
    let chip_key_masked = report.key_info & KEY_INFO_MASK_CHIP_KEY != 0;
    v.record(
        "report is signed (MASK_CHIP_KEY clear)",
        !chip_key_masked,
        if chip_key_masked {
            "key_info MASK_CHIP_KEY is set: the firmware wrote zeros instead of a signature"
        } else {
            "key_info MASK_CHIP_KEY is clear: the firmware signed the report"
        },
    );
    let expected_role = match report.signing_key() {
        SigningKey::Vcek => Some(Role::Vcek),
        SigningKey::Vlek => Some(Role::Vlek),
        _ => None,
    };
    v.record(
        "signing key kind",
        expected_role == Some(signer.role()),
        format!(
            "report key_info says {:?}, certificate is {:?}",
            report.signing_key(),
            signer.subject_cn()
        ),
    );

    let chain_ok = verify_chain(&mut v, chain, trust);
    for cert in [
        Some(signer),
        chain_ok.as_ref().map(|(i, _)| i),
        chain_ok.as_ref().map(|(_, a)| a),
    ]
    .into_iter()
    .flatten()
    {
        let (not_before, not_after) = cert.validity();
        v.record(
            "certificate validity",
            (not_before..=not_after).contains(&now),
            format!(
                "{} valid {} .. {}, checked at {}",
                cert.subject_cn(),
                fmt_time(not_before),
                fmt_time(not_after),
                fmt_time(now)
            ),
        );
    }

    let signature_ok = report
        .signature_p1363()
        .is_some_and(|sig| signer.verifies_p384(&report.signed_bytes(), &sig));
    v.record(
        "report signature",
        signature_ok,
        if signature_ok {
            format!("signed by the {}'s P-384 key", signer.subject_cn())
        } else {
            format!(
                "the signature over bytes [0, 0x2a0) does not verify with the {}'s key",
                signer.subject_cn()
            )
        },
    );

    verify_extensions(&mut v, report, signer);
    check_requirements(&mut v, report, requirements);
    v
}

/// The server's self-check: a fresh report from `attester`, its chain from `chains` (with the
/// TCB refresh rule), verified against `trust` and `requirements` now. An error when the
/// report or chain cannot be had; the verification (passed or not) otherwise.
pub async fn self_check(
    attester: &std::sync::Arc<dyn crate::snp::attester::Attester>,
    chains: &crate::snp::chain::ChainCache,
    trust: &TrustStore,
    requirements: &Requirements,
) -> crate::snp::Result<Verification> {
    let attested = crate::snp::chain::attest(attester, chains, [0; 64]).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Ok(verify_report_with(
        &attested.report,
        &attested.endorsement.chain,
        trust,
        now,
        requirements,
    ))
}

fn check_requirements(v: &mut Verification, report: &AttestationReport, req: &Requirements) {
    if let Some(min) = &req.min_tcb {
        let tcb = report.tcb(report.reported_tcb);
        let fmc = tcb.fmc.unwrap_or_default();
        let ok = tcb.bootloader >= min.bootloader
            && tcb.tee >= min.tee
            && tcb.snp >= min.snp
            && tcb.microcode >= min.microcode
            && fmc >= min.fmc;
        v.record(
            "minimum TCB",
            ok,
            format!(
                "reported_tcb bootloader={},tee={},snp={},microcode={}{}, required at least {min}",
                tcb.bootloader,
                tcb.tee,
                tcb.snp,
                tcb.microcode,
                tcb.fmc.map(|f| format!(",fmc={f}")).unwrap_or_default()
            ),
        );
    }
    if let Some(max) = req.max_vmpl {
        v.record(
            "VMPL",
            report.vmpl <= max,
            format!("report VMPL {}, allowed at most {max}", report.vmpl),
        );
    }
    if req.deny_smt {
        v.record(
            "SMT disabled",
            report.platform_info & PLATFORM_SMT_EN_BIT == 0,
            format!(
                "platform_info {:#x}: SMT is {}",
                report.platform_info,
                if report.platform_info & PLATFORM_SMT_EN_BIT == 0 {
                    "disabled"
                } else {
                    "enabled"
                }
            ),
        );
    }
    if req.deny_migration_agent {
        v.record(
            "no migration agent",
            report.policy & POLICY_MIGRATE_MA_BIT == 0,
            format!(
                "guest policy {:#x}: a migration agent is {}",
                report.policy,
                if report.policy & POLICY_MIGRATE_MA_BIT == 0 {
                    "not allowed"
                } else {
                    "allowed (MIGRATE_MA)"
                }
            ),
        );
    }
}

/// Signer ← intermediate ← pinned ARK. Returns the intermediate and ARK that verified.
fn verify_chain(v: &mut Verification, chain: &Chain, trust: &TrustStore) -> Option<(Cert, Cert)> {
    let signer = &chain.signer;
    let issuer_cn = signer.issuer_cn();
    let candidates: Vec<&Cert> = match &chain.intermediate {
        Some(given) => vec![given],
        None => trust.intermediate_named(&issuer_cn).collect(),
    };
    let Some(intermediate) = candidates.into_iter().find(|c| signer.is_signed_by(c)) else {
        v.record(
            "signer signed by intermediate",
            false,
            format!(
                "no {issuer_cn:?} certificate (given or embedded) signed the {}",
                signer.subject_cn()
            ),
        );
        return None;
    };
    v.record(
        "signer signed by intermediate",
        true,
        format!(
            "{} signed by {}",
            signer.subject_cn(),
            intermediate.subject_cn()
        ),
    );

    let ark_cn = intermediate.issuer_cn();
    let Some(ark) = trust
        .arks_named(&ark_cn)
        .find(|ark| intermediate.is_signed_by(ark) && ark.is_signed_by(ark))
    else {
        v.record(
            "intermediate signed by pinned root",
            false,
            format!(
                "no trusted {ark_cn:?} root signed {}",
                intermediate.subject_cn()
            ),
        );
        return None;
    };
    v.record(
        "intermediate signed by pinned root",
        true,
        format!(
            "{} signed by the pinned, self-signed {}",
            intermediate.subject_cn(),
            ark.subject_cn()
        ),
    );
    if let Some(given) = &chain.ark {
        v.record(
            "chain root is the pinned root",
            given == ark,
            format!(
                "the chain's {} must equal the trusted one byte for byte",
                given.subject_cn()
            ),
        );
    }
    let products = [signer.product(), intermediate.product(), ark.product()];
    v.record(
        "product matches chain",
        products.iter().all(|p| p.is_some() && *p == products[0]),
        {
            // Plain names ("Milan, Milan, Milan"), "unknown" where a certificate names none.
            let names: Vec<&str> = products
                .iter()
                .map(|p| p.as_deref().unwrap_or("unknown"))
                .collect();
            format!("signer, intermediate, root: {}", names.join(", "))
        },
    );
    Some((intermediate.clone(), ark.clone()))
}

fn verify_extensions(v: &mut Verification, report: &AttestationReport, signer: &Cert) {
    let ext = match signer.sev_extensions() {
        Ok(ext) => ext,
        Err(e) => {
            v.record("certificate TCB equals reported_tcb", false, e.to_string());
            return;
        }
    };
    let certified = ext.tcb_raw(report.uses_turin_tcb_layout());
    v.record(
        "certificate TCB equals reported_tcb",
        certified == report.reported_tcb,
        format!(
            "certificate {}, report {}",
            report.tcb(certified),
            report.tcb(report.reported_tcb)
        ),
    );
    if let (Some(product_name), Some(chain_product)) = (&ext.product_name, signer.product()) {
        v.record(
            "certificate product name",
            product_name.split('-').next() == Some(chain_product.as_str()),
            format!("{product_name:?} under a {chain_product:?} chain"),
        );
    }
    // A VLEK is not bound to one chip. A VCEK is: its HWID must equal the report's CHIP_ID,
    // whatever key_info says (MASK_CHIP_KEY concerns the signature, not the chip id).
    if signer.role() == Role::Vcek {
        // With MASK_CHIP_ID (set by the host through SNP_CONFIG) the firmware reports CHIP_ID as
        // zero (SEV-SNP ABI, ATTESTATION_REPORT): nothing then ties the report to the VCEK's
        // chip, so a VCEK-signed report with a zero chip id cannot be accepted.
        let masked = report.chip_id.iter().all(|b| *b == 0);
        v.record(
            "chip id equals certificate hwid",
            !masked && ext.hwid.is_some_and(|hwid| hwid == report.chip_id),
            if masked {
                "report CHIP_ID is zero (the platform sets MASK_CHIP_ID): it cannot be matched to the VCEK's chip; unmask it or use a VLEK".to_owned()
            } else {
                format!(
                    "report chip_id {}…",
                    hex::encode(report.chip_id.get(..8).unwrap_or_default())
                )
            },
        );
    }
}

fn fmt_time(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
