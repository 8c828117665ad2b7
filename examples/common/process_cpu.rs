//! Shared by the measurement tools (`#[path]`-included: examples and benches cannot share a
//! module otherwise).

/// CPU time every thread of this process has run so far, in nanoseconds: the first field of
/// each `/proc/self/task/*/schedstat` (threads that exited are not counted; tokio's blocking
/// pool keeps its threads for 10 s by default, longer than a measurement here).
pub fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
