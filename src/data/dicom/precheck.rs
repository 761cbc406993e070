//! A walk over a DICOM file's element headers before any value is read: every element, item
//! and fragment must claim no more bytes than the file has left after its header.
//!
//! dicom-rs reserves and zero-fills a value's claimed length before reading it, so a 9 KB file
//! whose private element claims 0xFFFFFFF0 bytes would cost 4 GB before the read fails. This
//! walk follows the same encoding rules (explicit or implicit VR, little or big endian, the
//! implicit VR inside an undefined-length UN element, items and fragments) without allocating.
//! A deflated data set is inflated first, at most [`max_inflated`] bytes.
use std::io::Read;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// The largest inflated data set accepted: room for the largest frame the pixel limit allows
/// as three 32-bit samples per pixel, plus 64 MiB of other elements.
pub(super) fn max_inflated(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(12).saturating_add(64 << 20)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ExplicitLe,
    ExplicitBe,
    ImplicitLe,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sequence,
    Item,
    Fragments,
}

struct Open {
    kind: Kind,
    /// Where a defined-length container ends.
    end: Option<usize>,
    /// The encoding of the elements inside.
    encoding: Encoding,
}

/// `bytes` starts at the "DICM" magic. Returns a message naming the first element whose
/// claimed length exceeds the bytes left; a file cut short is left to the parser to report.
pub(super) fn check_lengths(bytes: &[u8], max_pixels: u64) -> Result<(), String> {
    let mut pos = 4;
    let mut transfer_syntax = String::new();
    // File meta information: explicit VR little endian, group 0002.
    while pos + 8 <= bytes.len() && u16::from_le_bytes([bytes[pos], bytes[pos + 1]]) == 0x0002 {
        let tag = Tag(0x0002, u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]));
        let (len, header) = explicit_length(bytes, pos, false);
        if header == 0 {
            return Ok(());
        }
        let start = pos + header;
        claim(tag, len, start, bytes.len())?;
        if tag == Tag(0x0002, 0x0010) {
            transfer_syntax = String::from_utf8_lossy(&bytes[start..start + len as usize])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        pos = start + len as usize;
    }
    let encoding = match transfer_syntax.as_str() {
        "1.2.840.10008.1.2" => Encoding::ImplicitLe,
        "1.2.840.10008.1.2.2" => Encoding::ExplicitBe,
        _ => Encoding::ExplicitLe,
    };
    if transfer_syntax == DEFLATED {
        let cap = max_inflated(max_pixels);
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&bytes[pos..])
            .take(cap + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| format!("the deflated data set cannot be inflated: {e}"))?;
        if inflated.len() as u64 > cap {
            return Err(format!("the deflated data set inflates to more than {cap} bytes"));
        }
        return walk(&inflated, 0, encoding);
    }
    walk(bytes, pos, encoding)
}

fn claim(tag: Tag, len: u32, start: usize, total: usize) -> Result<(), String> {
    let left = total.saturating_sub(start);
    if len as usize > left {
        return Err(format!(
            "element ({:04X},{:04X}) at byte {start} claims {len} bytes, but only {left} bytes are left in the file \
             (a corrupt or crafted header; nothing was allocated for it)",
            tag.0, tag.1
        ));
    }
    Ok(())
}

fn u16_at(b: &[u8], p: usize, be: bool) -> u16 {
    let x = [b[p], b[p + 1]];
    if be { u16::from_be_bytes(x) } else { u16::from_le_bytes(x) }
}

fn u32_at(b: &[u8], p: usize, be: bool) -> u32 {
    let x = [b[p], b[p + 1], b[p + 2], b[p + 3]];
    if be { u32::from_be_bytes(x) } else { u32::from_le_bytes(x) }
}

/// The two-letter VRs whose length is a 16-bit field (PS3.5 Table 7.1-2); every other VR,
/// and an unknown one (read as UN, as dicom-rs does), has 2 reserved bytes and 32 bits.
const SHORT_VRS: [&[u8; 2]; 21] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
];

/// (length, header size) of the explicit VR element at `pos`; header size 0 if cut short.
fn explicit_length(b: &[u8], pos: usize, be: bool) -> (u32, usize) {
    let vr = [b[pos + 4], b[pos + 5]];
    if SHORT_VRS.contains(&&vr) {
        (u16_at(b, pos + 6, be) as u32, 8)
    } else if pos + 12 <= b.len() {
        (u32_at(b, pos + 8, be), 12)
    } else {
        (0, 0)
    }
}

fn is_vr(v: [u8; 2]) -> bool {
    v[0].is_ascii_uppercase() && v[1].is_ascii_uppercase() && dicom_core::VR::from_binary(v).is_some()
}

