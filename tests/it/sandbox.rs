//! The sandbox holds against hostile scripts: no script can hang sqdf (loops caught and
//! re-entered with pcall, C code, finalisers, huge tensor ops), exhaust memory (tensors,
//! broadcasts, stacks, overflowing shapes), flood the log, or read files outside its
//! folder; every limit is an error naming the file and the hook. Limits are set small
//! through `SandboxOptions` so that each probe fails at once.

use crate::common;

use candle_core::{DType, Device, Tensor};
use sqdf::run_log::RunLog;
use sqdf::script::{SandboxOptions, Script, TensorEnv, TensorFn};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn options(dir: &Path) -> (SandboxOptions, Arc<RunLog>) {
    let log = RunLog::captured();
    let env = TensorEnv {
        device: Device::Cpu,
        rng: sqdf::rng::shared(0),
    };
    let mut o = SandboxOptions::new(dir, log.clone(), env);
    // Small limits: every probe trips at once.
    o.instruction_budget = 2_000_000;
    // Generous: tests of the clock set their own.
    o.time_limit = Duration::from_secs(10);
    o.tensor_memory = 4 << 20;
    o.tensor_max_bytes = 2 << 20;
    o.matmul_flops = 10_000_000;
    o.model_calls = 20;
    o.print_per_call = 200;
    o.print_per_run = 1000;
    (o, log)
}

/// A script whose hooks are the given Lua expressions (function bodies), with `top` before
/// its table.
fn script_src(top: &str, reward: &str, priority: &str) -> String {
    format!(
        r#"{top}
return {{
  config = {{ task = "gmm2d", steps = 4 }},
  reward = function(x0, cond, cfg) {reward} end,
  loss = function(batch, ctx) return batch.x:sum() end,
  discount = function(k, cfg) return 1 end,
  priority = function(s, cfg) {priority} end,
}}
"#
    )
}

fn write(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p
}

fn load(dir: &Path, src: &str) -> (Result<Script, String>, PathBuf, Arc<RunLog>) {
    let (o, log) = options(dir);
    let path = write(dir, "exp.lua", src);
    let s = Script::load(&path, &[], &o).map_err(|e| format!("{e:#}"));
    (s, path, log)
}

fn load_ok(dir: &Path, src: &str) -> (Script, PathBuf, Arc<RunLog>) {
    let (s, p, log) = load(dir, src);
    (s.unwrap_or_else(|e| panic!("{e}")), p, log)
}

fn load_err(dir: &Path, src: &str) -> (String, PathBuf) {
    match load(dir, src) {
        (Ok(_), p, _) => panic!("{} loaded", p.display()),
        (Err(e), p, _) => (e, p),
    }
}

fn x0() -> (Tensor, Tensor) {
    (
        Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap(),
    )
}

fn reward_err(s: &Script) -> String {
    let (x, c) = x0();
    match s.reward(&x, &c) {
        Ok(r) => panic!("reward returned {r}"),
        Err(e) => format!("{e:#}"),
    }
}

fn priority_err(s: &Script) -> String {
    match s.priority(1.0, 0, 0, 0) {
        Ok(p) => panic!("priority returned {p}"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_has(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "expected {p:?} in:\n{e}");
    }
}

fn in_hook(path: &Path, hook: &str) -> String {
    format!("{}: hook `{hook}`: ", path.display())
}

/// An error that is not a tripped limit: the op was refused before it ran.
fn failed_in(path: &Path, hook: &str) -> String {
    format!("{}: hook `{hook}` failed: ", path.display())
}

fn at_top(path: &Path) -> String {
    format!("{}: top-level code: ", path.display())
}

// --- 1. The time and instruction limits cannot be caught or dodged. ---

#[test]
fn pcall_cannot_catch_the_instruction_budget_at_top_level() {
    let dir = tempfile::tempdir().unwrap();
    let (e, p) = load_err(
        dir.path(),
        &script_src(
            "while true do pcall(function() while true do end end) end",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    assert_has(&e, &[&at_top(&p), "instruction budget of 2000000"]);
}

#[test]
fn xpcall_cannot_catch_the_budget_inside_a_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "while true do xpcall(function() while true do end end, function(m) return m end) end",
        ),
    );
    let e = priority_err(&s);
    assert_has(&e, &[&in_hook(&p, "priority"), "instruction budget"]);
    // A handler that loops itself, and a pcall of a pcall, change nothing.
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "while true do pcall(pcall, function() while true do end end) end",
            "while true do xpcall(function() while true do end end, function() while true do end end) end",
        ),
    );
    assert_has(
        &priority_err(&s),
        &[&in_hook(&p, "priority"), "instruction budget"],
    );
    assert_has(
        &reward_err(&s),
        &[&in_hook(&p, "reward"), "instruction budget"],
    );
}

