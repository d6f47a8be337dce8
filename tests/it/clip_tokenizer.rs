//! CLIP's byte-level BPE tokenizer on a tiny vocabulary and merges file the test writes:
//! merges by rank (checked by hand), the byte table, cleanup, padding and truncation,
//! unknown symbols, and errors that name the file.

use sqdf::text::clip_tokenizer::{BOS_TOKEN, EOS_TOKEN};
use sqdf::text::{bytes_to_unicode, ClipTokenizer};
use std::collections::HashSet;
use std::path::Path;

/// The tiny vocabulary: id = position.
const VOCAB: &[&str] = &[
    "h",
    "e",
    "l",
    "o",
    "w",
    "r",
    "d",
    "a",
    "n",
    "t",
    "'",
    "!", // 0..=11
    "he",
    "ll",
    "hell",
    "hello</w>",
    "o</w>",
    "d</w>",
    "a</w>",
    "t</w>", // 12..=19
    "wor",
    "world</w>",
    "wo",
    "aa",
    "!</w>",
    "4</w>",
    "2</w>",
    "don</w>", // 20..=27
    "'t</w>",
    "do",
    "Ã©</w>",
    "Ã",
    "©</w>",
    "rl",
    "rld</w>",
    "ld</w>", // 28..=35
    "<|startoftext|>",
    "<|endoftext|>", // 36, 37
];
const BOS: u32 = 36;
const EOS: u32 = 37;

/// Merges, rank = line (after the header). Hand-checked:
/// hello: h e l l o</w> -> (h e) he l l o</w> -> (l l) he ll o</w> -> (he ll) hell o</w>
///        -> (hell o</w>) hello</w>.
/// world: w o r l d</w> -> (w o) wo r l d</w> -> (wo r) wor l d</w> -> (l d</w>) wor ld</w>
///        -> (r l) does not apply any more (r was merged) -> (wor ld</w>) world</w>.
const MERGES: &str = "#version: 0.2
h e
l l
he ll
hell o</w>
w o
wo r
l d</w>
r l
wor ld</w>
a a
d o
do n</w>
' t</w>
Ã ©</w>
";

fn id(tok: &str) -> u32 {
    VOCAB.iter().position(|t| *t == tok).unwrap() as u32
}

fn write_files(dir: &Path, merges: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
        .collect();
    let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
    std::fs::write(&v, serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(&m, merges).unwrap();
    (v, m)
}

fn tokenizer(dir: &Path) -> ClipTokenizer {
    write_files(dir, MERGES);
    ClipTokenizer::from_dir(dir).unwrap()
}

#[test]
fn byte_table_is_gpt2s() {
    let t = bytes_to_unicode();
    let distinct: HashSet<char> = t.iter().copied().collect();
    assert_eq!(distinct.len(), 256);
    // Printable bytes map to themselves, the 68 others in order from U+0100.
    assert_eq!(t[b'a' as usize], 'a');
    assert_eq!(t[b'!' as usize], '!');
    assert_eq!(t[b'~' as usize], '~');
    assert_eq!(t[0xA1], '¡');
    assert_eq!(t[0xFF], 'ÿ');
    assert_eq!(t[0], '\u{100}');
    assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120, GPT-2's space
    assert_eq!(t[0x7F], '\u{121}');
    assert_eq!(t[0xAD], 'Ń'); // U+0143, the last of the 68
    assert_eq!(
        t.iter()
            .enumerate()
            .filter(|(b, c)| *b as u32 != **c as u32)
            .count(),
        68
    );
    assert!(t.iter().all(|c| !c.is_whitespace() && !c.is_control()));
}

#[test]
fn merges_apply_by_rank() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    assert_eq!(tok.tokens("hello world"), vec!["hello</w>", "world</w>"]);
    assert_eq!(
        tok.encode("hello world"),
        vec![BOS, id("hello</w>"), id("world</w>"), EOS]
    );
    // One pair merged at a time, all its occurrences left to right, without overlap:
    // a a a a</w> -> (a a) aa a a</w>: the third a pairs with a</w>, which has no merge.
    assert_eq!(tok.tokens("aaaa"), vec!["aa", "a", "a</w>"]);
    assert_eq!(tok.tokens("aaa"), vec!["aa", "a</w>"]);
    // A lone character gets </w>.
    assert_eq!(tok.tokens("a"), vec!["a</w>"]);
}

#[test]
fn a_lower_rank_wins() {
    let dir = tempfile::tempdir().unwrap();
    // l l o</w>: with `l o</w>` ranked first -> l lo</w>; with `l l` first -> ll o</w>.
    write_files(dir.path(), "l o</w>\nl l\n");
    let first = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(first.tokens("llo"), vec!["l", "lo</w>"]);
    write_files(dir.path(), "l l\nl o</w>\n");
    let second = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(second.tokens("llo"), vec!["ll", "o</w>"]);
}

#[test]
fn cleanup_and_pre_tokenisation() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    // Case and whitespace runs do not matter.
    assert_eq!(
        tok.encode("  HeLLo \t\n  WORLD "),
        tok.encode("hello world")
    );
    // Punctuation is its own word; digits are one each; contractions split off.
    assert_eq!(tok.tokens("hello!"), vec!["hello</w>", "!</w>"]);
    assert_eq!(tok.tokens("42"), vec!["4</w>", "2</w>"]);
    assert_eq!(tok.tokens("don't"), vec!["don</w>", "'t</w>"]);
    // Non-ASCII goes through the byte table: é = C3 A9 -> Ã ©, merged.
    assert_eq!(tok.tokens("é"), vec!["Ã©</w>"]);
    assert_eq!(tok.encode("é"), vec![BOS, id("Ã©</w>"), EOS]);
    // The special tokens written out are those tokens.
    assert_eq!(
        tok.encode("hello<|endoftext|>"),
        vec![BOS, id("hello</w>"), EOS, EOS]
    );
    assert_eq!(tok.decode(&tok.encode("  Hello WORLD!")), "hello world !");
}

