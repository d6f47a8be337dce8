//! A small pickle machine for the opcodes `torch.save` wrote before PyTorch 1.6 (protocol
//! 2, Python 2 strings among them, which candle's reader does not know). It only builds
//! values: globals stay names and calls stay (callable, args) pairs, so a file can run
//! nothing. Memoised values are copies, as in candle's reader: torch's files never mutate a
//! container after memoising and then fetch it again.

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

struct Machine {
    stack: Vec<Value>,
    memo: std::collections::HashMap<u64, Value>,
}

impl Machine {
    fn pop(&mut self) -> Result<Value> {
        self.stack
            .pop()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    /// The values above the topmost mark, the mark removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or_else(|| anyhow!("pickle: no mark on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn extend_top(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => l.extend(items),
            other => bail!("pickle: append to a {other:?}"),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("pickle: SETITEMS with an odd number of values");
        }
        let mut it = items.into_iter();
        let pairs: Vec<(Value, Value)> =
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect();
        match self.top()? {
            Value::Dict(d) => d.extend(pairs),
            other => bail!("pickle: set items of a {other:?}"),
        }
        Ok(())
    }

    fn memo_get(&self, id: u64) -> Result<Value> {
        self.memo
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("pickle: memo {id} was never stored"))
    }

    fn memo_put(&mut self, id: u64) -> Result<()> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| anyhow!("pickle stack underflow"))?;
        self.memo.insert(id, v);
        Ok(())
    }
}

/// Reads one pickle (up to its STOP) from the front of `r`, which then holds the rest.
pub fn load(r: &mut &[u8]) -> Result<Value> {
    let mut m = Machine {
        stack: Vec::new(),
        memo: Default::default(),
    };
    loop {
        let op = take(r, 1)?[0];
        let v = match op {
            0x80 => {
                take(r, 1)?;
                continue;
            }
            0x95 => {
                take(r, 8)?; // FRAME: a length hint
                continue;
            }
            b'.' => return m.pop(),
            b'(' => Value::Mark,
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'K' => Value::Int(le_uint(r, 1)? as i64),
            b'M' => Value::Int(le_uint(r, 2)? as i64),
            b'J' => Value::Int(le_uint(r, 4)? as u32 as i32 as i64),
            0x8a => {
                let n = le_uint(r, 1)? as usize;
                long(r, n)?
            }
            b'G' => Value::Float(f64::from_be_bytes(take(r, 8)?.try_into().expect("8 bytes"))),
            b'U' | 0x8c => {
                let n = le_uint(r, 1)? as usize;
                Value::Str(String::from_utf8_lossy(&take(r, n)?).into_owned())
            }
            b'T' | b'X' => {
                let n = le_uint(r, 4)? as usize;
                Value::Str(String::from_utf8_lossy(&take(r, n)?).into_owned())
            }
            b'c' => {
                let module = line(r)?;
                Value::Global(module, line(r)?)
            }
            b'}' => Value::Dict(Vec::new()),
            b']' => Value::List(Vec::new()),
            b')' => Value::Tuple(Vec::new()),
            b'd' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Dict(Vec::new()));
                m.set_items(items)?;
                continue;
            }
            b'l' => Value::List(m.pop_mark()?),
            b't' => Value::Tuple(m.pop_mark()?),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = m
                    .stack
                    .len()
                    .checked_sub(n)
                    .ok_or_else(|| anyhow!("pickle stack underflow"))?;
                Value::Tuple(m.stack.split_off(at))
            }
            b'a' => {
                let v = m.pop()?;
                m.extend_top(vec![v])?;
                continue;
            }
            b'e' => {
                let items = m.pop_mark()?;
                m.extend_top(items)?;
                continue;
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.set_items(vec![k, v])?;
                continue;
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.set_items(items)?;
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
            b'h' => m.memo_get(le_uint(r, 1)?)?,
            b'j' => m.memo_get(le_uint(r, 4)?)?,
            b'Q' => Value::PersistentId(Box::new(m.pop()?)),
            b'R' | 0x81 => {
                let args = m.pop()?;
                let callable = m.pop()?;
                Value::Reduce(Box::new(callable), Box::new(args))
            }
            b'b' => {
                let state = m.pop()?;
                let obj = m.pop()?;
                Value::Build(Box::new(obj), Box::new(state))
            }
            other => bail!("pickle opcode 0x{other:02x} is not supported"),
        };
        m.stack.push(v);
    }
}
