//! The sandbox's caps on what `print` writes to the run's log (docs/scripting.md, "The
//! sandbox"): so many bytes per call and so many in the whole run; a note says once when
//! output was cut.

use super::messages::show_bytes;
use crate::run_log::RunLog;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What the run's scripts printed so far, shared by every version of the script.
#[derive(Default)]
pub(super) struct RunPrint {
    bytes: AtomicU64,
    noted: AtomicBool,
}

/// The print caps of one Lua state, and what the current call printed.
pub(super) struct PrintCaps {
    per_call: u64,
    per_run: u64,
    printed_call: AtomicU64,
    call_noted: AtomicBool,
    run: Arc<RunPrint>,
}

impl PrintCaps {
    pub(super) fn new(per_call: u64, per_run: u64, run: Arc<RunPrint>) -> Self {
        PrintCaps {
            per_call,
            per_run,
            printed_call: AtomicU64::new(0),
            call_noted: AtomicBool::new(false),
            run,
        }
    }

    /// A new call's allowance.
    pub(super) fn new_call(&self) {
        self.printed_call.store(0, Ordering::Relaxed);
        self.call_noted.store(false, Ordering::Relaxed);
    }

    /// Writes a printed line to the log within the per-call and per-run caps; a note says
    /// once when output was cut (`what`: the call in progress).
    pub(super) fn print(&self, log: &RunLog, line: String, what: impl FnOnce() -> String) {
        let n = line.len() as u64 + 1;
        let used_call = self.printed_call.load(Ordering::Relaxed);
        let used_run = self.run.bytes.load(Ordering::Relaxed);
        let room = self
            .per_call
            .saturating_sub(used_call)
            .min(self.per_run.saturating_sub(used_run));
        let take = n.min(room);
        if take > 0 {
            let mut text = line;
            if take < n {
                let mut cut = (take.saturating_sub(1)) as usize;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            log.info(format!("[lua] {text}"));
            self.printed_call.fetch_add(take, Ordering::Relaxed);
            self.run.bytes.fetch_add(take, Ordering::Relaxed);
        }
        if take == n {
            return;
        }
        let run_full = self.run.bytes.load(Ordering::Relaxed) >= self.per_run;
        if run_full {
            if !self.run.noted.swap(true, Ordering::Relaxed) {
                log.warn(format!(
                    "the script's output reached the sandbox's cap of {} for the run; later prints are dropped",
                    show_bytes(self.per_run)
                ));
            }
        } else if !self.call_noted.swap(true, Ordering::Relaxed) {
            log.warn(format!(
                "{}: output cut at the sandbox's cap of {} per call; later prints in this call are dropped",
                what(),
                show_bytes(self.per_call)
            ));
        }
    }
}
