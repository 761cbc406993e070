//! Training configuration: presets, a TOML file, and `key=value` overrides, resolved into one
//! [`TrainConfig`] that is saved with every run (`config.toml`).
//!
//! Resolution order: the preset (`paper`, `authors-code` or `tiny`; a file may name its own),
//! then the file's values, then each `--set section.key=value` (values in TOML syntax; bare
//! words are strings). Unknown keys are errors, so a typo never silently does nothing.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::attention_aug::{AttentionAug, AttentionAugConfig};
use super::loss::LossConfig;
use super::sampling::{Sampling, default_source_column};
use crate::data::augment::AugmentPolicy;
use crate::data::preprocess::{PreprocessConfig, ZScore};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::eval::calibration::CalibrationMethod;
use crate::eval::ood::OodMethod;
use crate::eval::operating_point::OperatingPointSpec;
use crate::model::config::{Arch, Head, NetworkConfig, Scales};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The network: magsd (MA-Net, the default) or a baseline of Table 3 (vgg16, resnet18,
    /// resnet50, inception-v3, covid-net, bcnn, bcnn-attention, fpn, unet).
    #[serde(default)]
    pub arch: Arch,
    /// MA-Net's backbone: resnet18, resnet34, resnet50 or tiny.
    pub backbone: String,
    pub maps: i64,
    pub scales: Scales,
    pub head: Head,
    pub in_channels: i64,
    pub image_size: i64,
    /// A torchvision checkpoint to start the backbone from (e.g. ImageNet weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub label_column: String,
    /// Classes to keep, in order; all labels when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// Image-level augmentation (Table 2).
    pub augment: AugmentPolicy,
    pub clahe: bool,
    pub zscore: ZScore,
    pub max_pixels: u64,
    /// How each epoch draws its training images: `shuffle` (the default), or a source-aware
    /// sampler measured as a shortcut mitigation (`train::sampling`).
    #[serde(default, skip_serializing_if = "Sampling::is_shuffle")]
    pub sampling: Sampling,
    /// The metadata column naming an image's source for the balanced samplers.
    #[serde(default = "default_source_column", skip_serializing_if = "is_default_source_column")]
    pub source_column: String,
}

fn is_default_source_column(c: &str) -> bool {
    c == default_source_column()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    Constant,
    /// ×`gamma` at each epoch in `milestones` (epoch `e` uses `gamma^(#milestones ≤ e)`).
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// Cosine annealing from the base rate to `min_lr` over the run.
    Cosine { min_lr: f64 },
}

