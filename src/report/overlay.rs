//! Attention overlays in the style of the paper's Fig. 5 and Fig. 7: the X-ray on the left; on
//! the right the same image with a localisation map (the mean attention map unless `--map` says
//! otherwise; upsampled, colour-mapped) blended in,
//! the threshold contour in white, the predicted boxes in green and, when known, the
//! ground-truth outline in magenta, and a colour bar on the right. Colours run on one fixed
//! scale, the map divided by its maximum (0 = no attention, 1 = the map's maximum; maps are
//! ≥ 0), so that a relative threshold `rel:F` is the colour F on the bar, where it is marked.
//! [`with_caption`] adds lines of text above a panel (true and predicted class, probability).
use image::{Rgb, RgbImage};
use plotters::prelude::*;

use crate::data::decode::{GrayImage, Pixels};
use crate::eval::localize::{BBox, Threshold, boxes_mask, component_boxes, threshold_mask, upsample};
use crate::model::MapGrid;

/// Longest side of the drawn panels.
const DISPLAY: usize = 384;

/// "Turbo"-like colour map, 0 → dark blue, 1 → dark red.
pub fn colormap(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let stops: [(f32, [f32; 3]); 6] = [
        (0.0, [48.0, 18.0, 59.0]),
        (0.2, [40.0, 120.0, 245.0]),
        (0.4, [30.0, 220.0, 170.0]),
        (0.6, [165.0, 250.0, 55.0]),
        (0.8, [250.0, 150.0, 30.0]),
        (1.0, [122.0, 4.0, 3.0]),
    ];
    for w in stops.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            return [0, 1, 2].map(|i| (ca[i] + (cb[i] - ca[i]) * t).round() as u8);
        }
    }
    [122, 4, 3]
}

/// The image as 8-bit gray at display size (longest side 384, aspect ratio kept).
fn display_gray(img: &GrayImage) -> (Vec<u8>, usize, usize) {
    let scale = DISPLAY as f64 / img.width.max(img.height) as f64;
    let (w, h) = (((img.width as f64 * scale).round() as usize).max(1), ((img.height as f64 * scale).round() as usize).max(1));
    let px = |x: usize, y: usize| -> u8 {
        let (sx, sy) = ((x * img.width / w).min(img.width - 1), (y * img.height / h).min(img.height - 1));
        match &img.pixels {
            Pixels::U8(p) => p[sy * img.width + sx],
            Pixels::U16(p) => (p[sy * img.width + sx] / 257) as u8,
        }
    };
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            out.push(px(x, y));
        }
    }
    (out, w, h)
}

fn outline(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            mask[i] && (x == 0 || y == 0 || x + 1 == w || y + 1 == h || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w])
        })
        .collect()
}

/// Width of the colour bar strip right of the panels: gap, bar, gap, labels.
const BAR_GAP: usize = 8;
const BAR_WIDTH: usize = 16;
const BAR_LABELS: usize = 40;

/// Draws `lines` with the embedded font onto `img` at (x, y) (top-left of the first line).
fn draw_text(img: &mut RgbImage, x: i32, y: i32, size: u32, lines: &[String]) {
    super::plots::register_font();
    let (w, h) = img.dimensions();
    let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    let style = TextStyle::from((super::plots::FAMILY, size as f64).into_font()).color(&BLACK);
    for (k, line) in lines.iter().enumerate() {
        // A text that cannot be drawn leaves the image without it; the picture is still right.
        let _ = root.draw(&Text::new(line.clone(), (x, y + k as i32 * (size as i32 + 4)), style.clone()));
    }
    let _ = root.present();
}

/// The panel with `lines` of text above it (e.g. "true covid19, predicted normal (87.2 %)").
pub fn with_caption(panel: &RgbImage, lines: &[String]) -> RgbImage {
    const SIZE: u32 = 15;
    let top = 8 + lines.len() as u32 * (SIZE + 4);
    let mut out = RgbImage::from_pixel(panel.width(), panel.height() + top, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, panel, 0, top as i64);
    draw_text(&mut out, 4, 4, SIZE, lines);
    out
}