#[test]
fn a_tripped_limit_stays_tripped_for_the_call_and_the_next_call_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    // After the budget error is caught once, the script tries to go on computing.
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "local ok = pcall(function() while true do end end) \
             local n = 0 for i = 1, 100 do n = n + i end return n",
        ),
    );
    assert_has(
        &priority_err(&s),
        &[&in_hook(&p, "priority"), "instruction budget"],
    );
    // The next call has its own budget: the reward hook works.
    let (x, c) = x0();
    s.reward(&x, &c).unwrap();
}

#[test]
fn time_spent_in_c_functions_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path()).0;
    // Few VM instructions, much C work: only the clock can stop it.
    o.instruction_budget = u64::MAX / 2;
    o.time_limit = Duration::from_millis(300);
    for (i, body) in [
        "while true do local s = string.rep('x', 1000000) end",
        "while true do pcall(string.rep, 'x', 1000000) end",
        "local t = {} for i = 1, 100000 do t[i] = i end while true do table.sort(t, nil) end",
        "while true do pcall(function() while true do local s = string.rep('x', 1000000) end end) end",
    ]
    .iter()
    .enumerate()
    {
        let path = write(
            dir.path(),
            &format!("c{i}.lua"),
            &script_src("", "return x0:sum(2)", body),
        );
        let s = Script::load(&path, &[], &o).unwrap();
        let e = priority_err(&s);
        assert_has(&e, &[&in_hook(&path, "priority"), "time limit of 300 ms exceeded"]);
    }
    // At load as well.
    let path = write(
        dir.path(),
        "top.lua",
        &script_src(
            "while true do pcall(string.rep, 'x', 1000000) end",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    let e = format!("{:#}", Script::load(&path, &[], &o).err().unwrap());
    assert_has(&e, &[&at_top(&path), "time limit"]);
}

#[test]
fn pathological_string_patterns_are_refused_before_they_run() {
    let dir = tempfile::tempdir().unwrap();
    for (i, call) in [
        "string.rep('a', 40):match(string.rep('a*', 40) .. 'b')",
        "string.find(string.rep('a', 1e6), '.-b')",
        "(string.rep('a', 1e6)):find('.-b')",
        "for w in string.rep('a', 1e5):gmatch('a-a-a-b') do end",
        "string.gsub(string.rep('a', 1e5), '(a*)%1b', 'x')",
        "pcall(string.match, string.rep('a', 40), string.rep('a*', 40) .. 'b') local m = string.rep('a', 40):match(string.rep('a*', 40) .. 'b')",
    ]
    .iter()
    .enumerate()
    {
        let (s, p, _) = load_ok(
            &dir.path().join(format!("{i}")).tap_mkdir(),
            &script_src("", "return x0:sum(2)", &format!("{call} return 1")),
        );
        let e = priority_err(&s);
        assert_has(
            &e,
            &[&failed_in(&p, "priority"), "over the sandbox's cap", "plain find"],
        );
    }
    // Ordinary patterns and plain finds of long strings are fine.
    let (s, _, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "local s = string.rep('a', 1e6) .. 'b' \
             assert(s:find('ab', 1, true) == 1e6) assert(s:find('b') == 1e6 + 1) \
             assert(('key=value'):match('^(%w+)=(%w+)$') == 'key') \
             assert(select(2, ('a b  c'):gsub('%s+', ' ')) == 2) return 1",
        ),
    );
    assert_eq!(s.priority(1.0, 0, 0, 0).unwrap(), 1.0);
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn finalisers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (e, p) = load_err(
        dir.path(),
        &script_src(
            "setmetatable({}, {__gc = function() while true do end end})",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    assert_has(&e, &[&p.display().to_string(), "__gc", "not allowed"]);
    // `__gc = false` would mark the table too (the field is added later).
    let (e, _) = load_err(
        dir.path(),
        &script_src(
            "local mt = {__gc = false} setmetatable({}, mt) mt.__gc = function() while true do end end",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    assert_has(&e, &["__gc"]);
    // A field added after setmetatable never runs, and userdata metatables are locked.
    let (s, _, _) = load_ok(
        dir.path(),
        &script_src(
            "local mt = {} local t = setmetatable({}, mt) mt.__gc = function() while true do end end t = nil \
             assert(getmetatable(tensor.zeros(1)) ~= nil and type(getmetatable(tensor.zeros(1))) ~= 'table')",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    // Collecting runs no finaliser (the hook call ends after a full collection).
    let (x, c) = x0();
    s.reward(&x, &c).unwrap();
}

#[test]
fn model_calls_pause_the_clock_but_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = options(dir.path());
    o.time_limit = Duration::from_millis(500);
    let slow: TensorFn = Arc::new(|x: &Tensor, _c: Option<&Tensor>| {
        std::thread::sleep(Duration::from_millis(300));
        x.sum(1)
    });
    // Two slow model calls take longer than the time limit of 500 ms: not the script's time.
    let path = write(
        dir.path(),
        "m.lua",
        &script_src(
            "",
            "local a = rewards.slow(x0) return rewards.slow(x0) + a",
            "while true do rewards.slow(tensor.zeros(1, 1)) end",
        ),
    );
    let s = Script::load(&path, &[], &o).unwrap();
    s.provide_rewards(&[("slow".to_string(), slow.clone())])
        .unwrap();
    let (x, c) = x0();
    s.reward(&x, &c).unwrap();
    // A loop of model calls stops at the cap.
    let fast: TensorFn = Arc::new(|x: &Tensor, _c: Option<&Tensor>| x.sum(1));
    s.provide_rewards(&[("slow".to_string(), fast)]).unwrap();
    assert_has(
        &priority_err(&s),
        &[&in_hook(&path, "priority"), "more than 20 model calls"],
    );
}

// --- 2. Tensors are inside the limits. ---

#[test]
fn a_huge_matmul_is_refused_before_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    // The issue's 16384 x 16384 product, from views that allocate nothing, under the
    // default caps.
    let log = RunLog::captured();
    let env = TensorEnv {
        device: Device::Cpu,
        rng: sqdf::rng::shared(0),
    };
    let o = SandboxOptions::new(dir.path(), log, env);
    let path = write(
        dir.path(),
        "mm.lua",
        &script_src(
            "",
            "local a = tensor.ones(1, 1):expand(16384, 16384) return a:matmul(a):sum(2)",
            "return 1",
        ),
    );
    let s = Script::load(&path, &[], &o).unwrap();
    assert_has(
        &reward_err(&s),
        &[
            &failed_in(&path, "reward"),
            "matmul",
            "floating-point operations are over the sandbox's cap",
        ],
    );
    // Small limits: a 200 x 200 product is over 10 MFLOP.
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "tensor.zeros(200, 200):matmul(tensor.zeros(200, 200)) return 1",
        ),
    );
    assert_has(&priority_err(&s), &[&failed_in(&p, "priority"), "matmul"]);
}

#[test]
fn broadcasts_outer_products_and_stacks_over_the_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Under the default caps too: 2^32 elements.
        "local a = tensor.zeros(65536, 1) local b = tensor.zeros(1, 65536) local c = a + b",
        "local c = tensor.zeros(65536, 1):matmul(tensor.zeros(1, 65536))",
        "local c = tensor.zeros(4096, 1):maximum(tensor.zeros(1, 4096))",
        // 4 MiB live: four tensors of 1.5 MiB stacked need 6 MiB more.
        "local l = {} for i = 1, 2 do l[i] = tensor.zeros(393216) end local s = tensor.stack({l[1], l[2], l[1], l[2]})",
        "local l = {} for i = 1, 2 do l[i] = tensor.zeros(393216) end local s = tensor.cat({l[1], l[2], l[1]})",
        // Kept alive in a table: refused once they pass 4 MiB.
        "local keep = {} for i = 1, 100 do keep[i] = tensor.randn(100000) end",
        // A view keeps the tensor it views alive (and charged) after Lua drops that one.
        "local keep = {} for i = 1, 100 do keep[i] = tensor.zeros(100000):narrow(1, 1, 1) end",
        "local t = tensor.zeros(1, 1):expand(1000, 1000) local s = t:sum(2) local u = t * 2",
    ];
    for (i, case) in cases.iter().enumerate() {
        let d = dir.path().join(format!("{i}")).tap_mkdir();
        let (s, p, _) = load_ok(
            &d,
            &script_src("", "return x0:sum(2)", &format!("{case} return 1")),
        );
        let e = priority_err(&s);
        assert_has(&e, &[&failed_in(&p, "priority")]);
        assert!(
            e.contains("tensor memory limit") || e.contains("over the sandbox's cap"),
            "case {i}: {e}"
        );
    }
}

