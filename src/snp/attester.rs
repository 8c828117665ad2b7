//! Where reports come from: a trait over the guest devices and the simulator, and the rule that
//! picks one.

use crate::snp::device::{LegacySev, SevGuest, LEGACY_SEV_PATH, SEV_GUEST_PATH};
use crate::snp::report::AttestationReport;
use crate::snp::sim::{SimOptions, Simulated};
use crate::snp::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Produces a raw, signed 1184-byte report binding `report_data`. Implementations block (an
/// ioctl, or signing); async callers go through [`fetch_report`].
pub trait Attester: Send + Sync {
    /// `sev-guest`, `sev` or `sim`.
    fn name(&self) -> &'static str;

    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>>;

    /// The simulator's own ARK, which a verifier must trust explicitly; `None` for hardware,
    /// whose roots are AMD's.
    fn simulated_root(&self) -> Option<crate::snp::cert::Cert> {
        None
    }
}

/// `--attester`: which device to use. (Plain comments on the variants: doc comments would
/// switch every command's `--help` to clap's long layout, five lines an option.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttesterKind {
    // `/dev/sev-guest`, else `/dev/sev`; fails if neither exists (never the simulator).
    Auto,
    // The upstream `/dev/sev-guest` driver.
    SevGuest,
    // The legacy `/dev/sev` driver of Azure Container Instances.
    Sev,
    // The local simulator (state in the state directory); for development and tests.
    Sim,
}

/// Opens the attester `kind` asks for. `auto` looks for the devices only: falling back to the
/// simulator would let a misconfigured production pod hand out fake evidence.
pub fn open(kind: AttesterKind, sim: &SimOptions) -> Result<Arc<dyn Attester>> {
    match kind {
        AttesterKind::SevGuest => device_at(SEV_GUEST_PATH).map(|p| wrap(SevGuest::new(p))),
        AttesterKind::Sev => device_at(LEGACY_SEV_PATH).map(|p| wrap(LegacySev::new(p))),
        AttesterKind::Sim => Ok(Arc::new(Simulated::open(sim)?)),
        AttesterKind::Auto => {
            if Path::new(SEV_GUEST_PATH).exists() {
                Ok(wrap(SevGuest::new(SEV_GUEST_PATH)))
            } else if Path::new(LEGACY_SEV_PATH).exists() {
                Ok(wrap(LegacySev::new(LEGACY_SEV_PATH)))
            } else {
                Err(Error::NoDevice {
                    tried: vec![SEV_GUEST_PATH.into(), LEGACY_SEV_PATH.into()],
                })
            }
        }
    }
}

/// Like [`open`], but a missing guest device is not fatal: the returned attester looks for the
/// device again on every request (a device plugin may add it after start-up) and fails with
/// [`Error::NoDevice`] until it appears, so a server keeps running with health NOT_SERVING
/// instead of crash-looping. The second value says the device was missing at start-up. The
/// simulator is never a fallback.
pub fn open_or_await(kind: AttesterKind, sim: &SimOptions) -> Result<(Arc<dyn Attester>, bool)> {
    match open(kind, sim) {
        Err(Error::NoDevice { .. }) if kind != AttesterKind::Sim => Ok((
            Arc::new(Awaited {
                kind,
                device: std::sync::OnceLock::new(),
            }),
            true,
        )),
        other => other.map(|a| (a, false)),
    }
}

/// A guest device that was not there at start-up (see [`open_or_await`]).
struct Awaited {
    kind: AttesterKind,
    device: std::sync::OnceLock<Arc<dyn Attester>>,
}

impl Attester for Awaited {
    fn name(&self) -> &'static str {
        self.device.get().map_or("none", |d| d.name())
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        if let Some(device) = self.device.get() {
            return device.report(report_data);
        }
        // Only the device kinds reach here, so the simulator options are never read.
        let device = open(self.kind, &SimOptions::default())?;
        let device = self.device.get_or_init(|| device);
        device.report(report_data)
    }
}

fn wrap(attester: impl Attester + 'static) -> Arc<dyn Attester> {
    Arc::new(attester)
}

fn device_at(path: &str) -> Result<&str> {
    if Path::new(path).exists() {
        Ok(path)
    } else {
        Err(Error::NoDevice {
            tried: vec![path.into()],
        })
    }
}

/// Gets and parses a report on the blocking pool, so the ioctl never stalls the runtime.
pub async fn fetch_report(
    attester: &Arc<dyn Attester>,
    report_data: [u8; 64],
) -> Result<(AttestationReport, Vec<u8>)> {
    let attester = Arc::clone(attester);
    let raw = tokio::task::spawn_blocking(move || attester.report(&report_data))
        .await
        .map_err(|e| Error::Device {
            device: "attester".into(),
            reason: e.to_string(),
        })??;
    let report = AttestationReport::from_bytes(&raw)?;
    Ok((report, raw))
}
