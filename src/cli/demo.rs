//! `magsd demo`: the embedded default run.
use std::path::PathBuf;

use crate::demo::{DemoOptions, default_out, run as run_demo, summary_table};
use crate::error::Result;
use crate::train::config::TrainConfig;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd demo                                   # phantoms, tiny model, about 7 minutes on 2 CPU cores\n  \
  magsd demo --out demo-report\n  \
  magsd demo --data ../shared/data/cxr-demo --epochs 20\n  \
  magsd demo --data my.csv --label-column label3 --set model.image_size=128")]
#[command(mut_arg("data", |a| a.required(false).help(
    "Run on your data (ImageFolder root, folder with manifest.csv, or manifest CSV) instead of phantoms"
)))]
pub struct DemoArgs {
    /// Report folder (default: runs/demo-<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub data: super::DataArgs,
    /// Phantoms per class.
    #[arg(long, default_value_t = 600)]
    pub per_class: usize,
    /// Where the phantoms' lesions sit: `random` (v3, at random places; only the texture inside a
    /// lesion tells the classes apart, so a model must find it) or `class` (v1, each class in its
    /// own places; a model can classify them by position alone, see BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "random")]
    pub lesion_sites: crate::data::synth::LesionSites,
    /// Training epochs.
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// Seed of the phantoms, the split and the training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: super::DeviceArgs,
    /// Any training setting, as for `magsd train`.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

pub fn run(a: DemoArgs) -> Result<i32> {
    super::check_classes(&a.data.classes)?;
    let out = a.out.clone().unwrap_or_else(default_out);
    let mut overrides = DemoOptions::default_overrides();
    overrides.extend([format!("epochs={}", a.epochs), format!("seed={}", a.seed)]);
    overrides.extend(a.set.iter().cloned());
    overrides.extend(a.device.overrides());
    let mut o = DemoOptions::new(out.clone())?;
    o.config = TrainConfig::resolve(Some("tiny"), None, &overrides)?;
    o.device = crate::device::set_up(o.config.device, o.config.performance.deterministic)?;
    o.data = a.data.data.clone();
    o.dataset = a.data.options();
    o.per_class = a.per_class;
    o.lesion_sites = a.lesion_sites;
    eprintln!("magsd demo on {} → {}", crate::device::describe(o.device), out.display());
    super::install_ctrl_c();
    let s = run_demo(&o)?;
    println!("{}", summary_table(&s));
    println!("report: {}", s.report.display());
    Ok(0)
}
