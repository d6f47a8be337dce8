//! The black-box surrogate (arXiv 2512.04559 §5.2, Appendix D.1.2 / D.2.3) on synthetic,
//! seeded data: bootstrap heads disagree more where data is sparse, the UCB bonus is its
//! formula, the best held-out epoch is the one restored, the reward's gradient w.r.t. the
//! features matches finite differences, and a learnable function is learned.

use anyhow::Result;
use candle_core::{Device, Module, Tensor, Var};
use rand::Rng as _;
use sqdf::blackbox::fit::mse;
use sqdf::blackbox::{
    fit_mlp, Bootstrap, Combine, FitConfig, LabelledSet, SigmaKind, Surrogate, SurrogateConfig,
    SurrogateMlp, UcbBonus, Uncertainty,
};
use sqdf::rng::{randn, seeded};
use sqdf::tensor_io::sorted_vars;

fn dev() -> Device {
    Device::Cpu
}

fn mean(v: &[f32]) -> f64 {
    v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64
}

/// 1-D features: many points in [-1, 0], few in [0.5, 1.5]; labels sin(2x) + noise.
fn dense_and_sparse(seed: u64) -> Result<LabelledSet> {
    let mut rng = seeded(seed);
    let mut set = LabelledSet::new(1);
    for (n, lo, hi) in [(600, -1.0f32, 0.0f32), (6, 0.5, 1.5)] {
        for _ in 0..n {
            let x = rng.random_range(lo..hi);
            let noise: f32 = rng.random_range(-0.1..0.1);
            set.push_rows(&[x], &[(2.0 * x).sin() + noise])?;
        }
    }
    Ok(set)
}

