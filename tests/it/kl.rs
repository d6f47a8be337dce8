//! The Gaussian KL between two policy steps matches a Monte-Carlo estimate, in both forms.

use candle_core::{Device, Tensor};
use sqdf::diffusion::kl::{gaussian_kl, KlForm};
use sqdf::rng::{randn, seeded};

#[test]
fn kl_matches_monte_carlo() {
    let dev = Device::Cpu;
    let (b, d, n) = (3usize, 4usize, 200_000usize);
    let mu_p = randn(&mut seeded(1), (b, d), &dev).unwrap();
    let mu_q = mu_p
        .add(
            &randn(&mut seeded(2), (b, d), &dev)
                .unwrap()
                .affine(0.3, 0.0)
                .unwrap(),
        )
        .unwrap();
    let sig = [0.5f32, 0.8, 1.3];
    let sigma = Tensor::new(&sig, &dev).unwrap().reshape((b, 1)).unwrap();
    let exact = gaussian_kl(&mu_p, &mu_q, &sigma, KlForm::Exact)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let released = gaussian_kl(&mu_p, &mu_q, &sigma, KlForm::Released)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (mp, mq) = (
        mu_p.to_vec2::<f32>().unwrap(),
        mu_q.to_vec2::<f32>().unwrap(),
    );
    let z = randn(&mut seeded(3), (n, d), &dev)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for i in 0..b {
        // E_{x~p}[log p(x) - log q(x)] with x = mu_p + sigma z.
        let s2 = (sig[i] as f64).powi(2);
        let mut acc = 0.0;
        for zz in &z {
            let mut lp = 0.0;
            let mut lq = 0.0;
            for k in 0..d {
                let x = mp[i][k] as f64 + sig[i] as f64 * zz[k] as f64;
                lp -= (x - mp[i][k] as f64).powi(2) / (2.0 * s2);
                lq -= (x - mq[i][k] as f64).powi(2) / (2.0 * s2);
            }
            acc += lp - lq;
        }
        let mc = acc / n as f64;
        let e = exact[i] as f64;
        assert!(
            (mc - e).abs() < 0.02 * e.max(0.1) + 4.0 * (2.0 * e).sqrt() / (n as f64).sqrt(),
            "sample {i}: MC {mc} vs exact {e}"
        );
        // The released code's form: mean over dimensions, no 1/2, so 2/D times the exact KL.
        assert!((released[i] as f64 - e * 2.0 / d as f64).abs() < 1e-5 * (1.0 + e));
    }
}

#[test]
fn kl_refuses_a_deterministic_step() {
    let dev = Device::Cpu;
    let m = Tensor::zeros((2, 2), candle_core::DType::F32, &dev).unwrap();
    let s = Tensor::zeros((2, 1), candle_core::DType::F32, &dev).unwrap();
    let e = gaussian_kl(&m, &m, &s, KlForm::Exact)
        .unwrap_err()
        .to_string();
    assert!(e.contains("σ > 0"), "{e}");
}
