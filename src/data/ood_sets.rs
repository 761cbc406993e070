//! Images that are not valid chest X-ray inputs, built without a download, for
//! `magsd ood-eval`: constant images, noise, gradients, the phantoms of `magsd data synth`, and
//! chest X-rays transformed so that they are no longer valid inputs (inverted, rotated by 90°,
//! heavily cropped). Every set is seeded and the same on every machine.
use super::decode::{GrayImage, Pixels};
use super::synth;
use crate::rng::Rng;

/// One generated image and its name in reports.
pub struct OodImage {
    pub name: String,
    pub image: GrayImage,
}

fn gray(size: usize, f: impl Fn(usize, usize) -> f64) -> GrayImage {
    let data = (0..size * size).map(|i| f(i % size, i / size).round().clamp(0.0, 255.0) as u8).collect();
    GrayImage::from_u8(size, size, data)
}

/// 16 constant images, from black (0) to white (255) in steps of 17: what a blank, a grey or a
/// single-colour image (colours decode to a constant grey) gives.
pub fn constant(size: usize) -> Vec<OodImage> {
    (0..16).map(|i| OodImage { name: format!("constant-{}", 17 * i), image: gray(size, |_, _| 17.0 * i as f64) }).collect()
}

/// 16 noise images: uniform over 0–255 (6), Gaussian around mid-grey with σ 20 and 60 (3 each),
/// salt and pepper over mid-grey at 10 % and 40 % (2 each).
pub fn noise(size: usize, seed: u64) -> Vec<OodImage> {
    let mut out = Vec::new();
    let normal = |rng: &mut Rng| {
        // Box–Muller.
        let (u, v) = (rng.range(f64::EPSILON, 1.0), rng.range(0.0, 1.0));
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    for i in 0..16u64 {
        let mut rng = Rng::derive(seed, &[7, i]);
        let (name, data): (String, Vec<f64>) = match i {
            0..=5 => ("uniform".into(), (0..size * size).map(|_| rng.range(0.0, 255.0)).collect()),
            6..=11 => {
                let sigma = if i < 9 { 20.0 } else { 60.0 };
                (format!("gaussian-{sigma}"), (0..size * size).map(|_| 128.0 + sigma * normal(&mut rng)).collect())
            }
            _ => {
                let p = if i < 14 { 0.1 } else { 0.4 };
                let v = (0..size * size)
                    .map(|_| if rng.range(0.0, 1.0) < p { if rng.range(0.0, 1.0) < 0.5 { 0.0 } else { 255.0 } } else { 128.0 })
                    .collect();
                (format!("salt-pepper-{p}"), v)
            }
        };
        let image = gray(size, |x, y| data[y * size + x]);
        out.push(OodImage { name: format!("noise-{name}-{i}"), image });
    }
    out
}

/// 16 smooth gradients: horizontal, vertical, diagonal and radial, each rising and falling,
/// over the full 0–255 range and over 64–192.
pub fn gradients(size: usize) -> Vec<OodImage> {
    let mut out = Vec::new();
    let s = (size.max(2) - 1) as f64;
    type Shape = (&'static str, fn(f64, f64) -> f64);
    let shapes: [Shape; 4] = [
        ("horizontal", |u, _| u),
        ("vertical", |_, v| v),
        ("diagonal", |u, v| (u + v) / 2.0),
        ("radial", |u, v| (((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt() / 0.5f64.sqrt()).min(1.0)),
    ];
    for (name, f) in shapes {
        for (lo, hi) in [(0.0, 255.0), (64.0, 192.0)] {
            for rising in [true, false] {
                let image = gray(size, |x, y| {
                    let t = f(x as f64 / s, y as f64 / s);
                    let t = if rising { t } else { 1.0 - t };
                    lo + (hi - lo) * t
                });
                out.push(OodImage { name: format!("gradient-{name}-{lo}-{hi}-{}", if rising { "up" } else { "down" }), image });
            }
        }
    }
    out
}

/// `n` phantom radiographs of `magsd data synth` (classes in turn).
pub fn phantoms(size: usize, seed: u64, n: usize) -> Vec<OodImage> {
    (0..n)
        .map(|i| {
            let class = i % synth::CLASSES.len();
            let p = synth::render(class, size, &mut Rng::derive(seed, &[11, i as u64]));
            OodImage { name: format!("phantom-{}-{i}", synth::CLASSES[class]), image: GrayImage::from_u8(size, size, p.image) }
        })
        .collect()
}

/// The pixels with `f` applied to each value (`max` is the type's largest value).
fn map_pixels(img: &GrayImage, f: impl Fn(u32, u32) -> u32) -> GrayImage {
    let pixels = match &img.pixels {
        Pixels::U8(v) => Pixels::U8(v.iter().map(|&p| f(u32::from(p), 255) as u8).collect()),
        Pixels::U16(v) => Pixels::U16(v.iter().map(|&p| f(u32::from(p), 65535) as u16).collect()),
    };
    GrayImage { pixels, ..img.clone() }
}

/// Photometric inversion (a negative: bones dark, air bright).
pub fn inverted(img: &GrayImage) -> GrayImage {
    map_pixels(img, |p, max| max - p)
}

/// Picks pixels `(x, y)` of the source for each output position of a `w × h` image.
fn remap(img: &GrayImage, w: usize, h: usize, at: impl Fn(usize, usize) -> (usize, usize)) -> GrayImage {
    let idx = |x: usize, y: usize| {
        let (sx, sy) = at(x, y);
        sy * img.width + sx
    };
    let pixels = match &img.pixels {
        Pixels::U8(v) => Pixels::U8((0..w * h).map(|i| v[idx(i % w, i / w)]).collect()),
        Pixels::U16(v) => Pixels::U16((0..w * h).map(|i| v[idx(i % w, i / w)]).collect()),
    };
    GrayImage { width: w, height: h, pixels, source: img.source.clone() }
}

/// Rotated by 90° clockwise (the patient lying on their side).
pub fn rotated90(img: &GrayImage) -> GrayImage {
    let (w, h) = (img.width, img.height);
    // Output (x, y) of an h × w image shows source (y, h − 1 − x).
    remap(img, h, w, |x, y| (y, h - 1 - x))
}

/// The central `fraction` of each side (0.3: a patch of the mid-chest, no lung outline left).
pub fn center_crop(img: &GrayImage, fraction: f64) -> GrayImage {
    let (w, h) = (img.width, img.height);
    let (cw, ch) = (((w as f64 * fraction).round() as usize).max(1), ((h as f64 * fraction).round() as usize).max(1));
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    remap(img, cw, ch, |x, y| (x0 + x, y0 + y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_move_pixels_where_they_should() {
        // 3 × 2 image: rows [0 1 2], [3 4 5].
        let img = GrayImage::from_u8(3, 2, vec![0, 1, 2, 3, 4, 5]);
        let r = rotated90(&img);
        assert_eq!((r.width, r.height), (2, 3));
        // Clockwise: the left column read bottom-up becomes the top row.
        assert!(matches!(&r.pixels, Pixels::U8(v) if v == &vec![3, 0, 4, 1, 5, 2]));
        assert!(matches!(&inverted(&img).pixels, Pixels::U8(v) if v == &vec![255, 254, 253, 252, 251, 250]));
        let c = center_crop(&GrayImage::from_u8(4, 4, (0..16).collect()), 0.5);
        assert!(matches!(&c.pixels, Pixels::U8(v) if v == &vec![5, 6, 9, 10]));
    }

    #[test]
    fn every_generated_set_has_sixteen_images_of_the_size_asked() {
        for set in [constant(32), noise(32, 1), gradients(32), phantoms(32, 1, 16)] {
            assert_eq!(set.len(), 16);
            assert!(set.iter().all(|i| i.image.width == 32 && i.image.height == 32));
        }
        let a = noise(16, 3);
        let b = noise(16, 3);
        assert!(a.iter().zip(&b).all(|(x, y)| matches!((&x.image.pixels, &y.image.pixels), (Pixels::U8(p), Pixels::U8(q)) if p == q)));
    }
}
