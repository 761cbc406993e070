//! Localisation from attention (paper §4.5, Fig. 7; spec §5.1): a localisation map (the mean
//! attention map by default; `crate::model::maps` lists the others) is
//! upsampled bilinearly (align_corners = false) to the original image, thresholded, split into
//! 8-connected components, and each component becomes a box. The predicted region is the union
//! of the boxes; its IoU is measured against a ground-truth mask (PNG, non-zero = lesion) or
//! boxes (CSV `path,x0,y0,x1,y1`, end-exclusive pixel coordinates, several rows per image allowed).
//!
//! The authors threshold the mean map at an absolute 0.85 (`localize.py`); raw map values have
//! no fixed scale, so the default here is relative: 0.5 × the map's maximum. Both are options.
//! Images whose ground truth is empty (e.g. healthy lungs) have no IoU and are not counted.
//! The per-image scores that `crate::eval::saliency` compares maps by (pointing game, energy
//! pointing game, saliency AUROC, flip correlation) are here too.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::MapGrid;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Threshold {
    /// A fraction of the map's maximum.
    Relative(f32),
    /// A value of the (mean) attention map itself.
    Absolute(f32),
}

impl Threshold {
    /// `rel:0.5` or `abs:0.85` (a bare number is relative). A relative threshold must lie in
    /// (0, 1]: at 0 or below every pixel is selected (one box over the whole image), above 1 none
    /// is; an absolute one must be a finite value ≥ 0 (the maps are ≥ 0). Anything else would give
    /// no box, or one over the whole image, and an IoU that looks like a result.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Config(format!("threshold '{s}': use rel:0.5 or abs:0.85"));
        let (kind, v) = s.split_once(':').unwrap_or(("rel", s));
        let v: f32 = v.trim().parse().map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(Error::Config(format!("threshold '{s}': not a finite number")));
        }
        match kind.trim() {
            "rel" | "relative" if v > 0.0 && v <= 1.0 => Ok(Threshold::Relative(v)),
            "rel" | "relative" => Err(Error::Config(format!(
                "threshold '{s}': a relative threshold is a fraction of the map's maximum in (0, 1] \
                 (0 or less selects the whole image, more than 1 selects nothing)"
            ))),
            "abs" | "absolute" if v >= 0.0 => Ok(Threshold::Absolute(v)),
            "abs" | "absolute" => Err(Error::Config(format!(
                "threshold '{s}': an absolute threshold is a finite attention value ≥ 0 (the maps are ≥ 0)"
            ))),
            _ => Err(bad()),
        }
    }

    fn value(self, map: &[f32]) -> f32 {
        match self {
            Threshold::Absolute(v) => v,
            Threshold::Relative(f) => f * map.iter().cloned().fold(f32::MIN, f32::max),
        }
    }
}

/// The form `--threshold` takes: `rel:0.5` or `abs:0.85`.
impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Relative(v) => write!(f, "rel:{v}"),
            Threshold::Absolute(v) => write!(f, "abs:{v}"),
        }
    }
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Relative(0.5)
    }
}

/// A box, end-exclusive: columns `x0..x1`, rows `y0..y1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl BBox {
    pub fn area(&self) -> usize {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }
}

/// A map on `grid` resampled bilinearly to `w × h`, each cell's value at the cell's centre
/// ([`MapGrid`]); on a plain grid this is `F.interpolate(bilinear, align_corners=False)`.
pub fn upsample(map: &[f32], grid: MapGrid, w: usize, h: usize) -> Vec<f32> {
    let side = grid.side;
    let taps = |n_out: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|d| {
                let src = grid.position((d as f32 + 0.5) / n_out as f32);
                let i0 = (src as usize).min(side - 1);
                (i0, (i0 + 1).min(side - 1), src - i0 as f32)
            })
            .collect()
    };
    let (xt, yt) = (taps(w), taps(h));
    let mut out = vec![0.0; w * h];
    for (y, &(y0, y1, fy)) in yt.iter().enumerate() {
        for (x, &(x0, x1, fx)) in xt.iter().enumerate() {
            let at = |yy: usize, xx: usize| map[yy * side + xx];
            out[y * w + x] = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1.0 - fx) * at(y1, x0) + fx * at(y1, x1));
        }
    }
    out
}

/// Pixels at or above the threshold.
pub fn threshold_mask(up: &[f32], t: Threshold) -> Vec<bool> {
    let v = t.value(up);
    up.iter().map(|&x| x >= v).collect()
}

