//! Per-example gradients of a [`TransferModel`] with trainable blocks, for
//! record-level DP-SGD, which clips each sampled example's gradient on its
//! own before summing.
//!
//! The frozen prefix runs once for a group of sampled images ([`prepare`]).
//! DP-SGD then takes the group's clipped sum from [`add_clipped`]: one
//! forward and one backward pass of the whole group through the trainable
//! blocks in [`HostFineTuner`] (batch norm in inference mode keeps images
//! independent), each image's gradient norm from ghost norms
//! (`super::ghost`), and the clipped sum from the same pass. The
//! reference it must agree with, one image's whole gradient
//! ([`gradient_into`]: a forward and backward pass for that image alone),
//! stays for tests and checks. The new head's part is in closed form
//! (softmax cross-entropy, as in [`crate::head`]). Everything is flat, in
//! the order and layout of [`TransferModel::trainable_params`]: what DP-SGD
//! clips, sums and steps.
//!
//! [`prepare`]: ExampleGradients::prepare
//! [`add_clipped`]: ExampleGradients::add_clipped
//! [`gradient_into`]: ExampleGradients::gradient_into

use burn::module::ParamId;

use super::ghost::PerImageGrads;
use super::{GradSink, HostFineTuner, Summed, Tape, ops};
use crate::efficientnet::FEATURE_DIM;
use crate::error::{Result, VisionError};
use crate::nhwc::{Shape, tensor_values};
use crate::params::param_ids;
use crate::transfer::TransferModel;

/// Per-example gradients of one model's trainable tensors.
#[derive(Debug)]
pub(crate) struct ExampleGradients {
    tuner: HostFineTuner,
    tape: Tape,
    /// The trainable tensors in `trainable_params` order: id and length.
    order: Vec<(ParamId, usize)>,
    /// Where each trainable tensor starts in the flat gradient.
    offsets: Vec<usize>,
    head_ids: (ParamId, ParamId),
    /// Head weight `[1280, classes]` row-major, and bias.
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
    /// The prepared images' frozen-prefix output and the shape of one image's.
    prefix: Vec<f32>,
    prefix_shape: Option<Shape>,
}

impl ExampleGradients {
    /// For a model with trainable blocks; a head-only model has its
    /// per-example gradients in closed form ([`crate::HeadWeights`]).
    pub fn new(model: &TransferModel) -> Result<Self> {
        if model.backbone_frozen() {
            return Err(VisionError::InvalidConfig(
                "per-example gradients through the trunk need trainable blocks; a head-only model uses HeadWeights"
                    .into(),
            ));
        }
        let layout = model.trainable_layout()?;
        let ids = param_ids(model, &|p| model.is_trainable(p));
        if ids.len() != layout.entries.len() || ids.iter().zip(&layout.entries).any(|((a, _), (b, _))| a != b) {
            return Err(VisionError::InvalidConfig("trainable tensors and their ids disagree".into()));
        }
        let order: Vec<(ParamId, usize)> =
            ids.into_iter().zip(&layout.entries).map(|((_, id), (_, shape))| (id, shape.iter().product())).collect();
        let offsets = order.iter().scan(0, |at, (_, len)| Some(std::mem::replace(at, *at + len))).collect();
        let bias = model.head.bias.as_ref().ok_or_else(|| VisionError::InvalidConfig("the head has no bias".into()))?;
        Ok(Self {
            tuner: HostFineTuner::new(model)?,
            tape: Tape::default(),
            order,
            offsets,
            head_ids: (model.head.weight.id, bias.id),
            head_weight: tensor_values(model.head.weight.val())?,
            head_bias: tensor_values(bias.val())?,
            prefix: Vec::new(),
            prefix_shape: None,
        })
    }

    /// Reloads the trainable tensors after the caller changed them.
    pub fn refresh(&mut self, model: &TransferModel) -> Result<()> {
        self.tuner.refresh(model)?;
        self.head_weight = tensor_values(model.head.weight.val())?;
        if let Some(b) = &model.head.bias {
            self.head_bias = tensor_values(b.val())?;
        }
        Ok(())
    }

    /// Number of values of the flat gradient.
    pub fn len(&self) -> usize {
        self.order.iter().map(|(_, n)| n).sum()
    }

    /// Runs the frozen prefix over a step's preprocessed images
    /// (`[n, c, h, w]`, channels-first values), for [`gradient`](Self::gradient).
    pub fn prepare(&mut self, images: &[f32], dims: [usize; 4]) -> Result<()> {
        let (prefix, shape) = self.tuner.frozen_prefix(images, dims)?;
        self.prefix = prefix;
        self.prefix_shape = Some(Shape { n: 1, ..shape });
        Ok(())
    }

