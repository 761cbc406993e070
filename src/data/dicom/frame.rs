//! The first frame of a DICOM object's pixel data as samples: what pydicom's `pixel_array`
//! holds before any colour or LUT step (uncompressed, deflated, RLE, JPEG 8-bit and lossless,
//! JPEG 2000).
//!
//! Uncompressed data and RLE are read here (1, 8, 16 and 32 bits, either byte order); JPEG goes
//! through `jpeg-decoder`, told whether three components are RGB or YCbCr by the photometric
//! interpretation as pydicom conforms it to the stream (component IDs, JFIF marker); JPEG 2000
//! goes through dicom-pixeldata (OpenJPEG, as pylibjpeg-openjpeg).
use std::borrow::Cow;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use super::Header;

/// Transfer syntaxes by the decoder that handles them.
pub(super) const NATIVE: [&str; 4] =
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"];
/// JPEG baseline, JPEG extended (8-bit streams only: jpeg-decoder has no 12-bit DCT), JPEG
/// lossless (process 14, and its selection value 1).
pub(super) const JPEG: [&str; 4] =
    ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"];
pub(super) const RLE: &str = "1.2.840.10008.1.2.5";
pub(super) const JPEG_2000: [&str; 2] = ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"];

/// One frame of samples, little-endian in containers of `bits_allocated` bits.
pub(super) struct Frame {
    pub rows: usize,
    pub cols: usize,
    pub spp: usize,
    /// 1, 8, 16 or 32.
    pub bits_allocated: u32,
    pub planar: bool,
    /// The photometric interpretation of these samples (a decoder may change it: JPEG 2000's
    /// YBR_ICT/YBR_RCT come out as RGB; uncompressed YBR_FULL_422 is expanded to YBR_FULL).
    pub photometric: String,
    pub data: Vec<u8>,
}

impl Frame {
    /// Sample `ch` of pixel `i`, as stored (no unused-bit correction).
    pub fn raw(&self, i: usize, ch: usize) -> u32 {
        let n = self.rows * self.cols;
        let k = if self.planar { ch * n + i } else { i * self.spp + ch };
        let d = &self.data;
        match self.bits_allocated {
            1 => ((d[k / 8] >> (k % 8)) & 1) as u32,
            8 => d[k] as u32,
            16 => u16::from_le_bytes([d[2 * k], d[2 * k + 1]]) as u32,
            _ => u32::from_le_bytes([d[4 * k], d[4 * k + 1], d[4 * k + 2], d[4 * k + 3]]),
        }
    }

    /// Sample `ch` of pixel `i` as pydicom reads it: the bits above Bits Stored ignored, and
    /// sign-extended from Bits Stored when Pixel Representation is 1.
    pub fn value(&self, i: usize, ch: usize, bits_stored: u32, signed: bool) -> i64 {
        let v = self.raw(i, ch) as u64;
        let shift = 64 - bits_stored;
        if signed { ((v << shift) as i64) >> shift } else { ((v << shift) >> shift) as i64 }
    }
}

