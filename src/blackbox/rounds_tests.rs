//! Tests of `rounds.rs`.
use super::*;
use crate::blackbox::Uncertainty;
use crate::rng::{randn, seeded};
use candle_core::Device;

/// A UCB surrogate fitted on `features` with labels `scale * y`.
fn fitted(features: &Tensor, y: &Tensor, scale: f64) -> Fitted {
    let cfg = SurrogateConfig {
        uncertainty: Uncertainty::Ucb,
        epochs: 5,
        batch: 8,
        ..SurrogateConfig::default()
    };
    let mut f = Fitted {
        surrogate: Surrogate::new(cfg, features.dim(1).unwrap(), 3, &Device::Cpu).unwrap(),
        x_mean: None,
        x_std: None,
        y_mean: 0.0,
        y_std: 1.0,
    };
    let mut set = LabelledSet::new(features.dim(1).unwrap());
    set.push(features, &(y * scale).unwrap()).unwrap();
    f.fit(&set, 5).unwrap();
    f
}

#[test]
fn the_ucb_bonus_is_in_reward_units_whatever_the_labels_spread() {
    let dev = Device::Cpu;
    let x = randn(&mut seeded(1), (40, 6), &dev).unwrap();
    let y = randn(&mut seeded(2), 40, &dev).unwrap();
    // Standardised, both fits see the same data and train the same network: only the
    // map back differs. With r_s = s (pred σ + μ) + bonus, (100 r_1 - r_100) / 99 is
    // the bonus, which must be C1 sqrt(φᵀ(Σ + λI)⁻¹φ) itself, not scaled with s.
    let (a, b) = (fitted(&x, &y, 1.0), fitted(&x, &y, 100.0));
    let probe = randn(&mut seeded(4), (5, 6), &dev).unwrap();
    let (ra, rb) = (a.reward(&probe).unwrap(), b.reward(&probe).unwrap());
    let bonus = ((ra * 100.0).unwrap() - rb).unwrap() / 99.0;
    let z = probe
        .broadcast_sub(a.x_mean.as_ref().unwrap())
        .unwrap()
        .broadcast_div(a.x_std.as_ref().unwrap())
        .unwrap();
    let phi = a.surrogate.ensemble().heads[0].hidden(&z).unwrap();
    let want = a.surrogate.ucb().unwrap().bonus(&phi).unwrap();
    let (got, want) = (
        bonus.unwrap().to_vec1::<f32>().unwrap(),
        want.to_vec1::<f32>().unwrap(),
    );
    for (g, w) in got.iter().zip(&want) {
        assert!(*w > 1e-3, "the bonus is not negligible here: {w}");
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn config_surrogate_overrides_the_defaults_and_names_a_wrong_key() {
    let mut cfg = RunConfig {
        uncertainty: Uncertainty::Ucb,
        ..RunConfig::default()
    };
    let s = surrogate_config(&cfg).unwrap();
    assert_eq!((s.c1, s.lambda, s.batch), (0.01, 1e-3, 64));
    cfg.surrogate = serde_json::from_str(r#"{"c1": 0.001, "sigma": "covariance"}"#).unwrap();
    let s = surrogate_config(&cfg).unwrap();
    assert_eq!(
        (s.c1, s.sigma, s.uncertainty),
        (
            0.001,
            super::super::ucb::SigmaKind::Covariance,
            Uncertainty::Ucb
        )
    );
    // Lua's 3e2 is a float: an integral one is an integer, a fractional one an error.
    cfg.surrogate =
        serde_json::from_str(r#"{"epochs": 3e2, "hidden": [64.0, 32], "c1": 1}"#).unwrap();
    let s = surrogate_config(&cfg).unwrap();
    assert_eq!((s.epochs, s.hidden.clone(), s.c1), (300, vec![64, 32], 1.0));
    cfg.surrogate = serde_json::from_str(r#"{"hidden": [64, 2.5]}"#).unwrap();
    let e = format!("{:#}", surrogate_config(&cfg).unwrap_err());
    assert!(
        e.contains("config.surrogate.hidden[2] must be a non-negative integer, got 2.5"),
        "{e}"
    );
    cfg.surrogate = serde_json::from_str(r#"{"epochs": "many"}"#).unwrap();
    let e = format!("{:#}", surrogate_config(&cfg).unwrap_err());
    assert!(
        e.contains("config.surrogate.epochs has the wrong type: expected a non-negative integer"),
        "{e}"
    );
    cfg.surrogate = serde_json::from_str(r#"{"c2": 1}"#).unwrap();
    let e = format!("{:#}", surrogate_config(&cfg).unwrap_err());
    assert!(e.contains("config.surrogate: unknown field `c2`"), "{e}");
    cfg.surrogate = serde_json::from_str(r#"{"lambda": 0}"#).unwrap();
    let e = format!("{:#}", surrogate_config(&cfg).unwrap_err());
    assert!(
        e.contains("config.surrogate") && e.contains("lambda > 0"),
        "{e}"
    );
}
