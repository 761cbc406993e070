//! Decoding X-ray files (PNG, JPEG, DICOM) into one grayscale image at full precision.
//!
//! The format is detected from the file's content, never from its extension. Every failure is
//! an [`Error::BadFile`] that names the file and the reason (empty, truncated, not an image,
//! too large, unsupported DICOM encoding, ...).
//!
//! * Colour is converted to gray with ITU-R BT.601 luma, `Y = 0.299 R + 0.587 G + 0.114 B`,
//!   computed as OpenCV's `cvtColor(RGB2GRAY)` does for 8 bits (`(4899 R + 9617 G + 1868 B +
//!   8192) >> 14`) and in floating point, rounded, for 16 bits. Alpha is ignored, as
//!   `cv2.imread(..., IMREAD_GRAYSCALE)` does. Palette PNGs are expanded first.
//! * 16-bit images stay 16-bit here; [`crate::data::preprocess`] narrows them to 8 bits only
//!   for CLAHE, which the reference applies to 8-bit images.
//! * DICOM: the modality LUT (rescale slope/intercept) and the first VOI LUT or window in the
//!   file are applied; without a window, the stored bit range (`Bits Stored`, after rescale) is
//!   mapped linearly, so intensities mean the same in every image; data of at most 8 bits stays
//!   8-bit (an 8-bit DICOM gives back its stored values), deeper data fills 16 bits.
//!   MONOCHROME1 is inverted so that bone is bright. Only the first frame of a multi-frame
//!   object is read.
//!
//! Decoding never panics on a file: the DICOM header is checked first (Bits Allocated / Stored,
//! High Bit, Rows, Columns, Samples per Pixel, Photometric Interpretation, Pixel
//! Representation, the length of uncompressed pixel data, and a finite non-zero Rescale Slope),
//! and every third-party decoder runs inside `catch_unwind`, so a panic in `image` or
//! `dicom-pixeldata` becomes an [`Error::BadFile`] naming the file (a loader worker keeps going).
//! A JPEG without its end-of-image marker after the last scan (e.g. cut in half; the decoder
//! fills the missing rows with grey) decodes with a warning in [`SourceInfo::warnings`]; callers
//! decide whether to refuse it (`eval --strict`) or to use it and say so.
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// How decoding guards against hostile or absurd inputs.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest accepted width × height (default 64 megapixels, e.g. 8000×8000).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: 64_000_000 }
    }
}

/// Grayscale samples at the precision the file had.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// What was found in the file, for `magsd data inspect` and for error messages.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceInfo {
    /// "PNG", "JPEG" or "DICOM".
    pub format: String,
    /// Colour model of the stored samples ("gray", "gray+alpha", "RGB", "RGBA", "MONOCHROME1", ...).
    pub color: String,
    /// Bits per stored sample.
    pub bits: u32,
    /// Notes on conversions applied (colour to gray, rescale, window, inversion, ...).
    pub notes: Vec<String>,
    /// Signs that the pixels may not be what the file meant (e.g. a truncated JPEG).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A decoded grayscale image, row-major.
#[derive(Clone, Debug)]
pub struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Pixels,
    pub source: SourceInfo,
}

impl GrayImage {
    pub fn from_u8(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height);
        GrayImage { width, height, pixels: Pixels::U8(data), source: SourceInfo::default() }
    }

    /// Largest value the sample type can hold (255 or 65535).
    pub fn max_value(&self) -> f64 {
        match self.pixels {
            Pixels::U8(_) => 255.0,
            Pixels::U16(_) => 65535.0,
        }
    }

    /// (min, max, mean) of the samples.
    pub fn stats(&self) -> (f64, f64, f64) {
        fn go<T: Copy + Into<f64>>(v: &[T]) -> (f64, f64, f64) {
            let (mut lo, mut hi, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
            for &x in v {
                let x: f64 = x.into();
                lo = lo.min(x);
                hi = hi.max(x);
                sum += x;
            }
            (lo, hi, sum / v.len().max(1) as f64)
        }
        match &self.pixels {
            Pixels::U8(v) => go(v),
            Pixels::U16(v) => go(v),
        }
    }
}

/// The container formats we recognise by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Png,
    Jpeg,
    /// DICOM Part 10 file; the offset of the "DICM" magic (128 with a preamble, 0 without).
    Dicom(usize),
}

fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(Format::Dicom(128))
    } else if bytes.starts_with(b"DICM") {
        Some(Format::Dicom(0))
    } else {
        None
    }
}

/// Reads and decodes one image file.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<GrayImage> {
    let bytes = std::fs::read(path).at(path)?;
    decode_bytes(path, &bytes, limits)
}

/// Decodes an image held in memory; `path` is used for messages only. A panic inside a
/// decoder is caught and returned as an error naming the file.
pub fn decode_bytes(path: &Path, bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage> {
    catch_unwind(AssertUnwindSafe(|| decode_unguarded(path, bytes, limits))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        Err(Error::bad_file(path, format!("the decoder crashed on this file ({what}); the file is corrupt or unsupported")))
    })
}

fn decode_unguarded(path: &Path, bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage> {
    if bytes.is_empty() {
        return Err(Error::bad_file(path, "empty file (0 bytes)"));
    }
    match sniff(bytes) {
        Some(Format::Png) => decode_raster(path, bytes, image::ImageFormat::Png, "PNG", limits),
        Some(Format::Jpeg) => decode_raster(path, bytes, image::ImageFormat::Jpeg, "JPEG", limits),
        Some(Format::Dicom(offset)) => decode_dicom(path, &bytes[offset..], limits),
        None => {
            let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(Error::bad_file(
                path,
                format!("not a PNG, JPEG or DICOM file (first bytes: {head})"),
            ))
        }
    }
}

/// Width and height of an image from its header alone, decoding no pixels (for budgets set
/// before decoding, as `magsd serve` keeps per request). A DICOM is read up to its pixel data.
pub fn dimensions(path: &Path, bytes: &[u8]) -> Result<(u64, u64)> {
    let raster = |format| {
        image::ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map(|(w, h)| (w as u64, h as u64))
            .map_err(|e| Error::bad_file(path, format!("unreadable image header: {e}")))
    };
    match sniff(bytes) {
        Some(Format::Png) => raster(image::ImageFormat::Png),
        Some(Format::Jpeg) => raster(image::ImageFormat::Jpeg),
        Some(Format::Dicom(offset)) => {
            use dicom_dictionary_std::tags;
            let obj = dicom_object::OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .from_reader(&bytes[offset..])
                .map_err(|e| Error::bad_file(path, format!("corrupt or truncated DICOM: {e}")))?;
            let int = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok()).unwrap_or(0);
            Ok((int(tags::COLUMNS), int(tags::ROWS)))
        }
        None => Err(Error::bad_file(path, "not a PNG, JPEG or DICOM file")),
    }
}

fn check_size(path: &Path, width: u64, height: u64, limits: &DecodeLimits) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::bad_file(path, format!("image has no pixels ({width}×{height})")));
    }
    if width * height > limits.max_pixels {
        return Err(Error::bad_file(
            path,
            format!(
                "image is {width}×{height} = {} pixels, above the limit of {} (--max-pixels)",
                width * height,
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

fn decode_raster(
    path: &Path,
    bytes: &[u8],
    format: image::ImageFormat,
    name: &str,
    limits: &DecodeLimits,
) -> Result<GrayImage> {
    let bad = |e: image::ImageError| Error::bad_file(path, format!("corrupt or truncated {name}: {e}"));
    let (w, h) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(bad)?;
    check_size(path, w as u64, h as u64, limits)?;
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut img_limits = image::Limits::default();
    // Room for the largest accepted image as 16-bit RGBA plus decoder scratch.
    img_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 26));
    reader.limits(img_limits);
    let img = reader.decode().map_err(bad)?;
    let mut out = dynamic_to_gray(path, img)?;
    out.source.format = name.to_string();
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        out.source.warnings.push(
            "truncated JPEG: no end-of-image marker after the last scan; missing rows were filled with grey".into(),
        );
    }
    Ok(out)
}

/// Whether a JPEG ends its last scan: an EOI marker (FF D9) after the last SOS (FF DA). Inside
/// entropy-coded data FF is always followed by 00 or a restart marker, so neither pair occurs
/// there; an embedded EXIF thumbnail ends before the main image's scans begin.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// BT.601 luma in OpenCV's 14-bit fixed point (exact for equal channels).
fn luma8(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 4899 + g as u32 * 9617 + b as u32 * 1868 + (1 << 13)) >> 14) as u8
}

