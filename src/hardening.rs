//! Process hardening: a process that holds released keys must not be dumped or attached to.
//!
//! `prctl(PR_SET_DUMPABLE, 0)` stops core dumps and ptrace attach by processes of the same user
//! without `CAP_SYS_PTRACE`, and makes `/proc/<pid>/{mem,environ,maps,...}` root-owned;
//! `RLIMIT_CORE` 0 also stops dumps where a core pattern pipe would otherwise ignore the flag.
//! Beside `snp/device.rs` this is the only `unsafe` code: three libc calls with plain integer or
//! stack-struct arguments, each checked.
#![allow(unsafe_code)]

use std::io;

/// Disables core dumps and ptrace attach for this process (all threads).
pub fn disable_dumps() -> io::Result<()> {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `no_core` is a valid, initialized rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may be dumped or attached to (`PR_GET_DUMPABLE`).
pub fn is_dumpable() -> io::Result<bool> {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments; it returns the flag.
    let flag = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if flag < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flag != 0)
}
