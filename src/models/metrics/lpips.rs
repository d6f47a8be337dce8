//! LPIPS (Zhang et al. 2018), the `lpips` package's `LPIPS(net="alex", version="0.1")`:
//! the distance the paper's LPIPS diversity averages over pairs (§5.1, Appendix D).
//!
//! d(x, y) = Σ_l mean_{h,w} Σ_c w_{l,c} (x̂_{l,chw} − ŷ_{l,chw})², where x̂_l is AlexNet's
//! l-th ReLU output of the shifted and scaled image with each position's channel vector
//! divided by (its norm + 1e-10), and w_l the l-th linear layer's 1x1 weights.
//!
//! Files: torchvision's `alexnet-owt-7be5be79.pth` (only `features.*` is read) and the
//! lpips package's `weights/v0.1/alex.pth` (`lin{l}.model.1.weight`, [1, C, 1, 1]).

use super::alexnet::{AlexNetFeatures, TAP_CHANNELS};
use crate::models::clip::weights::build_checked;
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use std::path::Path;

/// lpips' `ScalingLayer`: images in [-1, 1] become (x − shift) / scale per channel.
const SHIFT: [f64; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f64; 3] = [0.458, 0.448, 0.450];
/// lpips' `normalize_tensor`: x / (‖x‖_channels + eps).
const NORM_EPS: f64 = 1e-10;

/// The five linear layers' channel weights, [C_l] each.
struct LinLayers(Vec<Tensor>);

impl LinLayers {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let w = TAP_CHANNELS
            .iter()
            .enumerate()
            .map(|(l, &c)| {
                vb.get((1, c, 1, 1), &format!("lin{l}.model.1.weight"))?
                    .flatten_all()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self(w))
    }
}

/// The linear layers' keys and shapes in lpips' `alex.pth`.
pub fn lin_params() -> Vec<(String, Vec<usize>)> {
    TAP_CHANNELS
        .iter()
        .enumerate()
        .map(|(l, &c)| (format!("lin{l}.model.1.weight"), vec![1, c, 1, 1]))
        .collect()
}

/// Per image, its five unit-normalised feature maps: what LPIPS compares.
#[derive(Debug, Clone)]
pub struct LpipsFeatures(Vec<Tensor>);

impl LpipsFeatures {
    /// The features of several batches as one batch.
    pub fn cat(parts: &[LpipsFeatures]) -> candle_core::Result<Self> {
        let layers = parts.first().map_or(0, |p| p.0.len());
        let out = (0..layers)
            .map(|l| Tensor::cat(&parts.iter().map(|p| &p.0[l]).collect::<Vec<_>>(), 0))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self(out))
    }
}

pub struct Lpips {
    alexnet: AlexNetFeatures,
    lins: LinLayers,
}

impl Lpips {
    /// AlexNet from torchvision's file, the linear layers from lpips'; f32 on `device`. A
    /// missing file or key is an error naming both.
    pub fn load(alexnet: &Path, lins: &Path, device: &Device) -> Result<Self> {
        let alexnet = build_checked(alexnet, device, DType::F32, |vb| {
            AlexNetFeatures::new(vb.pp("features"))
        })?;
        let lins = build_checked(lins, device, DType::F32, LinLayers::new)?;
        Ok(Self { alexnet, lins })
    }

    /// The normalised feature maps of images [B, 3, H, W] in [-1, 1] (clamped to it; at
    /// least 31 px a side).
    pub fn features(&self, images: &Tensor) -> candle_core::Result<LpipsFeatures> {
        // Clamped: decoded latents overshoot [-1, 1], and lpips is fed images read from
        // 8-bit files, which cannot.
        let x = crate::rewards::clip_preprocess::normalize(
            &images.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?,
            SHIFT,
            SCALE,
        )?;
        let maps = self
            .alexnet
            .taps(&x)?
            .into_iter()
            .map(|f| {
                let norm = f.sqr()?.sum_keepdim(1)?.sqrt()?.affine(1.0, NORM_EPS)?;
                f.broadcast_div(&norm)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(LpipsFeatures(maps))
    }

    /// LPIPS between every pair of the images whose features are given: [n, n], in f64
    /// (the pairs come from ‖a‖² + ‖b‖² − 2ab, where f32 would lose the small distances).
    pub fn pairwise(&self, f: &LpipsFeatures) -> candle_core::Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (maps, w) in f.0.iter().zip(&self.lins.0) {
            let (n, c, h, wd) = maps.dims4()?;
            let m = maps.to_dtype(DType::F64)?;
            let w = w.to_dtype(DType::F64)?.reshape((1, c, 1, 1))?;
            let weighted = m.broadcast_mul(&w)?.reshape((n, ()))?;
            let flat = m.reshape((n, ()))?;
            let sq = (&weighted * &flat)?.sum_keepdim(D::Minus1)?; // [n, 1]
            let gram = weighted.matmul(&flat.t()?)?;
            let d = sq
                .broadcast_add(&sq.t()?)?
                .sub(&(gram * 2.0)?)?
                .affine(1.0 / (h * wd) as f64, 0.0)?;
            total = Some(match total {
                None => d,
                Some(t) => (t + d)?,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("LPIPS features hold no layers".into()))
    }

    /// LPIPS(a_i, b_i) [B] of two batches of images in [-1, 1], layer by layer as lpips
    /// computes it.
    pub fn distance(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let (fa, fb) = (self.features(a)?, self.features(b)?);
        let mut total: Option<Tensor> = None;
        for ((x, y), w) in fa.0.iter().zip(&fb.0).zip(&self.lins.0) {
            let c = w.dim(0)?;
            let d = (x - y)?
                .sqr()?
                .broadcast_mul(&w.reshape((1, c, 1, 1))?)?
                .sum(1)?
                .flatten_from(1)?
                .mean(1)?;
            total = Some(match total {
                None => d,
                Some(t) => (t + d)?,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("LPIPS features hold no layers".into()))
    }
}