fn luma16(r: u16, g: u16, b: u16) -> u16 {
    (0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64).round().min(65535.0) as u16
}

const LUMA_NOTE: &str = "colour converted to gray: Y = 0.299 R + 0.587 G + 0.114 B (BT.601)";

fn dynamic_to_gray(path: &Path, img: image::DynamicImage) -> Result<GrayImage> {
    use image::DynamicImage as D;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut notes = Vec::new();
    let (color, bits, pixels) = match img {
        D::ImageLuma8(b) => ("gray", 8, Pixels::U8(b.into_raw())),
        D::ImageLumaA8(b) => {
            notes.push("alpha channel ignored".into());
            ("gray+alpha", 8, Pixels::U8(b.pixels().map(|p| p[0]).collect()))
        }
        D::ImageRgb8(b) => {
            notes.push(LUMA_NOTE.into());
            ("RGB", 8, Pixels::U8(b.pixels().map(|p| luma8(p[0], p[1], p[2])).collect()))
        }
        D::ImageRgba8(b) => {
            notes.push(LUMA_NOTE.into());
            notes.push("alpha channel ignored".into());
            ("RGBA", 8, Pixels::U8(b.pixels().map(|p| luma8(p[0], p[1], p[2])).collect()))
        }
        D::ImageLuma16(b) => ("gray", 16, Pixels::U16(b.into_raw())),
        D::ImageLumaA16(b) => {
            notes.push("alpha channel ignored".into());
            ("gray+alpha", 16, Pixels::U16(b.pixels().map(|p| p[0]).collect()))
        }
        D::ImageRgb16(b) => {
            notes.push(LUMA_NOTE.into());
            ("RGB", 16, Pixels::U16(b.pixels().map(|p| luma16(p[0], p[1], p[2])).collect()))
        }
        D::ImageRgba16(b) => {
            notes.push(LUMA_NOTE.into());
            notes.push("alpha channel ignored".into());
            ("RGBA", 16, Pixels::U16(b.pixels().map(|p| luma16(p[0], p[1], p[2])).collect()))
        }
        other => {
            return Err(Error::bad_file(
                path,
                format!("unsupported sample type {:?}", other.color()),
            ));
        }
    };
    Ok(GrayImage {
        width,
        height,
        pixels,
        source: SourceInfo { format: String::new(), color: color.into(), bits, notes, warnings: Vec::new() },
    })
}

