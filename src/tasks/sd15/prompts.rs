//! The prompt list of a run: one prompt per line. The default is DDPO's 45 simple animals
//! (`simple_animals.txt`), the prompts of the paper's aesthetic experiment (§5.1).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The shipped default, next to the binary's source tree.
pub fn default_path() -> PathBuf {
    let local = Path::new("models/sd15/simple_animals.txt");
    if local.is_file() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sd15/simple_animals.txt")
}

/// Non-empty trimmed lines of `path`; an empty list is an error naming the file.
pub fn load(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the prompt list {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() {
        bail!("{}: the prompt list is empty", path.display());
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_list_is_ddpos_45_animals() {
        let p = super::load(&super::default_path()).unwrap();
        assert_eq!(p.len(), 45);
        assert_eq!((p[0].as_str(), p[44].as_str()), ("cat", "kangaroo"));
    }
}
