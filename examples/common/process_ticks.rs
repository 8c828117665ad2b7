//! Shared by the load tools that measure a server in another process (`#[path]`-included).

/// utime + stime of process `pid` so far, in clock ticks (USER_HZ, 100 a second), from
/// `/proc/PID/stat`; `None` if the process is gone or the file unreadable.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesized command name, which may itself hold spaces.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
