//! The run folder: `runs/<script name>-<UTC time>` unless `--out` names one, and the lock
//! that keeps two processes out of one folder.

use anyhow::{anyhow, Context, Result};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lock file in a run folder (and in a comparison's report folder): a run holds an
/// advisory lock on it while it lives, and it holds that run's process id.
pub const LOCK_FILE: &str = "sqdf.lock";

/// The lock on a folder, held until dropped (or until the process ends, however it ends:
/// the kernel releases advisory locks, so a run killed with -9 leaves no stale lock).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    dir: PathBuf,
}

impl FolderLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Locks `dir` (creating it) for this process before anything is written in it; a folder
/// that another process holds is an error naming the folder and that process's id.
pub fn lock(dir: &Path) -> Result<FolderLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    // Neither truncated nor replaced: the file stays (removing it would let a second
    // process lock a new file while a third still holds the old one).
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("another sqdf process (pid {pid})"),
                Err(_) => "another sqdf process (pid not yet written)".to_string(),
            };
            return Err(anyhow!(
                "{} is in use by {holder}: a folder holds one run at a time; wait for that process to end, or stop it",
                dir.display()
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(anyhow!("cannot lock {}: {e}", path.display()));
        }
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{pid}"))
        .and_then(|_| file.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(FolderLock {
        _file: file,
        dir: dir.to_path_buf(),
    })
}

/// UTC time as YYYYmmdd-HHMMSS (civil-from-days, so no date crate is needed for one name).
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Creates and locks a new folder `base`, or `base-2`, `base-3`, ... when that exists (two
/// runs of one script started in the same second get folders of their own).
pub fn lock_new(base: &Path) -> Result<FolderLock> {
    if let Some(parent) = base.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    for n in 1..=1000 {
        let dir = match n {
            1 => base.to_path_buf(),
            _ => base.with_file_name(format!("{name}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return lock(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!("creating {}: {e}", dir.display())),
        }
    }
    Err(anyhow!(
        "cannot create a new run folder: {} and 999 numbered ones exist",
        base.display()
    ))
}

pub fn default_run_dir(script: &Path) -> PathBuf {
    let stem = script
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into());
    Path::new("runs").join(format!("{stem}-{}", timestamp()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_locked_folder_is_refused_until_its_lock_goes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        let held = super::lock(&dir).unwrap();
        let pid = std::fs::read_to_string(dir.join(super::LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let e = format!("{:#}", super::lock(&dir).unwrap_err());
        let want = format!(
            "{} is in use by another sqdf process (pid {})",
            dir.display(),
            std::process::id()
        );
        assert!(e.contains(&want), "{e}");
        drop(held);
        super::lock(&dir).unwrap();
    }

    #[test]
    fn a_new_default_folder_never_reuses_one() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("runs").join("toy-20260101-000000");
        let a = super::lock_new(&base).unwrap();
        let b = super::lock_new(&base).unwrap();
        assert_eq!(a.dir(), base);
        assert_eq!(b.dir(), d.path().join("runs").join("toy-20260101-000000-2"));
    }

    #[test]
    fn timestamp_has_the_expected_form() {
        let t = super::timestamp();
        assert_eq!(t.len(), 15);
        assert!(t.starts_with("20"));
        assert_eq!(&t[8..9], "-");
    }
}
