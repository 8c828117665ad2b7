//! Verification of a report against its certificate chain and pinned roots.
//!
//! Every check is recorded, passed or not, so a user sees exactly which one failed
//! (`aasp verify` prints them); `Verification::into_result` turns the list into an error that
//! names the failures.

use crate::snp::cert::{Cert, Role};
use crate::snp::report::{AttestationReport, SigningKey, SIG_ALGO_ECDSA_P384_SHA384};
use serde::Serialize;

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
    v
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
        format!("signer, intermediate, root: {products:?}"),
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
    // A VLEK is not bound to one chip, and a guest may ask the firmware to mask the chip id.
    let chip_masked = report.key_info & 2 != 0;
    if signer.role() == Role::Vcek && !chip_masked {
        v.record(
            "chip id equals certificate hwid",
            ext.hwid.is_some_and(|hwid| hwid == report.chip_id),
            format!(
                "report chip_id {}…",
                hex::encode(report.chip_id.get(..8).unwrap_or_default())
            ),
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
