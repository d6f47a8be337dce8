//! The digits' analytic "gold" score: stroke boldness, the soft share of inked pixels,
//! mean over pixels of sigmoid(10 (p - 0.5)) with p = (x + 1) / 2 the ink in [0, 1].
//! It is what the learned reward is trained to predict, and what the evaluation reports
//! beside it. Raising it without bound fills the canvas: the digit is lost, which the
//! alignment metric sees.

use candle_core::{Result, Tensor};

/// Steepness of the soft ink threshold.
pub const SHARPNESS: f64 = 10.0;

/// Images [B, ...] in [-1, 1] -> boldness [B] in (0, 1).
pub fn boldness(x: &Tensor) -> Result<Tensor> {
    // sigmoid(10 (p - 0.5)) with p = (x + 1) / 2 is sigmoid(5 x).
    let s = x
        .affine(-SHARPNESS / 2.0, 0.0)?
        .exp()?
        .affine(1.0, 1.0)?
        .recip()?;
    s.flatten_from(1)?.mean(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn boldness_counts_inked_pixels_softly() {
        let blank = Tensor::full(-1f32, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let full = Tensor::full(1f32, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let b = |t: &Tensor| boldness(t).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(b(&blank) < 0.01 && b(&full) > 0.99);
        let half = Tensor::cat(
            &[
                blank.narrow(2, 0, 2).unwrap(),
                full.narrow(2, 0, 2).unwrap(),
            ],
            2,
        )
        .unwrap();
        assert!((b(&half) - 0.5).abs() < 0.01);
    }
}
