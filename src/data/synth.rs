//! Procedural chest-radiograph phantoms with known lesions, for the embedded demo and tests.
//!
//! Each image has a thorax outline, two lung fields, ribs, clavicles, the spine and the heart
//! shadow, with anatomy, contrast, brightness and noise that vary between images, plus a
//! class-specific lesion pattern inside the lungs:
//!
//! * `covid19`: bilateral, peripheral ground-glass opacities (2–4 soft patches near the outer
//!   lung borders, both lungs);
//! * `bacterial`: lobar consolidation (one dense region filling the lower or middle part of one
//!   lung, with a fairly sharp upper border);
//! * `viral`: patchy interstitial opacities (many small streaks fanning out from both hila);
//! * `normal`: none.
//!
//! The lesion's exact pixel mask (where it raises the image by ≥ 8 grey levels) is saved beside
//! each image. Everything is a function of the seed. The manifest has the columns of the shared
//! data's manifest plus `mask`, so every command reads it unchanged.
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{IoContext, Result};
use crate::rng::Rng;

pub const CLASSES: [&str; 4] = ["covid19", "bacterial", "viral", "normal"];

/// The grey levels a lesion must add for a pixel to count as lesion in the mask.
const MASK_LEVEL: f32 = 8.0;

pub struct Phantom {
    pub image: Vec<u8>,
    pub mask: Vec<bool>,
    pub size: usize,
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Soft inside-ness of an ellipse: 1 inside, 0 outside, smooth over `edge` (normalised units).
fn ellipse(u: f32, v: f32, cu: f32, cv: f32, ru: f32, rv: f32, edge: f32) -> f32 {
    let d = (((u - cu) / ru).powi(2) + ((v - cv) / rv).powi(2)).sqrt();
    1.0 - smoothstep(1.0 - edge, 1.0 + edge, d)
}

fn gauss(u: f32, v: f32, cu: f32, cv: f32, su: f32, sv: f32) -> f32 {
    (-0.5 * (((u - cu) / su).powi(2) + ((v - cv) / sv).powi(2))).exp()
}

struct Lung {
    cu: f32,
    cv: f32,
    ru: f32,
    rv: f32,
}

/// Renders one phantom of class `class` (an index into [`CLASSES`]).
pub fn render(class: usize, size: usize, rng: &mut Rng) -> Phantom {
    let j = |rng: &mut Rng, a: f64| rng.range(-a, a) as f32;
    let body = (0.5 + j(rng, 0.02), 0.56 + j(rng, 0.02), 0.45 + j(rng, 0.03), 0.52 + j(rng, 0.03));
    let tissue = 118.0 + j(rng, 15.0);
    let air_in_lung = 42.0 + j(rng, 10.0);
    let lungs = [
        Lung { cu: 0.31 + j(rng, 0.02), cv: 0.47 + j(rng, 0.02), ru: 0.15 + j(rng, 0.015), rv: 0.29 + j(rng, 0.02) },
        Lung { cu: 0.69 + j(rng, 0.02), cv: 0.47 + j(rng, 0.02), ru: 0.14 + j(rng, 0.015), rv: 0.28 + j(rng, 0.02) },
    ];
    let heart = (0.56 + j(rng, 0.02), 0.64 + j(rng, 0.02), 0.13 + j(rng, 0.015), 0.12 + j(rng, 0.015));
    let rib_phase = rng.range(0.0, 1.0) as f32;
    let rib_gap = 0.075 + j(rng, 0.006);

    // Lesion field (grey levels added), built from a list of Gaussian patches.
    let mut patches: Vec<(f32, f32, f32, f32, f32)> = Vec::new(); // (cu, cv, su, sv, amplitude)
    let mut lobar: Option<(usize, f32, f32)> = None; // (lung, upper border v, amplitude)
    match CLASSES[class] {
        "covid19" => {
            let n = 2 + rng.below(3) as usize;
            for k in 0..n {
                let l = &lungs[k % 2]; // alternate: always bilateral
                let outward = if k % 2 == 0 { -1.0 } else { 1.0 };
                let cu = l.cu + outward * l.ru * rng.range(0.45, 0.75) as f32;
                let cv = l.cv + l.rv * rng.range(-0.2, 0.65) as f32;
                let s = rng.range(0.045, 0.07) as f32;
                patches.push((cu, cv, s, s * rng.range(1.0, 1.6) as f32, rng.range(32.0, 48.0) as f32));
            }
        }
        "bacterial" => {
            let lung = rng.below(2) as usize;
            let l = &lungs[lung];
            lobar = Some((lung, l.cv + l.rv * rng.range(-0.1, 0.35) as f32, rng.range(60.0, 80.0) as f32));
        }
        "viral" => {
            let n = 10 + rng.below(8) as usize;
            for k in 0..n {
                let l = &lungs[k % 2];
                let inward = if k % 2 == 0 { 1.0 } else { -1.0 };
                let hilum = (l.cu + inward * l.ru * 0.45, l.cv + l.rv * 0.05);
                let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
                let dist = rng.range(0.03, 0.16) as f32;
                let (cu, cv) = (hilum.0 + dist * angle.cos() * 0.8, hilum.1 + dist * angle.sin());
                patches.push((cu, cv, rng.range(0.012, 0.022) as f32, rng.range(0.02, 0.035) as f32, rng.range(24.0, 38.0) as f32));
            }
        }
        _ => {}
    }

    let contrast = rng.range(0.85, 1.15) as f32;
    let brightness = j(rng, 10.0);
    let noise_sd = rng.range(2.0, 6.0);
    let mut noise = Rng::new(rng.next_u64());
    let s = size as f32;
    let mut img = vec![0f32; size * size];
    let mut mask = vec![false; size * size];
    for y in 0..size {
        for x in 0..size {
            let (u, v) = ((x as f32 + 0.5) / s, (y as f32 + 0.5) / s);
            let inside_body = ellipse(u, v, body.0, body.1, body.2, body.3, 0.04);
            let lung_in: Vec<f32> = lungs.iter().map(|l| ellipse(u, v, l.cu, l.cv, l.ru, l.rv, 0.08)).collect();
            let lung = lung_in[0].max(lung_in[1]);
            let mut val = 14.0 + inside_body * (tissue - 14.0);
            val += lung * (air_in_lung - tissue) * inside_body;
            // Ribs: bright bands that bow downwards away from the spine, over the lungs.
            let bow = 0.09 * (u - 0.5).abs().powf(1.6) * 4.0;
            let t = ((v - bow - rib_phase * rib_gap) / rib_gap).fract();
            let rib = gauss(t, 0.0, 0.5, 0.0, 0.12, 1.0) * smoothstep(0.12, 0.22, v) * (1.0 - smoothstep(0.78, 0.86, v));
            val += 22.0 * rib * lung;
            // Clavicles.
            for side in [-1.0f32, 1.0] {
                let cu = 0.5 + side * 0.2;
                val += 45.0 * gauss(u, v, cu, 0.16 + 0.05 * ((u - cu) * side), 0.12, 0.012) * inside_body;
            }
            // Heart and mediastinum, spine with vertebrae.
            val += 70.0 * ellipse(u, v, heart.0, heart.1, heart.2, heart.3, 0.15) * inside_body;
            val += 60.0 * gauss(u, 0.0, 0.5, 0.0, 0.035, 1.0) * inside_body * (0.85 + 0.15 * (v * 60.0).sin());
            // Lesions, inside the lungs only.
            let mut lesion = 0.0;
            for &(cu, cv, su, sv, a) in &patches {
                lesion += a * gauss(u, v, cu, cv, su, sv);
            }
            if let Some((li, top, a)) = lobar {
                lesion += a * smoothstep(top - 0.015, top + 0.015, v) * lung_in[li];
            }
            lesion *= lung;
            if lesion >= MASK_LEVEL {
                mask[y * size + x] = true;
            }
            val += lesion;
            img[y * size + x] = val;
        }
    }
    // Mild blur (3×3 box) for a radiograph's softness, then global contrast, brightness, noise.
    let mut out = vec![0u8; size * size];
    for y in 0..size {
        for x in 0..size {
            let mut acc = 0.0;
            let mut n = 0.0;
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (xx, yy) = (x as i64 + dx, y as i64 + dy);
                    if xx >= 0 && yy >= 0 && xx < size as i64 && yy < size as i64 {
                        acc += img[yy as usize * size + xx as usize];
                        n += 1.0;
                    }
                }
            }
            let g = noise_sd * (-2.0 * noise.uniform().max(1e-12).ln()).sqrt() * (std::f64::consts::TAU * noise.uniform()).cos();
            let v = (acc / n - 128.0) * contrast + 128.0 + brightness + g as f32;
            out[y * size + x] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    Phantom { image: out, mask, size }
}

/// Where [`write_dataset`] put things.
pub struct SynthOutput {
    pub manifest: PathBuf,
    pub images: usize,
}

const MANIFEST_HEADER: &str = "path,label,label3,split,patient_id,source_repo,source_commit,original_filename,original_finding,view,original_size_mode_format,license,source_url,dataset,note,mask";

/// Writes `per_class` phantoms of each class under `out/images/<class>/`, their masks under
/// `out/masks/<class>/`, and `out/manifest.csv`.
pub fn write_dataset(out: &Path, per_class: usize, size: usize, seed: u64) -> Result<SynthOutput> {
    for c in CLASSES {
        for sub in ["images", "masks"] {
            let d = out.join(sub).join(c);
            std::fs::create_dir_all(&d).at(&d)?;
        }
    }
    let jobs: Vec<(usize, usize)> = (0..CLASSES.len()).flat_map(|c| (0..per_class).map(move |i| (c, i))).collect();
    let rows: Vec<String> = jobs
        .par_iter()
        .map(|&(c, i)| -> Result<String> {
            let class = CLASSES[c];
            let mut rng = Rng::derive(seed, &[c as u64, i as u64]);
            let p = render(c, size, &mut rng);
            let name = format!("{class}_{i:04}.png");
            let img_rel = format!("images/{class}/{name}");
            let mask_rel = format!("masks/{class}/{name}");
            let save = |rel: &str, data: Vec<u8>| -> Result<()> {
                let path = out.join(rel);
                image::GrayImage::from_raw(size as u32, size as u32, data)
                    .expect("size matches")
                    .save(&path)
                    .map_err(|e| crate::Error::Data(format!("{}: {e}", path.display())))
            };
            save(&img_rel, p.image)?;
            save(&mask_rel, p.mask.iter().map(|&m| if m { 255 } else { 0 }).collect())?;
            let label3 = match class {
                "covid19" | "normal" => class,
                _ => "other_pneumonia",
            };
            let finding = match class {
                "covid19" => "bilateral peripheral ground-glass opacities",
                "bacterial" => "lobar consolidation",
                "viral" => "patchy interstitial opacities",
                _ => "no finding",
            };
            let mask_cell = if class == "normal" { String::new() } else { mask_rel };
            Ok(format!(
                "{img_rel},{class},{label3},train,phantom:{class}-{i},magsd/phantom,seed-{seed},{name},{finding},PA,{size}x{size} L PNG,CC0-1.0,,magsd phantom v1,synthetic,{mask_cell}"
            ))
        })
        .collect::<Result<_>>()?;
    let manifest = out.join("manifest.csv");
    let mut text = String::from(MANIFEST_HEADER);
    text.push('\n');
    for r in &rows {
        text.push_str(r);
        text.push('\n');
    }
    crate::error::write_atomic(&manifest, text.as_bytes())?;
    Ok(SynthOutput { manifest, images: rows.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantoms_are_deterministic_and_lesions_match_their_class() {
        let a = render(0, 96, &mut Rng::new(5));
        let b = render(0, 96, &mut Rng::new(5));
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
        let area = |c: usize, seed: u64| render(c, 96, &mut Rng::new(seed)).mask.iter().filter(|&&m| m).count();
        for seed in 0..5 {
            assert_eq!(area(3, seed), 0, "normal has no lesion");
            for (c, name) in CLASSES.iter().enumerate().take(3) {
                let n = area(c, seed);
                assert!(n > 30 && n < 96 * 96 / 3, "class {name} seed {seed}: lesion area {n}");
            }
        }
        // COVID-19 lesions are bilateral: mask pixels in both halves.
        let m = render(0, 96, &mut Rng::new(1)).mask;
        let left = m.iter().enumerate().filter(|&(i, &v)| v && i % 96 < 48).count();
        let right = m.iter().enumerate().filter(|&(i, &v)| v && i % 96 >= 48).count();
        assert!(left > 0 && right > 0);
    }

    #[test]
    fn dataset_has_images_masks_and_a_readable_manifest() {
        let d = tempfile::tempdir().unwrap();
        let out = write_dataset(d.path(), 3, 64, 1).unwrap();
        assert_eq!(out.images, 12);
        let ds = crate::data::dataset::Dataset::open(d.path(), &Default::default()).unwrap();
        assert_eq!(ds.samples.len(), 12);
        assert_eq!(ds.class_counts(), vec![3, 3, 3, 3]);
        assert!(ds.problems.is_empty(), "{:?}", ds.problems);
        let s = ds.samples.iter().find(|s| ds.classes[s.label] == "viral").unwrap();
        assert!(d.path().join(&s.meta["mask"]).is_file());
        assert_eq!(s.meta["label3"], "other_pneumonia");
    }
}
