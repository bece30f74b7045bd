//! The tabular MLP: a backbone of hidden dense layers and a dense head, with
//! a configurable trainable part. Only trainable tensors are exchanged.
//!
//! Layout conventions (the names and shapes other members see):
//! - `weight` is `[in, out]` (burn's convention: `y = x W + b`),
//! - `bias` is `[out]` on the wire (stored as `[1, out]` for broadcasting),
//! - LoRA adds `lora_a` `[in, rank]` and `lora_b` `[rank, out]` with
//!   `y += (x A B) * alpha / rank`; `B` starts at zero so the adapted model
//!   starts equal to the base model.
//!
//! Frozen tensors are marked with burn's `set_require_grad(false)`, so the
//! autodiff graph never produces gradients for them and the optimizer, which
//! walks the trainable tensors only, never touches them.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_core::{ModelParams, ParamTensor};

use crate::error::LearnError;

/// Which part of the model trains and is exchanged.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainablePart {
    /// Only the head; the backbone is a frozen feature extractor.
    HeadOnly,
    /// The head plus the last `k` backbone layers.
    LastLayers(usize),
    /// Every tensor.
    All,
    /// Low-rank adapters on every backbone layer, plus the head; the
    /// backbone's own weights stay frozen.
    Lora {
        /// Inner dimension of each adapter, at least 1.
        rank: usize,
        /// Scale numerator: the adapter's output is multiplied by `alpha / rank`.
        alpha: f32,
    },
}

/// Shape of the MLP. No hidden layers gives logistic regression.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpConfig {
    /// Width of an encoded input row.
    pub num_features: usize,
    /// Widths of the hidden layers, input side first.
    pub hidden: Vec<usize>,
    /// Number of classes (outputs), at least 2.
    pub num_classes: usize,
    /// The part that trains and is exchanged.
    pub trainable: TrainablePart,
    /// Seed of the initial weights; members of one run share it.
    pub init_seed: u64,
}

/// The tensors of one dense layer; with a layer index, the address of one
/// tensor of a [`TabularMlp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `weight`, `[in, out]`.
    Weight,
    /// `bias`, `[out]` on the wire.
    Bias,
    /// `lora_a`, `[in, rank]` (LoRA only).
    LoraA,
    /// `lora_b`, `[rank, out]`, zero at initialization (LoRA only).
    LoraB,
}

impl Field {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::Weight => "weight",
            Field::Bias => "bias",
            Field::LoraA => "lora_a",
            Field::LoraB => "lora_b",
        }
    }
}

/// A dense layer with optional LoRA adapters.
#[derive(Module, Debug)]
pub(crate) struct Dense {
    pub(crate) weight: Param<Tensor<2>>,
    pub(crate) bias: Param<Tensor<2>>,
    pub(crate) lora_a: Option<Param<Tensor<2>>>,
    pub(crate) lora_b: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub(crate) lora_scale: f32,
}

/// Hidden layers, ReLU after each.
#[derive(Module, Debug)]
pub(crate) struct Backbone {
    pub(crate) layers: Vec<Dense>,
}

/// The tabular MLP: hidden dense layers with ReLU (the backbone), then a
/// dense head producing logits. Field names are the checkpoint's and the
/// wire's tensor names (`backbone.layers.{i}.weight`, `head.bias`).
#[derive(Module, Debug)]
pub struct TabularMlp {
    pub(crate) backbone: Backbone,
    pub(crate) head: Dense,
}

/// What a traced forward pass keeps per layer: enough to form per-example
/// gradients of that layer (see `dpsgd`).
pub(crate) struct LayerTrace {
    /// The layer's input, detached.
    pub input: Tensor<2>,
    /// Zero leaf added to the pre-activation; its gradient is dLoss/dz.
    pub probe: Tensor<2>,
}

