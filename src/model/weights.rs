//! Model files: whole models (MA-Net or a baseline) as safetensors with their config embedded,
//! and import of torchvision checkpoints (`.pth` state dicts or `.safetensors`) by name.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tch::{Device, Kind, Tensor, nn};

use super::{Network, NetworkConfig};
use crate::error::{Error, IoContext, Result};

/// Tensors with their names, as files store them.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Metadata key under which a model file stores its [`NetworkConfig`] as JSON.
pub const CONFIG_KEY: &str = "magsd.config";
/// `format` metadata of training checkpoints (`crate::train::checkpoint`), which hold the model
/// variables under their own names plus optimizer tensors under [`OPTIM_PREFIX`].
pub const CHECKPOINT_FORMAT: &str = "magsd-checkpoint";
pub const OPTIM_PREFIX: &str = "optim.";
/// Tensors of a model file's out-of-distribution detector (`crate::eval::ood`), stored beside
/// the model's variables. They are not variables: loading sets them aside in
/// [`LoadedModel::extra`]. Files written before the detector existed have none.
pub const OOD_PREFIX: &str = "ood.";

/// Splits a file's tensors into the model's variables and the rest (optimiser state of a
/// checkpoint, a detector's tensors), which loading must not take for variables.
pub fn split_variables(tensors: NamedTensors) -> (NamedTensors, NamedTensors) {
    tensors.into_iter().partition(|(n, _)| !n.starts_with(OPTIM_PREFIX) && !n.starts_with(OOD_PREFIX))
}

fn dtype_of(kind: Kind) -> Result<Dtype> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => return Err(Error::Model(format!("cannot store tensors of kind {other:?}"))),
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Writes named tensors and string metadata as one safetensors file, atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        bufs.push((name.clone(), dtype_of(t.kind())?, shape, bytes));
    }
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("sizes match")))
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Model(format!("{}: cannot serialise: {e}", path.display())))?;
    crate::error::write_atomic(path, &bytes)
}

