//! Process hardening: a process that holds released keys must not be dumped or attached to.
//!
//! `prctl(PR_SET_DUMPABLE, 0)` stops core dumps and ptrace attach by processes of the same user
//! without `CAP_SYS_PTRACE`, and makes `/proc/<pid>/{mem,environ,maps,...}` root-owned;
//! `RLIMIT_CORE` 0 also stops dumps where a core pattern pipe would otherwise ignore the flag.
//! Beside `snp/device.rs` this is the only `unsafe` code: libc calls with plain integer or
//! stack-struct arguments, each checked. The same goes for the few memory-tuning calls below
//! (glibc's allocator, and dropping the executable's start-up pages), which need libc too.
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

/// Caps glibc's malloc arenas at `arenas`. glibc creates up to 8 per core, one per thread that
/// allocates while the others hold theirs; each keeps the memory freed into it. A burst of
/// blocking-pool threads (64 concurrent GetReports) left ~15 arenas of 40-60 KiB each behind.
/// Two cores need no more arenas than they have cores. Not glibc (musl): nothing to do.
pub fn limit_malloc_arenas(arenas: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = libc::c_int::try_from(arenas.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes two integers; M_ARENA_MAX only bounds future arena creation.
        // It returns 0 on failure, which leaves glibc's default: nothing to report.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Lets glibc keep up to `keep` bytes of freed memory at the top of a heap instead of
/// returning it at once, and serve allocations up to `heap_up_to` bytes from the heap. By
/// default it returns anything past 128 KiB when it is freed: at 64 calls in flight on one
/// connection each batch of replies (~1 MB of buffers) was handed back with `brk` and faulted
/// in again by the next, ~0.2-0.3 page faults and 0.02 `brk` calls per WrapKey. Setting the
/// trim threshold also fixes glibc's mmap threshold (otherwise raised as large blocks are
/// freed) at 128 KiB, which would map and unmap a connection's 256 KiB write hold on every
/// batch; hence the second setting. The memory still goes back on the periodic [`trim_heap`].
/// Not glibc (musl): nothing to do.
pub fn keep_freed_memory_until_trimmed(keep: usize, heap_up_to: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (option, bytes) in [
        (libc::M_TRIM_THRESHOLD, keep),
        (libc::M_MMAP_THRESHOLD, heap_up_to),
    ] {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes two integers and changes only where free memory goes (kept,
        // trimmed or unmapped) and which allocations are mapped on their own. It returns 0 on
        // failure, which leaves glibc's default: nothing to report.
        let _ = unsafe { libc::mallopt(option, bytes) };
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (keep, heap_up_to);
}

/// Returns the allocator's free memory to the kernel (glibc `malloc_trim`): start-up parses
/// certificates, configuration and keys into buffers it frees again.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only releases memory no allocation holds.
    let _ = unsafe { libc::malloc_trim(0) };
}

/// Unmaps (from this process only) the pages of its own executable that start-up touched, once
/// start-up is over: argument parsing, logging set-up, the simulator, key generation, the first
/// report and chain check ran once and will not run again, but on a kernel that maps whole
/// page-cache folios (Linux 6.18 with a large read-ahead) they kept ~9 MB of the binary resident.
/// Only read-only mappings of the executable that hold no private (copied-on-write) page are
/// dropped: their pages stay in the page cache, and whatever runs later faults the pages it
/// needs back in, with the same bytes. Returns the bytes of the mappings dropped.
pub fn release_executable_pages() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for mapping in read_only_file_mappings(&smaps, &exe) {
        let len = mapping.end - mapping.start;
        // SAFETY: [start, end) is a whole mapping of this process (from its smaps): a private,
        // read-only, never-written mapping of the executable file (no anonymous pages, no write
        // permission, so no page differs from the file). MADV_DONTNEED on it only drops page
        // table entries; the next access refaults the identical bytes from the file, so no
        // memory Rust code can observe changes.
        if unsafe { libc::madvise(mapping.start as *mut libc::c_void, len, libc::MADV_DONTNEED) }
            == 0
        {
            released += len;
        }
    }
    Ok(released)
}

/// One mapping from /proc/self/smaps.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
}

/// The mappings of `exe` that are private, readable, not writable and hold no anonymous
/// (copied) page: the ones whose pages are exactly the file's.
fn read_only_file_mappings(smaps: &str, exe: &std::path::Path) -> Vec<Mapping> {
    let exe = exe.to_string_lossy();
    let mut found = Vec::new();
    // The block being read: its mapping, whether its header qualifies, and whether its
    // `Anonymous:` line said 0 (required: no line, no release).
    let mut current: Option<(Mapping, bool, bool)> = None;
    let mut finish = |current: &mut Option<(Mapping, bool, bool)>| {
        if let Some((mapping, true, true)) = current.take() {
            found.push(mapping);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            finish(&mut current);
            let perms = fields.next().unwrap_or_default();
            // offset, device, inode, then the path (which may contain spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            let eligible = perms.starts_with('r')
                && perms.get(1..2) == Some("-")
                && perms.get(3..4) == Some("p")
                && path == exe
                && end > start;
            current = Some((Mapping { start, end }, eligible, false));
        } else if first == "Anonymous:" {
            if let Some((_, _, unwritten)) = current.as_mut() {
                *unwritten = fields.next() == Some("0");
            }
        }
    }
    finish(&mut current);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_read_only_mappings_of_the_executable_are_released() {
        let smaps = "\
1000-3000 r--p 00000000 fe:00 42 /opt/aasp bin
Rss:                   8 kB
Anonymous:             0 kB
3000-9000 r-xp 00002000 fe:00 42 /opt/aasp bin
Anonymous:             0 kB
9000-a000 r--p 00008000 fe:00 42 /opt/aasp bin
Anonymous:             4 kB
a000-b000 rw-p 00009000 fe:00 42 /opt/aasp bin
Anonymous:             0 kB
b000-c000 r-xp 00000000 fe:00 43 /usr/lib/libc.so.6
Anonymous:             0 kB
c000-d000 r--s 00000000 fe:00 42 /opt/aasp bin
Anonymous:             0 kB
d000-e000 ---p 00000000 00:00 0
Anonymous:             0 kB
e000-f000 r-xp 00000000 fe:00 42 /opt/aasp bin
";
        let found = read_only_file_mappings(smaps, std::path::Path::new("/opt/aasp bin"));
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x1000,
                    end: 0x3000
                },
                Mapping {
                    start: 0x3000,
                    end: 0x9000
                },
                // Not e000-f000: without an Anonymous line nothing says it is unwritten.
            ]
        );
    }

    #[test]
    fn releasing_the_executable_pages_keeps_the_process_working() {
        let before = std::hint::black_box(format!("{:?}", (1u8, "text")));
        let released = release_executable_pages().unwrap();
        assert!(released > 0, "nothing released");
        // Code and read-only data fault back in unchanged.
        assert_eq!(format!("{:?}", (1u8, "text")), before);
        assert!(release_executable_pages().unwrap() > 0);
    }
}