fn uniform(rng: &mut ChaCha8Rng, rows: usize, cols: usize, bound: f32) -> Vec<f32> {
    (0..rows * cols).map(|_| rng.gen_range(-bound..=bound)).collect()
}

pub(crate) fn tensor2(data: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

fn param(t: Tensor<2>, trainable: bool) -> Param<Tensor<2>> {
    Param::initialized(ParamId::new(), t.set_require_grad(trainable)).set_require_grad(trainable)
}

impl Dense {
    fn init(rng: &mut ChaCha8Rng, d_in: usize, d_out: usize, lora: Option<(usize, f32)>, device: &Device) -> Self {
        // burn's Linear default: U(-k, k), k = 1/sqrt(in).
        let k = 1.0 / (d_in.max(1) as f32).sqrt();
        let weight = param(tensor2(uniform(rng, d_in, d_out, k), d_in, d_out, device), true);
        let bias = param(tensor2(uniform(rng, 1, d_out, k), 1, d_out, device), true);
        let (lora_a, lora_b, lora_scale) = match lora {
            Some((rank, alpha)) => (
                Some(param(tensor2(uniform(rng, d_in, rank, k), d_in, rank, device), true)),
                Some(param(tensor2(vec![0.0; rank * d_out], rank, d_out, device), true)),
                alpha / rank as f32,
            ),
            None => (None, None, 0.0),
        };
        Self { weight, bias, lora_a, lora_b, lora_scale }
    }

    pub(crate) fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(crate) fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    pub(crate) fn field(&self, f: Field) -> Option<&Param<Tensor<2>>> {
        match f {
            Field::Weight => Some(&self.weight),
            Field::Bias => Some(&self.bias),
            Field::LoraA => self.lora_a.as_ref(),
            Field::LoraB => self.lora_b.as_ref(),
        }
    }

    pub(crate) fn field_mut(&mut self, f: Field) -> Option<&mut Param<Tensor<2>>> {
        match f {
            Field::Weight => Some(&mut self.weight),
            Field::Bias => Some(&mut self.bias),
            Field::LoraA => self.lora_a.as_mut(),
            Field::LoraB => self.lora_b.as_mut(),
        }
    }

    /// The adapter's hidden activation `x A`, when adapters exist.
    pub(crate) fn lora_hidden(&self, x: Tensor<2>) -> Option<Tensor<2>> {
        self.lora_a.as_ref().map(|a| x.matmul(a.val()))
    }

    /// Pre-activation `x W + b (+ (x A B) s) (+ probe)`.
    pub(crate) fn forward(&self, x: Tensor<2>, probe: Option<Tensor<2>>) -> Tensor<2> {
        let mut z = x.clone().matmul(self.weight.val()) + self.bias.val();
        if let (Some(h), Some(b)) = (self.lora_hidden(x), &self.lora_b) {
            z = z + h.matmul(b.val()).mul_scalar(self.lora_scale);
        }
        match probe {
            Some(p) => z + p,
            None => z,
        }
    }
}

impl TabularMlp {
    /// Build with deterministic initial weights (from `init_seed`) and the
    /// configured part trainable, on `device`.
    pub fn new(cfg: &MlpConfig, device: &Device) -> Result<Self, LearnError> {
        if cfg.num_features == 0 || cfg.num_classes < 2 || cfg.hidden.contains(&0) {
            return Err(LearnError::Config("features, classes and hidden widths must be positive".into()));
        }
        let lora = match cfg.trainable {
            TrainablePart::Lora { rank, alpha } => {
                if rank == 0 || !alpha.is_finite() {
                    return Err(LearnError::Config("LoRA rank must be positive and alpha finite".into()));
                }
                Some((rank, alpha))
            }
            TrainablePart::LastLayers(k) if k > cfg.hidden.len() => {
                return Err(LearnError::Config(format!(
                    "LastLayers({k}) but the backbone has {} layers",
                    cfg.hidden.len()
                )));
            }
            _ => None,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.init_seed);
        let mut d_in = cfg.num_features;
        let mut layers = Vec::with_capacity(cfg.hidden.len());
        for &h in &cfg.hidden {
            layers.push(Dense::init(&mut rng, d_in, h, lora, device));
            d_in = h;
        }
        let head = Dense::init(&mut rng, d_in, cfg.num_classes, None, device);
        let mut model = Self { backbone: Backbone { layers }, head };
        let trainable = model.trainable_slots(&cfg.trainable);
        for (layer, field) in model.all_slots() {
            let on = trainable.contains(&(layer, field));
            let p = model.param_mut(layer, field).expect("slot listed by all_slots exists");
            *p = p.clone().set_require_grad(on);
        }
        Ok(model)
    }

    /// Hidden layers; the head's layer index.
    pub fn num_backbone_layers(&self) -> usize {
        self.backbone.layers.len()
    }

    /// Layer `i` in forward order; index `num_backbone_layers()` is the head.
    pub(crate) fn layer(&self, i: usize) -> &Dense {
        self.backbone.layers.get(i).unwrap_or(&self.head)
    }

    pub(crate) fn layer_mut(&mut self, i: usize) -> &mut Dense {
        let n = self.backbone.layers.len();
        if i < n { &mut self.backbone.layers[i] } else { &mut self.head }
    }

    /// Tensor `field` of layer `layer` (the head is layer
    /// [`num_backbone_layers`](Self::num_backbone_layers)), if the layer has it.
    pub fn param(&self, layer: usize, field: Field) -> Option<&Param<Tensor<2>>> {
        self.layer(layer).field(field)
    }

    pub(crate) fn param_mut(&mut self, layer: usize, field: Field) -> Option<&mut Param<Tensor<2>>> {
        self.layer_mut(layer).field_mut(field)
    }

    /// Stable dotted name of a tensor, as used on the wire and in checkpoints.
    pub(crate) fn slot_name(&self, layer: usize, field: Field) -> String {
        if layer == self.num_backbone_layers() {
            format!("head.{}", field.name())
        } else {
            format!("backbone.layers.{layer}.{}", field.name())
        }
    }

    /// Every tensor of the model, in forward order.
    pub fn all_slots(&self) -> Vec<(usize, Field)> {
        let mut out = Vec::new();
        for i in 0..=self.num_backbone_layers() {
            for f in [Field::Weight, Field::Bias, Field::LoraA, Field::LoraB] {
                if self.param(i, f).is_some() {
                    out.push((i, f));
                }
            }
        }
        out
    }

    /// The tensors `part` trains, in forward order.
    pub fn trainable_slots(&self, part: &TrainablePart) -> Vec<(usize, Field)> {
        let n = self.num_backbone_layers();
        self.all_slots()
            .into_iter()
            .filter(|&(layer, field)| match part {
                _ if layer == n => true,
                TrainablePart::HeadOnly => false,
                TrainablePart::LastLayers(k) => layer + k >= n,
                TrainablePart::All => true,
                TrainablePart::Lora { .. } => matches!(field, Field::LoraA | Field::LoraB),
            })
            .collect()
    }

    /// Logits, and per-layer traces when `trace` lists layers to trace.
    pub(crate) fn forward_traced(&self, x: Tensor<2>, trace: &[bool]) -> (Tensor<2>, Vec<Option<LayerTrace>>) {
        let n = self.num_backbone_layers();
        let mut traces = Vec::with_capacity(n + 1);
        let mut h = x;
        for i in 0..=n {
            let layer = self.layer(i);
            let probe = trace.get(i).copied().unwrap_or(false).then(|| {
                let rows = h.dims()[0];
                Tensor::<2>::zeros([rows, layer.d_out()], &h.device()).require_grad()
            });
            traces.push(probe.clone().map(|p| LayerTrace { input: h.clone().detach(), probe: p }));
            let z = layer.forward(h, probe);
            h = if i < n { relu(z) } else { z };
        }
        (h, traces)
    }

    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_traced(x, &[]).0
    }

    /// The logits of `rows` (row-major, `num_features` values each, encoded
    /// by the schema), for checking an exported copy against the model.
    pub fn logits(&self, rows: &[f32], num_features: usize) -> Result<Vec<f32>, LearnError> {
        if num_features == 0 || !rows.len().is_multiple_of(num_features) {
            return Err(LearnError::Config("rows must be whole multiples of num_features".into()));
        }
        let device = self.head.weight.val().device();
        let x = tensor2(rows.to_vec(), rows.len() / num_features, num_features, &device);
        self.forward(x).into_data().try_into_vec::<f32>().map_err(|e| LearnError::Config(format!("{e:?}")))
    }

    /// Read a tensor as its wire form.
    pub fn read_slot(&self, layer: usize, field: Field) -> Result<ParamTensor, LearnError> {
        let p = self.param(layer, field).ok_or_else(|| LearnError::Config("no such tensor".into()))?;
        let t = p.val();
        let dims = t.dims();
        let shape = if field == Field::Bias { vec![dims[1]] } else { vec![dims[0], dims[1]] };
        let data = to_vec(t)?;
        ParamTensor::new(self.slot_name(layer, field), shape, data)
            .map_err(|e| LearnError::ParamMismatch(e.to_string()))
    }

    /// Replace a tensor's values, keeping its id and trainability.
    pub(crate) fn write_slot(&mut self, layer: usize, field: Field, data: Vec<f32>) -> Result<(), LearnError> {
        let p = self.param_mut(layer, field).ok_or_else(|| LearnError::Config("no such tensor".into()))?;
        let dims = p.dims();
        if data.len() != dims[0] * dims[1] {
            return Err(LearnError::ParamMismatch("value count differs from the tensor's shape".into()));
        }
        let on = p.is_require_grad();
        let t = tensor2(data, dims[0], dims[1], &p.device());
        *p = Param::initialized(p.id, t.set_require_grad(on)).set_require_grad(on);
        Ok(())
    }
}

