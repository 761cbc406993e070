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
//!
//! For the shortcut audit (issue 22) the phantoms can come from several synthetic sources
//! ([`SynthOptions`]): each phantom gets a `source_repo`, the classes can be confounded with the
//! sources (a share of each class goes to "its" source), each source can stamp its own marker
//! into a corner (as hospitals burn in letters and tokens), and the lesions can be left out, so
//! that nothing but the marker tells the classes apart.
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

/// Most synthetic sources there can be: one marker corner each.
pub const MAX_SOURCES: usize = 4;

/// What [`write_dataset_with`] generates.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub per_class: usize,
    pub size: usize,
    pub seed: u64,
    /// Which of [`CLASSES`] to draw (names), in that order.
    pub classes: Vec<String>,
    /// Synthetic sources (1 to [`MAX_SOURCES`]); with one, `source_repo` is `magsd/phantom` as
    /// before, with more `phantom-site-0`, `phantom-site-1`, ...
    pub sources: usize,
    /// Share of each class's phantoms that go to its own source (class j's is site j mod
    /// sources); the rest are spread evenly over the other sources. `None`: every phantom's
    /// source is drawn uniformly (no confounding).
    pub confounding: Option<f64>,
    /// Draw each source's marker: a white square of side size/8 in its own corner (site 0 top
    /// left, 1 bottom left, 2 top right, 3 bottom right: sites 0 and 1 stay apart under a
    /// horizontal flip).
    pub stamp: bool,
    /// Draw the class lesions (`false`: every phantom is healthy anatomy, labelled as before, so
    /// the label can only be learned from a marker).
    pub lesions: bool,
}

