//! CLIP's byte-level BPE tokenizer, as in SD-1.5's `tokenizer/` folder (`vocab.json` +
//! `merges.txt`, no `tokenizer.json`), following transformers' `CLIPTokenizer` (5.x: what
//! `CLIPTokenizer.from_pretrained(folder)` builds, a `tokenizers` pipeline):
//!
//! 1. special tokens: a literal `<|startoftext|>` / `<|endoftext|>` in the raw text, matched
//!    exactly (case-sensitive, before any normalisation), is that token; `<|ENDOFTEXT|>` is
//!    ordinary text (lowercased below, then byte-pair encoded like any other word);
//! 2. normalise the rest: Unicode NFC (a decomposed "e\u{301}" becomes "é", Hangul jamo
//!    become syllables), whitespace runs become one space, each character is lowercased on
//!    its own (so a final capital sigma becomes `σ`, not the `ς` of context-aware
//!    lowercasing);
//! 3. pre-tokenise with CLIP's regex without its special-token alternatives,
//!    `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+` (whitespace between
//!    the pieces is dropped). transformers keeps the alternatives but then splits every
//!    piece again with GPT-2's regex (its `ByteLevel` pre-tokenizer), which cuts a
//!    `<|endoftext|>` that only lowercasing produced into `<|`, `endoftext`, `|>`, and
//!    leaves every other piece whole: the same pieces;
//! 4. map each word's UTF-8 bytes to printable characters with GPT-2's
//!    [`bytes_to_unicode`] table and append `</w>` to the word's last symbol;
//! 5. apply merges, always the adjacent pair of lowest rank (its line in `merges.txt`),
//!    all its occurrences left to right, until no pair has a rank;
//! 6. look each symbol up in `vocab.json`; a symbol the vocabulary lacks becomes the
//!    unknown token, which for CLIP is `<|endoftext|>` (transformers' `unk_token`). With
//!    the real vocabulary this cannot happen: every byte has a token.
//!
//! (transformers 4's slow tokenizer also ran ftfy's mojibake repair when ftfy was installed;
//! transformers 5 does not, and neither does this.)
//!
//! `encode` puts `<|startoftext|>` first and `<|endoftext|>` last (ids read from the
//! vocabulary: 49406 and 49407 in the real one). `encode_padded` truncates to `max_len`
//! keeping the end token last and pads with the pad token, `<|endoftext|>` as in SD-1.5's
//! `special_tokens_map.json` (SD-2 pads with `!`: [`ClipTokenizer::with_pad_token`]).
//!
//! `merges.txt`: a first line starting with `#version` is a header and skipped; at most
//! 49152 - 256 - 2 = 48894 merges are used, as transformers and OpenAI do (the rest of a
//! longer file is ignored).
//!
//! Checked against transformers 5.25 on hard prompts (accents, jamo, Greek, full-width
//! forms, special tokens in any case) with a small BPE vocabulary, in `tests/it/parity.rs`
//! (fixtures from `tools/parity/make_fixtures.py`). The real SD-1.5 vocabulary is not in
//! the repository; reference values from other implementations' tests:
//! `"a photo of a cat"` -> `[49406, 320, 1125, 539, 320, 2368, 49407]`,
//! `"Hello, world!"` -> `[49406, 3306, 267, 1002, 256, 49407]`; the ignored test
//! `real_vocab_reference_encodings` in `tests/it/clip_tokenizer.rs` checks them when
//! `SQDF_CLIP_TOKENIZER_DIR` points at a real `tokenizer/` folder.