/// Copy a tensor's values out as f32.
pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, LearnError> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| LearnError::Backend(format!("{e:?}")))
}

/// Export the given slots as a parameter set, in slot order.
pub(crate) fn export_slots(model: &TabularMlp, slots: &[(usize, Field)]) -> Result<ModelParams, LearnError> {
    Ok(ModelParams::new(slots.iter().map(|&(l, f)| model.read_slot(l, f)).collect::<Result<_, _>>()?))
}

/// Import a parameter set that must match `slots` exactly (names, order,
/// shapes, finite values); on any mismatch nothing is written, so a bad
/// set never leaves the model half updated.
pub fn import_slots(model: &mut TabularMlp, slots: &[(usize, Field)], p: &ModelParams) -> Result<(), LearnError> {
    if p.tensors.len() != slots.len() {
        return Err(LearnError::ParamMismatch(format!("expected {} tensors, got {}", slots.len(), p.tensors.len())));
    }
    for (t, &(l, f)) in p.tensors.iter().zip(slots) {
        let want = model.slot_name(l, f);
        if t.name != want {
            return Err(LearnError::ParamMismatch(format!("expected tensor `{want}`, got `{}`", t.name)));
        }
        let d = model.param(l, f).map(|p| p.dims()).unwrap_or_default();
        let shape = if f == Field::Bias { vec![d[1]] } else { vec![d[0], d[1]] };
        if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
            return Err(LearnError::ParamMismatch(format!(
                "tensor `{want}` has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        if t.data.iter().any(|v| !v.is_finite()) {
            return Err(LearnError::NonFinite { name: want });
        }
    }
    for (t, &(l, f)) in p.tensors.iter().zip(slots) {
        model.write_slot(l, f, t.data.clone())?;
    }
    Ok(())
}
