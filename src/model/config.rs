//! Model configuration: every field that changes the architecture, and the named presets.
use serde::{Deserialize, Serialize};

use crate::data::preprocess::{ClaheConfig, PreprocessConfig, ZScore};
use crate::error::{Error, Result};

/// Residual block type (torchvision's `BasicBlock` / `Bottleneck`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    /// Output channels per block = planes × expansion.
    pub fn expansion(self) -> i64 {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// A torchvision-structured ResNet: the same code builds ResNet18/34/50 and the tiny preset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub block: Block,
    /// Blocks per stage (layer1..layer4).
    pub layers: [usize; 4],
    /// Output channels of the stem (conv1/bn1); 64 in torchvision.
    pub stem_width: i64,
    /// `planes` of layer1..layer4; [64, 128, 256, 512] in torchvision.
    pub widths: [i64; 4],
}

impl ResNetConfig {
    pub fn resnet18() -> Self {
        ResNetConfig { block: Block::Basic, layers: [2, 2, 2, 2], stem_width: 64, widths: [64, 128, 256, 512] }
    }
    pub fn resnet34() -> Self {
        ResNetConfig { block: Block::Basic, layers: [3, 4, 6, 3], stem_width: 64, widths: [64, 128, 256, 512] }
    }
    pub fn resnet50() -> Self {
        ResNetConfig { block: Block::Bottleneck, layers: [3, 4, 6, 3], stem_width: 64, widths: [64, 128, 256, 512] }
    }
    /// Same code as ResNet50, one block per stage and 1/8 of the width: for CPU tests and the demo.
    pub fn tiny() -> Self {
        ResNetConfig { block: Block::Bottleneck, layers: [1, 1, 1, 1], stem_width: 8, widths: [8, 16, 32, 64] }
    }

    /// Channels out of layer2, layer3, layer4 (the 28×28, 14×14 and 7×7 maps at 224×224).
    pub fn channels(&self) -> (i64, i64, i64) {
        let e = self.block.expansion();
        (self.widths[1] * e, self.widths[2] * e, self.widths[3] * e)
    }
}

/// Which backbone feature maps feed the attention generator (Table 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scales {
    /// layer4 only.
    #[serde(rename = "7")]
    S7,
    /// layer4 + layer3: the paper's best and the default.
    #[serde(rename = "7+14")]
    S7_14,
    /// layer4 + layer3 + layer2.
    #[serde(rename = "7+14+28")]
    S7_14_28,
}

impl Scales {
    pub fn parse(s: &str) -> Result<Self> {
        match s.replace(' ', "").as_str() {
            "7" => Ok(Scales::S7),
            "7+14" => Ok(Scales::S7_14),
            "7+14+28" => Ok(Scales::S7_14_28),
            other => Err(Error::Config(format!("scales '{other}': use 7, 7+14 or 7+14+28"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Scales::S7 => "7",
            Scales::S7_14 => "7+14",
            Scales::S7_14_28 => "7+14+28",
        }
    }
    pub fn uses_14(self) -> bool {
        self != Scales::S7
    }
    pub fn uses_28(self) -> bool {
        self == Scales::S7_14_28
    }
}

/// Classification head (Table 6).
///
/// `Gap`/`Gmp` build what the authors' commented `fc_bone` lines would (model.py:52,88-89; spec
/// §1.3): `Linear(C4 → K, bias)` on the pooled layer4 features, with the attention generator
/// still built and run on every pass. Its maps then reach the loss only through the
/// augmentations, whose thresholds and boxes carry no gradient, so the generator's conv and
/// BatchNorm weights get no gradient and keep their initial values (the SGD step skips them,
/// weight decay included, as PyTorch's does for a `None` gradient), while its BatchNorm running
/// statistics still move in train mode. The augmentations thus use an untrained 1×1 projection
/// of the trained features: only the head differs from the method, which is what Table 6 varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// Bilinear attention pooling (the method).
    Bap,
    /// Global average pooling of the layer4 features (ablation baseline).
    Gap,
    /// Global max pooling of the layer4 features (ablation baseline).
    Gmp,
}

/// The name used on the command line and in the README (`bap`, `gap`, `gmp`).
impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Head::Bap => "bap",
            Head::Gap => "gap",
            Head::Gmp => "gmp",
        })
    }
}