/// Why frame 0 could not be decoded.
pub(super) enum FrameError {
    /// The stream needs a codec magsd does not have (e.g. 12-bit JPEG); the codec's name.
    NoDecoder(&'static str),
    /// The data is broken or inconsistent with the header.
    Bad(String),
}

impl From<String> for FrameError {
    fn from(s: String) -> Self {
        FrameError::Bad(s)
    }
}

impl From<&str> for FrameError {
    fn from(s: &str) -> Self {
        FrameError::Bad(s.to_string())
    }
}

/// Decodes frame 0.
pub(super) fn decode_first_frame(obj: &DefaultDicomObject, h: &Header, ts: &str) -> Result<Frame, FrameError> {
    if NATIVE.contains(&ts) {
        Ok(native(obj, h, ts == "1.2.840.10008.1.2.2")?)
    } else if JPEG.contains(&ts) {
        jpeg(obj, h, ts)
    } else if ts == RLE {
        Ok(rle(obj, h)?)
    } else {
        Ok(pixeldata(obj, h)?)
    }
}

fn native(obj: &DefaultDicomObject, h: &Header, big_endian: bool) -> Result<Frame, String> {
    let elem = obj.element(tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    let Value::Primitive(p) = elem.value() else {
        return Err("the pixel data is encapsulated, but the transfer syntax says uncompressed".into());
    };
    let n = h.rows * h.cols;
    // YBR_FULL_422 stores Y1 Y2 Cb Cr for each pair of pixels.
    let samples = if h.photometric == "YBR_FULL_422" { n * 2 } else { n * h.spp };
    let bytes_needed = (samples * h.bits_allocated as usize).div_ceil(8);
    let mut data: Vec<u8> = match (p, h.bits_allocated, big_endian) {
        // 32-bit samples read as 16-bit words from a big-endian file: high word first.
        (PrimitiveValue::U16(w), 32, true) => w
            .chunks_exact(2)
            .take(samples)
            .flat_map(|w| ((w[0] as u32) << 16 | w[1] as u32).to_le_bytes())
            .collect(),
        _ => prim_bytes(p)[..].get(..bytes_needed).map(<[u8]>::to_vec).unwrap_or_default(),
    };
    if data.len() < bytes_needed {
        return Err(format!("the pixel data has {} bytes, one frame needs {bytes_needed}: truncated", prim_bytes(p).len()));
    }
    let mut photometric = h.photometric.clone();
    if photometric == "YBR_FULL_422" {
        data = expand_ybr_422(&data, h.bits_allocated);
        photometric = "YBR_FULL".into();
    }
    Ok(Frame { rows: h.rows, cols: h.cols, spp: h.spp, bits_allocated: h.bits_allocated, planar: h.planar, photometric, data })
}

/// The value's bytes, little-endian for multi-byte values.
fn prim_bytes(p: &PrimitiveValue) -> Cow<'_, [u8]> {
    match p {
        PrimitiveValue::U16(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        PrimitiveValue::I16(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        PrimitiveValue::U32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        PrimitiveValue::I32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        other => other.to_bytes(),
    }
}

/// PS3.3 C.7.6.3.1.2: Y1 Y2 Cb Cr → Y1 Cb Cr Y2 Cb Cr (pydicom's expansion).
fn expand_ybr_422(d: &[u8], bits: u32) -> Vec<u8> {
    let w = (bits / 8) as usize;
    let mut out = Vec::with_capacity(d.len() / 2 * 3);
    for q in d.chunks_exact(4 * w) {
        let (y1, y2, cb, cr) = (&q[..w], &q[w..2 * w], &q[2 * w..3 * w], &q[3 * w..]);
        for y in [y1, y2] {
            out.extend_from_slice(y);
            out.extend_from_slice(cb);
            out.extend_from_slice(cr);
        }
    }
    out
}

/// The encapsulated fragments of frame 0, joined, found as pydicom's `generate_frames` does:
/// by the Basic Offset Table, else all fragments of a single-frame object, else one fragment
/// per frame, else (JPEG) fragments up to the first that ends with an EOI marker.
fn first_frame_fragments(obj: &DefaultDicomObject, frames: usize) -> Result<Vec<u8>, String> {
    let elem = obj.element(tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    let Value::PixelSequence(seq) = elem.value() else {
        return Err("the transfer syntax says compressed, but the pixel data is not encapsulated".into());
    };
    let fragments = seq.fragments();
    let bot = seq.offset_table();
    if fragments.is_empty() {
        return Err("the encapsulated pixel data has no fragments".into());
    }
    let take = if bot.len() >= 2 {
        let mut offset = 0u64;
        fragments
            .iter()
            .take_while(|f| {
                let inside = offset < (bot[1] as u64);
                offset += 8 + f.len() as u64;
                inside
            })
            .count()
    } else if frames <= 1 {
        fragments.len()
    } else if fragments.len() == frames {
        1
    } else {
        let ends_with_eoi = |f: &Vec<u8>| {
            let f = f.strip_suffix(&[0]).unwrap_or(f);
            f.ends_with(&[0xFF, 0xD9])
        };
        fragments.iter().position(ends_with_eoi).map_or(fragments.len(), |k| k + 1)
    };
    Ok(fragments[..take.max(1)].concat())
}

fn jpeg(obj: &DefaultDicomObject, h: &Header, ts: &str) -> Result<Frame, FrameError> {
    let stream = first_frame_fragments(obj, h.frames)?;
    let photometric = conform_jpeg_photometric(&stream, &h.photometric, ts);
    let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(&stream));
    // Three components are RGB as stored, or YCbCr that the decoder converts to RGB (libjpeg's
    // integer BT.601; pydicom converts in float32, which can differ by one level).
    let ybr = h.spp == 3 && photometric.starts_with("YBR");
    if h.spp == 3 {
        dec.set_color_transform(if ybr { jpeg_decoder::ColorTransform::YCbCr } else { jpeg_decoder::ColorTransform::RGB });
    }
    dec.set_max_decoding_buffer_size(h.rows * h.cols * h.spp * 2 + (1 << 20));
    let decoded = dec.decode().map_err(|e| match e {
        jpeg_decoder::Error::Unsupported(jpeg_decoder::UnsupportedFeature::SamplePrecision(12)) => {
            FrameError::NoDecoder("12-bit JPEG (DCT)")
        }
        e => FrameError::Bad(format!("JPEG decoding failed: {e}")),
    })?;
    let info = dec.info().ok_or("JPEG decoding failed: no frame header")?;
    if (info.width as usize, info.height as usize) != (h.cols, h.rows) {
        return Err(format!(
            "the JPEG stream is {}×{}, the header says {}×{}",
            info.width, info.height, h.cols, h.rows
        )
        .into());
    }
    let (spp, bits_allocated) = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => (1, 8),
        jpeg_decoder::PixelFormat::L16 => (1, 16),
        jpeg_decoder::PixelFormat::RGB24 => (3, 8),
        jpeg_decoder::PixelFormat::CMYK32 => return Err("the JPEG stream has 4 components".into()),
    };
    if spp != h.spp {
        return Err(format!("the JPEG stream has {spp} components, Samples per Pixel says {}", h.spp).into());
    }
    let mut data = decoded;
    if bits_allocated == 16 && cfg!(target_endian = "big") {
        data.chunks_exact_mut(2).for_each(|c| c.swap(0, 1));
    }
    let photometric = if ybr { "RGB".to_string() } else { photometric };
    Ok(Frame { rows: h.rows, cols: h.cols, spp, bits_allocated, planar: false, photometric, data })
}

/// pydicom's `_conform_jpg_colorspace`: component IDs 'R','G','B' mean RGB; a JFIF APP0
/// segment means YBR (YBR_FULL_422 for baseline, YBR_FULL otherwise) unless the header says YBR.
fn conform_jpeg_photometric(stream: &[u8], photometric: &str, ts: &str) -> String {
    let mut pos = 2;
    let mut jfif = false;
    while pos + 4 <= stream.len() && stream[pos] == 0xFF {
        let marker = stream[pos + 1];
        let len = u16::from_be_bytes([stream[pos + 2], stream[pos + 3]]) as usize;
        let body = stream.get(pos + 4..pos + 2 + len).unwrap_or(&[]);
        match marker {
            0xE0..=0xEF if body.starts_with(b"JFIF") => jfif = true,
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) && body.len() >= 6 => {
                let n = body[5] as usize;
                let ids: Vec<u8> = (0..n).filter_map(|k| body.get(6 + 3 * k).copied()).collect();
                if n == 3 && (ids == b"RGB" || ids == b"rgb") {
                    return "RGB".into();
                }
            }
            0xDA => break,
            _ => {}
        }
        pos += 2 + len;
    }
    if jfif && !photometric.contains("YBR") {
        return if ts == JPEG[0] { "YBR_FULL_422".into() } else { "YBR_FULL".into() };
    }
    photometric.to_string()
}

/// RLE Lossless (PS3.5 Annex G): one PackBits segment per byte of each sample, most
/// significant byte first; 8, 16 and 32-bit samples.
fn rle(obj: &DefaultDicomObject, h: &Header) -> Result<Frame, String> {
    let data = first_frame_fragments(obj, h.frames)?;
    if data.len() < 64 {
        return Err("the RLE header is cut short".into());
    }
    let word = |k: usize| u32::from_le_bytes([data[4 * k], data[4 * k + 1], data[4 * k + 2], data[4 * k + 3]]) as usize;
    let bytes = (h.bits_allocated / 8) as usize;
    let segments = word(0);
    if bytes == 0 || segments != h.spp * bytes || segments > 15 {
        return Err(format!("the RLE header has {segments} segments; {} samples of {} bits need {}", h.spp, h.bits_allocated, h.spp * bytes));
    }
    let n = h.rows * h.cols;
    let mut out = vec![0u8; n * h.spp * bytes];
    for s in 0..segments {
        let (start, end) = (word(1 + s), if s + 1 < segments { word(2 + s) } else { data.len() });
        let seg = data.get(start..end.min(data.len())).ok_or("an RLE segment offset is beyond the data")?;
        let (sample, pos) = (s / bytes, bytes - 1 - s % bytes);
        let mut i = 0;
        let mut put = |v: u8, i: &mut usize| {
            if *i < n {
                out[(*i * h.spp + sample) * bytes + pos] = v;
            }
            *i += 1;
        };
        let mut k = 0;
        while k < seg.len() && i < n {
            let c = seg[k] as i8;
            k += 1;
            if c >= 0 {
                for &v in seg.get(k..k + c as usize + 1).ok_or("an RLE segment is cut short")? {
                    put(v, &mut i);
                }
                k += c as usize + 1;
            } else if c != -128 {
                let &v = seg.get(k).ok_or("an RLE segment is cut short")?;
                k += 1;
                for _ in 0..(1 - c as i32) {
                    put(v, &mut i);
                }
            }
        }
        if i < n {
            return Err(format!("RLE segment {} decodes to {i} bytes, a frame needs {n}", s + 1));
        }
    }
    Ok(Frame { rows: h.rows, cols: h.cols, spp: h.spp, bits_allocated: h.bits_allocated, planar: false, photometric: h.photometric.clone(), data: out })
}

/// JPEG 2000, through dicom-pixeldata (OpenJPEG).
fn pixeldata(obj: &DefaultDicomObject, h: &Header) -> Result<Frame, String> {
    let decoded = obj.decode_pixel_data_frame(0).map_err(|e| e.to_string())?;
    let bits_allocated = decoded.bits_allocated() as u32;
    let spp = decoded.samples_per_pixel() as usize;
    if !matches!(bits_allocated, 8 | 16 | 32) || spp != h.spp {
        return Err(format!("the decoder gave {spp} samples of {bits_allocated} bits per pixel"));
    }
    let data = decoded.data().to_vec();
    let need = h.rows * h.cols * spp * bits_allocated as usize / 8;
    if data.len() < need {
        return Err(format!("the decoder gave {} bytes, one frame needs {need}", data.len()));
    }
    let planar = matches!(decoded.planar_configuration(), dicom_pixeldata::PlanarConfiguration::PixelFirst);
    let photometric = match decoded.photometric_interpretation().as_str() {
        // OpenJPEG applies the inverse component transform (as pylibjpeg-openjpeg does).
        "YBR_ICT" | "YBR_RCT" => "RGB".to_string(),
        p => p.to_string(),
    };
    Ok(Frame { rows: h.rows, cols: h.cols, spp, bits_allocated, planar, photometric, data })
}