#[test]
fn mid_size_tensors_in_a_loop_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    // 200 tensors of 400 KB each, 80 MB in all, under a 4 MiB limit: Lua's garbage is
    // collected when the limit is near.
    let (s, _, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "local acc = 0 for i = 1, 200 do local t = tensor.randn(100000) * 2 + 1 acc = acc + t:mean():item() end return 1",
        ),
    );
    assert_eq!(s.priority(1.0, 0, 0, 0).unwrap(), 1.0);
    assert!(s.limits().tensor_bytes() <= 4 << 20);
}

#[test]
fn overflowing_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in [
        "tensor.zeros(0):reshape(4294967296, 4294967296, 4294967296)",
        "tensor.zeros(0):reshape(-1, 4294967296, 4294967296, 4294967296)",
        "tensor.zeros(0, 3):reshape(9223372036854775807, 9223372036854775807)",
        "tensor.zeros(4294967296, 4294967296, 0)",
        "tensor.zeros(2, 3):reshape(-2, -3)",
        "tensor.zeros(3):narrow(1, 2, 9223372036854775807)",
    ]
    .iter()
    .enumerate()
    {
        let d = dir.path().join(format!("{i}")).tap_mkdir();
        let (s, p, _) = load_ok(
            &d,
            &script_src(
                "",
                "return x0:sum(2)",
                &format!("local t = {case} return t:sum():item()"),
            ),
        );
        let e = priority_err(&s);
        assert_has(&e, &[&failed_in(&p, "priority")]);
    }
}