/// Which network `magsd` trains: MA-Net (MAG-SD, the default) or one of the baselines of the
/// paper's Table 3 (`src/model/baselines/`). MAG-SD(0AUG) is not an architecture: it is
/// `magsd` with `method.augmentations = []`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// MA-Net, the MAG-SD network (paper §3.2).
    #[default]
    Magsd,
    /// VGG16 (Simonyan & Zisserman 2015), torchvision's structure.
    Vgg16,
    /// ResNet18 classifier (He et al. 2016): backbone, global average pool, `fc`.
    Resnet18,
    /// ResNet50 classifier (He et al. 2016): backbone, global average pool, `fc`.
    Resnet50,
    /// InceptionV3 (Szegedy et al. 2016), torchvision's structure without the auxiliary head.
    InceptionV3,
    /// COVID-Net (Wang & Wong 2020): PEPX modules with long-range connections.
    CovidNet,
    /// Bilinear CNN (Lin et al. 2015) on VGG16 conv5_3 features.
    Bcnn,
    /// BCNN with MAG-SD's multiscale attention and bilinear attention pooling.
    BcnnAttention,
    /// Feature pyramid network (Lin et al. 2017) on ResNet50 with a pooled classification head.
    Fpn,
    /// U-Net (Ronneberger et al. 2015) with a pooled classification head.
    Unet,
}

impl Arch {
    pub const ALL: [Arch; 10] = [
        Arch::Magsd,
        Arch::Vgg16,
        Arch::Resnet18,
        Arch::Resnet50,
        Arch::InceptionV3,
        Arch::CovidNet,
        Arch::Bcnn,
        Arch::BcnnAttention,
        Arch::Fpn,
        Arch::Unet,
    ];

    /// The kebab-case name used in config files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Magsd => "magsd",
            Arch::Vgg16 => "vgg16",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet50 => "resnet50",
            Arch::InceptionV3 => "inception-v3",
            Arch::CovidNet => "covid-net",
            Arch::Bcnn => "bcnn",
            Arch::BcnnAttention => "bcnn-attention",
            Arch::Fpn => "fpn",
            Arch::Unet => "unet",
        }
    }

    /// The name as the paper's Table 3 writes it.
    pub fn paper_name(self) -> &'static str {
        match self {
            Arch::Magsd => "MAG-SD",
            Arch::Vgg16 => "VGG16",
            Arch::Resnet18 => "ResNet18",
            Arch::Resnet50 => "ResNet50",
            Arch::InceptionV3 => "InceptionV3",
            Arch::CovidNet => "COVID-Net",
            Arch::Bcnn => "BCNN",
            Arch::BcnnAttention => "BCNN(Attention)",
            Arch::Fpn => "FPN",
            Arch::Unet => "U-Net",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Arch::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
            Error::Config(format!("arch '{s}': use one of {}", names.join(", ")))
        })
    }

    /// Input side at paper scale: InceptionV3 its own 299, everything else 224.
    pub fn paper_image_size(self) -> i64 {
        match self {
            Arch::InceptionV3 => 299,
            _ => 224,
        }
    }

    /// True for the networks trained by the plain cross-entropy step (every baseline).
    pub fn is_baseline(self) -> bool {
        self != Arch::Magsd
    }
}

/// Everything that defines a MAG-SD network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The network: MA-Net or a baseline. The fields below that describe MA-Net's backbone,
    /// maps, scales and head apply to MA-Net (BCNN(Attention) uses `num_maps` and `scales`);
    /// baselines have their published structure.
    #[serde(default)]
    pub arch: Arch,
    /// Name of the backbone preset ("resnet50", "tiny", ...), for people; `resnet` is what counts.
    pub backbone: String,
    pub resnet: ResNetConfig,
    /// Input channels: 1 (grayscale, as the authors) or 3.
    pub in_channels: i64,
    pub num_classes: i64,
    /// Attention maps per scale (M; 32 in the paper).
    pub num_maps: i64,
    pub scales: Scales,
    pub head: Head,
    /// Side of the square input; a multiple of 32 (InceptionV3: at least 75).
    pub image_size: i64,
    /// Class names in output order (empty when unknown).
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Input preprocessing the network was trained with: CLAHE on/off and the z-score mode
    /// (kept with the weights so that evaluation prepares images the same way).
    #[serde(default = "default_true")]
    pub clahe: bool,
    #[serde(default)]
    pub zscore: ZScore,
}

