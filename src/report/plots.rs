//! Figures drawn with plotters, each as PNG and SVG: ROC curves per class (AUC in the legend),
//! a row-normalised confusion matrix with counts (the paper's Fig. 8 style), and training
//! curves from a run's log. Text uses DejaVu Sans embedded in the binary, so figures render
//! the same on machines without fonts.
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::eval::metrics::binary_auc;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
pub(crate) const FAMILY: &str = "sans-serif";

pub(crate) fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            plotters::style::register_font(FAMILY, style, FONT).unwrap_or_else(|_| panic!("embedded font is valid"));
        }
    });
}

/// The tab10 palette.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type DrawResult = std::result::Result<(), String>;

/// Something that can draw itself on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// A white ROC chart on [0, 1]²: title, axes named by rate, and the chance diagonal.
fn roc_axes<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    title_size: u32,
) -> std::result::Result<ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>, String> {
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, title_size))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..1f64, 0f64..1.0f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("False positive rate (1 − specificity)")
        .y_desc("True positive rate (sensitivity)")
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], ShapeStyle::from(&BLACK.mix(0.3)).stroke_width(1)))
        .map_err(err)?;
    Ok(chart)
}

/// Writes `stem.png` and `stem.svg`; returns the PNG's path.
pub fn save<F: Figure>(fig: &F, stem: &Path) -> Result<PathBuf> {
    register_font();
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let fail = |p: &Path, e: String| Error::Data(format!("{}: cannot draw figure: {e}", p.display()));
    {
        let root = BitMapBackend::new(&png, fig.size()).into_drawing_area();
        fig.draw(&root).and_then(|_| root.present().map_err(err)).map_err(|e| fail(&png, e))?;
    }
    {
        let root = SVGBackend::new(&svg, fig.size()).into_drawing_area();
        fig.draw(&root).and_then(|_| root.present().map_err(err)).map_err(|e| fail(&svg, e))?;
    }
    Ok(png)
}

/// ROC curve points (FPR, TPR) of one class, thresholds at each distinct score. Scores must
/// be finite ([`RocFigure`] refuses others); a NaN is treated as equal to itself, so the
/// points are still finite in number.
pub fn roc_points(positive: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let n_pos = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let n_neg = positive.iter().filter(|&&p| !p).count().max(1) as f64;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut pts = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        // `total_cmp`, not `==`: NaN == NaN is false and would never advance `i`.
        while i < order.len() && scores[order[i]].total_cmp(&s).is_eq() {
            if positive[order[i]] { tp += 1.0 } else { fp += 1.0 }
            i += 1;
        }
        pts.push((fp / n_neg, tp / n_pos));
    }
    pts
}

pub struct RocFigure<'a> {
    pub title: String,
    pub classes: &'a [String],
    pub labels: &'a [usize],
    pub probs: &'a [Vec<f64>],
}

impl Figure for RocFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (640, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        crate::eval::metrics::check_scores(self.probs, self.classes.len()).map_err(|e| e.to_string())?;
        let mut chart = roc_axes(root, &self.title, 22)?;
        for (c, name) in self.classes.iter().enumerate() {
            let positive: Vec<bool> = self.labels.iter().map(|&y| y == c).collect();
            let scores: Vec<f64> = self.probs.iter().map(|p| p[c]).collect();
            let Some(auc) = binary_auc(&positive, &scores) else { continue };
            let color = PALETTE[c % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(roc_points(&positive, &scores), color.stroke_width(2)))
                .map_err(err)?
                .label(format!("{name} (AUC {auc:.3})"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    }
}

pub struct ConfusionFigure<'a> {
    pub title: String,
    pub classes: &'a [String],
    /// `confusion[true][predicted]`.
    pub confusion: &'a [Vec<usize>],
}

/// White → blue for 0 → 1.
fn blues(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    RGBColor(lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0))
}

/// Pixel layout of the confusion matrix.
const CELL: i32 = 100;
const LEFT: i32 = 170;
const TOP: i32 = 70;

