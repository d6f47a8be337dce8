//! The UNet's CPU forward in parts side by side.
//!
//! Much of a pass over a batch (elementwise ops, norms, small kernels) runs on one thread,
//! and at the digits model's sizes the whole batch's activations leave the cache. A CPU
//! batch of more than `CPU_PART_ROWS` rows therefore runs as parts of that many rows, side
//! by side on the thread pool:
//! - without a graph, each part's output is computed and the outputs concatenated;
//! - with a graph and the model's trainable variables known (`with_trainable`), each part
//!   keeps a graph of its own whose leaves are its rows of x and of the context (as fresh
//!   variables, where they carry a graph) and the model's variables. The parts' output joins the caller's graph as
//!   one node (`precomputed::attach`) over a flat "anchor" of x, the context and the
//!   variables; its backward takes each part's backward side by side and hands back the
//!   flat gradient: the rows' input gradients, and each variable's gradient summed over the
//!   parts in their order. candle's backward is one walk over the graph on one thread, so
//!   without this the backward of parts would not run side by side;
//! - with a graph and the variables not given, or a graph through the timesteps, the parts
//!   join the graph by narrow and cat, and the backward walks them one after another
//!   (correct, not side by side).
//!
//! A variable the forward reaches but `with_trainable` did not name is an error, not a lost
//! gradient. The parts' size is fixed, not the thread count's, and every sum is in the
//! parts' order, so results do not depend on the thread count.

use super::UNet2DConditionModel;
use crate::nn::precomputed::attach;
use candle_core::{Result, Tensor, TensorId, Var};
use rayon::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;

/// Rows per part of a CPU forward. 32: a guided pass over the 16 trajectories of a
/// sampling part (`rollout::CPU_PART`) is one part.
pub const CPU_PART_ROWS: usize = 32;

/// One part's rows: (start, length).
fn ranges(b: usize) -> Vec<(usize, usize)> {
    (0..b.div_ceil(CPU_PART_ROWS))
        .map(|k| (k * CPU_PART_ROWS, CPU_PART_ROWS.min(b - k * CPU_PART_ROWS)))
        .collect()
}

/// The inputs of one forward: x [B, ...], t [B], context [B or 1, L, D], class ids [B].
#[derive(Clone, Copy)]
pub(super) struct Batch<'a> {
    pub x: &'a Tensor,
    pub t: &'a Tensor,
    pub context: &'a Tensor,
    pub class: Option<&'a Tensor>,
}

impl Batch<'_> {
    fn b(&self) -> Result<usize> {
        self.x.dim(0)
    }

    /// v's rows of a part; a tensor broadcast over the batch (first dimension 1) as it is.
    fn rows(&self, v: &Tensor, (start, n): (usize, usize)) -> Result<Tensor> {
        match v.dim(0)? == self.b()? {
            true => v.narrow(0, start, n),
            false => Ok(v.clone()),
        }
    }
}

/// One part's gradients: of its leaves (where x and the context carry a graph) and of each
/// named variable, in the list's order.
struct PartGrads {
    x: Option<Tensor>,
    context: Option<Tensor>,
    vars: Vec<Tensor>,
}

/// A part's graph: its output, and its leaves for x and the context.
struct PartGraph {
    rows: (usize, usize),
    out: Tensor,
    x: Option<Var>,
    context: Option<Var>,
}

impl UNet2DConditionModel {
    /// `forward_with_class` of a CPU batch over `CPU_PART_ROWS` rows (see the module's note).
    pub(super) fn forward_in_parts(&self, batch: &Batch) -> Result<Tensor> {
        // Variables unknown, or a graph through the timesteps (not a leaf of the parts):
        // narrow and cat keep every gradient.
        let Some(vars) = self.trainable.as_ref().filter(|_| !batch.t.track_op()) else {
            return self.parts_joined(batch);
        };
        // A variable always carries a graph: named variables mean a graph.
        let vars: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        match vars.is_empty() && !batch.x.track_op() && !batch.context.track_op() {
            true => self.parts_joined(batch),
            false => self.parts_with_graphs(batch, vars),
        }
    }

    /// Each part computed alone (its graph, if any, through narrow), the outputs concatenated.
    fn parts_joined(&self, batch: &Batch) -> Result<Tensor> {
        let outs: Vec<Result<Tensor>> = ranges(batch.b()?)
            .into_par_iter()
            .map(|r| {
                let class = batch.class.map(|c| batch.rows(c, r)).transpose()?;
                self.forward_rows(&Batch {
                    x: &batch.rows(batch.x, r)?,
                    t: &batch.rows(batch.t, r)?,
                    context: &batch.rows(batch.context, r)?,
                    class: class.as_ref(),
                })
            })
            .collect();
        Tensor::cat(&outs.into_iter().collect::<Result<Vec<_>>>()?, 0)
    }

