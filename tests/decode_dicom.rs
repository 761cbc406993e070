//! DICOM decoding on synthetic files that the test writes itself with dicom-object.
use std::path::{Path, PathBuf};

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use magsd::data::decode::{DecodeLimits, Pixels, decode_file};

struct Spec<'a> {
    photometric: &'a str,
    pixels: &'a [u16],
    window: Option<(&'a str, &'a str)>,
    rescale: Option<(&'a str, &'a str)>,
    transfer_syntax: &'a str,
    bits_stored: u16,
    high_bit: u16,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            photometric: "MONOCHROME2",
            pixels: &[0, 1000, 2000, 4000],
            window: None,
            rescale: None,
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN,
            bits_stored: 12,
            high_bit: 11,
        }
    }
}

fn write_dicom(dir: &Path, name: &str, spec: Spec) -> PathBuf {
    let mut obj = InMemDicomObject::new_empty();
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    obj.put(text(tags::SOP_CLASS_UID, VR::UI, uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.2.1"));
    obj.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, spec.photometric));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(us(tags::ROWS, 2));
    obj.put(us(tags::COLUMNS, 2));
    obj.put(us(tags::BITS_ALLOCATED, 16));
    obj.put(us(tags::BITS_STORED, spec.bits_stored));
    obj.put(us(tags::HIGH_BIT, spec.high_bit));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    if let Some((c, w)) = spec.window {
        obj.put(text(tags::WINDOW_CENTER, VR::DS, c));
        obj.put(text(tags::WINDOW_WIDTH, VR::DS, w));
    }
    if let Some((s, i)) = spec.rescale {
        obj.put(text(tags::RESCALE_SLOPE, VR::DS, s));
        obj.put(text(tags::RESCALE_INTERCEPT, VR::DS, i));
    }
    if spec.transfer_syntax == uids::EXPLICIT_VR_LITTLE_ENDIAN {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(spec.pixels.iter().copied().collect()),
        ));
    } else {
        // Encapsulated (compressed) data: one fragment of bytes that is not a valid codestream.
        let frag = PixelFragmentSequence::new_fragments(vec![vec![0xFFu8, 0x4F, 0xFF, 0x51, 0, 0, 0, 0]]);
        obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, frag));
    }
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(spec.transfer_syntax)
                .media_storage_sop_class_uid(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)
                .media_storage_sop_instance_uid("1.2.826.0.1.3680043.2.1"),
        )
        .unwrap();
    let path = dir.join(name);
    file.write_to_file(&path).unwrap();
    path
}

fn gray16(path: &Path) -> Vec<u16> {
    let img = decode_file(path, &DecodeLimits::default()).unwrap();
    assert_eq!((img.width, img.height), (2, 2));
    match img.pixels {
        Pixels::U16(v) => v,
        other => panic!("expected 16-bit output, got {other:?}"),
    }
}

#[test]
fn window_from_the_file_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_dicom(dir.path(), "w.dcm", Spec { window: Some(("2000", "2000")), ..Default::default() });
    let v = gray16(&p);
    // Linear window [1000, 3000]: 0 and 1000 are black, 4000 white, 2000 mid-grey.
    assert_eq!(v[0], 0);
    assert_eq!(v[1], 0);
    assert!((v[2] as i32 - 32768).abs() < 100, "{v:?}");
    assert_eq!(v[3], 65535);
}

#[test]
fn monochrome1_is_inverted() {
    let dir = tempfile::tempdir().unwrap();
    let m2 = gray16(&write_dicom(dir.path(), "m2.dcm", Spec { window: Some(("2000", "2000")), ..Default::default() }));
    let m1 = gray16(&write_dicom(
        dir.path(),
        "m1.dcm",
        Spec { photometric: "MONOCHROME1", window: Some(("2000", "2000")), ..Default::default() },
    ));
    for (a, b) in m1.iter().zip(&m2) {
        assert_eq!(*a as u32 + *b as u32, 65535, "{m1:?} vs {m2:?}");
    }
    let info = decode_file(&dir.path().join("m1.dcm"), &DecodeLimits::default()).unwrap().source;
    assert!(info.notes.iter().any(|n| n.contains("MONOCHROME1 inverted")), "{:?}", info.notes);
}

