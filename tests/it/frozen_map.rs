//! Layers with frozen parameters pass back dL/dx through `nn::frozen_map`'s hand-written
//! vector-Jacobian products; with the same parameters as variables they take candle's
//! own backward. Both must give the same values and the same dL/dx, for inputs of every
//! rank (Linear) and every feature dimension (scale_shift: norms' affines, biases).

use crate::common;

use candle_core::{DType, Device, Module, Tensor, Var};
use common::max_abs_diff;
use sqdf::nn::channel::scale_shift;
use sqdf::nn::Linear;

const DEV: Device = Device::Cpu;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = sqdf::rng::seeded(seed);
    sqdf::rng::randn(&mut rng, shape, &DEV)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// Values and dL/dx of `f_frozen` and `f_var` (the same function, parameters frozen or
/// variables) for L = sum(f(x) * r).
fn same(
    shape: &[usize],
    f_frozen: impl Fn(&Tensor) -> Tensor,
    f_var: impl Fn(&Tensor) -> Tensor,
    what: &str,
) {
    let x = Var::from_tensor(&randn(shape, 11)).unwrap();
    let (a, b) = (f_frozen(x.as_tensor()), f_var(x.as_tensor()));
    assert_eq!(a.dims(), b.dims(), "{what}");
    assert!(max_abs_diff(&a, &b) < 1e-12, "{what}: values differ");
    let r = randn(a.dims(), 12);
    let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let (dxa, dxb) = (
        ga.get(x.as_tensor()).unwrap(),
        gb.get(x.as_tensor()).unwrap(),
    );
    let scale = dxb
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(scale > 1e-3, "{what}: zero gradient, nothing compared");
    assert!(
        max_abs_diff(dxa, dxb) < 1e-10 * scale,
        "{what}: dL/dx differs"
    );
}

#[test]
fn frozen_linear_matches_candle_backward_at_every_rank() {
    let (w, b) = (randn(&[5, 4], 1), randn(&[5], 2));
    let frozen = Linear::new(w.clone(), Some(b.clone()));
    let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
    let trainable = Linear::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone()));
    let no_bias = Linear::new(w.clone(), None);
    let no_bias_var = Linear::new(wv.as_tensor().clone(), None);
    for shape in [vec![4], vec![3, 4], vec![2, 3, 4], vec![2, 2, 3, 4]] {
        let what = format!("Linear on {shape:?}");
        same(
            &shape,
            |x| frozen.forward(x).unwrap(),
            |x| trainable.forward(x).unwrap(),
            &what,
        );
        same(
            &shape,
            |x| no_bias.forward(x).unwrap(),
            |x| no_bias_var.forward(x).unwrap(),
            &what,
        );
    }
}

#[test]
fn frozen_scale_shift_matches_candle_backward_on_every_dimension() {
    let shape = [2, 3, 4, 5];
    for dim in [0, 1, 3] {
        let (w, b) = (randn(&[shape[dim]], 3), randn(&[shape[dim]], 4));
        let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
        let what = format!("scale_shift over dim {dim}");
        same(
            &shape,
            |x| scale_shift(x, Some(&w), Some(&b), dim).unwrap(),
            |x| scale_shift(x, Some(wv.as_tensor()), Some(bv.as_tensor()), dim).unwrap(),
            &what,
        );
        same(
            &shape,
            |x| scale_shift(x, None, Some(&b), dim).unwrap(),
            |x| scale_shift(x, None, Some(bv.as_tensor()), dim).unwrap(),
            &what,
        );
    }
}