fn decode_dicom(path: &Path, bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage> {
    use dicom_dictionary_std::tags;
    use dicom_pixeldata::{ConvertOptions, PixelDecoder};
    use dicom_transfer_syntax_registry::TransferSyntaxIndex;

    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::bad_file(path, format!("{what}: {e}"))
    };
    let obj = dicom_object::OpenFileOptions::new()
        .from_reader(bytes)
        .map_err(|e| bad("corrupt or truncated DICOM", &e))?;
    let ts_uid = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let int = |tag| -> Option<u64> {
        obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u64>().ok())
    };
    let text = |tag| -> Option<String> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    let rows = int(tags::ROWS).ok_or_else(|| Error::bad_file(path, "DICOM file has no Rows (0028,0010): not an image"))?;
    let cols = int(tags::COLUMNS).ok_or_else(|| Error::bad_file(path, "DICOM file has no Columns (0028,0011): not an image"))?;
    check_size(path, cols, rows, limits)?;
    let Some(pixel_data) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        return Err(Error::bad_file(path, "DICOM file has no Pixel Data (7FE0,0010)"));
    };
    let header = DicomHeader {
        bits_allocated: int(tags::BITS_ALLOCATED),
        bits_stored: int(tags::BITS_STORED),
        high_bit: int(tags::HIGH_BIT),
        samples_per_pixel: int(tags::SAMPLES_PER_PIXEL).unwrap_or(1),
        pixel_representation: int(tags::PIXEL_REPRESENTATION).unwrap_or(0),
        photometric: text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
        rescale_slope: text(tags::RESCALE_SLOPE),
        rescale_intercept: text(tags::RESCALE_INTERCEPT),
        window_width: text(tags::WINDOW_WIDTH),
    };
    let frame_bytes = header.check().map_err(|e| Error::bad_file(path, format!("invalid DICOM header: {e}")))? * rows * cols;
    // Uncompressed data must hold at least one whole frame.
    if let Some(p) = pixel_data.value().primitive() {
        let have = p.calculate_byte_len() as u64;
        if have < frame_bytes {
            return Err(Error::bad_file(
                path,
                format!("DICOM pixel data has {have} bytes, a {cols}×{rows} frame needs {frame_bytes}: truncated"),
            ));
        }
    }

    let ts_name = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(&ts_uid)
        .map(|ts| ts.name().to_string())
        .unwrap_or_else(|| "unknown".into());
    let decoded = obj.decode_pixel_data_frame(0).map_err(|e| {
        Error::bad_file(
            path,
            format!(
                "cannot decode DICOM pixel data with transfer syntax {ts_uid} ({ts_name}): {e}. \
                 Supported: uncompressed (implicit/explicit VR), deflated, RLE lossless and \
                 JPEG baseline/extended/lossless; convert others with e.g. `gdcmconv --raw`"
            ),
        )
    })?;
    let photometric = header.photometric.clone();
    let bits_stored = header.bits_stored() as u32;
    let mut notes = vec![format!("transfer syntax {ts_uid} ({ts_name})")];
    if let (Some(s), Some(i)) = (text(tags::RESCALE_SLOPE), text(tags::RESCALE_INTERCEPT)) {
        notes.push(format!("modality rescale: slope {s}, intercept {i}"));
    }
    let has_voi = match (text(tags::WINDOW_CENTER), text(tags::WINDOW_WIDTH)) {
        (Some(c), Some(w)) => {
            notes.push(format!("VOI window from file: center {c}, width {w}"));
            true
        }
        _ if obj.element_opt(tags::VOILUT_SEQUENCE).ok().flatten().is_some() => {
            notes.push("VOI LUT sequence from file applied".into());
            true
        }
        _ => false,
    };
    if photometric == "MONOCHROME1" {
        notes.push("MONOCHROME1 inverted to MONOCHROME2".into());
    }
    if int(tags::NUMBER_OF_FRAMES).unwrap_or(1) > 1 {
        notes.push("multi-frame object: first frame used".into());
    }
    let samples_per_pixel = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let mut out = if has_voi || samples_per_pixel != 1 {
        let img = decoded
            .to_dynamic_image_with_options(0, &ConvertOptions::new().force_16bit())
            .map_err(|e| bad("cannot convert DICOM pixel data", &e))?;
        dynamic_to_gray(path, img)?
    } else {
        // No VOI: modality values, then the stored bit range mapped linearly to 0..=65535.
        let values: Vec<f64> = decoded.to_vec_frame(0).map_err(|e| bad("cannot convert DICOM pixel data", &e))?;
        let num = |tag| text(tag).and_then(|v| v.split('\\').next().and_then(|x| x.trim().parse::<f64>().ok()));
        let (slope, intercept) = (num(tags::RESCALE_SLOPE).unwrap_or(1.0), num(tags::RESCALE_INTERCEPT).unwrap_or(0.0));
        let bits = bits_stored; // checked: 1..=Bits Allocated
        let signed = int(tags::PIXEL_REPRESENTATION) == Some(1);
        let (smin, smax) = if signed {
            (-(2f64.powi(bits as i32 - 1)), 2f64.powi(bits as i32 - 1) - 1.0)
        } else {
            (0.0, 2f64.powi(bits as i32) - 1.0)
        };
        let (a, b) = (slope * smin + intercept, slope * smax + intercept);
        let (lo, hi) = (a.min(b), a.max(b));
        notes.push(format!("no VOI window in file: stored range {lo}..{hi} ({bits} bits) mapped linearly"));
        let span = (hi - lo).max(f64::EPSILON);
        // 8-bit sources stay 8-bit (like an 8-bit PNG); deeper ones become 16-bit.
        let top = if bits <= 8 { 255.0 } else { 65535.0 };
        let mut px: Vec<u16> = values.iter().map(|&v| ((v - lo) / span * top).round().clamp(0.0, top) as u16).collect();
        if photometric == "MONOCHROME1" {
            px.iter_mut().for_each(|v| *v = top as u16 - *v);
        }
        let expected = (rows * cols) as usize;
        if px.len() != expected {
            return Err(Error::bad_file(path, format!("DICOM pixel data holds {} samples, expected {expected}", px.len())));
        }
        let pixels = if bits <= 8 { Pixels::U8(px.into_iter().map(|v| v as u8).collect()) } else { Pixels::U16(px) };
        GrayImage { width: cols as usize, height: rows as usize, pixels, source: SourceInfo::default() }
    };
    out.source = SourceInfo {
        format: "DICOM".into(),
        color: if photometric.is_empty() { out.source.color } else { photometric },
        bits: bits_stored,
        notes: notes.into_iter().chain(out.source.notes).collect(),
        warnings: out.source.warnings,
    };
    Ok(out)
}

