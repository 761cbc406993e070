//! Localisation maps and saliency methods (issue 20): Grad-CAM against CAM where the two must
//! agree, the finer and class maps' shapes, and `magsd localize` / `magsd predict` end to end on
//! phantoms with lesion masks.
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use magsd::eval::saliency::{Layer, grad_cam};
use magsd::model::{Head, Network, NetworkConfig, MapKind};
use common::{magsd, text};
use tch::{Device, Tensor, nn};

mod common;

/// The tiny network with weights from magsd's own seeded generator, not libtorch's global one
/// (which other tests draw from in parallel): the same network on every run.
fn tiny(head: Head) -> (nn::VarStore, Network) {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = NetworkConfig { head, ..NetworkConfig::tiny(3) };
    let m = Network::new(&vs.root(), cfg).unwrap();
    let mut rng = magsd::rng::Rng::new(7);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in vars {
            let n = t.numel();
            let fan_in = if t.dim() > 1 { (n / t.size()[0] as usize).max(1) } else { 1 };
            let v: Vec<f32> = (0..n)
                .map(|_| match name.rsplit('.').next().unwrap() {
                    "running_var" => 1.0,
                    "running_mean" | "bias" => 0.0,
                    _ if t.dim() == 1 => 1.0, // BatchNorm γ
                    _ => (rng.range(-1.0, 1.0) * (6.0 / fan_in as f64).sqrt()) as f32,
                })
                .collect();
            t.copy_(&Tensor::from_slice(&v).reshape(t.size()));
        }
    });
    (vs, m)
}

fn input(seed: u64) -> Tensor {
    let mut rng = magsd::rng::Rng::new(seed);
    let v: Vec<f32> = (0..2 * 96 * 96).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    Tensor::from_slice(&v).reshape([2, 1, 96, 96])
}

#[test]
fn grad_cam_on_a_gap_head_is_cam_divided_by_the_map_area() {
    // For logits y = W · mean_ij(A) + b, ∂y_k/∂A_cij = W[k, c]/(h·w) everywhere, so Grad-CAM's
    // weights are CAM's over h·w (Selvaraju et al. 2017, §3.1): an independent check of the
    // gradients, the class selection and the layer.
    let (_vs, m) = tiny(Head::Gap);
    let x = input(1);
    let mut largest = 0.0f64;
    for k in 0..3i64 {
        let class = Tensor::from_slice(&[k, 2 - k]);
        let g = grad_cam(&m, &x, Layer::Layer4, false, &class).unwrap(); // [2, 1, 3, 3]
        let (_, cam) = tch::no_grad(|| m.forward_map(&x, false, MapKind::Class, Some(&class))).unwrap();
        assert_eq!(g.size(), vec![2, 1, 3, 3]);
        let diff = (&g * 9.0 - &cam).abs().max().double_value(&[]);
        let scale = cam.abs().max().double_value(&[]);
        assert!(diff <= 1e-4 * scale.max(1e-6), "class {k}: Grad-CAM·9 vs CAM: max difference {diff} (CAM max {scale})");
        largest = largest.max(scale);
    }
    assert!(largest > 0.0, "every CAM is zero: the check compared nothing");
    let class = Tensor::from_slice(&[2i64, 0]);
    // Grad-CAM++ and layer3 give finite, non-negative maps of their layer's size.
    let gpp = grad_cam(&m, &x, Layer::Layer3, true, &class).unwrap();
    assert_eq!(gpp.size(), vec![2, 1, 6, 6]);
    assert!(gpp.isfinite().all().int64_value(&[]) == 1 && gpp.min().double_value(&[]) >= 0.0);
}

/// pytorch-grad-cam's presentation of a raw `h × w` map: min-max scaled (`scale_cam_image`,
/// 1e-7 in the denominator), resized to the input with OpenCV's bilinear (half-pixel centres, as
/// `localize::upsample`), scaled again.
fn as_pytorch_grad_cam_shows_it(map: &[f32], side: usize, size: usize) -> Vec<f32> {
    let scale = |v: &[f32]| -> Vec<f32> {
        let min = v.iter().cloned().fold(f32::INFINITY, f32::min);
        let max = v.iter().map(|x| x - min).fold(f32::NEG_INFINITY, f32::max);
        v.iter().map(|x| (x - min) / (1e-7 + max)).collect()
    };
    scale(&magsd::eval::localize::upsample(&scale(map), magsd::model::MapGrid::plain(side), size, size))
}

