//! `magsd data ...`: look at image files and datasets.
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::DataArgs;
use crate::data::dataset::Dataset;
use crate::data::decode::{DecodeLimits, Pixels, decode_file};
use crate::data::preprocess::narrow_to_u8;
use crate::data::split::{SplitFile, check_split, stratified_patient_kfold};
use crate::error::{Error, Result};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print what is read from image files (format, size, bit depth, conversions applied).
    #[command(after_help = "Examples:\n  magsd data inspect scan.dcm chest.png\n  magsd data inspect scan.dcm --write scan.png\n  magsd data inspect --max-pixels 100000000 huge.png")]
    Inspect {
        /// PNG, JPEG or DICOM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Refuse images with more pixels than this.
        #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
        max_pixels: u64,
        /// Write the decoded gray image, at full size and narrowed to 8 bits as the model sees it
        /// before resizing and CLAHE, as this PNG file (one input file only).
        #[arg(long, value_name = "PNG")]
        write: Option<PathBuf>,
        /// Overwrite the --write file if it exists (a symbolic link is never written through).
        #[arg(long)]
        force: bool,
    },
    /// Class counts, patients, sources, problems, and the sizes of a patient-level k-fold split.
    #[command(after_help = "Examples:\n  magsd data summary --data ../shared/data/cxr/manifest.csv\n  magsd data summary --data ../shared/data/cxr --label-column label3\n  magsd data summary --data ../shared/data/cxr-demo --folds 4")]
    Summary {
        #[command(flatten)]
        data: DataArgs,
        /// Folds of the split whose sizes are shown (k ≥ 2, at most the number of patients; 0: no split section).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Seed of the split.
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
        /// Number of folds (k ≥ 2).
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Seed of the split.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The JSON file to write.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Generate chest-radiograph phantoms with known lesion masks (for demos and tests).
    #[command(after_help = "Examples:\n  magsd data synth --out phantoms --per-class 50\n  magsd data summary --data phantoms\n  \
magsd data synth --out shortcut --classes covid19,normal --sources 2 --confounding 0.9 --stamp --no-lesions\n\n\
Classes: covid19 (bilateral peripheral ground-glass), bacterial (lobar consolidation), viral\n\
(patchy perihilar interstitial), normal. With --lesion-sites random, one lesion per image whose\n\
lung, place and extent are drawn alike for every class (only its look tells the classes apart).\n\
Masks are saved beside the images; the manifest has the shared data's columns plus `mask`.\n\n\
Shortcut sets (issue 22): --sources K puts each phantom in one of K sites (source_repo\n\
phantom-site-0, ...); --confounding P sends a share P of class j's phantoms to site j mod K\n\
(the rest evenly to the others; without it sites are drawn uniformly); --stamp burns each site's\n\
marker (a white square in its own corner) into its images; --no-lesions draws healthy anatomy\n\
for every class, so that only a marker can tell the labels apart.")]
    Synth {
        /// Folder to write (images/, masks/, manifest.csv).
        #[arg(long)]
        out: PathBuf,
        /// Phantoms per class.
        #[arg(long, default_value_t = 50)]
        per_class: usize,
        /// Image side in pixels (32 to 4096).
        #[arg(long, default_value_t = 160)]
        size: usize,
        /// Seed of the phantoms.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write into --out even if it already holds a manifest.csv (its phantoms are replaced).
        #[arg(long)]
        force: bool,
        /// Only these classes (comma-separated): covid19, bacterial, viral, normal.
        #[arg(long, value_delimiter = ',')]
        classes: Option<Vec<String>>,
        /// Synthetic sources (sites), 1 to 4.
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Share of each class's phantoms in its own site (0 to 1); default: sites drawn uniformly.
        #[arg(long)]
        confounding: Option<f64>,
        /// Burn each site's marker into its images.
        #[arg(long)]
        stamp: bool,
        /// Draw no lesions: every class is healthy anatomy (labels only).
        #[arg(long)]
        no_lesions: bool,
        /// Where the lesions sit: `class` (v1: each class in its own places) or `random` (v3: lung,
        /// place, extent and brightness drawn alike for every class, so only the texture inside
        /// the lesion tells them apart; `magsd demo`'s default).
        #[arg(long, value_enum, default_value = "class")]
        lesion_sites: crate::data::synth::LesionSites,
    },
    /// Check a saved split: every image in exactly one fold, no patient in two folds, no image
    /// twice (same bytes), and the number of folds it says it has.
    #[command(after_help = "Examples:\n  magsd data check --data ../shared/data/cxr/manifest.csv --split split.json\n  magsd data check --data ../shared/data/cxr/manifest.csv --split split.json --folds 5")]
    Check {
        #[command(flatten)]
        data: DataArgs,
        /// The split file (from `magsd data split` or a run's split.json).
        #[arg(long)]
        split: PathBuf,
        /// The number of folds the split must have.
        #[arg(long)]
        folds: Option<usize>,
    },
}