/// The gap between heads 0 and 1 of a 2-head ensemble whose heads start from the same
/// weights and train on the full batch (so minibatch order does not matter): what remains
/// comes from the data each head saw.
fn twin_heads_gap(resample: bool) -> Result<f32> {
    let set = dense_and_sparse(3)?;
    let mut b = Bootstrap::new(1, &[16], 2, 5, &dev())?;
    let from = sorted_vars(&b.vars[0]);
    for ((_, to), (_, v)) in sorted_vars(&b.vars[1]).iter().zip(&from) {
        to.set(v.as_tensor())?;
    }
    let split = set.split(0.1, 1)?;
    let cfg = FitConfig {
        epochs: 30,
        lr: 1e-2,
        batch: 10_000,
        weight_decay: 0.0,
    };
    b.fit(&set, &split, &cfg, resample, 9)?;
    let p = b
        .predict(&Tensor::new(&[[-0.5f32], [1.0]], &dev())?)?
        .per_head;
    Ok(p.get(0)?
        .sub(&p.get(1)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?)
}

#[test]
fn each_bootstrap_head_trains_on_its_own_resample() -> Result<()> {
    let (same, resampled) = (twin_heads_gap(false)?, twin_heads_gap(true)?);
    assert!(
        same < 1e-4,
        "same data and weights, yet heads differ by {same}"
    );
    assert!(
        resampled > 1e-3,
        "resamples left the heads equal ({resampled})"
    );
    Ok(())
}

#[test]
fn bootstrap_heads_differ_and_spread_where_data_is_sparse() -> Result<()> {
    let set = dense_and_sparse(11)?;
    let cfg = SurrogateConfig {
        uncertainty: Uncertainty::Bootstrap,
        heads: 4,
        hidden: vec![32, 16],
        epochs: 150,
        lr: 1e-2,
        batch: 64,
        ..Default::default()
    };
    let mut s = Surrogate::new(cfg, 1, 5, &dev())?;
    s.fit(&set, 7)?;

    // Parameters differ between heads.
    let heads = &s.ensemble().vars;
    let (a, b) = (sorted_vars(&heads[0]), sorted_vars(&heads[1]));
    let diff = a[0]
        .1
        .as_tensor()
        .sub(b[0].1.as_tensor())?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(diff > 1e-3, "heads 0 and 1 have the same {}", a[0].0);

    let grid = |lo: f32, hi: f32| -> Result<Tensor> {
        let v: Vec<f32> = (0..50).map(|i| lo + (hi - lo) * i as f32 / 49.0).collect();
        Ok(Tensor::from_vec(v, (50, 1), &dev())?)
    };
    let dense = s.predict_stats(&grid(-0.9, -0.1)?)?;
    let sparse = s.predict_stats(&grid(0.6, 1.4)?)?;

    // Predictions differ between heads.
    let p = s.ensemble().predict(&grid(-0.9, 1.4)?)?.per_head;
    let gap = p
        .get(0)?
        .sub(&p.get(1)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert!(gap > 1e-3, "heads 0 and 1 predict the same");

    let (sd, ss) = (mean(&dense.std.to_vec1()?), mean(&sparse.std.to_vec1()?));
    println!("mean std over heads: dense {sd:.4}, sparse {ss:.4}");
    assert!(
        3.0 * sd < ss,
        "spread where data is dense ({sd}) should be well below where it is sparse ({ss})"
    );
    // max >= mean >= min over heads, per sample.
    for (mx, mn) in sparse
        .max
        .to_vec1::<f32>()?
        .iter()
        .zip(sparse.mean.to_vec1::<f32>()?)
    {
        assert!(*mx >= mn - 1e-6);
    }
    Ok(())
}

/// (Sigma + lambda I)^-1 for 2 x 2 Sigma, by the explicit formula.
fn inv2(s: [[f64; 2]; 2], lambda: f64) -> [[f64; 2]; 2] {
    let (a, b, c) = (s[0][0] + lambda, s[0][1], s[1][1] + lambda);
    let det = a * c - b * b;
    [[c / det, -b / det], [-b / det, a / det]]
}

#[test]
fn ucb_bonus_matches_its_formula() -> Result<()> {
    let labelled = [[1.0f64, 0.0], [0.0, 2.0], [1.0, 1.0]];
    let flat: Vec<f32> = labelled.iter().flatten().map(|v| *v as f32).collect();
    let phi_l = Tensor::from_vec(flat, (3, 2), &dev())?;
    let queries = [[1.0f64, -1.0], [0.5, 2.0], [0.0, 0.0], [3.0, -4.0]];
    let flat: Vec<f32> = queries.iter().flatten().map(|v| *v as f32).collect();
    let phi_q = Tensor::from_vec(flat, (4, 2), &dev())?;

    // By hand: Gram = sum phi phi^T = [[2, 1], [1, 5]]; mean = (2/3, 1), deviations
    // (1/3, -1), (-2/3, 1), (1/3, 0), covariance / (N - 1) = [[1/3, -1/2], [-1/2, 1]].
    let gram = [[2.0, 1.0], [1.0, 5.0]];
    let cov = [[1.0 / 3.0, -0.5], [-0.5, 1.0]];
    let (lambda, c1) = (0.5, 0.3);
    for (kind, sigma) in [(SigmaKind::Gram, gram), (SigmaKind::Covariance, cov)] {
        let inv = inv2(sigma, lambda);
        let expected: Vec<f64> = queries
            .iter()
            .map(|p| {
                let q = p[0] * (inv[0][0] * p[0] + inv[0][1] * p[1])
                    + p[1] * (inv[1][0] * p[0] + inv[1][1] * p[1]);
                c1 * q.sqrt()
            })
            .collect();

        let ucb = UcbBonus::from_phi(&phi_l, kind, lambda, c1, 100.0)?;
        let got = ucb.bonus(&phi_q)?.to_vec1::<f32>()?;
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (*g as f64 - e).abs() < 1e-5 * (1.0 + e),
                "{kind:?}: {got:?} vs {expected:?}"
            );
        }

        // The clip: min(bonus, clip), the unclipped ones unchanged.
        let clip = 0.5 * (expected[0] + expected[3]).min(2.0 * expected[0]);
        let clipped = UcbBonus::from_phi(&phi_l, kind, lambda, c1, clip)?
            .bonus(&phi_q)?
            .to_vec1::<f32>()?;
        assert!(expected.iter().any(|e| *e > clip) && expected.iter().any(|e| *e < clip));
        for (g, e) in clipped.iter().zip(&expected) {
            assert!((*g as f64 - e.min(clip)).abs() < 1e-5 * (1.0 + e));
        }

        // d bonus / d phi = c1 inv phi / sqrt(phi^T inv phi), and finite at phi = 0.
        let v = Var::from_tensor(&phi_q)?;
        let g = ucb.bonus(v.as_tensor())?.sum_all()?.backward()?;
        let g = g.get(v.as_tensor()).unwrap().to_vec2::<f32>()?;
        for (i, p) in queries.iter().enumerate() {
            let w = [
                inv[0][0] * p[0] + inv[0][1] * p[1],
                inv[1][0] * p[0] + inv[1][1] * p[1],
            ];
            let q = p[0] * w[0] + p[1] * w[1];
            for j in 0..2 {
                let e = if q > 0.0 { c1 * w[j] / q.sqrt() } else { 0.0 };
                assert!((g[i][j] as f64 - e).abs() < 1e-4 * (1.0 + e.abs()));
            }
        }
    }
    // The paper's Gram form shrinks the bonus as data grows; the covariance does not.
    let twice = Tensor::cat(&[&phi_l, &phi_l], 0)?;
    let b = |phi: &Tensor, kind| -> Result<f64> {
        let u = UcbBonus::from_phi(phi, kind, lambda, c1, 100.0)?;
        Ok(mean(&u.bonus(&phi_q)?.to_vec1::<f32>()?))
    };
    assert!(b(&twice, SigmaKind::Gram)? < 0.8 * b(&phi_l, SigmaKind::Gram)?);
    assert!(b(&twice, SigmaKind::Covariance)? > 0.8 * b(&phi_l, SigmaKind::Covariance)?);
    Ok(())
}

