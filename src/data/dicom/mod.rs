//! DICOM images decoded as pydicom 3.0 decodes them, to one gray image (frame 0 of a
//! multi-frame object).
//!
//! The pipeline is pydicom's: `pixel_array` (unused bits ignored, signed values sign-extended
//! from Bits Stored, YBR_FULL and YBR_FULL_422 converted to RGB: with pydicom's formula for
//! uncompressed and RLE data, by the decoder for JPEG and JPEG 2000), then
//! for PALETTE COLOR `apply_color_lut` (plain and segmented palettes) and for colour the
//! BT.601 luma that magsd uses everywhere, and for monochrome `apply_modality_lut` (Modality
//! LUT Sequence, else Rescale Slope/Intercept) and `apply_voi_lut` (the first VOI LUT, else
//! the first window with its VOI LUT Function). Enhanced multi-frame objects carry the rescale
//! and the window of each frame in the Per-frame or Shared Functional Groups: frame 0's are used
//! (per-frame first), taking the place of top-level ones. The output range of the last step
//! that ran (VOI LUT: 0..2^bits-1; window, rescale or nothing: the range the stored bits can
//! hold, rescaled; Modality LUT alone: 0..2^bits-1) is mapped linearly to 0..255 when it is at
//! most 8 bits deep and to 0..65535 otherwise. MONOCHROME1 is inverted.
//!
//! `tests/decode_dicom.rs` compares this, file by file, with pydicom itself on pydicom's own
//! test files (`scripts/pydicom_reference.py`).
mod frame;
mod lut;
mod precheck;

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::gray::{DecodeLimits, GrayImage, Pixels, SourceInfo, check_size, luma8};
use crate::error::{Error, Result};
use frame::Frame;
use lut::Window;

/// What magsd decodes, named in every refusal of a compressed transfer syntax.
pub const SUPPORTED_ENCODINGS: &str = "uncompressed (implicit/explicit VR, little/big endian), deflated, RLE lossless, \
     JPEG baseline and extended with 8-bit samples, JPEG lossless and JPEG 2000 (lossless and lossy)";

/// The one message for pixel data that magsd has no decoder for (`what`: the transfer
/// syntax, or the kind of stream inside a supported one).
fn no_decoder(path: &Path, uid: &str, name: &str, what: &str) -> Error {
    Error::bad_file(
        path,
        format!(
            "DICOM pixel data in transfer syntax {uid} ({name}) cannot be decoded: magsd has no decoder for {what}. \
             Supported: {SUPPORTED_ENCODINGS}. Convert the file with e.g. `gdcmconv --raw` or `dcmdjpeg`"
        ),
    )
}

/// The Image Pixel module of the file, checked.
pub(super) struct Header {
    pub rows: usize,
    pub cols: usize,
    pub spp: usize,
    pub bits_allocated: u32,
    pub bits_stored: u32,
    pub signed: bool,
    pub photometric: String,
    pub planar: bool,
    pub frames: usize,
}

/// Every element's claimed length checked against the bytes left in the file (from "DICM"),
/// before dicom-rs is given the file (it allocates what a header claims).
pub(super) fn check_header_lengths(path: &Path, bytes: &[u8], max_pixels: u64) -> Result<()> {
    precheck::check_lengths(bytes, max_pixels).map_err(|e| Error::bad_file(path, format!("corrupt DICOM file: {e}")))
}

