//! BERT's WordPiece tokenizer for `bert-base-uncased` (a `vocab.txt`, one piece a line, id =
//! line number), as ImageReward uses it through BLIP: transformers' slow `BertTokenizer`
//! (4.36) with its defaults (`do_lower_case`, `tokenize_chinese_chars`, accents stripped
//! because the text is lowercased), plus BLIP's two added special tokens `[DEC]` and `[ENC]`
//! ([`BertTokenizer::with_added_tokens`]). The steps, in transformers' order:
//!
//! 1. special tokens written literally in the text (`[CLS]`, `[SEP]`, `[PAD]`, `[MASK]`,
//!    `[UNK]` and the added ones; case-sensitive) are kept, and every other character is
//!    lowercased on its own (so a capital sigma always becomes `σ`, never the final `ς`);
//! 2. the text is split again on the special tokens (the leftmost match, the longest
//!    if several start there), each its own token; the text between them goes on alone;
//! 3. cleaning: NUL, U+FFFD and every character of Unicode category C (control, format,
//!    private use, unassigned) except `\t` `\n` `\r` are dropped; those three and the
//!    space separators (Zs, e.g. NBSP) become a space. A zero-width space (Cf) therefore
//!    joins the words around it;
//! 4. a space on each side of every CJK ideograph, so each is a word;
//! 5. NFC, then split on whitespace; each word that is not a special token is lowercased
//!    (again: a no-op after step 1), decomposed (NFD) with its nonspacing marks (Mn)
//!    dropped (`é` -> `e`), and cut at punctuation (ASCII `!`..`/`, `:`..`@`, `[`..`` ` ``,
//!    `{`..`~`, and Unicode category P), each punctuation character its own word;
//! 6. WordPiece on each word: the longest vocabulary piece from the word's start, then the
//!    longest `##`-prefixed piece from where it ended, and so on; a word with a position no
//!    piece matches, or over 100 characters, is one `[UNK]`.
//!
//! Pieces become ids through the added tokens first, then the vocabulary. [`encode_padded`]
//! builds what ImageReward passes its text encoder, `tokenizer(prompt, padding='max_length',
//! truncation=True, max_length=35)`: `[CLS]`, at most `max_len - 2` pieces, `[SEP]`, then
//! `[PAD]` up to `max_len`, with an attention mask of 1 on the real tokens, 0 on padding.
//!
//! Character categories come from the `regex` crate's Unicode tables, which may be newer
//! than the Python `unicodedata` that made a reference: a character assigned in between
//! (a recent emoji) is dropped by Python as unassigned but kept here (WordPiece then makes
//! it `[UNK]` unless the vocabulary has it).
//!
//! Checked against transformers 4.36.2 with a 57-piece vocabulary on prompts and edge cases
//! (special tokens in and out of case, composed and combining accents, NBSP, control and
//! zero-width characters, CJK, punctuation, an empty prompt, a 101-character word): the
//! tests at the bottom, fixtures from `tools/parity/make_image_reward_fixtures.py`.
//!
//! [`encode_padded`]: BertTokenizer::encode_padded

use super::bert_normalize::{clean, lowercase, space_cjk, split_on_punctuation, strip_accents};
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// The classification token, first in every encoding.
pub const CLS_TOKEN: &str = "[CLS]";
/// The separator token, last before the padding.
pub const SEP_TOKEN: &str = "[SEP]";
/// The padding token.
pub const PAD_TOKEN: &str = "[PAD]";
/// The unknown token: a word WordPiece cannot cover.
pub const UNK_TOKEN: &str = "[UNK]";
/// The masked-language-model token; special (split out literally) like the others.
pub const MASK_TOKEN: &str = "[MASK]";
/// BLIP's added special tokens, in the order it adds them (ids 30522 and 30523 with
/// `bert-base-uncased`'s 30522-piece vocabulary).
pub const BLIP_ADDED_TOKENS: [&str; 2] = ["[DEC]", "[ENC]"];
/// Longer words are `[UNK]` without trying WordPiece (transformers'
/// `max_input_chars_per_word`).
const MAX_WORD_CHARS: usize = 100;

/// BERT's uncased WordPiece tokenizer: vocabulary, added tokens and special ids.
#[derive(Debug, Clone)]
pub struct BertTokenizer {
    vocab: HashMap<String, u32>,
    /// Tokens added after the vocabulary (ids from `vocab.len()` on), looked up first.
    added: HashMap<String, u32>,
    /// Tokens split out of the raw text literally, never lowercased or cut.
    specials: Vec<String>,
    cls: u32,
    sep: u32,
    pad: u32,
    unk: u32,
}

