//! Image-level training augmentation of Table 2 (spec §6 step 5), applied to the CLAHE'd image
//! on the 0–255 scale before z-scoring. Evaluation data is never augmented.
//!
//! The default, [`AugmentPolicy::AuthorsCode`], is what the authors' `main.py:45-50` does:
//! `RandomApply([ColorJitter(brightness=0.5, contrast=0.7), RandomRotation(120),
//! RandomResizedCrop(size, scale=(0.6, 1.0)), RandomHorizontalFlip(), RandomVerticalFlip()],
//! p=0.5)` — with probability 0.5 the whole chain runs, otherwise nothing. Brightness is then
//! a factor U[0.5, 1.5], contrast U[0.3, 1.7] (in random order, as ColorJitter does) and the
//! rotation U[−120°, 120°]. [`AugmentPolicy::Paper`] uses Table 2's ranges (brightness
//! [0.5, 1.0], contrast [0.7, 1.0], rotation [0°, 120°]) and applies each of the five
//! transforms independently with p = 0.5 ("a random number of transformations").
//!
//! The operations follow torchvision's PIL semantics (brightness blends with black, contrast
//! with the rounded mean grey, rotation about the centre with nearest sampling and black fill,
//! resized crop with bilinear sampling) but stay in floating point between steps instead of
//! rounding to 8 bits after each one.
use serde::{Deserialize, Serialize};

use super::preprocess::{Plane, half_pixel_taps};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AugmentPolicy {
    /// The authors' code: all five transforms or none, p = 0.5, wide ranges.
    #[default]
    AuthorsCode,
    /// The paper's Table 2 ranges, each transform independently with p = 0.5.
    Paper,
    /// A horizontal flip with p = 0.5 and nothing else (the demo's phantoms, whose lesions can
    /// sit in either lung).
    Flip,
    /// No image-level augmentation.
    None,
}

/// The name used on the command line (`authors-code`, `paper`, `none`).
impl std::fmt::Display for AugmentPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AugmentPolicy::AuthorsCode => "authors-code",
            AugmentPolicy::Paper => "paper",
            AugmentPolicy::Flip => "flip",
            AugmentPolicy::None => "none",
        })
    }
}

/// Parameters of one draw of the chain; `None` means the transform is skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AugmentDraw {
    /// Brightness and contrast factors, in the order they are applied.
    pub jitter: Vec<Jitter>,
    pub rotation_deg: Option<f64>,
    /// Crop (top, left, height, width) resized back to the full size.
    pub crop: Option<(usize, usize, usize, usize)>,
    pub hflip: bool,
    pub vflip: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Jitter {
    Brightness(f64),
    Contrast(f64),
}

impl AugmentPolicy {
    /// Draws the random parameters for one `width`×`height` image.
    pub fn draw(self, rng: &mut Rng, width: usize, height: usize) -> AugmentDraw {
        let mut d = AugmentDraw::default();
        match self {
            AugmentPolicy::None => {}
            AugmentPolicy::Flip => d.hflip = rng.bernoulli(0.5),
            AugmentPolicy::AuthorsCode => {
                if rng.bernoulli(0.5) {
                    let b = Jitter::Brightness(rng.range(0.5, 1.5));
                    let c = Jitter::Contrast(rng.range(0.3, 1.7));
                    d.jitter = if rng.bernoulli(0.5) { vec![b, c] } else { vec![c, b] };
                    d.rotation_deg = Some(rng.range(-120.0, 120.0));
                    d.crop = Some(random_resized_crop(rng, width, height, (0.6, 1.0), (0.75, 4.0 / 3.0)));
                    d.hflip = rng.bernoulli(0.5);
                    d.vflip = rng.bernoulli(0.5);
                }
            }
            AugmentPolicy::Paper => {
                if rng.bernoulli(0.5) {
                    let b = Jitter::Brightness(rng.range(0.5, 1.0));
                    let c = Jitter::Contrast(rng.range(0.7, 1.0));
                    d.jitter = if rng.bernoulli(0.5) { vec![b, c] } else { vec![c, b] };
                }
                if rng.bernoulli(0.5) {
                    d.rotation_deg = Some(rng.range(0.0, 120.0));
                }
                if rng.bernoulli(0.5) {
                    d.crop = Some(random_resized_crop(rng, width, height, (0.6, 1.0), (0.75, 4.0 / 3.0)));
                }
                d.hflip = rng.bernoulli(0.5);
                d.vflip = rng.bernoulli(0.5);
            }
        }
        d
    }
}

