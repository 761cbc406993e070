//! The paper's Tables 3–8 as rows: each row is a name and `--set`-style config overrides applied
//! on top of the user's preset/config, with the paper's row it reproduces (its values are in
//! `super::paper`).
//!
//! A row that appears in several tables (MAG-SD itself is the reference row of every table) is
//! trained once. Table 7's "no augmentation" row is MAG-SD(0AUG): with no augmented branch the
//! loss is the raw branch's cross-entropy, so there is no soft-distance term either (spec §3).

/// One trained configuration (its folder under the grid is its `id`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub id: &'static str,
    /// Config overrides (`section.key=value`, TOML values), after the user's.
    pub overrides: &'static [&'static str],
}

/// A row as a table shows it.
#[derive(Clone, Copy, Debug)]
pub struct TableRow {
    pub row: Row,
    pub label: &'static str,
    /// The paper's row this one reproduces: (table, row name in `paper-tables.csv`).
    pub paper: Option<(u8, &'static str)>,
    pub note: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub struct Table {
    pub number: u8,
    pub title: &'static str,
    pub rows: Vec<TableRow>,
}

pub const TABLES: [u8; 6] = [3, 4, 5, 6, 7, 8];

/// The reference row of every table: the user's config unchanged.
pub const MAGSD: Row = Row { id: "magsd", overrides: &[] };
pub const MAGSD_0AUG: Row = Row { id: "magsd-0aug", overrides: &["method.augmentations=[]"] };

/// A Table 3 baseline: `model.arch` selects the network (the baseline networks' config key);
/// trained with the raw branch's cross-entropy only (no attention-guided augmentation).
const fn baseline(id: &'static str, overrides: &'static [&'static str]) -> Row {
    Row { id, overrides }
}

fn row(row: Row, label: &'static str, paper: Option<(u8, &'static str)>) -> TableRow {
    TableRow { row, label, paper, note: None }
}

/// The paper's rows of Table 3 that magsd does not train: the networks of reference [51],
/// whose training the paper does not describe.
pub const NOT_PROVIDED: [&str; 2] = ["[51](ResNet)", "[51](InceptionV3)"];

/// The setting a table varies (its rows differ in it), for Tables 4–8.
pub fn varied_setting(n: u8) -> Option<&'static str> {
    match n {
        4 => Some("data.clahe"),
        5 => Some("model.scales"),
        6 => Some("model.head"),
        7 => Some("method.augmentations"),
        8 => Some("method.loss.variant"),
        _ => None,
    }
}

/// Table `n` (3–8).
pub fn table(n: u8) -> Option<Table> {
    let magsd = |table: u8, paper: &'static str| row(MAGSD, "MAG-SD", Some((table, paper)));
    let t = match n {
        3 => Table {
            number: 3,
            title: "MAG-SD against other networks",
            rows: vec![
                row(baseline("vgg16", &["model.arch=\"vgg16\"", "method.augmentations=[]"]), "VGG16", Some((3, "VGG16"))),
                row(baseline("resnet18", &["model.arch=\"resnet18\"", "method.augmentations=[]"]), "ResNet18", Some((3, "ResNet18"))),
                row(
                    baseline("resnet50", &["model.arch=\"resnet50\"", "method.augmentations=[]"]),
                    "ResNet50",
                    Some((3, "ResNet50")),
                ),
                row(baseline("inception-v3", &["model.arch=\"inception-v3\"", "method.augmentations=[]"]), "InceptionV3", Some((3, "InceptionV3"))),
                row(baseline("covid-net", &["model.arch=\"covid-net\"", "method.augmentations=[]"]), "COVID-Net", Some((3, "COVID-Net"))),
                row(baseline("bcnn", &["model.arch=\"bcnn\"", "method.augmentations=[]"]), "BCNN", Some((3, "BCNN"))),
                row(
                    baseline("bcnn-attention", &["model.arch=\"bcnn-attention\"", "method.augmentations=[]"]),
                    "BCNN(Attention)",
                    Some((3, "BCNN(Attention)")),
                ),
                row(baseline("fpn", &["model.arch=\"fpn\"", "method.augmentations=[]"]), "FPN", Some((3, "FPN"))),
                row(baseline("unet", &["model.arch=\"unet\"", "method.augmentations=[]"]), "U-Net", Some((3, "U-Net"))),
                row(MAGSD_0AUG, "MAG-SD(0AUG)", Some((3, "MAG-SD(0AUG)"))),
                magsd(3, "MAG-SD(Proposed)"),
            ],
        },
        4 => Table {
            number: 4,
            title: "CLAHE",
            rows: vec![row(Row { id: "no-clahe", overrides: &["data.clahe=false"] }, "w/o CLAHE", Some((4, "w/o CLAHE"))), TableRow {
                label: "with CLAHE (MAG-SD)",
                ..magsd(4, "CLAHE")
            }],
        },
        5 => Table {
            number: 5,
            title: "Attention scales",
            rows: vec![
                row(Row { id: "scales-7", overrides: &["model.scales=\"7\""] }, "7×7", Some((5, "7x7"))),
                TableRow { label: "7×7 + 14×14 (MAG-SD)", ..magsd(5, "7x7 + 14x14") },
                row(Row { id: "scales-7-14-28", overrides: &["model.scales=\"7+14+28\""] }, "7×7 + 14×14 + 28×28", Some((5, "7x7 + 14x14 + 28x28"))),
            ],
        },
        6 => Table {
            number: 6,
            title: "Pooling",
            rows: vec![
                row(Row { id: "gmp", overrides: &["model.head=\"gmp\""] }, "GMP", Some((6, "GMP"))),
                row(Row { id: "gap", overrides: &["model.head=\"gap\""] }, "GAP", Some((6, "GAP"))),
                TableRow { label: "BAP (MAG-SD)", ..magsd(6, "Attention Pooling") },
            ],
        },
        7 => Table {
            number: 7,
            title: "Attention-guided augmentations",
            rows: vec![
                TableRow {
                    note: Some("the paper's Table 7 has no row without augmentation; its values are those of MAG-SD(0AUG) in Table 3"),
                    ..row(MAGSD_0AUG, "none (= MAG-SD(0AUG))", Some((3, "MAG-SD(0AUG)")))
                },
                row(Row { id: "aug-mixup", overrides: &["method.augmentations=[\"mixup\"]"] }, "mix-up", Some((7, "AM"))),
                TableRow {
                    note: Some("the paper's table header (AM+AD) names this combination for its two-augmentation row"),
                    ..row(
                        Row { id: "aug-mixup-dimming", overrides: &["method.augmentations=[\"mixup\", \"dimming\"]"] },
                        "mix-up + dimming",
                        Some((7, "AM + AD")),
                    )
                },
                TableRow {
                    note: Some("the paper's text names this combination for the same row; its numbers are printed with mix-up + dimming"),
                    ..row(
                        Row { id: "aug-mixup-patching", overrides: &["method.augmentations=[\"mixup\", \"patching\"]"] },
                        "mix-up + patching",
                        None,
                    )
                },
                TableRow { label: "mix-up + dimming + patching (MAG-SD)", ..magsd(7, "AM + AD + AP") },
            ],
        },
        8 => Table {
            number: 8,
            title: "Soft distance against the mean cross-entropy",
            rows: vec![
                row(Row { id: "mean-ce", overrides: &["method.loss.variant=\"mean-ce\""] }, "mean CE (the paper's \"L2\")", Some((8, "L2"))),
                TableRow { label: "soft distance (MAG-SD)", ..magsd(8, "Soft Distance") },
            ],
        },
        _ => return None,
    };
    Some(t)
}

/// Parses `3`, `4,7` or `all` into table numbers.
pub fn parse_tables(specs: &[String]) -> crate::Result<Vec<u8>> {
    let mut out = Vec::new();
    for s in specs.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if s == "all" {
            out.extend(TABLES);
            continue;
        }
        let n: u8 = s
            .parse()
            .ok()
            .filter(|n| TABLES.contains(n))
            .ok_or_else(|| crate::Error::Config(format!("--table {s}: use 3, 4, 5, 6, 7, 8 or all")))?;
        out.push(n);
    }
    if out.is_empty() {
        return Err(crate::Error::Config("--table: name at least one of 3, 4, 5, 6, 7, 8 or all".into()));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The distinct rows of `tables`, in table order (each trained once).
pub fn rows_of(tables: &[u8]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for t in tables.iter().filter_map(|&n| table(n)) {
        for r in t.rows {
            if !out.iter().any(|o| o.id == r.row.id) {
                out.push(r.row);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_magsd_and_rows_with_one_id_have_one_config() {
        let all = rows_of(&TABLES);
        for n in TABLES {
            assert!(table(n).unwrap().rows.iter().any(|r| r.row == MAGSD), "table {n}");
        }
        for t in TABLES.iter().filter_map(|&n| table(n)) {
            for r in t.rows {
                assert_eq!(all.iter().find(|a| a.id == r.row.id), Some(&r.row));
            }
        }
        // Table 7 shares MAG-SD(0AUG) with Table 3 and MAG-SD with everything.
        assert_eq!(rows_of(&[7]).len(), 5);
        assert_eq!(rows_of(&[3, 7]).len(), 11 + 3);
        assert_eq!(parse_tables(&["all".into()]).unwrap(), TABLES.to_vec());
        assert_eq!(parse_tables(&["8,7".into(), "7".into()]).unwrap(), vec![7, 8]);
        assert!(parse_tables(&["9".into()]).is_err());
    }

    /// Every paper row a table names is in the paper's table, and every paper row but [51]'s is
    /// reproduced by a row.
    #[test]
    fn rows_name_the_papers_rows() {
        for n in TABLES {
            let t = table(n).unwrap();
            for r in &t.rows {
                // mix-up + patching: the paper prints its numbers with mix-up + dimming.
                let Some((pt, name)) = r.paper else {
                    assert_eq!(r.row.id, "aug-mixup-patching");
                    continue;
                };
                assert!(super::super::paper::rows(pt).iter().any(|p| p == name), "table {n} {}: {name}", r.label);
            }
            for p in super::super::paper::rows(n) {
                assert!(t.rows.iter().any(|r| r.paper == Some((n, p.as_str()))) || NOT_PROVIDED.contains(&p.as_str()), "table {n}: {p}");
            }
        }
    }

    #[test]
    fn ablation_rows_resolve_to_configs_on_every_preset() {
        for preset in crate::train::config::PRESETS {
            for r in rows_of(&[4, 5, 6, 7, 8]) {
                let o: Vec<String> = r.overrides.iter().map(|s| s.to_string()).collect();
                crate::train::config::TrainConfig::resolve(Some(preset), None, &o).unwrap_or_else(|e| panic!("{preset} {}: {e}", r.id));
            }
        }
    }
}