#[test]
fn grad_cam_and_grad_cam_plus_plus_match_pytorch_grad_cam() {
    use magsd::model::weights::{copy_exact, load_tensors, model_config};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let path = dir.join("parity_bottleneck.safetensors");
    let (tensors, meta) = load_tensors(&path).unwrap();
    let config = model_config(&meta, &path).unwrap().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Network::new(&vs.root(), config).unwrap();
    let input = tensors.iter().find(|(n, _)| n == "input").unwrap().1.shallow_clone();
    let weights: Vec<_> = tensors.into_iter().filter(|(n, _)| !(n == "input" || n.starts_with("eval.") || n.starts_with("train."))).collect();
    copy_exact(&vs, &weights, &path).unwrap();
    // Written by scripts/make_gradcam_fixture.py with pytorch-grad-cam 1.5.7.
    let (want, _) = load_tensors(&dir.join("gradcam_bottleneck.safetensors")).unwrap();
    let want: std::collections::HashMap<String, Tensor> = want.into_iter().collect();
    let targets = &want["targets"];
    let size = input.size()[2] as usize;
    for (name, layer, plus) in
        [("gradcam.layer4", Layer::Layer4, false), ("gradcam.layer3", Layer::Layer3, false), ("gradcam++.layer4", Layer::Layer4, true), ("gradcam++.layer3", Layer::Layer3, true)]
    {
        let raw = grad_cam(&model, &input, layer, plus, targets).unwrap(); // [B, 1, h, w]
        let side = raw.size()[2] as usize;
        let flat: Vec<f32> = Vec::try_from(raw.flatten(0, -1)).unwrap();
        let expected: Vec<f32> = Vec::try_from(want[name].flatten(0, -1)).unwrap();
        for b in 0..2 {
            let got = as_pytorch_grad_cam_shows_it(&flat[b * side * side..(b + 1) * side * side], side, size);
            let exp = &expected[b * size * size..(b + 1) * size * size];
            let d = got.iter().zip(exp).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-4, "{name}, image {b}: differs from pytorch-grad-cam by {d}");
        }
    }
}

#[test]
fn ma_net_maps_have_their_native_sides_and_a_missing_scale_is_an_error() {
    let (_vs, m) = tiny(Head::Bap);
    let x = input(2);
    for (kind, side) in [(MapKind::Mean, 3), (MapKind::Class, 3), (MapKind::Scale14, 6), (MapKind::Class14, 6)] {
        let (out, map) = tch::no_grad(|| m.forward_map(&x, false, kind, None)).unwrap();
        assert_eq!(map.size(), vec![2, 1, side, side], "{kind}");
        assert!(map.min().double_value(&[]) >= 0.0, "{kind} has negative values");
        assert_eq!(out.logits.size(), vec![2, 3]);
    }
    // The tiny preset has scales 7+14: no 28×28 head.
    let e = tch::no_grad(|| m.forward_map(&x, false, MapKind::Scale28, None)).err().expect("no 28×28 head").to_string();
    assert!(e.contains("no 12×12 attention head"), "{e}");
    // The class map depends on the class: two classes give two maps.
    let (_, a) = tch::no_grad(|| m.forward_map(&x, false, MapKind::Class, Some(&Tensor::from_slice(&[0i64, 0])))).unwrap();
    let (_, b) = tch::no_grad(|| m.forward_map(&x, false, MapKind::Class, Some(&Tensor::from_slice(&[1i64, 1])))).unwrap();
    assert!((a - b).abs().max().double_value(&[]) > 0.0);
}

/// Phantoms with lesion masks and a tiny model trained on them for one epoch, made once.
fn phantoms_and_model() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("phantoms");
        let o = magsd(&["data", "synth", "--out", data.to_str().unwrap(), "--per-class", "4", "--size", "96"]);
        assert!(o.status.success(), "{}", text(&o));
        let run = d.path().join("run");
        let o = magsd(&[
            "train", "--data", data.to_str().unwrap(), "--preset", "tiny", "--folds", "0", "--epochs", "1", "--device", "cpu", "--out",
            run.to_str().unwrap(), "--quiet",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        (d, data, run)
    })
}

