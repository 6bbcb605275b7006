//! A data-only reader for Python pickles, NumPy arrays included.
//!
//! FlintstonesSV / PororoSV ship `following_cache3.pkl`, `labels.pkl` and `labels_bg.pkl`,
//! dicts of lists, NumPy arrays and NumPy scalars. A pickle is a program for a stack machine
//! whose `GLOBAL` + `REDUCE` opcodes call arbitrary Python callables. This reader runs the
//! stack machine over *data*: a global is recorded as its `module.name`, a reduce as the pair
//! (callable, arguments), a `BUILD` as (object, state). Nothing is ever called. After parsing,
//! the few shapes NumPy and the standard library use for plain data are recognised and turned
//! into values (`numpy.core.multiarray._reconstruct` + `BUILD` → [`NdArray`], `numpy.dtype`,
//! NumPy scalars, `_codecs.encode(str, "latin1")` → bytes, `builtins.set`); anything else stays
//! a [`Value::Global`] / [`Value::Reduce`] / [`Value::Build`] that the caller rejects as an
//! unexpected structure.
//!
//! Why hand-written: `serde-pickle` drops the NumPy dtype (its `BUILD` replaces the dtype
//! object by the dtype's state tuple, which no longer says `f8` or `i8`), and the other pickle
//! crates are PyTorch-checkpoint scrapers. Protocols 0–5 are covered, tested against pickles
//! written by CPython for every protocol (`tests/fixtures/pickle_golden`).

use std::path::Path;

