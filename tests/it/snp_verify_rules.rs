//! The verification rules that go beyond a valid signature: MASK_CHIP_KEY and MASK_CHIP_ID, the
//! signature's S half, and the optional requirements (minimum TCB, VMPL, SMT, migration agent).
//! Real hardware reports from `tests/data/snp` (see its INDEX.md), and negative twins: either a
//! flipped bit in a real report, or a simulated report edited and re-signed with the simulated
//! VCEK so that only the rule under test can refuse it.

use crate::common;

use aasp::snp::attester::Attester;
use aasp::snp::cert::Cert;
use aasp::snp::report::AttestationReport;
use aasp::snp::sim::{SimOptions, Simulated};
use aasp::snp::verify::{
    verify_report, verify_report_with, Chain, MinTcb, Requirements, TrustStore, Verification,
    KEY_INFO_MASK_CHIP_KEY, POLICY_MIGRATE_MA_BIT,
};
use common::{now, read, sim_state_dir, vectors, Vector};

fn chain_of(v: &Vector) -> Chain {
    let mut certs = vec![Cert::from_der(&read(&format!("{}/{}", v.name, v.signer_file))).unwrap()];
    certs.extend(Cert::from_pem_bundle(&read(&format!("{}/chain.pem", v.name))).unwrap());
    Chain::from_certs(certs).unwrap()
}

fn vector(name: &str) -> (AttestationReport, Chain, u64) {
    let v = vectors().into_iter().find(|v| v.name == name).unwrap();
    let report = AttestationReport::from_bytes(&read(&format!("{name}/report.bin"))).unwrap();
    (report, chain_of(&v), v.verify_at)
}

fn failed(v: &Verification) -> Vec<&'static str> {
    v.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect()
}

fn detail<'a>(v: &'a Verification, name: &str) -> &'a str {
    &v.checks.iter().find(|c| c.name == name).unwrap().detail
}

fn sim() -> Simulated {
    Simulated::open(&SimOptions {
        state_dir: sim_state_dir(),
        ..Default::default()
    })
    .unwrap()
}

fn sim_report(sim: &Simulated) -> AttestationReport {
    AttestationReport::from_bytes(&sim.report(&[7; 64]).unwrap()).unwrap()
}

fn verify_sim(sim: &Simulated, report: &AttestationReport, req: &Requirements) -> Verification {
    verify_report_with(
        report,
        sim.chain(),
        &TrustStore::amd_and(sim.simulated_root()),
        now(),
        req,
    )
}

/// A report whose key_info says MASK_CHIP_KEY is one the firmware did not sign. Before, the bit
/// also switched off the chip-id check: a validly signed report (here re-signed by the
/// simulated VCEK) with another chip's id and that bit verified.
#[test]
fn mask_chip_key_never_verifies_and_never_skips_the_chip_id_check() {
    let sim = sim();
    let mut report = sim_report(&sim);
    report.key_info |= KEY_INFO_MASK_CHIP_KEY;
    report.chip_id = [0x42; 64];
    sim.sign(&mut report).unwrap();
    let v = verify_sim(&sim, &report, &Requirements::default());
    let refused = failed(&v);
    assert!(
        refused.contains(&"report is signed (MASK_CHIP_KEY clear)")
            && refused.contains(&"chip id equals certificate hwid"),
        "{refused:?}"
    );

    // What the firmware really produces with the bit: a zero signature.
    let mut unsigned = sim_report(&sim);
    unsigned.key_info |= KEY_INFO_MASK_CHIP_KEY;
    unsigned.signature_r = [0; 72];
    unsigned.signature_s = [0; 72];
    let v = verify_sim(&sim, &unsigned, &Requirements::default());
    assert!(!v.passed());
    assert!(failed(&v).contains(&"report is signed (MASK_CHIP_KEY clear)"));
    assert!(detail(&v, "report is signed (MASK_CHIP_KEY clear)").contains("is set"));
    let signed = verify_sim(&sim, &sim_report(&sim), &Requirements::default());
    assert!(detail(&signed, "report is signed (MASK_CHIP_KEY clear)").contains("is clear"));

    // The same bit flipped in a real report: refused (and named).
    let (mut real, chain, at) = vector("milan-trustee");
    real.key_info |= KEY_INFO_MASK_CHIP_KEY;
    let v = verify_report(&real, &chain, &TrustStore::amd(), at);
    assert!(failed(&v).contains(&"report is signed (MASK_CHIP_KEY clear)"));
}

