//! Prompts through CLIP's text towers: token ids as SD-1.5's tokenizer pads them, the text
//! encoder's hidden states the UNet reads, and the normalised projected embeddings the CLIP
//! score, HPSv2 and PickScore compare images with.

use crate::models::clip::{self, ClipText};
use crate::text::ClipTokenizer;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Token ids [n, len] of prompts (len = the text model's positions, 77 for CLIP), padded
/// as SD-1.5's tokenizer pads.
pub fn token_ids(
    tokenizer: &ClipTokenizer,
    prompts: &[String],
    len: usize,
    device: &Device,
) -> Result<Tensor> {
    let ids: Vec<u32> = prompts
        .iter()
        .flat_map(|p| tokenizer.encode_padded(p, len))
        .collect();
    Ok(Tensor::from_vec(ids, (prompts.len(), len), device)?)
}

/// `f` of the prompts' token ids, 8 prompts at a time, detached and concatenated.
fn encode(
    text: &ClipText,
    tok: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    let len = text.config().max_position_embeddings;
    let out = prompts
        .chunks(8)
        .map(|chunk| Ok(f(&token_ids(tok, chunk, len, device)?)?.detach()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&out, 0)?)
}

/// L2-normalised projected text embeddings of the prompts (the CLIP score's side).
pub fn text_embeds(
    text: &ClipText,
    tok: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
) -> Result<Tensor> {
    encode(text, tok, prompts, device, |ids| {
        clip::l2_normalize(&text.text_embeds(ids)?)
    })
}

/// The SD text encoder's last hidden states [n, 77, hidden] of prompts (what the UNet reads).
pub fn text_states(
    text: &ClipText,
    tok: &ClipTokenizer,
    prompts: &[String],
    device: &Device,
) -> Result<Tensor> {
    encode(text, tok, prompts, device, |ids| text.forward(ids))
}