    /// Each part with a graph of its own, joined to the caller's graph as one node whose
    /// backward runs the parts' backwards side by side.
    fn parts_with_graphs(&self, batch: &Batch, trainable: Vec<Tensor>) -> Result<Tensor> {
        let b = batch.b()?;
        let (x_grad, ctx_grad) = (batch.x.track_op(), batch.context.track_op());
        let ctx_rows = batch.context.dim(0)? == b;
        let leaf = |v: &Tensor, r, wanted: bool| -> Result<(Tensor, Option<Var>)> {
            let rows = batch.rows(&v.detach(), r)?;
            match wanted {
                true => {
                    let var = Var::from_tensor(&rows)?;
                    Ok((var.as_tensor().clone(), Some(var)))
                }
                false => Ok((rows, None)),
            }
        };
        let parts: Vec<Result<PartGraph>> = ranges(b)
            .into_par_iter()
            .map(|r| {
                let (x, x_var) = leaf(batch.x, r, x_grad)?;
                let (context, context_var) = leaf(batch.context, r, ctx_grad)?;
                let class = batch.class.map(|c| batch.rows(c, r)).transpose()?;
                let out = self.forward_rows(&Batch {
                    x: &x,
                    t: &batch.rows(batch.t, r)?,
                    context: &context,
                    class: class.as_ref(),
                })?;
                Ok(PartGraph {
                    rows: r,
                    out,
                    x: x_var,
                    context: context_var,
                })
            })
            .collect();
        let parts = Arc::new(parts.into_iter().collect::<Result<Vec<_>>>()?);
        check_named(&parts[0], &trainable)?;
        let outs: Vec<Tensor> = parts.iter().map(|p| p.out.detach()).collect();
        let out = Tensor::cat(&outs, 0)?;
        // The anchor: every input the caller's graph needs a gradient for, flattened.
        let mut leaves = Vec::new();
        if x_grad {
            leaves.push(batch.x.flatten_all()?);
        }
        if ctx_grad {
            leaves.push(batch.context.flatten_all()?);
        }
        for v in &trainable {
            leaves.push(v.flatten_all()?);
        }
        let anchor = Tensor::cat(&leaves, 0)?;
        let vjp = move |d_out: &Tensor| -> Result<Tensor> {
            // Each part's backward keeps only its leaves' and the variables' gradients, so
            // that no part's intermediate gradients outlive its own backward.
            let grads: Vec<Result<PartGrads>> = parts
                .par_iter()
                .map(|p| {
                    let d = d_out.narrow(0, p.rows.0, p.rows.1)?;
                    let store = (&p.out * d)?.sum_all()?.backward()?;
                    let of = |v: &Tensor| match store.get(v) {
                        Some(g) => Ok(g.clone()),
                        None => v.zeros_like(),
                    };
                    let leaf = |v: &Option<Var>| v.as_ref().map(|v| of(v.as_tensor())).transpose();
                    Ok(PartGrads {
                        x: leaf(&p.x)?,
                        context: leaf(&p.context)?,
                        vars: trainable.iter().map(of).collect::<Result<_>>()?,
                    })
                })
                .collect();
            let grads = grads.into_iter().collect::<Result<Vec<_>>>()?;
            let mut flat = Vec::new();
            if x_grad {
                let rows: Vec<Tensor> = grads.iter().filter_map(|g| g.x.clone()).collect();
                flat.push(Tensor::cat(&rows, 0)?.flatten_all()?);
            }
            if ctx_grad {
                let rows: Vec<Tensor> = grads.iter().filter_map(|g| g.context.clone()).collect();
                let g = match ctx_rows {
                    true => Tensor::cat(&rows, 0)?,
                    false => sum_in_order(&rows)?,
                };
                flat.push(g.flatten_all()?);
            }
            for i in 0..trainable.len() {
                let per_part: Vec<Tensor> = grads.iter().map(|g| g.vars[i].clone()).collect();
                flat.push(sum_in_order(&per_part)?.flatten_all()?);
            }
            Tensor::cat(&flat, 0)
        };
        attach(&anchor, &out, Arc::new(vjp))
    }
}

/// Every variable a part's graph reaches must be a leaf of the part or named by
/// `with_trainable`: the gradient of any other would be lost without a word (AdamW skips
/// a parameter without a gradient).
fn check_named(part: &PartGraph, named: &[Tensor]) -> Result<()> {
    let mut known: HashSet<TensorId> = named.iter().map(|v| v.id()).collect();
    known.extend(
        part.x
            .iter()
            .chain(&part.context)
            .map(|v| v.as_tensor().id()),
    );
    match part
        .out
        .sorted_nodes()
        .into_iter()
        .find(|n| n.is_variable() && !known.contains(&n.id()))
    {
        Some(v) => candle_core::bail!(
            "the UNet's forward reaches a variable of shape {:?} that `with_trainable` did not \
             name: name every variable among its weights (all of the VarMap that built it)",
            v.dims()
        ),
        None => Ok(()),
    }
}

/// a[0] + a[1] + ... in this order.
fn sum_in_order(a: &[Tensor]) -> Result<Tensor> {
    let mut sum = a[0].clone();
    for t in &a[1..] {
        sum = (sum + t)?;
    }
    Ok(sum)
}
