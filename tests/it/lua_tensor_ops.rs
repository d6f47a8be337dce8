//! Tensor operations written in Lua give what the same candle operations give, and
//! autograd runs through expressions built in Lua.

use candle_core::{Device, Tensor, Var};
use mlua::{Lua, Value};
use sqdf::run_log::RunLog;
use sqdf::script::sandbox::{new_state, Limits, SandboxOptions};
use sqdf::script::{LuaTensor, TensorEnv};

fn lua() -> Lua {
    lua_with_log().0
}

fn lua_with_log() -> (Lua, std::sync::Arc<RunLog>, Limits) {
    let env = TensorEnv {
        device: Device::Cpu,
        rng: sqdf::rng::shared(0),
    };
    let log = RunLog::captured();
    let opts = SandboxOptions::new(std::path::Path::new("."), log.clone(), env);
    let (lua, limits, _) = new_state(&opts).unwrap();
    (lua, log, limits)
}

fn close(a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d = a
        .sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "max difference {d}\n{a}\n{b}");
}

fn eval(lua: &Lua, a: &Tensor, b: &Tensor, expr: &str) -> Tensor {
    lua.globals().set("a", LuaTensor::new(a.clone())).unwrap();
    lua.globals().set("b", LuaTensor::new(b.clone())).unwrap();
    let v: Value = lua
        .load(format!("return {expr}"))
        .eval()
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    match v {
        Value::UserData(u) => u.borrow::<LuaTensor>().unwrap().0.clone(),
        Value::Number(n) => Tensor::new(n as f32, &Device::Cpu).unwrap(),
        Value::Integer(n) => Tensor::new(n as f32, &Device::Cpu).unwrap(),
        other => panic!("{expr} gave {other:?}"),
    }
}

#[test]
fn lua_ops_equal_candle_ops() {
    let lua = lua();
    let dev = Device::Cpu;
    let a = Tensor::new(&[[0.5f32, -1.5, 2.0], [3.0, -0.25, 1.0]], &dev).unwrap();
    let b = Tensor::new(&[0.25f32, 2.0, -1.0], &dev).unwrap();
    type F = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
    let cases: Vec<(&str, F)> = vec![
        ("a + b", |a, b| a.broadcast_add(b)),
        ("a - b", |a, b| a.broadcast_sub(b)),
        ("a * b", |a, b| a.broadcast_mul(b)),
        ("a / b", |a, b| a.broadcast_div(b)),
        ("2 + a", |a, _| a.affine(1.0, 2.0)),
        ("2 - a", |a, _| a.affine(-1.0, 2.0)),
        ("a - 2", |a, _| a.affine(1.0, -2.0)),
        ("3 * a", |a, _| a.affine(3.0, 0.0)),
        ("a / 4", |a, _| a.affine(0.25, 0.0)),
        ("1 / b", |_, b| b.recip()),
        ("a ^ 2", |a, _| a.sqr()),
        ("b:abs() ^ 0.5", |_, b| b.abs()?.sqrt()),
        ("2 ^ a", |a, _| a.affine(2f64.ln(), 0.0)?.exp()),
        ("-a", |a, _| a.neg()),
        ("a:sum()", |a, _| a.sum_all()),
        ("a:sum(1)", |a, _| a.sum(0)),
        ("a:sum(-1, true)", |a, _| a.sum_keepdim(1)),
        ("a:mean()", |a, _| a.mean_all()),
        ("a:mean(2)", |a, _| a.mean(1)),
        ("a:sqr()", |a, _| a.sqr()),
        ("a:abs():sqrt()", |a, _| a.abs()?.sqrt()),
        ("a:exp()", |a, _| a.exp()),
        ("a:abs():log()", |a, _| a.abs()?.log()),
        ("a:clamp(-1, 1)", |a, _| a.clamp(-1f32, 1f32)),
        ("a:max()", |a, _| a.max_all()),
        ("a:min(1)", |a, _| a.min(0)),
        ("a:max(2)", |a, _| a.max(1)),
        ("a:matmul(b:reshape(3, 1))", |a, b| {
            a.matmul(&b.reshape((3, 1))?)
        }),
        ("a:reshape({3, 2})", |a, _| a.reshape((3, 2))),
        ("a:reshape(-1)", |a, _| a.reshape(6)),
        ("a:narrow(2, 2, 2)", |a, _| a.narrow(1, 1, 2)),
        ("a:index(2, {3, 1})", |a, _| {
            a.index_select(&Tensor::new(&[2u32, 0], &Device::Cpu)?, 1)
        }),
        ("a:select(1, 2)", |a, _| a.get(1)),
        ("tensor.cat({a, a}, 1)", |a, _| Tensor::cat(&[a, a], 0)),
        ("a:detach()", |a, _| Ok(a.detach())),
        ("a:t()", |a, _| a.t()),
        ("b:unsqueeze(1)", |_, b| b.unsqueeze(0)),
        ("a:softmax(2)", |a, _| candle_nn::ops::softmax(a, 1)),
        ("a:sigmoid()", |a, _| candle_nn::ops::sigmoid(a)),
        ("a:gt(0.9)", |a, _| {
            a.gt(0.9)?.to_dtype(candle_core::DType::F32)
        }),
        ("tensor.from({{1, 2}, {3, 4}})", |_, _| {
            Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)
        }),
        ("tensor.zeros(2, 3)", |_, _| {
            Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)
        }),
        ("tensor.ones({3})", |_, _| {
            Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)
        }),
    ];
    for (expr, f) in cases {
        let got = eval(&lua, &a, &b, expr);
        let want = f(&a, &b).unwrap();
        close(&got, &want);
    }
    let shape: Vec<usize> = lua.load("return a:shape()").eval().unwrap();
    assert_eq!(shape, vec![2, 3]);
    let item: f64 = lua.load("return a:sum():item()").eval().unwrap();
    assert!((item - 4.75).abs() < 1e-6);
    let s: String = lua.load("return tostring(b)").eval().unwrap();
    assert!(s.contains("Tensor[3]"), "{s}");
}

