//! Watches the script and every module it required (notify, debounced so that editors that
//! save by renaming count once). The trainer asks between epochs whether anything changed;
//! whether it really did is decided by comparing contents, not by the event.

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct ScriptWatcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    files: Arc<Mutex<HashSet<PathBuf>>>,
    dirs: HashSet<PathBuf>,
    dirty: Arc<AtomicBool>,
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

impl ScriptWatcher {
    pub fn new() -> notify::Result<Self> {
        let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let dirty = Arc::new(AtomicBool::new(false));
        let (f, d) = (files.clone(), dirty.clone());
        let debouncer = new_debouncer(
            Duration::from_millis(150),
            None,
            move |res: DebounceEventResult| {
                if let Ok(events) = res {
                    let watched = f.lock().unwrap();
                    if events
                        .iter()
                        .flat_map(|e| e.paths.iter())
                        .any(|p| watched.contains(&absolute(p)))
                    {
                        d.store(true, Ordering::SeqCst);
                    }
                }
            },
        )?;
        Ok(Self {
            debouncer,
            files,
            dirs: HashSet::new(),
            dirty,
        })
    }

    /// Watches exactly these files from now on (their folders, filtered by path).
    pub fn watch(&mut self, paths: &[PathBuf]) -> notify::Result<()> {
        let abs: HashSet<PathBuf> = paths.iter().map(|p| absolute(p)).collect();
        for p in &abs {
            if let Some(dir) = p.parent() {
                if self.dirs.insert(dir.to_path_buf()) {
                    self.debouncer.watch(dir, RecursiveMode::NonRecursive)?;
                }
            }
        }
        *self.files.lock().unwrap() = abs;
        Ok(())
    }

    /// True once after any watched file was written, renamed or removed.
    pub fn take_changed(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }
}