/// Reads every tensor (on CPU) and the metadata of a safetensors file.
pub fn load_tensors(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = crate::files::read(path, crate::files::MAX_MODEL_BYTES, "model")?;
    let bad = |e: safetensors::SafeTensorError| Error::bad_file(path, format!("not a valid safetensors file: {e}"));
    let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| Error::bad_file(path, format!("tensor {name} has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::from_data_size(view.data(), &shape, kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Every variable of the store (parameters and BatchNorm running statistics), sorted by name.
pub fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Number of trainable parameters.
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// Saves a whole model: all variables plus its config in the file's metadata.
pub fn save_model(path: &Path, vs: &nn::VarStore, config: &NetworkConfig) -> Result<()> {
    save_model_with(path, vs, config, None)
}

/// Metadata key of a model file saved before its training finished; its value says how far
/// training had got (e.g. "saved after epoch 1 of 12"). Training removes it when it finishes.
pub const UNFINISHED_KEY: &str = "magsd.unfinished";

/// [`save_model`], marking the file unfinished with `progress` when given.
pub fn save_model_with(path: &Path, vs: &nn::VarStore, config: &NetworkConfig, progress: Option<&str>) -> Result<()> {
    let mut meta = HashMap::from([
        (CONFIG_KEY.to_string(), serde_json::to_string(config).expect("config serialises")),
        ("format".to_string(), "magsd-model".to_string()),
    ]);
    if let Some(p) = progress {
        meta.insert(UNFINISHED_KEY.to_string(), p.to_string());
    }
    save_tensors(path, &named_variables(vs), meta)
}

/// Removes the unfinished mark of a model file, if it has one.
pub fn mark_finished(path: &Path) -> Result<()> {
    let (tensors, mut meta) = load_tensors(path)?;
    if meta.remove(UNFINISHED_KEY).is_some() {
        save_tensors(path, &tensors, meta)?;
    }
    Ok(())
}

/// What to tell a user of a model file saved before its training finished; `None` for a
/// finished one (and for files written before the mark existed).
pub fn unfinished(meta: &HashMap<String, String>) -> Option<String> {
    meta.get(UNFINISHED_KEY).map(|p| {
        format!("this model's training did not finish ({p}); its answers are those of a partly trained network (finish it with `magsd train --resume RUN`)")
    })
}

/// The config embedded in a model file, if it is one.
pub fn model_config(meta: &HashMap<String, String>, path: &Path) -> Result<Option<NetworkConfig>> {
    meta.get(CONFIG_KEY)
        .map(|s| serde_json::from_str(s).map_err(|e| Error::bad_file(path, format!("model config unreadable: {e}"))))
        .transpose()
}

/// Copies `tensors` into the store's variables of the same name; every variable must be
/// given, with the same shape, and every tensor must be used.
pub fn copy_exact(vs: &nn::VarStore, tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let vars = vs.variables();
    let given: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let missing: Vec<&String> = vars.keys().filter(|k| !given.contains_key(k.as_str())).collect();
    let unused: Vec<&&str> = given.keys().filter(|k| !vars.contains_key(**k)).collect();
    if !missing.is_empty() || !unused.is_empty() {
        return Err(Error::Model(format!(
            "{}: does not match the model: missing {:?}, unexpected {:?}",
            path.display(),
            missing,
            unused
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars {
            let src = given[name.as_str()];
            if src.size() != var.size() {
                return Err(Error::Model(format!(
                    "{}: tensor {name} has shape {:?} in the file but {:?} in the model",
                    path.display(),
                    src.size(),
                    var.size()
                )));
            }
            let mut var = var;
            var.f_copy_(&src.to_kind(var.kind()))?;
        }
        Ok(())
    })
}

/// A model loaded from a file, with the store that owns its weights.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: Network,
    /// The file's metadata (its config, and what training stored beside it: input statistics,
    /// calibration, operating points, the detector's settings).
    pub metadata: HashMap<String, String>,
    /// The tensors stored beside the variables (under [`OOD_PREFIX`]), on the CPU.
    pub extra: NamedTensors,
}

/// Refuses weights with a NaN or an infinity (a diverged run saved by other means, a damaged
/// file): such a model answers with non-finite scores, which are no answer.
fn refuse_non_finite(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut bad: Vec<String> = tch::no_grad(|| {
        vs.variables()
            .into_iter()
            .filter(|(_, t)| t.is_floating_point() && !bool::try_from(t.isfinite().all()).unwrap_or(false))
            .map(|(n, _)| n)
            .collect()
    });
    if bad.is_empty() {
        return Ok(());
    }
    bad.sort();
    Err(Error::bad_file(
        path,
        format!(
            "{} tensor(s) hold NaN or infinite weights (first: {}); the model is broken (e.g. a diverged training run) and gives no answer",
            bad.len(),
            bad[0]
        ),
    ))
}

/// Loads a model saved by [`save_model`] (or the model in a training checkpoint) onto `device`.
pub fn load_model(path: &Path, device: Device) -> Result<LoadedModel> {
    let (tensors, meta) = load_tensors(path)?;
    let (tensors, rest) = split_variables(tensors);
    let extra: NamedTensors = rest.into_iter().filter(|(n, _)| n.starts_with(OOD_PREFIX)).collect();
    let config = model_config(&meta, path)?.ok_or_else(|| {
        Error::bad_file(
            path,
            "no magsd model config in this file: is it a torchvision checkpoint? \
             Import it with `--pretrained` or look at it with `magsd model info --weights`",
        )
    })?;
    let vs = nn::VarStore::new(device);
    // The fresh weights are overwritten at once, but drawing them moves libtorch's generator:
    // under the lock, so that a training run in this process keeps its draws.
    let model = {
        let _guard = super::init::TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        Network::new(&vs.root(), config)?
    };
    copy_exact(&vs, &tensors, path)?;
    refuse_non_finite(&vs, path)?;
    Ok(LoadedModel { vs, model, metadata: meta, extra })
}

/// What [`import_torchvision`] did with each tensor.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportReport {
    /// Copied as they are.
    pub loaded: Vec<String>,
    /// Copied after adapting (name → how).
    pub adapted: BTreeMap<String, String>,
    /// Model variables the file did not provide (they keep their fresh initialisation).
    pub missing: Vec<String>,
    /// File tensors the model has no use for.
    pub unused: Vec<String>,
}

/// Reads a torchvision-format checkpoint: `.safetensors`, otherwise a `torch.save` state dict.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let is_safetensors = crate::files::open(path, crate::files::MAX_MODEL_BYTES, "checkpoint").and_then(|mut f| {
        use std::io::Read;
        let mut head = [0u8; 9];
        let n = f.read(&mut head).at(path)?;
        // safetensors: 8-byte little-endian header length, then a JSON object.
        Ok(n == 9 && head[8] == b'{')
    })?;
    if is_safetensors {
        Ok(load_tensors(path)?.0)
    } else {
        super::pth::read_state_dict(path)
    }
}

