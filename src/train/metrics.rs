//! `metrics.jsonl`: one JSON object per epoch, appended (a resumed run continues the file).
//! Only the run holding the folder's lock writes it; cutting it back at a resume replaces
//! the file atomically, so a crash then leaves the old lines or the new ones.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsWriter {
    path: PathBuf,
}

impl MetricsWriter {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }

    pub fn append(&self, line: &serde_json::Value) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        // One write per line, so a line is never split by another writer's.
        f.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    /// Drops lines of epochs after `epoch` (a resume from an earlier checkpoint), and lines
    /// that are not JSON (the torn end of a crashed write); returns how many lines went.
    pub fn truncate_after(&self, epoch: usize) -> Result<usize> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["epoch"].as_u64())
                    .is_some_and(|e| e as usize <= epoch)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        let dropped = text.lines().filter(|l| !l.trim().is_empty()).count() - kept.len();
        if out != text {
            crate::tensor_io::write_file_atomic(&self.path, out)?;
        }
        Ok(dropped)
    }
}