#[test]
fn best_held_out_epoch_is_restored() -> Result<()> {
    // Pure-noise labels on a tiny training set: a wide net memorises it, and the held-out
    // error rises after its first epochs, so the last epoch is clearly not the best.
    let d = 8;
    let mut rng = seeded(3);
    let x = randn(&mut rng, (24, d), &dev())?;
    let y = randn(&mut rng, 24, &dev())?;
    let hx = randn(&mut rng, (200, d), &dev())?;
    let hy = randn(&mut rng, 200, &dev())?;
    let (vars, mlp) = SurrogateMlp::fresh(d, &[64, 64], &mut seeded(4), &dev())?;
    let cfg = FitConfig {
        epochs: 300,
        lr: 1e-2,
        batch: 8,
        weight_decay: 0.0,
    };
    let report = fit_mlp(
        &mlp,
        &vars,
        (&x, &y),
        Some((&hx, &hy)),
        &cfg,
        &mut seeded(5),
    )?;
    let losses = &report.held_out_loss;
    assert_eq!(losses.len(), cfg.epochs);
    let min = losses.iter().cloned().fold(f64::INFINITY, f64::min);
    let last = *losses.last().unwrap();
    let final_loss = mse(&mlp, &hx, &hy)?;
    println!(
        "held-out: initial {:.3}, best {min:.3} at epoch {}, last {last:.3}; train loss last {:.4}",
        report.initial_held_out,
        report.best_epoch,
        report.train_loss.last().unwrap()
    );
    assert!(
        last > min + 0.2,
        "the case must overfit: last {last}, best {min}"
    );
    assert!(report.best_epoch < cfg.epochs - 10);
    assert_eq!(report.best_held_out, losses[report.best_epoch]);
    assert_eq!(report.best_held_out, min);
    assert!(
        (final_loss - min).abs() < 1e-6,
        "final model's held-out loss {final_loss} is not the best {min} (last {last})"
    );

    // Through the façade: the held-out part of the split gives each head its best loss.
    let mut set = LabelledSet::new(d);
    set.push(&x, &y)?;
    set.push(&hx, &hy)?;
    let cfg = SurrogateConfig {
        uncertainty: Uncertainty::None,
        hidden: vec![64, 64],
        epochs: 150,
        lr: 1e-2,
        batch: 8,
        holdout: 0.5,
        ..Default::default()
    };
    let mut s = Surrogate::new(cfg, d, 1, &dev())?;
    let r = s.fit(&set, 2)?;
    // Each row is held out with probability 1/2 (a per-row hash): 112 expected of 224.
    let k = r.split.held_out.len();
    assert!(
        (80..145).contains(&k) && k + r.split.train.len() == 224,
        "{k}"
    );
    let (hx, hy) = set.gather(&r.split.held_out, &dev())?;
    let h = &r.heads[0];
    let min = h
        .held_out_loss
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    let final_loss = mse(&s.ensemble().heads[0], &hx, &hy)?;
    assert!((final_loss - min).abs() < 1e-6, "{final_loss} vs {min}");
    let rew = s
        .reward(&hx)?
        .sub(&hy)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?;
    assert!((rew as f64 - min).abs() < 1e-5);
    Ok(())
}

