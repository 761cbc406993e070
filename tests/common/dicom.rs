//! The one DICOM writer of the tests: a single-frame grey image (or a file with no image) with
//! the header fields that the tests vary, written with dicom-object.
use std::path::Path;

use dicom_core::value::PixelFragmentSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// The samples of the one frame, stored as they are given (native transfer syntaxes).
pub enum Samples {
    U8(Vec<u8>),
    U16(Vec<u16>),
    /// No Pixel Data and no image header: a DICOM file that is not an image.
    NoImage,
}

/// A DICOM file's content. `Dicom::default()` is a 2×2 MONOCHROME2 image of 12 bits stored in
/// 16, values 0, 1000, 2000, 4000, explicit VR little endian, without window or rescale.
pub struct Dicom<'a> {
    pub sop_class: &'a str,
    pub photometric: &'a str,
    pub rows: u16,
    pub columns: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub high_bit: u16,
    pub samples: Samples,
    /// (Window Center, Window Width) as the file writes them.
    pub window: Option<(&'a str, &'a str)>,
    /// (Rescale Slope, Rescale Intercept) as the file writes them.
    pub rescale: Option<(&'a str, &'a str)>,
    /// A compressed (encapsulated) syntax gets one fragment of bytes that is not a valid
    /// codestream in place of the samples.
    pub transfer_syntax: &'a str,
}

impl Default for Dicom<'_> {
    fn default() -> Self {
        Dicom {
            sop_class: uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
            photometric: "MONOCHROME2",
            rows: 2,
            columns: 2,
            bits_allocated: 16,
            bits_stored: 12,
            high_bit: 11,
            samples: Samples::U16(vec![0, 1000, 2000, 4000]),
            window: None,
            rescale: None,
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN,
        }
    }
}

impl Dicom<'_> {
    /// An 8-bit image of `img`'s grey levels.
    pub fn gray8(img: &image::GrayImage) -> Self {
        Dicom {
            rows: img.height() as u16,
            columns: img.width() as u16,
            bits_allocated: 8,
            bits_stored: 8,
            high_bit: 7,
            samples: Samples::U8(img.as_raw().clone()),
            ..Default::default()
        }
    }

    /// A `side`×`side` image of 12 bits stored in 16.
    pub fn gray12(side: u16, samples: Vec<u16>) -> Self {
        Dicom { rows: side, columns: side, samples: Samples::U16(samples), ..Default::default() }
    }

    /// A DICOM file with no image in it (a structured report).
    pub fn no_image() -> Self {
        Dicom { sop_class: "1.2.840.10008.5.1.4.1.1.88.11", samples: Samples::NoImage, ..Default::default() }
    }

    /// The whole file: preamble, `DICM`, file meta group and data set.
    pub fn bytes(&self) -> Vec<u8> {
        const INSTANCE: &str = "1.2.826.0.1.3680043.2.1";
        let mut obj = InMemDicomObject::new_empty();
        let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        obj.put(text(tags::SOP_CLASS_UID, VR::UI, self.sop_class));
        obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, INSTANCE));
        if !matches!(self.samples, Samples::NoImage) {
            obj.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, self.photometric));
            obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
            obj.put(us(tags::ROWS, self.rows));
            obj.put(us(tags::COLUMNS, self.columns));
            obj.put(us(tags::BITS_ALLOCATED, self.bits_allocated));
            obj.put(us(tags::BITS_STORED, self.bits_stored));
            obj.put(us(tags::HIGH_BIT, self.high_bit));
            obj.put(us(tags::PIXEL_REPRESENTATION, 0));
        }
        if let Some((c, w)) = self.window {
            obj.put(text(tags::WINDOW_CENTER, VR::DS, c));
            obj.put(text(tags::WINDOW_WIDTH, VR::DS, w));
        }
        if let Some((s, i)) = self.rescale {
            obj.put(text(tags::RESCALE_SLOPE, VR::DS, s));
            obj.put(text(tags::RESCALE_INTERCEPT, VR::DS, i));
        }
        let native = [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN].contains(&self.transfer_syntax);
        match &self.samples {
            Samples::NoImage => {}
            _ if !native => {
                let frag = PixelFragmentSequence::new_fragments(vec![vec![0xFFu8, 0x4F, 0xFF, 0x51, 0, 0, 0, 0]]);
                obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, frag));
            }
            Samples::U8(v) => {
                obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(v.iter().copied().collect())));
            }
            Samples::U16(v) => {
                obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(v.iter().copied().collect())));
            }
        }
        let file = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(self.transfer_syntax)
                    .media_storage_sop_class_uid(self.sop_class)
                    .media_storage_sop_instance_uid(INSTANCE),
            )
            .unwrap();
        let mut out = Vec::new();
        file.write_all(&mut out).unwrap();
        out
    }

    /// Writes the file at `path` and returns `path`.
    pub fn write(&self, path: &Path) -> std::path::PathBuf {
        std::fs::write(path, self.bytes()).unwrap();
        path.to_path_buf()
    }
}
