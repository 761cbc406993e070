//! The lookup tables of PS3.3 C.11 (Modality LUT, VOI LUT, windowing) and C.7.9 (palette
//! colour), with pydicom 3.0's semantics (`pydicom.pixels.processing`): the same index
//! clipping, the same integer casts, the same window formulas.
use dicom_core::value::PrimitiveValue;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// A LUT Descriptor: entries (0 means 65536), first mapped value, bits per entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Descriptor {
    pub entries: usize,
    pub first: i64,
    pub bits: u32,
}

pub(super) fn descriptor(item: &InMemDicomObject, tag: dicom_core::Tag) -> Result<Descriptor, String> {
    let e = item.element(tag).map_err(|_| format!("no LUT Descriptor ({:04X},{:04X})", tag.0, tag.1))?;
    let v: Vec<i64> = e.value().to_multi_int().map_err(|_| "the LUT Descriptor is not 3 numbers".to_string())?;
    let [entries, first, bits] = v[..] else {
        return Err(format!("the LUT Descriptor has {} values, not 3", v.len()));
    };
    // The first mapped value may be written as US although the pixels are signed.
    let first = if e.vr() == dicom_core::VR::US && first > 32767 { first - 65536 } else { first };
    Ok(Descriptor { entries: if entries == 0 { 65536 } else { entries as usize }, first, bits: bits.max(0) as u32 })
}

/// The 16-bit words of a LUT Data element (VR US or OW).
pub(super) fn words(p: &PrimitiveValue) -> Vec<u16> {
    match p {
        PrimitiveValue::U16(v) => v.to_vec(),
        PrimitiveValue::I16(v) => v.iter().map(|&x| x as u16).collect(),
        other => other.to_bytes().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect(),
    }
}

/// A lookup table applied to one value as pydicom does: values below the first mapped one
/// give entry 0; `value - first` is cast to the table's integer type (wrapping, as numpy's
/// cast does) and clipped to the last entry.
pub(super) struct Table {
    pub desc: Descriptor,
    pub data: Vec<u16>,
    /// Bits of the index type numpy casts to (8 or 16).
    pub index_bits: u32,
}

impl Table {
    pub fn get(&self, v: f64) -> Result<u16, String> {
        let d = &self.desc;
        let idx = if v >= d.first as f64 {
            let x = (v - d.first as f64).trunc() as i64;
            if self.index_bits == 8 { x as u8 as usize } else { x as u16 as usize }
        } else {
            0
        };
        let idx = idx.min(d.entries - 1);
        self.data.get(idx).copied().ok_or_else(|| {
            format!("the LUT has {} entries of data, its descriptor says {}", self.data.len(), d.entries)
        })
    }
}

/// (0028,3000) Modality LUT Sequence, first item: entries of 8 or 16 bits.
pub(super) fn modality_lut(obj: &InMemDicomObject) -> Result<Option<Table>, String> {
    let Some(item) = first_item(obj, tags::MODALITY_LUT_SEQUENCE) else { return Ok(None) };
    let desc = descriptor(item, tags::LUT_DESCRIPTOR)?;
    if !matches!(desc.bits, 8 | 16) {
        return Err(format!("the Modality LUT has {}-bit entries; pydicom reads 8 or 16", desc.bits));
    }
    let data = lut_data(item, desc)?;
    Ok(Some(Table { desc, data, index_bits: 16 }))
}

/// (0028,3010) VOI LUT Sequence, item `index`: entries of 8 or 10 to 16 bits.
pub(super) fn voi_lut(obj: &InMemDicomObject) -> Result<Option<Table>, String> {
    let Some(item) = first_item(obj, tags::VOILUT_SEQUENCE) else { return Ok(None) };
    if item.element(tags::LUT_DESCRIPTOR).is_err() || item.element(tags::LUT_DATA).is_err() {
        return Ok(None);
    }
    let desc = descriptor(item, tags::LUT_DESCRIPTOR)?;
    let index_bits = match desc.bits {
        8 => 8,
        10..=16 => 16,
        b => return Err(format!("the VOI LUT has {b}-bit entries; pydicom reads 8 or 10 to 16")),
    };
    let data = lut_data(item, desc)?;
    Ok(Some(Table { desc, data, index_bits }))
}

fn first_item(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<&InMemDicomObject> {
    obj.element(tag).ok()?.items()?.first()
}

fn lut_data(item: &InMemDicomObject, desc: Descriptor) -> Result<Vec<u16>, String> {
    let e = item.element(tags::LUT_DATA).map_err(|_| "no LUT Data (0028,3006)".to_string())?;
    let p = e.value().primitive().ok_or("LUT Data is not a value")?;
    let mut w = words(p);
    if e.vr() == dicom_core::VR::OW {
        if w.len() < desc.entries {
            return Err(format!("LUT Data has {} entries, its descriptor says {}", w.len(), desc.entries));
        }
        w.truncate(desc.entries);
    }
    Ok(w)
}

/// The VOI LUT Function of PS3.3 C.11.2.1.3, with pydicom's windowing output range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// A window from (0028,1050)/(0028,1051), as pydicom's `apply_windowing` applies it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub center: f64,
    pub width: f64,
    pub function: VoiFunction,
}

