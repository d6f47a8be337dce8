//! Text: CLIP's byte-level BPE tokenizer.
