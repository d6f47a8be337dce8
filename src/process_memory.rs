//! This process's memory from /proc/self/status, for the comparison's memory column and
//! bench-methods. The kernel's high-water mark (VmHWM) counts what the allocator really took,
//! tensors and caches alike; a comparison runs each method in its own process so the marks
//! do not mix.

/// A /proc/self/status field in KiB (`"VmRSS:"`, `"VmHWM:"`), or NaN where /proc is not
/// available.
pub fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// VmHWM in MiB.
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:") / 1024.0
}

/// Resets VmHWM to the current RSS (Linux >= 4.0), so that the next `peak_rss_mib` is the
/// high-water mark of what runs in between; false where the kernel does not allow it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
