//! Resize and CLAHE against OpenCV 5.0's own outputs in `../shared/reference/golden/`.
use std::path::PathBuf;

use magsd::data::preprocess::{ClaheConfig, clahe, resize_linear_u8};

fn golden(name: &str) -> (Vec<u8>, usize, usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/golden");
    let path = dir.join(name);
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    (img.into_raw(), w, h)
}

const CASES: [&str; 6] = ["cxr0", "cxr1", "cxr2", "odd301x257", "noise97x131", "flat64"];

#[test]
fn clahe_matches_opencv_bit_for_bit() {
    for case in CASES {
        let (src, w, h) = golden(&format!("{case}_in.png"));
        let (want, ww, wh) = golden(&format!("{case}_clahe_4.0_4x4.png"));
        assert_eq!((w, h), (ww, wh));
        let got = clahe(&src, w, h, &ClaheConfig::default());
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{case}: {diff} of {} pixels differ from OpenCV", w * h);
    }
}

#[test]
fn resize_matches_opencv_fixed_point() {
    for case in CASES {
        let (src, w, h) = golden(&format!("{case}_in.png"));
        let (want, ww, wh) = golden(&format!("{case}_resize224_linear.png"));
        assert_eq!((ww, wh), (224, 224));
        let got = resize_linear_u8(&src, w, h, 224, 224);
        let max = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{case}: {diff} pixels differ from OpenCV, by up to {max}");
    }
}