/// The reward's gradient w.r.t. the features against finite differences along a random
/// direction, sample by sample (each sample's reward depends on its own row only). ReLU
/// makes the reward piecewise smooth: where the interval [x - eps v, x + eps v] crosses a
/// kink the central difference is off while the one-sided difference on the other side is
/// still right, so each sample must match its central, forward or backward difference.
fn check_gradient(s: &Surrogate, seed: u64, d: usize) -> Result<()> {
    let n = 8;
    let x = randn(&mut seeded(seed), (n, d), &dev())?;
    let v = randn(&mut seeded(seed + 1), (n, d), &dev())?;
    let xv = Var::from_tensor(&x)?;
    let r = s.reward(xv.as_tensor())?;
    assert_eq!(r.dims(), [n]);
    let g = r.sum_all()?.backward()?;
    let g = g
        .get(xv.as_tensor())
        .expect("no gradient reaches the features");
    let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    assert!(norm > 1e-3, "zero gradient w.r.t. the features");
    let analytic = g.mul(&v)?.sum(1)?.to_vec1::<f32>()?;
    let eps = 1e-3;
    let at = |t: f64| -> Result<Vec<f64>> {
        let r = s.reward(&x.add(&v.affine(t, 0.0)?)?)?.to_vec1::<f32>()?;
        Ok(r.into_iter().map(f64::from).collect())
    };
    let (plus, zero, minus) = (at(eps)?, at(0.0)?, at(-eps)?);
    let mut one_sided = 0;
    for i in 0..n {
        let a = analytic[i] as f64;
        let tol = 1e-2 * a.abs() + 2e-3;
        let central = (plus[i] - minus[i]) / (2.0 * eps);
        let forward = (plus[i] - zero[i]) / eps;
        let backward = (zero[i] - minus[i]) / eps;
        if (a - central).abs() <= tol {
            continue;
        }
        one_sided += 1;
        assert!(
            (a - forward).abs() <= tol || (a - backward).abs() <= tol,
            "sample {i}: gradient {a}, finite differences central {central}, forward {forward}, backward {backward}"
        );
    }
    println!(
        "{:?} {:?}: |grad| {norm:.3}; {n} samples match ({one_sided} one-sided, past a ReLU kink)",
        s.config().uncertainty,
        s.config().combine
    );
    Ok(())
}

/// `n` rows of N(0, I) features in `d` dimensions labelled w.x + noise, with w ~ N(0, I/d)
/// drawn from `w_seed` (so the label variance is about 1) and the rows from `seed`.
fn linear_set(n: usize, d: usize, noise: f32, w_seed: u64, seed: u64) -> Result<LabelledSet> {
    let w = randn(&mut seeded(w_seed), d, &dev())?.affine(1.0 / (d as f64).sqrt(), 0.0)?;
    let mut rng = seeded(seed);
    let x = randn(&mut rng, (n, d), &dev())?;
    let y = x
        .matmul(&w.unsqueeze(1)?)?
        .squeeze(1)?
        .add(&randn(&mut rng, n, &dev())?.affine(noise as f64, 0.0)?)?;
    let mut set = LabelledSet::new(d);
    set.push(&x, &y)?;
    Ok(set)
}

