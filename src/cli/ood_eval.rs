//! `magsd ood-eval`: the model file's `unusual` flag against held-out X-rays and images that are
//! not valid inputs (`crate::eval::ood_eval`).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DataArgs;
use super::eval::ModelRun;
use super::predict::expand_inputs;
use crate::runfolder::resolve_model;
use crate::data::decode::{GrayImage, decode_file};
use crate::data::loader::{InputPipeline, Loader};
use crate::data::ood_sets::{self, OodImage};
use crate::error::{Error, Result};
use crate::eval::evaluate::{PredictOptions, predict};
use crate::eval::ood_eval::{Comparison, Distance, OodEvalReport, score_images, set_result};
use crate::eval::reliability::Reliability;
use crate::model::weights::load_model;

/// Side of the generated images (the shared cxr images are 224 × 224); the model's pipeline
/// resizes them as it resizes any input.
const GENERATED_SIZE: usize = 224;
const SEED: u64 = 17;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd ood-eval --model runs/final --data heldout.csv\n  \
  magsd ood-eval --model m.safetensors --data heldout.csv --ood natural=photos/ --ood non-chest=medical/ --out ood\n  \
  magsd ood-eval --model m.safetensors --data heldout.csv --fit-data train.csv --knn-k 5   # compare with kNN\n\n\
In-distribution: the held-out X-rays of --data (up to --limit, evenly spaced; use images the model\n\
did not train on). Out-of-distribution sets built here: 16 constant images (black to white), 16\n\
noise images, 16 gradients, 32 phantoms of `magsd data synth` (near), and the in-distribution\n\
X-rays inverted, rotated by 90° and cropped to their central 30 % (near). --ood NAME=FOLDER adds\n\
a folder of far-away images (PNG, JPEG, DICOM), --near-ood NAME=FOLDER one of near ones.\n\
Reports AUROC and FPR at 95 % TPR (OpenOOD's definitions) of the stored detector's distance, the\n\
energy score and (with --fit-data) the k-nearest-neighbour distance and the Mahalanobis distance\n\
on layer4 alone, and how many images the model file's own threshold flags.")]
pub struct OodEvalArgs {
    #[command(flatten)]
    pub run: ModelRun,
    /// In-distribution held-out images.
    #[command(flatten)]
    pub data: DataArgs,
    /// A folder of far out-of-distribution images, as NAME=FOLDER; repeatable.
    #[arg(long = "ood", value_name = "NAME=FOLDER")]
    pub ood: Vec<String>,
    /// A folder of near out-of-distribution images, as NAME=FOLDER; repeatable.
    #[arg(long = "near-ood", value_name = "NAME=FOLDER")]
    pub near_ood: Vec<String>,
    /// Training images (same label column and classes as --data) for the comparison detectors
    /// (kNN, and Mahalanobis on layer4 alone).
    #[arg(long)]
    pub fit_data: Option<PathBuf>,
    /// k of the kNN comparison.
    #[arg(long, default_value_t = 5)]
    pub knn_k: usize,
    /// At most this many in-distribution images.
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    /// Folder for ood-eval.json and ood-eval.md (printed only when absent).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite ood-eval.json and ood-eval.md in --out.
    #[arg(long)]
    pub force: bool,
}

/// `NAME=FOLDER` → the decoded images of the folder (recursively); unreadable files are named
/// and left out.
fn folder_set(spec: &str, pipeline: &InputPipeline) -> Result<(String, Vec<GrayImage>)> {
    let (name, dir) = spec
        .split_once('=')
        .filter(|(n, d)| !n.trim().is_empty() && !d.is_empty())
        .ok_or_else(|| Error::Config(format!("'{spec}': write NAME=FOLDER, e.g. natural=photos/")))?;
    let dir = Path::new(dir);
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "not a folder"));
    }
    let mut images = Vec::new();
    for p in expand_inputs(&[dir.to_path_buf()])? {
        match decode_file(&p, &pipeline.limits) {
            Ok(img) => images.push(img),
            Err(e) => eprintln!("warning: {e} (left out of set {name})"),
        }
    }
    if images.is_empty() {
        return Err(Error::bad_file(dir, "no readable PNG, JPEG or DICOM image in this folder"));
    }
    Ok((name.trim().to_string(), images))
}

fn images(set: Vec<OodImage>) -> Vec<GrayImage> {
    set.into_iter().map(|i| i.image).collect()
}

