//! `magsd model ...`: describe networks and weight files.
use std::path::PathBuf;

use clap::Subcommand;
use tch::{Device, nn};

use crate::error::{Error, Result};
use crate::model::config::{Arch, Head, NetworkConfig, Scales};
use crate::model::weights::{copy_exact, import_torchvision, load_tensors, model_config, parameter_count, split_variables};
use crate::model::Network;

/// Architecture options; each overrides the preset it is applied to.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// The network: magsd (MA-Net) or a baseline of the paper's Table 3.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// MA-Net's backbone: resnet18, resnet34, resnet50 or tiny.
    #[arg(long)]
    pub backbone: Option<String>,
    /// Number of attention maps per scale (M).
    #[arg(long)]
    pub maps: Option<i64>,
    /// Attention scales: 7, 7+14 or 7+14+28.
    #[arg(long)]
    pub scales: Option<String>,
    /// Classification head.
    #[arg(long, value_enum)]
    pub head: Option<Head>,
    /// Input channels (1 = grayscale, 3 = RGB replicated).
    #[arg(long)]
    pub in_channels: Option<i64>,
    /// Input side in pixels (a multiple of 32).
    #[arg(long)]
    pub image_size: Option<i64>,
}

/// A string as a TOML value (quoted and escaped), for `key=value` overrides.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl ModelArgs {
    /// The given options as `model.*` overrides of a training config (see `TrainConfig::resolve`).
    pub fn overrides(&self) -> Vec<String> {
        let mut o = Vec::new();
        if let Some(v) = self.arch {
            o.push(format!("model.arch={}", toml_string(v.name())));
        }
        if let Some(v) = &self.backbone {
            o.push(format!("model.backbone={}", toml_string(v)));
        }
        if let Some(v) = self.maps {
            o.push(format!("model.maps={v}"));
        }
        if let Some(v) = &self.scales {
            o.push(format!("model.scales={}", toml_string(v)));
        }
        if let Some(v) = self.head {
            o.push(format!("model.head={}", toml_string(&format!("{v:?}").to_lowercase())));
        }
        if let Some(v) = self.in_channels {
            o.push(format!("model.in_channels={v}"));
        }
        if let Some(v) = self.image_size {
            o.push(format!("model.image_size={v}"));
        }
        o
    }

    pub fn apply(&self, mut cfg: NetworkConfig) -> Result<NetworkConfig> {
        if let Some(a) = self.arch {
            cfg = cfg.with_arch(a);
        }
        if let Some(b) = &self.backbone {
            cfg = cfg.with_backbone(b)?;
        }
        if let Some(m) = self.maps {
            cfg.num_maps = m;
        }
        if let Some(s) = &self.scales {
            cfg.scales = Scales::parse(s)?;
        }
        if let Some(h) = self.head {
            cfg.head = h;
        }
        if let Some(c) = self.in_channels {
            cfg.in_channels = c;
        }
        if let Some(s) = self.image_size {
            cfg.image_size = s;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print a network's structure and parameter count, or what a weight file holds.
    #[command(after_help = "Examples:\n  magsd model info --backbone resnet50 --classes 3\n  magsd model info --arch inception-v3 --classes 3\n  magsd model info --weights resnet50-torchvision.pth --classes 3\n  magsd model info --weights runs/x/model.safetensors")]
    Info {
        /// A magsd model (.safetensors) or a torchvision checkpoint (.pth/.safetensors) of the
        /// chosen network (ResNet for MA-Net; VGG16, ResNet18/50 or InceptionV3 for those baselines).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Output classes.
        #[arg(long, default_value_t = 3)]
        classes: i64,
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCommand) -> Result<i32> {
    let ModelCommand::Info { weights, classes, model, json } = cmd;
    let mut cfg = model.apply(NetworkConfig::paper(classes))?;
    let mut source = None;
    let mut report = None;
    let vs = nn::VarStore::new(Device::Cpu);
    let model;
    if let Some(path) = &weights {
        // A magsd model file carries its own config.
        let embedded = if path.extension().is_some_and(|e| e == "safetensors") {
            let (tensors, meta) = load_tensors(path)?;
            model_config(&meta, path)?.map(|c| (c, tensors))
        } else {
            None
        };
        match embedded {
            Some((c, tensors)) => {
                cfg = c;
                model = Network::new(&vs.root(), cfg.clone())?;
                copy_exact(&vs, &split_variables(tensors).0, path)?;
                source = Some("magsd model");
            }
            None => {
                model = Network::new(&vs.root(), cfg.clone())?;
                report = Some(import_torchvision(&vs, path)?);
                source = Some("torchvision checkpoint, imported by name");
            }
        }
    } else {
        model = Network::new(&vs.root(), cfg.clone())?;
    }
    let count = |prefix: &dyn Fn(&str) -> bool| -> i64 {
        vs.variables().iter().filter(|(n, t)| prefix(n) && t.requires_grad()).map(|(_, t)| t.numel() as i64).sum()
    };
    let total = parameter_count(&vs);
    let attention = count(&|n| n.starts_with("attention."));
    let classifier = count(&|n| n.starts_with("classifier."));
    let (_, _, c4) = cfg.resnet.channels();
    let s = cfg.feature_size();
    if json {
        let v = serde_json::json!({
            "config": cfg, "parameters": total, "backbone_parameters": total - attention - classifier,
            "attention_parameters": attention, "classifier_parameters": classifier,
            "weights": weights, "weights_kind": source, "import": report,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Error::Config(e.to_string()))?);
        return Ok(0);
    }
    if cfg.arch.is_baseline() {
        // Shapes of a baseline's outputs depend on the network: run it once on a zero image.
        let x = tch::Tensor::zeros([1, cfg.in_channels, cfg.image_size, cfg.image_size], (tch::Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| model.forward_t(&x, false));
        println!(
            "model: {} (baseline), {}-channel {}×{} input, {} classes",
            cfg.arch.paper_name(),
            cfg.in_channels,
            cfg.image_size,
            cfg.image_size,
            cfg.num_classes
        );
        println!("parameters: {}", group(total));
        let dims = |t: &tch::Tensor| t.size()[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        println!(
            "outputs: logits [B, {}]; attention [B, {}] ({}); features [B, {}]",
            cfg.num_classes,
            dims(&out.attention),
            if cfg.arch == Arch::BcnnAttention { "learned attention maps" } else { "channel mean of the features after ReLU" },
            dims(&out.features)
        );
    } else {
        println!(
            "model: MAG-SD {}, {}-channel {}×{} input, {} classes, {} maps, scales {}, head {}",
            cfg.backbone, cfg.in_channels, cfg.image_size, cfg.image_size, cfg.num_classes, cfg.num_maps, cfg.scales.name(), cfg.head
        );
        println!(
            "parameters: {} (backbone {}, attention {}, classifier {})",
            group(total),
            group(total - attention - classifier),
            group(attention),
            group(classifier)
        );
        println!(
            "outputs: logits [B, {}]; attention [B, {}, {s}, {s}]; features [B, {c4}, {s}, {s}]",
            cfg.num_classes, cfg.num_maps
        );
    }
    if let (Some(path), Some(kind)) = (&weights, source) {
        println!("weights: {} ({kind})", path.display());
    }
    if let Some(r) = report {
        println!("  loaded: {} tensors", r.loaded.len());
        for (n, how) in &r.adapted {
            println!("  adapted: {n}: {how}");
        }
        println!("  missing (fresh initialisation): {} tensors: {}", r.missing.len(), summarise(&r.missing));
        println!("  unused: {} tensors: {}", r.unused.len(), summarise(&r.unused));
    }
    Ok(0)
}

/// 23796800 → "23,796,800".
pub fn group(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn summarise(names: &[String]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, ... ({} more)", names[..6].join(", "), names.len() - 6)
    }
}