    /// The cross-entropy loss gradient of prepared image `index` with
    /// `label`, flat in trainable-tensor order.
    #[cfg(test)]
    pub fn gradient(&mut self, index: usize, label: usize) -> Result<Vec<f32>> {
        let mut flat = vec![0.0; self.len()];
        self.gradient_into(index, label, &mut flat)?;
        Ok(flat)
    }

    /// [`gradient`](Self::gradient) written over `flat` (of [`len`](Self::len)
    /// values): each tensor's gradient goes straight to its place, in burn's
    /// layout, so DP-SGD's per-example loop allocates, copies and reorders
    /// nothing of the size of the model.
    pub fn gradient_into(&mut self, index: usize, label: usize, flat: &mut [f32]) -> Result<()> {
        let classes = self.head_bias.len();
        if label >= classes {
            return Err(VisionError::InvalidConfig(format!("label {label} outside the head's {classes} classes")));
        }
        if flat.len() != self.len() {
            return Err(VisionError::Tensor(format!("a buffer of {} values for {} gradients", flat.len(), self.len())));
        }
        let one = self.prefix_shape.ok_or_else(|| VisionError::InvalidConfig("no images prepared".into()))?;
        let x0 = self
            .prefix
            .get(index * one.len()..(index + 1) * one.len())
            .ok_or_else(|| VisionError::InvalidConfig(format!("image {index} was not prepared")))?;
        let features = self.tuner.forward_trainable(x0.to_vec(), one, &mut self.tape)?;
        let g = self.logit_grads(&features, &[label])?;
        let mut d_features = vec![0.0; FEATURE_DIM];
        ops::matmul_transposed(&g, classes, &self.head_weight, FEATURE_DIM, &mut d_features);
        let mut sink = FlatSink::new(&self.order, &self.offsets, flat);
        for (slot, &f) in sink.weight(self.head_ids.0, &[FEATURE_DIM, classes]).chunks_exact_mut(classes).zip(&features)
        {
            slot.iter_mut().zip(&g).for_each(|(d, gk)| *d = f * gk);
        }
        sink.vector(self.head_ids.1, g);
        self.tuner.backward_into(&self.tape, &d_features, &mut Summed(&mut sink))?;
        sink.finish()
    }

    /// Adds to `sum` the clipped gradients of the first `labels.len()`
    /// prepared images (image `j` with label `labels[j]`): each image's
    /// gradient times `clip(its L2 norm)`, nothing of an image for which
    /// `clip` gives `None`. `scratch` ([`len`](Self::len) values) is
    /// overwritten. One forward and one backward pass for the whole group,
    /// the norms per image without forming the 1×1 convolutions' per-image
    /// gradients (`super::ghost`): the same sum, up to f32 rounding, as
    /// [`gradient_into`](Self::gradient_into) image by image, clipped and added.
    pub fn add_clipped(
        &mut self,
        labels: &[usize],
        clip: &mut dyn FnMut(f64) -> Option<f32>,
        scratch: &mut [f32],
        sum: &mut [f32],
    ) -> Result<()> {
        let n = labels.len();
        if scratch.len() != self.len() || sum.len() != self.len() {
            return Err(VisionError::Tensor(format!("buffers of {} values for {} gradients", sum.len(), self.len())));
        }
        if n == 0 {
            return Ok(());
        }
        let one = self.prefix_shape.ok_or_else(|| VisionError::InvalidConfig("no images prepared".into()))?;
        let x0 = self
            .prefix
            .get(..n * one.len())
            .ok_or_else(|| VisionError::InvalidConfig(format!("{n} images asked for, fewer prepared")))?;
        let features = self.tuner.forward_trainable(x0.to_vec(), Shape { n, ..one }, &mut self.tape)?;
        let g = self.logit_grads(&features, labels)?;
        let classes = self.head_bias.len();
        let mut d_features = vec![0.0; n * FEATURE_DIM];
        ops::matmul_transposed(&g, classes, &self.head_weight, FEATURE_DIM, &mut d_features);
        let mut per_image = PerImageGrads::new(n);
        // The head's part of each image's squared norm: ‖f‖²‖g‖² (weight, f ⊗ g) + ‖g‖² (bias).
        let head: Vec<f64> = features
            .chunks_exact(FEATURE_DIM)
            .zip(g.chunks_exact(classes))
            .map(|(f, g)| (ops::dot64(f, f) + 1.0) * ops::dot64(g, g))
            .collect();
        per_image.add_squared_norms(&head);
        self.tuner.backward_into(&self.tape, &d_features, &mut per_image)?;
        let factors: Vec<Option<f32>> = per_image.norms().map(clip).collect();

        let mut sink = FlatSink::new(&self.order, &self.offsets, scratch);
        let mut bias = vec![0.0f32; classes];
        let weight = sink.weight(self.head_ids.0, &[FEATURE_DIM, classes]);
        weight.fill(0.0);
        for ((f, g), c) in features.chunks_exact(FEATURE_DIM).zip(g.chunks_exact(classes)).zip(&factors) {
            let Some(c) = c else { continue };
            let cg: Vec<f32> = g.iter().map(|v| c * v).collect();
            for (row, &fv) in weight.chunks_exact_mut(classes).zip(f) {
                row.iter_mut().zip(&cg).for_each(|(d, v)| *d += fv * v);
            }
            bias.iter_mut().zip(&cg).for_each(|(b, v)| *b += v);
        }
        sink.vector(self.head_ids.1, bias);
        per_image.finish(&factors, &mut sink);
        sink.finish()?;
        ops::add_into(sum, scratch);
        Ok(())
    }