/// MASK_CHIP_ID makes the firmware report CHIP_ID as zero: a VCEK-signed report can then not be
/// tied to the VCEK's chip and is refused with a reason that names the setting. A VLEK is not
/// chip-bound, so its reports (the real VLEK vector has a zero CHIP_ID) still verify.
#[test]
fn a_zero_chip_id_is_refused_for_a_vcek_and_accepted_for_a_vlek() {
    let sim = sim();
    let mut report = sim_report(&sim);
    report.chip_id = [0; 64];
    sim.sign(&mut report).unwrap();
    let v = verify_sim(&sim, &report, &Requirements::default());
    assert_eq!(failed(&v), vec!["chip id equals certificate hwid"]);
    assert!(
        detail(&v, "chip id equals certificate hwid").contains("MASK_CHIP_ID"),
        "{:?}",
        v.checks
    );

    let (vlek_report, chain, at) = vector("milan-vlek-trustee");
    assert!(vlek_report.chip_id.iter().all(|b| *b == 0));
    let v = verify_report(&vlek_report, &chain, &TrustStore::amd(), at);
    assert!(v.passed(), "{:?}", failed(&v));
}

/// The P-384 group order n.
const N_P384: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];

/// Whether the little-endian S of `report` is above n/2 (big-endian compare of 2·S with n).
fn high_s(report: &AttestationReport) -> bool {
    let s: Vec<u8> = report.signature_s[..48].iter().rev().copied().collect();
    // 2·S > n  ⇔  S > n/2 (n is odd).
    let mut doubled = [0u8; 49];
    let mut carry = 0u16;
    for i in (0..48).rev() {
        let v = u16::from(s[i]) * 2 + carry;
        doubled[i + 1] = (v & 0xff) as u8;
        carry = v >> 8;
    }
    doubled[0] = carry as u8;
    let mut n = [0u8; 49];
    n[1..].copy_from_slice(&N_P384);
    doubled > n
}

/// AMD firmware does not normalize ECDSA signatures to low S: most of the real captures carry
/// S > n/2. A verifier that rejected high-S signatures would refuse genuine hardware, so aasp
/// accepts both halves (the signature is over the whole report; a malleated twin changes only
/// the signature bytes, which aasp never uses as an identifier).
#[test]
fn genuine_reports_with_a_high_s_signature_verify() {
    let mut high = Vec::new();
    for v in vectors() {
        let (report, chain, at) = vector(v.name);
        if high_s(&report) {
            let verification = verify_report(&report, &chain, &TrustStore::amd(), at);
            assert!(
                verification.passed(),
                "{}: {:?}",
                v.name,
                failed(&verification)
            );
            high.push(v.name);
        }
    }
    assert!(
        high.len() >= 2,
        "expected real high-S captures, found {high:?}"
    );
}

#[test]
fn minimum_tcb_is_checked_per_component() {
    let (report, chain, at) = vector("genoa-azure");
    let tcb = report.tcb(report.reported_tcb);
    let exact = MinTcb {
        bootloader: tcb.bootloader,
        tee: tcb.tee,
        snp: tcb.snp,
        microcode: tcb.microcode,
        fmc: 0,
    };
    let req = |min: MinTcb| Requirements {
        min_tcb: Some(min),
        ..Default::default()
    };
    let v = verify_report_with(&report, &chain, &TrustStore::amd(), at, &req(exact));
    assert!(v.passed(), "{:?}", failed(&v));
    for higher in [
        MinTcb {
            snp: tcb.snp + 1,
            ..exact
        },
        MinTcb {
            microcode: tcb.microcode + 1,
            ..exact
        },
        MinTcb {
            bootloader: tcb.bootloader + 1,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: 0,
        },
    ] {
        let v = verify_report_with(&report, &chain, &TrustStore::amd(), at, &req(higher));
        assert_eq!(failed(&v), vec!["minimum TCB"], "{higher}");
    }
    assert_eq!(
        "bl=1,tee=2,snp=3,ucode=4".parse::<MinTcb>().unwrap(),
        MinTcb {
            bootloader: 1,
            tee: 2,
            snp: 3,
            microcode: 4,
            fmc: 0
        }
    );
    assert!("snp=300".parse::<MinTcb>().is_err());
    assert!("pdp=1".parse::<MinTcb>().is_err());
}

