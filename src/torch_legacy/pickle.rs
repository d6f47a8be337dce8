//! A small pickle machine for the opcodes `torch.save` wrote before PyTorch 1.6 (protocol
//! 2, Python 2 strings among them, which candle's reader does not know). It only builds
//! values: globals stay names and calls stay (callable, args) pairs, so a file can run
//! nothing. Memoised values are copies, as in candle's reader: torch's files never mutate a
//! container after memoising and then fetch it again. A malformed or hostile file is an
//! error, never an abort: lengths are checked against the bytes left, nesting is capped at
//! `MAX_DEPTH` and copies out of the memo at `MAX_COPIED` values.

use anyhow::{anyhow, bail, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name`, unresolved.
    Global(String, String),
    /// callable(*args), not called.
    Reduce(Box<Value>, Box<Value>),
    /// obj.__setstate__(state), not applied.
    Build(Box<Value>, Box<Value>),
    PersistentId(Box<Value>),
    Mark,
}

/// The next `n` bytes; a length past the end is an error, never an allocation of it.
fn take(r: &mut &[u8], n: usize) -> Result<Vec<u8>> {
    if n > r.len() {
        bail!("the pickle ends before its {n}-byte field");
    }
    let (head, rest) = r.split_at(n);
    *r = rest;
    Ok(head.to_vec())
}

fn le_uint(r: &mut &[u8], n: usize) -> Result<u64> {
    Ok(take(r, n)?
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64))
}

fn line(r: &mut &[u8]) -> Result<String> {
    let mut out = Vec::new();
    loop {
        let b = take(r, 1)?[0];
        if b == b'\n' {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.push(b);
    }
}

/// Python's LONG1: little-endian two's complement of `n` bytes.
fn long(r: &mut &[u8], n: usize) -> Result<Value> {
    let bytes = take(r, n)?;
    if n > 8 {
        return Ok(Value::BigInt(bytes));
    }
    let mut v = bytes
        .iter()
        .rev()
        .fold(0i64, |acc, &b| (acc << 8) | b as i64);
    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
        v -= 1i64 << (8 * n);
    }
    Ok(Value::Int(v))
}

/// Deepest nesting a value may have: torch's files nest a handful of levels; deeper ones
/// would only overflow the stack when dropped or walked.
pub const MAX_DEPTH: usize = 256;
/// Values copied into and out of the memo (PUT, GET), beyond which a file is refused: each
/// copies, so a few hundred bytes of GETs could otherwise build an exponentially large value.
const MAX_COPIED: usize = 1 << 22;

/// A value on the stack with its size in values and its nesting depth.
struct Item {
    v: Value,
    nodes: usize,
    depth: usize,
}

impl Item {
    fn leaf(v: Value) -> Self {
        Self {
            v,
            nodes: 1,
            depth: 0,
        }
    }
}

/// A container of `items`: its size and depth from theirs.
fn container(items: Vec<Item>, make: impl FnOnce(Vec<Value>) -> Value) -> Result<Item> {
    let nodes = 1 + items.iter().map(|i| i.nodes).sum::<usize>();
    let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        bail!("pickle: values nest deeper than {MAX_DEPTH} levels (a malformed file)");
    }
    Ok(Item {
        v: make(items.into_iter().map(|i| i.v).collect()),
        nodes,
        depth,
    })
}

/// The kind of a value, for messages (a value itself may be huge).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::BigInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(..) => "global",
        Value::Reduce(..) => "call",
        Value::Build(..) => "object",
        Value::PersistentId(_) => "persistent id",
        Value::Mark => "mark",
    }
}

struct Machine {
    stack: Vec<Item>,
    memo: std::collections::HashMap<u64, Item>,
    copied: usize,
}

impl Machine {
    fn pop(&mut self) -> Result<Item> {
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    /// The values above the topmost mark, the mark removed.
    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let at = self
            .stack
            .iter()
            .rposition(|i| i.v == Value::Mark)
            .ok_or_else(|| anyhow!("pickle: no mark on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Adds `items` to the container on top (a list, or a dict's key/value pairs), growing
    /// its size and depth.
    fn add_to_top(&mut self, items: Vec<Item>) -> Result<()> {
        let top = self
            .stack
            .last_mut()
            .ok_or_else(|| anyhow!("pickle stack underflow"))?;
        top.nodes += items.iter().map(|i| i.nodes).sum::<usize>();
        top.depth = top
            .depth
            .max(1 + items.iter().map(|i| i.depth).max().unwrap_or(0));
        if top.depth > MAX_DEPTH {
            bail!("pickle: values nest deeper than {MAX_DEPTH} levels (a malformed file)");
        }
        let mut values = items.into_iter().map(|i| i.v);
        // Python 3 pickles an OrderedDict as OrderedDict() and then SETITEMS onto it.
        if let Value::Reduce(callable, _) = &top.v {
            if **callable == Value::Global("collections".into(), "OrderedDict".into()) {
                top.v = Value::Dict(Vec::new());
            }
        }
        match &mut top.v {
            Value::List(l) => l.extend(values),
            Value::Dict(d) => {
                while let Some(k) = values.next() {
                    let v = values
                        .next()
                        .ok_or_else(|| anyhow!("pickle: a dict key without its value"))?;
                    d.push((k, v));
                }
            }
            other => bail!("pickle: cannot add items to a {}", kind(other)),
        }
        Ok(())
    }

    fn memo_get(&mut self, id: u64) -> Result<Item> {
        let item = self
            .memo
            .get(&id)
            .ok_or_else(|| anyhow!("pickle: memo {id} was never stored"))?;
        self.copied += item.nodes;
        if self.copied > MAX_COPIED {
            bail!("pickle: the memo copies more than {MAX_COPIED} values (a malformed file)");
        }
        Ok(Item {
            v: item.v.clone(),
            nodes: item.nodes,
            depth: item.depth,
        })
    }

    fn memo_put(&mut self, id: u64) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| anyhow!("pickle stack underflow"))?;
        let item = Item {
            v: top.v.clone(),
            nodes: top.nodes,
            depth: top.depth,
        };
        self.copied += item.nodes;
        if self.copied > MAX_COPIED {
            bail!("pickle: the memo copies more than {MAX_COPIED} values (a malformed file)");
        }
        self.memo.insert(id, item);
        Ok(())
    }
}

/// Reads one pickle (up to its STOP) from the front of `r`, which then holds the rest.
pub fn load(r: &mut &[u8]) -> Result<Value> {
    let mut m = Machine {
        stack: Vec::new(),
        memo: Default::default(),
        copied: 0,
    };
    loop {
        let op = take(r, 1)?[0];
        let leaf = |v| Ok(Item::leaf(v));
        let item: Result<Item> = match op {
            0x80 => {
                take(r, 1)?;
                continue;
            }
            0x95 => {
                take(r, 8)?; // FRAME: a length hint
                continue;
            }
            b'.' => return Ok(m.pop()?.v),
            b'(' => leaf(Value::Mark),
            b'N' => leaf(Value::None),
            0x88 => leaf(Value::Bool(true)),
            0x89 => leaf(Value::Bool(false)),
            b'K' => leaf(Value::Int(le_uint(r, 1)? as i64)),
            b'M' => leaf(Value::Int(le_uint(r, 2)? as i64)),
            b'J' => leaf(Value::Int(le_uint(r, 4)? as u32 as i32 as i64)),
            0x8a => {
                let n = le_uint(r, 1)? as usize;
                leaf(long(r, n)?)
            }
            b'G' => leaf(Value::Float(f64::from_be_bytes(
                take(r, 8)?.try_into().expect("8 bytes"),
            ))),
            b'U' | 0x8c => {
                let n = le_uint(r, 1)? as usize;
                leaf(Value::Str(
                    String::from_utf8_lossy(&take(r, n)?).into_owned(),
                ))
            }
            b'T' | b'X' => {
                let n = le_uint(r, 4)? as usize;
                leaf(Value::Str(
                    String::from_utf8_lossy(&take(r, n)?).into_owned(),
                ))
            }
            b'c' => {
                let module = line(r)?;
                leaf(Value::Global(module, line(r)?))
            }
            b'}' => leaf(Value::Dict(Vec::new())),
            b']' => leaf(Value::List(Vec::new())),
            b')' => leaf(Value::Tuple(Vec::new())),
            b'd' => {
                let items = m.pop_mark()?;
                m.stack.push(Item::leaf(Value::Dict(Vec::new())));
                m.add_to_top(items)?;
                continue;
            }
            b'l' => container(m.pop_mark()?, Value::List),
            b't' => container(m.pop_mark()?, Value::Tuple),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = m
                    .stack
                    .len()
                    .checked_sub(n)
                    .ok_or_else(|| anyhow!("pickle stack underflow"))?;
                container(m.stack.split_off(at), Value::Tuple)
            }
            b'a' => {
                let v = m.pop()?;
                m.add_to_top(vec![v])?;
                continue;
            }
            b'e' | b'u' => {
                let items = m.pop_mark()?;
                m.add_to_top(items)?;
                continue;
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.add_to_top(vec![k, v])?;
                continue;
            }
            b'q' => {
                let id = le_uint(r, 1)?;
                m.memo_put(id)?;
                continue;
            }
            b'r' => {
                let id = le_uint(r, 4)?;
                m.memo_put(id)?;
                continue;
            }
            0x94 => {
                let id = m.memo.len() as u64;
                m.memo_put(id)?;
                continue;
            }
            b'h' => {
                let id = le_uint(r, 1)?;
                m.memo_get(id)
            }
            b'j' => {
                let id = le_uint(r, 4)?;
                m.memo_get(id)
            }
            b'Q' => {
                let id = m.pop()?;
                container(vec![id], |mut v| Value::PersistentId(Box::new(v.remove(0))))
            }
            b'R' | 0x81 | b'b' => {
                let second = m.pop()?;
                let first = m.pop()?;
                container(vec![first, second], |mut v| {
                    let (b, a) = (v.pop().expect("two"), v.pop().expect("two"));
                    match op {
                        b'b' => Value::Build(Box::new(a), Box::new(b)),
                        _ => Value::Reduce(Box::new(a), Box::new(b)),
                    }
                })
            }
            other => bail!("pickle opcode 0x{other:02x} is not supported"),
        };
        m.stack.push(item?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_all(bytes: &[u8]) -> Result<Value> {
        load(&mut &bytes[..])
    }

    #[test]
    fn python_3s_ordered_dict_becomes_a_dict() {
        // pickle.dumps(OrderedDict([("a", 1), ("b", 2)]), protocol=2)
        let b = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03K\x02u.";
        let want = Value::Dict(vec![
            (Value::Str("a".into()), Value::Int(1)),
            (Value::Str("b".into()), Value::Int(2)),
        ]);
        assert_eq!(load_all(b).unwrap(), want);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let n = MAX_DEPTH + 10;
        let mut b = b"\x80\x02".to_vec();
        b.extend(std::iter::repeat_n(b'(', n));
        b.extend(std::iter::repeat_n(b't', n));
        b.push(b'.');
        let e = load_all(&b).unwrap_err().to_string();
        assert!(e.contains("nest deeper"), "{e}");
        // One-element tuples nest without marks.
        let mut b = b"\x80\x02N".to_vec();
        b.extend(std::iter::repeat_n(0x85u8, n));
        b.push(b'.');
        assert!(load_all(&b).is_err());
    }

    #[test]
    fn a_memo_bomb_is_refused_not_an_out_of_memory_abort() {
        // Each round doubles the value: 40 rounds would be 2^40 values from 240 bytes.
        let mut b = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            b.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        b.push(b'.');
        let e = load_all(&b).unwrap_err().to_string();
        assert!(e.contains("memo copies"), "{e}");
    }

    #[test]
    fn a_length_past_the_end_and_unknown_opcodes_are_errors() {
        assert!(load_all(b"\x80\x02X\xff\xff\xff\x7f").is_err());
        let e = load_all(b"\x80\x02\xfe.").unwrap_err().to_string();
        assert!(e.contains("0xfe"), "{e}");
    }
}