pub fn run(cmd: DataCommand) -> Result<i32> {
    match cmd {
        DataCommand::Inspect { files, max_pixels, write, force } => inspect(&files, max_pixels, write.as_deref(), force),
        DataCommand::Summary { data, folds, seed, by } => summary(&data, folds, seed, &by),
        DataCommand::Split { data, folds, seed, out, force } => {
            crate::files::check_writable(&out, force)?;
            let ds = data.open()?;
            let all: Vec<usize> = (0..ds.samples.len()).collect();
            let f = stratified_patient_kfold(&ds, &all, folds, seed)?;
            let check = check_split(&ds, &f.folds)?;
            crate::files::write_new(&out, &SplitFile::new(&ds, &f).to_json(), force)?;
            println!(
                "wrote {}: {} folds of {} images; check passed ({} patients, {} images hashed, no leak, no duplicate)",
                out.display(),
                folds,
                f.folds.iter().map(|f| f.len().to_string()).collect::<Vec<_>>().join(", "),
                check.patients,
                check.images_hashed
            );
            Ok(0)
        }
        DataCommand::Synth { out, per_class, size, seed, force, classes, sources, confounding, stamp, no_lesions, lesion_sites } => {
            if !(32..=4096).contains(&size) {
                return Err(Error::Config(format!("--size {size}: phantoms are 32 to 4096 pixels wide")));
            }
            if per_class == 0 {
                return Err(Error::Config("--per-class must be at least 1".into()));
            }
            super::refuse_overwrite(&out.join("manifest.csv"), force)?;
            let mut opts = crate::data::synth::SynthOptions { sources, confounding, stamp, lesions: !no_lesions, lesion_sites, ..crate::data::synth::SynthOptions::new(per_class, size, seed) };
            if let Some(c) = classes {
                opts.classes = c;
            }
            let o = crate::data::synth::write_dataset_with(&out, &opts)?;
            println!("wrote {} phantoms ({size}×{size}) and their lesion masks; manifest: {}", o.images, o.manifest.display());
            Ok(0)
        }
        DataCommand::Check { data, split, folds } => {
            let ds = data.open()?;
            let file = SplitFile::load(&split)?;
            let f = file.resolve(&ds, &split)?;
            check_complete(&ds, &file, &f.folds, folds, &split)?;
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

/// A split must have the folds it claims (and `expected`, when given), at least two, and hold
/// every image of the data.
fn check_complete(ds: &Dataset, file: &SplitFile, folds: &[Vec<usize>], expected: Option<usize>, path: &Path) -> Result<()> {
    if file.k != folds.len() {
        return Err(Error::bad_file(path, format!("says k = {} but holds {} folds", file.k, folds.len())));
    }
    if folds.len() < 2 {
        return Err(Error::bad_file(path, format!("holds {} fold(s); a k-fold split needs at least 2", folds.len())));
    }
    if let Some(k) = expected.filter(|&k| k != folds.len()) {
        return Err(Error::bad_file(path, format!("holds {} folds, not the {k} asked for with --folds", folds.len())));
    }
    let mut seen = vec![false; ds.samples.len()];
    for &i in folds.iter().flatten() {
        seen[i] = true;
    }
    let missing: Vec<&str> = ds.samples.iter().zip(&seen).filter(|(_, s)| !**s).map(|(x, _)| x.name.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::bad_file(
            path,
            format!(
                "{} of the data's {} images are in no fold (e.g. {})",
                missing.len(),
                ds.samples.len(),
                missing.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(())
}

fn inspect(files: &[PathBuf], max_pixels: u64, write: Option<&Path>, force: bool) -> Result<i32> {
    if write.is_some() && files.len() != 1 {
        return Err(Error::Config(format!("--write takes one input file, not {}", files.len())));
    }
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
                for w in &s.warnings {
                    println!("    warning: {w}");
                }
                if let Some(out) = write {
                    write_gray_png(&img, out, force)?;
                    println!("    wrote {} ({}×{}, 8-bit gray)", out.display(), img.width, img.height);
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

/// The decoded image as an 8-bit gray PNG (16-bit samples narrowed as preprocessing narrows
/// them), written by [`crate::files::write_new`]: an existing file is replaced only with
/// `force`, and a symbolic link at `out` is refused, so nothing is written through one.
fn write_gray_png(img: &crate::data::decode::GrayImage, out: &Path, force: bool) -> Result<()> {
    let gray = match &img.pixels {
        Pixels::U8(v) => v.clone(),
        Pixels::U16(v) => narrow_to_u8(v),
    };
    let buf = image::GrayImage::from_raw(img.width as u32, img.height as u32, gray).expect("width × height samples");
    let mut png = std::io::Cursor::new(Vec::new());
    buf.write_to(&mut png, image::ImageFormat::Png).map_err(|e| Error::bad_file(out, format!("cannot encode PNG: {e}")))?;
    crate::files::write_new(out, png.get_ref(), force)
}

fn summary(args: &DataArgs, folds: usize, seed: u64, by: &[String]) -> Result<i32> {
    if folds == 1 {
        return Err(Error::Config("--folds 1: a k-fold split needs k >= 2 (0 leaves the split section out)".into()));
    }
    let mut ds = args.open()?;
    // Only files that decode are images: an empty, text, 0×0 or header-only file is listed
    // under problems, not counted.
    let undecodable = ds.drop_undecodable(&DecodeLimits::default());
    // The split first, so that an impossible --folds is an error before anything is printed.
    let all: Vec<usize> = (0..ds.samples.len()).collect();
    let split = if folds >= 2 {
        Some(stratified_patient_kfold(&ds, &all, folds, seed).map_err(|e| Error::Config(format!("--folds {folds}: {e}")))?)
    } else {
        None
    };
    let counts = ds.class_counts();
    println!("data: {} ({})", ds.source.display(), ds.kind);
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
    if undecodable > 0 {
        println!("\nnot images ({undecodable}, left out of every count; they do not decode):");
        for s in ds.skipped.iter().filter(|s| s.reason.starts_with("not an image")).take(10) {
            println!("  {}: {}", s.path, s.reason.trim_start_matches("not an image: "));
        }
    }
    if !ds.problems.is_empty() {
        println!("\nproblems ({}):", ds.problems.len());
        for p in ds.problems.iter().take(10) {
            println!("  {p}");
        }
    }
    if let Some(f) = split {
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
