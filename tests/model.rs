//! The MAG-SD network against torchvision's own ResNet code, the importer, and timm-style checks
//! over every backbone × scale set × head.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use magsd::model::config::{Head, NetworkConfig, Scales};
use magsd::model::weights::{
    copy_exact, import_torchvision, load_model, load_tensors, model_config, parameter_count, save_model,
};
use magsd::model::Network;
use magsd::rng::Rng;
use magsd::train::attention_aug::{augment_batch, AttentionAug, AttentionAugConfig, StepRandom};
use magsd::train::loss::{soft_distance_loss, LossConfig};
use tch::{Device, Kind, Tensor, nn};

const ALL_AUGS: [AttentionAug; 3] = [AttentionAug::Mixup, AttentionAug::Dimming, AttentionAug::Patching];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Builds the fixture's model with its weights; returns it with the fixture's other tensors.
fn parity_model(name: &str) -> (nn::VarStore, Network, HashMap<String, Tensor>) {
    let path = fixture(&format!("parity_{name}.safetensors"));
    let (tensors, meta) = load_tensors(&path).unwrap();
    let config = model_config(&meta, &path).unwrap().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Network::new(&vs.root(), config).unwrap();
    let (weights, rest): (Vec<_>, Vec<_>) =
        tensors.into_iter().partition(|(n, _)| !(n == "input" || n.starts_with("eval.") || n.starts_with("train.")));
    copy_exact(&vs, &weights, &path).unwrap();
    (vs, model, rest.into_iter().collect())
}

/// One test per parity fixture (`forward_matches_torchvision_within_1e4::bottleneck`, …).
macro_rules! forward_matches_torchvision_within_1e4 {
    ($($name:ident,)*) => {
        mod forward_matches_torchvision_within_1e4 {
            $(
                #[test]
                fn $name() {
                    super::forward_matches_torchvision(stringify!($name));
                }
            )*
        }
    };
}

forward_matches_torchvision_within_1e4! {
    bottleneck,
    basic,
}

fn forward_matches_torchvision(name: &str) {
    let (_vs, model, t) = parity_model(name);
    let out = tch::no_grad(|| model.forward_t(&t["input"], false));
    for (what, got, want) in [
        ("eval logits", &out.logits, &t["eval.logits"]),
        ("eval attention", &out.attention, &t["eval.attention"]),
        ("eval f4", &out.features, &t["eval.f4"]),
    ] {
        let d = max_diff(got, want);
        assert!(d < 1e-4, "{name}: {what} differs from torch by {d}");
    }
    let out = tch::no_grad(|| model.forward_t(&t["input"], true));
    for (what, got, want) in [
        ("train logits", &out.logits, &t["train.logits"]),
        ("train attention", &out.attention, &t["train.attention"]),
    ] {
        let d = max_diff(got, want);
        assert!(d < 1e-4, "{name}: {what} (batch statistics) differs from torch by {d}");
    }
}

#[test]
fn torchvision_pth_imports_into_the_backbone_with_a_full_report() {
    let (ref_vs, _m, _) = parity_model("bottleneck");
    let config = Network::new(&nn::VarStore::new(Device::Cpu).root(), {
        let (t, meta) = load_tensors(&fixture("parity_bottleneck.safetensors")).unwrap();
        drop(t);
        model_config(&meta, Path::new("x")).unwrap().unwrap()
    })
    .unwrap()
    .config;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Network::new(&vs.root(), config).unwrap();
    let report = import_torchvision(&vs, &fixture("torchvision_bottleneck.pth")).unwrap();
    assert!(report.loaded.contains(&"layer3.0.downsample.1.running_var".to_string()));
    assert!(report.adapted.is_empty());
    assert!(report.unused.contains(&"fc.weight".to_string()));
    assert!(report.unused.iter().any(|n| n.ends_with("num_batches_tracked")));
    assert!(report.missing.iter().all(|n| n.starts_with("attention.") || n.starts_with("classifier.")), "{:?}", report.missing);
    assert!(report.missing.contains(&"classifier.weight".to_string()));
    let want = ref_vs.variables();
    for (name, t) in vs.variables() {
        if !(name.starts_with("attention.") || name.starts_with("classifier.")) {
            assert_eq!(max_diff(&t, &want[&name]), 0.0, "{name}");
        }
    }
}

