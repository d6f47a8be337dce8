//! A resumed run continues where it stopped: 2 epochs, resume, 2 more epochs give the same
//! weights, buffer and metrics as 4 epochs straight. A run folder holds one run at a time
//! (a second is refused, naming the folder and the first one's pid); a damaged or
//! mismatched checkpoint is an error naming the file and the key, never a panic or a
//! silent resume; metrics.jsonl after a resume is the checkpoint's prefix and the new lines.

use crate::common;

use sqdf::train::checkpoint::{self, Loaded};
use sqdf::train::{run_dir, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

#[test]
fn resume_equals_a_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    // Prioritised sampling: the resumed buffer must rebuild the same sum-tree.
    let script = common::write_script(
        dir.path(),
        "exp.lua",
        &common::standard_script(&w, "sampling = \"priority\""),
    );
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");

    let (mut a, _) = common::trainer(&script, &straight, &["epochs=4"]);
    a.run().unwrap();
    drop(a);

    let (mut b, _) = common::trainer(&script, &split, &["epochs=2"]);
    b.run().unwrap();
    drop(b);
    let (mut o, _) = common::quiet_options(&script, &split, &["epochs=4"]);
    o.resume = Some(split.clone());
    o.out = None;
    let mut c = Trainer::new(o).unwrap();
    assert_eq!(c.epoch, 2);
    c.run().unwrap();

    let x = checkpoint::load(&straight.join(checkpoint::FILE)).unwrap();
    let y = checkpoint::load(&split.join(checkpoint::FILE)).unwrap();
    assert_eq!(x.state.epoch, 4);
    assert_eq!(y.state.epoch, 4);
    assert_eq!(x.tensors.len(), y.tensors.len());
    for (k, t) in &x.tensors {
        let u = &y.tensors[k];
        assert_eq!(common::max_abs_diff(t, u), 0.0, "{k} differs after resume");
    }
    assert_eq!(metrics(&straight), metrics(&split));
    let e1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("eval.json")).unwrap())
            .unwrap();
    let e2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("eval.json")).unwrap()).unwrap();
    assert_eq!(e1["after"], e2["after"]);
    assert_eq!(e1["before"], e2["before"]);
}

#[test]
fn resume_refuses_a_changed_unsafe_key() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "exp.lua", &common::standard_script(&w, ""));
    let out = dir.path().join("run");
    let (mut a, _) = common::trainer(&script, &out, &["epochs=1"]);
    a.run().unwrap();
    drop(a);
    let (mut o, _) = common::quiet_options(&script, &out, &["epochs=2", "seed=5"]);
    o.resume = Some(out.clone());
    let e = format!(
        "{:#}",
        Trainer::new(o)
            .err()
            .expect("resume with another seed must fail")
    );
    assert!(
        e.contains("config.seed was 0 in the checkpoint and is 5 now"),
        "{e}"
    );
}