/// The last (class) layers of torchvision's classifiers: ResNet and InceptionV3 `fc`, VGG16
/// `classifier.6`. With another number of classes they are skipped, not refused.
const CLASS_LAYERS: [&str; 4] = ["fc.weight", "fc.bias", "classifier.6.weight", "classifier.6.bias"];

/// Loads a torchvision checkpoint into a model built in `vs`, by name: a ResNet into MA-Net's
/// backbone (or the ResNet18/50 and FPN baselines), `vgg16` into VGG16, BCNN and
/// BCNN(Attention), `inception_v3` into InceptionV3 (torchvision names: `conv1.weight`,
/// `layer1.0.conv1.weight`, `features.0.weight`, `Mixed_5b.branch1x1.conv.weight`, ...; a
/// `module.` prefix from DataParallel is dropped). The checkpoint's class layer is skipped when
/// its number of classes differs. RGB stem weights (e.g. `[64, 3, 7, 7]`) are summed over the
/// colour axis for a 1-channel model, which gives the same response to a gray image as the RGB network
/// gives to that image replicated in three channels (the authors re-initialised this layer
/// instead). Any other shape mismatch is refused with an error naming the tensor.
pub fn import_torchvision(vs: &nn::VarStore, path: &Path) -> Result<ImportReport> {
    let tensors = read_checkpoint(path)?;
    let vars = vs.variables();
    let mut report = ImportReport::default();
    let mut plan: Vec<(String, Tensor)> = Vec::new();
    for (name, src) in tensors {
        let name = name.strip_prefix("module.").unwrap_or(&name).to_string();
        let Some(dst) = vars.get(&name) else {
            report.unused.push(name);
            continue;
        };
        let (s, d) = (src.size(), dst.size());
        let src = if s == d {
            report.loaded.push(name.clone());
            src
        } else if s.len() == 4 && d.len() == 4 && s[1] == 3 && d[1] == 1 && s[0] == d[0] && s[2..] == d[2..] {
            // Only a network's first convolution reads 3 channels.
            report.adapted.insert(name.clone(), "RGB stem summed over the colour axis for 1-channel input".into());
            src.sum_dim_intlist(&[1i64][..], true, Kind::Float)
        } else if CLASS_LAYERS.contains(&name.as_str()) && s.len() == d.len() && s[1..] == d[1..] {
            // The pretrained network's class layer (e.g. ImageNet's 1000 classes): left fresh.
            report.unused.push(name);
            continue;
        } else {
            return Err(Error::Model(format!(
                "{}: tensor {name} has shape {s:?} in the checkpoint but {d:?} in the model \
                 (a different network? choose the matching one with --arch or --backbone)",
                path.display()
            )));
        };
        plan.push((name, src));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, src) in &plan {
            let mut dst = vars[name].shallow_clone();
            dst.f_copy_(&src.to_kind(dst.kind()))?;
        }
        Ok(())
    })?;
    let done: std::collections::HashSet<&String> = plan.iter().map(|(n, _)| n).collect();
    report.missing = vars.keys().filter(|k| !done.contains(k)).cloned().collect();
    report.missing.sort();
    report.unused.sort();
    report.loaded.sort();
    if report.loaded.is_empty() && report.adapted.is_empty() {
        return Err(Error::Model(format!(
            "{}: no tensor matches the model's names (torchvision names such as \
             'layer1.0.conv1.weight' are expected)",
            path.display()
        )));
    }
    Ok(report)
}