#[test]
fn rgb_stem_is_summed_for_gray_input_and_mismatches_are_refused() {
    // The "basic" fixture is a 3-channel network; import it into a 1-channel one.
    let (rgb_vs, _m, _) = parity_model("basic");
    let mut config = {
        let (_t, meta) = load_tensors(&fixture("parity_basic.safetensors")).unwrap();
        model_config(&meta, Path::new("x")).unwrap().unwrap()
    };
    config.in_channels = 1;
    let vs = nn::VarStore::new(Device::Cpu);
    let _gray = Network::new(&vs.root(), config).unwrap();
    let report = import_torchvision(&vs, &fixture("torchvision_basic.pth")).unwrap();
    assert!(report.adapted.contains_key("conv1.weight"));
    let want = rgb_vs.variables()["conv1.weight"].sum_dim_intlist(&[1i64][..], true, Kind::Float);
    assert_eq!(max_diff(&vs.variables()["conv1.weight"], &want), 0.0);

    // A bottleneck checkpoint does not fit a basic-block model: refused, naming the tensor.
    let e = import_torchvision(&vs, &fixture("torchvision_bottleneck.pth")).unwrap_err().to_string();
    assert!(e.contains("torchvision_bottleneck.pth") && e.contains("shape"), "{e}");

    // Not a checkpoint at all.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"definitely not a checkpoint").unwrap();
    let e = import_torchvision(&vs, &junk).unwrap_err().to_string();
    assert!(e.contains("junk.pth"), "{e}");
}

#[test]
fn paper_resnet50_has_23_796_800_parameters() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Network::new(&vs.root(), NetworkConfig::paper(3)).unwrap();
    assert_eq!(parameter_count(&vs), 23_796_800);
}

#[test]
fn saved_model_loads_back_identically() {
    let (vs, model, t) = parity_model("bottleneck");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    save_model(&path, &vs, &model.config).unwrap();
    let loaded = load_model(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.model.config, model.config);
    let a = tch::no_grad(|| model.forward_t(&t["input"], false).logits);
    let b = tch::no_grad(|| loaded.model.forward_t(&t["input"], false).logits);
    assert_eq!(max_diff(&a, &b), 0.0);
    // A model file for another architecture is refused.
    let mut other = model.config.clone();
    other.num_maps += 1;
    let vs2 = nn::VarStore::new(Device::Cpu);
    let _m2 = Network::new(&vs2.root(), other).unwrap();
    let (tensors, _) = load_tensors(&path).unwrap();
    let e = copy_exact(&vs2, &tensors, &path).unwrap_err().to_string();
    assert!(e.contains("shape"), "{e}");
}

/// With BAP every parameter has a gradient. With GAP/GMP the attention generator only feeds the
/// augmentations (no gradient through thresholds and boxes): exactly its parameters have none
/// (`Head` docs).
fn assert_gradients_reach_what_the_head_trains(vs: &nn::VarStore, head: Head, tag: &str) {
    let named = vs.variables();
    let mut no_grad: Vec<&String> =
        named.iter().filter(|(_, t)| t.requires_grad() && !t.grad().defined()).map(|(n, _)| n).collect();
    let mut attention: Vec<&String> =
        named.iter().filter(|(n, t)| n.starts_with("attention.") && t.requires_grad()).map(|(n, _)| n).collect();
    assert!(!attention.is_empty(), "{tag}: no attention parameters");
    no_grad.sort();
    attention.sort();
    match head {
        Head::Bap => assert!(no_grad.is_empty(), "{tag}: some parameters are missing gradients: {no_grad:?}"),
        Head::Gap | Head::Gmp => {
            assert_eq!(no_grad, attention, "{tag}: exactly the attention generator should get no gradient")
        }
    }
}

