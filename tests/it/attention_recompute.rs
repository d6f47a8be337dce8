//! The attention that recomputes its probabilities in the backward gives the plain
//! formula's values and gradients (q, k and v), in one chunk and in many, in f64 and bf16.

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use sqdf::nn::attention_recompute::attention_recompute_in_chunks;
use sqdf::nn::scaled_dot_product_attention_plain;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(a, b)
}

fn randn(shape: (usize, usize, usize), dtype: DType) -> Tensor {
    Tensor::randn(0f64, 1.0, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Values and the gradients of sum(out * w) for random q, k, v: plain against recompute.
fn compare(dtype: DType, chunk_elements: usize, tol: f64) {
    let (n, lq, lk, d, dv) = (3, 37, 29, 8, 6);
    let q = Var::from_tensor(&randn((n, lq, d), dtype)).unwrap();
    let k = Var::from_tensor(&randn((n, lk, d), dtype)).unwrap();
    let v = Var::from_tensor(&randn((n, lk, dv), dtype)).unwrap();
    let w = randn((n, lq, dv), dtype);
    let plain = scaled_dot_product_attention_plain(&q, &k, &v).unwrap();
    let fast = attention_recompute_in_chunks(&q, &k, &v, chunk_elements).unwrap();
    assert!(
        max_diff(&plain, &fast) < tol,
        "values differ by {}",
        max_diff(&plain, &fast)
    );
    let g_plain = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g_fast = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
        let a = g_plain.get(var).unwrap();
        let b = g_fast
            .get(var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let scale = a
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let diff = max_diff(a, b);
        assert!(
            diff <= tol * scale.max(1.0),
            "d{name}: differs by {diff} (scale {scale})"
        );
        assert!(scale > 1e-3, "d{name} is zero: nothing was compared");
    }
}

#[test]
fn recompute_equals_plain_in_one_chunk() {
    compare(DType::F64, usize::MAX, 1e-10);
}

#[test]
fn recompute_equals_plain_in_many_chunks() {
    // 3 * 29 * 5 elements per chunk: 5 query rows at a time, the last chunk shorter.
    compare(DType::F64, 3 * 29 * 5, 1e-10);
}

#[test]
fn recompute_in_bf16_is_close_to_plain() {
    // bf16 keeps about 3 significant digits; both reduce the softmax in f32.
    compare(DType::BF16, 3 * 29 * 8, 3e-2);
}

#[test]
fn constant_keys_and_values_get_no_gradient_entry() {
    let dev = Device::Cpu;
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap()).unwrap();
    let k = Tensor::randn(0f32, 1.0, (2, 7, 4), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (2, 7, 4), &dev).unwrap();
    let out = attention_recompute_in_chunks(&q, &k, &v, 1 << 20).unwrap();
    let grads = out.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&q).is_some());
    assert!(grads.get(&k).is_none() && grads.get(&v).is_none());
    // Without any tracked input the output carries no graph at all.
    let out = attention_recompute_in_chunks(&q.detach(), &k, &v, 1 << 20).unwrap();
    assert!(!out.track_op());
}