#[test]
fn rescale_is_applied_before_the_window() {
    let dir = tempfile::tempdir().unwrap();
    // Stored 0..4000 with slope 1, intercept -1000 → -1000..3000; window [0, 2000] on those.
    let p = write_dicom(
        dir.path(),
        "r.dcm",
        Spec { window: Some(("1000", "2000")), rescale: Some(("1", "-1000")), ..Default::default() },
    );
    let v = gray16(&p);
    assert_eq!(v[0], 0); // -1000
    assert_eq!(v[1], 0); // 0: the window's lower end
    assert!((v[2] as i32 - 32768).abs() < 100, "{v:?}"); // 1000: centre
    assert_eq!(v[3], 65535); // 3000
}

#[test]
fn without_window_the_stored_bit_range_maps_linearly() {
    let dir = tempfile::tempdir().unwrap();
    // 12 bits stored: 0..=4095 → 0..=65535.
    let v = gray16(&write_dicom(dir.path(), "n.dcm", Spec::default()));
    let want: Vec<u16> = [0.0, 1000.0, 2000.0, 4000.0].iter().map(|x: &f64| (x * 65535.0 / 4095.0).round() as u16).collect();
    assert_eq!(v, want);
    // MONOCHROME1 without a window is inverted too.
    let m1 = gray16(&write_dicom(dir.path(), "m1.dcm", Spec { photometric: "MONOCHROME1", ..Default::default() }));
    assert_eq!(m1, want.iter().map(|x| 65535 - x).collect::<Vec<_>>());
}

#[test]
fn unsupported_transfer_syntax_and_broken_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_dicom(dir.path(), "j2k.dcm", Spec { transfer_syntax: uids::JPEG2000_LOSSLESS, ..Default::default() });
    let e = decode_file(&p, &DecodeLimits::default()).unwrap_err().to_string();
    assert!(e.contains("j2k.dcm") && e.contains("1.2.840.10008.1.2.4.90"), "{e}");

    let good = write_dicom(dir.path(), "ok.dcm", Spec::default());
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let e = decode_file(&cut, &DecodeLimits::default()).unwrap_err().to_string();
    assert!(e.contains("cut.dcm"), "{e}");

    let big = decode_file(&good, &DecodeLimits { max_pixels: 3 }).unwrap_err().to_string();
    assert!(big.contains("above the limit"), "{big}");

    // A DICOM file with no image in it (a structured report, say).
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3")));
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.88.11")
                .media_storage_sop_instance_uid("1.2.3"),
        )
        .unwrap();
    let sr = dir.path().join("report.dcm");
    file.write_to_file(&sr).unwrap();
    let e = decode_file(&sr, &DecodeLimits::default()).unwrap_err().to_string();
    assert!(e.contains("report.dcm") && e.contains("not an image"), "{e}");
}

/// Bits Stored 0, 64 or 99 used to panic inside dicom-pixeldata (and a loader worker's panic
/// dropped its whole batch); now the header is checked first and the error names the file.
#[test]
fn absurd_bit_depths_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (stored, high) in [(0u16, 11u16), (64, 63), (99, 98), (12, 15), (12, 3)] {
        let p = write_dicom(dir.path(), &format!("bits{stored}_{high}.dcm"), Spec { bits_stored: stored, high_bit: high, ..Default::default() });
        let r = std::panic::catch_unwind(|| decode_file(&p, &DecodeLimits::default()));
        let e = r.expect("decoding must not panic").unwrap_err().to_string();
        assert!(e.contains(&format!("bits{stored}_{high}.dcm")) && e.contains("invalid DICOM header"), "{e}");
    }
}

/// A NaN (or infinite, or zero) Rescale Slope used to give an all-zero image.
#[test]
fn non_finite_or_zero_rescale_slopes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (i, slope) in ["NaN", "inf", "0", "abc"].into_iter().enumerate() {
        for window in [None, Some(("2000", "2000"))] {
            let p = write_dicom(dir.path(), &format!("slope{i}.dcm"), Spec { rescale: Some((slope, "0")), window, ..Default::default() });
            let e = decode_file(&p, &DecodeLimits::default()).unwrap_err().to_string();
            assert!(e.contains(&format!("slope{i}.dcm")) && e.contains("Rescale Slope"), "{slope}: {e}");
        }
    }
    let ok = write_dicom(dir.path(), "slope_ok.dcm", Spec { rescale: Some(("2", "0")), ..Default::default() });
    assert!(decode_file(&ok, &DecodeLimits::default()).is_ok());
}

#[test]
fn pixel_data_shorter_than_a_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_dicom(dir.path(), "short.dcm", Spec { pixels: &[0, 1000], ..Default::default() });
    let e = decode_file(&p, &DecodeLimits::default()).unwrap_err().to_string();
    assert!(e.contains("short.dcm") && e.contains("truncated"), "{e}");
}