impl Figure for ConfusionFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let k = self.classes.len() as u32;
        (LEFT as u32 + CELL as u32 * k + 30, TOP as u32 + CELL as u32 * k + 80)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let k = self.classes.len() as i32;
        let (w, _) = self.size();
        fn centered<'a>(size: u32, color: &'a RGBColor) -> TextStyle<'a> {
            TextStyle::from((FAMILY, size).into_font()).color(color).pos(Pos::new(HPos::Center, VPos::Center))
        }
        root.draw(&Text::new(self.title.clone(), (w as i32 / 2, 24), centered(20, &BLACK))).map_err(err)?;
        for (t, row) in self.confusion.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            for (p, &n) in row.iter().enumerate() {
                let v = n as f64 / total;
                let (x, y) = (LEFT + p as i32 * CELL, TOP + t as i32 * CELL);
                root.draw(&Rectangle::new([(x, y), (x + CELL, y + CELL)], blues(v).filled())).map_err(err)?;
                root.draw(&Rectangle::new([(x, y), (x + CELL, y + CELL)], WHITE.stroke_width(1))).map_err(err)?;
                let color = if v > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(format!("{v:.2}"), (x + CELL / 2, y + CELL / 2 - 11), centered(19, &color))).map_err(err)?;
                root.draw(&Text::new(format!("({n})"), (x + CELL / 2, y + CELL / 2 + 14), centered(15, &color))).map_err(err)?;
            }
        }
        let label = TextStyle::from((FAMILY, 15).into_font()).color(&BLACK);
        for (c, name) in self.classes.iter().enumerate() {
            let mid = c as i32 * CELL + CELL / 2;
            root.draw(&Text::new(name.clone(), (LEFT + mid, TOP + k * CELL + 16), label.pos(Pos::new(HPos::Center, VPos::Center))))
                .map_err(err)?;
            root.draw(&Text::new(name.clone(), (LEFT - 10, TOP + mid), label.pos(Pos::new(HPos::Right, VPos::Center))))
                .map_err(err)?;
        }
        let grey = BLACK.mix(0.8);
        let desc = TextStyle::from((FAMILY, 15).into_font()).color(&grey).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new("Predicted class", (LEFT + k * CELL / 2, TOP + k * CELL + 48), desc.clone())).map_err(err)?;
        let vertical = TextStyle::from((FAMILY, 15).into_font().transform(FontTransform::Rotate270))
            .color(&grey)
            .pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new("True class", (18, TOP + k * CELL / 2), vertical)).map_err(err)?;
        Ok(())
    }
}

/// One training curve: (epoch, value) points with a name.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct CurvesFigure {
    pub title: String,
    /// Left panel (losses) and right panel (accuracies).
    pub loss: Vec<Series>,
    pub accuracy: Vec<Series>,
}

impl CurvesFigure {
    /// Epoch records of a `train.jsonl` log.
    pub fn from_log(title: &str, log: &Path) -> Result<Self> {
        let text = crate::files::read_to_string(log, crate::files::MAX_TEXT_BYTES, "training log")?;
        let epochs: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "epoch")
            .collect();
        let series = |name: &str, f: &dyn Fn(&serde_json::Value) -> Option<f64>| Series {
            name: name.into(),
            points: epochs.iter().filter_map(|e| Some((e["epoch"].as_f64()? + 1.0, f(e)?))).collect(),
        };
        Ok(CurvesFigure {
            title: title.into(),
            loss: vec![
                series("training loss", &|e| e["train_loss"].as_f64()),
                series("training CE", &|e| e["train_ce"].as_f64()),
                series("validation CE", &|e| e["val"]["loss"].as_f64()),
            ],
            accuracy: vec![
                series("training accuracy", &|e| e["train_accuracy"].as_f64()),
                series("validation accuracy", &|e| e["val"]["accuracy"].as_f64()),
            ],
        })
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, y_desc: &str, series: &[Series], y_max: Option<f64>) -> DrawResult {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let x_max = pts().map(|p| p.0).fold(1.0, f64::max);
    let y_hi = y_max.unwrap_or_else(|| pts().map(|p| p.1).filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.05).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5f64..x_max + 0.5, 0f64..y_hi)
        .map_err(err)?;
    let integer_ticks = |v: &f64| if (v - v.round()).abs() < 1e-9 { format!("{}", v.round()) } else { String::new() };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_label_formatter(&integer_ticks)
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate().filter(|(_, s)| !s.points.is_empty()) {
        let color = PALETTE[i % PALETTE.len()];
        // A diverged run logs NaN or infinite losses: those epochs have no point.
        let points: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)
}