pub(super) fn decode_dicom(path: &Path, bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage> {
    check_header_lengths(path, bytes, limits.max_pixels)?;
    let obj = dicom_object::OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| Error::bad_file(path, format!("corrupt or truncated DICOM: {e}")))?;
    let ts = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let ts_name = transfer_syntax_name(&ts);
    let h = header(path, &obj, limits)?;
    let pixel_data = obj.element_opt(tags::PIXEL_DATA).ok().flatten();
    if pixel_data.is_none() {
        return Err(Error::bad_file(path, "DICOM file has no Pixel Data (7FE0,0010)"));
    }
    let supported = frame::NATIVE.contains(&ts.as_str())
        || frame::JPEG.contains(&ts.as_str())
        || frame::JPEG_2000.contains(&ts.as_str())
        || ts == frame::RLE;
    if !supported {
        return Err(no_decoder(path, &ts, &ts_name, "it"));
    }
    let frame = frame::decode_first_frame(&obj, &h, &ts).map_err(|e| match e {
        frame::FrameError::NoDecoder(what) => no_decoder(path, &ts, &ts_name, what),
        frame::FrameError::Bad(e) => Error::bad_file(path, format!("cannot decode DICOM pixel data ({ts_name}): {e}")),
    })?;

    let mut notes = vec![format!("transfer syntax {ts} ({ts_name})")];
    if h.frames > 1 {
        notes.push(format!("multi-frame object ({} frames): frame 1 used", h.frames));
    }
    let big_endian = ts == "1.2.840.10008.1.2.2";
    let pixels = if h.photometric == "PALETTE COLOR" {
        palette_gray(&obj, &h, &frame, big_endian, &mut notes)
    } else if frame.spp == 3 {
        colour_gray(&h, &frame, &mut notes)
    } else {
        monochrome_gray(&obj, &h, &frame, &mut notes)
    }
    .map_err(|e| Error::bad_file(path, format!("cannot convert DICOM pixel data: {e}")))?;
    Ok(GrayImage {
        width: h.cols,
        height: h.rows,
        pixels,
        source: SourceInfo {
            format: "DICOM".into(),
            color: h.photometric.clone(),
            bits: h.bits_stored,
            notes,
            warnings: Vec::new(),
        },
    })
}

fn transfer_syntax_name(uid: &str) -> String {
    use dicom_transfer_syntax_registry::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn int(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<u64> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok())
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string())
}