fn walk(b: &[u8], mut pos: usize, base: Encoding) -> Result<(), String> {
    let mut open: Vec<Open> = Vec::new();
    let mut base = base;
    // dicom-rs reads a data set that says explicit VR LE but is implicit as implicit: it looks
    // at the first element's VR bytes.
    if base == Encoding::ExplicitLe && pos + 6 <= b.len() && !is_vr([b[pos + 4], b[pos + 5]]) {
        base = Encoding::ImplicitLe;
    }
    loop {
        while open.last().is_some_and(|o| o.end.is_some_and(|e| pos >= e)) {
            open.pop();
        }
        if pos + 8 > b.len() {
            return Ok(());
        }
        let encoding = open.last().map_or(base, |o| o.encoding);
        let be = encoding == Encoding::ExplicitBe;
        let tag = Tag(u16_at(b, pos, be), u16_at(b, pos + 2, be));
        if tag.0 == 0xFFFE {
            let len = u32_at(b, pos + 4, be);
            pos += 8;
            match tag.1 {
                0xE000 => {
                    let inside = open.last().map(|o| o.kind);
                    if inside == Some(Kind::Fragments) || len != UNDEFINED {
                        claim(tag, len, pos, b.len())?;
                    }
                    if inside == Some(Kind::Fragments) {
                        pos += len as usize;
                    } else {
                        let end = (len != UNDEFINED).then(|| pos + len as usize);
                        open.push(Open { kind: Kind::Item, end, encoding });
                    }
                }
                0xE00D if open.last().is_some_and(|o| o.kind == Kind::Item) => {
                    open.pop();
                }
                0xE0DD => {
                    if open.last().is_some_and(|o| o.kind == Kind::Item) {
                        open.pop();
                    }
                    open.pop();
                }
                _ => {}
            }
            continue;
        }
        let (vr, len, header) = match encoding {
            Encoding::ImplicitLe => (implicit_vr(tag), u32_at(b, pos + 4, false), 8),
            _ => {
                let (len, header) = explicit_length(b, pos, be);
                if header == 0 {
                    return Ok(());
                }
                let vr = [b[pos + 4], b[pos + 5]];
                (if is_vr(vr) { vr } else { *b"UN" }, len, header)
            }
        };
        pos += header;
        if len == UNDEFINED {
            let (kind, inner) = match (tag, &vr) {
                (PIXEL_DATA, _) => (Kind::Fragments, encoding),
                (_, b"UN") => (Kind::Sequence, Encoding::ImplicitLe),
                _ => (Kind::Sequence, encoding),
            };
            open.push(Open { kind, end: None, encoding: inner });
            continue;
        }
        claim(tag, len, pos, b.len())?;
        if &vr == b"SQ" {
            open.push(Open { kind: Kind::Sequence, end: Some(pos + len as usize), encoding });
        } else {
            pos += len as usize;
        }
    }
}

/// The VR an implicit VR element is read with: the dictionary's, where it says SQ.
fn implicit_vr(tag: Tag) -> [u8; 2] {
    match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
        Some(VirtualVr::Exact(dicom_core::VR::SQ)) => *b"SQ",
        _ => *b"UN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ts: &str) -> Vec<u8> {
        let mut ts = ts.as_bytes().to_vec();
        if ts.len() % 2 == 1 {
            ts.push(0);
        }
        let mut v = b"DICM".to_vec();
        v.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        v.extend((ts.len() as u16).to_le_bytes());
        v.extend(ts);
        v
    }

    #[test]
    fn a_length_beyond_the_end_of_the_file_is_named() {
        let mut f = meta("1.2.840.10008.1.2.1");
        // (0009,0010) OB with a 0xFFFFFFF0 length and 4 bytes of value.
        f.extend([0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4]);
        let e = check_lengths(&f, 1000).unwrap_err();
        assert!(e.contains("(0009,0010)") && e.contains("4294967280"), "{e}");
        // The same in implicit VR, inside a sequence item.
        let mut f = meta("1.2.840.10008.1.2");
        f.extend([0x08, 0x00, 0x15, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]); // (0008,1115) SQ, undefined
        f.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]); // item, undefined
        f.extend([0x09, 0x00, 0x10, 0x10, 0x00, 0x00, 0x00, 0x40, 1, 2]); // 1 GiB claimed
        let e = check_lengths(&f, 1000).unwrap_err();
        assert!(e.contains("(0009,1010)"), "{e}");
    }

    #[test]
    fn honest_lengths_pass() {
        let mut f = meta("1.2.840.10008.1.2.1");
        f.extend([0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 4, 0]);
        f.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        f.extend([0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        f.extend([0xFE, 0xFF, 0x00, 0xE0, 2, 0, 0, 0, 0xFF, 0xD8]); // one fragment
        f.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        check_lengths(&f, 1000).unwrap();
    }
}