/// The image pixel module attributes checked before any pixel is decoded: values that
/// `dicom-pixeldata` would panic on, or that would silently give a blank image.
struct DicomHeader {
    bits_allocated: Option<u64>,
    bits_stored: Option<u64>,
    high_bit: Option<u64>,
    samples_per_pixel: u64,
    pixel_representation: u64,
    photometric: String,
    rescale_slope: Option<String>,
    rescale_intercept: Option<String>,
    window_width: Option<String>,
}

impl DicomHeader {
    fn bits_stored(&self) -> u64 {
        self.bits_stored.or(self.bits_allocated).unwrap_or(0)
    }

    /// Checks the attributes; returns the bytes per pixel of one frame of native data.
    fn check(&self) -> std::result::Result<u64, String> {
        let alloc = self.bits_allocated.ok_or("no Bits Allocated (0028,0100)")?;
        if ![8, 16, 32].contains(&alloc) {
            return Err(format!("Bits Allocated (0028,0100) is {alloc}; supported: 8, 16 or 32"));
        }
        let stored = self.bits_stored();
        if stored == 0 || stored > alloc {
            return Err(format!("Bits Stored (0028,0101) is {stored}; it must be 1 to Bits Allocated ({alloc})"));
        }
        // PS3.3 C.7.6.3.1: High Bit is one less than Bits Stored; the decoder reads the low bits.
        if let Some(high) = self.high_bit
            && high + 1 != stored
        {
            return Err(format!("High Bit (0028,0102) is {high}; with Bits Stored {stored} it must be {}", stored - 1));
        }
        if self.pixel_representation > 1 {
            return Err(format!("Pixel Representation (0028,0103) is {}; it must be 0 or 1", self.pixel_representation));
        }
        let spp = self.samples_per_pixel;
        let p = self.photometric.as_str();
        let expected = match p {
            "MONOCHROME1" | "MONOCHROME2" | "PALETTE COLOR" | "" => 1,
            "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_ICT" | "YBR_RCT" | "YBR_PARTIAL_420" => 3,
            other => return Err(format!("unsupported Photometric Interpretation (0028,0004) '{other}'")),
        };
        if spp != expected {
            return Err(format!(
                "Samples per Pixel (0028,0002) is {spp}, but Photometric Interpretation '{p}' has {expected}"
            ));
        }
        let num = |v: &Option<String>| -> Option<std::result::Result<f64, String>> {
            v.as_ref().map(|s| {
                let first = s.split('\\').next().unwrap_or("").trim();
                first.parse::<f64>().map_err(|_| first.to_string())
            })
        };
        match num(&self.rescale_slope) {
            Some(Ok(v)) if v.is_finite() && v != 0.0 => {}
            Some(Ok(v)) => return Err(format!("Rescale Slope (0028,1053) is {v}; every pixel would become the same value")),
            Some(Err(s)) => return Err(format!("Rescale Slope (0028,1053) '{s}' is not a number")),
            None => {}
        }
        match num(&self.rescale_intercept) {
            Some(Ok(v)) if v.is_finite() => {}
            Some(_) => return Err("Rescale Intercept (0028,1052) is not a finite number".into()),
            None => {}
        }
        match num(&self.window_width) {
            Some(Ok(v)) if v.is_finite() && v > 0.0 => {}
            Some(_) => return Err("Window Width (0028,1051) is not a positive finite number".into()),
            None => {}
        }
        // YBR_FULL_422 stores two luma and two chroma samples per pair of pixels.
        let stored_samples = if p == "YBR_FULL_422" { 2 } else { spp };
        Ok(stored_samples * alloc / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn encode(img: image::DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, fmt).unwrap();
        buf.into_inner()
    }

    fn p() -> PathBuf {
        PathBuf::from("case.img")
    }

    #[test]
    fn png_gray8_rgb8_rgba8_and_gray16_decode_to_expected_gray() {
        let lim = DecodeLimits::default();
        let g = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 40 + y) as u8]));
        let out = decode_bytes(&p(), &encode(g.clone().into(), image::ImageFormat::Png), &lim).unwrap();
        assert_eq!((out.width, out.height), (5, 3));
        assert_eq!(out.pixels, Pixels::U8(g.into_raw()));

        let rgb = image::RgbImage::from_fn(2, 1, |x, _| if x == 0 { image::Rgb([255, 0, 0]) } else { image::Rgb([10, 10, 10]) });
        let out = decode_bytes(&p(), &encode(rgb.into(), image::ImageFormat::Png), &lim).unwrap();
        // 255*4899/16384 = 76.25 -> 76; equal channels stay exact.
        assert_eq!(out.pixels, Pixels::U8(vec![76, 10]));
        assert_eq!(out.source.color, "RGB");

        let rgba = image::RgbaImage::from_pixel(1, 1, image::Rgba([0, 255, 0, 7]));
        let out = decode_bytes(&p(), &encode(rgba.into(), image::ImageFormat::Png), &lim).unwrap();
        assert_eq!(out.pixels, Pixels::U8(vec![150])); // 255*9617/16384 = 149.7

        let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![1000u16, 65535]).unwrap();
        let out = decode_bytes(&p(), &encode(g16.into(), image::ImageFormat::Png), &lim).unwrap();
        assert_eq!(out.pixels, Pixels::U16(vec![1000, 65535]));
        assert_eq!(out.source.bits, 16);
    }

    #[test]
    fn jpeg_is_detected_by_content_not_extension() {
        let g = image::GrayImage::from_pixel(16, 16, image::Luma([128]));
        let bytes = encode(g.into(), image::ImageFormat::Jpeg);
        let out = decode_bytes(Path::new("misnamed.png"), &bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(out.source.format, "JPEG");
        let (lo, hi, _) = out.stats();
        assert!((lo - 128.0).abs() <= 1.0 && (hi - 128.0).abs() <= 1.0);
    }

    #[test]
    fn a_jpeg_cut_in_half_decodes_with_a_warning() {
        let g = image::GrayImage::from_fn(256, 256, |x, y| image::Luma([((x * 7) ^ (y * 3)) as u8]));
        let jpg = encode(g.into(), image::ImageFormat::Jpeg);
        let lim = DecodeLimits::default();
        let whole = decode_bytes(&p(), &jpg, &lim).unwrap();
        assert!(whole.source.warnings.is_empty(), "{:?}", whole.source.warnings);
        // The decoder fills the missing half with grey and reports no error of its own.
        let half = decode_bytes(&p(), &jpg[..jpg.len() / 2], &lim).unwrap();
        assert!(half.source.warnings.iter().any(|w| w.contains("truncated JPEG")), "{:?}", half.source.warnings);
    }

    #[test]
    fn bad_inputs_name_the_file_and_the_reason() {
        let lim = DecodeLimits::default();
        let err = |bytes: &[u8]| decode_bytes(Path::new("x/bad.png"), bytes, &lim).unwrap_err().to_string();
        assert!(err(b"").contains("x/bad.png: empty file"));
        assert!(err(b"hello, world").contains("not a PNG, JPEG or DICOM"));
        let png = encode(image::GrayImage::from_pixel(64, 64, image::Luma([3])).into(), image::ImageFormat::Png);
        assert!(err(&png[..png.len() / 2]).contains("corrupt or truncated PNG"), "{}", err(&png[..png.len() / 2]));
        let jpg = encode(image::GrayImage::from_pixel(64, 64, image::Luma([3])).into(), image::ImageFormat::Jpeg);
        assert!(err(&jpg[..40]).contains("corrupt or truncated JPEG"));
        let small = DecodeLimits { max_pixels: 100 };
        let e = decode_bytes(Path::new("big.png"), &png, &small).unwrap_err().to_string();
        assert!(e.contains("above the limit"), "{e}");
    }
}
