//! Replay buffer: FIFO capacity, whole trajectories in, states out; prioritised draws
//! follow the priorities (chi-square), zero priorities are never drawn.

use candle_core::Device;
use sqdf::replay::{ReplayBuffer, StateRef, SumTree};
use sqdf::rng::seeded;

/// Chi-square statistic of observed counts against expected shares (only positive shares).
fn chi_square(counts: &[usize], shares: &[f64], n: usize) -> (f64, usize) {
    let mut chi = 0.0;
    let mut df = 0;
    for (c, p) in counts.iter().zip(shares) {
        if *p > 0.0 {
            let e = p * n as f64;
            chi += (*c as f64 - e).powi(2) / e;
            df += 1;
        } else {
            assert_eq!(*c, 0, "a zero priority was drawn");
        }
    }
    (chi, df - 1)
}

#[test]
fn sum_tree_draws_follow_priorities() {
    let p: Vec<f64> = (0..37)
        .map(|i| {
            if i % 5 == 0 {
                0.0
            } else {
                1.0 + (i % 7) as f64 * 0.7
            }
        })
        .collect();
    let mut t = SumTree::new(p.len());
    for (i, &x) in p.iter().enumerate() {
        t.set(i, x);
    }
    let total: f64 = p.iter().sum();
    assert!((t.total() - total).abs() < 1e-9);
    let n = 200_000;
    let mut counts = vec![0; p.len()];
    let mut rng = seeded(11);
    for _ in 0..n {
        counts[t.find(rand::Rng::random::<f64>(&mut rng) * total)] += 1;
    }
    let shares: Vec<f64> = p.iter().map(|x| x / total).collect();
    let (chi, df) = chi_square(&counts, &shares, n);
    // 99.9th percentile of chi-square with 28 degrees of freedom is 56.9.
    assert_eq!(df, 28);
    assert!(chi < 56.9, "chi-square {chi} with {df} degrees of freedom");
}

#[test]
fn buffer_is_fifo_and_prioritised_sampling_matches_priorities() {
    let (steps, dim) = (4, 2);
    let mut b = ReplayBuffer::new(3, steps, &[dim]);
    let traj = |v: f32| vec![v; (steps + 1) * dim];
    for k in 0..5 {
        b.push(&traj(k as f32), k, k as f32).unwrap();
    }
    assert_eq!(b.len(), 3);
    assert_eq!(b.pushed(), 5);
    // Slots 0 and 1 were overwritten by trajectories 3 and 4; slot 2 still holds 2.
    let rewards: Vec<f32> = (0..3).map(|s| b.reward(s)).collect();
    assert_eq!(rewards, vec![3.0, 4.0, 2.0]);
    assert_eq!(b.state(1, 2), &[4.0, 4.0]);
    let (x, next) = b
        .gather(&[StateRef { slot: 2, i: 1 }], &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[1, 2]);
    assert_eq!(next.to_vec2::<f32>().unwrap(), vec![vec![2.0, 2.0]]);

    // Priority r * 0.5^k over the 12 states; slot 2's states get zero.
    assert!(
        b.sample_prioritised(4, &mut seeded(1)).is_none(),
        "all-zero priorities give no draw"
    );
    let mut shares = Vec::new();
    for r in b.all_states().collect::<Vec<_>>() {
        let p = if r.slot == 2 {
            0.0
        } else {
            b.reward(r.slot) as f64 * 0.5f64.powi((steps - 1 - r.i) as i32)
        };
        b.set_priority(r, p);
        shares.push(p);
    }
    let total: f64 = shares.iter().sum();
    shares.iter_mut().for_each(|s| *s /= total);
    let n = 100_000;
    let mut counts = vec![0; shares.len()];
    for r in b.sample_prioritised(n, &mut seeded(2)).unwrap() {
        counts[r.slot * steps + r.i] += 1;
    }
    let (chi, df) = chi_square(&counts, &shares, n);
    // 99.9th percentile of chi-square with 7 degrees of freedom is 24.3.
    assert_eq!(df, 7);
    assert!(chi < 24.3, "chi-square {chi}");
    // Pushing over a slot resets its priorities.
    b.push(&traj(9.0), 9, 9.0).unwrap();
    assert!((0..steps).all(|i| b.priority(StateRef { slot: 2, i }) == 0.0));
}

#[test]
fn a_trajectory_of_the_wrong_length_is_refused() {
    let mut b = ReplayBuffer::new(2, 3, &[2]);
    let e = b.push(&[0.0; 5], 0, 0.0).unwrap_err().to_string();
    assert!(e.contains("has 8 values, got 5"), "{e}");
}
