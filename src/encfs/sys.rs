//! The kernel calls a mount needs: loop devices (`/dev/loop-control`, `LOOP_SET_FD`,
//! `LOOP_SET_STATUS64`, `LOOP_CLR_FD`) and mount(2)/umount2(2). Made here rather than by
//! running util-linux's `losetup` and `mount`, so the sidecar image needs no tools besides aasp.
//! This module and `snp::device` are the only `unsafe` code in encfs: each call passes a
//! descriptor this module opened and a struct of the kernel's layout (linux/loop.h).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// Detach when the last user (the mount) lets go: a sidecar killed after its filesystem was
/// unmounted leaves no bound loop device.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h), 232 bytes.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

fn ioctl(file: &std::fs::File, request: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<i32> {
    // SAFETY: `file` is an open descriptor; every request used here takes an integer or a
    // pointer to a live `LoopInfo64`, as the kernel's loop driver defines them.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A bound loop device. Keep it until the filesystem on it is mounted: with autoclear, the
/// device unbinds when its last opener closes it, and until the mount, this is the only one.
pub struct LoopDevice {
    pub path: PathBuf,
    _open: std::fs::File,
}

/// Binds `file` to a free loop device (read-only when `read_only`).
pub fn loop_attach(file: &Path, read_only: bool) -> Result<LoopDevice, String> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| format!("/dev/loop-control: {e}"))?;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    // Another process may take the free device between the two calls: try the next one.
    let mut last = String::new();
    for _ in 0..8 {
        let number = ioctl(&control, LOOP_CTL_GET_FREE, 0)
            .map_err(|e| format!("no free loop device: {e}"))?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)
        {
            Ok(device) => device,
            Err(e) => {
                last = format!("{}: {e}", path.display());
                continue;
            }
        };
        match ioctl(&device, LOOP_SET_FD, backing.as_raw_fd() as libc::c_ulong) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = format!("{}: {e}", path.display());
                continue;
            }
            Err(e) => return Err(format!("{}: LOOP_SET_FD: {e}", path.display())),
        }
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = file.as_os_str().as_encoded_bytes();
        let n = name.len().min(63);
        if let (Some(target), Some(source)) = (info.lo_file_name.get_mut(..n), name.get(..n)) {
            target.copy_from_slice(source);
        }
        if let Err(e) = ioctl(
            &device,
            LOOP_SET_STATUS64,
            &mut info as *mut LoopInfo64 as libc::c_ulong,
        ) {
            let _ = ioctl(&device, LOOP_CLR_FD, 0);
            return Err(format!("{}: LOOP_SET_STATUS64: {e}", path.display()));
        }
        return Ok(LoopDevice {
            path,
            _open: device,
        });
    }
    Err(format!("no loop device could be bound: {last}"))
}

/// Unbinds a loop device; one already gone (autoclear) is fine.
pub fn loop_detach(device: &Path) -> Result<(), String> {
    let file = match std::fs::OpenOptions::new().read(true).open(device) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", device.display())),
    };
    // ENXIO: not bound any more, or its release (autoclear, after the ext4 unmount) is under way.
    match ioctl(&file, LOOP_CLR_FD, 0) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
        Err(e) => return Err(format!("{}: LOOP_CLR_FD: {e}", device.display())),
    }
    drop(file);
    wait_until_released(device)
}

/// How long a detached loop device may keep its backing file open.
const LOOP_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// LOOP_CLR_FD only marks the device for release while anyone else has it open (a child process
/// forked by another thread holds a copy of the descriptor until its exec), and until the release
/// the backing file, the FUSE `data`, stays open and its mount cannot be unmounted. The kernel
/// removes the device's `loop` directory in sysfs when it lets go.
fn wait_until_released(device: &Path) -> Result<(), String> {
    let Some(name) = device.file_name() else {
        return Ok(());
    };
    let bound = Path::new("/sys/class/block").join(name).join("loop");
    let started = std::time::Instant::now();
    while bound.exists() {
        if started.elapsed() > LOOP_RELEASE_WAIT {
            return Err(format!(
                "{}: still holds its backing file {} s after the detach (something keeps the \
                 device open)",
                device.display(),
                LOOP_RELEASE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))
}

/// Mounts the ext4 on `device` at `dir`: `nosuid,nodev`, plus `ro` and `noload` (no journal
/// replay: nothing is written) when read-only.
pub fn mount_ext4(device: &Path, dir: &Path, read_only: bool) -> Result<(), String> {
    let (source, target) = (c_path(device)?, c_path(dir)?);
    let fstype = c"ext4";
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    let data = if read_only {
        flags |= libc::MS_RDONLY;
        c"noload"
    } else {
        c""
    };
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EINVAL) => {
                " (not an ext4 filesystem inside: was the image made with `aasp encfs create`?)"
            }
            Some(libc::EPERM) => " (the sidecar must run privileged)",
            _ => "",
        };
        return Err(format!(
            "mount -t ext4 {} {}: {e}{hint}",
            device.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Unmounts `dir`; `lazy` detaches a busy filesystem now and finishes when it is free.
pub fn unmount(dir: &Path, lazy: bool) -> std::io::Result<()> {
    let target = c_path(dir).map_err(std::io::Error::other)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), flags) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A detach returns only once the device has let go of its backing file, even while another
    /// opener (here the test, as a forked child would) delays the release.
    #[test]
    fn a_detach_waits_for_the_release_of_the_backing_file() {
        if !std::path::Path::new("/dev/loop-control").exists()
            || std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/loop-control")
                .is_err()
        {
            eprintln!("skipped: loop devices need root and /dev/loop-control (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("backing");
        std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
        let device = super::loop_attach(&backing, true).unwrap();
        let path = device.path.clone();
        let holder = std::fs::File::open(&path).unwrap();
        drop(device);
        let released = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(holder);
        });
        super::loop_detach(&path).unwrap();
        let bound = std::path::Path::new("/sys/class/block")
            .join(path.file_name().unwrap())
            .join("loop");
        assert!(!bound.exists(), "{} still bound", path.display());
        released.join().unwrap();
    }

    #[test]
    fn loop_info_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
    }
}
