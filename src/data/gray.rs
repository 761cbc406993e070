//! The decoded image and what decoding guarantees of it: [`GrayImage`] (grayscale samples at the
//! file's precision, with what was found in the file), the [`DecodeLimits`] every decoder checks
//! ([`check_size`]), and the BT.601 luma that every colour decoder uses ([`luma8`]). The
//! decoders themselves are `data::decode` (PNG, JPEG) and `data::dicom`.
use std::path::Path;

use crate::error::{Error, Result};

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

pub(crate) fn check_size(path: &Path, width: u64, height: u64, limits: &DecodeLimits) -> Result<()> {
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

/// BT.601 luma in OpenCV's 14-bit fixed point (exact for equal channels).
pub(crate) fn luma8(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 4899 + g as u32 * 9617 + b as u32 * 1868 + (1 << 13)) >> 14) as u8
}