impl LrSchedule {
    /// The learning rate of (0-based) `epoch` out of `epochs`.
    pub fn lr_at(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::MultiStep { milestones, gamma } => {
                base * gamma.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
            }
            LrSchedule::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub schedule: LrSchedule,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSection {
    /// Attention-guided augmentations per step (Table 7: any subset; empty = plain CE).
    pub augmentations: Vec<AttentionAug>,
    pub attention: AttentionAugConfig,
    pub loss: LossConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSection {
    /// Patient-level fraction of the training images held out to pick the best epoch
    /// (0: no validation, the last epoch's model is kept).
    pub fraction: f64,
    /// Validate every this many epochs (and after the last).
    pub every: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceSection {
    /// bf16 autocast (CUDA only; on in every preset, since it trained 1.3× faster than fp32 on an
    /// H100 with the same losses to bf16 precision: BENCHMARKS.md).
    pub bf16: bool,
    /// Channels-last memory layout (CUDA only; on in every preset, with bf16).
    pub channels_last: bool,
    /// Keep decoded, resized, CLAHE'd images in memory between epochs.
    pub cache: bool,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
    /// Write a step record to the log every this many steps.
    pub log_every: usize,
    /// Record the MAG-SD training step as a CUDA graph and replay it (CUDA only; see
    /// `train::cuda_graph`). On in every preset: 1.9× the eager epoch throughput on an H100,
    /// same losses (BENCHMARKS.md). A file without the key means off (runs made before it).
    #[serde(default)]
    pub cuda_graph: bool,
    /// Deterministic cuDNN algorithms and no cuDNN benchmarking (CUDA; `--deterministic`), so
    /// that the same seed gives the same loss curve on a GPU too, at some cost in speed.
    #[serde(default)]
    pub deterministic: bool,
}

/// How probabilities are calibrated and which operating points are chosen, after training, on
/// the validation split (`crate::train::reliability`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSection {
    /// `temperature` (temperature scaling fitted on the validation split) or `none` (raw softmax).
    #[serde(default)]
    pub method: CalibrationMethod,
    /// Decision thresholds, each `CLASS:sensitivity=S` or `CLASS:specificity=S` (`--operating-point`).
    #[serde(default)]
    pub operating_points: Vec<String>,
}

/// The out-of-distribution detector fitted after training (`crate::eval::ood`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OodSection {
    /// `mahalanobis` (stored in the model file) or `none`.
    #[serde(default)]
    pub method: OodMethod,
    /// Fraction of held-out in-distribution images the threshold accepts.
    #[serde(default = "default_tpr")]
    pub tpr: f64,
}

fn default_tpr() -> f64 {
    crate::eval::ood::DEFAULT_TPR
}

impl Default for OodSection {
    fn default() -> Self {
        OodSection { method: OodMethod::default(), tpr: default_tpr() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub preset: String,
    pub seed: u64,
    pub device: DeviceChoice,
    pub epochs: usize,
    pub batch_size: usize,
    /// Iterations per epoch; absent = one pass over the training images (the last partial
    /// batch is dropped, as the authors' loader does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iters_per_epoch: Option<usize>,
    pub model: ModelSection,
    pub data: DataSection,
    pub optim: OptimSection,
    pub method: MethodSection,
    pub validation: ValidationSection,
    pub performance: PerformanceSection,
    /// Files without the section (runs made before it) get the defaults.
    #[serde(default)]
    pub calibration: CalibrationSection,
    #[serde(default)]
    pub ood: OodSection,
}

pub const PRESETS: [&str; 3] = ["paper", "authors-code", "tiny"];

impl TrainConfig {
    /// The paper's setting (§4.2): SGD momentum 0.9, lr 1e-3, weight decay 1e-6, batch 32,
    /// 100 epochs, ResNet50 at 224×224.
    pub fn paper() -> Self {
        TrainConfig {
            preset: "paper".into(),
            seed: 0,
            device: DeviceChoice::Auto,
            epochs: 100,
            batch_size: 32,
            iters_per_epoch: None,
            model: ModelSection {
                arch: Arch::Magsd,
                backbone: "resnet50".into(),
                maps: 32,
                scales: Scales::S7_14,
                head: Head::Bap,
                in_channels: 1,
                image_size: 224,
                pretrained: None,
            },
            data: DataSection {
                label_column: "label".into(),
                classes: None,
                augment: AugmentPolicy::AuthorsCode,
                clahe: true,
                zscore: ZScore::PerImage,
                max_pixels: crate::data::decode::DecodeLimits::default().max_pixels,
                sampling: Sampling::Shuffle,
                source_column: default_source_column(),
            },
            optim: OptimSection { lr: 1e-3, momentum: 0.9, weight_decay: 1e-6, nesterov: false, schedule: LrSchedule::Constant },
            method: MethodSection {
                augmentations: vec![AttentionAug::Mixup, AttentionAug::Dimming, AttentionAug::Patching],
                attention: AttentionAugConfig::authors_code(),
                loss: LossConfig::default(),
            },
            validation: ValidationSection { fraction: 0.1, every: 1 },
            performance: PerformanceSection {
                bf16: true,
                channels_last: true,
                cache: true,
                prefetch: 2,
                log_every: 10,
                cuda_graph: true,
                deterministic: false,
            },
            calibration: CalibrationSection::default(),
            ood: OodSection::default(),
        }
    }

    /// The authors' code (spec §4.1): weight decay 5e-4, Nesterov, batch 16, 150 "epochs" of
    /// 345 iterations, lr ×0.1 so that epochs 0–75 run at 1e-3, 76–125 at 1e-4 and 126–149 at
    /// 1e-5 — what their `MultiStepLR([75, 125])` stepped with `step(epoch)` actually does.
    pub fn authors_code() -> Self {
        let mut c = Self::paper();
        c.preset = "authors-code".into();
        c.epochs = 150;
        c.batch_size = 16;
        c.iters_per_epoch = Some(345);
        c.optim.weight_decay = 5e-4;
        c.optim.nesterov = true;
        c.optim.schedule = LrSchedule::MultiStep { milestones: vec![76, 126], gamma: 0.1 };
        c
    }

    /// A small network on 96×96 inputs for CPU tests and the demo: same method, few steps.
    pub fn tiny() -> Self {
        let mut c = Self::paper();
        c.preset = "tiny".into();
        let tiny = NetworkConfig::tiny(2);
        c.model.backbone = tiny.backbone;
        c.model.maps = tiny.num_maps;
        c.model.image_size = tiny.image_size;
        c.epochs = 3;
        c.batch_size = 8;
        // BAP's ×100 scale makes the classifier steep: 1e-2 diverges early, 1e-3 does not.
        c.optim.lr = 1e-3;
        c.optim.weight_decay = 5e-4;
        c.optim.nesterov = true;
        c.optim.schedule = LrSchedule::Cosine { min_lr: 1e-4 };
        c.validation.fraction = 0.0;
        c.performance.log_every = 1;
        c
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Self::paper()),
            "authors-code" => Ok(Self::authors_code()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Config(format!("preset '{other}': use one of {}", PRESETS.join(", ")))),
        }
    }

    /// Preset → file → overrides (see the module docs).
    pub fn resolve(preset: Option<&str>, file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let file_value: Option<toml::Table> = match file {
            None => None,
            Some(p) => {
                let text = crate::files::read_to_string(p, crate::files::MAX_TEXT_BYTES, "config")?;
                Some(toml::from_str(&text).map_err(|e| Error::bad_file(p, format!("not valid TOML: {e}")))?)
            }
        };
        let file_preset = file_value.as_ref().and_then(|t| t.get("preset")).and_then(|v| v.as_str()).map(String::from);
        let name = preset.map(String::from).or(file_preset).unwrap_or_else(|| "paper".into());
        let name = name.as_str();
        let preset = Self::preset(name)?;
        let preset_size = preset.model.image_size;
        let mut value = toml::Table::try_from(preset).expect("config serialises to TOML");
        let mut size_given = false;
        if let Some(f) = file_value {
            size_given |= f.get("model").and_then(|m| m.get("image_size")).is_some();
            merge(&mut value, f);
        }
        value.insert("preset".into(), toml::Value::String(name.into()));
        for o in overrides {
            let (key, raw) = o
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("'{o}': overrides are key=value, e.g. optim.lr=0.01")))?;
            size_given |= key.trim() == "model.image_size";
            set_path(&mut value, key.trim(), parse_value(raw.trim()))?;
        }
        // The preset's input side is for the chosen network: InceptionV3 has its own 299 at paper
        // scale (the tiny preset's 96 suits every network). A side given in the file or an
        // override wins.
        let arch = value.get("model").and_then(|m| m.get("arch")).and_then(|a| a.as_str()).map(Arch::parse).transpose()?;
        if let Some(arch) = arch
            && !size_given
            && preset_size == Arch::Magsd.paper_image_size()
        {
            set_path(&mut value, "model.image_size", toml::Value::Integer(arch.paper_image_size()))?;
        }
        let cfg: TrainConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.message().to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(Error::Config("batch_size must be at least 2 (BatchNorm needs a batch)".into()));
        }
        if self.epochs == 0 {
            return Err(Error::Config("epochs must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.validation.fraction) {
            return Err(Error::Config(format!("validation.fraction must be in [0, 1), got {}", self.validation.fraction)));
        }
        if self.validation.every == 0 || self.performance.log_every == 0 {
            return Err(Error::Config("validation.every and performance.log_every must be at least 1".into()));
        }
        let mut seen = Vec::new();
        for a in &self.method.augmentations {
            if seen.contains(a) {
                return Err(Error::Config(format!("augmentation {a:?} listed twice")));
            }
            seen.push(*a);
        }
        self.validate_numbers()?;
        if let Some(classes) = &self.data.classes {
            check_class_list(classes).map_err(|e| Error::Config(format!("data.classes: {e}")))?;
        }
        if self.iters_per_epoch == Some(0) {
            return Err(Error::Config("iters_per_epoch must be at least 1".into()));
        }
        if self.data.max_pixels == 0 {
            return Err(Error::Config("data.max_pixels must be at least 1".into()));
        }
        for p in &self.calibration.operating_points {
            OperatingPointSpec::parse(p).map_err(|e| Error::Config(format!("calibration.operating_points: {e}")))?;
        }
        if !(self.ood.tpr > 0.0 && self.ood.tpr <= 1.0) {
            return Err(Error::Config(format!("ood.tpr must be in (0, 1], got {}", self.ood.tpr)));
        }
        self.model_config(2)?;
        Ok(())
    }

    /// Every number of the optimiser, the augmentations and the loss: finite and in range,
    /// each error naming its key.
    fn validate_numbers(&self) -> Result<()> {
        let o = &self.optim;
        let a = &self.method.attention;
        let l = &self.method.loss;
        let positive = |v: f64| v > 0.0;
        let non_negative = |v: f64| v >= 0.0;
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let below_one = |v: f64| (0.0..1.0).contains(&v);
        let below_half = |v: f64| (0.0..0.5).contains(&v);
        // The cosine schedule anneals *down* to its floor: min_lr = 5 with lr = 1e-3 would anneal
        // up to 5 and diverge. (A multi-step γ > 1 raises the rate, as PyTorch allows.)
        let lr = o.lr;
        let floor = move |v: f64| (0.0..=lr).contains(&v);
        let floor_range = format!("in [0, optim.lr = {lr}]");
        let mut checks: Vec<NumberCheck> = vec![
            ("optim.lr".into(), o.lr, &positive, "> 0"),
            ("optim.momentum".into(), o.momentum, &below_one, "in [0, 1)"),
            ("optim.weight_decay".into(), o.weight_decay, &non_negative, ">= 0"),
            ("method.loss.threshold".into(), l.threshold, &unit, "in [0, 1]"),
            ("method.loss.smoothing".into(), l.smoothing, &below_one, "in [0, 1)"),
            ("method.attention.mixup_gamma".into(), a.mixup_gamma, &unit, "in [0, 1]"),
            ("method.attention.dim_inside".into(), a.dim_inside, &non_negative, ">= 0"),
            ("method.attention.dim_outside".into(), a.dim_outside, &non_negative, ">= 0"),
            ("method.attention.pad".into(), a.pad, &below_half, "in [0, 0.5)"),
        ];
        for (name, (lo, hi)) in [("mixup_theta", a.mixup_theta), ("dim_theta", a.dim_theta), ("patch_theta", a.patch_theta)] {
            checks.push((format!("method.attention.{name}[0]"), lo, &unit, "in [0, 1]"));
            checks.push((format!("method.attention.{name}[1]"), hi, &unit, "in [0, 1]"));
            if lo > hi {
                return Err(Error::Config(format!("method.attention.{name}: the low end {lo} is above the high end {hi}")));
            }
        }
        match &o.schedule {
            LrSchedule::Constant => {}
            LrSchedule::MultiStep { gamma, milestones } => {
                checks.push(("optim.schedule.gamma".into(), *gamma, &positive, "> 0"));
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::Config(format!("optim.schedule.milestones must be increasing epochs, got {milestones:?}")));
                }
            }
            LrSchedule::Cosine { min_lr } => checks.push(("optim.schedule.min_lr".into(), *min_lr, &floor, &floor_range)),
        }
        for (key, v, ok, range) in checks {
            if !v.is_finite() || !ok(v) {
                return Err(Error::Config(format!("{key} must be finite and {range}, got {v}")));
            }
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }

    /// The network this config trains, for `class_names`.
    pub fn model_config(&self, num_classes: usize) -> Result<NetworkConfig> {
        let m = &self.model;
        let cfg = NetworkConfig {
            arch: m.arch,
            num_maps: m.maps,
            scales: m.scales,
            head: m.head,
            in_channels: m.in_channels,
            image_size: m.image_size,
            clahe: self.data.clahe,
            zscore: self.data.zscore,
            ..NetworkConfig::paper(num_classes as i64).with_backbone(&m.backbone)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The network for a dataset's classes (names kept, so outputs stay in this order).
    pub fn model_config_for(&self, classes: &[String]) -> Result<NetworkConfig> {
        Ok(NetworkConfig { class_names: classes.to_vec(), ..self.model_config(classes.len())? })
    }

    /// How this run predicts (validation and held-out evaluation): its batch size and precision.
    pub fn predict_options(&self) -> crate::eval::evaluate::PredictOptions {
        crate::eval::evaluate::PredictOptions {
            batch_size: self.batch_size,
            bf16: self.performance.bf16,
            channels_last: self.performance.channels_last,
            ..Default::default()
        }
    }

    /// The deterministic input pipeline this config uses.
    pub fn preprocess(&self) -> Result<PreprocessConfig> {
        Ok(self.model_config(2)?.preprocess())
    }
}

/// A setting's key, its value, the test it must pass and that test in words.
type NumberCheck<'a> = (String, f64, &'a dyn Fn(f64) -> bool, &'a str);

/// A list of class names: none empty, none twice.
pub fn check_class_list(classes: &[String]) -> std::result::Result<(), String> {
    if classes.is_empty() {
        return Err("no class given".into());
    }
    for (i, c) in classes.iter().enumerate() {
        if c.trim().is_empty() {
            return Err("an empty class name".into());
        }
        if classes[..i].contains(c) {
            return Err(format!("class '{c}' is listed twice"));
        }
    }
    Ok(())
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty()).ok_or_else(|| Error::Config(format!("empty key in '{key}'")))?;
    let mut t = table;
    for p in parts {
        t = match t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default())) {
            toml::Value::Table(inner) => inner,
            _ => return Err(Error::Config(format!("'{key}': '{p}' is not a section"))),
        };
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_toml() {
        for p in PRESETS {
            let c = TrainConfig::preset(p).unwrap();
            let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(back, c, "{p}");
            c.validate().unwrap();
        }
    }