impl Window {
    pub fn new(center: f64, width: f64, function: &str) -> Result<Self, String> {
        let function = match function.trim().to_ascii_uppercase().as_str() {
            "" | "LINEAR" => VoiFunction::Linear,
            "LINEAR_EXACT" => VoiFunction::LinearExact,
            "SIGMOID" => VoiFunction::Sigmoid,
            other => return Err(format!("unsupported VOI LUT Function (0028,1056) '{other}'")),
        };
        let ok = match function {
            VoiFunction::Linear => width >= 1.0,
            _ => width > 0.0,
        };
        if !ok || !center.is_finite() || !width.is_finite() {
            let need = if function == VoiFunction::Linear { "at least 1" } else { "above 0" };
            return Err(format!("Window Width (0028,1051) is {width}; a {function:?} window needs a finite width {need}"));
        }
        Ok(Window { center, width, function })
    }

    /// Maps `x` into `y_min..=y_max` (PS3.3 C.11.2.1.2 and C.11.2.1.3).
    pub fn apply(&self, x: f64, y_min: f64, y_max: f64) -> f64 {
        let y_range = y_max - y_min;
        match self.function {
            VoiFunction::Sigmoid => y_range / (1.0 + (-4.0 * (x - self.center) / self.width).exp()) + y_min,
            f => {
                let (c, w) = if f == VoiFunction::Linear {
                    (self.center - 0.5, self.width - 1.0)
                } else {
                    (self.center, self.width)
                };
                if x <= c - w / 2.0 {
                    y_min
                } else if x > c + w / 2.0 {
                    y_max
                } else {
                    ((x - c) / w + 0.5) * y_range + y_min
                }
            }
        }
    }
}

/// The red, green and blue palette tables of a PALETTE COLOR image (C.7.6.3.1.5-6, C.7.9).
pub(super) struct Palette {
    pub tables: [Table; 3],
    /// Bits per entry of the expanded tables (8 or 16).
    pub bits: u32,
    pub segmented: bool,
}

impl Palette {
    pub fn rgb(&self, v: i64) -> Result<[u16; 3], String> {
        let f = v as f64;
        Ok([self.tables[0].get(f)?, self.tables[1].get(f)?, self.tables[2].get(f)?])
    }
}