/// A run started again (not resumed) in a folder whose first start was killed before its
/// checkpoint: the earlier start's epochs leave metrics.jsonl, so the comparison's training
/// time (the sum of the epochs' seconds) counts this start alone.
#[test]
fn a_fresh_start_in_an_old_folder_drops_the_old_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "exp.lua", &common::standard_script(&w, ""));
    let out = dir.path().join("run");
    let (mut a, _) = common::trainer(&script, &out, &["epochs=3"]);
    a.run().unwrap();
    drop(a);
    assert_eq!(metrics(&out).len(), 3);
    std::fs::remove_file(out.join(checkpoint::FILE)).unwrap();
    std::fs::remove_file(out.join("eval.json")).unwrap();
    let (mut b, _) = common::trainer(&script, &out, &["epochs=2"]);
    b.run().unwrap();
    let epochs: Vec<u64> = metrics(&out)
        .iter()
        .map(|m| m["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2]);
}

/// A toy script in `dir` and a finished run of `epochs` epochs in `dir/run`.
fn finished_run(dir: &Path, epochs: usize) -> (PathBuf, PathBuf) {
    let w = common::tiny_weights(dir);
    let script = common::write_script(dir, "exp.lua", &common::standard_script(&w, ""));
    let out = dir.join("run");
    let (mut a, _) = common::trainer(&script, &out, &[&format!("epochs={epochs}")]);
    a.run().unwrap();
    (script, out)
}

/// Resumes the run in `out` (through the library, quietly).
fn resume(script: &Path, out: &Path, overrides: &[&str]) -> anyhow::Result<Trainer> {
    let (mut o, _) = common::quiet_options(script, out, overrides);
    o.resume = Some(out.to_path_buf());
    o.out = None;
    Trainer::new(o)
}

fn resume_error(script: &Path, out: &Path) -> String {
    match resume(script, out, &["epochs=2"]) {
        Ok(_) => panic!("the resume of {} should fail", out.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// `sqdf --quiet run SCRIPT --no-watch ARGS...`.
fn sqdf_run(script: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(["--quiet", "run"])
        .arg(script)
        .arg("--no-watch")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!e.contains("panicked"), "a panic instead of an error:\n{e}");
    e
}

/// The checkpoint rewritten (with valid checksums) after `edit` changes its state or tensors.
fn rewrite(out: &Path, edit: impl FnOnce(&mut Loaded, &mut BTreeMap<String, candle_core::Tensor>)) {
    let path = out.join(checkpoint::FILE);
    let mut l = checkpoint::load(&path).unwrap();
    let mut t: BTreeMap<_, _> = l.tensors.clone().into_iter().collect();
    edit(&mut l, &mut t);
    checkpoint::write(&path, &l.state, &t).unwrap();
}

/// The first policy tensor's name in a checkpoint.
fn a_policy_key(out: &Path) -> String {
    let l = checkpoint::load(&out.join(checkpoint::FILE)).unwrap();
    let mut keys: Vec<_> = l
        .tensors
        .keys()
        .filter(|k| k.starts_with("policy."))
        .collect();
    keys.sort();
    keys[0].clone()
}

/// The byte range of `key`'s data in a safetensors file.
fn data_range(bytes: &[u8], key: &str) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let o = &header[key]["data_offsets"];
    let (a, b) = (
        o[0].as_u64().unwrap() as usize,
        o[1].as_u64().unwrap() as usize,
    );
    8 + n + a..8 + n + b
}

#[test]
fn a_second_run_in_a_locked_folder_is_refused_naming_it_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 1);
    let metrics_before = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let log_before = std::fs::read_to_string(out.join("run.log")).unwrap();
    // This process holds the folder, as a first run would.
    let held = run_dir::lock(&out).unwrap();
    let want = format!(
        "{} is in use by another sqdf process (pid {}): a folder holds one run at a time",
        out.display(),
        std::process::id()
    );
    for args in [
        vec!["--out", out.to_str().unwrap()],
        vec!["--resume", out.to_str().unwrap(), "--set", "epochs=2"],
    ] {
        let o = sqdf_run(&script, &args);
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(&want), "{args:?}: {e}");
    }
    // In-process too (a second trainer while the first lives).
    let e = resume_error(&script, &out);
    assert!(e.contains(&want), "{e}");
    // `sqdf eval --out` writes a run folder's names (eval.json, sample grids): refused too.
    let o = Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(["--quiet", "eval"])
        .arg(&script)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains(&want), "eval: {e}");
    // The refused runs wrote nothing.
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(),
        metrics_before
    );
    assert_eq!(
        std::fs::read_to_string(out.join("run.log")).unwrap(),
        log_before
    );
    drop(held);
    let mut t = resume(&script, &out, &["epochs=2"]).unwrap_or_else(|e| panic!("{e:#}"));
    t.run().unwrap();
}

