//! The two Linux guest interfaces that return an SNP report. This is the only `unsafe` code in
//! aasp: two ioctls whose argument structs are laid out here exactly as the drivers expect.
//!
//! - `/dev/sev-guest`, the upstream driver: `SNP_GET_REPORT`.
//! - `/dev/sev`, the older driver of Azure Container Instances' utility VM.
//!
//! Both calls block; callers run them on the blocking pool.
#![allow(unsafe_code)]

use crate::snp::attester::Attester;
use crate::snp::report::REPORT_SIZE;
use crate::snp::{Error, Result};
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const SEV_GUEST_PATH: &str = "/dev/sev-guest";
pub const LEGACY_SEV_PATH: &str = "/dev/sev";

/// `_IOWR('S', 0x0, struct snp_guest_request_ioctl)`.
const SNP_GET_REPORT: libc::c_ulong = 0xC020_5300;
/// Azure's `/dev/sev` `SEV_SNP_GUEST_MSG_REPORT`: `_IOWR('S', 0x1, struct sev_snp_guest_request)`.
const LEGACY_SNP_GUEST_MSG_REPORT: libc::c_ulong = 0xC028_5301;

/// `struct snp_report_req`: report_data, VMPL, reserved.
#[repr(C)]
struct ReportRequest {
    report_data: [u8; 64],
    vmpl: u32,
    reserved: [u8; 28],
}

/// `MSG_REPORT_RSP` header, followed by the report.
const RESPONSE_HEADER: usize = 32;
const SEV_GUEST_RESPONSE_SIZE: usize = 4000;
const LEGACY_RESPONSE_SIZE: usize = 1280;

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
struct GuestRequest {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    fw_error: u64,
}

/// Azure's `struct sev_snp_guest_request` (40 bytes with natural alignment).
#[repr(C)]
struct LegacyGuestRequest {
    req_msg_type: u8,
    rsp_msg_type: u8,
    msg_version: u8,
    request_len: u16,
    request_uaddr: u64,
    response_len: u16,
    response_uaddr: u64,
    error: u32,
}

const _: () = assert!(std::mem::size_of::<ReportRequest>() == 96);
const _: () = assert!(std::mem::size_of::<GuestRequest>() == 0x20);
const _: () = assert!(std::mem::size_of::<LegacyGuestRequest>() == 0x28);

/// The upstream `/dev/sev-guest` device.
pub struct SevGuest {
    path: PathBuf,
}

/// The legacy `/dev/sev` device of Azure Container Instances.
pub struct LegacySev {
    path: PathBuf,
}

impl SevGuest {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SevGuest { path: path.into() }
    }
}

impl LegacySev {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LegacySev { path: path.into() }
    }
}

impl Attester for SevGuest {
    fn name(&self) -> &'static str {
        "sev-guest"
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        let request = ReportRequest {
            report_data: *report_data,
            vmpl: 0,
            reserved: [0; 28],
        };
        let mut response = vec![0u8; SEV_GUEST_RESPONSE_SIZE];
        let mut ioctl_arg = GuestRequest {
            msg_version: 1,
            req_data: std::ptr::addr_of!(request) as u64,
            resp_data: response.as_mut_ptr() as u64,
            fw_error: 0,
        };
        let rc = call_ioctl(
            &self.path,
            SNP_GET_REPORT,
            std::ptr::addr_of_mut!(ioctl_arg).cast(),
        )?;
        if rc != 0 || ioctl_arg.fw_error != 0 {
            return Err(device_error(
                &self.path,
                format!(
                    "SNP_GET_REPORT failed: {} (firmware error {:#x})",
                    std::io::Error::last_os_error(),
                    ioctl_arg.fw_error
                ),
            ));
        }
        report_from_response(&response)
    }
}

impl Attester for LegacySev {
    fn name(&self) -> &'static str {
        "sev"
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        let request = ReportRequest {
            report_data: *report_data,
            vmpl: 0,
            reserved: [0; 28],
        };
        let mut response = vec![0u8; LEGACY_RESPONSE_SIZE];
        let mut ioctl_arg = LegacyGuestRequest {
            req_msg_type: 5,
            rsp_msg_type: 6,
            msg_version: 1,
            request_len: 96,
            request_uaddr: std::ptr::addr_of!(request) as u64,
            response_len: LEGACY_RESPONSE_SIZE as u16,
            response_uaddr: response.as_mut_ptr() as u64,
            error: 0,
        };
        let rc = call_ioctl(
            &self.path,
            LEGACY_SNP_GUEST_MSG_REPORT,
            std::ptr::addr_of_mut!(ioctl_arg).cast(),
        )?;
        if rc != 0 || ioctl_arg.error != 0 {
            return Err(device_error(
                &self.path,
                format!(
                    "report request failed: {} (driver error {:#x})",
                    std::io::Error::last_os_error(),
                    ioctl_arg.error
                ),
            ));
        }
        report_from_response(&response)
    }
}

fn call_ioctl(path: &Path, request: libc::c_ulong, arg: *mut libc::c_void) -> Result<i32> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| device_error(path, format!("cannot open: {e}")))?;
    // SAFETY: `arg` points to a live, correctly laid out request struct (sizes asserted above)
    // whose embedded pointers address buffers that outlive this call; the driver writes at most
    // the response length we declared.
    Ok(unsafe { libc::ioctl(file.as_raw_fd(), request, arg) })
}

/// `MSG_REPORT_RSP`: status, report size, 24 reserved bytes, then the report.
fn report_from_response(response: &[u8]) -> Result<Vec<u8>> {
    let word = |at: usize| {
        response
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .unwrap_or(u32::MAX)
    };
    let status = word(0);
    if status != 0 {
        return Err(Error::Firmware { status });
    }
    let size = word(4) as usize;
    if size != REPORT_SIZE {
        return Err(Error::Device {
            device: "SNP firmware".into(),
            reason: format!("returned a report of {size} bytes, expected {REPORT_SIZE}"),
        });
    }
    response
        .get(RESPONSE_HEADER..RESPONSE_HEADER + REPORT_SIZE)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Error::Device {
            device: "SNP firmware".into(),
            reason: "response buffer too short".into(),
        })
}

fn device_error(path: &Path, reason: String) -> Error {
    Error::Device {
        device: path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing() {
        let mut response = vec![0u8; LEGACY_RESPONSE_SIZE];
        response[4..8].copy_from_slice(&(REPORT_SIZE as u32).to_le_bytes());
        response[RESPONSE_HEADER] = 2;
        let report = report_from_response(&response).unwrap();
        assert_eq!(report.len(), REPORT_SIZE);
        assert_eq!(report[0], 2);
        response[0] = 0x16;
        assert!(matches!(
            report_from_response(&response),
            Err(Error::Firmware { status: 0x16 })
        ));
    }
}