/// Draws the two panels and the colour bar. `map` is the localisation map on `grid`; `truth`, if given, is
/// the ground-truth mask at the image's original size. Returns the panel and the predicted
/// boxes in original-image coordinates.
pub fn attention_overlay(img: &GrayImage, map: &[f32], grid: MapGrid, t: Threshold, truth: Option<&[bool]>) -> (RgbImage, Vec<BBox>) {
    let (gray, w, h) = display_gray(img);
    let up = upsample(map, grid, w, h);
    let max = up.iter().cloned().fold(f32::MIN, f32::max).max(1e-12);
    let mask = threshold_mask(&up, t);
    let contour = outline(&mask, w, h);
    let boxes = component_boxes(&mask, w, h);
    let box_edges = outline(&boxes_mask(&boxes, w, h), w, h);
    let truth_edges = truth.map(|m| {
        let small: Vec<bool> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w * img.width / w, i / w * img.height / h);
                m[y.min(img.height - 1) * img.width + x.min(img.width - 1)]
            })
            .collect();
        outline(&small, w, h)
    });
    let gap = 8;
    let bar_x = 2 * w + gap + BAR_GAP;
    let mut out = RgbImage::from_pixel((bar_x + BAR_WIDTH + BAR_LABELS) as u32, h as u32, Rgb([255, 255, 255]));
    // Colour bar: the map's maximum at the top, its minimum at the bottom.
    let (bar_top, bar_bottom) = (10usize.min(h / 4), h - 10usize.min(h / 4));
    for y in bar_top..bar_bottom {
        let v = 1.0 - (y - bar_top) as f32 / (bar_bottom - bar_top).max(2) as f32;
        for x in bar_x..bar_x + BAR_WIDTH {
            out.put_pixel(x as u32, y as u32, Rgb(colormap(v)));
        }
    }
    let label_x = (bar_x + BAR_WIDTH + 4) as i32;
    draw_text(&mut out, label_x, bar_top as i32, 12, &["1".into()]); // = the map's maximum (the caption says so)
    draw_text(&mut out, label_x, bar_bottom as i32 - 14, 12, &["0".into()]);
    // The threshold on the bar's scale, where it is one: a white tick.
    let level = match t {
        Threshold::Relative(f) => Some(f),
        Threshold::Absolute(v) => Some(v / max),
    };
    if let Some(l) = level.filter(|l| (0.0..=1.0).contains(l)) {
        let y = bar_top + ((1.0 - l) * (bar_bottom - bar_top) as f32) as usize;
        for x in bar_x.saturating_sub(4)..bar_x + BAR_WIDTH {
            out.put_pixel(x as u32, y.min(h - 1) as u32, Rgb([0, 0, 0]));
        }
    }
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let g = gray[i] as f32;
            out.put_pixel(x as u32, y as u32, Rgb([gray[i]; 3]));
            let heat = colormap(up[i] / max);
            let mut c = [0, 1, 2].map(|k| (0.55 * g + 0.45 * heat[k] as f32).round() as u8);
            if contour[i] {
                c = [255, 255, 255];
            }
            if box_edges[i] {
                c = [0, 230, 64];
            }
            if truth_edges.as_ref().is_some_and(|e| e[i]) {
                c = [255, 0, 200];
            }
            out.put_pixel((w + gap + x) as u32, y as u32, Rgb(c));
        }
    }
    (out, to_original(&boxes, img, w, h))
}

/// Boxes found at display size `w × h`, back in original-image coordinates.
fn to_original(boxes: &[BBox], img: &GrayImage, w: usize, h: usize) -> Vec<BBox> {
    let (sx, sy) = (img.width as f64 / w as f64, img.height as f64 / h as f64);
    boxes
        .iter()
        .map(|b| BBox {
            x0: (b.x0 as f64 * sx) as usize,
            y0: (b.y0 as f64 * sy) as usize,
            x1: ((b.x1 as f64 * sx).ceil() as usize).min(img.width),
            y1: ((b.y1 as f64 * sy).ceil() as usize).min(img.height),
        })
        .collect()
}

/// The layers of [`attention_overlay`]'s right panel, apart, for a viewer that blends them
/// itself (the `magsd serve` page): the image as 8-bit gray and the colour-mapped attention, both
/// at display size (longest side 384), and the boxes in original-image coordinates, the same
/// boxes [`attention_overlay`] finds.
pub struct AttentionLayers {
    pub gray: image::GrayImage,
    pub heat: RgbImage,
    pub boxes: Vec<BBox>,
}