/// One test per backbone × scale set × head, named after it
/// (`every_backbone_scale_and_head::resnet34_s7_14_gmp`, …), so that a failure names its case, as
/// timm parametrises its model tests.
macro_rules! every_backbone_scale_and_head {
    ($($name:ident: $backbone:literal, $scales:ident, $head:ident,)*) => {
        mod every_backbone_scale_and_head {
            use super::{Head, Scales};
            $(
                #[test]
                fn $name() {
                    super::shapes_no_nan_and_gradients_where_the_head_sends_them($backbone, Scales::$scales, Head::$head);
                }
            )*
        }
        /// The cases that have a test in `every_backbone_scale_and_head`.
        const SWEPT: &[(&str, Scales, Head)] = &[$(($backbone, Scales::$scales, Head::$head)),*];
    };
}

every_backbone_scale_and_head! {
    tiny_s7_bap: "tiny", S7, Bap,
    tiny_s7_gap: "tiny", S7, Gap,
    tiny_s7_gmp: "tiny", S7, Gmp,
    tiny_s7_14_bap: "tiny", S7_14, Bap,
    tiny_s7_14_gap: "tiny", S7_14, Gap,
    tiny_s7_14_gmp: "tiny", S7_14, Gmp,
    tiny_s7_14_28_bap: "tiny", S7_14_28, Bap,
    tiny_s7_14_28_gap: "tiny", S7_14_28, Gap,
    tiny_s7_14_28_gmp: "tiny", S7_14_28, Gmp,
    resnet18_s7_bap: "resnet18", S7, Bap,
    resnet18_s7_gap: "resnet18", S7, Gap,
    resnet18_s7_gmp: "resnet18", S7, Gmp,
    resnet18_s7_14_bap: "resnet18", S7_14, Bap,
    resnet18_s7_14_gap: "resnet18", S7_14, Gap,
    resnet18_s7_14_gmp: "resnet18", S7_14, Gmp,
    resnet18_s7_14_28_bap: "resnet18", S7_14_28, Bap,
    resnet18_s7_14_28_gap: "resnet18", S7_14_28, Gap,
    resnet18_s7_14_28_gmp: "resnet18", S7_14_28, Gmp,
    resnet34_s7_bap: "resnet34", S7, Bap,
    resnet34_s7_gap: "resnet34", S7, Gap,
    resnet34_s7_gmp: "resnet34", S7, Gmp,
    resnet34_s7_14_bap: "resnet34", S7_14, Bap,
    resnet34_s7_14_gap: "resnet34", S7_14, Gap,
    resnet34_s7_14_gmp: "resnet34", S7_14, Gmp,
    resnet34_s7_14_28_bap: "resnet34", S7_14_28, Bap,
    resnet34_s7_14_28_gap: "resnet34", S7_14_28, Gap,
    resnet34_s7_14_28_gmp: "resnet34", S7_14_28, Gmp,
    resnet50_s7_bap: "resnet50", S7, Bap,
    resnet50_s7_gap: "resnet50", S7, Gap,
    resnet50_s7_gmp: "resnet50", S7, Gmp,
    resnet50_s7_14_bap: "resnet50", S7_14, Bap,
    resnet50_s7_14_gap: "resnet50", S7_14, Gap,
    resnet50_s7_14_gmp: "resnet50", S7_14, Gmp,
    resnet50_s7_14_28_bap: "resnet50", S7_14_28, Bap,
    resnet50_s7_14_28_gap: "resnet50", S7_14_28, Gap,
    resnet50_s7_14_28_gmp: "resnet50", S7_14_28, Gmp,
}

/// Every backbone, scale set and head has its own test in `every_backbone_scale_and_head`.
#[test]
fn every_backbone_scale_and_head_has_its_own_test() {
    let mut want = Vec::new();
    for backbone in ["tiny", "resnet18", "resnet34", "resnet50"] {
        for scales in [Scales::S7, Scales::S7_14, Scales::S7_14_28] {
            for head in [Head::Bap, Head::Gap, Head::Gmp] {
                want.push((backbone, scales, head));
            }
        }
    }
    assert_eq!(SWEPT, &want[..]);
}