#[test]
fn integer_tensors_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, _) = load_ok(dir.path(), &script_src("", "return cond:exp()", "return 1"));
    assert_has(
        &reward_err(&s),
        &[
            &format!("{}: hook `reward` failed", p.display()),
            "exp needs a float tensor",
        ],
    );
    // What integer tensors do take: arithmetic, comparisons, indexing, reading.
    let (s, _, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "local c = cond + 1 local m = (cond * 2):gt(1) local t = (c - cond):totable() \
             assert(t[1] == 1 and #cond:index(1, {1, 3}) == 2) return x0:sum(2) + m",
            "return 1",
        ),
    );
    let (x, c) = x0();
    s.reward(&x, &c).unwrap();
}

#[test]
fn load_time_tensor_and_memory_errors_name_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let (e, p) = load_err(
        dir.path(),
        &script_src(
            "local big = tensor.zeros(1000000)",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    assert_has(&e, &[&format!("{}: ", p.display()), "per tensor"]);
    let (mut o, _) = options(dir.path());
    o.time_limit = Duration::from_secs(60);
    o.memory_limit = 16 << 20;
    let p = write(
        dir.path(),
        "mem.lua",
        &script_src(
            "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 100000) .. i end",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    let e = format!("{:#}", Script::load(&p, &[], &o).err().unwrap());
    assert!(e.starts_with(&p.display().to_string()), "{e}");
    assert!(e.contains("Lua memory limit of 16 MiB exceeded"), "{e}");
}

// --- 4. Output is capped. ---

#[test]
fn print_is_capped_per_call_and_per_run_with_one_note() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _, log) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "for i = 1, 100 do print(string.rep('y', 30)) end return 1",
        ),
    );
    s.priority(1.0, 0, 0, 0).unwrap();
    let lines = log.lines();
    let printed: usize = lines
        .iter()
        .filter(|l| l.starts_with("[lua] "))
        .map(|l| l.len() - "[lua] ".len() + 1)
        .sum();
    assert!(printed <= 200, "{printed} bytes: {lines:?}");
    let notes = lines.iter().filter(|l| l.contains("per call")).count();
    assert_eq!(notes, 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("hook `priority`: output cut")),
        "{lines:?}"
    );
    // Four more calls fill the run's 1000 bytes: one note, then silence.
    for _ in 0..10 {
        s.priority(1.0, 0, 0, 0).unwrap();
    }
    let lines = log.lines();
    let printed: usize = lines
        .iter()
        .filter(|l| l.starts_with("[lua] "))
        .map(|l| l.len() - "[lua] ".len() + 1)
        .sum();
    assert!(printed <= 1000, "{printed}");
    let run_notes = lines.iter().filter(|l| l.contains("for the run")).count();
    assert_eq!(run_notes, 1, "{lines:?}");
}

