//! Tests of `conv_direct.rs`.
use crate::nn::conv::conv2d;
use crate::nn::cpu::assert_same_values_and_gradients;
use crate::rng::{randn, seeded};
use candle_core::{Device, Var};

/// The direct kernels against candle's own conv2d (the plain formula): values, the
/// input gradient and the kernel gradient, over kernel sizes, paddings, channel counts
/// that do and do not fill a register block, and square and non-square images whose
/// flattened length is not a multiple of a block.
#[test]
fn direct_conv_matches_candle_conv_and_both_gradients() {
    if !super::available() {
        eprintln!("no AVX2 + FMA: the direct kernels are not used on this CPU");
        return;
    }
    let d = Device::Cpu;
    let cases = [
        // (b, c, o, h, w, k, p)
        (2, 8, 8, 28, 28, 3, 1),
        (3, 16, 8, 14, 14, 3, 1),
        (2, 32, 32, 7, 7, 3, 1),
        (2, 1, 8, 28, 28, 3, 1),
        (2, 8, 1, 28, 28, 3, 1),
        (1, 5, 3, 9, 6, 3, 1),
        (2, 6, 2, 7, 11, 3, 0),
        (2, 24, 16, 7, 7, 1, 0),
        (1, 3, 5, 4, 4, 3, 2),
    ];
    for (i, &(b, c, o, h, w, k, p)) in cases.iter().enumerate() {
        let mut rng = seeded(i as u64);
        let x = Var::from_tensor(&randn(&mut rng, (b, c, h, w), &d).unwrap()).unwrap();
        let wt = Var::from_tensor(&randn(&mut rng, (o, c, k, k), &d).unwrap()).unwrap();
        let probe = randn(&mut rng, (b, o, h + 2 * p + 1 - k, w + 2 * p + 1 - k), &d).unwrap();
        let y = conv2d(&x, &wt, p, 1).unwrap();
        let yr = x.conv2d(&wt, p, 1, 1, 1).unwrap();
        assert_same_values_and_gradients(
            &y,
            &yr,
            &probe,
            &[("input", &x), ("kernel", &wt)],
            1e-5,
            &format!("case {i}"),
        );
    }
}

/// `Conv2d` with a trainable bias (the fused op): values and the gradients of the
/// input, the kernel and the bias against candle's conv2d plus a broadcast bias.
#[test]
fn fused_bias_matches_conv_plus_bias_and_its_gradients() {
    if !super::available() {
        return;
    }
    let d = Device::Cpu;
    let mut rng = seeded(9);
    let x = Var::from_tensor(&randn(&mut rng, (3, 6, 10, 10), &d).unwrap()).unwrap();
    let w = Var::from_tensor(&randn(&mut rng, (4, 6, 3, 3), &d).unwrap()).unwrap();
    let b = Var::from_tensor(&randn(&mut rng, 4, &d).unwrap()).unwrap();
    let probe = randn(&mut rng, (3, 4, 10, 10), &d).unwrap();
    let cfg = candle_nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let layer = crate::nn::Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg);
    let y = candle_core::Module::forward(&layer, &x).unwrap();
    let yr = x
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    assert_same_values_and_gradients(
        &y,
        &yr,
        &probe,
        &[("input", &x), ("kernel", &w), ("bias", &b)],
        2e-5,
        "fused bias",
    );
}

/// The forward, both gradients and the fused group norm give the same bits on 1 and
/// 3 threads: every sum is over a fixed partition in a fixed order.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let d = Device::Cpu;
    let mut rng = seeded(3);
    let x = randn(&mut rng, (5, 8, 14, 14), &d).unwrap();
    let w = randn(&mut rng, (16, 8, 3, 3), &d).unwrap();
    let probe = randn(&mut rng, (5, 16, 14, 14), &d).unwrap();
    let (g, b) = (
        randn(&mut rng, 8, &d).unwrap(),
        randn(&mut rng, 8, &d).unwrap(),
    );
    let run = || {
        let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let op = crate::nn::group_norm_cpu::GroupNormOp {
            groups: 4,
            eps: 1e-5,
            silu: true,
        };
        let h = xv.apply_op3(&g, &b, op).unwrap();
        let y = conv2d(&h, &wv, 1, 1).unwrap();
        let grads = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        [
            y,
            grads.get(&xv).unwrap().clone(),
            grads.get(&wv).unwrap().clone(),
        ]
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
    };
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let one = pool(1).install(run);
    let three = pool(3).install(run);
    assert!(one == three, "results differ between 1 and 3 threads");
}

/// A per-sample bias (a resnet's time embedding) added in the same op: values and the
/// gradients of the input, the kernel, the bias and the per-sample bias.
#[test]
fn per_sample_bias_matches_a_broadcast_add_and_its_gradients() {
    let d = Device::Cpu;
    let mut rng = seeded(11);
    let x = Var::from_tensor(&randn(&mut rng, (3, 5, 9, 9), &d).unwrap()).unwrap();
    let w = Var::from_tensor(&randn(&mut rng, (4, 5, 3, 3), &d).unwrap()).unwrap();
    let b = Var::from_tensor(&randn(&mut rng, 4, &d).unwrap()).unwrap();
    let t = Var::from_tensor(&randn(&mut rng, (3, 4), &d).unwrap()).unwrap();
    let probe = randn(&mut rng, (3, 4, 9, 9), &d).unwrap();
    let cfg = candle_nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let layer = crate::nn::Conv2d::new(w.as_tensor().clone(), Some(b.as_tensor().clone()), cfg);
    let y = layer.forward_with_sample_bias(&x, &t).unwrap();
    let yr = x
        .conv2d(&w, 1, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&t.reshape((3, 4, 1, 1)).unwrap())
        .unwrap();
    assert_same_values_and_gradients(
        &y,
        &yr,
        &probe,
        &[
            ("input", &x),
            ("kernel", &w),
            ("bias", &b),
            ("sample bias", &t),
        ],
        2e-5,
        "per-sample bias",
    );
}