impl Figure for CurvesFigure {
    fn size(&self) -> (u32, u32) {
        (1100, 440)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(&self.title, (FAMILY, 20)).map_err(err)?;
        let (left, right) = root.split_horizontally(550);
        draw_panel(&left, "Loss", "loss", &self.loss, None)?;
        draw_panel(&right, "Accuracy", "accuracy", &self.accuracy, Some(1.0))
    }
}

/// One model's pooled out-of-fold predictions, for [`RowsRocFigure`].
pub struct RocRow<'a> {
    pub name: String,
    pub labels: &'a [usize],
    pub probs: &'a [Vec<f64>],
    /// Shown in the legend (the table's AUC).
    pub auc: Option<f64>,
}

/// The macro-average ROC curve of one model: two classes → the curve of class 1 (as the
/// binary AUC); more → each class's one-vs-rest TPR, interpolated at 201 common FPRs,
/// averaged over the classes that have positives and negatives.
pub fn macro_roc_points(labels: &[usize], probs: &[Vec<f64>], classes: usize) -> Vec<(f64, f64)> {
    let curve = |c: usize| {
        let positive: Vec<bool> = labels.iter().map(|&y| y == c).collect();
        let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
        binary_auc(&positive, &scores).map(|_| roc_points(&positive, &scores))
    };
    if classes == 2 {
        return curve(1).unwrap_or_default();
    }
    let curves: Vec<Vec<(f64, f64)>> = (0..classes).filter_map(curve).collect();
    if curves.is_empty() {
        return Vec::new();
    }
    let tpr_at = |pts: &[(f64, f64)], x: f64| {
        // Linear interpolation; at vertical steps the highest TPR reached at x.
        let mut best = 0.0f64;
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x1 == x0 && x0 <= x {
                best = best.max(y1);
            } else if x0 <= x && x <= x1 {
                best = best.max(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
            }
        }
        best
    };
    (0..=200)
        .map(|i| {
            let x = i as f64 / 200.0;
            (x, curves.iter().map(|c| tpr_at(c, x)).sum::<f64>() / curves.len() as f64)
        })
        .collect()
}

/// Fig. 6 as the paper draws it: one panel per dataset (the paper's A, B and C have 2, 3 and 4
/// classes), each with one macro-average ROC curve per model and its three highest AUCs drawn
/// thick. A row goes to the panel of its class count, read from its predictions (the width of
/// its probability vectors); a grid has one class set, so one panel.
pub struct RowsRocFigure<'a> {
    pub title: String,
    pub rows: Vec<RocRow<'a>>,
}

/// One panel of [`RowsRocFigure`]: its class count and its rows (indices into `rows`).
#[derive(Debug, PartialEq)]
pub struct RocPanel {
    pub classes: usize,
    pub rows: Vec<usize>,
}

impl RocPanel {
    /// "4 classes (the paper's dataset C)"; the paper's datasets A, B, C have 2, 3, 4 classes.
    pub fn label(&self) -> String {
        match self.classes {
            2 => "2 classes (the paper's dataset A)".into(),
            3 => "3 classes (the paper's dataset B)".into(),
            4 => "4 classes (the paper's dataset C)".into(),
            k => format!("{k} classes"),
        }
    }
}

