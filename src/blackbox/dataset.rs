//! The labelled set of the online black-box loop (arXiv 2512.04559 Algorithm 2): every
//! oracle query adds (features of the queried image, oracle reward), and it only grows, since
//! the surrogate is retrained on all labelled samples each round. Features are the frozen
//! extractor's, computed once at query time, so rows are kept as plain f32 on the host.
//!
//! Also the two index draws the surrogate's fit needs: the seeded train / held-out split
//! (held-out part for picking the best epoch, Appendix D.2.3) and the bootstrap resample of
//! the training part (one per head, with replacement, of the same size).

use crate::rng::{seeded, Rng};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
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

    /// A seeded random split: `round(fraction * len)` rows held out, at least one when
    /// `fraction > 0`, and at least one row left to train on. `fraction = 0` holds out
    /// nothing (the fit then keeps its last epoch).
    pub fn split(&self, fraction: f64, seed: u64) -> Result<Split> {
        if !(0.0..1.0).contains(&fraction) {
            bail!("held-out fraction must be in [0, 1), got {fraction}");
        }
        let n = self.len();
        let k = if fraction > 0.0 {
            ((fraction * n as f64).round() as usize).max(1)
        } else {
            0
        };
        if n < k + 1 {
            bail!(
                "{n} labelled samples cannot be split into {k} held out and at least one to train on"
            );
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut seeded(seed));
        let train = idx.split_off(k);
        Ok(Split {
            train,
            held_out: idx,
        })
    }
}

/// A bootstrap resample of `indices`: as many draws, uniformly with replacement.
pub fn bootstrap_resample(indices: &[usize], rng: &mut Rng) -> Vec<usize> {
    (0..indices.len())
        .map(|_| indices[rng.random_range(0..indices.len())])
        .collect()
}