#[test]
fn vmpl_smt_and_migration_agent_requirements() {
    // The real VLEK capture was taken at VMPL 1.
    let (vlek, chain, at) = vector("milan-vlek-trustee");
    assert_eq!(vlek.vmpl, 1);
    let vmpl0 = Requirements {
        max_vmpl: Some(0),
        ..Default::default()
    };
    let v = verify_report_with(&vlek, &chain, &TrustStore::amd(), at, &vmpl0);
    assert_eq!(failed(&v), vec!["VMPL"]);
    let vmpl1 = Requirements {
        max_vmpl: Some(1),
        ..Default::default()
    };
    assert!(verify_report_with(&vlek, &chain, &TrustStore::amd(), at, &vmpl1).passed());

    // SMT: enabled on the Milan captures (platform_info bit 0), disabled on genoa-azure.
    let no_smt = Requirements {
        deny_smt: true,
        ..Default::default()
    };
    let (milan, chain, at) = vector("milan-trustee");
    let v = verify_report_with(&milan, &chain, &TrustStore::amd(), at, &no_smt);
    assert_eq!(failed(&v), vec!["SMT disabled"]);
    let (genoa, chain, at) = vector("genoa-azure");
    assert!(verify_report_with(&genoa, &chain, &TrustStore::amd(), at, &no_smt).passed());

    // Migration agent: no real capture allows one; a simulated guest policy with MIGRATE_MA does.
    let no_ma = Requirements {
        deny_migration_agent: true,
        ..Default::default()
    };
    assert!(verify_report_with(&genoa, &chain, &TrustStore::amd(), at, &no_ma).passed());
    let sim = sim();
    let mut report = sim_report(&sim);
    assert!(verify_sim(&sim, &report, &no_ma).passed());
    report.policy |= POLICY_MIGRATE_MA_BIT;
    sim.sign(&mut report).unwrap();
    assert!(verify_sim(&sim, &report, &Requirements::default()).passed());
    assert_eq!(
        failed(&verify_sim(&sim, &report, &no_ma)),
        vec!["no migration agent"]
    );
}

fn aasp(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(args)
        .env_remove("AASP_ATTESTER")
        .output()
        .unwrap()
}

fn verify_cli(name: &str, extra: &[&str]) -> std::process::Output {
    let v = vectors().into_iter().find(|v| v.name == name).unwrap();
    let dir = common::data_dir().join(name);
    let at = time::OffsetDateTime::from_unix_timestamp(v.verify_at as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut args = vec![
        "verify".to_owned(),
        "--report".into(),
        dir.join("report.bin").to_str().unwrap().into(),
        "--vcek".into(),
        dir.join(v.signer_file).to_str().unwrap().into(),
        "--chain".into(),
        dir.join("chain.pem").to_str().unwrap().into(),
        "--at".into(),
        at,
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    aasp(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn aasp_verify_checks_the_requirements_it_is_given() {
    let out = verify_cli(
        "genoa-azure",
        &[
            "--deny-smt",
            "--max-vmpl",
            "0",
            "--deny-migration-agent",
            "--min-tcb",
            "snp=1,tee=0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in ["SMT disabled", "VMPL", "no migration agent", "minimum TCB"] {
        assert!(text.contains(&format!("[ok  ] {name}")), "{name}: {text}");
    }

    let out = verify_cli("milan-trustee", &["--deny-smt"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[FAIL] SMT disabled"), "{text}");

    let out = verify_cli("genoa-azure", &["--min-tcb", "snp=255"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[FAIL] minimum TCB"));

    let out = verify_cli("genoa-azure", &["--min-tcb", "pdp=1"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad value");

    // Without --verify, `aasp report` has nothing to check the requirements against.
    let dir = tempfile::tempdir().unwrap();
    let out = aasp(&[
        "report",
        "--attester",
        "sim",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--deny-smt",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --verify"));
}