    #[test]
    fn file_and_overrides_apply_in_order_and_typos_fail() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        std::fs::write(&f, "preset = \"authors-code\"\nepochs = 7\n[optim]\nlr = 0.5\n").unwrap();
        let c = TrainConfig::resolve(None, Some(&f), &["optim.lr=0.25".into(), "method.augmentations=[\"mixup\"]".into()]).unwrap();
        assert_eq!(c.preset, "authors-code");
        assert_eq!(c.epochs, 7);
        assert_eq!(c.optim.lr, 0.25);
        assert!(c.optim.nesterov);
        assert_eq!(c.method.augmentations, vec![AttentionAug::Mixup]);
        let e = TrainConfig::resolve(Some("tiny"), None, &["optim.lrr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = TrainConfig::resolve(Some("nope"), None, &[]).unwrap_err().to_string();
        assert!(e.contains("preset"), "{e}");
        let c = TrainConfig::resolve(Some("tiny"), None, &["model.scales=\"7+14+28\"".into(), "data.augment=paper".into()]).unwrap();
        assert_eq!(c.model.arch, Arch::Magsd);
        assert_eq!(c.model.scales, Scales::S7_14_28);
        assert_eq!(c.data.augment, AugmentPolicy::Paper);
    }

    #[test]
    fn bad_numbers_are_refused_naming_their_key() {
        for (set, key) in [
            ("optim.lr=nan", "optim.lr"),
            ("optim.lr=-1", "optim.lr"),
            ("optim.momentum=1.5", "optim.momentum"),
            ("optim.weight_decay=-1e-4", "optim.weight_decay"),
            ("method.loss.smoothing=1.0", "method.loss.smoothing"),
            ("method.loss.threshold=inf", "method.loss.threshold"),
            ("method.attention.dim_theta=[0.6, 0.2]", "method.attention.dim_theta"),
            ("method.attention.mixup_theta=[0.4, 2.0]", "method.attention.mixup_theta[1]"),
            ("data.classes=[\"normal\", \"normal\"]", "data.classes"),
            // Schedules only lower the rate (issue 18: min_lr = 5 with lr 1e-3 trained to a loss of 34,208).
            ("optim.schedule.min_lr=5", "optim.schedule.min_lr"),
            ("optim.schedule.min_lr=-1e-4", "optim.schedule.min_lr"),
            ("optim.schedule.min_lr=nan", "optim.schedule.min_lr"),
        ] {
            let e = TrainConfig::resolve(Some("tiny"), None, &[set.to_string()]).unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        for (set, key) in [("ood.tpr=0", "ood.tpr"), ("calibration.operating_points=[\"covid19:sens=2\"]", "calibration.operating_points")] {
            let e = TrainConfig::resolve(Some("tiny"), None, &[set.to_string()]).unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        let c = TrainConfig::resolve(Some("tiny"), None, &["calibration.method=none".into()]).unwrap();
        assert_eq!(c.calibration.method, CalibrationMethod::None);
        // A config.toml written before the sections existed reads with their defaults.
        let old = TrainConfig::paper().to_toml();
        let old = &old[..old.find("[calibration]").unwrap()];
        assert_eq!(toml::from_str::<TrainConfig>(old).unwrap(), TrainConfig::paper());
        for (preset, set, key) in [
            ("authors-code", "optim.schedule.gamma=0", "optim.schedule.gamma"),
            ("authors-code", "optim.schedule.milestones=[126, 76]", "optim.schedule.milestones"),
        ] {
            let e = TrainConfig::resolve(Some(preset), None, &[set.to_string()]).unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        TrainConfig::resolve(Some("tiny"), None, &["optim.schedule.min_lr=1e-3".into()]).unwrap();
        // A huge learning rate is a valid (if foolish) setting: training stops on a non-finite loss.
        TrainConfig::resolve(Some("tiny"), None, &["optim.lr=1e30".into()]).unwrap();
        let c = TrainConfig::resolve(Some("tiny"), None, &["performance.deterministic=true".into()]).unwrap();
        assert!(c.performance.deterministic);
    }

    #[test]
    fn the_arch_key_selects_a_baseline_and_inception_gets_its_own_input_side() {
        let c = TrainConfig::resolve(None, None, &["model.arch=\"inception-v3\"".into()]).unwrap();
        assert_eq!(c.model.arch, Arch::InceptionV3);
        assert_eq!(c.model.image_size, 299);
        assert_eq!(c.model_config(3).unwrap().arch, Arch::InceptionV3);
        let c = TrainConfig::resolve(None, None, &["model.arch=\"inception-v3\"".into(), "model.image_size=96".into()]).unwrap();
        assert_eq!(c.model.image_size, 96);
        let c = TrainConfig::resolve(Some("tiny"), None, &["model.arch=\"vgg16\"".into()]).unwrap();
        assert_eq!((c.model.arch, c.model.image_size), (Arch::Vgg16, 96));
        let c = TrainConfig::resolve(None, None, &["model.arch=\"resnet18\"".into()]).unwrap();
        assert_eq!(c.model.image_size, 224);
        // A config without the key (every config written before it existed) is MA-Net.
        let back: TrainConfig = toml::from_str(&TrainConfig::paper().to_toml().replace("arch = \"magsd\"\n", "")).unwrap();
        assert_eq!(back.model.arch, Arch::Magsd);
        let e = TrainConfig::resolve(None, None, &["model.arch=\"alexnet\"".into()]).unwrap_err().to_string();
        assert!(e.contains("alexnet"), "{e}");
    }

    #[test]
    fn authors_schedule_runs_76_epochs_at_the_base_rate() {
        let c = TrainConfig::authors_code();
        let lr = |e| c.optim.schedule.lr_at(c.optim.lr, e, c.epochs);
        assert_eq!(lr(75), 1e-3);
        assert!((lr(76) - 1e-4).abs() < 1e-12 && (lr(125) - 1e-4).abs() < 1e-12);
        assert!((lr(126) - 1e-5).abs() < 1e-12);
    }
}
