//! The SEV-SNP attestation report: one typed value, one parser, one serializer.
//!
//! The layout is AMD's `ATTESTATION_REPORT` (SEV-SNP ABI, table "ATTESTATION_REPORT Structure"),
//! 1184 bytes, little-endian. Reserved ranges are kept verbatim so that parse → serialize is the
//! identity on every input the parser accepts: the signature covers those bytes too.

use crate::snp::codec::{Reader, Writer};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Size of a report in bytes.
pub const REPORT_SIZE: usize = 0x4A0;
/// The signature covers bytes `[0, SIGNED_LEN)`.
pub const SIGNED_LEN: usize = 0x2A0;
/// Report versions this parser understands.
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 2..=5;
/// `signature_algo` value for ECDSA P-384 with SHA-384, the only one AMD defines.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Guest policy bit that allows a debugger: a report with it set cannot be trusted with secrets.
pub const POLICY_DEBUG_BIT: u64 = 1 << 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("an SNP report is {REPORT_SIZE} bytes, got {0}")]
    WrongSize(usize),
    #[error("SNP report version {0} is not supported (supported: 2 to 5)")]
    UnsupportedVersion(u32),
}

/// A platform TCB version (`TCB_VERSION`), decomposed per processor generation.
///
/// Milan and Genoa: byte 0 boot loader, 1 TEE, 6 SNP firmware, 7 microcode.
/// Turin moves them: 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 7 microcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tcb {
    pub raw: u64,
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl Tcb {
    pub fn decode(raw: u64, turin_layout: bool) -> Self {
        let b = raw.to_le_bytes();
        if turin_layout {
            Tcb {
                raw,
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            Tcb {
                raw,
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x} (", self.raw)?;
        if let Some(fmc) = self.fmc {
            write!(f, "fmc {fmc}, ")?;
        }
        write!(
            f,
            "bootloader {}, tee {}, snp {}, microcode {})",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// Which key signed the report (`KEY_INFO.SIGNING_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    Vcek,
    Vlek,
    None,
    Reserved(u8),
}

/// Firmware version triple (`build.minor.major` stored build first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirmwareVersion {
    pub build: u8,
    pub minor: u8,
    pub major: u8,
    pub reserved: u8,
}

impl std::fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// A parsed attestation report. Field names follow the AMD specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationReport {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub signature_algo: u32,
    pub current_tcb: u64,
    pub platform_info: u64,
    /// `KEY_INFO`: bit 0 author key enabled, bit 1 mask chip key, bits 2..4 signing key.
    pub key_info: u32,
    reserved_4c: [u8; 4],
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub reported_tcb: u64,
    /// CPUID family, model and stepping (version 3 and later; reserved before).
    pub cpuid: [u8; 3],
    reserved_18b: [u8; 21],
    pub chip_id: [u8; 64],
    pub committed_tcb: u64,
    pub current_version: FirmwareVersion,
    pub committed_version: FirmwareVersion,
    pub launch_tcb: u64,
    /// Mitigation vectors (version 5 and later; reserved before).
    pub launch_mit_vector: u64,
    pub current_mit_vector: u64,
    reserved_208: [u8; 0x98],
    /// ECDSA `r`, little-endian, zero-extended to 72 bytes.
    pub signature_r: [u8; 72],
    /// ECDSA `s`, little-endian, zero-extended to 72 bytes.
    pub signature_s: [u8; 72],
    reserved_sig: [u8; 0x170],
}

impl AttestationReport {
    /// Parses the 1184-byte report. Checks only the framing (size, version); whether the report
    /// is genuine is `verify`'s job.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() != REPORT_SIZE {
            return Err(ReportError::WrongSize(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let version = r.u32();
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(ReportError::UnsupportedVersion(version));
        }
        Ok(AttestationReport {
            version,
            guest_svn: r.u32(),
            policy: r.u64(),
            family_id: r.array(),
            image_id: r.array(),
            vmpl: r.u32(),
            signature_algo: r.u32(),
            current_tcb: r.u64(),
            platform_info: r.u64(),
            key_info: r.u32(),
            reserved_4c: r.array(),
            report_data: r.array(),
            measurement: r.array(),
            host_data: r.array(),
            id_key_digest: r.array(),
            author_key_digest: r.array(),
            report_id: r.array(),
            report_id_ma: r.array(),
            reported_tcb: r.u64(),
            cpuid: r.array(),
            reserved_18b: r.array(),
            chip_id: r.array(),
            committed_tcb: r.u64(),
            current_version: read_version(&mut r),
            committed_version: read_version(&mut r),
            launch_tcb: r.u64(),
            launch_mit_vector: r.u64(),
            current_mit_vector: r.u64(),
            reserved_208: r.array(),
            signature_r: r.array(),
            signature_s: r.array(),
            reserved_sig: r.array(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(REPORT_SIZE);
        w.u32(self.version);
        w.u32(self.guest_svn);
        w.u64(self.policy);
        w.bytes(&self.family_id);
        w.bytes(&self.image_id);
        w.u32(self.vmpl);
        w.u32(self.signature_algo);
        w.u64(self.current_tcb);
        w.u64(self.platform_info);
        w.u32(self.key_info);
        w.bytes(&self.reserved_4c);
        w.bytes(&self.report_data);
        w.bytes(&self.measurement);
        w.bytes(&self.host_data);
        w.bytes(&self.id_key_digest);
        w.bytes(&self.author_key_digest);
        w.bytes(&self.report_id);
        w.bytes(&self.report_id_ma);
        w.u64(self.reported_tcb);
        w.bytes(&self.cpuid);
        w.bytes(&self.reserved_18b);
        w.bytes(&self.chip_id);
        w.u64(self.committed_tcb);
        write_version(&mut w, &self.current_version);
        write_version(&mut w, &self.committed_version);
        w.u64(self.launch_tcb);
        w.u64(self.launch_mit_vector);
        w.u64(self.current_mit_vector);
        w.bytes(&self.reserved_208);
        w.bytes(&self.signature_r);
        w.bytes(&self.signature_s);
        w.bytes(&self.reserved_sig);
        w.into_inner()
    }

    /// A report with every field zero except `version`: the simulator's starting point.
    pub fn blank(version: u32) -> Self {
        AttestationReport {
            version,
            guest_svn: 0,
            policy: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            vmpl: 0,
            signature_algo: SIG_ALGO_ECDSA_P384_SHA384,
            current_tcb: 0,
            platform_info: 0,
            key_info: 0,
            reserved_4c: [0; 4],
            report_data: [0; 64],
            measurement: [0; 48],
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0; 32],
            report_id_ma: [0; 32],
            reported_tcb: 0,
            cpuid: [0; 3],
            reserved_18b: [0; 21],
            chip_id: [0; 64],
            committed_tcb: 0,
            current_version: FirmwareVersion::default(),
            committed_version: FirmwareVersion::default(),
            launch_tcb: 0,
            launch_mit_vector: 0,
            current_mit_vector: 0,
            reserved_208: [0; 0x98],
            signature_r: [0; 72],
            signature_s: [0; 72],
            reserved_sig: [0; 0x170],
        }
    }

    pub fn is_debuggable(&self) -> bool {
        self.policy & POLICY_DEBUG_BIT != 0
    }

    pub fn signing_key(&self) -> SigningKey {
        match (self.key_info >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            // The mask keeps the value below 8, so the cast cannot truncate.
            other => SigningKey::Reserved(other as u8),
        }
    }

    /// CPUID family (base + extended) when the report carries it (version 3 and later).
    pub fn cpu_family(&self) -> Option<u8> {
        (self.version >= 3).then_some(self.cpuid[0])
    }

    /// Turin (family 0x1A) lays out its TCB differently from Milan and Genoa (family 0x19).
    pub fn uses_turin_tcb_layout(&self) -> bool {
        self.cpu_family() == Some(0x1A)
    }

    pub fn tcb(&self, raw: u64) -> Tcb {
        Tcb::decode(raw, self.uses_turin_tcb_layout())
    }

    /// The signed part of the serialized report.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = self.to_bytes();
        bytes.truncate(SIGNED_LEN);
        bytes
    }

    /// The signature as the big-endian fixed-width `r ‖ s` (48 + 48 bytes) that P-384 verifiers
    /// take. `None` when either half does not fit 48 bytes, which no genuine signature does.
    pub fn signature_p1363(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(96);
        for half in [&self.signature_r, &self.signature_s] {
            let (low, high) = half.split_at(48);
            if high.iter().any(|b| *b != 0) {
                return None;
            }
            out.extend(low.iter().rev());
        }
        Some(out)
    }

    /// Stores a big-endian fixed-width `r ‖ s` signature in AMD's little-endian form.
    pub fn set_signature_p1363(&mut self, sig: &[u8; 96]) {
        let (r, s) = sig.split_at(48);
        self.signature_r = [0; 72];
        self.signature_s = [0; 72];
        for (dst, src) in self.signature_r.iter_mut().zip(r.iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in self.signature_s.iter_mut().zip(s.iter().rev()) {
            *dst = *src;
        }
    }
}

fn read_version(r: &mut Reader<'_>) -> FirmwareVersion {
    let [build, minor, major, reserved] = r.array();
    FirmwareVersion {
        build,
        minor,
        major,
        reserved,
    }
}

fn write_version(w: &mut Writer, v: &FirmwareVersion) {
    w.bytes(&[v.build, v.minor, v.major, v.reserved]);
}

/// `report_data` binding caller runtime data: SHA-256(runtime) followed by 32 zero bytes.
pub fn report_data_for_runtime(runtime: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    let digest = Sha256::digest(runtime);
    for (dst, src) in out.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    out
}

/// The report as JSON for people and scripts: every field, byte strings in lower-case hex.
#[derive(Debug, Serialize)]
pub struct ReportView {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: String,
    pub debuggable: bool,
    pub family_id: String,
    pub image_id: String,
    pub vmpl: u32,
    pub signature_algo: u32,
    pub current_tcb: Tcb,
    pub platform_info: String,
    pub signing_key: SigningKey,
    pub author_key_en: bool,
    pub mask_chip_key: bool,
    pub report_data: String,
    pub measurement: String,
    pub host_data: String,
    pub id_key_digest: String,
    pub author_key_digest: String,
    pub report_id: String,
    pub report_id_ma: String,
    pub reported_tcb: Tcb,
    pub cpuid: Option<String>,
    pub chip_id: String,
    pub committed_tcb: Tcb,
    pub current_version: String,
    pub committed_version: String,
    pub launch_tcb: Tcb,
    pub launch_mit_vector: Option<String>,
    pub current_mit_vector: Option<String>,
    pub signature_r: String,
    pub signature_s: String,
}

impl From<&AttestationReport> for ReportView {
    fn from(r: &AttestationReport) -> Self {
        let v5 = r.version >= 5;
        ReportView {
            version: r.version,
            guest_svn: r.guest_svn,
            policy: format!("{:#x}", r.policy),
            debuggable: r.is_debuggable(),
            family_id: hex::encode(r.family_id),
            image_id: hex::encode(r.image_id),
            vmpl: r.vmpl,
            signature_algo: r.signature_algo,
            current_tcb: r.tcb(r.current_tcb),
            platform_info: format!("{:#x}", r.platform_info),
            signing_key: r.signing_key(),
            author_key_en: r.key_info & 1 != 0,
            mask_chip_key: r.key_info & 2 != 0,
            report_data: hex::encode(r.report_data),
            measurement: hex::encode(r.measurement),
            host_data: hex::encode(r.host_data),
            id_key_digest: hex::encode(r.id_key_digest),
            author_key_digest: hex::encode(r.author_key_digest),
            report_id: hex::encode(r.report_id),
            report_id_ma: hex::encode(r.report_id_ma),
            reported_tcb: r.tcb(r.reported_tcb),
            cpuid: (r.version >= 3).then(|| {
                let [family, model, stepping] = r.cpuid;
                format!("family {family:#x} model {model:#x} stepping {stepping:#x}")
            }),
            chip_id: hex::encode(r.chip_id),
            committed_tcb: r.tcb(r.committed_tcb),
            current_version: r.current_version.to_string(),
            committed_version: r.committed_version.to_string(),
            launch_tcb: r.tcb(r.launch_tcb),
            launch_mit_vector: v5.then(|| format!("{:#x}", r.launch_mit_vector)),
            current_mit_vector: v5.then(|| format!("{:#x}", r.current_mit_vector)),
            signature_r: hex::encode(r.signature_r),
            signature_s: hex::encode(r.signature_s),
        }
    }
}

impl std::fmt::Display for AttestationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = ReportView::from(self);
        let rows: [(&str, String); 22] = [
            ("version", v.version.to_string()),
            ("guest_svn", v.guest_svn.to_string()),
            (
                "policy",
                format!("{} (debuggable: {})", v.policy, v.debuggable),
            ),
            ("family_id", v.family_id),
            ("image_id", v.image_id),
            ("vmpl", v.vmpl.to_string()),
            ("signing_key", format!("{:?}", v.signing_key)),
            ("current_tcb", v.current_tcb.to_string()),
            ("reported_tcb", v.reported_tcb.to_string()),
            ("committed_tcb", v.committed_tcb.to_string()),
            ("launch_tcb", v.launch_tcb.to_string()),
            ("platform_info", v.platform_info),
            ("report_data", v.report_data),
            ("measurement", v.measurement),
            ("host_data", v.host_data),
            ("id_key_digest", v.id_key_digest),
            ("author_key_digest", v.author_key_digest),
            ("report_id", v.report_id),
            ("chip_id", v.chip_id),
            ("cpuid", v.cpuid.unwrap_or_else(|| "-".into())),
            ("current_version", v.current_version),
            ("committed_version", v.committed_version),
        ];
        for (name, value) in rows {
            writeln!(f, "{name:<18} {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_size_and_version() {
        assert_eq!(
            AttestationReport::from_bytes(&[0; 10]),
            Err(ReportError::WrongSize(10))
        );
        let mut bytes = vec![0u8; REPORT_SIZE];
        bytes[0] = 1;
        assert_eq!(
            AttestationReport::from_bytes(&bytes),
            Err(ReportError::UnsupportedVersion(1))
        );
        bytes[0] = 6;
        assert_eq!(
            AttestationReport::from_bytes(&bytes),
            Err(ReportError::UnsupportedVersion(6))
        );
    }

    #[test]
    fn offsets_match_the_specification() {
        let mut bytes = vec![0u8; REPORT_SIZE];
        bytes[0] = 3;
        bytes[0x08 + 2] = 0x08; // policy bit 19
        bytes[0x48] = 0b100; // signing key = VLEK
        bytes[0x50] = 0xAA; // report_data
        bytes[0x90] = 0xBB; // measurement
        bytes[0xC0] = 0xCC; // host_data
        bytes[0x180] = 0x03; // reported_tcb bootloader
        bytes[0x188] = 0x19; // cpu family
        bytes[0x1A0] = 0xDD; // chip_id
        bytes[0x2A0] = 0x11; // r
        bytes[0x2E8] = 0x22; // s
        let r = AttestationReport::from_bytes(&bytes).unwrap();
        assert!(r.is_debuggable());
        assert_eq!(r.signing_key(), SigningKey::Vlek);
        assert_eq!(r.report_data[0], 0xAA);
        assert_eq!(r.measurement[0], 0xBB);
        assert_eq!(r.host_data[0], 0xCC);
        assert_eq!(r.tcb(r.reported_tcb).bootloader, 3);
        assert_eq!(r.cpu_family(), Some(0x19));
        assert_eq!(r.chip_id[0], 0xDD);
        assert_eq!(r.signature_r[0], 0x11);
        assert_eq!(r.signature_s[0], 0x22);
        assert_eq!(r.to_bytes(), bytes);
    }

    #[test]
    fn signature_round_trips_through_p1363() {
        let mut r = AttestationReport::blank(2);
        let mut sig = [0u8; 96];
        for (i, b) in sig.iter_mut().enumerate() {
            *b = i as u8;
        }
        r.set_signature_p1363(&sig);
        assert_eq!(
            r.signature_r[0], 47,
            "little-endian: last big-endian byte first"
        );
        assert_eq!(r.signature_p1363().unwrap(), sig.to_vec());
        r.signature_s[60] = 1;
        assert_eq!(r.signature_p1363(), None);
    }

    #[test]
    fn runtime_binding_is_sha256_then_zeros() {
        let data = report_data_for_runtime(b"abc");
        assert_eq!(
            hex::encode(&data[..32]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(&data[32..], &[0u8; 32]);
    }

    #[test]
    fn tcb_layouts() {
        let raw = u64::from_le_bytes([3, 0, 0, 0, 0, 0, 8, 115]);
        let milan = Tcb::decode(raw, false);
        assert_eq!(
            (milan.bootloader, milan.tee, milan.snp, milan.microcode),
            (3, 0, 8, 115)
        );
        let turin = Tcb::decode(u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]), true);
        assert_eq!(turin.fmc, Some(1));
        assert_eq!(
            (turin.bootloader, turin.tee, turin.snp, turin.microcode),
            (2, 3, 4, 9)
        );
    }
}