impl AugmentDraw {
    pub fn is_identity(&self) -> bool {
        *self == AugmentDraw::default()
    }

    /// Applies the drawn chain in torchvision's order: jitter, rotation, crop, flips.
    pub fn apply(&self, p: &Plane) -> Plane {
        let mut out = p.clone();
        for j in &self.jitter {
            match *j {
                Jitter::Brightness(f) => brightness(&mut out, f),
                Jitter::Contrast(f) => contrast(&mut out, f),
            }
        }
        if let Some(a) = self.rotation_deg {
            out = rotate(&out, a);
        }
        if let Some((top, left, h, w)) = self.crop {
            out = crop_resize_plane(&out, top, left, h, w, p.width, p.height);
        }
        if self.hflip {
            hflip(&mut out);
        }
        if self.vflip {
            vflip(&mut out);
        }
        out
    }
}

/// `ImageEnhance.Brightness`: blend with black, clamp to [0, 255].
pub fn brightness(p: &mut Plane, factor: f64) {
    for v in &mut p.data {
        *v = (*v as f64 * factor).clamp(0.0, 255.0) as f32;
    }
}

/// `ImageEnhance.Contrast` on a gray image: blend with the mean grey rounded to an integer.
pub fn contrast(p: &mut Plane, factor: f64) {
    let mean = p.data.iter().map(|&v| v as f64).sum::<f64>() / p.data.len() as f64;
    let mean = (mean + 0.5).floor();
    for v in &mut p.data {
        *v = (mean + factor * (*v as f64 - mean)).clamp(0.0, 255.0) as f32;
    }
}

/// Counter-clockwise rotation by `deg` about the image centre, nearest neighbour, black fill,
/// same size (PIL `Image.rotate(deg, NEAREST, expand=False, fillcolor=0)`).
pub fn rotate(p: &Plane, deg: f64) -> Plane {
    let (w, h) = (p.width, p.height);
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let a = -deg.to_radians();
    let (cos, sin) = (a.cos(), a.sin());
    let mut out = Plane::filled(w, h, 0.0);
    for y in 0..h {
        let yo = y as f64 + 0.5 - cy;
        for x in 0..w {
            let xo = x as f64 + 0.5 - cx;
            let xs = cos * xo + sin * yo + cx;
            let ys = -sin * xo + cos * yo + cy;
            if xs >= 0.0 && ys >= 0.0 && xs < w as f64 && ys < h as f64 {
                out.data[y * w + x] = p.at(xs as usize, ys as usize);
            }
        }
    }
    out
}