/// Three of the phantoms, of three classes, for the `predict` tests.
fn three_phantoms(data: &Path) -> Vec<PathBuf> {
    ["covid19/covid19_0000.png", "bacterial/bacterial_0001.png", "normal/normal_0002.png"].iter().map(|p| data.join("images").join(p)).collect()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn predict_json_gives_the_same_boxes_with_and_without_a_heatmap() {
    let (d, data, run) = phantoms_and_model();
    let images = three_phantoms(data);
    for map in ["mean", "class"] {
        let mut args = vec!["predict", "--model", run.to_str().unwrap(), "--device", "cpu", "--json", "--map", map];
        args.extend(images.iter().map(|p| p.to_str().unwrap()));
        let plain = magsd(&args);
        assert!(plain.status.success(), "{}", text(&plain));
        let heat = d.path().join(format!("heat-{map}"));
        args.extend(["--heatmap", heat.to_str().unwrap()]);
        let with = magsd(&args);
        assert!(with.status.success(), "{}", text(&with));
        let (a, b) = (json_lines(&plain), json_lines(&with));
        assert_eq!(a.len(), images.len());
        for (a, b) in a.iter().zip(&b) {
            assert!(!a["boxes"].as_array().unwrap().is_empty(), "no boxes without --heatmap: {a}");
            assert_eq!(a["boxes"], b["boxes"], "--map {map}");
            assert!(b["heatmap"].as_str().is_some_and(|p| Path::new(p).is_file()));
        }
    }
}

/// `predict`'s default fast path (BatchNorm folded, channels-last on the CPU) gives the exact
/// path's (`--exact`) classes and probabilities up to float32 rounding.
#[test]
fn predict_fast_path_agrees_with_exact() {
    let (_d, data, run) = phantoms_and_model();
    let images = three_phantoms(data);
    let mut args = vec!["predict", "--model", run.to_str().unwrap(), "--device", "cpu", "--json"];
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    let fast = magsd(&args);
    args.push("--exact");
    let exact = magsd(&args);
    assert!(fast.status.success() && exact.status.success(), "{}\n{}", text(&fast), text(&exact));
    let (f, e) = (json_lines(&fast), json_lines(&exact));
    assert_eq!(f.len(), images.len());
    for (f, e) in f.iter().zip(&e) {
        assert_eq!(f["predicted"], e["predicted"]);
        for (class, p) in e["probabilities"].as_object().unwrap() {
            let (p, q) = (p.as_f64().unwrap(), f["probabilities"][class].as_f64().unwrap());
            assert!((p - q).abs() < 1e-5, "{class}: exact {p}, fast {q}");
        }
    }
}

#[test]
fn localize_compares_the_methods_with_intervals_and_n_a() {
    let (d, data, run) = phantoms_and_model();
    let out = d.path().join("loc");
    let o = magsd(&[
        "localize", "--model", run.to_str().unwrap(), "--data", data.to_str().unwrap(), "--device", "cpu", "--out",
        out.to_str().unwrap(), "--map", "class", "--method", "mean,class,class14,gradcam,gradcam++-layer3,uniform,centre",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("saliency methods"), "{}", text(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["map"], "class");
    let methods = m["saliency"]["methods"].as_array().unwrap();
    let names: Vec<&str> = methods.iter().map(|x| x["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["mean", "class", "class14", "gradcam", "gradcam++-layer3", "uniform", "centre"]);
    let by = |n: &str| methods.iter().find(|x| x["method"] == n).unwrap();
    // A uniform map: AUROC exactly chance, no correlation to speak of (n/a, not 0).
    assert_eq!(by("uniform")["saliency_auroc"]["estimate"], 0.5);
    assert!(by("uniform")["flip_consistency"].is_null());
    // The centre prior is mirror-symmetric: its flip consistency is 1.
    assert!((by("centre")["flip_consistency"]["estimate"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(by("class14")["native_side"], 6);
    for x in methods {
        assert!(x["images_with_truth"].as_u64().unwrap() > 0);
        let c = &x["energy_pointing_game"];
        let (lo, est, hi) = (c["low"].as_f64().unwrap(), c["estimate"].as_f64().unwrap(), c["high"].as_f64().unwrap());
        assert!(lo <= est && est <= hi && (0.0..=1.0).contains(&est), "{x}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Saliency methods compared") && report.contains("3×3 map"), "{report}");
}
