//! The convolutional half of torchvision's AlexNet (`features.*` of
//! `alexnet-owt-7be5be79.pth`), tapped after each of its five ReLUs as LPIPS reads it
//! (Zhang et al. 2018, `lpips.pretrained_networks.alexnet`). Evaluation only: nothing here
//! needs a gradient.

use crate::nn::{conv2d_layer, Conv2d};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// (index in `features`, in channels, out channels, kernel, stride, padding).
const CONVS: [(usize, usize, usize, usize, usize, usize); 5] = [
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
];

/// Channels of the five taps (relu1..relu5).
pub const TAP_CHANNELS: [usize; 5] = [64, 192, 384, 256, 256];

/// The smallest image side the layers accept: two 3x3, stride-2 max pools after the
/// stride-4 first convolution need a 7x7 map there.
pub const MIN_SIDE: usize = 31;

#[derive(Debug, Clone)]
pub struct AlexNetFeatures {
    convs: Vec<Conv2d>,
}

impl AlexNetFeatures {
    /// `vb` at `features`: reads `N.weight` and `N.bias` for N in 0, 3, 6, 8, 10.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let convs = CONVS
            .iter()
            .map(|&(i, c, o, k, stride, padding)| {
                let cfg = Conv2dConfig {
                    stride,
                    padding,
                    ..Default::default()
                };
                conv2d_layer(c, o, k, cfg, vb.pp(i.to_string()))
            })
            .collect::<Result<_>>()?;
        Ok(Self { convs })
    }

    /// Images [B, 3, H, W] (already shifted and scaled as the caller's network expects)
    /// -> the five ReLU outputs: relu1 [B, 64, ...] to relu5 [B, 256, ...]. A 3x3 max pool
    /// of stride 2 (floor) follows relu1 and relu2.
    pub fn taps(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        if h.min(w) < MIN_SIDE {
            candle_core::bail!(
                "AlexNet needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}"
            )
        }
        let mut taps: Vec<Tensor> = Vec::with_capacity(5);
        let mut h = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            if i == 1 || i == 2 {
                h = h.max_pool2d_with_stride(3, 2)?;
            }
            h = conv.forward(&h)?.relu()?;
            taps.push(h.clone());
        }
        Ok(taps)
    }
}
