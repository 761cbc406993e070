//! Reading an inference request of the Open Inference Protocol: its JSON, and with the binary
//! tensor extension the raw input data after it (`Inference-Header-Content-Length` long JSON,
//! then each binary input's `binary_data_size` bytes in input order), checked against the one
//! `[N, 1, S, S]` FP32 input of the model as Triton checks requests: the element count of the
//! shape in 64 bits, exactly one of `data` and `binary_data_size`, no bytes left over; JSON data
//! flat or rectangular, never more values collected than the shape holds.
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{INFER_HEADER, INPUT, unsupported_extension};
use crate::serve::error::{ApiError, ErrorKind};
use crate::serve::state::AppState;

#[derive(Debug, Deserialize)]
struct InferRequest<'a> {
    id: Option<String>,
    #[serde(borrow)]
    inputs: Vec<RequestInput<'a>>,
    outputs: Option<Vec<RequestOutput>>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RequestInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    /// Kept as text and read by [`read_data`], which bounds what it collects.
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A boolean parameter (absent: `None`).
fn bool_param(params: &Map<String, Value>, key: &str, of: &str) -> Result<Option<bool>, ApiError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad_request(format!("{of}: parameter '{key}' must be true or false, not {other}"))),
    }
}

/// Refuses the parameters of extensions this server does not have.
fn refuse_other_extensions(params: &Map<String, Value>, of: &str, model: &str) -> Result<(), ApiError> {
    for (key, extension) in [("shared_memory_region", "system_shared_memory"), ("classification", "classification")] {
        if params.contains_key(key) {
            return Err(unsupported_extension(extension, &format!("{of}: parameter '{key}'"), model));
        }
    }
    Ok(())
}

/// The request's JSON and the binary data after it, split at `Inference-Header-Content-Length`.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok())
        && !enc.trim().eq_ignore_ascii_case("identity")
    {
        return Err(ApiError::bad_request(format!("Content-Encoding '{enc}' is not supported here: send the request uncompressed")));
    }
    let Some(v) = headers.get(INFER_HEADER) else {
        return Ok((body, &[]));
    };
    let n: usize = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("Inference-Header-Content-Length is not a byte count: {v:?}")))?;
    if n > body.len() {
        return Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length is {n}, longer than the whole body ({} bytes)",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

/// The number of values a shape holds, or why it holds none that fit.
fn element_count(shape: &[i64]) -> Result<u64, ApiError> {
    shape.iter().try_fold(1u64, |acc, &d| {
        let d = u64::try_from(d).map_err(|_| ApiError::bad_request(format!("input '{INPUT}' has shape {shape:?}: a dimension is negative")))?;
        acc.checked_mul(d)
            .ok_or_else(|| ApiError::bad_request(format!("input '{INPUT}' has shape {shape:?}, whose element count does not fit in 64 bits")))
    })
}

/// Numbers of a JSON `data` array, row-major, flat or nested; nested arrays must be
/// rectangular (every array at one depth as long as the others, every number at one depth),
/// and at most `cap` numbers are collected.
struct Collect {
    values: Vec<f32>,
    cap: usize,
    /// Length of the arrays at each depth, as first seen.
    lengths: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
}

struct Level<'c> {
    c: &'c mut Collect,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Level<'_> {
    fn number<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if *self.c.leaf_depth.get_or_insert(self.depth) != self.depth {
            return Err(E::custom("ragged: numbers at different depths of the nested arrays"));
        }
        let x = v as f32;
        if !x.is_finite() {
            return Err(E::custom(format!("{v} is not a finite FP32 number")));
        }
        if self.c.values.len() == self.c.cap {
            return Err(E::custom(format!("more than the {} values the shape holds", self.c.cap)));
        }
        self.c.values.push(x);
        Ok(())
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers (FP32 data holds numbers), in flat or nested arrays")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        let mut n = 0usize;
        while seq.next_element_seed(Level { c: &mut *self.c, depth: depth + 1 })?.is_some() {
            n += 1;
        }
        if self.c.lengths.len() <= depth {
            self.c.lengths.resize(depth + 1, None);
        }
        match self.c.lengths[depth] {
            None => self.c.lengths[depth] = Some(n),
            Some(m) if m != n => {
                return Err(serde::de::Error::custom(format!("ragged: arrays of {m} and of {n} values at depth {depth}")));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }
}

/// The FP32 values of a JSON `data` field: exactly `count` of them.
fn read_data(raw: &RawValue, count: usize) -> Result<Vec<f32>, ApiError> {
    let mut c = Collect { values: Vec::with_capacity(count), cap: count, lengths: Vec::new(), leaf_depth: None };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Level { c: &mut c, depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| ApiError::bad_request(format!("input '{INPUT}' data: {e}")))?;
    if c.leaf_depth == Some(0) {
        return Err(ApiError::bad_request(format!("input '{INPUT}' data: a single number, not an array")));
    }
    if c.values.len() != count {
        return Err(ApiError::bad_request(format!("input '{INPUT}' has {} values; its shape needs {count}", c.values.len())));
    }
    Ok(c.values)
}

/// The FP32 values of a binary input: `count` little-endian floats.
fn read_binary(bytes: &[u8], count: usize) -> Result<Vec<f32>, ApiError> {
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    debug_assert_eq!(values.len(), count);
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ApiError::bad_request(format!("input '{INPUT}' binary data: value {i} is {}, not a finite number", values[i])));
    }
    Ok(values)
}