/// Largest input side a config may claim (a 4096² input already needs tens of GB to train).
pub const MAX_IMAGE_SIZE: i64 = 4096;
/// Most output classes a config may claim.
pub const MAX_CLASSES: i64 = 10_000;
/// Most attention maps per scale a config may claim.
pub const MAX_MAPS: i64 = 1024;
/// Most parameters a network may have in the layers that grow with the config (the
/// classifier, and COVID-Net's first fully connected layer): 10^9, 4 GB of float32. The paper's
/// network with 4 classes has 2.6 × 10^5 there; `--maps 1024 --classes 10000` would need
/// 2.1 × 10^10 (84 GB).
pub const MAX_PARAMETERS: i64 = 1_000_000_000;

fn default_true() -> bool {
    true
}

impl NetworkConfig {
    /// The paper's network: ResNet50, 1 channel, 32 maps, scales 7+14, BAP, 224×224.
    pub fn paper(num_classes: i64) -> Self {
        NetworkConfig {
            arch: Arch::Magsd,
            backbone: "resnet50".into(),
            resnet: ResNetConfig::resnet50(),
            in_channels: 1,
            num_classes,
            num_maps: 32,
            scales: Scales::S7_14,
            head: Head::Bap,
            image_size: 224,
            class_names: Vec::new(),
            clahe: true,
            zscore: ZScore::PerImage,
        }
    }

    /// A small network on 96×96 inputs with 8 maps, for CPU tests and the demo.
    pub fn tiny(num_classes: i64) -> Self {
        NetworkConfig {
            backbone: "tiny".into(),
            resnet: ResNetConfig::tiny(),
            num_maps: 8,
            image_size: 96,
            ..Self::paper(num_classes)
        }
    }

    /// Replaces the backbone by a named preset: resnet18, resnet34, resnet50 or tiny.
    pub fn with_backbone(mut self, name: &str) -> Result<Self> {
        self.resnet = match name {
            "resnet18" => ResNetConfig::resnet18(),
            "resnet34" => ResNetConfig::resnet34(),
            "resnet50" => ResNetConfig::resnet50(),
            "tiny" => ResNetConfig::tiny(),
            other => {
                return Err(Error::Config(format!("backbone '{other}': use resnet18, resnet34, resnet50 or tiny")));
            }
        };
        self.backbone = name.to_string();
        Ok(self)
    }