/// Bounding boxes of the 8-connected components of `mask` (`w × h`), largest first.
pub fn component_boxes(mask: &[bool], w: usize, h: usize) -> Vec<BBox> {
    let mut seen = vec![false; w * h];
    let mut boxes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || seen[start] {
            continue;
        }
        let (mut b, mut area) = (BBox { x0: w, y0: h, x1: 0, y1: 0 }, 0usize);
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            area += 1;
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x + 1);
            b.y1 = b.y1.max(y + 1);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        boxes.push((area, b));
    }
    boxes.sort_by_key(|b| std::cmp::Reverse(b.0));
    boxes.into_iter().map(|(_, b)| b).collect()
}

/// A `w × h` mask that is true inside any of the boxes.
pub fn boxes_mask(boxes: &[BBox], w: usize, h: usize) -> Vec<bool> {
    let mut m = vec![false; w * h];
    for b in boxes {
        for y in b.y0..b.y1.min(h) {
            for x in b.x0..b.x1.min(w) {
                m[y * w + x] = true;
            }
        }
    }
    m
}

/// Intersection over union of two masks; `None` when both are empty.
pub fn iou(a: &[bool], b: &[bool]) -> Option<f64> {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        inter += (x && y) as usize;
        union += (x || y) as usize;
    }
    (union > 0).then(|| inter as f64 / union as f64)
}

/// Predicted boxes of one image from its localisation map on `grid`.
pub fn predict_boxes(map: &[f32], grid: MapGrid, w: usize, h: usize, t: Threshold) -> Vec<BBox> {
    component_boxes(&threshold_mask(&upsample(map, grid, w, h), t), w, h)
}

/// The pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop",
/// here without the 15-pixel tolerance): 1 when the map's maximum lies in the lesion. Where
/// several pixels share the maximum (an upsampled plateau, a uniform map), the hit is the share
/// of them inside the lesion, the expected score of a random choice among them; a uniform map
/// thus scores the lesion's share of the image. `None` for an empty map or truth.
pub fn pointing_game(up: &[f32], truth: &[bool]) -> Option<f64> {
    let max = up.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() || !truth.iter().any(|&t| t) {
        return None;
    }
    let (mut at_max, mut inside) = (0usize, 0usize);
    for (&v, &t) in up.iter().zip(truth) {
        if v == max {
            at_max += 1;
            inside += t as usize;
        }
    }
    Some(inside as f64 / at_max as f64)
}

/// The energy-based pointing game (Wang et al. 2020, Score-CAM §4.2): the share of the map's
/// mass inside the lesion, `Σ_{lesion} L / Σ L` (maps are ≥ 0). `None` when the map has no mass
/// or the truth is empty.
pub fn energy_pointing_game(up: &[f32], truth: &[bool]) -> Option<f64> {
    let (mut inside, mut total) = (0.0f64, 0.0f64);
    for (&v, &t) in up.iter().zip(truth) {
        let v = f64::from(v.max(0.0));
        total += v;
        if t {
            inside += v;
        }
    }
    (total > 0.0 && truth.iter().any(|&t| t)).then(|| inside / total)
}

/// The map as a pixel classifier of the lesion: ROC AUC of its values against the mask (ties
/// count half, so a uniform map scores 0.5). `None` unless the mask has lesion and background.
pub fn saliency_auroc(up: &[f32], truth: &[bool]) -> Option<f64> {
    let scores: Vec<f64> = up.iter().map(|&v| f64::from(v)).collect();
    crate::eval::metrics::binary_auc(truth, &scores)
}

/// A `side × side` map mirrored left-right.
pub fn flip_lr(map: &[f32], side: usize) -> Vec<f32> {
    map.chunks(side).flat_map(|row| row.iter().rev().copied()).collect()
}