use anyhow::{anyhow, bail, Result};
use regex::Regex;
use std::collections::HashMap;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// The start-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// The end-of-text token (also CLIP's unknown token and SD-1.5's pad token).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// SD-1.5's (and CLIP's) context length.
pub const MAX_LEN: usize = 77;
/// How many merges CLIP uses: 49152 tokens less the 256 bytes and the 2 special tokens.
pub const MAX_MERGES: usize = 49152 - 256 - 2;
/// The end-of-word marker appended to a word's last symbol.
const END_OF_WORD: &str = "</w>";
/// CLIP's pre-tokenisation pattern for text without special tokens (see the module doc).
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's reversible map from bytes to printable characters: the printable Latin-1 bytes
/// (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) map to themselves, the other 68 bytes in order to
/// U+0100, U+0101, ... Indexed by byte; all 256 characters are distinct.
pub fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).expect("the table stays below U+0200");
    }
    table
}

/// CLIP's tokenizer: vocabulary, merge ranks and special ids.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// Reads `vocab.json` and `merges.txt` from a tokenizer folder (SD-1.5's `tokenizer/`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
    }

    /// Reads a vocabulary (JSON object token -> id) and a merges file (one `a b` pair a
    /// line). A missing or malformed file is an error naming it.
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let vocab_text = read_text(vocab, "CLIP vocabulary")?;
        let merges_text = read_text(merges, "CLIP merges file")?;
        Self::parse(
            &vocab_text,
            &vocab.display().to_string(),
            &merges_text,
            &merges.display().to_string(),
        )
    }

    /// A tokenizer from the contents of `vocab.json` and `merges.txt`.
    pub fn from_strs(vocab_json: &str, merges_txt: &str) -> Result<Self> {
        Self::parse(vocab_json, "vocab.json", merges_txt, "merges.txt")
    }

    fn parse(
        vocab_json: &str,
        vocab_name: &str,
        merges_txt: &str,
        merges_name: &str,
    ) -> Result<Self> {
        let encoder = parse_vocab(vocab_json).map_err(|e| anyhow!("{vocab_name}: {e}"))?;
        let ranks = parse_merges(merges_txt).map_err(|e| anyhow!("{merges_name}: {e}"))?;
        let id = |t: &str| {
            encoder
                .get(t)
                .copied()
                .ok_or_else(|| anyhow!("{vocab_name}: has no `{t}` token"))
        };
        let (bos, eos) = (id(BOS_TOKEN)?, id(EOS_TOKEN)?);
        let byte_encoder = bytes_to_unicode();
        let byte_decoder = byte_encoder
            .iter()
            .enumerate()
            .map(|(b, c)| (*c, b as u8))
            .collect();
        let decoder = encoder.iter().map(|(k, v)| (*v, k.clone())).collect();
        Ok(Self {
            encoder,
            decoder,
            ranks,
            byte_encoder,
            byte_decoder,
            pattern: Regex::new(PATTERN).expect("CLIP's pattern compiles"),
            bos,
            eos,
            pad: eos,
        })
    }

    /// The same tokenizer padding with `token` (SD-2 pads with `!`).
    pub fn with_pad_token(mut self, token: &str) -> Result<Self> {
        self.pad = self
            .token_id(token)
            .ok_or_else(|| anyhow!("pad token `{token}` is not in the vocabulary"))?;
        Ok(self)
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The unknown token's id: `<|endoftext|>`, as in transformers' `CLIPTokenizer`.
    pub fn unk_id(&self) -> u32 {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.encoder.get(token).copied()
    }

    /// The normalised text, as transformers' normaliser: NFC, whitespace runs -> one space,
    /// trimmed, every character lowercased on its own (no final-sigma rule).
    pub fn clean(text: &str) -> String {
        let composed: String = text.nfc().collect();
        composed
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .flat_map(char::to_lowercase)
            .collect()
    }

    /// The BPE symbols of `text` (no start/end tokens): `"a photo"` -> `["a</w>", "photo</w>"]`
    /// with a vocabulary that has those merges. Exact `<|startoftext|>` / `<|endoftext|>`
    /// in `text` are kept as those tokens; everything between them is normalised apart.
    pub fn tokens(&self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = [BOS_TOKEN, EOS_TOKEN]
                .iter()
                .filter_map(|s| rest.find(s).map(|i| (i, *s)))
                .min();
            let (plain, special) = match next {
                Some((i, s)) => (&rest[..i], Some(s)),
                None => (rest, None),
            };
            self.plain_tokens(plain, &mut out);
            match special {
                Some(s) => {
                    out.push(s.to_string());
                    rest = &rest[plain.len() + s.len()..];
                }
                None => break,
            }
        }
        out
    }

    /// BPE symbols of text without special tokens: normalised, pre-tokenised, merged.
    fn plain_tokens(&self, text: &str, out: &mut Vec<String>) {
        let text = Self::clean(text);
        for m in self.pattern.find_iter(&text) {
            let mapped: Vec<String> = m
                .as_str()
                .bytes()
                .map(|b| self.byte_encoder[b as usize].to_string())
                .collect();
            out.extend(self.bpe(mapped));
        }
    }

    /// Token ids of `text`: `<|startoftext|>`, the text's tokens, `<|endoftext|>`; no
    /// truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        ids.push(self.bos);
        ids.extend(
            self.tokens(text)
                .iter()
                .map(|t| self.encoder.get(t).copied().unwrap_or(self.eos)),
        );
        ids.push(self.eos);
        ids
    }

    /// Exactly `max_len` ids (77 for SD-1.5): [`ClipTokenizer::encode`] truncated to
    /// `max_len` with `<|endoftext|>` kept last, then padded with the pad id. (For
    /// `max_len` 1 that is `[eos]`, for 0 nothing.)
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = self.encode(text);
        if ids.len() > max_len {
            ids.truncate(max_len);
            if let Some(last) = ids.last_mut() {
                *last = self.eos;
            }
        }
        ids.resize(max_len, self.pad);
        ids
    }

    /// The text of token ids, start/end tokens (and ids the vocabulary lacks) skipped; each
    /// `</w>` becomes a space, as transformers decodes.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            if *id == self.bos || *id == self.eos {
                continue;
            }
            let Some(tok) = self.decoder.get(id) else {
                continue;
            };
            for c in tok.chars() {
                if let Some(b) = self.byte_decoder.get(&c) {
                    bytes.push(*b);
                }
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace(END_OF_WORD, " ")
            .trim()
            .to_string()
    }

    /// Byte-pair merges of one word's symbols (the last gets `</w>`).
    fn bpe(&self, mut word: Vec<String>) -> Vec<String> {
        if let Some(last) = word.last_mut() {
            last.push_str(END_OF_WORD);
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|p| {
                    let key = (p[0].clone(), p[1].clone());
                    self.ranks.get(&key).map(|r| (*r, key))
                })
                .min();
            let Some((_, (first, second))) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }
}