    /// Selects the network; the input side becomes the arch's paper size (299 for InceptionV3,
    /// 224 otherwise). Callers that want another size set `image_size` afterwards.
    pub fn with_arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self.image_size = arch.paper_image_size();
        self
    }

    pub fn validate(&self) -> Result<()> {
        // Bounds on what a config (a flag, or a model file's metadata) may claim, so that a
        // bad value is an error here and not an allocation failure inside libtorch.
        for (key, value, max) in [
            ("image_size", self.image_size, MAX_IMAGE_SIZE),
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("num_maps", self.num_maps, MAX_MAPS),
        ] {
            if value > max {
                return Err(Error::Config(format!("{key} {value} is larger than magsd allows ({max})")));
            }
        }
        if self.arch == Arch::InceptionV3 {
            // torchvision's InceptionV3 needs at least 75×75 (its 1×1 maps after Mixed_7a).
            if self.image_size < 75 {
                return Err(Error::Config(format!(
                    "image size {} is too small for InceptionV3 (at least 75; 299 at paper scale)",
                    self.image_size
                )));
            }
        } else if self.image_size <= 0 || self.image_size % 32 != 0 {
            return Err(Error::Config(format!(
                "image size {} must be a positive multiple of 32 (the backbone downsamples by 32)",
                self.image_size
            )));
        }
        if !matches!(self.in_channels, 1 | 3) {
            return Err(Error::Config(format!("in_channels must be 1 or 3, got {}", self.in_channels)));
        }
        if self.num_classes < 2 || self.num_maps < 1 {
            return Err(Error::Config(format!(
                "need at least 2 classes and 1 map (got {} and {})",
                self.num_classes, self.num_maps
            )));
        }
        let n = self.scaling_parameters();
        if n > MAX_PARAMETERS {
            return Err(Error::Config(format!(
                "this network would have {n} parameters in its classifier ({:.1} GB of float32), more than magsd builds \
                 ({MAX_PARAMETERS}); use fewer maps or classes (now {} maps, {} classes)",
                n as f64 * 4.0 / 1e9,
                self.num_maps,
                self.num_classes
            )));
        }
        if !self.class_names.is_empty() && self.class_names.len() as i64 != self.num_classes {
            return Err(Error::Config(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            )));
        }
        Ok(())
    }

    /// Parameters of the layers whose size grows with the config (the classifier; COVID-Net's
    /// `fc1` too, which grows with the input side), computed from the config alone so that an
    /// absurd size is an error before libtorch allocates it. The fixed-size backbones (at most
    /// 1.4 × 10^8 parameters, VGG16) are not counted. Saturates instead of overflowing.
    pub fn scaling_parameters(&self) -> i64 {
        let (_, _, c4) = self.resnet.channels();
        let k = self.num_classes;
        let m = self.num_maps;
        let side = self.image_size / 32;
        let mul = |a: i64, b: i64| a.saturating_mul(b);
        match self.arch {
            Arch::Magsd => match self.head {
                Head::Bap => mul(mul(m, c4), k),
                Head::Gap | Head::Gmp => mul(c4, k),
            },
            Arch::Bcnn => mul(512 * 512, k),
            Arch::BcnnAttention => mul(mul(m, 512), k),
            Arch::CovidNet => mul(mul(424, mul(side, side)), 512).saturating_add(mul(512, k)),
            Arch::Vgg16 => mul(4096, k),
            Arch::Resnet18 | Arch::Resnet50 | Arch::InceptionV3 | Arch::Fpn | Arch::Unet => mul(2048, k),
        }
    }

    /// True when two configs build networks with the same parameters (names and shapes).
    /// The image size counts only where a parameter's shape depends on it: COVID-Net's `fc1`
    /// reads the flattened last stage (`424 · (S/32)²`); every other network pools first.
    pub fn same_architecture(&self, other: &NetworkConfig) -> bool {
        self.arch == other.arch
            && self.resnet == other.resnet
            && self.in_channels == other.in_channels
            && self.num_classes == other.num_classes
            && self.num_maps == other.num_maps
            && self.scales == other.scales
            && self.head == other.head
            && (self.arch != Arch::CovidNet || self.image_size / 32 == other.image_size / 32)
    }

    /// The deterministic input pipeline this network expects.
    pub fn preprocess(&self) -> PreprocessConfig {
        PreprocessConfig {
            size: self.image_size as usize,
            clahe: self.clahe.then(ClaheConfig::default),
            zscore: self.zscore,
        }
    }

    /// Class names, or "class 0", "class 1", ... when the file has none.
    pub fn class_labels(&self) -> Vec<String> {
        if self.class_names.is_empty() {
            (0..self.num_classes).map(|c| format!("class {c}")).collect()
        } else {
            self.class_names.clone()
        }
    }

    /// The network in words: "MAG-SD resnet50, 32 maps, scales 7+14, Bap head" or
    /// "ResNet18 (baseline)".
    pub fn network_name(&self) -> String {
        if self.arch.is_baseline() {
            format!("{} (baseline)", self.arch.paper_name())
        } else {
            format!("MAG-SD {}, {} maps, scales {}, {} head", self.backbone, self.num_maps, self.scales.name(), self.head)
        }
    }

    /// Side of MA-Net's attention maps and layer4 features (7 at 224).
    pub fn feature_size(&self) -> i64 {
        self.image_size / 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_architecture_counts_the_image_size_only_where_a_shape_depends_on_it() {
        let mut a = NetworkConfig::tiny(3);
        a.arch = Arch::CovidNet;
        a.image_size = 224;
        let mut b = a.clone();
        b.image_size = 96;
        assert!(!a.same_architecture(&b), "COVID-Net's fc1 has another shape at 96 px");
        b.image_size = 230; // the same 7×7 last stage
        assert!(a.same_architecture(&b));
        let (mut m, mut n) = (NetworkConfig::tiny(3), NetworkConfig::tiny(3));
        m.image_size = 224;
        n.image_size = 96;
        assert!(m.same_architecture(&n), "MAG-SD pools before its classifier");
    }
}
