//! One whole training step of magsd against the PyTorch reference's (`bench_magsd_torch.py`),
//! replaying the reference's recorded draws: same weights, batch and draws must give the same
//! logits, attention maps, augmented batches, loss, gradients and BatchNorm statistics (issue 10;
//! fixture written by `scripts/make_parity_fixture.py step`, tiny preset, authors'-code variant).
use std::collections::HashMap;
use std::path::PathBuf;

use magsd::model::weights::{copy_exact, load_tensors, model_config};
use magsd::model::{Network, NetworkConfig};
use magsd::train::attention_aug::{augment_batch, sample_maps, StepRandom};
use magsd::train::config::TrainConfig;
use magsd::train::loss::soft_distance_loss;
use magsd::train::optim::Sgd;
use magsd::train::step::train_step;
use tch::{nn, Device, Kind, Tensor};

struct Fixture {
    path: PathBuf,
    config: NetworkConfig,
    t: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity_step.safetensors");
        let (tensors, meta) = load_tensors(&path).unwrap();
        let config = model_config(&meta, &path).unwrap().expect("fixture carries its model config");
        Fixture { path, config, t: tensors.into_iter().collect() }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.t.get(name).unwrap_or_else(|| panic!("fixture lacks {name}"))
    }

    /// A fresh network holding the reference's weights before the step.
    fn model(&self) -> (nn::VarStore, Network) {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Network::new(&vs.root(), self.config.clone()).unwrap();
        let weights: Vec<(String, Tensor)> = self
            .t
            .iter()
            .filter_map(|(n, t)| n.strip_prefix("w.").map(|n| (n.to_string(), t.shallow_clone())))
            .collect();
        copy_exact(&vs, &weights, &self.path).unwrap();
        (vs, model)
    }

    /// The reference's draws, replayed (map choices through the reference's own attention).
    fn draws(&self) -> StepRandom {
        StepRandom::from_choices(self.get("raw.attention"), self.get("draw.maps"), self.get("draw.theta"), self.get("draw.offset"))
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// `max|got − want|`, after checking the shapes agree.
fn abs_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.size(), want.size());
    max_abs(&(got.to_kind(Kind::Double) - want.to_kind(Kind::Double)))
}

/// `max|got − want| / max|want|`.
fn rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    abs_diff(got, want) / max_abs(want).max(1e-30)
}

/// Every trainable parameter's gradient against the reference's, to 1e-4 relative.
fn assert_gradients_match(vs: &nn::VarStore, f: &Fixture, what: &str) {
    let mut checked = 0;
    for (name, p) in vs.variables() {
        if !p.requires_grad() {
            continue;
        }
        let g = p.grad();
        assert!(g.defined(), "{what}: {name} has no gradient");
        let want = f.get(&format!("grad.{name}"));
        assert!(max_abs(want) > 0.0, "{what}: the reference's gradient of {name} is zero; the fixture tests nothing");
        let d = rel_diff(&g, want);
        assert!(d < 1e-4, "{what}: gradient of {name} differs from the reference by {d:.2e} (relative)");
        checked += 1;
    }
    let in_fixture = f.t.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, in_fixture, "{what}: magsd and the reference have different parameter sets");
}

#[test]
fn forward_augmentations_loss_and_gradients_equal_the_references() {
    let f = Fixture::load();
    let (vs, model) = f.model();
    let cfg = TrainConfig::paper(); // the authors'-code augmentation and loss
    let (x, y) = (f.get("input"), f.get("labels"));

    let raw = model.forward_t(x, true);
    let d = abs_diff(&raw.logits, f.get("raw.logits"));
    assert!(d < 1e-4, "raw logits differ from the reference by {d:.2e}");
    let d = abs_diff(&raw.attention, f.get("raw.attention"));
    assert!(d < 1e-4, "attention maps differ from the reference by {d:.2e}");

    // The replayed map choice picks exactly the reference's maps.
    let r = StepRandom::from_choices(&raw.attention, f.get("draw.maps"), f.get("draw.theta"), f.get("draw.offset"));
    let (b, m, h, w) = raw.attention.size4().unwrap();
    let idx = f.get("draw.maps").view([b, 3, 1, 1]).expand([b, 3, h, w], false);
    let chosen = raw.attention.detach().gather(1, &idx, false);
    assert_eq!(abs_diff(&sample_maps(&raw.attention, &r.maps), &chosen), 0.0, "map choice (of {m})");

    let views = augment_batch(x, &raw.attention, &cfg.method.augmentations, &cfg.method.attention, &r);
    assert_eq!(views.len(), 3);
    for (view, name) in views.iter().zip(["aug.mixup", "aug.dimming", "aug.patching"]) {
        let d = abs_diff(view, f.get(name));
        assert!(d < 1e-4, "{name} differs from the reference by {d:.2e}");
    }
    let z_aux: Vec<Tensor> = views.iter().map(|v| model.forward_t(v, true).logits).collect();
    let d = abs_diff(&Tensor::stack(&z_aux, 0), f.get("aux.logits"));
    assert!(d < 1e-4, "augmented-branch logits differ from the reference by {d:.2e}");

    let loss = soft_distance_loss(&raw.logits, &z_aux, y, &cfg.method.loss);
    let d = rel_diff(&loss.total.view([1]), f.get("loss"));
    assert!(d < 1e-5, "loss differs from the reference by {d:.2e} (relative)");
    loss.total.backward();
    assert_gradients_match(&vs, &f, "pieces");

    // Four train-mode passes moved the BatchNorm statistics as the reference's did (momentum 0.1).
    for (name, t) in vs.variables() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            let d = rel_diff(&t, f.get(&format!("after.{name}")));
            assert!(d < 1e-4, "{name} after the step differs from the reference by {d:.2e} (relative)");
        }
    }
}

#[test]
fn train_step_equals_the_references_step() {
    let f = Fixture::load();
    let (vs, model) = f.model();
    let cfg = TrainConfig::paper(); // SGD lr 1e-3, momentum 0.9, weight decay 1e-6: as the fixture
    let before: HashMap<String, Tensor> = vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    let params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut sgd = Sgd::new(params, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.nesterov);
    let out = train_step(&model, &mut sgd, f.get("input"), f.get("labels"), &f.draws(), &cfg, Device::Cpu, cfg.optim.lr);

    let d = rel_diff(&out.loss.total.view([1]), f.get("loss"));
    assert!(d < 1e-5, "train_step's loss differs from the reference by {d:.2e} (relative)");
    assert_gradients_match(&vs, &f, "train_step");
    // The first SGD step: p − lr·(g + wd·p) with the reference's gradient (the momentum buffer
    // starts as the first gradient).
    for (name, p) in vs.variables() {
        let Some(g) = f.t.get(&format!("grad.{name}")) else { continue };
        let w = &before[&name];
        let step = (g + w * cfg.optim.weight_decay) * cfg.optim.lr;
        let want = w - &step;
        let d = abs_diff(&p, &want);
        let tol = 1e-4 * max_abs(&step) + 1e-6 * max_abs(w);
        assert!(d <= tol, "{name} after the SGD update differs from the reference's by {d:.2e} (tolerance {tol:.2e})");
    }
    for (name, t) in vs.variables() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            let d = rel_diff(&t, f.get(&format!("after.{name}")));
            assert!(d < 1e-4, "train_step: {name} differs from the reference by {d:.2e} (relative)");
        }
    }
}
