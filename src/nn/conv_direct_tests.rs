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
    if !crate::nn::cpu::has_avx2_fma() {
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
    if !crate::nn::cpu::has_avx2_fma() {
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

/// Both instruction sets' forward (with a bias per channel or per sample) and kernel
/// gradient against the plain sums in f64, on
/// shapes whose spans end in a full and in a half AVX-512 block and whose channel counts
/// fill 8-, 4-, 2- and 1-channel register blocks (AVX-512 only where the CPU has it).
#[test]
fn every_instruction_set_matches_the_plain_sums() {
    use super::{forward_isa, kernel_grad_isa, Isa};
    if !crate::nn::cpu::has_avx2_fma() {
        return;
    }
    let mut isas = vec![Isa::Avx2];
    if Isa::best() == Isa::Avx512 {
        isas.push(Isa::Avx512);
    } else {
        eprintln!("no AVX-512F: only the AVX2 kernels are checked on this CPU");
    }
    // (b, c, o, h, w, k, p): spans 840 (17.5 blocks of 48), 240, 72, 24 and 48 floats.
    let cases = [
        (2, 8, 16, 28, 28, 3, 1),
        (2, 16, 24, 14, 14, 3, 1),
        (3, 32, 8, 7, 7, 3, 1),
        (2, 3, 6, 4, 4, 3, 1),
        (1, 5, 1, 6, 6, 1, 0),
        (2, 4, 12, 5, 3, 3, 2),
    ];
    for (i, &(b, c, o, h, w, k, p)) in cases.iter().enumerate() {
        let g = super::Geometry { h, w, k, p };
        let (ho, wo) = (g.ho(), g.wo());
        let mut rng = seeded(40 + i as u64);
        let mut vals = |n: usize| {
            randn(&mut rng, n, &Device::Cpu)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (x, wt, dy) = (
            vals(b * c * h * w),
            vals(o * c * k * k),
            vals(b * o * ho * wo),
        );
        // A bias per channel in even cases, per sample and channel (a time embedding) in odd.
        let bias = vals(if i % 2 == 0 { o } else { b * o });
        // The plain sums: y[b, o, y, x] and dw[o, c, ky, kx], zero padding.
        let px = |bi: usize, ci: usize, yy: isize, xx: isize| -> f64 {
            let (yy, xx) = (yy - p as isize, xx - p as isize);
            if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                return 0.0;
            }
            x[((bi * c + ci) * h + yy as usize) * w + xx as usize] as f64
        };
        let mut y_ref = vec![0f64; b * o * ho * wo];
        let mut dw_ref = vec![0f64; o * c * k * k];
        for bi in 0..b {
            for oi in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let at = ((bi * o + oi) * ho + oy) * wo + ox;
                        y_ref[at] = bias[if i % 2 == 0 { oi } else { bi * o + oi }] as f64;
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let xv = px(bi, ci, (oy + ky) as isize, (ox + kx) as isize);
                                    let wi = ((oi * c + ci) * k + ky) * k + kx;
                                    y_ref[at] += wt[wi] as f64 * xv;
                                    dw_ref[wi] += dy[at] as f64 * xv;
                                }
                            }
                        }
                    }
                }
            }
        }
        let xp = super::pad_planes(&x, b * c, g);
        let dyq = super::dy_planes(&dy, b * o, g);
        for &isa in &isas {
            let y = forward_isa(isa, &xp, &wt, Some(&bias), b, c, o, g);
            let dw = kernel_grad_isa(isa, &xp, &dyq, b, c, o, g);
            for (name, got, want) in [("forward", &y, &y_ref), ("kernel grad", &dw, &dw_ref)] {
                let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
                let err = got
                    .iter()
                    .zip(want.iter())
                    .fold(0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
                assert!(
                    got.len() == want.len() && err <= 1e-5 * scale,
                    "case {i}, {isa:?} {name}: max error {err:e} of scale {scale}"
                );
            }
        }
    }
}
