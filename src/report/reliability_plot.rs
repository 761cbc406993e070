//! The reliability diagram (Guo et al. 2017, Fig. 1): per confidence bin, the accuracy of the
//! images in it against their mean top-label confidence, before and after calibration, with
//! the diagonal of perfect calibration.
use plotters::coord::Shift;
use plotters::prelude::*;

use super::plots::{FAMILY, Figure, PALETTE};
use crate::eval::calibration::Reliability;

type DrawResult = std::result::Result<(), String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// One curve per named diagram ("before calibration", "after (T = 1.42)").
pub struct ReliabilityFigure<'a> {
    pub title: String,
    pub curves: Vec<(String, &'a Reliability)>,
}

impl Figure for ReliabilityFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (640, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("Confidence (largest probability), mean per bin")
            .y_desc("Accuracy of the bin's images")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], ShapeStyle::from(&BLACK.mix(0.3)).stroke_width(1)))
            .map_err(err)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], BLACK.mix(0.3)));
        for (i, (name, r)) in self.curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = r.bins.iter().filter_map(|b| Some((b.confidence?, b.accuracy?))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(format!("{name} (ECE {:.3})", r.ece))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    }
}