/// A text file's contents; a missing or unreadable file is an error naming `what` and it.
pub(super) fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!("{what} {} not found", path.display()),
        _ => anyhow!("cannot read {what} {}: {e}", path.display()),
    })
}

fn parse_vocab(text: &str) -> Result<HashMap<String, u32>> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| anyhow!("not a JSON object of token -> id"))?;
    if obj.is_empty() {
        bail!("is empty");
    }
    let mut out = HashMap::with_capacity(obj.len());
    for (tok, id) in obj {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                anyhow!("token `{tok}` has id {id}, not a non-negative 32-bit integer")
            })?;
        out.insert(tok.clone(), id);
    }
    Ok(out)
}

fn parse_merges(text: &str) -> Result<HashMap<(String, String), usize>> {
    let mut ranks = HashMap::new();
    let mut rank = 0;
    for (i, line) in text.lines().enumerate() {
        if i == 0 && line.starts_with("#version") {
            continue;
        }
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if rank == MAX_MERGES {
            break;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [a, b] = parts.as_slice() else {
            bail!(
                "line {} is `{line}`, not two symbols separated by a space",
                i + 1
            );
        };
        // A repeated pair keeps its last rank, as Python's dict(zip(merges, range(n))).
        ranks.insert((a.to_string(), b.to_string()), rank);
        rank += 1;
    }
    Ok(ranks)
}