/// torchvision `RandomResizedCrop.get_params`: 10 tries at a random area and aspect ratio,
/// then the central crop of the clamped aspect ratio. Returns (top, left, height, width).
pub fn random_resized_crop(
    rng: &mut Rng,
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.int_inclusive(0, (height - h) as i64) as usize;
            let left = rng.int_inclusive(0, (width - w) as i64) as usize;
            return (top, left, h, w);
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, (width as f64 / ratio.0).round() as usize)
    } else if in_ratio > ratio.1 {
        ((height as f64 * ratio.1).round() as usize, height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Bilinear resize of a crop to `out_w`×`out_h` (half-pixel centres, edge clamped — the
/// `align_corners=False` convention).
pub fn crop_resize_plane(p: &Plane, top: usize, left: usize, h: usize, w: usize, out_w: usize, out_h: usize) -> Plane {
    let (xt, yt) = (half_pixel_taps(w, out_w), half_pixel_taps(h, out_h));
    let mut out = Plane::filled(out_w, out_h, 0.0);
    for (dy, &(y0, y1, fy)) in yt.iter().enumerate() {
        for (dx, &(x0, x1, fx)) in xt.iter().enumerate() {
            let at = |x: usize, y: usize| p.at(left + x, top + y);
            let v = (1.0 - fy) * ((1.0 - fx) * at(x0, y0) + fx * at(x1, y0))
                + fy * ((1.0 - fx) * at(x0, y1) + fx * at(x1, y1));
            out.data[dy * out_w + dx] = v;
        }
    }
    out
}

pub fn hflip(p: &mut Plane) {
    for row in p.data.chunks_mut(p.width) {
        row.reverse();
    }
}

pub fn vflip(p: &mut Plane) {
    let w = p.width;
    let h = p.height;
    for y in 0..h / 2 {
        for x in 0..w {
            p.data.swap(y * w + x, (h - 1 - y) * w + x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Plane {
        Plane::new(w, h, (0..w * h).map(|i| (i % 251) as f32).collect())
    }

    #[test]
    fn none_policy_is_identity_and_authors_code_is_all_or_nothing() {
        let mut rng = Rng::new(1);
        assert!(AugmentPolicy::None.draw(&mut rng, 32, 32).is_identity());
        let (mut on, mut off) = (0, 0);
        for _ in 0..400 {
            let d = AugmentPolicy::AuthorsCode.draw(&mut rng, 32, 32);
            if d.is_identity() {
                off += 1;
            } else {
                // All five transforms are drawn together (flips individually at p = 0.5).
                assert_eq!(d.jitter.len(), 2);
                assert!(d.rotation_deg.unwrap().abs() <= 120.0);
                assert!(d.crop.is_some());
                on += 1;
            }
        }
        assert!((150..250).contains(&on) && on + off == 400, "{on}");
    }

    #[test]
    fn paper_policy_uses_table2_ranges() {
        let mut rng = Rng::new(2);
        for _ in 0..300 {
            let d = AugmentPolicy::Paper.draw(&mut rng, 32, 32);
            for j in &d.jitter {
                match *j {
                    Jitter::Brightness(f) => assert!((0.5..=1.0).contains(&f)),
                    Jitter::Contrast(f) => assert!((0.7..=1.0).contains(&f)),
                }
            }
            if let Some(a) = d.rotation_deg {
                assert!((0.0..=120.0).contains(&a));
            }
        }
    }

    #[test]
    fn flips_are_exact_and_involutive() {
        let p = ramp(5, 3);
        let mut q = p.clone();
        hflip(&mut q);
        assert_eq!(q.at(0, 1), p.at(4, 1));
        hflip(&mut q);
        vflip(&mut q);
        assert_eq!(q.at(2, 0), p.at(2, 2));
        vflip(&mut q);
        assert_eq!(q, p);
    }

    #[test]
    fn rotation_by_zero_is_identity_and_by_180_reverses() {
        let p = ramp(6, 4);
        assert_eq!(rotate(&p, 0.0), p);
        let r = rotate(&p, 180.0);
        assert_eq!(r.at(0, 0), p.at(5, 3));
        assert_eq!(r.at(5, 3), p.at(0, 0));
        // 90° turns a square counter-clockwise: the top-right corner goes to the top-left.
        let s = ramp(4, 4);
        assert_eq!(rotate(&s, 90.0).at(0, 0), s.at(3, 0));
    }

    #[test]
    fn brightness_and_contrast_clamp_and_keep_the_mean_grey() {
        let mut p = Plane::new(2, 1, vec![100.0, 200.0]);
        brightness(&mut p, 1.5);
        assert_eq!(p.data, vec![150.0, 255.0]);
        let mut q = Plane::new(2, 1, vec![100.0, 200.0]);
        contrast(&mut q, 0.0);
        assert_eq!(q.data, vec![150.0, 150.0]);
    }

    #[test]
    fn resized_crop_of_the_full_image_is_identity_and_params_stay_inside() {
        let p = ramp(7, 5);
        assert_eq!(crop_resize_plane(&p, 0, 0, 5, 7, 7, 5), p);
        let mut rng = Rng::new(3);
        for _ in 0..200 {
            let (t, l, h, w) = random_resized_crop(&mut rng, 40, 30, (0.6, 1.0), (0.75, 4.0 / 3.0));
            assert!(t + h <= 30 && l + w <= 40 && h > 0 && w > 0);
            let area = (h * w) as f64 / 1200.0;
            assert!(area > 0.5 && area <= 1.0, "{area}");
        }
    }
}