pub fn run(args: OodEvalArgs) -> Result<i32> {
    if let Some(out) = &args.out {
        for f in ["ood-eval.json", "ood-eval.md"] {
            super::refuse_overwrite(&out.join(f), args.force)?;
        }
    }
    let device = args.run.device.set_up()?;
    let path = resolve_model(&args.run.model)?;
    let m = load_model(&path, device)?;
    let reliability = Reliability::of(&m, &path)?;
    let pipeline = InputPipeline { preprocess: m.model.config.preprocess(), ..Default::default() };
    let batch = args.run.batch_size.max(1);

    // In-distribution: up to --limit images of --data, evenly spaced.
    let ds = args.data.open()?;
    let n = ds.samples.len();
    let take = n.min(args.limit.max(1));
    let mut id_images = Vec::with_capacity(take);
    let mut unreadable = Vec::new();
    for i in (0..take).map(|i| i * n / take) {
        match decode_file(&ds.samples[i].path, &pipeline.limits) {
            Ok(img) => id_images.push(img),
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    if id_images.is_empty() {
        return Err(Error::Data(format!("{}: no readable in-distribution image", args.data.path().display())));
    }

    let comparison = match &args.fit_data {
        None => None,
        Some(p) => {
            let fit = Arc::new(crate::data::dataset::Dataset::open(p, &args.data.options())?.with_classes(&m.model.config.class_labels()));
            let loader = Loader::new(fit.clone(), pipeline.clone(), 0, false);
            let all: Vec<usize> = (0..fit.samples.len()).collect();
            let opts = PredictOptions { batch_size: batch, keep_features: true, ..Default::default() };
            let pr = predict(&m.model, &loader, &all, device, &opts)?;
            let d = pr.features.first().map_or(0, Vec::len) as i64;
            let flat: Vec<f32> = pr.features.iter().flatten().copied().collect();
            eprintln!("comparison detectors fitted on {} training images of {}", pr.features.len(), p.display());
            let c4 = m.model.config.resnet.channels().2 as usize;
            Some(Comparison::fit(&tch::Tensor::from_slice(&flat).view([-1, d]), &pr.labels, args.knn_k, c4)?)
        }
    };
    let score = |imgs: &[GrayImage]| score_images(&m.model, &reliability, comparison.as_ref(), &pipeline, imgs, device, batch);

    let id = score(&id_images)?;
    let mut sets: Vec<(String, Distance, Vec<GrayImage>)> = vec![
        ("constant".into(), Distance::Far, images(ood_sets::constant(GENERATED_SIZE))),
        ("noise".into(), Distance::Far, images(ood_sets::noise(GENERATED_SIZE, SEED))),
        ("gradients".into(), Distance::Far, images(ood_sets::gradients(GENERATED_SIZE))),
        ("phantoms".into(), Distance::Near, images(ood_sets::phantoms(GENERATED_SIZE, SEED, 32))),
        ("inverted X-rays".into(), Distance::Near, id_images.iter().map(ood_sets::inverted).collect()),
        ("rotated X-rays".into(), Distance::Near, id_images.iter().map(ood_sets::rotated90).collect()),
        ("cropped X-rays".into(), Distance::Near, id_images.iter().map(|i| ood_sets::center_crop(i, 0.3)).collect()),
    ];
    for (specs, distance) in [(&args.ood, Distance::Far), (&args.near_ood, Distance::Near)] {
        for spec in specs {
            let (name, imgs) = folder_set(spec, &pipeline)?;
            sets.push((name, distance, imgs));
        }
    }
    let mut rows = vec![set_result("held-out X-rays", Distance::InDistribution, &id, None)];
    for (name, distance, imgs) in &sets {
        rows.push(set_result(name, *distance, &score(imgs)?, Some(&id)));
    }
    let report = OodEvalReport {
        model: path.display().to_string(),
        in_distribution: format!("{} ({} images)", args.data.path().display(), id_images.len()),
        knn_k: comparison.as_ref().map(|c| c.knn.k),
        sets: rows,
        unreadable,
    };
    for u in &report.unreadable {
        eprintln!("warning: {u} (left out)");
    }
    for line in reliability.describe() {
        println!("{line}");
    }
    let md = report.markdown();
    println!("\n{md}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        crate::error::write_atomic(&out.join("ood-eval.json"), &serde_json::to_vec_pretty(&report).expect("serialises"))?;
        crate::error::write_atomic(&out.join("ood-eval.md"), md.as_bytes())?;
        println!("written: {}", out.join("ood-eval.md").display());
    }
    Ok(0)
}