pub(super) fn palette(obj: &InMemDicomObject, big_endian: bool) -> Result<Palette, String> {
    let desc = descriptor(obj, tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR)
        .map_err(|_| "PALETTE COLOR without a Red Palette Color Lookup Table Descriptor (0028,1101)".to_string())?;
    let bytes = |tag| -> Option<Vec<u8>> {
        let p = obj.element(tag).ok()?.value().primitive()?.clone();
        Some(match p {
            PrimitiveValue::U16(v) => v.iter().flat_map(|x| if big_endian { x.to_be_bytes() } else { x.to_le_bytes() }).collect(),
            other => other.to_bytes().to_vec(),
        })
    };
    let plain = [
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let segmented = [
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    ];
    let (luts, bits, is_segmented): (Vec<Vec<u16>>, u32, bool) = if let Some(r) = bytes(plain[0]) {
        // pydicom takes the entry size from the data: bytes / entries.
        let bits = (r.len() * 8) as f64 / desc.entries as f64;
        if bits != 8.0 && bits != 16.0 {
            return Err(format!("the palette has {bits:.1} bits per entry; only 8 or 16 are allowed"));
        }
        let bits = bits as u32;
        let mut luts = Vec::new();
        for tag in plain {
            let b = bytes(tag).ok_or("the palette lacks its green or blue table")?;
            luts.push(unpack(&b, bits, big_endian));
        }
        (luts, bits, false)
    } else if bytes(segmented[0]).is_some() {
        let bits = desc.bits;
        if !matches!(bits, 8 | 16) {
            return Err(format!("the segmented palette has {bits}-bit entries; only 8 or 16 are allowed"));
        }
        let mut luts = Vec::new();
        for tag in segmented {
            let b = bytes(tag).ok_or("the segmented palette lacks its green or blue table")?;
            luts.push(expand_segmented(&unpack(&b, bits, big_endian), bits == 8, !big_endian, None, None, 0)?);
        }
        (luts, bits, true)
    } else {
        return Err("PALETTE COLOR without palette colour lookup table data".into());
    };
    if luts.iter().any(|l| l.len() != luts[0].len()) {
        return Err("the red, green and blue palette tables differ in length".into());
    }
    let index_bits = bits;
    let mut it = luts.into_iter().map(|data| Table { desc, data, index_bits });
    let tables = [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()];
    Ok(Palette { tables, bits, segmented: is_segmented })
}

fn unpack(b: &[u8], bits: u32, big_endian: bool) -> Vec<u16> {
    if bits == 8 {
        b.iter().map(|&x| x as u16).collect()
    } else {
        b.chunks_exact(2)
            .map(|c| if big_endian { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_le_bytes([c[0], c[1]]) })
            .collect()
    }
}

/// Longest expanded table and deepest indirection accepted (a table has at most 65536
/// entries; indirect segments may point back at themselves in a crafted file).
const MAX_EXPANDED: usize = 1 << 17;
const MAX_INDIRECTION: u32 = 8;

/// PS3.3 C.7.9.2: discrete (0), linear (1) and indirect (2) segments, as pydicom's
/// `_expand_segmented_lut` expands them (linear segments rounded half to even).
fn expand_segmented(
    data: &[u16],
    eight_bit: bool,
    little_endian: bool,
    segments: Option<usize>,
    last: Option<u16>,
    depth: u32,
) -> Result<Vec<u16>, String> {
    if depth > MAX_INDIRECTION {
        return Err("the segmented palette's indirect segments nest too deep".into());
    }
    let bad = || "the segmented palette is cut short".to_string();
    let mut lut: Vec<u16> = Vec::new();
    let mut off = 0;
    let mut read = 0;
    while off + 1 < data.len() {
        let (op, len) = (data[off], data[off + 1] as usize);
        off += 2;
        match op {
            0 => {
                lut.extend(data.get(off..off + len).ok_or_else(bad)?);
                off += len;
            }
            1 => {
                let y0 = match (lut.last(), last) {
                    (Some(&y), _) => y,
                    (None, Some(y)) if y != 0 => y,
                    _ => return Err("a segmented palette cannot start with a linear segment".into()),
                };
                let y1 = *data.get(off).ok_or_else(bad)?;
                off += 1;
                if y0 == y1 {
                    lut.extend(std::iter::repeat_n(y1, len));
                } else {
                    // np.around(np.linspace(y0 + step, y1, len))
                    let step = (y1 as f64 - y0 as f64) / len as f64;
                    let start = y0 as f64 + step;
                    let delta = y1 as f64 - start;
                    let div = len.saturating_sub(1).max(1) as f64;
                    for i in 0..len {
                        let v = if i + 1 == len && len > 1 { y1 as f64 } else { i as f64 * (delta / div) + start };
                        lut.push(v.round_ties_even() as u16);
                    }
                }
            }
            2 => {
                let &prev = lut.last().ok_or("a segmented palette cannot start with an indirect segment")?;
                let byte_offset = if eight_bit {
                    let ii: [usize; 4] = if little_endian { [3, 2, 1, 0] } else { [2, 3, 0, 1] };
                    let b = |k: usize| data.get(off + ii[k]).copied().ok_or_else(bad);
                    let v = ((b(0)? as usize) << 8 | b(1)? as usize) << 16 | ((b(2)? as usize) << 8 | b(3)? as usize);
                    off += 4;
                    v
                } else {
                    let v = (*data.get(off + 1).ok_or_else(bad)? as usize) << 16 | data[off] as usize;
                    off += 2;
                    v
                };
                let rest = data.get(byte_offset..).unwrap_or(&[]);
                lut.extend(expand_segmented(rest, eight_bit, little_endian, Some(len), Some(prev), depth + 1)?);
            }
            other => return Err(format!("the segmented palette has an unknown segment type {other}")),
        }
        if lut.len() > MAX_EXPANDED {
            return Err("the segmented palette expands to more than 131072 entries".into());
        }
        read += 1;
        if Some(read) == segments {
            break;
        }
    }
    Ok(lut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmented_palettes_expand_as_pydicom_expands_them() {
        // pydicom's own test cases (tests/pixels/test_processing.py, TestExpandSegmentedLUT).
        let e = |d: &[u16]| expand_segmented(d, false, true, None, None, 0).unwrap();
        assert_eq!(e(&[0, 2, 0, 112]), vec![0, 112]);
        assert_eq!(e(&[0, 1, 0, 1, 5, 10]), vec![0, 2, 4, 6, 8, 10]);
        assert_eq!(e(&[0, 1, 10, 1, 5, 0]), vec![10, 8, 6, 4, 2, 0]);
        assert_eq!(e(&[0, 2, 0, 112, 1, 5, 192]), vec![0, 112, 128, 144, 160, 176, 192]);
        assert_eq!(e(&[0, 1, 0, 1, 5, 10, 2, 1, 0, 0]), vec![0, 2, 4, 6, 8, 10, 0]);
        assert!(expand_segmented(&[1, 1, 5], false, true, None, None, 0).is_err());
        // An indirect segment of two segments that points back at itself stops at the bound.
        assert!(expand_segmented(&[0, 1, 7, 2, 2, 0, 0], false, true, None, None, 0).is_err());
    }

    #[test]
    fn windows_follow_ps3_3_c_11_2_1_2() {
        let w = Window::new(2048.0, 4096.0, "").unwrap();
        assert_eq!(w.apply(0.0, 0.0, 255.0), 0.0);
        assert_eq!(w.apply(5000.0, 0.0, 255.0), 255.0);
        assert!(Window::new(10.0, 0.5, "LINEAR").is_err());
        assert!(Window::new(10.0, 0.5, "LINEAR_EXACT").is_ok());
        assert!(Window::new(10.0, 1.0, "CUBIC").is_err());
    }
}
