//! `metrics.jsonl`: one JSON object per epoch, appended (a resumed run continues the file).

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
        writeln!(f, "{line}")?;
        Ok(())
    }

    /// Drops lines of epochs after `epoch` (a resume from an earlier checkpoint); returns
    /// how many lines went.
    pub fn truncate_after(&self, epoch: usize) -> Result<usize> {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Ok(0);
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
        std::fs::write(&self.path, out)?;
        Ok(text.lines().filter(|l| !l.trim().is_empty()).count() - kept.len())
    }
}
