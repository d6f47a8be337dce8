//! The labelled set of the online black-box loop (arXiv 2512.04559 Algorithm 2): every
//! oracle query adds (features of the queried image, oracle reward), and it only grows, since
//! the surrogate is retrained on all labelled samples each round. Features are the frozen
//! extractor's, computed once at query time, so rows are kept as plain f32 on the host.
//!
//! Also the two index draws the surrogate's fit needs: the seeded train / held-out split
//! (held-out part for picking the best epoch, Appendix D.2.3) and the bootstrap resample of
//! the training part (one per head, with replacement, of the same size).

use crate::rng::Rng;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng as _;

/// The default held-out fraction.
pub const DEFAULT_HOLDOUT: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct LabelledSet {
    dim: usize,
    /// Row-major [len, dim].
    features: Vec<f32>,
    labels: Vec<f32>,
}

/// Row indices into a `LabelledSet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub held_out: Vec<usize>,
}

impl LabelledSet {
    /// An empty set of `dim`-wide feature rows.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            features: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// Appends features [n, dim] with their oracle labels [n] (any float dtype, any device).
    pub fn push(&mut self, features: &Tensor, labels: &Tensor) -> Result<()> {
        let (n, d) = match features.dims() {
            &[n, d] => (n, d),
            dims => bail!("labelled features must be [n, {}], got {dims:?}", self.dim),
        };
        if labels.dims() != [n] {
            bail!(
                "labels must be [{n}] (one per feature row), got {:?}",
                labels.dims()
            );
        }
        if d != self.dim {
            bail!(
                "labelled features must be [n, {}] (the set's feature width), got [{n}, {d}]",
                self.dim
            );
        }
        let f = features
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let l = labels.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.push_rows(&f, &l)
    }

    /// Appends row-major features (`labels.len()` rows of `dim`) with their labels.
    pub fn push_rows(&mut self, features: &[f32], labels: &[f32]) -> Result<()> {
        if features.len() != labels.len() * self.dim {
            bail!(
                "{} feature values for {} labels: expected {} rows of width {}",
                features.len(),
                labels.len(),
                labels.len(),
                self.dim
            );
        }
        if let Some(i) = features.iter().chain(labels).position(|v| !v.is_finite()) {
            bail!("labelled data has a non-finite value (flat position {i})");
        }
        self.features.extend_from_slice(features);
        self.labels.extend_from_slice(labels);
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn labels(&self) -> &[f32] {
        &self.labels
    }

    /// Row `i`'s features.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// All features [len, dim] and labels [len].
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.len();
        Ok((
            Tensor::from_slice(&self.features, (n, self.dim), device)?,
            Tensor::from_slice(&self.labels, n, device)?,
        ))
    }

    /// The given rows (repeats allowed): features [k, dim] and labels [k].
    pub fn gather(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let mut f = Vec::with_capacity(indices.len() * self.dim);
        let mut l = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                bail!("row {i} of a labelled set of {}", self.len());
            }
            f.extend_from_slice(self.row(i));
            l.push(self.labels[i]);
        }
        Ok((
            Tensor::from_vec(f, (indices.len(), self.dim), device)?,
            Tensor::from_vec(l, indices.len(), device)?,
        ))
    }

    /// A seeded split that is stable as the set grows: row i is held out when its key
    /// u_i = hash(seed, i) in [0, 1) is below `fraction`, so a row keeps its part from round
    /// to round (but for the two fallbacks below, which only tiny sets reach). With the warm
    /// start, a row the surrogate trained on in an earlier round never becomes a held-out
    /// row of a later one, which would favour early epochs. At
    /// least one row is held out when `fraction > 0` (the smallest key), and at least one
    /// left to train on (the largest); `fraction = 0` holds out nothing (the fit then keeps
    /// its last epoch).
    pub fn split(&self, fraction: f64, seed: u64) -> Result<Split> {
        if !(0.0..1.0).contains(&fraction) {
            bail!("held-out fraction must be in [0, 1), got {fraction}");
        }
        let n = self.len();
        let need = usize::from(fraction > 0.0) + 1;
        if n < need {
            bail!(
                "{n} labelled samples cannot be split into {} held out and at least one to train on",
                need - 1
            );
        }
        let keys: Vec<f64> = (0..n).map(|i| row_key(seed, i)).collect();
        let (mut held_out, mut train): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| keys[i] < fraction);
        let by_key = |a: &&usize, b: &&usize| keys[**a].total_cmp(&keys[**b]);
        if fraction > 0.0 && held_out.is_empty() {
            let i = *train.iter().min_by(by_key).unwrap();
            train.retain(|&j| j != i);
            held_out.push(i);
        }
        if train.is_empty() {
            let i = *held_out.iter().max_by(by_key).unwrap();
            held_out.retain(|&j| j != i);
            train.push(i);
        }
        Ok(Split { train, held_out })
    }
}

/// Row i's split key in [0, 1): splitmix64 of (seed, i), a pure function of both.
fn row_key(seed: u64, i: usize) -> f64 {
    let mut z = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A bootstrap resample of `indices`: as many draws, uniformly with replacement.
pub fn bootstrap_resample(indices: &[usize], rng: &mut Rng) -> Vec<usize> {
    (0..indices.len())
        .map(|_| indices[rng.random_range(0..indices.len())])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> LabelledSet {
        let mut s = LabelledSet::new(1);
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        s.push_rows(&v, &v).unwrap();
        s
    }

    #[test]
    fn a_row_keeps_its_part_as_the_set_grows() {
        let (small, large) = (
            set(128).split(0.1, 7).unwrap(),
            set(1920).split(0.1, 7).unwrap(),
        );
        for i in small.held_out.iter() {
            assert!(
                large.held_out.contains(i),
                "held-out row {i} moved to training"
            );
        }
        for i in small.train.iter() {
            assert!(large.train.contains(i), "training row {i} became held out");
        }
        let k = large.held_out.len() as f64;
        assert!((150.0..235.0).contains(&k), "{k} of 1920 held out at 10%");
        assert_eq!(large.held_out.len() + large.train.len(), 1920);
        assert_ne!(set(1920).split(0.1, 8).unwrap(), large, "the seed matters");
    }

    #[test]
    fn tiny_sets_keep_one_row_on_each_side() {
        let s = set(2).split(0.1, 0).unwrap();
        assert_eq!((s.held_out.len(), s.train.len()), (1, 1));
        let s = set(3).split(0.0, 0).unwrap();
        assert_eq!((s.held_out.len(), s.train.len()), (0, 3));
        let s = set(2).split(0.99, 0).unwrap();
        assert_eq!(s.train.len(), 1);
        assert!(set(1).split(0.1, 0).is_err());
    }
}
