//! The run's log: every line goes to `run.log` in the run folder (when there is one) and
//! to the terminal, above the progress bar rather than through it. Lua's `print` lands here.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct RunLog {
    file: Mutex<Option<std::fs::File>>,
    bar: Mutex<Option<ProgressBar>>,
    quiet: bool,
    /// Keep nothing (a quiet log keeps its lines otherwise).
    discard: bool,
    lines: Mutex<Vec<String>>,
}

impl RunLog {
    /// A log that prints to the terminal only.
    pub fn stderr() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A log that keeps its lines in memory and prints nothing (for tests).
    pub fn captured() -> Arc<Self> {
        Arc::new(Self {
            quiet: true,
            ..Self::default()
        })
    }

    /// A log that prints and keeps nothing (the ranks other than 0 of a data-parallel run).
    pub fn discarding() -> Arc<Self> {
        Arc::new(Self {
            quiet: true,
            discard: true,
            ..Self::default()
        })
    }

    /// Starts (or continues) appending to `path` as well.
    pub fn attach_file(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *self.file.lock().unwrap() = Some(f);
        Ok(())
    }

    /// Routes terminal output above this progress bar while it lives.
    pub fn set_bar(&self, bar: Option<ProgressBar>) {
        *self.bar.lock().unwrap() = bar;
    }

    /// A progress bar of `len` `unit`s ("epochs", "runs", "steps"), after `prefix` if any,
    /// drawn only when `visible` (not under `--quiet`); log lines go above it from now on.
    pub fn progress(&self, len: u64, prefix: &str, unit: &str, visible: bool) -> ProgressBar {
        let bar = if visible {
            ProgressBar::new(len)
        } else {
            ProgressBar::hidden()
        };
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix} ")
        };
        let template = format!(
            "{prefix}{{bar:30}} {{pos}}/{{len}} {unit} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}"
        );
        // A template of ours; should it not parse, the bar keeps its default style.
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        self.set_bar(Some(bar.clone()));
        bar
    }

    pub fn info(&self, msg: impl AsRef<str>) {
        self.line(msg.as_ref());
    }

    pub fn warn(&self, msg: impl AsRef<str>) {
        self.line(&format!("warning: {}", msg.as_ref()));
    }

    pub fn error(&self, msg: impl AsRef<str>) {
        self.line(&format!("error: {}", msg.as_ref()));
    }

    fn line(&self, msg: &str) {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            // One write per line (the file is opened to append), so a line is never split
            // by another process's, such as `sqdf compare --report-only` beside a comparison.
            let _ = f.write_all(format!("{msg}\n").as_bytes());
        }
        if self.quiet {
            if !self.discard {
                self.lines.lock().unwrap().push(msg.to_string());
            }
            return;
        }
        match self.bar.lock().unwrap().as_ref() {
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    /// Lines logged so far by a `captured` log.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}