#[test]
fn errors_name_the_shapes() {
    let lua = lua();
    let a = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    lua.globals().set("a", LuaTensor::new(a)).unwrap();
    lua.globals().set("b", LuaTensor::new(b)).unwrap();
    let e = lua
        .load("return a + b")
        .set_name("@t.lua")
        .eval::<Value>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    let e = lua
        .load("return a:sum(3)")
        .eval::<Value>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("dimension 3 is out of range"), "{e}");
    let e = lua
        .load("return a:item()")
        .eval::<Value>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("one element"), "{e}");
}

#[test]
fn autograd_runs_through_lua_expressions() {
    let lua = lua();
    let x = Var::new(&[[0.3f32, -0.7], [1.2, 0.4]], &Device::Cpu).unwrap();
    lua.globals()
        .set("x", LuaTensor::new(x.as_tensor().clone()))
        .unwrap();
    let v: Value = lua
        .load("return ((x * x):sum(2) + (2 - x):exp():mean() / 3 + x:sigmoid():sum()):sum()")
        .eval()
        .unwrap();
    let y = match v {
        Value::UserData(u) => u.borrow::<LuaTensor>().unwrap().0.clone(),
        _ => panic!(),
    };
    let g = y.backward().unwrap().get(x.as_tensor()).unwrap().clone();
    // The same expression in Rust.
    let xt = x.as_tensor();
    let sig = candle_nn::ops::sigmoid(xt).unwrap();
    let y2 = xt
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .broadcast_add(
            &xt.affine(-1.0, 2.0)
                .unwrap()
                .exp()
                .unwrap()
                .mean_all()
                .unwrap()
                .affine(1.0 / 3.0, 0.0)
                .unwrap(),
        )
        .unwrap()
        .broadcast_add(&sig.sum_all().unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let g2 = y2.backward().unwrap().get(xt).unwrap().clone();
    close(&y, &y2);
    close(&g, &g2);
}

#[test]
fn sandbox_has_only_safe_libraries() {
    let (lua, log, limits) = lua_with_log();
    for name in ["io", "os", "package", "debug", "dofile", "loadfile", "load"] {
        let v: Value = lua.globals().get(name).unwrap();
        assert!(v.is_nil(), "{name} should not exist in the sandbox");
    }
    let ok: bool = lua.load("return math.floor(2.5) == 2 and string.rep('a', 2) == 'aa' and table.concat({'x'}) == 'x'").eval().unwrap();
    assert!(ok);
    // Paths that climb out of the allowed folders, with slashes or with leading dots.
    for bad in ["require('../etc/passwd')", "require('.tmp.x')"] {
        let e = lua.load(bad).exec().unwrap_err().to_string();
        assert!(e.contains("module names"), "{e}");
    }
    // An endless loop runs into the instruction budget instead of hanging the run.
    let e = lua
        .load("while true do end")
        .exec()
        .unwrap_err()
        .to_string();
    assert!(e.contains("instruction budget"), "{e}");
    // The limit holds for the rest of that call; the host starts the next one.
    limits.begin("next");
    // The memory limit (256 MiB) stops a script that allocates without bound.
    let e = lua
        .load("local s = string.rep('x', 300 * 1024 * 1024)")
        .exec()
        .unwrap_err();
    assert!(matches!(e, mlua::Error::MemoryError(_)), "{e}");
    // print goes to the run's log; math.random is the run's seeded RNG.
    lua.load("print('hello', 42)").exec().unwrap();
    assert!(
        log.lines().contains(&"[lua] hello\t42".to_string()),
        "{:?}",
        log.lines()
    );
    let e = lua
        .load("math.randomseed(1)")
        .exec()
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.seed"), "{e}");
    let r: f64 = lua.load("return math.random()").eval().unwrap();
    assert!((0.0..1.0).contains(&r));
}
