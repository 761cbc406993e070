//! The baselines of Table 3 (`model.arch`): timm-style checks with one test per network at a
//! small input (output shape, no NaN, a gradient for every parameter, a non-negative map, a
//! save/load round trip), torchvision's parameter counts, and the import of torchvision-named
//! weights.
use magsd::model::config::{Arch, NetworkConfig};
use magsd::model::weights::{import_torchvision, load_model, parameter_count, save_model, save_tensors};
use magsd::model::Network;
use tch::{Device, Kind, Tensor, nn};

/// The smallest input each network takes comfortably on CPU.
fn small(arch: Arch) -> NetworkConfig {
    let mut cfg = NetworkConfig::paper(3).with_arch(arch);
    cfg.image_size = if arch == Arch::InceptionV3 { 75 } else { 64 };
    cfg.num_maps = 4;
    cfg
}

/// One test per baseline, named after it (`every_baseline::vgg16`, …), so that a failure names
/// its network, as timm parametrises its model tests. MA-Net has its own in tests/model.rs.
macro_rules! every_baseline {
    ($($test:ident: $arch:ident,)*) => {
        mod every_baseline {
            $(
                #[test]
                fn $test() {
                    super::shapes_no_nan_gradients_everywhere_and_loads_back(super::Arch::$arch);
                }
            )*
        }
        /// The networks that have a test in `every_baseline`.
        const TESTED: &[Arch] = &[$(Arch::$arch),*];
    };
}

every_baseline! {
    vgg16: Vgg16,
    resnet18: Resnet18,
    resnet50: Resnet50,
    inception_v3: InceptionV3,
    covid_net: CovidNet,
    bcnn: Bcnn,
    bcnn_attention: BcnnAttention,
    fpn: Fpn,
    unet: Unet,
}

/// A baseline added to `Arch::ALL` gets its own test in `every_baseline`.
#[test]
fn every_baseline_has_its_own_test() {
    let baselines: Vec<Arch> = Arch::ALL.into_iter().filter(|a| a.is_baseline()).collect();
    assert_eq!(TESTED, &baselines[..], "add the missing networks to every_baseline!");
}

/// Output shapes, no NaN, a gradient for every parameter, a non-negative map, and the same
/// outputs after a save/load round trip.
fn shapes_no_nan_gradients_everywhere_and_loads_back(arch: Arch) {
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(arch);
    let s = cfg.image_size;
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Network::new(&vs.root(), cfg.clone()).unwrap();
    let x = Tensor::randn([2, 1, s, s], (Kind::Float, Device::Cpu));
    let out = m.forward_t(&x, true);
    let tag = arch.name();
    assert_eq!(out.logits.size(), vec![2, 3], "{tag}");
    let a = out.attention.size();
    assert_eq!((a.len(), a[0]), (4, 2), "{tag}: attention {a:?}");
    assert_eq!(a[2], a[3], "{tag}: attention maps are square");
    assert_eq!(out.features.size()[0], 2, "{tag}");
    assert!(out.attention.min().double_value(&[]) >= 0.0, "{tag}: negative attention");
    assert!(!bool::try_from(out.logits.isnan().any()).unwrap(), "{tag}: NaN logits");
    // Baselines train on the logits alone: every parameter must be reached from them.
    out.logits.sum(Kind::Float).backward();
    let missing: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad() && !t.grad().defined())
        .map(|(n, _)| n)
        .collect();
    assert!(missing.is_empty(), "{tag}: some parameters are missing gradients: {missing:?}");

    // Save and load: same config, same outputs in eval mode.
    let path = dir.path().join(format!("{tag}.safetensors"));
    save_model(&path, &vs, &cfg).unwrap();
    let loaded = load_model(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.model.config, cfg, "{tag}");
    let want = tch::no_grad(|| m.forward_t(&x, false).logits);
    let got = tch::no_grad(|| loaded.model.forward_t(&x, false).logits);
    assert!(want.equal(&got), "{tag}: outputs differ after a save/load round trip");
}

#[test]
fn a_model_file_of_another_arch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r18.safetensors");
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Network::new(&vs.root(), small(Arch::Resnet18)).unwrap();
    save_model(&path, &vs, &small(Arch::Resnet18)).unwrap();
    let (tensors, _) = magsd::model::weights::load_tensors(&path).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let _m2 = Network::new(&vs2.root(), small(Arch::Resnet50)).unwrap();
    let e = magsd::model::weights::copy_exact(&vs2, &tensors, &path).unwrap_err().to_string();
    assert!(e.contains("r18.safetensors"), "{e}");
    assert!(!small(Arch::Resnet18).same_architecture(&small(Arch::Resnet50)));
}

/// torchvision's published parameter counts (3-channel input, 1000 classes), one test per
/// network (`parameter_count_matches_torchvision::vgg16`, …).
macro_rules! parameter_count_matches_torchvision {
    ($($test:ident: $arch:ident = $want:expr,)*) => {
        mod parameter_count_matches_torchvision {
            use super::*;
            $(
                #[test]
                fn $test() {
                    let mut cfg = NetworkConfig::paper(1000).with_arch(Arch::$arch);
                    cfg.in_channels = 3;
                    let vs = nn::VarStore::new(Device::Cpu);
                    let _m = Network::new(&vs.root(), cfg).unwrap();
                    assert_eq!(parameter_count(&vs), $want, "{}", Arch::$arch.name());
                }
            )*
        }
    };
}

parameter_count_matches_torchvision! {
    vgg16: Vgg16 = 138_357_544,
    resnet18: Resnet18 = 11_689_512,
    resnet50: Resnet50 = 25_557_032,
    // torchvision's 27,161,264 includes the auxiliary head (3,326,696 parameters).
    inception_v3: InceptionV3 = 27_161_264 - 3_326_696,
}

#[test]
fn torchvision_names_import_with_the_rgb_stem_summed_and_the_class_layer_left_fresh() {
    // A torchvision-style ResNet18 state dict (3 channels, 1000 classes) written by a second
    // network of the same kind, then imported into a 1-channel, 3-class ResNet18 classifier.
    let dir = tempfile::tempdir().unwrap();
    let mut rgb = small(Arch::Resnet18);
    rgb.in_channels = 3;
    rgb.num_classes = 1000;
    let src = nn::VarStore::new(Device::Cpu);
    let _s = Network::new(&src.root(), rgb).unwrap();
    let path = dir.path().join("resnet18.safetensors");
    let tensors: Vec<(String, Tensor)> = src.variables().into_iter().collect();
    save_tensors(&path, &tensors, Default::default()).unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Network::new(&vs.root(), small(Arch::Resnet18)).unwrap();
    let r = import_torchvision(&vs, &path).unwrap();
    assert!(r.adapted.contains_key("conv1.weight"), "{r:?}");
    assert!(r.unused.contains(&"fc.weight".to_string()) && r.missing.contains(&"fc.weight".to_string()), "{r:?}");
    assert!(r.loaded.contains(&"layer4.1.bn2.running_var".to_string()));
    let want = src.variables()["conv1.weight"].sum_dim_intlist(&[1i64][..], true, Kind::Float);
    assert!(vs.variables()["conv1.weight"].equal(&want));
}
