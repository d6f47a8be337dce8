//! Peak resident memory of this process, for the comparison's memory column. The kernel's
//! high-water mark (VmHWM) counts what the allocator really took, tensors and caches alike;
//! a comparison runs each method in its own process so the marks do not mix.

/// VmHWM in MiB, or NaN where /proc is not available.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
