//! Text: CLIP's byte-level BPE tokenizer and BERT's WordPiece tokenizer (ImageReward's).

mod bert_normalize;
pub mod bert_tokenizer;
pub mod clip_tokenizer;

pub use bert_tokenizer::BertTokenizer;
pub use clip_tokenizer::{bytes_to_unicode, ClipTokenizer};
