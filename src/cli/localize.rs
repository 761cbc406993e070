//! `magsd localize`: `magsd eval` with ground truth required, and the saliency methods compared.
use std::path::PathBuf;

use super::DataArgs;
use super::eval::{EvalArgs, LocalizationArgs, ModelRun};
use crate::error::{Error, Result};
use crate::eval::saliency::Method;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
  magsd localize --model runs/final --data phantoms                      # the manifest's mask column\n  \
  magsd localize --model m.safetensors --data x.csv --masks-column lesion_mask --threshold abs:0.85\n  \
  magsd localize --model m.safetensors --data x.csv --boxes boxes.csv --out loc-x\n\n\
Upsamples each image's map (--map), thresholds it, turns 8-connected components into boxes\n\
and reports the IoU of their union with the lesion mask or boxes; also writes everything eval writes.\n\
Then compares saliency methods on the same model (--method; default every one the model has):\n\
box IoU, pointing game, energy pointing game, saliency AUROC, flip consistency and the deletion\n\
curve's area, each with a 95 % bootstrap interval over images, in metrics.json and the report.")]
pub struct LocalizeArgs {
    #[command(flatten)]
    pub run: ModelRun,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub localization: LocalizationArgs,
    /// Output folder (default: eval-<data name> beside the model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Attention overlays to draw.
    #[arg(long, default_value_t = 8)]
    pub overlays: usize,
    /// Comma-separated saliency methods to compare: evidence, mean, class, scale14, scale28,
    /// class14, class28, gradcam, gradcam-layer3, gradcam++, gradcam++-layer3, uniform, centre
    /// (default: every one this model has).
    #[arg(long)]
    pub method: Option<String>,
    /// Refuse to report when any image is missing, unreadable or decoded with a warning (e.g. a
    /// truncated JPEG): list them all and exit with an error.
    #[arg(long)]
    pub strict: bool,
    /// Write into --out even if it holds metrics.json or is a training run's folder.
    #[arg(long)]
    pub force: bool,
}

impl TryFrom<LocalizeArgs> for EvalArgs {
    type Error = Error;
    fn try_from(a: LocalizeArgs) -> Result<Self> {
        let methods = match &a.method {
            Some(list) => Method::parse_list(list)?,
            None => Vec::new(),
        };
        Ok(EvalArgs {
            run: a.run,
            data: a.data,
            out: a.out,
            by: Vec::new(),
            strict: a.strict,
            overlays: a.overlays,
            localization: a.localization,
            force: a.force,
            methods,
        })
    }
}