fn shapes_no_nan_and_gradients_where_the_head_sends_them(backbone: &str, scales: Scales, head: Head) {
    tch::manual_seed(0);
    let mut cfg = NetworkConfig::paper(3).with_backbone(backbone).unwrap();
    cfg.scales = scales;
    cfg.head = head;
    cfg.image_size = 64; // small input keeps these tests fast on CPU
    cfg.num_maps = 4;
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Network::new(&vs.root(), cfg.clone()).unwrap();
    let x = Tensor::randn([2, 1, 64, 64], (Kind::Float, Device::Cpu));
    let out = m.forward_t(&x, true);
    let tag = format!("{backbone}/{}/{head:?}", scales.name());
    assert_eq!(out.logits.size(), vec![2, 3], "{tag}");
    assert_eq!(out.attention.size(), vec![2, 4, 2, 2], "{tag}");
    assert_eq!(out.features.size()[0], 2, "{tag}");
    assert!(out.attention.min().double_value(&[]) >= 0.0, "{tag}: negative attention");
    assert!(!bool::try_from(out.logits.isnan().any()).unwrap(), "{tag}: NaN logits");
    out.logits.sum(Kind::Float).backward();
    assert_gradients_reach_what_the_head_trains(&vs, head, &tag);
}

/// One test per head (`gap_and_gmp_heads_leave_the_attention_generator_untrained_through_a_whole_step::gap`, …).
macro_rules! gap_and_gmp_heads_leave_the_attention_generator_untrained_through_a_whole_step {
    ($($name:ident: $head:ident,)*) => {
        mod gap_and_gmp_heads_leave_the_attention_generator_untrained_through_a_whole_step {
            $(
                #[test]
                fn $name() {
                    super::a_whole_step_trains_what_the_head_trains(super::Head::$head);
                }
            )*
        }
    };
}

gap_and_gmp_heads_leave_the_attention_generator_untrained_through_a_whole_step! {
    bap: Bap,
    gap: Gap,
    gmp: Gmp,
}

fn a_whole_step_trains_what_the_head_trains(head: Head) {
    tch::manual_seed(1);
    let mut rng = Rng::new(0);
    let y = Tensor::from_slice(&[0i64, 2]);
    let mut cfg = NetworkConfig::tiny(3);
    cfg.head = head;
    cfg.image_size = 64;
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Network::new(&vs.root(), cfg).unwrap();
    let x = Tensor::randn([2, 1, 64, 64], (Kind::Float, Device::Cpu));
    // The method's training loss: the raw pass plus the three attention-guided views.
    let out = m.forward_t(&x, true);
    let r = StepRandom::draw(&mut rng, 2, Device::Cpu);
    let views = augment_batch(&x, &out.attention, &ALL_AUGS, &AttentionAugConfig::default(), &r);
    let z_aux: Vec<Tensor> = views.iter().map(|v| m.forward_t(v, true).logits).collect();
    soft_distance_loss(&out.logits, &z_aux, &y, &LossConfig::default()).total.backward();
    let tag = format!("tiny/{head:?}");
    assert_gradients_reach_what_the_head_trains(&vs, head, &tag);
    // The generator's BatchNorm statistics move in train mode, whatever the head.
    let moved = vs.variables()["attention.att7.bn.running_mean"].abs().max().double_value(&[]);
    assert!(moved > 0.0, "{tag}: attention BN statistics did not move");
}

/// What a fresh parameter of this name and shape must look like (PyTorch/torchvision init,
/// `model::init`; spec §1).
enum Expected {
    Const(f64),
    /// N(0, std²).
    Normal(f64),
    /// U(−bound, bound).
    Uniform(f64),
}

fn expected_init(name: &str, shape: &[i64], in_channels: i64) -> Expected {
    let fan_in = || shape[1..].iter().product::<i64>() as f64;
    let fan_out = || (shape[0] * shape[2..].iter().product::<i64>()) as f64;
    let last = name.rsplit('.').next().unwrap();
    let is_bn = name.contains(".bn") || name.starts_with("bn") || name.contains("downsample.1.");
    match (last, shape.len()) {
        ("running_mean", _) => Expected::Const(0.0),
        ("running_var", _) => Expected::Const(1.0),
        ("weight", 1) if is_bn => Expected::Const(1.0),
        ("bias", 1) if is_bn => Expected::Const(0.0),
        // The reference builds these itself after torchvision's constructor: PyTorch's defaults.
        ("weight", 4) if name.starts_with("attention.") || (name == "conv1.weight" && in_channels != 3) => {
            Expected::Uniform(1.0 / fan_in().sqrt())
        }
        ("weight", 4) => Expected::Normal((2.0 / fan_out()).sqrt()),
        ("weight", 2) if name.starts_with("classifier.") => Expected::Uniform(1.0 / fan_in().sqrt()),
        ("bias", 1) if name == "classifier.bias" => Expected::Uniform(f64::NAN), // bound from the weight
        _ => panic!("{name} {shape:?}: a parameter kind this test does not know; add its expected init"),
    }
}