// --- 5. require stays in the script's folder. ---

#[cfg(unix)]
#[test]
fn require_does_not_follow_symlinks_out_of_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("scripts").tap_mkdir();
    let outside = root.path().join("outside").tap_mkdir();
    std::fs::write(outside.join("secret.lua"), "return { leaked = true }").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.lua"), dir.join("evil.lua")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    // A link inside the folder to a file inside it is fine.
    let inner = dir.join("lib").tap_mkdir();
    std::fs::write(inner.join("helper.lua"), "return { ok = 1 }").unwrap();
    std::os::unix::fs::symlink(inner.join("helper.lua"), dir.join("alias.lua")).unwrap();
    for name in ["evil", "sub.secret"] {
        let (e, p) = load_err(
            &dir,
            &script_src(
                &format!("local m = require('{name}')"),
                "return x0:sum(2)",
                "return 1",
            ),
        );
        assert_has(
            &e,
            &[&p.display().to_string(), "outside the script's folder"],
        );
    }
    let (s, _, _) = load_ok(
        &dir,
        &script_src(
            "local m = require('alias') assert(m.ok == 1)",
            "return x0:sum(2)",
            "return 1",
        ),
    );
    assert_eq!(s.sources.len(), 2);
}

// --- 9. Messages and encodings. ---

#[test]
fn a_byte_order_mark_is_accepted_in_scripts_and_modules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.lua"), "\u{feff}return { two = 2 }\n").unwrap();
    let src = format!(
        "\u{feff}{}",
        script_src(
            "local m = require('m')",
            "return x0:sum(2) * m.two",
            "return m.two"
        )
    );
    let (s, _, _) = load_ok(dir.path(), &src);
    assert_eq!(s.priority(1.0, 0, 0, 0).unwrap(), 2.0);
    // The sources kept for hot reload are the files as they are on disk.
    assert!(s.sources[0].1.starts_with('\u{feff}'));
}

#[test]
fn a_reward_of_integers_is_refused_at_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, _) = load_ok(dir.path(), &script_src("", "return cond", "return 1"));
    assert_has(
        &reward_err(&s),
        &[
            &format!("{}: hook `reward` failed", p.display()),
            "dtype u32",
            "expected a float tensor",
        ],
    );
}

