//! The paper's Tables 3–8 (Li et al., arXiv 2012.02278): every reported mean ± std of ACC, SEN,
//! SPC and F1 (and MAG-SD's AUC) on its datasets A (2 classes), B (3) and C (4), carried in the
//! binary from `assets/paper-tables.csv` (a copy of `../shared/reference/paper-tables.csv`; a test
//! checks that they are equal).
use std::collections::BTreeMap;
use std::sync::OnceLock;

const CSV: &str = include_str!("../../assets/paper-tables.csv");

/// The paper's datasets and their class counts.
pub const DATASETS: [(&str, usize); 3] = [("A", 2), ("B", 3), ("C", 4)];
/// The metrics every row reports, in the paper's column order.
pub const METRICS: [&str; 4] = ["ACC", "SEN", "SPC", "F1"];

/// One reported value (%): the mean over the paper's folds and, where given, its std.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reported {
    pub mean: f64,
    pub std: Option<f64>,
}

impl Reported {
    pub fn show(&self) -> String {
        match self.std {
            Some(s) => format!("{:.2} ± {s:.2}", self.mean),
            None => format!("{:.2}", self.mean),
        }
    }
}

/// (table, paper row, dataset, metric) → value.
type Values = BTreeMap<(u8, String, String, String), Reported>;

fn values() -> &'static Values {
    static VALUES: OnceLock<Values> = OnceLock::new();
    VALUES.get_or_init(|| parse(CSV).expect("assets/paper-tables.csv is well-formed (tested)"))
}

fn parse(text: &str) -> std::result::Result<Values, String> {
    let mut out = Values::new();
    let mut lines = text.lines();
    if lines.next() != Some("table,row,dataset,metric,mean_pct,std_pct") {
        return Err("unexpected header".into());
    }
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let [table, row, dataset, metric, mean, std] = f[..] else {
            return Err(format!("line {}: {} fields", i + 2, f.len()));
        };
        let num = |s: &str| s.parse::<f64>().map_err(|e| format!("line {}: {s:?}: {e}", i + 2));
        let table: u8 = table.parse().map_err(|e| format!("line {}: {e}", i + 2))?;
        let std = if std.is_empty() { None } else { Some(num(std)?) };
        out.insert((table, row.into(), dataset.into(), metric.into()), Reported { mean: num(mean)?, std });
    }
    Ok(out)
}

/// The paper's value of `metric` for `row` of `table` on `dataset`.
pub fn value(table: u8, row: &str, dataset: &str, metric: &str) -> Option<Reported> {
    values().get(&(table, row.to_string(), dataset.to_string(), metric.to_string())).copied()
}

/// The paper's rows of `table`, in the CSV's order.
pub fn rows(table: u8) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in CSV.lines().skip(1) {
        let mut f = line.split(',');
        if f.next().and_then(|t| t.parse::<u8>().ok()) == Some(table)
            && let Some(r) = f.next()
            && !out.iter().any(|o| o == r)
        {
            out.push(r.to_string());
        }
    }
    out
}

/// The paper's dataset with `classes` classes (A: 2, B: 3, C: 4), if any.
pub fn dataset_for(classes: usize) -> Option<&'static str> {
    DATASETS.iter().find(|(_, k)| *k == classes).map(|(d, _)| *d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copy in the binary is the reference file, byte for byte.
    #[test]
    fn embedded_table_equals_the_reference_csv() {
        let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference/paper-tables.csv");
        match std::fs::read_to_string(reference) {
            Ok(text) => assert_eq!(text, CSV, "assets/paper-tables.csv differs from {reference}"),
            Err(e) => eprintln!("SKIP: {reference} not readable ({e}); the embedded copy is not compared"),
        }
        let v = parse(CSV).unwrap();
        assert_eq!(v.len(), CSV.lines().skip(1).filter(|l| !l.trim().is_empty()).count());
        assert_eq!(value(3, "MAG-SD(Proposed)", "A", "ACC"), Some(Reported { mean: 96.94, std: Some(1.10) }));
        assert_eq!(value(3, "MAG-SD(Proposed)", "C", "AUC"), Some(Reported { mean: 95.11, std: None }));
        // Every row of every table has the four metrics on the three datasets.
        for t in 3..=8 {
            for r in rows(t) {
                for (d, _) in DATASETS {
                    for m in METRICS {
                        assert!(value(t, &r, d, m).is_some(), "table {t} {r} {d} {m}");
                    }
                }
            }
        }
    }
}
