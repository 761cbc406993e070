//! `magsd data ...`: look at image files and datasets.
use std::path::PathBuf;

use clap::Subcommand;

use super::DataArgs;
use crate::data::decode::{DecodeLimits, decode_file};
use crate::data::split::{SplitFile, check_split, stratified_patient_kfold};
use crate::error::Result;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print what is read from image files (format, size, bit depth, conversions applied).
    #[command(after_help = "Examples:\n  magsd data inspect scan.dcm chest.png\n  magsd data inspect --max-pixels 100000000 huge.png")]
    Inspect {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Refuse images with more pixels than this.
        #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
        max_pixels: u64,
    },
    /// Class counts, patients, sources, problems, and the sizes of a patient-level k-fold split.
    #[command(after_help = "Examples:\n  magsd data summary --data ../shared/data/cxr/manifest.csv\n  magsd data summary --data ../shared/data/cxr --label-column label3\n  magsd data summary --data ../shared/data/cxr-demo --folds 4")]
    Summary {
        #[command(flatten)]
        data: DataArgs,
        /// Folds of the split whose sizes are shown.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Metadata columns to break the counts down by (default: source_repo and dataset, where present).
        #[arg(long = "by")]
        by: Vec<String>,
    },
    /// Make a seeded patient-level stratified k-fold split, check it, and save it as JSON.
    #[command(after_help = "Examples:\n  magsd data split --data ../shared/data/cxr/manifest.csv --folds 5 --seed 0 --out split.json")]
    Split {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate chest-radiograph phantoms with known lesion masks (for demos and tests).
    #[command(after_help = "Examples:\n  magsd data synth --out phantoms --per-class 50\n  magsd data summary --data phantoms\n\n\
Classes: covid19 (bilateral peripheral ground-glass), bacterial (lobar consolidation), viral\n\
(patchy perihilar interstitial), normal. Masks are saved beside the images; the manifest has\n\
the shared data's columns plus `mask`.")]
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 50)]
        per_class: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 160)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Check a saved split: no patient in two folds, no image twice (same bytes).
    #[command(after_help = "Examples:\n  magsd data check --data ../shared/data/cxr/manifest.csv --split split.json")]
    Check {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        split: PathBuf,
    },
}

pub fn run(cmd: DataCommand) -> Result<i32> {
    match cmd {
        DataCommand::Inspect { files, max_pixels } => inspect(&files, max_pixels),
        DataCommand::Summary { data, folds, seed, by } => summary(&data, folds, seed, &by),
        DataCommand::Split { data, folds, seed, out } => {
            let ds = data.open()?;
            let all: Vec<usize> = (0..ds.samples.len()).collect();
            let f = stratified_patient_kfold(&ds, &all, folds, seed)?;
            let check = check_split(&ds, &f.folds)?;
            SplitFile::new(&ds, &f).save(&out)?;
            println!(
                "wrote {}: {} folds of {:?} images; check passed ({} patients, {} images hashed, no leak, no duplicate)",
                out.display(),
                folds,
                f.folds.iter().map(Vec::len).collect::<Vec<_>>(),
                check.patients,
                check.images_hashed
            );
            Ok(0)
        }
        DataCommand::Synth { out, per_class, size, seed } => {
            let o = crate::data::synth::write_dataset(&out, per_class, size, seed)?;
            println!("wrote {} phantoms ({size}×{size}) and their lesion masks; manifest: {}", o.images, o.manifest.display());
            Ok(0)
        }
        DataCommand::Check { data, split } => {
            let ds = data.open()?;
            let f = SplitFile::load(&split)?.resolve(&ds, &split)?;
            let check = check_split(&ds, &f.folds)?;
            println!(
                "{}: check passed: {} folds, {} images, {} patients, no patient in two folds, no duplicate bytes",
                split.display(),
                check.parts,
                check.images,
                check.patients
            );
            Ok(0)
        }
    }
}

fn inspect(files: &[PathBuf], max_pixels: u64) -> Result<i32> {
    let limits = DecodeLimits { max_pixels };
    let mut failed = 0;
    for f in files {
        match decode_file(f, &limits) {
            Ok(img) => {
                let (lo, hi, mean) = img.stats();
                let s = &img.source;
                println!(
                    "{}: {} {}×{} {} {}-bit → gray {}-bit, min {lo} max {hi} mean {mean:.1}",
                    f.display(),
                    s.format,
                    img.width,
                    img.height,
                    s.color,
                    s.bits,
                    if img.max_value() > 255.0 { 16 } else { 8 },
                );
                for n in &s.notes {
                    println!("    {n}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn summary(args: &DataArgs, folds: usize, seed: u64, by: &[String]) -> Result<i32> {
    let ds = args.open()?;
    let counts = ds.class_counts();
    println!("data: {} ({:?})", ds.source.display(), ds.kind);
    println!("images: {}   patients: {}   classes: {}", ds.samples.len(), ds.patient_count(), ds.classes.len());
    let width = ds.classes.iter().map(String::len).max().unwrap_or(5).max(5);
    println!("\n{:<width$}  images", "class");
    for (c, n) in ds.classes.iter().zip(&counts) {
        println!("{c:<width$}  {n:>6}");
    }
    if !ds.excluded.is_empty() {
        println!("\nleft out (label not among the chosen classes):");
        for (l, n) in &ds.excluded {
            println!("  {l}: {n}");
        }
    }
    let columns = if by.is_empty() { ds.default_breakdown() } else { by.to_vec() };
    for col in columns {
        println!("\nby {col}:  {}", ds.classes.join(" / "));
        for (v, n) in ds.breakdown(&col) {
            let v = if v.is_empty() { "(empty)".to_string() } else { v };
            println!("  {v}: {}", n.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" / "));
        }
    }
    if !ds.problems.is_empty() {
        println!("\nproblems ({}):", ds.problems.len());
        for p in ds.problems.iter().take(10) {
            println!("  {p}");
        }
    }
    if folds >= 2 && ds.samples.len() >= folds {
        let all: Vec<usize> = (0..ds.samples.len()).collect();
        let f = stratified_patient_kfold(&ds, &all, folds, seed)?;
        println!("\n{folds}-fold patient-level split (seed {seed}): images per fold ({})", ds.classes.join(" / "));
        for (k, fold) in f.folds.iter().enumerate() {
            let mut c = vec![0; ds.classes.len()];
            for &i in fold {
                c[ds.samples[i].label] += 1;
            }
            println!(
                "  fold {k}: {:>5}  ({})",
                fold.len(),
                c.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" / ")
            );
        }
        let check = check_split(&ds, &f.folds)?;
        println!(
            "split check passed: no patient in two folds, no duplicate image bytes ({} images hashed)",
            check.images_hashed
        );
    }
    Ok(0)
}