// --- A hostile version during a running run: refused, the run goes on. ---

#[test]
fn a_hostile_reload_is_rejected_and_the_run_goes_on() {
    use sqdf::train::trainer::ReloadOutcome;
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let w = common::tiny_weights(dir.path());
    let good = common::standard_script(&w, "sampling = \"priority\"");
    let path = common::write_script(dir.path(), "exp.lua", &good);
    let (mut o, log) = common::quiet_options(&path, &dir.path().join("run"), &[]);
    o.watch = true;
    let mut t = sqdf::train::Trainer::new(o).unwrap();
    t.run_epoch().unwrap();
    let hostile = [
        // At load, inside a hook during the smoke test, and in C.
        good.replacen(
            "return {",
            "while true do pcall(function() while true do end end) end\nreturn {",
            1,
        ),
        good.replace(
            "priority = sqdf.priority,",
            "priority = function(s, cfg) while true do pcall(function() while true do end end) end end,",
        ),
        good.replacen(
            "return {",
            "setmetatable({}, {__gc = function() while true do end end})\nreturn {",
            1,
        ),
        good.replace(
            "loss = sqdf.loss,",
            "loss = function(b, ctx) string.rep('a', 40):match(string.rep('a*', 40) .. 'b') end,",
        ),
    ];
    for (i, src) in hostile.iter().enumerate() {
        std::fs::write(&path, src).unwrap();
        let start = Instant::now();
        let mut outcome = ReloadOutcome::NoChange;
        while start.elapsed() < Duration::from_secs(60) {
            outcome = t.maybe_reload();
            if outcome != ReloadOutcome::NoChange {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(outcome, ReloadOutcome::Rejected, "version {i}");
        assert_eq!(t.generation, 1);
        let m = t.run_epoch().unwrap();
        assert_eq!(m.script_generation, 1);
    }
    let lines = log.lines().join("\n");
    assert!(lines.contains("instruction budget"), "{lines}");
    assert!(lines.contains("__gc"), "{lines}");
    assert!(lines.contains("over the sandbox's cap"), "{lines}");
}

#[test]
fn hooks_called_in_a_row_share_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    // About 800,000 instructions a call: fine once, but the framework calls `priority` once
    // per buffer state, in a row; the series shares the budget of 2,000,000.
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "return x0:sum(2)",
            "local n = 0 for i = 1, 200000 do n = n + i end return 1",
        ),
    );
    assert_eq!(s.priority(1.0, 0, 0, 0).unwrap(), 1.0);
    let e = (0..10)
        .find_map(|_| s.priority(1.0, 0, 0, 0).err())
        .expect("the series trips");
    assert_has(
        &format!("{e:#}"),
        &[&in_hook(&p, "priority"), "instruction budget"],
    );
    // Another hook in between starts a new series.
    let (x, c) = x0();
    s.reward(&x, &c).unwrap();
    assert_eq!(s.priority(1.0, 0, 0, 0).unwrap(), 1.0);
}

#[test]
fn huge_error_messages_and_stats_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src(
            "",
            "error(string.rep('x', 1e6))",
            "return string.rep('y', 1e6)",
        ),
    );
    let e = reward_err(&s);
    assert!(
        e.len() < 20_000 && e.contains("more bytes cut"),
        "{}",
        e.len()
    );
    assert!(e.starts_with(&failed_in(&p, "reward")));
    let e = priority_err(&s);
    assert!(e.len() < 1000, "{e}");
    // on_epoch_end's numbers go into every metrics line: a few hundred at most.
    let src = script_src("", "return x0:sum(2)", "return 1").replace(
        "priority = function",
        "on_epoch_end = function() local t = {} for i = 1, 1000 do t['k' .. i] = i end return t end,\n  priority = function",
    );
    let (s, p, _) = load_ok(dir.path(), &src);
    let e = format!("{:#}", s.on_epoch_end(&serde_json::json!({})).unwrap_err());
    assert_has(
        &e,
        &[
            &p.display().to_string(),
            "hook `on_epoch_end`",
            "more than 256",
        ],
    );
}

