//! The documented contract matches the code: every config key with its live flag and every
//! hook in docs/scripting.md, and the README's test command is the one CI runs.

use crate::common;

use sqdf::script::config::KEYS;
use sqdf::script::experiment::{OPTIONAL_HOOKS, REQUIRED_HOOKS};

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(common::repo_root().join(name)).unwrap()
}

fn readme() -> String {
    repo_file("README.md")
}

fn scripting() -> String {
    repo_file("docs/scripting.md")
}

#[test]
fn every_config_key_is_documented_with_its_live_flag() {
    let text = scripting();
    for (key, live, _) in KEYS {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/scripting.md has no row for config key `{key}`"));
        let flag = row.split('|').nth(2).unwrap().trim();
        assert_eq!(
            flag == "yes",
            *live,
            "docs/scripting.md says live = {flag} for `{key}`"
        );
    }
}

#[test]
fn every_hook_is_documented() {
    let text = scripting();
    let hooks = REQUIRED_HOOKS.iter().map(|(h, _)| *h);
    for hook in hooks.chain(OPTIONAL_HOOKS.iter().copied()) {
        assert!(
            text.contains(&format!("| `{hook}(")),
            "docs/scripting.md does not document hook `{hook}`"
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = repo_file(".ci/run");
    assert!(readme().contains("cargo test"));
    assert!(ci.contains("cargo test"));
}