impl RowsRocFigure<'_> {
    /// One panel per class count among the rows with predictions, fewest classes first (A, B,
    /// C), rows in table order within each.
    pub fn panels(&self) -> Vec<RocPanel> {
        let mut panels: Vec<RocPanel> = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            let Some(k) = r.probs.first().map(Vec::len) else { continue };
            match panels.iter_mut().find(|p| p.classes == k) {
                Some(p) => p.rows.push(i),
                None => panels.push(RocPanel { classes: k, rows: vec![i] }),
            }
        }
        panels.sort_by_key(|p| p.classes);
        panels
    }

    /// Of `rows` (one panel's), the three with the highest AUCs (fewer when fewer have one), best
    /// first; ties go to the row listed first.
    pub fn top_three(&self, rows: &[usize]) -> Vec<usize> {
        let mut ranked: Vec<(usize, f64)> = rows.iter().filter_map(|&i| self.rows[i].auc.filter(|a| a.is_finite()).map(|a| (i, a))).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.into_iter().take(3).map(|(i, _)| i).collect()
    }

    fn draw_panel<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, title: &str, panel: &RocPanel) -> DrawResult {
        let mut chart = roc_axes(area, title, 18)?;
        let top = self.top_three(&panel.rows);
        for &i in &panel.rows {
            let row = &self.rows[i];
            let pts = macro_roc_points(row.labels, row.probs, panel.classes);
            if pts.is_empty() {
                continue;
            }
            let color = PALETTE[i % PALETTE.len()];
            let auc = row.auc.map(|a| format!(" (AUC {a:.3})")).unwrap_or_default();
            // As the paper's Fig. 6: the three highest AUCs stand out (thick lines, marked).
            let (width, mark) = if top.contains(&i) { (4, " [top 3]") } else { (1, "") };
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(width)))
                .map_err(err)?
                .label(format!("{}{auc}{mark}", row.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(width)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    }
}

