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
//! * DICOM: decoded as pydicom decodes it (`crate::data::dicom`): palette, colour, modality
//!   LUT or rescale, VOI LUT or window, MONOCHROME1 inverted; frame 0 of a multi-frame object.
//!   Output of at most 8 bits stays 8-bit, deeper output fills 16 bits.
//!
//! Decoding never panics on a file: the DICOM header is checked first (every element's length
//! against the bytes left in the file, then Bits Allocated / Stored, High Bit, Rows, Columns,
//! Samples per Pixel, Photometric Interpretation, Pixel Representation, the length of
//! uncompressed pixel data, and a finite non-zero Rescale Slope),
//! and every third-party decoder runs inside `catch_unwind`, so a panic in `image` or
//! `dicom-pixeldata` becomes an [`Error::BadFile`] naming the file (a loader worker keeps going).
//! A JPEG without its end-of-image marker after the last scan (e.g. cut in half; the decoder
//! fills the missing rows with grey) decodes with a warning in [`SourceInfo::warnings`]; callers
//! decide whether to refuse it (`eval --strict`) or to use it and say so.
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use crate::error::{Error, Result};
pub use super::gray::{DecodeLimits, GrayImage, Pixels, SourceInfo};
use super::gray::{check_size, luma8};

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

/// True when the file's first bytes are a PNG, JPEG or DICOM signature (the test the decoder
/// itself uses to choose its format); false when it cannot be read.
pub fn has_image_content(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    let mut n = 0;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    // `read` may return fewer bytes than there are; read until the buffer is full or the file ends.
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    sniff(&head[..n]).is_some()
}

/// Reads and decodes one image file.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<GrayImage> {
    let bytes = crate::files::read_image(path)?;
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
        Some(Format::Dicom(offset)) => super::dicom::decode_dicom(path, &bytes[offset..], limits),
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
            // The same length check as decoding: dicom-rs allocates what a header claims.
            super::dicom::check_header_lengths(path, &bytes[offset..], DecodeLimits::default().max_pixels)?;
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