/// Splits the overlay into its layers; see [`AttentionLayers`].
pub fn attention_layers(img: &GrayImage, map: &[f32], grid: MapGrid, t: Threshold) -> AttentionLayers {
    let (gray, w, h) = display_gray(img);
    let up = upsample(map, grid, w, h);
    let max = up.iter().cloned().fold(f32::MIN, f32::max).max(1e-12);
    // The same fixed scale as the overlay: 0 = no attention, 1 = the map's maximum.
    let heat = RgbImage::from_fn(w as u32, h as u32, |x, y| Rgb(colormap(up[y as usize * w + x as usize] / max)));
    let boxes = to_original(&component_boxes(&threshold_mask(&up, t), w, h), img, w, h);
    AttentionLayers { gray: image::GrayImage::from_raw(w as u32, h as u32, gray).expect("w × h samples"), heat, boxes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_has_two_panels_and_marks_the_hot_corner() {
        let img = GrayImage::from_u8(96, 96, vec![100; 96 * 96]);
        let (panel, boxes) = attention_overlay(&img, &[1.0, 0.0, 0.0, 0.0], MapGrid::plain(2), Threshold::Relative(0.5), None);
        assert_eq!(panel.dimensions(), (2 * 384 + 8 + 8 + 16 + 40, 384)); // shown at 384 px, then the colour bar
        assert_eq!(boxes, vec![BBox { x0: 0, y0: 0, x1: 48, y1: 48 }]);
        // Left panel is the plain image; the right panel is warmer top-left than bottom-right.
        assert_eq!(panel.get_pixel(383, 383), &Rgb([100, 100, 100]));
        let hot = panel.get_pixel(392 + 20, 20);
        let cold = panel.get_pixel(392 + 360, 360);
        assert!(hot[0] > cold[0] && cold[2] >= hot[2], "{hot:?} vs {cold:?}");
        // The colour bar runs from the colour of 1 at the top to that of 0 at the bottom.
        let bar_x = 2 * 384 + 8 + 8 + 4;
        assert_eq!(panel.get_pixel(bar_x, 10).0, colormap(1.0));
        let bottom = panel.get_pixel(bar_x, 373).0;
        assert!((0..3).all(|k| (bottom[k] as i32 - colormap(0.0)[k] as i32).abs() <= 4), "{bottom:?}");
        let captioned = with_caption(&panel, &["true a, predicted b (51.0 %)".into()]);
        assert_eq!(captioned.width(), panel.width());
        assert!(captioned.height() > panel.height());
        // Text was drawn: dark pixels in the caption strip.
        assert!((0..captioned.width()).any(|x| (0..20).any(|y| captioned.get_pixel(x, y)[0] < 100)));
    }

    #[test]
    fn colours_are_on_a_fixed_scale_from_zero_to_the_maximum() {
        // A map from 0.5 to 1: its lowest value is colour 0.5 of the bar, not the bar's bottom
        // (which it was when the scale ran from the map's own minimum).
        let img = GrayImage::from_u8(96, 96, vec![0; 96 * 96]);
        let l = attention_layers(&img, &[1.0, 0.5, 0.5, 0.5], MapGrid::plain(2), Threshold::Relative(0.5));
        assert_eq!(l.heat.get_pixel(383, 383).0, colormap(0.5));
        assert_eq!(l.heat.get_pixel(0, 0).0, colormap(1.0));
    }

    #[test]
    fn layers_match_the_overlay() {
        let img = GrayImage::from_u8(120, 80, (0..120 * 80).map(|i| (i % 251) as u8).collect());
        let map = [0.1, 0.9, 0.2, 0.3, 0.0, 0.8, 0.4, 0.1, 0.2];
        let t = Threshold::Relative(0.5);
        let l = attention_layers(&img, &map, MapGrid::plain(3), t);
        let (panel, boxes) = attention_overlay(&img, &map, MapGrid::plain(3), t, None);
        assert_eq!(l.boxes, boxes);
        assert_eq!(l.gray.dimensions(), (384, 256));
        assert_eq!(l.heat.dimensions(), (384, 256));
        // The overlay's left panel is the gray layer.
        assert_eq!(panel.get_pixel(7, 9)[0], l.gray.get_pixel(7, 9)[0]);
    }
}
