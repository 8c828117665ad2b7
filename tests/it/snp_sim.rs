//! The simulated device: its reports verify through the production path with its root trusted,
//! and fail against AMD's roots.

use crate::common;

use aasp::snp::attester::{self, fetch_report, Attester, AttesterKind};
use aasp::snp::report::{report_data_for_runtime, AttestationReport, SIGNED_LEN};
use aasp::snp::sim::{SimOptions, Simulated};
use aasp::snp::verify::{verify_report, TrustStore};
use common::{now, sim_state_dir};
use sha2::Digest;

fn sim() -> Simulated {
    Simulated::open(&SimOptions {
        state_dir: sim_state_dir(),
        ..Default::default()
    })
    .unwrap()
}

fn report_of(sim: &Simulated, data: &[u8; 64]) -> AttestationReport {
    AttestationReport::from_bytes(&sim.report(data).unwrap()).unwrap()
}

#[test]
fn simulated_reports_verify_with_the_simulator_root_only() {
    let sim = sim();
    let report = report_of(&sim, &report_data_for_runtime(b"runtime"));
    assert_eq!(report.report_data, report_data_for_runtime(b"runtime"));
    let trusted = TrustStore::amd_and(sim.simulated_root());
    let v = verify_report(&report, sim.chain(), &trusted, now());
    assert!(v.passed(), "{:?}", v.checks);

    let v = verify_report(&report, sim.chain(), &TrustStore::amd(), now());
    let failed: Vec<_> = v
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    assert_eq!(failed, vec!["intermediate signed by pinned root"]);
}

#[test]
fn flipping_a_simulated_report_byte_fails() {
    let sim = sim();
    let raw = sim.report(&[1; 64]).unwrap();
    let trusted = TrustStore::amd_and(sim.simulated_root());
    for i in (0..SIGNED_LEN).step_by(7) {
        let mut tampered = raw.clone();
        tampered[i] ^= 0x10;
        if let Ok(report) = AttestationReport::from_bytes(&tampered) {
            assert!(
                !verify_report(&report, sim.chain(), &trusted, now()).passed(),
                "byte {i:#x}"
            );
        }
    }
}

#[test]
fn identity_persists_across_restarts() {
    let first = sim();
    let second = sim();
    assert_eq!(first.chain().signer, second.chain().signer);
    assert_eq!(
        report_of(&first, &[0; 64]).chip_id,
        report_of(&second, &[0; 64]).chip_id
    );
}

#[test]
fn configured_guest_and_tcb_show_in_reports_and_the_vcek() {
    let dir = tempfile::tempdir().unwrap();
    let base = Simulated::open(&SimOptions {
        state_dir: dir.path().into(),
        ..Default::default()
    })
    .unwrap();
    let options = SimOptions {
        state_dir: dir.path().into(),
        measurement: Some([0xAB; 48]),
        policy: Some(aasp::snp::sim::DEFAULT_POLICY | aasp::snp::report::POLICY_DEBUG_BIT),
        security_policy: Some("package policy\n# test\n".into()),
        reported_tcb: Some(0x7409_0000_0000_0004),
        chip_id: None,
    };
    let sim = Simulated::open(&options).unwrap();
    let report = report_of(&sim, &[0; 64]);
    assert!(report.is_debuggable());
    assert_eq!(report.measurement, [0xAB; 48]);
    assert_eq!(
        report.host_data,
        <[u8; 32]>::from(sha2::Sha256::digest(b"package policy\n# test\n"))
    );
    assert_eq!(report.reported_tcb, 0x7409_0000_0000_0004);
    assert_ne!(
        sim.chain().signer,
        base.chain().signer,
        "a new TCB needs a new VCEK"
    );
    assert_eq!(sim.chain().ark, base.chain().ark, "the root stays");
    let v = verify_report(
        &report,
        sim.chain(),
        &TrustStore::amd_and(sim.simulated_root()),
        now(),
    );
    assert!(v.passed(), "{:?}", v.checks);
}

/// `--sim-debug` (and every other simulator flag) applies to its own run: a later run in the
/// same state directory that does not ask for it gets the defaults, on the same chip.
#[test]
fn settings_do_not_persist_into_later_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = Simulated::open(&SimOptions {
        state_dir: dir.path().into(),
        ..Default::default()
    })
    .unwrap();
    let base_report = report_of(&base, &[0; 64]);
    let flagged = Simulated::open(&SimOptions {
        state_dir: dir.path().into(),
        measurement: Some([0xCD; 48]),
        policy: Some(aasp::snp::sim::DEFAULT_POLICY | aasp::snp::report::POLICY_DEBUG_BIT),
        security_policy: Some("package policy\n# once\n".into()),
        reported_tcb: Some(0x7409_0000_0000_0004),
        chip_id: None,
    })
    .unwrap();
    assert!(report_of(&flagged, &[0; 64]).is_debuggable());
    drop(flagged);

    let later = Simulated::open(&SimOptions {
        state_dir: dir.path().into(),
        ..Default::default()
    })
    .unwrap();
    let report = report_of(&later, &[0; 64]);
    assert!(!report.is_debuggable(), "--sim-debug stuck to a later run");
    assert_eq!(report.policy, aasp::snp::sim::DEFAULT_POLICY);
    assert_eq!(report.measurement, base_report.measurement);
    assert_eq!(report.host_data, base_report.host_data);
    assert_eq!(report.reported_tcb, aasp::snp::sim::DEFAULT_TCB);
    assert_eq!(report.chip_id, base_report.chip_id, "the chip persists");
    let v = verify_report(
        &report,
        later.chain(),
        &TrustStore::amd_and(later.simulated_root()),
        now(),
    );
    assert!(v.passed(), "{:?}", v.checks);
}

#[test]
fn auto_never_falls_back_to_the_simulator() {
    let options = SimOptions {
        state_dir: sim_state_dir(),
        ..Default::default()
    };
    match attester::open(AttesterKind::Auto, &options) {
        Ok(device) => assert_ne!(device.name(), "sim", "auto picked the simulator"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("/dev/sev-guest") && message.contains("/dev/sev"),
                "{message}"
            );
        }
    }
}

#[tokio::test]
async fn fetch_report_runs_the_attester_off_the_runtime() {
    let attester: std::sync::Arc<dyn Attester> = std::sync::Arc::new(sim());
    let (report, raw) = fetch_report(&attester, [9; 64]).await.unwrap();
    assert_eq!(report.report_data, [9; 64]);
    assert_eq!(report.to_bytes(), raw);
}