#[test]
fn reward_is_differentiable_in_the_features() -> Result<()> {
    let d = 6;
    let set = linear_set(300, d, 0.1, 20, 21)?;
    let base = SurrogateConfig {
        hidden: vec![32, 16],
        epochs: 40,
        lr: 1e-2,
        batch: 64,
        ..Default::default()
    };
    // A large c1 so that the bonus is a sizeable part of what is checked.
    let variants = [
        SurrogateConfig {
            uncertainty: Uncertainty::Ucb,
            c1: 1.0,
            ..base.clone()
        },
        SurrogateConfig {
            uncertainty: Uncertainty::Ucb,
            c1: 1.0,
            sigma: SigmaKind::Covariance,
            ..base.clone()
        },
        SurrogateConfig {
            uncertainty: Uncertainty::Bootstrap,
            combine: Combine::Mean,
            ..base.clone()
        },
        SurrogateConfig {
            uncertainty: Uncertainty::Bootstrap,
            combine: Combine::Max,
            ..base.clone()
        },
        SurrogateConfig {
            uncertainty: Uncertainty::None,
            ..base.clone()
        },
    ];
    for (i, cfg) in variants.into_iter().enumerate() {
        let mut s = Surrogate::new(cfg, d, 30 + i as u64, &dev())?;
        s.fit(&set, 40 + i as u64)?;
        check_gradient(&s, 50 + i as u64, d)?;
        if s.config().uncertainty == Uncertainty::Ucb {
            // The bonus itself passes a gradient to the features (through phi).
            let xv = Var::from_tensor(&set.gather(&[0, 1, 2], &dev())?.0)?;
            let phi = s.ensemble().heads[0].hidden(xv.as_tensor())?;
            let b = s.ucb().expect("ucb after fit").bonus(&phi)?.sum_all()?;
            let g = b
                .backward()?
                .get(xv.as_tensor())
                .unwrap()
                .abs()?
                .sum_all()?;
            assert!(
                g.to_scalar::<f32>()? > 1e-4,
                "no gradient through the bonus"
            );
            let stats = s.predict_stats(&set.gather(&[0, 1, 2], &dev())?.0)?;
            let b = stats
                .bonus
                .expect("ucb reports its bonus")
                .to_vec1::<f32>()?;
            assert!(b.iter().all(|v| *v > 0.0));
        }
    }
    Ok(())
}

#[test]
fn learns_a_linear_function_fast() -> Result<()> {
    // The benchmark's size: 2000 labelled samples of 128-d features, default configuration
    // (4 bootstrap heads, 200 epochs).
    let (n, d) = (2000, 128);
    let set = linear_set(n, d, 0.1, 7, 8)?;
    let mut s = Surrogate::new(SurrogateConfig::default(), d, 9, &dev())?;
    let r = s.fit(&set, 10)?;
    let (hx, hy) = set.gather(&r.split.held_out, &dev())?;
    let k = r.split.held_out.len();
    assert!((160..240).contains(&k), "{k} of 2000 held out at 10%");
    let stats = s.predict_stats(&hx)?;
    let err = stats.mean.sub(&hy)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
    let var = mean(&hy.sqr()?.to_vec1()?) - mean(&hy.to_vec1()?).powi(2);
    println!(
        "fit of {} heads on {n} x {d}: {:.2} s; held-out MSE of the mean {err:.4} (label variance {var:.3}, noise 0.01); best epochs {:?}",
        r.heads.len(),
        r.seconds,
        r.heads.iter().map(|h| h.best_epoch).collect::<Vec<_>>()
    );
    assert!(
        (err as f64) < 0.1 * var,
        "held-out MSE {err} vs label variance {var}"
    );

    // A second round on the grown set starts from these weights (warm start, the default):
    // its held-out error before the first epoch is already low.
    let more = linear_set(200, d, 0.1, 7, 12)?;
    let mut grown = set.clone();
    let (mx, my) = more.tensors(&dev())?;
    grown.push(&mx, &my)?;
    let r2 = s.fit(&grown, 11)?;
    assert_eq!(grown.len(), n + 200);
    let init = r2
        .heads
        .iter()
        .map(|h| h.initial_held_out)
        .fold(0.0, f64::max);
    println!(
        "second round on {}: {:.2} s, held-out MSE before it {init:.4}",
        grown.len(),
        r2.seconds
    );
    assert!(
        init < 0.2 * var,
        "warm start: {init} vs label variance {var}"
    );
    Ok(())
}

#[test]
fn cold_start_redraws_the_weights() -> Result<()> {
    let d = 6;
    let set = linear_set(300, d, 0.1, 1, 2)?;
    let cfg = SurrogateConfig {
        uncertainty: Uncertainty::None,
        epochs: 60,
        lr: 1e-2,
        batch: 64,
        ..Default::default()
    };
    let initial = |warm_start: bool| -> Result<(f64, f64)> {
        let mut s = Surrogate::new(
            SurrogateConfig {
                warm_start,
                ..cfg.clone()
            },
            d,
            3,
            &dev(),
        )?;
        let first = s.fit(&set, 4)?.heads[0].clone();
        let second = s.fit(&set, 5)?.heads[0].clone();
        Ok((first.best_held_out, second.initial_held_out))
    };
    let (best, warm) = initial(true)?;
    let (_, cold) = initial(false)?;
    println!("first fit best {best:.4}; second fit starts at {warm:.4} warm, {cold:.4} cold");
    assert!(
        warm < 2.0 * best + 0.05 && cold > 5.0 * warm,
        "warm {warm}, cold {cold}"
    );
    Ok(())
}