/// One test per configuration (`fresh_parameters_are_initialised_as_pytorch_and_torchvision_do::paper`, …).
macro_rules! fresh_parameters_are_initialised_as_pytorch_and_torchvision_do {
    ($($name:ident: $cfg:expr,)*) => {
        mod fresh_parameters_are_initialised_as_pytorch_and_torchvision_do {
            use super::*;
            $(
                #[test]
                fn $name() {
                    initialised_as_pytorch_and_torchvision_do($cfg);
                }
            )*
        }
    };
}

fresh_parameters_are_initialised_as_pytorch_and_torchvision_do! {
    paper: NetworkConfig::paper(3),
    tiny: NetworkConfig::tiny(3),
    tiny_rgb_gap_s7_14_28: {
        let mut rgb_gap = NetworkConfig::tiny(3);
        rgb_gap.in_channels = 3;
        rgb_gap.head = Head::Gap;
        rgb_gap.scales = Scales::S7_14_28;
        rgb_gap
    },
}

fn initialised_as_pytorch_and_torchvision_do(cfg: NetworkConfig) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Network::new(&vs.root(), cfg.clone()).unwrap();
    let vars = vs.variables();
    let classifier_fan_in = vars["classifier.weight"].size()[1] as f64;
    let tag = format!("{}/{} ch/{:?}", cfg.backbone, cfg.in_channels, cfg.head);
    // Kaiming-normal convs, pooled: standardised weights over the whole network have std 1.
    let (mut sum_sq, mut count) = (0.0, 0i64);
    for (name, t) in &vars {
        let t = t.to_kind(Kind::Double);
        let n = t.numel() as f64;
        let mean = t.mean(Kind::Double).double_value(&[]);
        let std = t.std(false).double_value(&[]);
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        match expected_init(name, &t.size(), cfg.in_channels) {
            Expected::Const(c) => assert!(lo == c && hi == c, "{tag}: {name} should be all {c}, is in [{lo}, {hi}]"),
            Expected::Normal(s) => {
                // Sample std within 6 standard errors (≈ s/√(2n)), mean within 6·s/√n.
                assert!((std / s - 1.0).abs() < 6.0 / (2.0 * n).sqrt(), "{tag}: {name} std {std:.4e}, want {s:.4e}");
                assert!(mean.abs() < 6.0 * s / n.sqrt(), "{tag}: {name} mean {mean:.3e}");
                sum_sq += (&t / s).square().sum(Kind::Double).double_value(&[]);
                count += t.numel() as i64;
            }
            Expected::Uniform(b) => {
                let b = if b.is_nan() { 1.0 / classifier_fan_in.sqrt() } else { b };
                assert!(lo >= -b && hi <= b, "{tag}: {name} in [{lo:.3e}, {hi:.3e}], want within ±{b:.3e}");
                if n >= 64.0 {
                    // Roughly uniform: std b/√3, and the values reach towards both bounds.
                    let s = b / 3f64.sqrt();
                    assert!((std / s - 1.0).abs() < 6.0 * 0.75 / n.sqrt(), "{tag}: {name} std {std:.4e}, want {s:.4e}");
                    assert!(lo < -0.8 * b && hi > 0.8 * b, "{tag}: {name} in [{lo:.3e}, {hi:.3e}] does not fill ±{b:.3e}");
                }
            }
        }
    }
    let pooled = (sum_sq / count as f64).sqrt();
    assert!((pooled - 1.0).abs() < 0.02, "{tag}: pooled standardised conv std {pooled:.4}");
}
