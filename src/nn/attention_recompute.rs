//! softmax(q k^T / sqrt(d)) v that keeps no score matrix for the backward.
//!
//! Candle's autograd keeps every intermediate of the plain formula: at SD-1.5's 64x64
//! latents one self-attention layer holds [B*8, 4096, 4096] scores several times over
//! (scaled, upcast, exponentiated, normalised), which is why one SQDF update did not fit in
//! 141 GB (docs/sd15.md). Here the forward runs without a graph, in
//! chunks of queries, and the output is attached to q, k and v through a custom op whose
//! backward recomputes each chunk's probabilities and applies the softmax's
//! vector-Jacobian product by hand (the FlashAttention backward, without the fused kernel):
//!
//!   P = softmax(s q k^T), dV = P^T dO, dP = dO v^T, dS = P * (dP - rowsum(dP * P)),
//!   dq = s dS k, dk = s dS^T q.
//!
//! The graph then holds q, k, v and the output: memory linear in the sequence length.

use super::precomputed::Precomputed;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};

/// Elements of one chunk's score matrix [N, rows, Lk]: 2^26 f32 values are 256 MiB.
const CHUNK_ELEMENTS: usize = 1 << 26;

fn chunk_rows(n: usize, lq: usize, lk: usize, elements: usize) -> usize {
    (elements / (n * lk).max(1)).clamp(1, lq.max(1))
}

/// Softmax over the last dimension of an f32 CPU tensor, with the vectorised exp
/// (`nn::simd`; candle's fused softmax calls libm's scalar `expf`). No backward.
fn softmax_rows_cpu(scores: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let n = scores.dim(candle_core::D::Minus1)?;
    let mut p = super::cpu::with_slice(scores, |s| Ok(s.to_vec()))?;
    p.par_chunks_mut(n * 64).for_each(|rows| {
        let mut e = vec![0f32; n];
        for row in rows.chunks_mut(n) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for v in row.iter_mut() {
                *v -= m;
            }
            super::simd::exp(row, &mut e);
            let sum: f32 = e.iter().sum();
            for (v, &x) in row.iter_mut().zip(&e) {
                *v = x / sum;
            }
        }
    });
    Tensor::from_vec(p, scores.shape(), scores.device())
}

/// Probabilities of one query chunk in f32 (or f64): the softmax reduces in f32 for half
/// precision, as diffusers' `upcast_softmax`.
fn probabilities(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    // q k^T: [n, lq, d] x [n, d, lk].
    super::flops::add(2 * q.elem_count() * k.dim(1)?);
    let scores = (q * scale)?.matmul(&k.t()?)?;
    let scores = match super::half::upcast(scores.dtype()) {
        Some(up) => scores.to_dtype(up)?,
        None => scores,
    };
    // The fused softmax has no backward; none is needed: this op writes its own.
    if super::cpu::is_f32_cpu(&scores) {
        return softmax_rows_cpu(&scores);
    }
    candle_nn::ops::softmax_last_dim(&scores)
}

/// The attention output without a graph, chunk by chunk.
fn forward_no_graph(q: &Tensor, k: &Tensor, v: &Tensor, elements: usize) -> Result<Tensor> {
    let (q, k, v) = (q.detach(), k.detach(), v.detach());
    let (n, lq, d) = q.dims3()?;
    let lk = k.dim(1)?;
    let scale = 1.0 / (d as f64).sqrt();
    let rows = chunk_rows(n, lq, lk, elements);
    let mut outs = Vec::with_capacity(lq.div_ceil(rows));
    for start in (0..lq).step_by(rows) {
        let qc = q.narrow(1, start, rows.min(lq - start))?;
        let p = probabilities(&qc, &k, scale)?;
        // p v: [n, len, lk] x [n, lk, dv].
        super::flops::add(2 * p.elem_count() * v.dim(2)?);
        outs.push(p.to_dtype(v.dtype())?.matmul(&v)?);
    }
    Tensor::cat(&outs, 1)?.contiguous()
}

/// The custom op: its forward hands over the output computed without a graph.
struct Recompute {
    out: Precomputed,
    elements: usize,
}

impl CustomOp3 for Recompute {
    fn name(&self) -> &'static str {
        "attention-recompute"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(
        &self,
        q_in: &Tensor,
        k_in: &Tensor,
        v_in: &Tensor,
        _out: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q_in.detach(), k_in.detach(), v_in.detach());
        let d_out = d_out.detach();
        let (n, lq, d) = q.dims3()?;
        let lk = k.dim(1)?;
        let scale = 1.0 / (d as f64).sqrt();
        // Accumulate in the softmax's dtype (f32 for half inputs).
        let acc = super::half::upcast(q.dtype()).unwrap_or(q.dtype());
        let (k_acc, v_acc) = (k.to_dtype(acc)?, v.to_dtype(acc)?);
        let mut dk = Tensor::zeros((n, lk, d), acc, q.device())?;
        let mut dv = Tensor::zeros((n, lk, v.dim(2)?), acc, q.device())?;
        let rows = chunk_rows(n, lq, lk, self.elements);
        let mut dqs = Vec::with_capacity(lq.div_ceil(rows));
        for start in (0..lq).step_by(rows) {
            let len = rows.min(lq - start);
            let qc = q.narrow(1, start, len)?;
            let p = probabilities(&qc, &k, scale)?; // [n, len, lk], acc dtype
            let doc = d_out.narrow(1, start, len)?.to_dtype(acc)?;
            // dv, dp (p-sized x dv each), dq, dk (p-sized x d each).
            super::flops::add(2 * p.elem_count() * (2 * v.dim(2)? + 2 * d));
            dv = (dv + p.t()?.matmul(&doc)?)?;
            let dp = doc.matmul(&v_acc.t()?)?;
            let row = (&dp * &p)?.sum_keepdim(D::Minus1)?;
            let ds = (p * dp.broadcast_sub(&row)?)?;
            dqs.push((ds.matmul(&k_acc)? * scale)?);
            dk = (dk + (ds.t()?.matmul(&qc.to_dtype(acc)?)? * scale)?)?;
        }
        let dq = Tensor::cat(&dqs, 1)?.to_dtype(q.dtype())?;
        // Gradients only where the graph asks for them (a constant context's k and v).
        let wanted = |t: &Tensor, g: Tensor| -> Result<Option<Tensor>> {
            Ok(if t.track_op() {
                Some(g.to_dtype(t.dtype())?)
            } else {
                None
            })
        };
        Ok((wanted(q_in, dq)?, wanted(k_in, dk)?, wanted(v_in, dv)?))
    }
}

/// softmax(q k^T / sqrt(d)) v for q [N, Lq, d], k [N, Lk, d], v [N, Lk, dv]: the same
/// values as the plain formula; the backward recomputes the probabilities.
pub fn attention_recompute(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_recompute_in_chunks(q, k, v, CHUNK_ELEMENTS)
}

/// `attention_recompute` with at most `elements` score values per chunk (tests use small
/// chunks to cover the chunking).
pub fn attention_recompute_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    elements: usize,
) -> Result<Tensor> {
    let out = forward_no_graph(q, k, v, elements)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let op = Recompute {
        out: Precomputed::new(&out)?,
        elements,
    };
    q.apply_op3(k, v, op)
}
