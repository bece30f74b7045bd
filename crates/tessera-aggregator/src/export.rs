//! `tessera-aggregator export --format safetensors`: the final global model
//! as a file PyTorch users load without Tessera.
//!
//! The aggregator only holds the trainable part; the rest of the model (a
//! frozen backbone) comes from the run's `[model]` section: the same
//! deterministic initialisation every member builds (`init_seed`), or the
//! `pretrained` backbone file. LoRA adapters are merged into their layer
//! (`W + (alpha / rank) A B`), so the file describes plain linear layers.
//!
//! Tensors are named and shaped as the state dict of
//! `torch.nn.Sequential(Linear, ReLU, ..., Linear)`: layer `i` is
//! `"{2i}.weight"` (`[out_features, in_features]`) and `"{2i}.bias"`, so
//! `model.load_state_dict(safetensors.torch.load_file(path))` works as is.
//! An image network is exported whole under module paths (`head.weight`,
//! `backbone.blocks.15.project_conv.weight`, `backbone.bn1.running_mean`),
//! in PyTorch's layout too (`tessera_vision::pytorch_model`: linear weights
//! `[out, in]`, LoRA adapters merged into their convolutions), so the file
//! alone is the model.
//! The file's metadata names the architecture and the run it came from;
//! for EfficientNet-Lite0, `tessera.network` describes the network as JSON
//! (`tessera_vision::network_metadata`), from which
//! `scripts/export_forward.py` runs it with numpy alone.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tessera_core::{ModelConfig, ModelParams, ModelSection, TrainableConfig, VisionModelConfig};
use tessera_learn::DEFAULT_BACKEND;
use tessera_tabular::Field;

use crate::store::StateStore;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The state database could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Rebuilding the model (backbone, import, pretrained file) failed.
    #[error("model")]
    Learn(#[from] tessera_tabular::LearnError),
    /// Rebuilding the image network (checkpoint, adapters) failed.
    #[error("image model")]
    Vision(#[from] tessera_vision::VisionError),
    /// No round has completed, so there is no trained model.
    #[error("the state database holds no completed round yet: nothing to export")]
    NoCheckpoint,
    /// The database has no run in it.
    #[error("the state database holds no run configuration")]
    NoConfig,
    /// The stored configuration's `[model]` does not parse.
    #[error("stored run configuration unreadable: {0}")]
    Config(String),
    /// The output file could not be written.
    #[error("writing {path}: {message}")]
    Write {
        /// The output file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One exported tensor, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportTensor {
    /// State-dict key, e.g. `"2.weight"`.
    pub name: String,
    /// Dimensions, outermost first (`[out_features, in_features]` for a
    /// linear weight).
    pub shape: Vec<usize>,
    /// Values in row-major order; `shape`'s product long.
    pub data: Vec<f32>,
}

/// What `export` wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// The tensors in the file, in the order written.
    pub tensors: Vec<ExportTensor>,
    /// Rounds completed when the exported checkpoint was taken.
    pub completed_rounds: u64,
    /// SHA-256 of the trained (exchanged) part, as in the audit log, hex.
    pub model_sha256: String,
    /// Human-readable architecture, e.g. `Sequential(Linear(30, 8), ReLU(), Linear(8, 2))`.
    pub architecture: String,
}

/// The whole tabular model after training: backbone (initial or
/// pretrained) with the trained part imported and adapters merged, as
/// PyTorch linear layers, with its architecture string.
pub fn full_model(cfg: &ModelConfig, trained: &ModelParams) -> Result<(Vec<ExportTensor>, String), ExportError> {
    let mlp = tessera_tabular::mlp_config(cfg);
    let mut model = tessera_tabular::configured_mlp(cfg, &DEFAULT_BACKEND.training_device())?;
    let slots = model.trainable_slots(&mlp.trainable);
    tessera_tabular::import_slots(&mut model, &slots, trained)?;
    let lora_scale = match cfg.trainable {
        TrainableConfig::Lora { rank, alpha } => alpha / rank as f32,
        _ => 0.0,
    };
    let mut out = Vec::new();
    let mut arch = Vec::new();
    let n = model.num_backbone_layers();
    for layer in 0..=n {
        let w = model.read_slot(layer, Field::Weight)?;
        let (d_in, d_out) = (w.shape[0], w.shape[1]);
        let mut weight = w.data; // [in, out]
        if model.param(layer, Field::LoraA).is_some() {
            let a = model.read_slot(layer, Field::LoraA)?; // [in, rank]
            let b = model.read_slot(layer, Field::LoraB)?; // [rank, out]
            let rank = a.shape[1];
            for i in 0..d_in {
                for o in 0..d_out {
                    let ab: f32 = (0..rank).map(|k| a.data[i * rank + k] * b.data[k * d_out + o]).sum();
                    weight[i * d_out + o] += lora_scale * ab;
                }
            }
        }
        // [in, out] -> [out, in], as torch.nn.Linear stores it.
        let mut torch_w = vec![0f32; weight.len()];
        for i in 0..d_in {
            for o in 0..d_out {
                torch_w[o * d_in + i] = weight[i * d_out + o];
            }
        }
        let bias = model.read_slot(layer, Field::Bias)?;
        out.push(ExportTensor { name: format!("{}.weight", 2 * layer), shape: vec![d_out, d_in], data: torch_w });
        out.push(ExportTensor { name: format!("{}.bias", 2 * layer), shape: vec![d_out], data: bias.data });
        arch.push(format!("Linear({d_in}, {d_out})"));
    }
    Ok((out, format!("Sequential({})", arch.join(", ReLU(), "))))
}

/// The whole image network in PyTorch's layout, with its description.
pub fn vision_model(
    cfg: &VisionModelConfig,
    trained: &ModelParams,
) -> Result<(Vec<ExportTensor>, String), ExportError> {
    let (params, what) = tessera_vision::pytorch_model(cfg, trained, &DEFAULT_BACKEND.device())?;
    let tensors = params.tensors.into_iter().map(|t| ExportTensor { name: t.name, shape: t.shape, data: t.data });
    Ok((tensors.collect(), what))
}

/// Write `tensors` to `path` as safetensors (f32, little-endian).
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[ExportTensor],
    metadata: HashMap<String, String>,
) -> Result<(), ExportError> {
    let werr = |message: String| ExportError::Write { path: path.to_path_buf(), message };
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| TensorView::new(Dtype::F32, t.shape.clone(), b).map(|v| (t.name.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| werr(e.to_string()))?;
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| werr(e.to_string()))
}

