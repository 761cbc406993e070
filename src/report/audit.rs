//! The shortcut audit as report sections (issue 22): within-source figures beside the overall
//! ones, the probes, and one plain sentence each on what they mean. Used by the evaluation
//! report, the training-run report and the reproduce tables.
use super::document::Document;
use crate::eval::probe::{ProbeScore, SourceProbe};
use crate::eval::stats::BootstrapCi;
use crate::eval::within_source::{SourceClasses, WithinSource};

/// `87.12 [84.10, 90.02]`, or `n/a`.
pub fn ci_cell(c: Option<&BootstrapCi>) -> String {
    match c {
        Some(c) => format!("{:.2} [{:.2}, {:.2}]", 100.0 * c.estimate, 100.0 * c.low, 100.0 * c.high),
        None => "n/a".into(),
    }
}

/// The definitions, once per report.
pub const DEFINITIONS: &str = "Within-source figures pool the sources that hold at least two classes (\"mixed\"): ACC is the accuracy over \
     their images; macro-F1 is each mixed source's macro-F1 (over the classes present in it) averaged with weights equal to \
     their image counts; AUC is, per class, the share of (positive, negative) pairs from the same source in which the \
     positive scores higher (ties half), then averaged over the classes (class 1's for two classes). A source with one \
     class has no such pair and no second class to confuse: it is left out (n/a). Intervals: 95 % percentile bootstrap \
     over patients, seeded.";

fn sources(list: &[SourceClasses]) -> String {
    list.iter()
        .map(|s| format!("{} ({} images: {})", s.source, s.images, s.classes.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Within-source against overall for one column: a table, the sources, the verdict.
pub fn within_source_section(doc: &mut Document, w: &WithinSource) {
    doc.table(
        ["set", "images", "ACC % [95% CI]", "macro-F1 % [95% CI]", "AUC % [95% CI]"].iter().map(|s| s.to_string()).collect(),
        vec![
            vec![
                "all".into(),
                w.mixed.iter().chain(&w.single_class).map(|s| s.images).sum::<usize>().to_string(),
                ci_cell(w.overall_accuracy.as_ref()),
                ci_cell(w.overall_f1.as_ref()),
                ci_cell(w.overall_auc.as_ref()),
            ],
            vec![
                format!("within mixed {}s", w.column),
                w.images.to_string(),
                ci_cell(w.accuracy.as_ref()),
                ci_cell(w.f1.as_ref()),
                ci_cell(w.auc.as_ref()),
            ],
        ],
    );
    doc.p(format!("**{}**", w.verdict()));
    if !w.mixed.is_empty() {
        doc.p(format!("Mixed {}s (pooled above): {}.", w.column, sources(&w.mixed)));
    }
    if !w.single_class.is_empty() {
        doc.p(format!("One-class {}s (left out; n/a for everything that needs two classes): {}.", w.column, sources(&w.single_class)));
    }
}

fn probe_row(name: String, p: Option<&ProbeScore>) -> Vec<String> {
    match p {
        None => vec![name, "n/a".into(), "n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()],
        Some(p) => vec![
            name,
            p.images.to_string(),
            p.folds.to_string(),
            format!("{:.1}", 100.0 * p.accuracy),
            format!("{:.1} ({})", 100.0 * p.majority_rate, p.majority),
            p.skill().map(|s| format!("{s:.2}")).unwrap_or_else(|| "n/a".into()),
        ],
    }
}

/// The source probe and the within-source class probes for one column: a table and the verdict.
pub fn probe_section(doc: &mut Document, p: &SourceProbe) {
    let col = &p.column;
    let mut rows = vec![probe_row(format!("{col} (all images)"), p.source.as_ref())];
    for c in &p.class_within {
        rows.push(probe_row(format!("class within {}", c.source), c.probe.as_ref()));
    }
    if p.class_within.len() > 1 {
        rows.push(probe_row(format!("class within mixed {col}s (pooled)"), p.class_within_pooled.as_ref()));
    }
    doc.table(
        ["probe", "images", "folds", "accuracy %", "majority rate % (guess)", "skill"].iter().map(|s| s.to_string()).collect(),
        rows,
    );
    doc.p(format!("**{}**", p.verdict()));
    doc.p(format!(
        "Linear probes: cross-validated logistic regression (standardised features, C = 1, folds grouped by patient) on the \
         global average of the network's last feature map ({} numbers per image). Skill = (accuracy − majority rate) / \
         (1 − majority rate): 0 is no better than always guessing the most frequent answer, 1 is perfect. The shortcut \
         signature is a source probe with skill ≥ {:.2} together with a pooled within-source class probe with skill ≤ {:.2}.",
        p.features,
        crate::eval::probe::SOURCE_SKILL_HIGH,
        crate::eval::probe::CLASS_SKILL_LOW
    ));
}