#[test]
fn a_panic_in_a_model_call_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p, _) = load_ok(
        dir.path(),
        &script_src("", "return rewards.boom(x0)", "return 1"),
    );
    let boom: TensorFn = Arc::new(|_: &Tensor, _: Option<&Tensor>| panic!("boom"));
    s.provide_rewards(&[("boom".to_string(), boom)]).unwrap();
    assert_has(
        &reward_err(&s),
        &[
            &failed_in(&p, "reward"),
            "rewards.boom: internal error (boom)",
        ],
    );
}

/// A state with a tensor in an autograd graph (as `ctx:policy_step` returns) as global `g`.
fn state_with_graph(tensor_memory: u64) -> (mlua::Lua, sqdf::script::sandbox::Limits) {
    let dir = std::env::temp_dir();
    let (mut o, _) = options(&dir);
    o.tensor_memory = tensor_memory;
    o.tensor_max_bytes = tensor_memory;
    o.instruction_budget = 100_000_000;
    o.time_limit = Duration::from_secs(60);
    let (lua, limits, _) = sqdf::script::sandbox::new_state(&o).unwrap();
    let v = candle_core::Var::zeros(1000, DType::F32, &Device::Cpu).unwrap();
    lua.globals()
        .set("g", sqdf::script::LuaTensor::new(v.as_tensor().clone()))
        .unwrap();
    (lua, limits)
}

#[test]
fn an_autograd_graph_keeps_its_tensors_counted() {
    // Each step holds the one before through its graph: dropping the Lua handles frees
    // nothing, so the chain is refused at the tensor limit.
    let (lua, _) = state_with_graph(1 << 20);
    let e = lua
        .load("local y = g for i = 1, 2000 do y = y * 1.0001 end")
        .exec()
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor memory limit"), "{e}");
    // Without a graph the same loop is fine: each step is collected.
    let (lua, limits) = state_with_graph(1 << 20);
    lua.load("local y = g:detach() for i = 1, 2000 do y = y * 1.0001 end")
        .exec()
        .unwrap();
    lua.gc_collect().unwrap();
    assert_eq!(limits.tensor_bytes(), 0);
}

#[test]
fn a_chain_of_tensors_is_capped_in_depth() {
    // Small tensors, plenty of memory: the depth cap refuses the chain before dropping or
    // differentiating it could overflow a stack.
    let (lua, limits) = state_with_graph(1 << 30);
    let e = lua
        .load("local y = g:narrow(1, 1, 1) for i = 1, 20000 do y = y + 1 end")
        .exec()
        .unwrap_err()
        .to_string();
    assert!(e.contains("a chain of more than 10000 tensors"), "{e}");
    lua.gc_collect().unwrap();
    assert_eq!(limits.tensor_bytes(), 0);
}

#[test]
fn error_values_and_close_handlers_cannot_hang_the_call() {
    let dir = tempfile::tempdir().unwrap();
    for (i, body) in [
        "error(setmetatable({}, {__tostring = function() while true do end end}))",
        "error(setmetatable({}, {__tostring = function() return string.rep('z', 1e7) end}))",
        "error(tensor.zeros(2))",
        "error()",
        "local t <close> = setmetatable({}, {__close = function() while true do end end}) error('x')",
        "local t <close> = setmetatable({}, {__close = function() while true do end end}) while true do end",
        // A generic for closes its fourth value too.
        "for k in next, {}, nil, setmetatable({}, {__close = function() while true do end end}) do end while true do end",
        "local t <close> = setmetatable({}, {__close = function() while true do end end}) pcall(function() while true do end end)",
    ]
    .iter()
    .enumerate()
    {
        let d = dir.path().join(format!("{i}")).tap_mkdir();
        let (s, p, _) = load_ok(&d, &script_src("", "return x0:sum(2)", body));
        let e = priority_err(&s);
        assert!(e.starts_with(&format!("{}: hook `priority`", p.display())), "{e}");
        assert!(e.len() < 20_000, "case {i}: {} bytes", e.len());
    }
}
