//! Text: CLIP's byte-level BPE tokenizer.

pub mod clip_tokenizer;

pub use clip_tokenizer::{bytes_to_unicode, ClipTokenizer};
