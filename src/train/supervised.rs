//! A plain supervised training loop for the evaluation and reward networks: AdamW with
//! warm-up and cosine decay, a progress bar, and the mean loss of the last tenth of steps.

use super::pretrain::{lr_at, PretrainSettings};
use super::AdamW;
use crate::rng::Rng;
use crate::tensor_io::sorted_vars;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarMap;
use indicatif::ProgressBar;

/// Minimises `loss(rng, step)` over the variables of `vars`.
pub fn fit(
    vars: &VarMap,
    s: &PretrainSettings,
    mut loss: impl FnMut(&mut Rng, usize) -> Result<Tensor>,
    rng: &mut Rng,
    bar: &ProgressBar,
) -> Result<f64> {
    let mut opt = AdamW::new(sorted_vars(vars))?;
    let mut tail = Vec::new();
    for step in 0..s.steps {
        let l = opt.minimise(&loss(rng, step)?, lr_at(s, step), s.weight_decay)?;
        if step >= s.steps - s.steps / 10 {
            tail.push(l);
        }
        bar.inc(1);
        if step % 20 == 0 {
            bar.set_message(format!("loss {l:.4}"));
        }
    }
    Ok(tail.iter().sum::<f64>() / tail.len().max(1) as f64)
}

/// Mean cross-entropy of logits [B, C] against class ids, from primitives (differentiable).
pub fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let idx = Tensor::from_vec(labels.to_vec(), (labels.len(), 1), logits.device())?;
    Ok(logp.gather(&idx, 1)?.neg()?.mean_all()?)
}