impl Figure for RowsRocFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (680 * self.panels().len().max(1) as u32, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let panels = self.panels();
        root.fill(&WHITE).map_err(err)?;
        if let [panel] = panels.as_slice() {
            return self.draw_panel(root, &format!("{}, {}", self.title, panel.label()), panel);
        }
        let body = root.titled(&self.title, (FAMILY, 20)).map_err(err)?;
        for (area, panel) in body.split_evenly((1, panels.len().max(1))).iter().zip(&panels) {
            self.draw_panel(area, &panel.label(), panel)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fig. 6: a panel per class count found in the rows' predictions, and the three highest
    /// AUCs of each panel (not of the whole figure) emphasised.
    #[test]
    fn fig6_has_a_panel_per_class_count_with_its_own_top_three() {
        let two: Vec<Vec<f64>> = vec![vec![0.9, 0.1], vec![0.2, 0.8], vec![0.6, 0.4], vec![0.3, 0.7]];
        let four: Vec<Vec<f64>> = vec![vec![0.7, 0.1, 0.1, 0.1], vec![0.1, 0.7, 0.1, 0.1], vec![0.1, 0.1, 0.7, 0.1], vec![0.1, 0.1, 0.1, 0.7]];
        let (l2, l4) = (vec![0, 1, 0, 1], vec![0, 1, 2, 3]);
        let row = |name: &str, four_classes: bool, auc: Option<f64>| RocRow {
            name: name.into(),
            labels: if four_classes { &l4 } else { &l2 },
            probs: if four_classes { &four } else { &two },
            auc,
        };
        let fig = RowsRocFigure {
            title: "Fig. 6".into(),
            rows: vec![
                row("c1", true, Some(0.90)),
                row("a1", false, Some(0.70)),
                row("c2", true, Some(0.95)),
                row("a2", false, Some(0.80)),
                row("c3", true, None),
                row("c4", true, Some(0.50)),
                row("c5", true, Some(0.60)),
                row("a3", false, Some(f64::NAN)),
                RocRow { name: "no predictions".into(), labels: &[], probs: &[], auc: None },
            ],
        };
        let panels = fig.panels();
        assert_eq!(panels, vec![RocPanel { classes: 2, rows: vec![1, 3, 7] }, RocPanel { classes: 4, rows: vec![0, 2, 4, 5, 6] }]);
        assert_eq!(panels[1].label(), "4 classes (the paper's dataset C)");
        // Dataset A's panel: two rows with an AUC (the NaN is none); C's: the best three of four.
        assert_eq!(fig.top_three(&panels[0].rows), vec![3, 1]);
        assert_eq!(fig.top_three(&panels[1].rows), vec![2, 0, 6]);
        let d = tempfile::tempdir().unwrap();
        save(&fig, &d.path().join("roc")).unwrap();
        let svg = std::fs::read_to_string(d.path().join("roc.svg")).unwrap();
        assert_eq!(svg.matches("[top 3]").count(), 5);
        assert!(svg.contains("2 classes (the paper&apos;s dataset A)") || svg.contains("2 classes (the paper's dataset A)"), "{svg}");
    }

    #[test]
    fn roc_points_run_from_origin_to_one_one() {
        let p = roc_points(&[true, false, true, false], &[0.9, 0.8, 0.4, 0.1]);
        assert_eq!(p.first(), Some(&(0.0, 0.0)));
        assert_eq!(p.last(), Some(&(1.0, 1.0)));
        assert_eq!(p[1], (0.0, 0.5));
    }

    /// On old code `roc_points` never returned on a NaN score (and grew its vector until the
    /// OOM killer came); run it on a thread so a regression fails instead of hanging.
    #[test]
    fn nan_scores_neither_hang_nor_draw() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(roc_points(&[true, false, true], &[f64::NAN, 0.3, f64::NAN]));
        });
        let pts = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("roc_points returned");
        assert_eq!(pts.len(), 3);
        let d = tempfile::tempdir().unwrap();
        let classes: Vec<String> = vec!["a".into(), "b".into()];
        let probs = vec![vec![f64::NAN, f64::NAN], vec![0.4, 0.6]];
        let e = save(&RocFigure { title: "ROC".into(), classes: &classes, labels: &[0, 1], probs: &probs }, &d.path().join("roc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite"), "{e}");
    }

    #[test]
    fn curves_of_a_diverged_run_render() {
        let d = tempfile::tempdir().unwrap();
        let series = |v: &[f64]| Series { name: "loss".into(), points: v.iter().enumerate().map(|(e, &y)| (e as f64 + 1.0, y)).collect() };
        let fig = CurvesFigure {
            title: "diverged".into(),
            loss: vec![series(&[1.0, 0.8, f64::NAN, f64::INFINITY])],
            accuracy: vec![series(&[0.5, 0.6, f64::NAN, 0.0])],
        };
        save(&fig, &d.path().join("curves")).unwrap();
        assert!(!std::fs::read_to_string(d.path().join("curves.svg")).unwrap().contains("NaN"));
    }

    #[test]
    fn figures_render_to_png_and_svg() {
        let d = tempfile::tempdir().unwrap();
        let classes: Vec<String> = vec!["covid19".into(), "normal".into(), "pneumonia".into()];
        let labels = vec![0, 1, 2, 0, 1, 2];
        let probs = vec![
            vec![0.8, 0.1, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.3, 0.6],
            vec![0.4, 0.4, 0.2],
            vec![0.3, 0.3, 0.4],
            vec![0.2, 0.5, 0.3],
        ];
        let png = save(&RocFigure { title: "ROC".into(), classes: &classes, labels: &labels, probs: &probs }, &d.path().join("roc")).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (640, 600));
        // Coloured curve pixels exist (not just a blank canvas).
        assert!(img.pixels().any(|p| p[0] > 200 && p[1] < 160 && p[2] < 60), "no orange curve drawn");
        assert!(d.path().join("roc.svg").exists());
        let conf = vec![vec![2, 0, 0], vec![0, 1, 1], vec![0, 1, 1]];
        save(&ConfusionFigure { title: "Confusion".into(), classes: &classes, confusion: &conf }, &d.path().join("cm")).unwrap();
        let svg = std::fs::read_to_string(d.path().join("cm.svg")).unwrap();
        assert!(svg.contains("covid19") && svg.contains("(2)"), "labels and counts are in the figure");
    }
}
