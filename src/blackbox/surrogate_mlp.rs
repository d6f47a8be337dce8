//! The surrogate reward network of the online black-box setting (arXiv 2512.04559 §5.2,
//! Appendix D.1.2): an MLP on frozen features of the generated image (CLIP embeddings in the
//! paper, the digits classifier's 128-d penultimate features here) that stands in for the
//! oracle between queries. Linear layers with ReLU between, hidden widths [64, 16] by default.
//!
//! The policy is fine-tuned on its prediction, so the gradient must flow image -> frozen
//! feature extractor -> surrogate -> reward: the layers are the project's `nn::Linear`, whose
//! backward reaches the input. The last hidden layer's output `phi` (the final linear layer's
//! input) is exposed too: the UCB bonus is a norm of `phi` (see `ucb.rs`).

use super::data_matmul::data_matmul;
use crate::nn::{scale_shift, Linear};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// The default hidden widths, the released code's.
pub const DEFAULT_HIDDEN: [usize; 2] = [64, 16];

#[derive(Debug, Clone)]
pub struct SurrogateMlp {
    /// The hidden layers, then the final one (to 1).
    layers: Vec<Linear>,
    /// The first layer's weight and bias, for `forward_data`.
    first: (Tensor, Tensor),
    in_dim: usize,
    phi_dim: usize,
}

impl SurrogateMlp {
    /// Parameters `layers.{i}.{weight,bias}` for the hidden layers and `out.*` for the final
    /// one. No hidden layer makes a linear model whose `phi` is the input itself.
    pub fn new(vb: VarBuilder, in_dim: usize, hidden: &[usize]) -> Result<Self> {
        if in_dim == 0 || hidden.contains(&0) {
            candle_core::bail!(
                "surrogate MLP widths must be positive (in {in_dim}, hidden {hidden:?})"
            );
        }
        let mut layers = Vec::with_capacity(hidden.len() + 1);
        let mut first = None;
        let mut width = in_dim;
        for (i, &out) in hidden.iter().chain(&[1]).enumerate() {
            let name = match i < hidden.len() {
                true => format!("layers.{i}"),
                false => "out".to_string(),
            };
            // As `nn::linear`, keeping the tensors for the first layer's data path.
            let l = candle_nn::linear(width, out, vb.pp(name))?;
            let (w, b) = (
                l.weight().clone(),
                l.bias().expect("linear has a bias").clone(),
            );
            first.get_or_insert_with(|| (w.clone(), b.clone()));
            layers.push(Linear::new(w, Some(b)));
            width = out;
        }
        Ok(Self {
            layers,
            first: first.expect("at least the final layer"),
            in_dim,
            phi_dim: hidden.last().copied().unwrap_or(in_dim),
        })
    }

    /// A freshly initialised MLP and the VarMap holding its (trainable) parameters, drawn
    /// from `rng` (`nn::init::seeded_init`: candle's own init cannot be seeded). Biases are
    /// zeroed here as well: `seeded_init` skips constant tensors, and a 1-element tensor
    /// (the output bias) looks constant, so it would keep candle's unseeded draw.
    pub fn fresh(
        in_dim: usize,
        hidden: &[usize],
        rng: &mut Rng,
        device: &Device,
    ) -> anyhow::Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let mlp = Self::new(vb, in_dim, hidden)?;
        crate::nn::init::seeded_init(&varmap, rng)?;
        for (name, var) in crate::tensor_io::sorted_vars(&varmap) {
            if name.ends_with("bias") {
                var.set(&var.as_tensor().zeros_like()?)?;
            }
        }
        Ok((varmap, mlp))
    }

    /// The feature width the MLP expects.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// The width of `phi`, the final linear layer's input.
    pub fn phi_dim(&self) -> usize {
        self.phi_dim
    }

    /// Features [N, in_dim] -> phi [N, phi_dim], the last hidden layer's (ReLU) output.
    pub fn hidden(&self, features: &Tensor) -> Result<Tensor> {
        self.check(features)?;
        let mut h = features.clone();
        for layer in &self.layers[..self.layers.len() - 1] {
            h = layer.forward(&h)?.relu()?;
        }
        Ok(h)
    }

    /// phi [N, phi_dim] -> prediction [N] (the final linear layer).
    pub fn head(&self, phi: &Tensor) -> Result<Tensor> {
        self.layers[self.layers.len() - 1].forward(phi)?.squeeze(1)
    }

    /// Features [N, in_dim] -> (prediction [N], phi [N, phi_dim]) from one forward pass.
    pub fn forward_with_hidden(&self, features: &Tensor) -> Result<(Tensor, Tensor)> {
        let phi = self.hidden(features)?;
        Ok((self.head(&phi)?, phi))
    }

    /// As `forward` for training data: the same values, but no gradient is computed for
    /// the features (`data_matmul`), only for the parameters.
    pub fn forward_data(&self, features: &Tensor) -> Result<Tensor> {
        self.check(features)?;
        let (w, b) = &self.first;
        let mut h = scale_shift(&data_matmul(features, w)?, None, Some(b), 1)?;
        for layer in &self.layers[1..] {
            h = layer.forward(&h.relu()?)?;
        }
        h.squeeze(1)
    }

    fn check(&self, features: &Tensor) -> Result<()> {
        match features.dims() {
            [_, d] if *d == self.in_dim => Ok(()),
            dims => candle_core::bail!(
                "the surrogate expects features [N, {}], got {dims:?}",
                self.in_dim
            ),
        }
    }
}

impl Module for SurrogateMlp {
    /// Features [N, in_dim] -> predicted reward [N], differentiable w.r.t. the features.
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.head(&self.hidden(features)?)
    }
}