impl BertTokenizer {
    /// Reads a `vocab.txt`. A missing or unreadable file, or one without `[CLS]`, `[SEP]`,
    /// `[PAD]` or `[UNK]`, is an error naming it. (`[MASK]` is optional: as in
    /// transformers, a vocabulary without it gets it as the next id.)
    pub fn from_vocab_file(path: &Path) -> Result<Self> {
        let text = super::clip_tokenizer::read_text(path, "BERT vocabulary")?;
        Self::from_vocab_str(&text).map_err(|e| anyhow!("BERT vocabulary {}: {e}", path.display()))
    }

    /// A tokenizer from the contents of a `vocab.txt`. Lines end at `\n`, `\r\n` or `\r`
    /// (Python's universal newlines, as transformers reads it); a repeated piece keeps its
    /// last line's id.
    pub fn from_vocab_str(text: &str) -> Result<Self> {
        let vocab = parse_vocab(text);
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| anyhow!("has no `{t}` token"))
        };
        let (cls, sep, pad, unk) = (
            id(CLS_TOKEN)?,
            id(SEP_TOKEN)?,
            id(PAD_TOKEN)?,
            id(UNK_TOKEN)?,
        );
        let specials = [CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN]
            .map(String::from)
            .to_vec();
        let tokenizer = Self {
            vocab,
            added: HashMap::new(),
            specials,
            cls,
            sep,
            pad,
            unk,
        };
        Ok(tokenizer.with_added_tokens(&[MASK_TOKEN]))
    }

    /// The same tokenizer with `tokens` added as special tokens, as transformers'
    /// `add_special_tokens` does: each not yet known gets the next id (the number of
    /// distinct tokens so far), one already known keeps its id; all are split out of the
    /// text literally. BLIP adds [`BLIP_ADDED_TOKENS`].
    pub fn with_added_tokens(mut self, tokens: &[&str]) -> Self {
        for &token in tokens.iter().filter(|t| !t.is_empty()) {
            if self.token_id(token).is_none() {
                let next = u32::try_from(self.vocab_size()).expect("vocabulary fits u32 ids");
                self.added.insert(token.to_string(), next);
            }
            if !self.is_special(token) {
                self.specials.push(token.to_string());
            }
        }
        self
    }

    /// `vocab.txt` with BLIP's added tokens, as ImageReward builds it.
    pub fn blip_from_vocab_file(path: &Path) -> Result<Self> {
        Ok(Self::from_vocab_file(path)?.with_added_tokens(&BLIP_ADDED_TOKENS))
    }

    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// Distinct tokens, added ones included (30524 for BLIP's: its text embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len() + self.added.len()
    }

    /// A token's id: an added token's, else the vocabulary's.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.added
            .get(token)
            .or_else(|| self.vocab.get(token))
            .copied()
    }

    /// The pieces of `text`, without `[CLS]` / `[SEP]`: `"A photo, sitting"` ->
    /// `["a", "photo", ",", "sit", "##ting"]` with a vocabulary that has those pieces.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        // Lowercasing comes first, around the special tokens as they stand in the raw text;
        // splitting then runs on the lowercased text (so a lowercase added token could match
        // there, as in transformers).
        let lowered: String = self
            .split_specials(text)
            .into_iter()
            .map(|(part, special)| {
                if special {
                    part.to_string()
                } else {
                    lowercase(part)
                }
            })
            .collect();
        let mut out = Vec::new();
        for (part, special) in self.split_specials(&lowered) {
            if special {
                out.push(part.to_string());
            } else {
                for word in self.basic_words(part) {
                    self.word_pieces(&word, &mut out);
                }
            }
        }
        out
    }

    /// `[CLS]`, the ids of [`BertTokenizer::tokenize`]'s pieces, `[SEP]`; no truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.cls];
        ids.extend(
            self.tokenize(text)
                .iter()
                .map(|t| self.token_id(t).unwrap_or(self.unk)),
        );
        ids.push(self.sep);
        ids
    }

    /// Exactly `max_len` ids and their attention mask, as `tokenizer(text,
    /// padding='max_length', truncation=True, max_length=max_len)`: [`BertTokenizer::encode`]
    /// cut to `max_len` with `[SEP]` kept last, padded with `[PAD]`; the mask is 1 on the
    /// real tokens, 0 on the padding.
    ///
    /// # Panics
    /// If `max_len` < 2: there must be room for `[CLS]` and `[SEP]`.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> (Vec<u32>, Vec<u32>) {
        assert!(
            max_len >= 2,
            "max_len {max_len} leaves no room for [CLS] and [SEP]"
        );
        let mut ids = self.encode(text);
        if ids.len() > max_len {
            ids.truncate(max_len - 1);
            ids.push(self.sep);
        }
        let real = ids.len();
        ids.resize(max_len, self.pad);
        let mask = (0..max_len).map(|i| u32::from(i < real)).collect();
        (ids, mask)
    }

    fn is_special(&self, token: &str) -> bool {
        self.specials.iter().any(|s| s == token)
    }

    /// `text` cut into special tokens (`true`) and the non-empty text between them
    /// (`false`), in order.
    fn split_specials<'a>(&self, text: &'a str) -> Vec<(&'a str, bool)> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some((start, len)) = self.next_special(rest) {
            if start > 0 {
                parts.push((&rest[..start], false));
            }
            parts.push((&rest[start..start + len], true));
            rest = &rest[start + len..];
        }
        if !rest.is_empty() {
            parts.push((rest, false));
        }
        parts
    }

    /// Byte offset and length of the first special token in `text`, the longest if
    /// several start at the same place (transformers' trie).
    fn next_special(&self, text: &str) -> Option<(usize, usize)> {
        self.specials
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|i| (i, s.len())))
            .min_by_key(|&(i, len)| (i, std::cmp::Reverse(len)))
    }

    /// transformers' `BasicTokenizer` on lowercased text without special tokens: cleaned,
    /// CJK spaced, NFC, split on whitespace, accents stripped, cut at punctuation.
    fn basic_words(&self, text: &str) -> Vec<String> {
        let spaced = space_cjk(&clean(text));
        let composed: String = spaced.nfc().collect();
        let mut words = Vec::new();
        for word in composed.split_whitespace() {
            // Only a lowercase added token that the split missed can be one here (a
            // zero-width character inside it, dropped by cleaning): kept whole, as in
            // transformers (its `never_split`).
            if self.is_special(word) {
                words.push(word.to_string());
            } else {
                split_on_punctuation(&strip_accents(&lowercase(word)), &mut words);
            }
        }
        words
    }

    /// WordPiece of one word, appended to `out`: greedy longest match from the start,
    /// `##` on every piece but the first; `[UNK]` alone if any position has no piece.
    fn word_pieces(&self, word: &str, out: &mut Vec<String>) {
        if word.chars().count() > MAX_WORD_CHARS {
            out.push(UNK_TOKEN.to_string());
            return;
        }
        let first = out.len();
        let mut start = 0;
        while start < word.len() {
            match self.longest_piece(word, start) {
                Some((piece, end)) => {
                    out.push(piece);
                    start = end;
                }
                None => {
                    out.truncate(first);
                    out.push(UNK_TOKEN.to_string());
                    return;
                }
            }
        }
    }

    /// The longest vocabulary piece of `word` starting at byte `start` (`##`-prefixed
    /// unless `start` is 0), and the byte where it ends. Only the base vocabulary counts,
    /// not the added tokens.
    fn longest_piece(&self, word: &str, start: usize) -> Option<(String, usize)> {
        let prefix = if start > 0 { "##" } else { "" };
        let mut candidate = String::with_capacity(prefix.len() + word.len() - start);
        let mut end = word.len();
        loop {
            candidate.clear();
            candidate.push_str(prefix);
            candidate.push_str(&word[start..end]);
            if self.vocab.contains_key(&candidate) {
                return Some((candidate, end));
            }
            // Drop the last character; give up once the candidate was a single character.
            match word[start..end].char_indices().last() {
                Some((i, _)) if i > 0 => end = start + i,
                _ => return None,
            }
        }
    }
}