/// Read a safetensors file back (f32 tensors only), sorted by name, for
/// checks; any other dtype is an error.
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<ExportTensor>, String> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out: Vec<ExportTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            if v.dtype() != Dtype::F32 {
                return Err(format!("tensor {name} is {:?}, not F32", v.dtype()));
            }
            let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            Ok(ExportTensor { name, shape: v.shape().to_vec(), data })
        })
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Export the newest checkpoint in `store` to `out`: a tabular MLP as the
/// whole `torch.nn.Sequential` state dict, an image network as its trained
/// part (the frozen backbone is the public checkpoint every member loads).
pub fn export_safetensors(store: &StateStore, out: &Path) -> Result<ExportReport, ExportError> {
    let config = store.latest_config()?.ok_or(ExportError::NoConfig)?;
    let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| ExportError::Config(e.to_string()))?;
    let model_cfg: ModelSection =
        serde_json::from_value(config["model"].clone()).map_err(|e| ExportError::Config(e.to_string()))?;
    let cp = store.latest_checkpoint()?.ok_or(ExportError::NoCheckpoint)?;
    let run_id = store.run_info()?.map(|r| r.run_id.to_hex()).unwrap_or_default();
    let (tensors, architecture) = match &model_cfg {
        ModelSection::Tabular(m) => full_model(m, &cp.model)?,
        // The frozen backbone is the public checkpoint every member loads;
        // what the federation trained is the exchanged part (adapters merged).
        ModelSection::Vision(m) => vision_model(m, &cp.model)?,
    };
    let mut metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("tessera.architecture".to_string(), architecture.clone()),
        (
            "tessera.layout".to_string(),
            "torch.nn.Linear: weight [out_features, in_features]; torch.nn.Conv2d: weight [out_channels, \
             in_channels / groups, kh, kw]"
                .to_string(),
        ),
        ("tessera.run_id".to_string(), run_id),
        ("tessera.completed_rounds".to_string(), cp.completed.to_string()),
        ("tessera.trained_sha256".to_string(), cp.model_sha256.clone()),
    ]);
    if let ModelSection::Vision(m) = &model_cfg
        && let Some(network) = tessera_vision::network_metadata(m)
    {
        metadata.insert("tessera.network".to_string(), network);
    }
    write_safetensors(out, &tensors, metadata)?;
    Ok(ExportReport { tensors, completed_rounds: cp.completed, model_sha256: cp.model_sha256, architecture })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::ParamTensor;

    fn cfg(trainable: TrainableConfig) -> ModelConfig {
        ModelConfig { hidden: vec![4], num_features: 3, num_classes: 2, trainable, init_seed: 5, pretrained: None }
    }

    #[test]
    fn full_model_is_the_backbone_plus_the_trained_head_in_torch_layout() {
        let c = cfg(TrainableConfig::HeadOnly);
        let initial = tessera_tabular::initial_trainable_params(&c).unwrap();
        let mut trained = initial.clone();
        for v in trained.values_mut() {
            *v += 1.0;
        }
        let (tensors, arch) = full_model(&c, &trained).unwrap();
        assert_eq!(arch, "Sequential(Linear(3, 4), ReLU(), Linear(4, 2))");
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
        // The head is the trained one, transposed to [out, in].
        let head_w = trained.get("head.weight").unwrap();
        assert_eq!(tensors[2].shape, vec![2, 4]);
        for i in 0..4 {
            for o in 0..2 {
                assert_eq!(tensors[2].data[o * 4 + i], head_w.data[i * 2 + o]);
            }
        }
        assert_eq!(tensors[3].data, trained.get("head.bias").unwrap().data);
        // The frozen backbone is the deterministic initialisation.
        let all = tessera_tabular::initial_trainable_params(&cfg(TrainableConfig::All)).unwrap();
        let bw = all.get("backbone.layers.0.weight").unwrap();
        assert_eq!(tensors[0].data[0], bw.data[0]);
        assert_eq!(tensors[0].data[1], bw.data[4], "row 0 of [out, in] is column 0 of [in, out]");
    }

    #[test]
    fn lora_adapters_are_merged() {
        let c = cfg(TrainableConfig::Lora { rank: 2, alpha: 4.0 });
        let initial = tessera_tabular::initial_trainable_params(&c).unwrap();
        let mut tensors = Vec::new();
        for t in &initial.tensors {
            let data = if t.name.ends_with("lora_b") { vec![0.5; t.data.len()] } else { t.data.clone() };
            tensors.push(ParamTensor::new(t.name.clone(), t.shape.clone(), data).unwrap());
        }
        let trained = ModelParams::new(tensors);
        let (out, _) = full_model(&c, &trained).unwrap();
        let base = full_model(&c, &initial).unwrap().0; // B = 0 initially: nothing merged
        let a = trained.get("backbone.layers.0.lora_a").unwrap(); // [3, 2]
        // W'[o][i] = W[o][i] + (4/2) * sum_k A[i][k] * 0.5
        for i in 0..3 {
            let want = base[0].data[i] + 2.0 * (a.data[i * 2] + a.data[i * 2 + 1]) * 0.5;
            assert!((out[0].data[i] - want).abs() < 1e-6);
        }
    }

    /// An image export holds PyTorch's layout: `head.weight` is `[classes,
    /// 1280]`, and the cross-entropy of `f W^T + b` computed with the file's
    /// tensors, as `torch.nn.Linear` computes it, is the model's own.
    #[test]
    fn image_export_is_in_pytorch_layout_and_reproduces_the_model() {
        use tessera_core::BackboneInit;
        use tessera_vision::{FEATURE_DIM, FeatureCache, VisionNet};
        let cfg = VisionModelConfig { backbone: BackboneInit::Random, ..VisionModelConfig::efficientnet_head(10, 32) };
        let device = DEFAULT_BACKEND.device();
        let net = VisionNet::build(&cfg, &device).unwrap();
        let mut trained = net.trainable_params().unwrap();
        for t in &mut trained.tensors {
            if t.name == "head.bias" {
                t.data.iter_mut().enumerate().for_each(|(k, v)| *v = 0.05 * k as f32);
            }
        }
        let VisionNet::Transfer(model) = net.with_trainable_params(&trained).unwrap() else { unreachable!() };
        let (tensors, _) = vision_model(&cfg, &trained).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("head.safetensors");
        write_safetensors(&p, &tensors, HashMap::new()).unwrap();
        let file = read_safetensors(&std::fs::read(&p).unwrap()).unwrap();
        let w = file.iter().find(|t| t.name == "head.weight").unwrap();
        let b = file.iter().find(|t| t.name == "head.bias").unwrap();
        assert_eq!((w.shape.clone(), b.shape.clone()), (vec![10, FEATURE_DIM], vec![10]));

        let fashion = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist");
        let data = tessera_vision::load_fashion_mnist(&fashion, "t10k").unwrap().stratified_sample(2, 5).unwrap();
        let pre = tessera_vision::preprocess(&cfg);
        let want = tessera_vision::evaluate_transfer(&model, &data, &pre, 16, &device).unwrap();
        let cache = FeatureCache::extract(&model.backbone, &data, &pre, 16, &device).unwrap();
        let mut loss = 0.0f64;
        for (f, &label) in cache.features().chunks(FEATURE_DIM).zip(cache.labels()) {
            // torch.nn.Linear: y = x W^T + b, W [out_features, in_features].
            let logits: Vec<f64> = (0..10)
                .map(|o| {
                    b.data[o] as f64
                        + (0..FEATURE_DIM).map(|i| (f[i] * w.data[o * FEATURE_DIM + i]) as f64).sum::<f64>()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + logits.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            loss += lse - logits[label];
        }
        loss /= data.len() as f64;
        assert!((loss - want.loss).abs() < 1e-4, "file's forward: loss {loss}, the model's {}", want.loss);
    }

    /// The logits `scripts/export_forward.py` computes with numpy from
    /// `file` and its metadata alone, for `input` of `shape`. `None`, said
    /// on stderr, where python3 with numpy and safetensors is missing,
    /// except under CI (`CI` set), whose `.ci/run` installs them.
    fn python_logits(file: &Path, input: &[f32], shape: &[usize]) -> Option<Vec<f32>> {
        use std::process::Command;
        let probe = Command::new("python3").args(["-c", "import numpy, safetensors"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs python3 with numpy and safetensors (.ci/run installs them)"
            );
            eprintln!("SKIPPED the numpy check: python3 with numpy and safetensors is not installed");
            return None;
        }
        let dir = file.parent().unwrap();
        let (inputs, out) = (dir.join("input.f32"), dir.join("logits.f32"));
        std::fs::write(&inputs, input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/export_forward.py");
        let shape = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
        let run = Command::new("python3").arg(&script).arg(file).arg(&inputs).arg(&shape).arg(&out).output().unwrap();
        assert!(run.status.success(), "export_forward.py: {}", String::from_utf8_lossy(&run.stderr));
        let bytes = std::fs::read(&out).unwrap();
        Some(bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: logit count");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!("{what}: max |numpy - Rust| = {diff:e} (logit scale {scale})");
        assert!(diff <= 1e-4 * scale, "{what}: numpy's logits differ from the model's by {diff} (scale {scale})");
    }

    /// A tabular export (LoRA merged) run as `torch.nn.Sequential` would run
    /// it, by numpy from the file and its `tessera.architecture` alone,
    /// gives the Rust model's logits.
    #[test]
    fn exported_tabular_model_reproduces_the_models_logits_in_numpy() {
        let c = ModelConfig {
            hidden: vec![8],
            num_features: 30,
            num_classes: 2,
            trainable: TrainableConfig::Lora { rank: 2, alpha: 4.0 },
            init_seed: 5,
            pretrained: None,
        };
        let initial = tessera_tabular::initial_trainable_params(&c).unwrap();
        let tensors = initial.tensors.iter().map(|t| {
            let data = t.data.iter().enumerate().map(|(k, v)| v + 0.05 * ((k % 5) as f32 - 2.0)).collect();
            ParamTensor::new(t.name.clone(), t.shape.clone(), data).unwrap()
        });
        let trained = ModelParams::new(tensors.collect());
        let mut model = tessera_tabular::configured_mlp(&c, &DEFAULT_BACKEND.training_device()).unwrap();
        let slots = model.trainable_slots(&tessera_tabular::mlp_config(&c).trainable);
        tessera_tabular::import_slots(&mut model, &slots, &trained).unwrap();
        let rows: Vec<f32> = (0..4 * 30).map(|i| ((i * 37) % 21) as f32 / 10.0 - 1.0).collect();
        let want = model.logits(&rows, 30).unwrap();

        let (exported, arch) = full_model(&c, &trained).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tabular.safetensors");
        write_safetensors(&p, &exported, HashMap::from([("tessera.architecture".to_string(), arch)])).unwrap();
        let Some(got) = python_logits(&p, &rows, &[4, 30]) else { return };
        assert_close(&got, &want, "tabular");
    }

    /// `cfg`'s network with every trained tensor moved a little, exported,
    /// then run by numpy from the file and its `tessera.network` metadata
    /// alone on four shipped Fashion-MNIST test images: the Rust model's
    /// logits, within 1e-4 of their scale. Returns the file's tensors and
    /// their description.
    fn image_export_runs_in_numpy(cfg: &VisionModelConfig) -> (Vec<ExportTensor>, String) {
        use tessera_vision::VisionNet;
        let device = DEFAULT_BACKEND.device();
        let net = VisionNet::build(cfg, &device).unwrap();
        let mut trained = net.trainable_params().unwrap();
        for t in &mut trained.tensors {
            t.data.iter_mut().enumerate().for_each(|(k, v)| *v += 0.01 * ((k % 7) as f32 - 3.0));
        }
        let net = net.with_trainable_params(&trained).unwrap();
        let fashion = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/fashion-mnist");
        let data = tessera_vision::load_fashion_mnist(&fashion, "t10k").unwrap().stratified_sample(1, 5).unwrap();
        let x = tessera_vision::preprocess(cfg).batch(&data, &[0, 1, 2, 3], &device).unwrap();
        let shape = x.dims().to_vec();
        let input = x.clone().into_data().try_into_vec::<f32>().unwrap();
        let want = net.logits(x).into_data().try_into_vec::<f32>().unwrap();

        let (tensors, what) = vision_model(cfg, &trained).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("image.safetensors");
        let network = tessera_vision::network_metadata(cfg).unwrap();
        write_safetensors(&p, &tensors, HashMap::from([("tessera.network".to_string(), network)])).unwrap();
        if let Some(got) = python_logits(&p, &input, &shape) {
            assert_close(&got, &want, &format!("{:?}", cfg.kind));
        }
        (tensors, what)
    }

    /// An image export is the whole network (backbone, batch-norm running
    /// statistics, the trained last block and head) in PyTorch's layout;
    /// numpy, building EfficientNet-Lite0 from the file's metadata alone,
    /// reproduces the model's logits. With the pretrained checkpoint when
    /// scripts/fetch-weights.sh has run (CI), else the seeded backbone. The
    /// small CNN likewise.
    #[test]
    fn exported_image_network_reproduces_the_models_logits_in_numpy() {
        use tessera_core::{BackboneInit, VisionArchitecture};
        let cfg = VisionModelConfig {
            backbone: BackboneInit::PretrainedIfPresent,
            trainable_blocks: 1,
            ..VisionModelConfig::efficientnet_head(10, 32)
        };
        let (tensors, what) = image_export_runs_in_numpy(&cfg);
        assert!(what.contains("the whole network"), "{what}");
        let head = tensors.iter().find(|t| t.name == "head.weight").unwrap();
        assert_eq!(head.shape, vec![10, tessera_vision::FEATURE_DIM], "torch.nn.Linear layout");
        let values: usize = tensors.iter().map(|t| t.data.len()).sum();
        assert!(values > 3_000_000, "{values} values: not the whole network (the trunk alone is 3.4M)");
        let cnn =
            VisionModelConfig { kind: VisionArchitecture::SmallCnn, ..VisionModelConfig::efficientnet_head(10, 28) };
        image_export_runs_in_numpy(&cnn);
    }

    #[test]
    fn safetensors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let t = vec![
            ExportTensor { name: "0.weight".into(), shape: vec![2, 3], data: vec![1.0, -2.0, 3.5, 0.0, 1e-8, 7.0] },
            ExportTensor { name: "0.bias".into(), shape: vec![2], data: vec![0.25, -0.5] },
        ];
        write_safetensors(&p, &t, HashMap::from([("format".into(), "pt".into())])).unwrap();
        let back = read_safetensors(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, vec![t[1].clone(), t[0].clone()]);
    }
}