/// Pearson correlation of two maps; `None` when either is constant.
pub fn pearson(a: &[f32], b: &[f32]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().map(|&v| f64::from(v)).sum::<f64>() / n, b.iter().map(|&v| f64::from(v)).sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// Where the ground truth comes from.
pub enum GroundTruth {
    /// A manifest column holding mask image paths (relative to the manifest's folder).
    MaskColumn(String),
    /// A CSV of boxes: `path,x0,y0,x1,y1` (path as the dataset names the image).
    Boxes(HashMap<String, Vec<BBox>>),
}

impl GroundTruth {
    pub fn read_boxes(csv_path: &Path) -> Result<Self> {
        let text = crate::files::read(csv_path, crate::files::MAX_TEXT_BYTES, "boxes CSV")?;
        let mut r = csv::Reader::from_reader(text.as_slice());
        let mut out: HashMap<String, Vec<BBox>> = HashMap::new();
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| Error::bad_file(csv_path, format!("line {}: {e}", i + 2)))?;
            let num = |k: usize| -> Result<usize> {
                rec.get(k)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .map(|v| v.max(0.0).round() as usize)
                    .ok_or_else(|| Error::bad_file(csv_path, format!("line {}: expected path,x0,y0,x1,y1", i + 2)))
            };
            let b = BBox { x0: num(1)?, y0: num(2)?, x1: num(3)?, y1: num(4)? };
            out.entry(rec.get(0).unwrap_or("").trim().to_string()).or_default().push(b);
        }
        Ok(GroundTruth::Boxes(out))
    }

    /// The ground-truth mask of a sample at its original size, `None` when none is given.
    pub fn mask(&self, sample: &crate::data::dataset::Sample, base: &Path, w: usize, h: usize) -> Result<Option<Vec<bool>>> {
        match self {
            GroundTruth::Boxes(map) => Ok(map.get(&sample.name).map(|b| boxes_mask(b, w, h))),
            GroundTruth::MaskColumn(col) => {
                let Some(rel) = sample.meta.get(col).filter(|v| !v.is_empty()) else { return Ok(None) };
                let path: PathBuf = if Path::new(rel).is_absolute() { rel.into() } else { base.join(rel) };
                let bytes = crate::files::read_image(&path)?;
                let img = image::load_from_memory(&bytes).map_err(|e| Error::bad_file(&path, format!("cannot read mask: {e}")))?.to_luma8();
                let img = if (img.width() as usize, img.height() as usize) != (w, h) {
                    image::imageops::resize(&img, w as u32, h as u32, image::imageops::FilterType::Nearest)
                } else {
                    img
                };
                Ok(Some(img.pixels().map(|p| p[0] > 0).collect()))
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageLocalization {
    pub path: String,
    pub iou: f64,
    pub boxes: Vec<BBox>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalizationReport {
    pub threshold: Threshold,
    /// Images with a non-empty ground truth.
    pub n: usize,
    pub mean_iou: f64,
    pub frac_iou_above_025: f64,
    pub frac_iou_above_05: f64,
    pub images: Vec<ImageLocalization>,
}

impl LocalizationReport {
    pub fn from_images(threshold: Threshold, images: Vec<ImageLocalization>) -> Self {
        let n = images.len();
        let frac = |t: f64| if n == 0 { 0.0 } else { images.iter().filter(|i| i.iou > t).count() as f64 / n as f64 };
        LocalizationReport {
            threshold,
            n,
            mean_iou: if n == 0 { 0.0 } else { images.iter().map(|i| i.iou).sum::<f64>() / n as f64 },
            frac_iou_above_025: frac(0.25),
            frac_iou_above_05: frac(0.5),
            images,
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::error::write_atomic(path, &serde_json::to_vec_pretty(self).expect("serialises"))
    }
}

/// Localises every predicted image that has ground truth. `attention[i]` is the localisation map of
/// `indices[i]` (on `grid`); image sizes are read from the files' headers.
pub fn localize(
    ds: &crate::data::dataset::Dataset,
    indices: &[usize],
    attention: &[Vec<f32>],
    grid: MapGrid,
    gt: &GroundTruth,
    t: Threshold,
) -> Result<LocalizationReport> {
    let base = ds.base_dir();
    let mut images = Vec::new();
    for (&i, map) in indices.iter().zip(attention) {
        let s = &ds.samples[i];
        let (w, h) = image_size(&s.path)?;
        let Some(truth) = gt.mask(s, &base, w, h)? else { continue };
        if !truth.iter().any(|&v| v) {
            continue;
        }
        let boxes = predict_boxes(map, grid, w, h, t);
        let pred = boxes_mask(&boxes, w, h);
        images.push(ImageLocalization { path: s.name.clone(), iou: iou(&pred, &truth).unwrap_or(0.0), boxes });
    }
    Ok(LocalizationReport::from_images(t, images))
}

/// Width and height of an image file without decoding its pixels (PNG/JPEG), or by decoding (DICOM).
pub fn image_size(path: &Path) -> Result<(usize, usize)> {
    let bytes = crate::files::read_image(path)?;
    match image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format().ok().and_then(|r| r.into_dimensions().ok()) {
        Some((w, h)) => Ok((w as usize, h as usize)),
        None => {
            let img = crate::data::decode::decode_bytes(path, &bytes, &Default::default())?;
            Ok((img.width, img.height))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corner_peak_gives_the_known_box_and_iou() {
        // Top-left peak of a 2×2 map over 20×20: up(A) ≥ 0.5·max on rows/cols 0..=9.
        let boxes = predict_boxes(&[1.0, 0.0, 0.0, 0.0], MapGrid::plain(2), 20, 20, Threshold::Relative(0.5));
        assert_eq!(boxes, vec![BBox { x0: 0, y0: 0, x1: 10, y1: 10 }]);
        let pred = boxes_mask(&boxes, 20, 20);
        assert_eq!(iou(&pred, &boxes_mask(&boxes, 20, 20)), Some(1.0));
        // Against the square [5, 15)²: intersection 25, union 175.
        let truth = boxes_mask(&[BBox { x0: 5, y0: 5, x1: 15, y1: 15 }], 20, 20);
        assert!((iou(&pred, &truth).unwrap() - 25.0 / 175.0).abs() < 1e-12);
        // A uniform map selects everything: IoU = truth area / image area.
        let all = predict_boxes(&[1.0; 4], MapGrid::plain(2), 20, 20, Threshold::Relative(0.5));
        assert!((iou(&boxes_mask(&all, 20, 20), &truth).unwrap() - 100.0 / 400.0).abs() < 1e-12);
    }

    #[test]
    fn components_are_8_connected_and_separate_blobs_give_separate_boxes() {
        #[rustfmt::skip]
        let m = [
            1, 0, 0, 0, 0,
            0, 1, 0, 0, 1,
            0, 0, 0, 0, 1,
        ].map(|v| v == 1);
        let b = component_boxes(&m, 5, 3);
        assert_eq!(b.len(), 2);
        assert!(b.contains(&BBox { x0: 0, y0: 0, x1: 2, y1: 2 })); // diagonal neighbours join
        assert!(b.contains(&BBox { x0: 4, y0: 1, x1: 5, y1: 3 }));
    }

    #[test]
    fn pointing_energy_and_auroc_by_hand() {
        // 2×2 image, lesion = the top-left pixel.
        let truth = [true, false, false, false];
        assert_eq!(pointing_game(&[0.9, 0.1, 0.2, 0.3], &truth), Some(1.0)); // maximum inside
        assert_eq!(pointing_game(&[0.1, 0.9, 0.2, 0.3], &truth), Some(0.0)); // maximum outside
        assert_eq!(pointing_game(&[1.0; 4], &truth), Some(0.25)); // a tie over all: the lesion's share
        assert_eq!(energy_pointing_game(&[2.0, 0.0, 0.0, 0.0], &truth), Some(1.0)); // all mass inside
        assert_eq!(energy_pointing_game(&[1.0, 1.0, 1.0, 1.0], &truth), Some(0.25));
        assert_eq!(energy_pointing_game(&[0.0; 4], &truth), None); // no mass: undefined, not 0
        assert_eq!(saliency_auroc(&[0.9, 0.1, 0.2, 0.3], &truth), Some(1.0));
        assert_eq!(saliency_auroc(&[0.2, 0.1, 0.9, 0.3], &truth), Some(1.0 / 3.0)); // above 1 of 3 background pixels
        assert_eq!(saliency_auroc(&[0.5; 4], &truth), Some(0.5));
        assert_eq!(pointing_game(&[0.9, 0.1, 0.2, 0.3], &[false; 4]), None);
    }

    /// A plain grid samples at the cells' middles (`F.interpolate`'s half-pixel rule); a ResNet's
    /// grid, whose cell i is centred on input pixel `stride · i`, lays the same map half a cell
    /// minus half a pixel further up and left.
    #[test]
    fn upsampling_puts_each_cell_at_its_centre() {
        let map = [0.0f32, 4.0, 0.0, 4.0]; // 2×2: left column 0, right column 4
        let row = |grid: MapGrid| upsample(&map, grid, 8, 1)[..8].to_vec();
        // Plain, 2 cells over 8 px: centres at 1.5 and 5.5 px.
        assert_eq!(row(MapGrid::plain(2)), vec![0.0, 0.0, 0.5, 1.5, 2.5, 3.5, 4.0, 4.0]);
        // A stride-4 ResNet map of an 8-px input: centres on pixels 0 and 4 (continuous 0.5, 4.5).
        let resnet = MapGrid::resnet(2, 8);
        assert_eq!(resnet.centre, 0.125);
        assert_eq!(row(resnet), vec![0.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]);
    }

    #[test]
    fn flips_and_correlations() {
        assert_eq!(flip_lr(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn thresholds_parse_and_apply() {
        assert_eq!(Threshold::parse("abs:0.85").unwrap(), Threshold::Absolute(0.85));
        assert_eq!(Threshold::parse("0.4").unwrap(), Threshold::Relative(0.4));
        assert!(Threshold::parse("x:1").is_err());
        for bad in ["rel:5", "rel:-1", "rel:0", "rel:1.5", "-0.2", "rel:nan", "abs:nan", "abs:inf", "abs:-0.5", "1.5"] {
            let e = Threshold::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(Threshold::parse("rel:1").unwrap(), Threshold::Relative(1.0));
        let m = threshold_mask(&[0.2, 0.9, 1.0], Threshold::Absolute(0.85));
        assert_eq!(m, vec![false, true, true]);
        assert_eq!(iou(&[false], &[false]), None);
    }
}
