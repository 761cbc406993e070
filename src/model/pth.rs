//! Reads PyTorch `torch.save` checkpoints of state dicts (`.pth`/`.pt`, the zip format of
//! torch ≥ 1.6) without Python: a zip of `data.pkl` (a pickle of an `OrderedDict` whose values
//! are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls) and one file
//! per storage under `data/`.
//!
//! libtorch's C++ loaders cannot read these (they expect TorchScript archives), hence this small
//! pickle interpreter. It understands the opcodes `torch.save` emits for dictionaries of tensors,
//! also nested one level (`{"state_dict": {...}}` or `{"model": {...}}`), and nothing more: any
//! other object becomes an opaque value that is reported, never executed.
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, IoContext, Result};

/// A pickled value. Payloads we never inspect are kept so that `Debug` can show them in errors.
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum V {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String, String),
    Storage { kind: Kind, key: String },
    Tensor { kind: Kind, key: String, offset: i64, size: Vec<i64>, stride: Vec<i64> },
    /// Something we do not interpret (its type name).
    Object(String),
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

struct Pickle<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Pickle<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("pickle ends early")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> std::result::Result<String, String> {
        let start = self.pos;
        while self.u8()? != b'\n' {}
        Ok(String::from_utf8_lossy(&self.data[start..self.pos - 1]).into_owned())
    }
    fn string(&mut self, n: usize) -> std::result::Result<V, String> {
        Ok(V::Str(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }
}

fn ints(v: &V) -> std::result::Result<Vec<i64>, String> {
    match v {
        V::Tuple(items) | V::List(items) => items
            .iter()
            .map(|x| match x {
                V::Int(i) => Ok(*i),
                other => Err(format!("expected an integer in a tensor shape, found {other:?}")),
            })
            .collect(),
        other => Err(format!("expected a tensor shape, found {other:?}")),
    }
}

/// Runs the pickle and returns the object it builds.
fn unpickle(data: &[u8]) -> std::result::Result<V, String> {
    let mut p = Pickle { data, pos: 0 };
    let mut stack: Vec<V> = Vec::new();
    let mut memo: HashMap<u32, V> = HashMap::new();
    let pop = |stack: &mut Vec<V>| stack.pop().ok_or_else(|| "pickle stack underflow".to_string());
    let pop_mark = |stack: &mut Vec<V>| -> std::result::Result<Vec<V>, String> {
        let at = stack.iter().rposition(|v| matches!(v, V::Mark)).ok_or("pickle MARK missing")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = p.u8()?;
        match op {
            0x80 => {
                p.u8()?; // PROTO
            }
            0x95 => {
                p.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(V::Mark),
            b'}' => stack.push(V::Dict(Vec::new())),
            b']' => stack.push(V::List(Vec::new())),
            b')' => stack.push(V::Tuple(Vec::new())),
            b'N' => stack.push(V::None),
            0x88 => stack.push(V::Bool(true)),
            0x89 => stack.push(V::Bool(false)),
            b'J' => stack.push(V::Int(p.u32()? as i32 as i64)),
            b'K' => stack.push(V::Int(p.u8()? as i64)),
            b'M' => stack.push(V::Int(u16::from_le_bytes(p.take(2)?.try_into().unwrap()) as i64)),
            0x8a => {
                let n = p.u8()? as usize;
                let b = p.take(n)?;
                if n > 8 {
                    return Err("integer too large".into());
                }
                let mut buf = if b.last().is_some_and(|x| x & 0x80 != 0) { [0xFF; 8] } else { [0; 8] };
                buf[..n].copy_from_slice(b);
                stack.push(V::Int(i64::from_le_bytes(buf)));
            }
            b'G' => stack.push(V::Float(f64::from_be_bytes(p.take(8)?.try_into().unwrap()))),
            b'X' => {
                let n = p.u32()? as usize;
                stack.push(p.string(n)?)
            }
            0x8c => {
                let n = p.u8()? as usize;
                stack.push(p.string(n)?)
            }
            0x8d => {
                let n = u64::from_le_bytes(p.take(8)?.try_into().unwrap()) as usize;
                stack.push(p.string(n)?)
            }
            b'C' => {
                let n = p.u8()? as usize;
                stack.push(V::Bytes(p.take(n)?.to_vec()))
            }
            b'B' => {
                let n = p.u32()? as usize;
                stack.push(V::Bytes(p.take(n)?.to_vec()))
            }
            b'c' => {
                let module = p.line()?;
                let name = p.line()?;
                stack.push(V::Global(module, name));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (V::Str(m), V::Str(n)) => stack.push(V::Global(m, n)),
                    _ => return Err("STACK_GLOBAL needs two strings".into()),
                }
            }
            b'q' => {
                let k = p.u8()? as u32;
                memo.insert(k, stack.last().cloned().ok_or("BINPUT on empty stack")?);
            }
            b'r' => {
                let k = p.u32()?;
                memo.insert(k, stack.last().cloned().ok_or("LONG_BINPUT on empty stack")?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or("MEMOIZE on empty stack")?);
            }
            b'h' => {
                let k = p.u8()? as u32;
                stack.push(memo.get(&k).cloned().ok_or("BINGET of unknown memo")?);
            }
            b'j' => {
                let k = p.u32()?;
                stack.push(memo.get(&k).cloned().ok_or("LONG_BINGET of unknown memo")?);
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(V::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let pairs = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                stack.push(V::Dict(pairs));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                if let Some(V::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                if let Some(V::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                if let Some(V::Dict(d)) = stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if let Some(V::Dict(d)) = stack.last_mut() {
                    d.extend(items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())));
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                let V::Tuple(t) = pid else { return Err("persistent id is not a tuple".into()) };
                match t.as_slice() {
                    [V::Str(tag), V::Global(_, ty), V::Str(key), ..] if tag == "storage" => {
                        let kind = storage_kind(ty).ok_or_else(|| format!("unsupported storage type {ty}"))?;
                        stack.push(V::Storage { kind, key: key.clone() });
                    }
                    other => return Err(format!("unsupported persistent id {other:?}")),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = pop(&mut stack)?;
                let V::Tuple(args) = args else { return Err("REDUCE arguments are not a tuple".into()) };
                let out = match &func {
                    V::Global(m, n) if m == "torch._utils" && (n == "_rebuild_tensor_v2" || n == "_rebuild_tensor") => {
                        match args.as_slice() {
                            [V::Storage { kind, key }, V::Int(offset), size, stride, ..] => V::Tensor {
                                kind: *kind,
                                key: key.clone(),
                                offset: *offset,
                                size: ints(size)?,
                                stride: ints(stride)?,
                            },
                            _ => return Err("unexpected arguments to _rebuild_tensor_v2".into()),
                        }
                    }
                    V::Global(m, n) if m == "torch._utils" && n == "_rebuild_parameter" => {
                        args.into_iter().next().ok_or("empty _rebuild_parameter")?
                    }
                    V::Global(m, n) if m == "collections" && n == "OrderedDict" => V::Dict(Vec::new()),
                    V::Global(m, n) => V::Object(format!("{m}.{n}")),
                    _ => V::Object("?".into()),
                };
                stack.push(out);
            }
            0x81 => {
                let _args = pop(&mut stack)?;
                let cls = pop(&mut stack)?;
                stack.push(V::Object(format!("{cls:?}")));
            }
            b'b' => {
                pop(&mut stack)?; // BUILD: state (e.g. a state dict's `_metadata`) is ignored
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", p.pos - 1)),
        }
    }
}

/// Reads the named tensors of a `torch.save`d state dict (CPU, contiguous).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::bad_file(path, reason);
    crate::files::check_regular(path, crate::files::MAX_MODEL_BYTES, "checkpoint")?;
    let file = std::fs::File::open(path).at(path)?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        bad(format!(
            "not a torch.save zip archive ({e}); checkpoints from torch < 1.6 must be re-saved \
             with a newer torch or converted to .safetensors"
        ))
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| bad("zip archive has no data.pkl: not a torch.save checkpoint".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| bad(format!("missing entry {name}: {e}")))?;
        let mut buf = Vec::new();
        (&mut f).take(crate::files::MAX_MODEL_BYTES + 1).read_to_end(&mut buf).at(path)?;
        if buf.len() as u64 > crate::files::MAX_MODEL_BYTES {
            return Err(bad(format!("entry {name} inflates to more than {} bytes", crate::files::MAX_MODEL_BYTES)));
        }
        Ok(buf)
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder"))
        && order.trim_ascii() != b"little"
    {
        return Err(bad("big-endian checkpoints are not supported".into()));
    }
    let root = unpickle(&read_entry(&pkl_name)?).map_err(|e| bad(format!("cannot read data.pkl: {e}")))?;
    let entries = match root {
        V::Dict(d) => {
            let nested = d.iter().find_map(|(k, v)| match (k, v) {
                (V::Str(k), V::Dict(inner)) if k == "state_dict" || k == "model" => Some(inner.clone()),
                _ => None,
            });
            nested.unwrap_or(d)
        }
        other => return Err(bad(format!("checkpoint holds {other:?}, not a state dict"))),
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in entries {
        let (V::Str(name), V::Tensor { kind, key, offset, size, stride }) = (k, v) else { continue };
        if !storages.contains_key(&key) {
            let bytes = read_entry(&format!("{prefix}data/{key}"))?;
            storages.insert(key.clone(), bytes);
        }
        let bytes = &storages[&key];
        let elem = kind.elt_size_in_bytes();
        let numel = (bytes.len() / elem) as i64;
        let needed = offset + size.iter().zip(&stride).map(|(s, st)| (s - 1).max(0) * st).sum::<i64>() + 1;
        if size.contains(&0) {
            out.push((name, Tensor::zeros(&size, (kind, tch::Device::Cpu))));
            continue;
        }
        if needed > numel {
            return Err(bad(format!("tensor {name} reads past the end of its storage")));
        }
        let storage = Tensor::from_data_size(bytes, &[numel], kind);
        let t = storage.as_strided(&size, &stride, Some(offset)).contiguous();
        out.push((name, t));
    }
    Ok(out)
}