/// A real first run holds its folder: a second process is refused naming the first one's
/// pid; killed with -9, the first leaves no stale lock and its run resumes.
#[cfg(unix)]
#[test]
fn a_killed_run_leaves_no_lock_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "exp.lua", &common::standard_script(&w, ""));
    let out = dir.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_sqdf"))
        .args(["--quiet", "run"])
        .arg(&script)
        .args(["--no-watch", "--set", "epochs=1000000", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = out.join(checkpoint::FILE);
    let mut waited = 0;
    while !ckpt.exists() && waited < 1200 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    let o = sqdf_run(&script, &["--out", out.to_str().unwrap()]);
    let e = stderr(&o);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    assert!(ckpt.exists(), "the first run wrote no checkpoint");
    let want = format!(
        "{} is in use by another sqdf process (pid {}): a folder holds one run at a time",
        out.display(),
        first.id()
    );
    assert!(!o.status.success() && e.contains(&want), "{e}");
    // The kernel released the lock with the process: the run resumes where it stopped.
    let at = checkpoint::load(&ckpt).unwrap().state.epoch;
    let o = sqdf_run(
        &script,
        &[
            "--resume",
            out.to_str().unwrap(),
            "--set",
            &format!("epochs={}", at + 1),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoint::load(&ckpt).unwrap().state.epoch, at + 1);
    let epochs: Vec<u64> = metrics(&out)
        .iter()
        .map(|m| m["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, (1..=at as u64 + 1).collect::<Vec<_>>());
}

#[test]
fn metrics_after_a_resume_are_the_checkpoints_prefix_and_the_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 2);
    let straight = dir.path().join("straight");
    let (mut s, _) = common::trainer(&script, &straight, &["epochs=3"]);
    s.run().unwrap();
    drop(s);
    let at_two = std::fs::read(out.join(checkpoint::FILE)).unwrap();
    let mut t = resume(&script, &out, &["epochs=4"]).unwrap();
    t.run().unwrap();
    drop(t);
    assert_eq!(metrics(&out).len(), 4);
    // Back to the checkpoint of epoch 2, with a line torn by a crash at the end: the lines
    // of epochs 3 and 4 and the torn one go, epoch 3 is trained again.
    std::fs::write(out.join(checkpoint::FILE), at_two).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("metrics.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"epoch\": 5, \"rew").unwrap();
    drop(f);
    let mut t = resume(&script, &out, &["epochs=3"]).unwrap();
    t.run().unwrap();
    drop(t);
    assert_eq!(metrics(&out), metrics(&straight));
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(text.ends_with("}\n") && text.lines().count() == 3, "{text}");
    // Every rewrite went through a temporary file that is gone.
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_flipped_byte_in_the_policy_weights_is_refused_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 1);
    let path = out.join(checkpoint::FILE);
    let key = a_policy_key(&out);
    let mut bytes = std::fs::read(&path).unwrap();
    let r = data_range(&bytes, &key);
    bytes[r.start + r.len() / 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let e = resume_error(&script, &out);
    let want = format!(
        "{} is damaged: key `{key}` fails its checksum",
        path.display()
    );
    assert!(e.contains(&want), "{e}");
    assert!(
        e.contains(&format!("cannot resume from {}", out.display())),
        "{e}"
    );
}

/// One flipped bit anywhere in a checkpoint (header, metadata, data) is an error, never a
/// panic and never a checkpoint that loads.
#[test]
fn a_flipped_bit_anywhere_in_a_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = finished_run(dir.path(), 1);
    let path = out.join(checkpoint::FILE);
    let good = std::fs::read(&path).unwrap();
    checkpoint::load_bytes(&path, &good).unwrap();
    for at in 0..good.len() {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        match checkpoint::load_bytes(&path, &bytes) {
            Ok(_) => panic!("a flipped bit at byte {at} of {} loads", good.len()),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.contains(&path.display().to_string()), "byte {at}: {e}");
            }
        }
    }
}

#[test]
fn a_buffer_index_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 1);
    let path = out.join(checkpoint::FILE);
    // One epoch of batch 6 in a buffer of 16: 6 stored, the next slot is 6.
    rewrite(&out, |l, _| l.state.buffer_next = 12);
    let e = resume_error(&script, &out);
    let want = format!(
        "{}: `buffer_next` = 12 is out of range: the buffer holds 6 of 16 trajectories (6 pushed), so its next slot is 6",
        path.display()
    );
    assert!(e.contains(&want), "{e}");
    rewrite(&out, |l, _| {
        l.state.buffer_next = 6;
        l.state.buffer_pushed = 2;
    });
    let e = resume_error(&script, &out);
    let want = format!(
        "{}: `buffer_pushed` = 2 does not match the 6 trajectories the buffer holds (capacity 16)",
        path.display()
    );
    assert!(e.contains(&want), "{e}");
}

#[test]
fn a_mismatched_optimiser_or_buffer_tensor_is_refused_naming_file_and_key() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 1);
    let path = out.join(checkpoint::FILE);
    let p = a_policy_key(&out);
    let name = p.strip_prefix("policy.").unwrap().to_string();
    let good = std::fs::read(&path).unwrap();
    let dims = checkpoint::load(&path).unwrap().tensors[&p].dims().to_vec();
    let mut wrong = dims.clone();
    wrong[0] += 1;
    let cases: Vec<(String, Option<Tensor>, String)> = vec![
        (
            format!("optim.m.{name}"),
            Some(Tensor::zeros(wrong.as_slice(), DType::F32, &Device::Cpu).unwrap()),
            format!("`optim.m.{name}` has shape {wrong:?}, this run expects {dims:?}"),
        ),
        (
            format!("optim.v.{name}"),
            Some(Tensor::zeros(dims.as_slice(), DType::F64, &Device::Cpu).unwrap()),
            format!("`optim.v.{name}` is F64, this run expects F32"),
        ),
        (
            format!("optim.v.{name}"),
            None,
            format!("checkpoint has no `optim.v.{name}`"),
        ),
        (
            "buffer.reward".into(),
            Some(Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap()),
            "`buffer.reward` has shape [5], this run expects [6]".into(),
        ),
        (
            "buffer.cond".into(),
            Some(Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap()),
            "`buffer.cond` is F32, this run expects U32".into(),
        ),
        (
            "buffer.log_prob".into(),
            Some(Tensor::zeros((6, 3), DType::F32, &Device::Cpu).unwrap()),
            "`buffer.log_prob` has shape [6, 3], this run expects [6, 8]".into(),
        ),
    ];
    for (key, with, want) in cases {
        std::fs::write(&path, &good).unwrap();
        rewrite(&out, |_, t| match with {
            Some(x) => {
                t.insert(key.clone(), x);
            }
            None => {
                t.remove(&key);
            }
        });
        let e = resume_error(&script, &out);
        let want = format!("{}: {want}", path.display());
        assert!(e.contains(&want), "{key}: {e}");
    }
}

