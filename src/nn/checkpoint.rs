//! Activation checkpointing for blocks without trainable parameters.
//!
//! SQDF's reward gradient runs through frozen networks (the LCM copy, the VAE decoder, the
//! resnets of the policy's UNet) only to reach x_{t-1}. Candle keeps every intermediate of
//! them for the backward; `checkpoint(x, f)` keeps only x and f(x): its forward runs f
//! without a graph and its backward runs f again, with a graph that lives only while that
//! block's vector-Jacobian product is taken. The backward costs one more forward of f.
//!
//! f must have no trainable parameter: their gradients could not leave the op. A function
//! that does track a parameter is detected (its output carries a graph from a detached
//! input) and run without checkpointing, so using this is never wrong, only sometimes slow.

use candle_core::{Result, Tensor, Var};
use std::sync::Arc;

/// A block's forward for one input; constants (time embedding, context) are captured.
pub type BlockFn = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// The backward: f again on a fresh variable, with a graph that lives only here.
fn recompute_vjp(f: &BlockFn, x: &Tensor, d_out: &Tensor) -> Result<Tensor> {
    let x = Var::from_tensor(x)?;
    let y = f(x.as_tensor())?;
    let grads = (y * d_out)?.sum_all()?.backward()?;
    match grads.get(&x) {
        Some(g) => Ok(g.clone()),
        // f ignores its input: no gradient flows.
        None => x.zeros_like(),
    }
}

/// f(x), keeping only x and the output for the backward (see the module's note).
pub fn checkpoint(x: &Tensor, f: BlockFn) -> Result<Tensor> {
    if !x.track_op() {
        return f(x);
    }
    let out = f(&x.detach())?;
    if out.track_op() {
        // f holds a trainable parameter: checkpointing would lose its gradient.
        return f(x);
    }
    let input = x.detach();
    let vjp = move |d_out: &Tensor| recompute_vjp(&f, &input, d_out);
    super::precomputed::attach(x, &out, Arc::new(vjp))
}

/// `checkpoint` of a frozen module's forward.
pub fn checkpoint_module<M>(m: &M, x: &Tensor) -> Result<Tensor>
where
    M: candle_core::Module + Clone + Send + Sync + 'static,
{
    let m = m.clone();
    checkpoint(x, Arc::new(move |x| m.forward(x)))
}