/// A parsed and checked inference request.
pub(super) struct Parsed {
    pub id: Option<String>,
    /// One `S × S` plane per image.
    pub planes: Vec<super::super::batcher::Input>,
    /// Outputs to send, each as binary or JSON.
    pub outputs: Vec<(&'static str, bool)>,
}

/// Reads an inference request: its JSON, and the binary input data after it.
pub(super) fn parse(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, ApiError> {
    let (json_part, mut binary) = split_body(headers, body)?;
    let req: InferRequest = serde_json::from_slice(json_part)
        .map_err(|e| ApiError::bad_request(format!("not an inference request of the Open Inference Protocol: {e}")))?;
    let model = &state.card.name;
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::bad_request(format!("expected exactly one input tensor ('{INPUT}'), got {}", req.inputs.len())));
    };
    if input.name != INPUT {
        return Err(ApiError::bad_request(format!("unknown input '{}': this model's input is '{INPUT}'", input.name)));
    }
    if input.datatype != "FP32" {
        return Err(ApiError::bad_request(format!("input '{INPUT}' has datatype {}; this model takes FP32", input.datatype)));
    }
    refuse_other_extensions(&input.parameters, &format!("input '{INPUT}'"), model)?;
    let size = state.card.input_size;
    let s = size as i64;
    let total = element_count(&input.shape)?;
    let n = match input.shape.as_slice() {
        &[n, 1, h, w] if n >= 1 && h == s && w == s => n as u64,
        other => {
            return Err(ApiError::bad_request(format!(
                "input '{INPUT}' has shape {other:?}; this model takes [N, 1, {s}, {s}] (N ≥ 1), preprocessed as GET /api/v1/model describes"
            )));
        }
    };
    let max_parts = state.limits.max_parts;
    if n > max_parts as u64 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TOO_LARGE,
            format!("{n} images in one request; this server takes at most {max_parts} (--max-parts)"),
        ));
    }
    let count = total as usize; // ≤ max_parts × S², which fits
    let binary_size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!("input '{INPUT}': parameter 'binary_data_size' must be a byte count, not {v}"))
        })?),
    };
    let values = match (&input.data, binary_size) {
        (Some(raw), None) => read_data(raw, count)?,
        (None, Some(b)) => {
            if !headers.contains_key(INFER_HEADER) {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT}' is binary (binary_data_size) but the request has no Inference-Header-Content-Length header giving the length of its JSON"
                )));
            }
            let need = count as u64 * 4;
            if b != need {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT}' has binary_data_size {b}; shape {:?} of FP32 needs {need} bytes",
                    input.shape
                )));
            }
            if (binary.len() as u64) < b {
                return Err(ApiError::bad_request(format!(
                    "input '{INPUT}' needs {b} bytes of binary data after the JSON; the body has {}",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(b as usize);
            binary = rest;
            read_binary(mine, count)?
        }
        (has_data, _) => {
            let set = if has_data.is_some() { "set both 'data' and 'binary_data_size'" } else { "set neither" };
            return Err(ApiError::bad_request(format!(
                "input '{INPUT}' must set exactly one of 'data' and 'parameters.binary_data_size' (the binary tensor extension), but {set}"
            )));
        }
    };
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!("{} bytes of binary data after the inputs' data belong to no input", binary.len())));
    }
    let default_binary = bool_param(&req.parameters, "binary_data_output", "the request")?.unwrap_or(false);
    let offered = super::offered_outputs(state);
    let outputs = match &req.outputs {
        Some(o) if !o.is_empty() => o
            .iter()
            .map(|o| {
                let Some(&name) = offered.iter().find(|n| **n == o.name) else {
                    let list: Vec<String> = offered.iter().map(|n| format!("'{n}'")).collect();
                    return Err(ApiError::bad_request(format!("unknown output '{}': this model has {}", o.name, list.join(", "))));
                };
                let of = format!("output '{name}'");
                refuse_other_extensions(&o.parameters, &of, model)?;
                Ok((name, bool_param(&o.parameters, "binary_data", &of)?.unwrap_or(default_binary)))
            })
            .collect::<Result<_, _>>()?,
        _ => offered.iter().map(|&n| (n, default_binary)).collect(),
    };
    // A preprocessed tensor has no decoded image left for the pixel screen.
    Ok(Parsed { id: req.id, planes: values.chunks(size * size).map(|p| (p.to_vec(), None)).collect(), outputs })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn data(text: &str, count: usize) -> Result<Vec<f32>, String> {
        read_data(&serde_json::from_str::<Box<RawValue>>(text).unwrap(), count).map_err(|e| e.message)
    }

    #[test]
    fn data_is_flat_or_rectangular_and_exactly_as_long_as_the_shape() {
        assert_eq!(data("[1, 2.5, -3, 4]", 4).unwrap(), vec![1.0, 2.5, -3.0, 4.0]);
        assert_eq!(data("[[1, 2], [3, 4]]", 4).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(data("[[[1], [2]], [[3], [4]]]", 4).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(data("[[1, 2, 3], [4]]", 4).unwrap_err().contains("ragged: arrays of 3 and of 1"));
        assert!(data("[[1, 2], 3, 4]", 4).unwrap_err().contains("ragged: numbers at different depths"));
        assert!(data("[1, 2, 3]", 4).unwrap_err().contains("has 3 values; its shape needs 4"));
        assert!(data("[1, 2, 3, 4, 5]", 4).unwrap_err().contains("more than the 4 values"));
        assert!(data("[1, \"a\", 3, 4]", 4).unwrap_err().contains("invalid type: string"));
        assert!(data("[1, 1e39, 3, 4]", 4).unwrap_err().contains("not a finite FP32 number"));
        assert!(data("7", 1).unwrap_err().contains("not an array"));
    }

    #[test]
    fn shapes_whose_element_count_overflows_are_refused() {
        assert_eq!(element_count(&[2, 1, 3, 3]).unwrap(), 18);
        assert!(element_count(&[(1 << 54) + 1, 1, 96, 96]).unwrap_err().message.contains("does not fit in 64 bits"));
        assert!(element_count(&[-1, 1, 4, 4]).unwrap_err().message.contains("negative"));
    }

    #[test]
    fn the_json_part_ends_where_the_header_says() {
        let mut h = HeaderMap::new();
        assert_eq!(split_body(&h, b"{}abc").unwrap(), (&b"{}abc"[..], &b""[..]));
        h.insert(INFER_HEADER, HeaderValue::from_static("2"));
        assert_eq!(split_body(&h, b"{}abc").unwrap(), (&b"{}"[..], &b"abc"[..]));
        h.insert(INFER_HEADER, HeaderValue::from_static("9"));
        assert!(split_body(&h, b"{}abc").unwrap_err().message.contains("longer than the whole body"));
        h.insert(INFER_HEADER, HeaderValue::from_static("-1"));
        assert!(split_body(&h, b"{}abc").unwrap_err().message.contains("not a byte count"));
    }
}
