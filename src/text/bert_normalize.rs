//! BERT's basic tokenizer's text normalisation (transformers' `BasicTokenizer`, as the
//! slow `BertTokenizer` runs it; the steps' order is in `bert_tokenizer.rs`): lowercasing
//! character by character, cleaning control and whitespace characters, CJK ideographs as
//! words, accents stripped, punctuation cut out.

use regex::Regex;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

/// Each character lowercased on its own (Python's `str.lower` one character at a time:
/// no final-sigma rule; `İ` becomes `i` + U+0307).
pub fn lowercase(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// The Unicode classes the basic tokenizer needs, compiled once.
struct Classes {
    /// `space` group: `\t` `\n` `\r` and Zs (-> a space); otherwise a dropped character.
    clean: Regex,
    /// Nonspacing marks, dropped after NFD.
    nonspacing_mark: Regex,
    /// One punctuation character: non-alphanumeric ASCII or Unicode P.
    punctuation: Regex,
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| Classes {
        // Leftmost-first: `\t` `\n` `\r` are category Cc too, the first branch wins.
        clean: Regex::new(r"(?<space>[\t\n\r\p{Zs}])|[\x{0}\x{FFFD}\p{C}]")
            .expect("clean pattern compiles"),
        nonspacing_mark: Regex::new(r"\p{Mn}").expect("mark pattern compiles"),
        punctuation: Regex::new(r"[!-/:-@\[-`{-~\p{P}]").expect("punctuation pattern compiles"),
    })
}

/// transformers' `_clean_text`: invalid and control-like characters dropped, whitespace
/// characters each made one space.
pub fn clean(text: &str) -> String {
    classes()
        .clean
        .replace_all(text, |caps: &regex::Captures| {
            if caps.name("space").is_some() {
                " "
            } else {
                ""
            }
        })
        .into_owned()
}

/// The CJK Unified Ideographs blocks (and extensions, and compatibility ideographs) BERT
/// treats as words of their own. Not Hiragana, Katakana or Hangul.
fn is_cjk(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B820..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

pub fn space_cjk(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// NFD with the nonspacing marks dropped: `é` -> `e`, `ñ` -> `n`.
pub fn strip_accents(word: &str) -> String {
    let decomposed: String = word.nfd().collect();
    classes()
        .nonspacing_mark
        .replace_all(&decomposed, "")
        .into_owned()
}

/// `word` cut before and after each punctuation character (each its own word), appended to
/// `out`; no empty words.
pub fn split_on_punctuation(word: &str, out: &mut Vec<String>) {
    let mut last = 0;
    for m in classes().punctuation.find_iter(word) {
        if m.start() > last {
            out.push(word[last..m.start()].to_string());
        }
        out.push(m.as_str().to_string());
        last = m.end();
    }
    if last < word.len() {
        out.push(word[last..].to_string());
    }
}