use num_bigint::BigInt;
use storygpt_core::{Error, Result};

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A larger int.
    BigInt(BigInt),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes` / `bytearray`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A `set` / `frozenset`.
    Set(Vec<Value>),
    /// A NumPy array or scalar (a scalar has an empty shape).
    NdArray(NdArray),
    /// A reference to a Python global that was not recognised as data.
    Global {
        /// Module, e.g. `os`.
        module: String,
        /// Name, e.g. `system`.
        name: String,
    },
    /// A call that was not recognised as data: never executed.
    Reduce {
        /// What would be called.
        callable: Box<Value>,
        /// The arguments it would get.
        args: Vec<Value>,
    },
    /// An object built from state that was not recognised as data.
    Build {
        /// The object.
        object: Box<Value>,
        /// Its `__setstate__` argument.
        state: Box<Value>,
    },
}

/// A NumPy array as pickled: dtype string, shape, raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// NumPy's `dtype.str`: `<f8`, `|b1`, `<U3`, ...
    pub dtype: String,
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Whether the bytes are in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The raw element bytes.
    pub data: Vec<u8>,
    /// A NumPy scalar (`np.float64(2.5)`) rather than an array (a 0-d array also has an
    /// empty shape).
    pub scalar: bool,
}

impl NdArray {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as `f64`, in C (row-major) order, for boolean, integer and float dtypes.
    pub fn to_f64(&self) -> std::result::Result<Vec<f64>, String> {
        let (endian, kind, size) = parse_dtype(&self.dtype)?;
        let n = self.len();
        if self.data.len() != n * size {
            return Err(format!(
                "array of dtype {} and shape {:?} needs {} bytes, the pickle holds {}",
                self.dtype,
                self.shape,
                n * size,
                self.data.len()
            ));
        }
        let big = endian == '>';
        let mut out = Vec::with_capacity(n);
        for chunk in self.data.chunks_exact(size) {
            let mut b = [0u8; 8];
            if big {
                for (i, &x) in chunk.iter().rev().enumerate() {
                    b[i] = x;
                }
            } else {
                b[..size].copy_from_slice(chunk);
            }
            let v = match (kind, size) {
                ('b', 1) => f64::from(u8::from(b[0] != 0)),
                ('u', 1) => f64::from(b[0]),
                ('i', 1) => f64::from(b[0] as i8),
                ('u', 2) => f64::from(u16::from_le_bytes([b[0], b[1]])),
                ('i', 2) => f64::from(i16::from_le_bytes([b[0], b[1]])),
                ('u', 4) => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ('i', 4) => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ('u', 8) => u64::from_le_bytes(b) as f64,
                ('i', 8) => i64::from_le_bytes(b) as f64,
                ('f', 4) => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ('f', 8) => f64::from_le_bytes(b),
                _ => return Err(format!("unsupported array dtype {}", self.dtype)),
            };
            out.push(v);
        }
        Ok(self.to_c_order(out))
    }

    /// The elements of a `U` (unicode) array as strings, in C order.
    pub fn to_strings(&self) -> std::result::Result<Vec<String>, String> {
        let (endian, kind, size) = parse_dtype(&self.dtype)?;
        if kind != 'U' {
            return Err(format!("dtype {} is not a unicode array", self.dtype));
        }
        let item = size * 4;
        if self.data.len() != self.len() * item {
            return Err(format!(
                "unicode array of dtype {} and shape {:?} has {} bytes",
                self.dtype,
                self.shape,
                self.data.len()
            ));
        }
        let mut out = Vec::with_capacity(self.len());
        for chunk in self.data.chunks_exact(item.max(1)).take(self.len()) {
            let mut s = String::new();
            for cp in chunk.chunks_exact(4) {
                let c = if endian == '>' {
                    u32::from_be_bytes([cp[0], cp[1], cp[2], cp[3]])
                } else {
                    u32::from_le_bytes([cp[0], cp[1], cp[2], cp[3]])
                };
                if c == 0 {
                    break;
                }
                s.push(char::from_u32(c).ok_or_else(|| format!("invalid code point {c:#x}"))?);
            }
            out.push(s);
        }
        Ok(self.to_c_order(out))
    }

    fn to_c_order<T: Clone>(&self, flat: Vec<T>) -> Vec<T> {
        if !self.fortran_order || self.shape.len() < 2 {
            return flat;
        }
        // Fortran order: the first index varies fastest.
        let n = flat.len();
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let mut f = 0;
            let mut stride = 1;
            for (d, &i) in idx.iter().enumerate() {
                f += i * stride;
                stride *= self.shape[d];
            }
            out.push(flat[f].clone());
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

/// Splits a dtype string into (byte order, kind, item size).
fn parse_dtype(dtype: &str) -> std::result::Result<(char, char, usize), String> {
    let mut chars = dtype.chars();
    let (endian, kind) = match (chars.next(), chars.next()) {
        (Some(e @ ('<' | '>' | '|' | '=')), Some(k)) => (e, k),
        _ => return Err(format!("unsupported dtype string `{dtype}`")),
    };
    let size: usize = chars
        .as_str()
        .parse()
        .map_err(|_| format!("unsupported dtype string `{dtype}`"))?;
    let endian = if endian == '=' { '<' } else { endian };
    Ok((endian, kind, size))
}

impl Value {
    /// A short description of the value's type, for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(_) => "list".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::NdArray(a) => format!("numpy array (dtype {}, shape {:?})", a.dtype, a.shape),
            Value::Global { module, name } => format!("global {module}.{name}"),
            Value::Reduce { callable, .. } => format!("call of {}", callable.kind()),
            Value::Build { object, .. } => format!("object built from {}", object.kind()),
        }
    }

    /// The value as a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries of a `dict`.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Looks up a `str` key in a `dict`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A list, tuple or 1-d string array as strings.
    pub fn as_str_list(&self) -> Option<Vec<String>> {
        match self {
            Value::List(items) | Value::Tuple(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect(),
            Value::NdArray(a) if a.shape.len() == 1 => a.to_strings().ok(),
            _ => None,
        }
    }

    /// A numeric vector: a list / tuple of bools, ints and floats, or a 1-d NumPy array.
    pub fn as_f64_vec(&self) -> Option<Vec<f64>> {
        match self {
            Value::List(items) | Value::Tuple(items) => items.iter().map(Value::as_f64).collect(),
            Value::NdArray(a) if a.shape.len() == 1 => a.to_f64().ok(),
            _ => None,
        }
    }

    /// A number: bool, int, float, or a NumPy scalar.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::NdArray(a) if a.shape.is_empty() => a.to_f64().ok()?.first().copied(),
            _ => None,
        }
    }
}

/// Reads and decodes a pickle file. Errors name the file.
pub fn read_pickle(path: impl AsRef<Path>) -> Result<Value> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes)
        .map_err(|reason| Error::data_file(path, format!("not a readable pickle: {reason}")))
}

/// Decodes pickle bytes (see the module docs: nothing is executed).
pub fn parse(bytes: &[u8]) -> std::result::Result<Value, String> {
    let mut m = Machine {
        input: bytes,
        pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    let root = m.run()?;
    m.materialize(root, 0)
}

/// A node of the object graph. Children are arena indices, so memoised objects keep their
/// identity while later opcodes (`APPENDS`, `SETITEMS`, `BUILD`) fill them in.
#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(BigInt),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Global(String, String),
    Reduce(usize, usize),
    Build(usize, usize),
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Obj(usize),
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    arena: Vec<Node>,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u64, usize>,
}

const MAX_DEPTH: usize = 512;

impl Machine<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        if n > self.input.len() - self.pos {
            return Err(format!(
                "truncated: needs {n} byte(s) at offset {}, {} left",
                self.pos,
                self.input.len() - self.pos
            ));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> std::result::Result<u64, String> {
        let b = self.take(n)?;
        let mut v = 0u64;
        for (i, &x) in b.iter().enumerate() {
            v |= u64::from(x) << (8 * i);
        }
        Ok(v)
    }

    fn line_bytes(&mut self) -> std::result::Result<&[u8], String> {
        let start = self.pos;
        let end = self.input[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated: unterminated line at offset {start}"))?;
        self.pos += end + 1;
        Ok(&self.input[start..start + end])
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        Ok(String::from_utf8_lossy(self.line_bytes()?).into_owned())
    }

    fn push(&mut self, node: Node) {
        self.arena.push(node);
        self.stack.push(Slot::Obj(self.arena.len() - 1));
    }

    fn pop(&mut self) -> std::result::Result<usize, String> {
        match self.stack.pop() {
            Some(Slot::Obj(i)) => Ok(i),
            Some(Slot::Mark) => Err(format!("unexpected mark at offset {}", self.pos)),
            None => Err(format!("stack underflow at offset {}", self.pos)),
        }
    }

    fn top(&self) -> std::result::Result<usize, String> {
        match self.stack.last() {
            Some(Slot::Obj(i)) => Ok(*i),
            _ => Err(format!("no object on the stack at offset {}", self.pos)),
        }
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<usize>, String> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Slot::Obj(i)) => items.push(i),
                Some(Slot::Mark) => break,
                None => return Err(format!("no mark on the stack at offset {}", self.pos)),
            }
        }
        items.reverse();
        Ok(items)
    }

    fn memo_get(&self, key: u64) -> std::result::Result<usize, String> {
        self.memo
            .get(&key)
            .copied()
            .ok_or_else(|| format!("memo key {key} was never stored"))
    }

    fn text_str(&self, i: usize) -> std::result::Result<String, String> {
        match &self.arena[i] {
            Node::Str(s) => Ok(s.clone()),
            other => Err(format!("STACK_GLOBAL expects strings, found {other:?}")),
        }
    }

    fn run(&mut self) -> std::result::Result<usize, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.le(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack.pop();
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(Slot::Obj(t));
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = self.le(4)? as u32 as i32;
                    self.push(Node::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.le(2)?;
                    self.push(Node::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.le(4)? as usize
                    };
                    let b = self.take(n)?.to_vec();
                    let v = BigInt::from_signed_bytes_le(&b);
                    self.push(int_node(v));
                }
                b'I' => {
                    let l = self.line()?;
                    let node = match l.as_str() {
                        "01" => Node::Bool(true),
                        "00" => Node::Bool(false),
                        s => int_node(s.parse().map_err(|_| format!("bad INT `{s}`"))?),
                    };
                    self.push(node);
                }
                b'L' => {
                    let l = self.line()?;
                    let s = l.trim_end_matches('L');
                    self.push(int_node(s.parse().map_err(|_| format!("bad LONG `{l}`"))?));
                }
                b'F' => {
                    let l = self.line()?;
                    let v: f64 = l.parse().map_err(|_| format!("bad FLOAT `{l}`"))?;
                    self.push(Node::Float(v));
                }
                b'G' => {
                    let v = f64::from_bits(u64::from_be_bytes(
                        self.take(8)?.try_into().expect("8 bytes"),
                    ));
                    self.push(Node::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.le(4)? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.le(8)? as usize,
                    };
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b)
                        .map_err(|e| format!("invalid UTF-8 in a str: {e}"))?
                        .to_string();
                    self.push(Node::Str(s));
                }
                b'V' => {
                    // raw-unicode-escape: bytes are latin-1, code points above 0xff are escaped.
                    let l: String = self.line_bytes()?.iter().map(|&b| char::from(b)).collect();
                    self.push(Node::Str(raw_unicode_unescape(&l)?));
                }
                b'S' => {
                    let l = self.line()?;
                    self.push(Node::Str(unquote(&l)?));
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.le(4)? as usize
                    } else {
                        self.u8()? as usize
                    };
                    // Python 2 `str`: bytes, decoded as latin-1 as Python 3 does by default.
                    let s = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                    self.push(Node::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.le(4)? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.le(8)? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Bytes(b));
                }
                0x98 => {} // READONLY_BUFFER: no-op on data
                b']' => self.push(Node::List(Vec::new())),
                b')' => self.push(Node::Tuple(Vec::new())),
                b'}' => self.push(Node::Dict(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(&items)?;
                    self.push(Node::Dict(pairs));
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.extend(l, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.extend(l, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, pairs(&items)?)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let key = l.parse().map_err(|_| format!("bad PUT key `{l}`"))?;
                    let t = self.top()?;
                    self.memo.insert(key, t);
                }
                b'q' | b'r' => {
                    let key = if op == b'q' {
                        u64::from(self.u8()?)
                    } else {
                        self.le(4)?
                    };
                    let t = self.top()?;
                    self.memo.insert(key, t);
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    let t = self.top()?;
                    self.memo.insert(key, t);
                }
                b'g' => {
                    let l = self.line()?;
                    let key = l.parse().map_err(|_| format!("bad GET key `{l}`"))?;
                    let i = self.memo_get(key)?;
                    self.stack.push(Slot::Obj(i));
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        u64::from(self.u8()?)
                    } else {
                        self.le(4)?
                    };
                    let i = self.memo_get(key)?;
                    self.stack.push(Slot::Obj(i));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Node::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (self.text_str(module)?, self.text_str(name)?);
                    self.push(Node::Global(module, name));
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(Node::Reduce(callable, args));
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push(Node::Reduce(class, args));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push(Node::Reduce(class, args));
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    // Build in place so memo references see the built object.
                    let old = std::mem::replace(&mut self.arena[obj], Node::None);
                    self.arena.push(old);
                    let moved = self.arena.len() - 1;
                    self.arena[obj] = Node::Build(moved, state);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let class = items.remove(0);
                    self.arena.push(Node::Tuple(items));
                    let args = self.arena.len() - 1;
                    self.push(Node::Reduce(class, args));
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let items = self.pop_mark()?;
                    self.arena.push(Node::Global(module, name));
                    let class = self.arena.len() - 1;
                    self.arena.push(Node::Tuple(items));
                    let args = self.arena.len() - 1;
                    self.push(Node::Reduce(class, args));
                }
                b'P' | b'Q' => return Err("persistent ids are not data (PyTorch storage?)".into()),
                0x82..=0x84 => return Err("extension registry codes are not supported".into()),
                0x97 => return Err("out-of-band buffers are not supported".into()),
                other => {
                    return Err(format!(
                        "unknown opcode {other:#04x} at offset {}",
                        self.pos - 1
                    ));
                }
            }
        }
    }

    fn extend(&mut self, target: usize, items: Vec<usize>) -> std::result::Result<(), String> {
        match &mut self.arena[target] {
            Node::List(l) | Node::Set(l) => {
                l.extend(items);
                Ok(())
            }
            other => Err(format!("APPEND to a non-list {other:?}")),
        }
    }

    fn set_items(
        &mut self,
        target: usize,
        items: Vec<(usize, usize)>,
    ) -> std::result::Result<(), String> {
        match &mut self.arena[target] {
            Node::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            other => Err(format!("SETITEM on a non-dict {other:?}")),
        }
    }

    fn materialize(&self, i: usize, depth: usize) -> std::result::Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "nesting deeper than {MAX_DEPTH} (a self-referencing object?)"
            ));
        }
        let m = |j: usize| self.materialize(j, depth + 1);
        let all = |v: &[usize]| {
            v.iter()
                .map(|&j| m(j))
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        Ok(match &self.arena[i] {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(v) => Value::Int(*v),
            Node::BigInt(v) => Value::BigInt(v.clone()),
            Node::Float(v) => Value::Float(*v),
            Node::Str(s) => Value::Str(s.clone()),
            Node::Bytes(b) => Value::Bytes(b.clone()),
            Node::List(v) => Value::List(all(v)?),
            Node::Tuple(v) => Value::Tuple(all(v)?),
            Node::Set(v) => Value::Set(all(v)?),
            Node::Dict(v) => Value::Dict(
                v.iter()
                    .map(|&(k, x)| Ok((m(k)?, m(x)?)))
                    .collect::<std::result::Result<_, String>>()?,
            ),
            Node::Global(module, name) => Value::Global {
                module: module.clone(),
                name: name.clone(),
            },
            Node::Reduce(c, a) => {
                let callable = m(*c)?;
                let args = match m(*a)? {
                    Value::Tuple(v) => v,
                    other => vec![other],
                };
                recognise_reduce(callable, args)?
            }
            Node::Build(o, s) => recognise_build(m(*o)?, m(*s)?)?,
        })
    }
}

fn int_node(v: BigInt) -> Node {
    match i64::try_from(&v) {
        Ok(x) => Node::Int(x),
        Err(_) => Node::BigInt(v),
    }
}

fn pairs(items: &[usize]) -> std::result::Result<Vec<(usize, usize)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
}

fn is_global(v: &Value, modules: &[&str], want: &str) -> bool {
    matches!(v, Value::Global { module, name } if name == want && modules.contains(&module.as_str()))
}

const BUILTINS: &[&str] = &["builtins", "__builtin__"];
const MULTIARRAY: &[&str] = &["numpy.core.multiarray", "numpy._core.multiarray"];
const NUMERIC: &[&str] = &["numpy.core.numeric", "numpy._core.numeric"];

/// Turns the data-only calls into values; leaves every other call as an inert [`Value::Reduce`].
fn recognise_reduce(callable: Value, args: Vec<Value>) -> std::result::Result<Value, String> {
    // bytes in protocols 0-2: _codecs.encode("...", "latin1")
    if is_global(&callable, &["_codecs"], "encode")
        && let [Value::Str(s), Value::Str(enc)] = args.as_slice()
        && (enc == "latin1" || enc == "latin-1")
    {
        let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
        return bytes
            .map(Value::Bytes)
            .ok_or_else(|| "latin-1 bytes with a code point above 255".to_string());
    }
    if is_global(&callable, BUILTINS, "bytes") && args.is_empty() {
        return Ok(Value::Bytes(Vec::new()));
    }
    if is_global(&callable, BUILTINS, "bytearray") {
        match args.as_slice() {
            [] => return Ok(Value::Bytes(Vec::new())),
            [Value::Bytes(b)] => return Ok(Value::Bytes(b.clone())),
            _ => {}
        }
    }
    if is_global(&callable, BUILTINS, "set") || is_global(&callable, BUILTINS, "frozenset") {
        match args.as_slice() {
            [] => return Ok(Value::Set(Vec::new())),
            [Value::List(v)] => return Ok(Value::Set(v.clone())),
            _ => {}
        }
    }
    // A NumPy scalar: scalar(dtype, bytes). (numpy.dtype(...) stays a reduce until BUILD gives
    // it its byte order.)
    if is_global(&callable, MULTIARRAY, "scalar")
        && let [dtype, Value::Bytes(data)] = args.as_slice()
    {
        return Ok(Value::NdArray(NdArray {
            dtype: dtype_string(dtype)?,
            shape: Vec::new(),
            fortran_order: false,
            data: data.clone(),
            scalar: true,
        }));
    }
    // Protocol 5: numpy._core.numeric._frombuffer(buffer, dtype, shape, order)
    if is_global(&callable, NUMERIC, "_frombuffer")
        && let [
            Value::Bytes(data),
            dtype,
            Value::Tuple(shape),
            Value::Str(order),
        ] = args.as_slice()
    {
        return Ok(Value::NdArray(NdArray {
            dtype: dtype_string(dtype)?,
            shape: dims(shape)?,
            fortran_order: order == "F",
            data: data.clone(),
            scalar: false,
        }));
    }
    Ok(Value::Reduce {
        callable: Box::new(callable),
        args,
    })
}

fn dims(shape: &[Value]) -> std::result::Result<Vec<usize>, String> {
    shape
        .iter()
        .map(|d| match d {
            Value::Int(x) if *x >= 0 => Ok(*x as usize),
            other => Err(format!("bad array dimension {other:?}")),
        })
        .collect()
}

fn recognise_build(object: Value, state: Value) -> std::result::Result<Value, String> {
    let Value::Reduce { callable, args } = &object else {
        return Ok(inert_build(object, state));
    };
    // numpy.dtype(...) + BUILD((3, '<', ...)) → the dtype string.
    if is_global(callable, &["numpy"], "dtype")
        && let (Some(Value::Str(code)), Value::Tuple(st)) = (args.first(), &state)
    {
        let endian = st.get(1).and_then(Value::as_str).unwrap_or("|");
        return Ok(Value::Str(format!("{endian}{code}")));
    }
    // _reconstruct(ndarray, (0,), b'b') + BUILD((ver, shape, dtype, fortran, data))
    if is_global(callable, MULTIARRAY, "_reconstruct")
        && args
            .first()
            .is_some_and(|a| is_global(a, &["numpy"], "ndarray"))
        && let Value::Tuple(st) = &state
        && let [_, Value::Tuple(shape), dtype, Value::Bool(fortran), data] = st.as_slice()
    {
        let dtype = dtype_string(dtype)?;
        let Value::Bytes(data) = data else {
            return Err(format!(
                "numpy array of dtype {dtype} holds {} instead of raw bytes (an object array?)",
                data.kind()
            ));
        };
        return Ok(Value::NdArray(NdArray {
            dtype,
            shape: dims(shape)?,
            fortran_order: *fortran,
            data: data.clone(),
            scalar: false,
        }));
    }
    Ok(inert_build(object, state))
}

fn inert_build(object: Value, state: Value) -> Value {
    Value::Build {
        object: Box::new(object),
        state: Box::new(state),
    }
}

/// The dtype string of an already-recognised dtype value.
fn dtype_string(v: &Value) -> std::result::Result<String, String> {
    match v {
        Value::Str(s) => {
            // Single-byte kinds have no byte order ('|'); NumPy writes '|' in the state.
            Ok(s.clone())
        }
        other => Err(format!("expected a numpy dtype, found {}", other.kind())),
    }
}

fn raw_unicode_unescape(s: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('u') | Some('U')) {
            let n = if chars.next() == Some('u') { 4 } else { 8 };
            let hex: String = chars.by_ref().take(n).collect();
            let cp = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\u{hex}"))?;
            out.push(char::from_u32(cp).ok_or_else(|| format!("bad code point {cp:#x}"))?);
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn unquote(s: &str) -> std::result::Result<String, String> {
    let inner = s
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
        .ok_or_else(|| format!("bad STRING {s}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let b = u8::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\x{hex}"))?;
                out.push(char::from(b));
            }
            Some(other) => out.push(other),
            None => return Err("dangling backslash".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_4_dict_of_lists() {
        // pickle.dumps({"a": [1, 2], "b": "x"}, protocol=4)
        let bytes = b"\x80\x04\x95\x19\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01K\x02e\x8c\x01b\x94\x8c\x01x\x94u.";
        let v = parse(bytes).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![Value::Int(1), Value::Int(2)]))
        );
        assert_eq!(v.get("b").and_then(Value::as_str), Some("x"));
    }

    #[test]
    fn globals_are_recorded_not_called() {
        // pickle of os.system("echo hi") via __reduce__, protocol 2
        let bytes = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let v = parse(bytes).unwrap();
        match v {
            Value::Reduce { callable, args } => {
                assert_eq!(
                    *callable,
                    Value::Global {
                        module: "posix".into(),
                        name: "system".into()
                    }
                );
                assert_eq!(args, vec![Value::Str("echo hi".into())]);
            }
            other => panic!("expected an inert reduce, got {other:?}"),
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let bytes = b"\x80\x04\x95\x19\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]";
        let err = parse(bytes).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn fortran_order_is_reordered() {
        let a = NdArray {
            dtype: "<f8".into(),
            shape: vec![2, 3],
            fortran_order: true,
            // column-major storage of [[0,1,2],[3,4,5]]
            data: [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            scalar: false,
        };
        assert_eq!(a.to_f64().unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}
