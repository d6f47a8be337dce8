//! Child processes that die with their parent: `sqdf compare` runs each run, and `sqdf
//! bench-methods` each case, in a child; a killed (or crashed) parent must not leave one
//! training beside whatever starts next, slowing it and its timings. Ctrl-C in a terminal
//! reaches both anyway (it signals the process group); on Linux the kernel also sends the
//! child SIGTERM when its parent dies, however it dies. A run's checkpoint is written
//! atomically after each epoch, so a killed run resumes from its last epoch.

use std::process::Command;

#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure calls only prctl and getppid, both
    // async-signal-safe, and allocates nothing (the error is a raw OS code).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl took effect: no signal will come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere only a terminal's Ctrl-C stops both.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_: &mut Command) {}
