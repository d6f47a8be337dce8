//! SD-1.5's UNet as a `Denoiser`: a condition id picks a prompt's CLIP text states from a
//! table computed once when the run starts (the text encoder needs no gradient, and 45
//! prompts are cheaper to keep than to re-encode every step). The last row is the empty
//! prompt, classifier-free guidance's ∅.

use crate::models::{Denoiser, UNet2DConditionModel};
use candle_core::{Result, Tensor};

pub struct PromptUNet {
    pub unet: UNet2DConditionModel,
    /// [P + 1, 77, 768] text states in the UNet's dtype, detached.
    pub prompts: Tensor,
}

impl PromptUNet {
    /// The condition id of the empty prompt.
    pub fn null_id(&self) -> Result<u32> {
        Ok(self.prompts.dim(0)? as u32 - 1)
    }
}

impl Denoiser for PromptUNet {
    /// Runs in the frozen weights' dtype (bf16 on a GPU) and answers in the state's (f32):
    /// the sampler, the buffer and the losses stay in f32.
    fn eps(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let context = self.prompts.index_select(cond, 0)?;
        let dtype = self.prompts.dtype();
        self.unet
            .forward(&x.to_dtype(dtype)?, t, &context)?
            .to_dtype(x.dtype())
    }
}