#[test]
fn shape_misuse_names_the_expected_width() -> Result<()> {
    let set = linear_set(40, 5, 0.1, 0, 1)?;
    let mut s = Surrogate::new(
        SurrogateConfig {
            epochs: 2,
            ..Default::default()
        },
        5,
        0,
        &dev(),
    )?;
    let x = Tensor::zeros((3, 4), candle_core::DType::F32, &dev())?;
    let e = s.reward(&x).unwrap_err().to_string();
    assert!(e.contains("not been fitted"), "{e}");
    s.fit(&set, 0)?;
    let e = s.reward(&x).unwrap_err().to_string();
    assert!(e.contains("[N, 5]"), "{e}");
    let e = s.reward(&x.flatten_all()?).unwrap_err().to_string();
    assert!(e.contains("[N, 5]"), "{e}");
    let e = s.fit(&LabelledSet::new(4), 0).unwrap_err().to_string();
    assert!(e.contains("width 5"), "{e}");
    let mut wrong = LabelledSet::new(5);
    let e = wrong
        .push(&x, &Tensor::zeros(3, candle_core::DType::F32, &dev())?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[n, 5]"), "{e}");
    // f64 features are accepted (converted to f32).
    let r = s.reward(
        &set.gather(&[0, 1], &dev())?
            .0
            .to_dtype(candle_core::DType::F64)?,
    )?;
    assert_eq!(r.dims(), [2]);
    // A bootstrap resample has the training split's size and draws from it only.
    let split = set.split(0.1, 3)?;
    assert_eq!(split.train.len() + split.held_out.len(), 40);
    assert!(!split.held_out.is_empty() && split.held_out.len() < 12);
    let b = sqdf::blackbox::bootstrap_resample(&split.train, &mut seeded(1));
    assert_eq!(b.len(), split.train.len());
    assert!(b.iter().all(|i| split.train.contains(i)));
    let mut uniq = b.clone();
    uniq.sort();
    uniq.dedup();
    assert!(
        uniq.len() < b.len(),
        "a resample with replacement repeats rows"
    );
    assert!(Bootstrap::new(5, &[8], 0, 0, &dev()).is_err());
    Ok(())
}

#[test]
fn training_forward_matches_the_plain_one() -> Result<()> {
    // `forward_data` (used by the fit, no gradient for the features) gives the same values
    // and the same parameter gradients as `forward`.
    let (vars, mlp) = SurrogateMlp::fresh(12, &[16, 8], &mut seeded(6), &dev())?;
    let x = randn(&mut seeded(7), (30, 12), &dev())?;
    let y = randn(&mut seeded(8), 30, &dev())?;
    let (a, b) = (mlp.forward(&x)?, mlp.forward_data(&x)?);
    let gap = a.sub(&b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(gap < 1e-6, "values differ by {gap}");
    let ga = a.sub(&y)?.sqr()?.mean_all()?.backward()?;
    let gb = b.sub(&y)?.sqr()?.mean_all()?.backward()?;
    let params = sorted_vars(&vars);
    assert_eq!(params.len(), 6);
    for (name, v) in params {
        let (p, q) = (
            ga.get(v.as_tensor()).expect("gradient"),
            gb.get(v.as_tensor()).expect("gradient"),
        );
        let gap = p.sub(q)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let size = p.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            size > 0.0 && gap <= 1e-5 * size,
            "{name}: gradients differ by {gap}"
        );
    }
    // A linear model (no hidden layer): phi is the input itself.
    let (_, lin) = SurrogateMlp::fresh(12, &[], &mut seeded(6), &dev())?;
    assert_eq!(lin.phi_dim(), 12);
    let gap = lin
        .forward(&x)?
        .sub(&lin.forward_data(&x)?)?
        .abs()?
        .max_all()?;
    assert!(gap.to_scalar::<f32>()? < 1e-6);
    Ok(())
}