/// A checkpoint from before checksums (no `sqdf.crc32` metadata) resumes with a warning; an
/// unknown metadata key is damage, not an older file.
#[test]
fn a_checkpoint_without_checksums_resumes_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 1);
    let path = out.join(checkpoint::FILE);
    let l = checkpoint::load(&path).unwrap();
    let t: BTreeMap<_, _> = l.tensors.clone().into_iter().collect();
    let state = serde_json::to_string(&l.state).unwrap();
    let old = std::collections::HashMap::from([("sqdf".to_string(), state.clone())]);
    sqdf::tensor_io::write_atomic(&path, &t, old).unwrap();
    assert!(!checkpoint::load(&path).unwrap().checked);
    let (mut o, log) = common::quiet_options(&script, &out, &["epochs=2"]);
    o.resume = Some(out.clone());
    let mut r = Trainer::new(o).unwrap_or_else(|e| panic!("{e:#}"));
    let want = format!(
        "warning: {} has no checksums (written by an sqdf before checkpoints carried them): resuming without verifying it",
        path.display()
    );
    assert!(log.lines().contains(&want), "{:?}", log.lines());
    r.run().unwrap();
    drop(r);
    assert!(
        checkpoint::load(&path).unwrap().checked,
        "the next checkpoint has them"
    );
    let odd = std::collections::HashMap::from([
        ("sqdf".to_string(), state),
        ("sqdf.crc33".to_string(), "{}".to_string()),
    ]);
    sqdf::tensor_io::write_atomic(&path, &t, odd).unwrap();
    let e = resume_error(&script, &out);
    assert!(
        e.contains(&format!(
            "{} is damaged: unknown metadata key `sqdf.crc33`",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn resume_of_a_missing_folder_or_one_without_a_checkpoint_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let script = common::write_script(dir.path(), "exp.lua", &common::standard_script(&w, ""));
    let missing = dir.path().join("typo");
    let o = sqdf_run(&script, &["--resume", missing.to_str().unwrap()]);
    let e = stderr(&o);
    let want = format!(
        "error: cannot resume {}: no such folder (--resume takes the folder of an earlier run)",
        missing.display()
    );
    assert!(!o.status.success() && e.contains(&want), "{e}");
    assert!(!missing.exists(), "--resume created {}", missing.display());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = sqdf_run(&script, &["--resume", empty.to_str().unwrap()]);
    let e = stderr(&o);
    let want = format!(
        "error: cannot resume {}: it holds no checkpoint.safetensors (a run writes it after its first epoch); start it again with --out {}",
        empty.display(),
        empty.display()
    );
    assert!(!o.status.success() && e.contains(&want), "{e}");
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "files in {}",
        empty.display()
    );
    // The checkpoint file instead of its folder.
    let file = empty.join("checkpoint.safetensors");
    std::fs::write(&file, b"").unwrap();
    let o = sqdf_run(&script, &["--resume", file.to_str().unwrap()]);
    let e = stderr(&o);
    let want = format!(
        "error: cannot resume {}: it is a file; --resume takes the run folder that holds the checkpoint ({})",
        file.display(),
        empty.display()
    );
    assert!(!o.status.success() && e.contains(&want), "{e}");
    // An empty checkpoint (a disk that filled up) is damage, named.
    let o = sqdf_run(&script, &["--resume", empty.to_str().unwrap()]);
    let e = stderr(&o);
    let want = format!(
        "error: cannot resume from {}: {} is damaged: not a valid safetensors file",
        empty.display(),
        file.display()
    );
    assert!(!o.status.success() && e.contains(&want), "{e}");
}

#[test]
fn out_beside_resume_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = finished_run(dir.path(), 1);
    let other = dir.path().join("other");
    let want = format!(
        "cannot resume {} with --out {}: a resumed run goes on in its own folder; drop --out",
        out.display(),
        other.display()
    );
    let o = sqdf_run(
        &script,
        &[
            "--resume",
            out.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ],
    );
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains(&format!("error: {want}")),
        "{e}"
    );
    assert!(!other.exists());
    // The library refuses the same way.
    let (mut opts, _) = common::quiet_options(&script, &other, &["epochs=2"]);
    opts.resume = Some(out.clone());
    let e = format!(
        "{:#}",
        Trainer::new(opts).err().expect("two folders must fail")
    );
    assert!(e.contains(&want), "{e}");
    assert!(!other.exists());
}