    /// Per image, the loss gradient at the head's logits: `softmax - onehot`
    /// (softmax cross-entropy), `[n, classes]`.
    fn logit_grads(&self, features: &[f32], labels: &[usize]) -> Result<Vec<f32>> {
        let classes = self.head_bias.len();
        let mut out = Vec::with_capacity(labels.len() * classes);
        for (f, &label) in features.chunks_exact(FEATURE_DIM).zip(labels) {
            if label >= classes {
                return Err(VisionError::InvalidConfig(format!("label {label} outside the head's {classes} classes")));
            }
            let mut g = self.head_bias.clone();
            for (f, row) in f.iter().zip(self.head_weight.chunks_exact(classes)) {
                g.iter_mut().zip(row).for_each(|(z, w)| *z += f * w);
            }
            let max = g.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
            g.iter_mut().for_each(|z| *z = (*z - max).exp());
            let total: f32 = g.iter().sum();
            g.iter_mut().for_each(|p| *p /= total);
            g[label] -= 1.0;
            out.extend(g);
        }
        Ok(out)
    }
}

/// Gradients written in place into the flat vector, each tensor once.
struct FlatSink<'a> {
    order: &'a [(ParamId, usize)],
    offsets: &'a [usize],
    flat: &'a mut [f32],
    /// Values handed out so far (each tensor once).
    written: usize,
    /// The first tensor that was not trainable or had the wrong size; a
    /// refused tensor writes into `spare`, and the example fails.
    error: Option<String>,
    spare: Vec<f32>,
}

impl<'a> FlatSink<'a> {
    fn new(order: &'a [(ParamId, usize)], offsets: &'a [usize], flat: &'a mut [f32]) -> Self {
        Self { order, offsets, flat, written: 0, error: None, spare: Vec::new() }
    }

    /// Every value overwritten (nothing is left from the last example or
    /// group), or the first error.
    fn finish(self) -> Result<()> {
        match self.error {
            Some(e) => Err(VisionError::Tensor(e)),
            None if self.written == self.flat.len() => Ok(()),
            None => Err(VisionError::Tensor("no gradient for a trainable tensor".into())),
        }
    }

    /// Where tensor `id` (of `len` values) lies in `flat`, or `None` (error recorded).
    fn place(&mut self, id: ParamId, len: usize) -> Option<std::ops::Range<usize>> {
        let Some(i) = self.order.iter().position(|(p, _)| *p == id) else {
            self.error.get_or_insert_with(|| "a gradient for a tensor that is not trainable".into());
            return None;
        };
        if self.order[i].1 != len {
            self.error.get_or_insert_with(|| format!("gradient of {len} values for a tensor of {}", self.order[i].1));
            return None;
        }
        self.written += len;
        Some(self.offsets[i]..self.offsets[i] + len)
    }
}

impl GradSink for FlatSink<'_> {
    fn weight(&mut self, id: ParamId, dims: &[usize]) -> &mut [f32] {
        let len = dims.iter().product();
        match self.place(id, len) {
            Some(range) => &mut self.flat[range],
            None => {
                self.spare.clear();
                self.spare.resize(len, 0.0);
                &mut self.spare
            }
        }
    }

    fn vector(&mut self, id: ParamId, values: Vec<f32>) {
        if let Some(range) = self.place(id, values.len()) {
            self.flat[range].copy_from_slice(&values);
        }
    }
}