/// Piece -> id (its line number), as transformers' `load_vocab`: every line counts, an
/// empty one included, but no empty last line after a final newline.
fn parse_vocab(text: &str) -> HashMap<String, u32> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut vocab = HashMap::new();
    if text.is_empty() {
        return vocab;
    }
    for (id, line) in body.split('\n').enumerate() {
        let id = u32::try_from(id).expect("vocabulary fits u32 ids");
        vocab.insert(line.to_string(), id);
    }
    vocab
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::path::PathBuf;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/image_reward")
    }

    fn reference() -> Value {
        let path = fixture_dir().join("image_reward_io.json");
        let text = std::fs::read_to_string(&path).expect("reading image_reward_io.json");
        serde_json::from_str(&text).expect("image_reward_io.json is JSON")
    }

    fn fixture_tokenizer() -> BertTokenizer {
        BertTokenizer::blip_from_vocab_file(&fixture_dir().join("bert-base-uncased/vocab.txt"))
            .expect("fixture vocabulary loads")
    }

    fn u32s(v: &Value) -> Vec<u32> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|x| u32::try_from(x.as_u64().expect("an integer")).expect("fits u32"))
            .collect()
    }

    fn strs(v: &Value) -> Vec<&str> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|x| x.as_str().expect("a string"))
            .collect()
    }

    /// A small vocabulary for the cases the fixture does not cover.
    fn small_tokenizer(extra: &[&str]) -> BertTokenizer {
        let mut lines = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
        lines.extend_from_slice(extra);
        BertTokenizer::from_vocab_str(&(lines.join("\n") + "\n")).expect("small vocabulary")
    }

    /// Checks `text` against the reference ids, the mask the ids imply, and (when given)
    /// the reference tokens, space-joined with `[CLS]` / `[SEP]` / `[PAD]`.
    fn check(tok: &BertTokenizer, text: &str, ids: &[u32], mask: Option<&[u32]>, tokens: &str) {
        let max_len = ids.len();
        let (got_ids, got_mask) = tok.encode_padded(text, max_len);
        assert_eq!(got_ids, ids, "ids of {text:?}");
        let real = ids.iter().filter(|&&i| i != tok.pad_id()).count();
        let implied: Vec<u32> = (0..max_len).map(|i| u32::from(i < real)).collect();
        assert_eq!(got_mask, mask.unwrap_or(&implied), "mask of {text:?}");
        // The reference tokens come from the ids, so an unknown word reads `[UNK]`, as
        // `tokenize` gives it; only the pieces within the length limit are recorded.
        let reference: Vec<&str> = tokens.split(' ').collect();
        assert_eq!(reference.len(), max_len, "token count of {text:?}");
        let pieces = tok.tokenize(text);
        let kept = &pieces[..pieces.len().min(max_len - 2)];
        assert_eq!(kept, &reference[1..real - 1], "pieces of {text:?}");
    }

    #[test]
    fn special_ids_match_reference() {
        let r = reference();
        let tok = fixture_tokenizer();
        let special = &r["special_ids"];
        let id = |k: &str| u32::try_from(special[k].as_u64().expect("an id")).expect("u32");
        assert_eq!(tok.pad_id(), id("pad"));
        assert_eq!(tok.unk_id(), id("unk"));
        assert_eq!(tok.cls_id(), id("cls"));
        assert_eq!(tok.sep_id(), id("sep"));
        assert_eq!(tok.token_id(MASK_TOKEN), Some(id("mask")));
        assert_eq!(tok.token_id("[DEC]"), Some(id("dec_bos")));
        assert_eq!(tok.token_id("[ENC]"), Some(id("enc")));
        assert_eq!(tok.vocab_size(), 59);
    }

    #[test]
    fn prompts_match_reference() {
        let r = reference();
        let tok = fixture_tokenizer();
        let max_len = usize::try_from(r["max_length"].as_u64().expect("max_length")).unwrap();
        assert_eq!(max_len, crate::models::metrics::image_reward::MAX_TOKENS);
        let prompts = strs(&r["prompts"]);
        assert_eq!(prompts.len(), 3);
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = u32s(&r["input_ids"][i]);
            let mask = u32s(&r["attention_mask"][i]);
            assert_eq!(ids.len(), max_len);
            let tokens = r["tokens"][i].as_str().expect("tokens");
            check(&tok, prompt, &ids, Some(&mask), tokens);
        }
    }

    #[test]
    fn edge_cases_match_reference() {
        let r = reference();
        let tok = fixture_tokenizer();
        let cases = strs(&r["tokenizer_cases"]);
        assert_eq!(cases.len(), 7);
        for (i, case) in cases.iter().enumerate() {
            let ids = u32s(&r["tokenizer_case_ids"][i]);
            let tokens = r["tokenizer_case_tokens"][i].as_str().expect("tokens");
            check(&tok, case, &ids, None, tokens);
        }
    }

    #[test]
    fn truncation_keeps_sep_last() {
        let tok = fixture_tokenizer();
        let (ids, mask) = tok.encode_padded("a cat a cat a cat", 5);
        assert_eq!(ids, [2, 11, 22, 11, 3]);
        assert_eq!(mask, [1; 5]);
        let (ids, mask) = tok.encode_padded("", 2);
        assert_eq!((ids, mask), (vec![2, 3], vec![1, 1]));
    }

    #[test]
    fn missing_vocab_file_names_it() {
        let path = fixture_dir().join("no-such-dir/vocab.txt");
        let err = BertTokenizer::from_vocab_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn vocab_without_a_required_special_token_is_an_error() {
        let err = BertTokenizer::from_vocab_str("[PAD]\n[UNK]\n[CLS]\na\n").unwrap_err();
        assert!(err.to_string().contains("[SEP]"), "{err}");
    }

    #[test]
    fn vocab_lines_and_added_ids() {
        // CRLF and lone CR end lines too; [MASK] missing from the vocabulary gets the next
        // id, before the added tokens; a token added twice, or already known, keeps its id.
        let text = "[PAD]\r\n[UNK]\r[CLS]\n[SEP]\ncat\n";
        let tok = BertTokenizer::from_vocab_str(text)
            .unwrap()
            .with_added_tokens(&["[DEC]", "[ENC]", "[DEC]", "cat", ""]);
        assert_eq!(tok.token_id("cat"), Some(4));
        assert_eq!(tok.token_id(MASK_TOKEN), Some(5));
        assert_eq!(tok.token_id("[DEC]"), Some(6));
        assert_eq!(tok.token_id("[ENC]"), Some(7));
        assert_eq!(tok.vocab_size(), 8);
        assert_eq!(tok.encode("[MASK] Cat"), [2, 5, 4, 3]);
        // A repeated piece keeps its last line's id; an empty line is a (useless) piece.
        let tok = BertTokenizer::from_vocab_str("[PAD]\n[UNK]\n[CLS]\n[SEP]\n\ndog\ndog").unwrap();
        assert_eq!(tok.token_id("dog"), Some(6));
        assert_eq!(tok.token_id(""), Some(4));
    }

    #[test]
    fn word_length_limit_is_100_characters() {
        let tok = small_tokenizer(&["e", "##e"]);
        assert_eq!(tok.tokenize(&"e".repeat(100)).len(), 100);
        assert_eq!(tok.tokenize(&"e".repeat(101)), [UNK_TOKEN]);
    }

    #[test]
    fn wordpiece_is_greedy_longest_first() {
        let tok = small_tokenizer(&["un", "unaff", "##aff", "##able", "##a", "##ffable"]);
        // "unaff" wins over "un", then "##able"; no backtracking to "un" + "##affable".
        assert_eq!(tok.tokenize("unaffable"), ["unaff", "##able"]);
        // One uncovered position makes the whole word [UNK].
        assert_eq!(tok.tokenize("unaffx"), [UNK_TOKEN]);
    }

    #[test]
    fn basic_tokenizer_details() {
        let tok = small_tokenizer(&["σοφοσ", "cat", "dog", "istanbul", "a", "b", "[", "]", "cls"]);
        // Capital sigma lowercases to σ even word-finally (one character at a time).
        assert_eq!(tok.tokenize("ΣΟΦΟΣ"), ["σοφοσ"]);
        // İ -> i + U+0307 -> the mark is stripped.
        assert_eq!(tok.tokenize("İSTANBUL"), ["istanbul"]);
        // Private use (Co) and unassigned (Cn) characters are dropped like control
        // characters; U+2028 (Zl, not Zs) still splits words, as Python's `str.split`.
        assert_eq!(
            tok.tokenize("ca\u{E000}t\u{2028}d\u{378}og"),
            ["cat", "dog"]
        );
        // CJK ideographs are words of their own; `^` and `` ` `` are punctuation.
        assert_eq!(
            tok.tokenize("a猫b^a`b"),
            ["a", UNK_TOKEN, "b", UNK_TOKEN, "a", UNK_TOKEN, "b"]
        );
        // A special token broken by a zero-width space was lowercased before cleaning
        // rejoined it: ordinary text.
        assert_eq!(tok.tokenize("[CL\u{200B}S]"), ["[", "cls", "]"]);
        assert_eq!(tok.encode("x[SEP]y"), [2, 1, 3, 1, 3]);
    }
}