impl SynthOptions {
    /// `per_class` phantoms of every class, one source, lesions, no marker.
    pub fn new(per_class: usize, size: usize, seed: u64) -> Self {
        SynthOptions {
            per_class,
            size,
            seed,
            classes: CLASSES.iter().map(|c| c.to_string()).collect(),
            sources: 1,
            confounding: None,
            stamp: false,
            lesions: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(crate::Error::Config(m));
        if !(1..=MAX_SOURCES).contains(&self.sources) {
            return bad(format!("--sources {}: 1 to {MAX_SOURCES} synthetic sources", self.sources));
        }
        if let Some(p) = self.confounding
            && !(0.0..=1.0).contains(&p)
        {
            return bad(format!("--confounding {p}: a share between 0 and 1"));
        }
        if self.classes.is_empty() {
            return bad("--classes: at least one class".into());
        }
        for (i, c) in self.classes.iter().enumerate() {
            if !CLASSES.contains(&c.as_str()) {
                return bad(format!("--classes: '{c}' is not a phantom class ({})", CLASSES.join(", ")));
            }
            if self.classes[..i].contains(c) {
                return bad(format!("--classes: '{c}' given twice"));
            }
        }
        Ok(())
    }

    /// The name of source `s`.
    pub fn source_name(&self, s: usize) -> String {
        if self.sources == 1 { "magsd/phantom".into() } else { format!("phantom-site-{s}") }
    }

    /// The source of phantom `i` of the `position`-th chosen class.
    fn source_of(&self, position: usize, i: usize) -> usize {
        let k = self.sources;
        if k == 1 {
            return 0;
        }
        let mut rng = Rng::derive(self.seed, &[0x5_17E5, position as u64, i as u64]);
        let home = position % k;
        match self.confounding {
            None => rng.below(k as u64) as usize,
            Some(p) if rng.uniform() < p => home,
            Some(_) => {
                let other = rng.below(k as u64 - 1) as usize;
                if other >= home { other + 1 } else { other }
            }
        }
    }
}

/// Draws source `s`'s marker into a `size`×`size` image: a white square of side size/8 (at
/// least 3 pixels), inset by size/24, in corner `s` (see [`SynthOptions::stamp`]).
pub fn stamp_marker(image: &mut [u8], size: usize, s: usize) {
    let side = (size / 8).max(3);
    let inset = (size / 24).max(1);
    let (top, left) = match s % MAX_SOURCES {
        0 => (inset, inset),
        1 => (size - inset - side, inset),
        2 => (inset, size - inset - side),
        _ => (size - inset - side, size - inset - side),
    };
    for y in top..top + side {
        image[y * size + left..y * size + left + side].fill(255);
    }
}

const MANIFEST_HEADER: &str = "path,label,label3,split,patient_id,source_repo,source_commit,original_filename,original_finding,view,original_size_mode_format,license,source_url,dataset,note,mask";

/// Writes `per_class` phantoms of each class under `out/images/<class>/`, their masks under
/// `out/masks/<class>/`, and `out/manifest.csv`.
pub fn write_dataset(out: &Path, per_class: usize, size: usize, seed: u64) -> Result<SynthOutput> {
    write_dataset_with(out, &SynthOptions::new(per_class, size, seed))
}

/// [`write_dataset`] with sources, confounding, markers and lesions as `o` says. A phantom's
/// anatomy and lesion depend only on (seed, class, index), so the same seed draws the same
/// phantoms with and without markers.
pub fn write_dataset_with(out: &Path, o: &SynthOptions) -> Result<SynthOutput> {
    o.validate()?;
    let (size, seed) = (o.size, o.seed);
    let chosen: Vec<usize> = o.classes.iter().map(|c| CLASSES.iter().position(|k| k == c).expect("validated")).collect();
    for &c in &chosen {
        for sub in ["images", "masks"] {
            let d = out.join(sub).join(CLASSES[c]);
            std::fs::create_dir_all(&d).at(&d)?;
        }
    }
    let normal = CLASSES.iter().position(|&c| c == "normal").expect("normal is a class");
    let jobs: Vec<(usize, usize, usize)> =
        chosen.iter().enumerate().flat_map(|(pos, &c)| (0..o.per_class).map(move |i| (pos, c, i))).collect();
    let rows: Vec<String> = jobs
        .par_iter()
        .map(|&(pos, c, i)| -> Result<String> {
            let class = CLASSES[c];
            let mut rng = Rng::derive(seed, &[c as u64, i as u64]);
            let mut p = render(if o.lesions { c } else { normal }, size, &mut rng);
            let source = o.source_of(pos, i);
            if o.stamp {
                stamp_marker(&mut p.image, size, source);
            }
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
            let mask_cell = if class == "normal" || !o.lesions { String::new() } else { mask_rel };
            let finding = if o.lesions { finding } else { "none drawn (label only)" };
            let note = match (o.stamp, o.lesions) {
                (true, true) => "synthetic; source marker stamped",
                (true, false) => "synthetic; source marker stamped; no lesion",
                (false, true) => "synthetic",
                (false, false) => "synthetic; no lesion",
            };
            Ok(format!(
                "{img_rel},{class},{label3},train,phantom:{class}-{i},{},seed-{seed},{name},{finding},PA,{size}x{size} L PNG,CC0-1.0,,magsd phantom v1,{note},{mask_cell}",
                o.source_name(source)
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
        assert!(ds.samples.iter().all(|s| s.meta["source_repo"] == "magsd/phantom"));
    }

    #[test]
    fn sources_confound_the_classes_and_stamp_their_markers() {
        let d = tempfile::tempdir().unwrap();
        let o = SynthOptions {
            classes: vec!["covid19".into(), "normal".into()],
            sources: 2,
            confounding: Some(1.0),
            stamp: true,
            lesions: false,
            ..SynthOptions::new(4, 64, 3)
        };
        write_dataset_with(d.path(), &o).unwrap();
        let ds = crate::data::dataset::Dataset::open(d.path(), &Default::default()).unwrap();
        assert_eq!(ds.classes, vec!["covid19", "normal"]);
        for s in &ds.samples {
            let site = if ds.classes[s.label] == "covid19" { 0 } else { 1 };
            assert_eq!(s.meta["source_repo"], format!("phantom-site-{site}"));
            assert_eq!(s.meta["mask"], "", "no lesion, no mask");
            let img = image::open(&s.path).unwrap().to_luma8();
            // The marker's corner is white; the opposite corner on the same side is not.
            let (top, bottom) = (img.get_pixel(5, 5)[0], img.get_pixel(5, 58)[0]);
            if site == 0 { assert!(top == 255 && bottom < 255) } else { assert!(bottom == 255 && top < 255) }
        }
        // Without lesions a covid19 phantom is the normal anatomy drawn from its own seed.
        let plain = write_dataset_with(&d.path().join("plain"), &SynthOptions { stamp: false, ..o.clone() });
        assert!(plain.is_ok());
        // Uniform sources: both sites get phantoms of both classes.
        let mixed = SynthOptions { per_class: 20, confounding: None, ..o.clone() };
        let counts: Vec<usize> = (0..2).map(|pos| (0..20).filter(|&i| mixed.source_of(pos, i) == 0).count()).collect();
        assert!(counts.iter().all(|&c| (4..=16).contains(&c)), "{counts:?}");
        let partial = SynthOptions { per_class: 200, confounding: Some(0.9), ..o.clone() };
        let home = (0..200).filter(|&i| partial.source_of(1, i) == 1).count();
        assert!((160..=195).contains(&home), "{home} of 200 at home");
        assert!(write_dataset_with(d.path(), &SynthOptions { sources: 5, ..o.clone() }).is_err());
        assert!(write_dataset_with(d.path(), &SynthOptions { classes: vec!["flu".into()], ..o }).is_err());
    }
}