/// The first value of a decimal string, if present.
fn first_number(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<std::result::Result<f64, String>> {
    text(obj, tag).map(|s| {
        let first = s.split('\\').next().unwrap_or("").trim().to_string();
        first.parse::<f64>().map_err(|_| first)
    })
}

/// Reads and checks the attributes that dicom-rs or the pixel loops would otherwise trip on.
fn header(path: &Path, obj: &InMemDicomObject, limits: &DecodeLimits) -> Result<Header> {
    let bad = |m: String| Error::bad_file(path, format!("invalid DICOM header: {m}"));
    let rows = int(obj, tags::ROWS).ok_or_else(|| Error::bad_file(path, "DICOM file has no Rows (0028,0010): not an image"))?;
    let cols =
        int(obj, tags::COLUMNS).ok_or_else(|| Error::bad_file(path, "DICOM file has no Columns (0028,0011): not an image"))?;
    check_size(path, cols, rows, limits)?;
    let alloc = int(obj, tags::BITS_ALLOCATED).ok_or_else(|| bad("no Bits Allocated (0028,0100)".into()))?;
    if ![1, 8, 16, 32].contains(&alloc) {
        return Err(bad(format!("Bits Allocated (0028,0100) is {alloc}; magsd reads 1, 8, 16 or 32")));
    }
    let stored = int(obj, tags::BITS_STORED).unwrap_or(alloc);
    if stored == 0 || stored > alloc {
        return Err(bad(format!("Bits Stored (0028,0101) is {stored}; it must be 1 to Bits Allocated ({alloc})")));
    }
    // PS3.3 C.7.6.3.1: High Bit is one less than Bits Stored; the samples are the low bits.
    if let Some(high) = int(obj, tags::HIGH_BIT)
        && high + 1 != stored
    {
        return Err(bad(format!("High Bit (0028,0102) is {high}; with Bits Stored {stored} it must be {}", stored - 1)));
    }
    let representation = int(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0);
    if representation > 1 {
        return Err(bad(format!("Pixel Representation (0028,0103) is {representation}; it must be 0 or 1")));
    }
    let spp = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let expected = match photometric.as_str() {
        "MONOCHROME1" | "MONOCHROME2" | "PALETTE COLOR" | "" => 1,
        "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_ICT" | "YBR_RCT" | "YBR_PARTIAL_420" | "YBR_PARTIAL_422" => 3,
        other => return Err(bad(format!("unsupported Photometric Interpretation (0028,0004) '{other}'"))),
    };
    if spp != expected {
        return Err(bad(format!(
            "Samples per Pixel (0028,0002) is {spp}, but Photometric Interpretation '{photometric}' has {expected}"
        )));
    }
    if alloc == 1 && spp != 1 {
        return Err(bad("1-bit pixel data must have one sample per pixel".into()));
    }
    for (tag, name) in [(tags::RESCALE_SLOPE, "Rescale Slope (0028,1053)"), (tags::RESCALE_INTERCEPT, "Rescale Intercept (0028,1052)")] {
        match first_number(obj, tag) {
            Some(Ok(v)) if v.is_finite() && (v != 0.0 || tag != tags::RESCALE_SLOPE) => {}
            Some(Ok(v)) if v.is_finite() => return Err(bad(format!("{name} is {v}; every pixel would become the same value"))),
            Some(Ok(v)) => return Err(bad(format!("{name} is {v}, not a finite number"))),
            Some(Err(s)) => return Err(bad(format!("{name} '{s}' is not a number"))),
            None => {}
        }
    }
    let frames = text(obj, tags::NUMBER_OF_FRAMES).and_then(|s| s.parse::<u64>().ok()).unwrap_or(1).max(1);
    Ok(Header {
        rows: rows as usize,
        cols: cols as usize,
        spp: spp as usize,
        bits_allocated: alloc as u32,
        bits_stored: stored as u32,
        signed: representation == 1,
        photometric,
        planar: int(obj, tags::PLANAR_CONFIGURATION) == Some(1),
        frames: frames.min(usize::MAX as u64) as usize,
    })
}

/// 0.299 R + 0.587 G + 0.114 B: for 8-bit samples in OpenCV's fixed point (as for PNG and
/// JPEG files), for deeper ones in floating point, scaled from 0..2^bits-1 to 0..65535.
fn luma(rgb: impl Iterator<Item = [i64; 3]>, bits: u32, n: usize) -> Pixels {
    if bits <= 8 {
        let c = |v: i64| v.clamp(0, 255) as u8;
        Pixels::U8(rgb.map(|[r, g, b]| luma8(c(r), c(g), c(b))).collect())
    } else {
        let top = 2f64.powi(bits as i32) - 1.0;
        let mut out = Vec::with_capacity(n);
        out.extend(rgb.map(|[r, g, b]| {
            let y = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
            (y * 65535.0 / top + 0.5).floor().clamp(0.0, 65535.0) as u16
        }));
        Pixels::U16(out)
    }
}

const LUMA_NOTE: &str = "colour converted to gray: Y = 0.299 R + 0.587 G + 0.114 B (BT.601)";

fn palette_gray(
    obj: &InMemDicomObject,
    h: &Header,
    f: &Frame,
    big_endian: bool,
    notes: &mut Vec<String>,
) -> std::result::Result<Pixels, String> {
    let pal = lut::palette(obj, big_endian)?;
    let d = pal.tables[0].desc;
    notes.push(format!(
        "palette colour LUT applied ({}{} entries of {} bits, first mapped value {})",
        if pal.segmented { "segmented, " } else { "" },
        d.entries,
        pal.bits,
        d.first
    ));
    notes.push(LUMA_NOTE.into());
    let n = h.rows * h.cols;
    let mut rgb = Vec::with_capacity(n);
    for i in 0..n {
        let [r, g, b] = pal.rgb(f.value(i, 0, h.bits_stored, h.signed))?;
        rgb.push([r as i64, g as i64, b as i64]);
    }
    Ok(luma(rgb.into_iter(), pal.bits, n))
}

/// pydicom's `_convert_YBR_FULL_to_RGB`, in float32 as numpy computes it.
fn ybr_full_to_rgb([y, cb, cr]: [i64; 3]) -> [i64; 3] {
    let (y, cb, cr) = (y as f32, cb as f32 - 128.0, cr as f32 - 128.0);
    let g_cb = (-0.114f64 * 1.772 / 0.587) as f32;
    let g_cr = (-0.299f64 * 1.402 / 0.587) as f32;
    let px = |v: f32| (v + 0.5).floor().clamp(0.0, 255.0) as i64;
    [px(y + cr * 1.402f32), px(y + cb * g_cb + cr * g_cr), px(y + cb * 1.772f32)]
}

fn colour_gray(h: &Header, f: &Frame, notes: &mut Vec<String>) -> std::result::Result<Pixels, String> {
    let ybr = matches!(f.photometric.as_str(), "YBR_FULL" | "YBR_FULL_422");
    if ybr && f.bits_allocated != 8 {
        return Err(format!("{} with {}-bit samples: pydicom converts YBR to RGB for 8-bit samples only", f.photometric, f.bits_allocated));
    }
    if ybr {
        notes.push(format!("{} converted to RGB (PS3.3 C.7.6.3.1.2, as pydicom converts it)", f.photometric));
    } else if f.photometric != h.photometric {
        notes.push(format!("{} converted to {} by the decoder", h.photometric, f.photometric));
    }
    notes.push(LUMA_NOTE.into());
    let bits = if f.bits_allocated == 8 { 8 } else { h.bits_stored };
    let n = h.rows * h.cols;
    let px = (0..n).map(|i| {
        let v = [0, 1, 2].map(|c| f.value(i, c, h.bits_stored, h.signed));
        if ybr { ybr_full_to_rgb(v) } else { v }
    });
    Ok(luma(px, bits, n))
}

/// Frame 0's item of a functional group macro: Per-frame first, else Shared.
fn functional_group(obj: &InMemDicomObject, group: dicom_core::Tag) -> Option<(&InMemDicomObject, &'static str)> {
    for (seq, name) in [
        (tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, "Per-frame"),
        (tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, "Shared"),
    ] {
        let item = obj.element(seq).ok().and_then(|e| e.items()).and_then(|i| i.first());
        if let Some(g) = item.and_then(|i| i.element(group).ok()).and_then(|e| e.items()).and_then(|i| i.first()) {
            return Some((g, name));
        }
    }
    None
}

fn monochrome_gray(obj: &InMemDicomObject, h: &Header, f: &Frame, notes: &mut Vec<String>) -> std::result::Result<Pixels, String> {
    let number = |o: &InMemDicomObject, tag| -> std::result::Result<Option<f64>, String> {
        match first_number(o, tag) {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(s)) => Err(format!("'{s}' is not a number")),
            None => Ok(None),
        }
    };
    // Rescale and window: frame 0's functional groups, else the top level.
    let mut rescale = match (number(obj, tags::RESCALE_SLOPE)?, number(obj, tags::RESCALE_INTERCEPT)?) {
        (Some(s), Some(i)) => Some((s, i, "")),
        _ => None,
    };
    if let Some((g, from)) = functional_group(obj, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
        && let (Some(s), Some(i)) = (number(g, tags::RESCALE_SLOPE)?, number(g, tags::RESCALE_INTERCEPT)?)
    {
        if !(s.is_finite() && s != 0.0 && i.is_finite()) {
            return Err(format!("the functional groups' rescale (slope {s}, intercept {i}) is not usable"));
        }
        rescale = Some((s, i, from));
    }
    let mut function = text(obj, tags::VOILUT_FUNCTION);
    let mut window = match (number(obj, tags::WINDOW_CENTER)?, number(obj, tags::WINDOW_WIDTH)?) {
        (Some(c), Some(w)) => Some((c, w, "")),
        _ => None,
    };
    if let Some((g, from)) = functional_group(obj, tags::FRAME_VOILUT_SEQUENCE)
        && let (Some(c), Some(w)) = (number(g, tags::WINDOW_CENTER)?, number(g, tags::WINDOW_WIDTH)?)
    {
        window = Some((c, w, from));
        if let Some(fun) = text(g, tags::VOILUT_FUNCTION) {
            function = Some(fun);
        }
    }
    let fg_note = |from: &str| if from.is_empty() { String::new() } else { format!(" (from the {from} Functional Groups, frame 1)") };

    let bits = h.bits_stored;
    let (mut lo, mut hi) = if h.signed {
        (-(2f64.powi(bits as i32 - 1)), 2f64.powi(bits as i32 - 1) - 1.0)
    } else {
        (0.0, 2f64.powi(bits as i32) - 1.0)
    };
    let mut depth = bits;
    let modality = lut::modality_lut(obj)?;
    if let Some(t) = &modality {
        notes.push(format!(
            "Modality LUT Sequence applied ({} entries of {} bits, first mapped value {})",
            t.desc.entries, t.desc.bits, t.desc.first
        ));
        (lo, hi, depth) = (0.0, 2f64.powi(t.desc.bits as i32) - 1.0, t.desc.bits);
    } else if let Some((s, i, from)) = rescale {
        notes.push(format!("modality rescale: slope {s}, intercept {i}{}", fg_note(from)));
        (lo, hi) = (lo * s + i, hi * s + i);
    }
    // pydicom's windowing output range: the Modality LUT's or the stored range, rescaled.
    let (y_min, y_max) = {
        let (a, b) = match &modality {
            Some(t) => (0.0, 2f64.powi(t.desc.bits as i32) - 1.0),
            None if h.signed => (-(2f64.powi(bits as i32 - 1)), 2f64.powi(bits as i32 - 1) - 1.0),
            None => (0.0, 2f64.powi(bits as i32) - 1.0),
        };
        match rescale {
            Some((s, i, _)) => (a * s + i, b * s + i),
            None => (a, b),
        }
    };
    let voi = lut::voi_lut(obj)?;
    let win = match (&voi, window) {
        (Some(t), _) => {
            let count = obj.element(tags::VOILUT_SEQUENCE).ok().and_then(|e| e.items()).map_or(1, |i| i.len());
            notes.push(format!(
                "VOI LUT Sequence applied (LUT 1 of {count}: {} entries of {} bits, first mapped value {})",
                t.desc.entries, t.desc.bits, t.desc.first
            ));
            (lo, hi, depth) = (0.0, 2f64.powi(t.desc.bits as i32) - 1.0, t.desc.bits);
            None
        }
        (None, Some((c, w, from))) => {
            let fun = function.as_deref().unwrap_or("LINEAR");
            let win = Window::new(c, w, fun)?;
            let count = text(obj, tags::WINDOW_CENTER).map_or(1, |s| s.split('\\').count());
            let which = if from.is_empty() && count > 1 { format!(", the first of {count}") } else { String::new() };
            notes.push(format!("VOI window applied: center {c}, width {w}, {}{which}{}", fun.trim(), fg_note(from)));
            Some(win)
        }
        (None, None) => {
            notes.push("no VOI LUT or window in the file".into());
            None
        }
    };
    let top: f64 = if depth <= 8 { 255.0 } else { 65535.0 };
    notes.push(format!("output range {lo}..{hi} mapped linearly to 0..{top}"));
    let invert = h.photometric == "MONOCHROME1";
    if invert {
        notes.push("MONOCHROME1 inverted to MONOCHROME2".into());
    }
    let span = (hi - lo).max(f64::EPSILON);
    let n = h.rows * h.cols;
    let mut out: Vec<u16> = Vec::with_capacity(n);
    for i in 0..n {
        let v = f.value(i, 0, bits, h.signed) as f64;
        let m = match (&modality, rescale) {
            (Some(t), _) => t.get(v)? as f64,
            (None, Some((s, i, _))) => v * s + i,
            (None, None) => v,
        };
        let o = match (&voi, &win) {
            (Some(t), _) => t.get(m)? as f64,
            (None, Some(w)) => w.apply(m, y_min, y_max),
            (None, None) => m,
        };
        let g = ((o - lo) / span * top + 0.5).floor().clamp(0.0, top);
        out.push(if invert { (top - g) as u16 } else { g as u16 });
    }
    Ok(if top == 255.0 { Pixels::U8(out.into_iter().map(|v| v as u8).collect()) } else { Pixels::U16(out) })
}