#[test]
fn unknown_symbols_become_the_end_token() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    assert_eq!(tok.unk_id(), EOS);
    // `z` is in neither the vocabulary nor the merges; `ab` merges nothing and has no `b</w>`.
    assert_eq!(tok.encode("z"), vec![BOS, EOS, EOS]);
    assert_eq!(tok.tokens("ab"), vec!["a", "b</w>"]);
    assert_eq!(
        tok.encode("ab hello"),
        vec![BOS, id("a"), EOS, id("hello</w>"), EOS]
    );
    // A character outside the byte range of the vocabulary: 日 is three bytes.
    assert_eq!(tok.encode("日"), vec![BOS, EOS, EOS, EOS, EOS]);
}

#[test]
fn padding_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (BOS, EOS, EOS));

    let padded = tok.encode_padded("hello world", 77);
    assert_eq!(padded.len(), 77);
    assert_eq!(&padded[..4], &[BOS, id("hello</w>"), id("world</w>"), EOS]);
    assert!(padded[4..].iter().all(|&i| i == EOS));

    // 100 words: truncated to 77 with the end token kept last.
    let long = vec!["hello"; 100].join(" ");
    let ids = tok.encode_padded(&long, 77);
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], BOS);
    assert!(ids[1..76].iter().all(|&i| i == id("hello</w>")));
    assert_eq!(ids[76], EOS);
    assert_eq!(tok.encode(&long).len(), 102);

    // Exactly full: nothing cut.
    let ids = tok.encode_padded("hello world", 4);
    assert_eq!(ids, vec![BOS, id("hello</w>"), id("world</w>"), EOS]);
    assert_eq!(
        tok.encode_padded("hello world", 3),
        vec![BOS, id("hello</w>"), EOS]
    );
    assert_eq!(tok.encode_padded("hello", 1), vec![EOS]);
    assert!(tok.encode_padded("hello", 0).is_empty());
    assert_eq!(tok.encode_padded("", 4), vec![BOS, EOS, EOS, EOS]);

    // Another pad token (SD-2 pads with `!`).
    let bang = tok.clone().with_pad_token("!</w>").unwrap();
    assert_eq!(
        bang.encode_padded("hello", 5),
        vec![BOS, id("hello</w>"), EOS, 24, 24]
    );
    assert!(tok.clone().with_pad_token("nope").is_err());
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (v, m) = write_files(dir.path(), MERGES);

    let missing = dir.path().join("nope");
    let err = format!("{:#}", ClipTokenizer::from_dir(&missing).unwrap_err());
    assert!(
        err.contains(&missing.join("vocab.json").display().to_string())
            && err.contains("not found"),
        "{err}"
    );
    std::fs::remove_file(&m).unwrap();
    let err = format!("{:#}", ClipTokenizer::from_files(&v, &m).unwrap_err());
    assert!(
        err.contains(&m.display().to_string()) && err.contains("not found"),
        "{err}"
    );

    std::fs::write(&m, "#version: 0.2\nh e\nbroken\n").unwrap();
    let err = format!("{:#}", ClipTokenizer::from_files(&v, &m).unwrap_err());
    assert!(
        err.contains(&m.display().to_string()) && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(&m, MERGES).unwrap();
    std::fs::write(&v, "{not json").unwrap();
    let err = format!("{:#}", ClipTokenizer::from_files(&v, &m).unwrap_err());
    assert!(
        err.contains(&v.display().to_string()) && err.contains("JSON"),
        "{err}"
    );

    std::fs::write(&v, r#"{"a": -1}"#).unwrap();
    let err = format!("{:#}", ClipTokenizer::from_files(&v, &m).unwrap_err());
    assert!(
        err.contains(&v.display().to_string()) && err.contains("`a`"),
        "{err}"
    );

    std::fs::write(&v, r#"{"a": 0, "<|endoftext|>": 1}"#).unwrap();
    let err = format!("{:#}", ClipTokenizer::from_files(&v, &m).unwrap_err());
    assert!(
        err.contains(&v.display().to_string()) && err.contains(BOS_TOKEN),
        "{err}"
    );
    let _ = EOS_TOKEN;
}

/// The real SD-1.5 tokenizer (not available offline): set SQDF_CLIP_TOKENIZER_DIR to a
/// `tokenizer/` folder with vocab.json and merges.txt and run with `--ignored`. The
/// expected ids are reference values from other CLIP tokenizer implementations' tests.
#[test]
#[ignore = "needs the real CLIP vocabulary: SQDF_CLIP_TOKENIZER_DIR"]
fn real_vocab_reference_encodings() {
    let dir = std::env::var("SQDF_CLIP_TOKENIZER_DIR").expect("set SQDF_CLIP_TOKENIZER_DIR");
    let tok = ClipTokenizer::from_dir(Path::new(&dir)).unwrap();
    assert_eq!(
        tok.encode("a photo of a cat"),
        vec![49406, 320, 1125, 539, 320, 2368, 49407]
    );
    assert_eq!(
        tok.encode("Hello, world!"),
        vec![49406, 3306, 267, 1002, 256, 49407]
    );
    assert_eq!(
        tok.encode("  A pHotO of a CaT  "),
        tok.encode("a photo of a cat")
    );
    let padded = tok.encode_padded("a photo of a cat", 77);
    assert!(padded[7..].iter().all(|&i| i == 49407));
}
