//! One example's gradient of a [`TransferModel`] with trainable blocks.
//!
//! Record-level DP-SGD clips each sampled example's gradient on its own
//! before summing, so that gradient must exist on its own. The frozen
//! prefix runs once for a group of sampled images ([`prepare`]); the
//! trainable blocks then run forward and backward per image in
//! [`HostFineTuner`] (batch norm in inference mode keeps images
//! independent), and the new head's part is in closed form (softmax
//! cross-entropy, as in [`crate::head`]). The result is flat, in the order
//! and layout of [`TransferModel::trainable_params`]: what DP-SGD clips,
//! sums and steps.
//!
//! [`prepare`]: ExampleGradients::prepare

use burn::module::ParamId;

use super::{HostFineTuner, Tape};
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
        let order =
            ids.into_iter().zip(&layout.entries).map(|((_, id), (_, shape))| (id, shape.iter().product())).collect();
        let bias = model.head.bias.as_ref().ok_or_else(|| VisionError::InvalidConfig("the head has no bias".into()))?;
        Ok(Self {
            tuner: HostFineTuner::new(model)?,
            tape: Tape::default(),
            order,
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
    pub fn gradient(&mut self, index: usize, label: usize) -> Result<Vec<f32>> {
        let classes = self.head_bias.len();
        if label >= classes {
            return Err(VisionError::InvalidConfig(format!("label {label} outside the head's {classes} classes")));
        }
        let one = self.prefix_shape.ok_or_else(|| VisionError::InvalidConfig("no images prepared".into()))?;
        let x0 = self
            .prefix
            .get(index * one.len()..(index + 1) * one.len())
            .ok_or_else(|| VisionError::InvalidConfig(format!("image {index} was not prepared")))?;
        let features = self.tuner.forward_trainable(x0.to_vec(), one, &mut self.tape)?;
        // Logits, then g = softmax - onehot (the loss gradient at the logits).
        let mut g = self.head_bias.clone();
        for (f, row) in features.iter().zip(self.head_weight.chunks_exact(classes)) {
            g.iter_mut().zip(row).for_each(|(z, w)| *z += f * w);
        }
        let max = g.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
        g.iter_mut().for_each(|z| *z = (*z - max).exp());
        let sum: f32 = g.iter().sum();
        g.iter_mut().for_each(|p| *p /= sum);
        g[label] -= 1.0;
        let d_weight: Vec<f32> = features.iter().flat_map(|&f| g.iter().map(move |&gk| f * gk)).collect();
        let d_features: Vec<f32> =
            self.head_weight.chunks_exact(classes).map(|row| row.iter().zip(&g).map(|(w, gk)| w * gk).sum()).collect();
        debug_assert_eq!(d_features.len(), FEATURE_DIM);
        let trunk = self.tuner.backward(&self.tape, &d_features)?;
        let mut flat = Vec::with_capacity(self.len());
        for &(id, len) in &self.order {
            let values = if id == self.head_ids.0 {
                &d_weight[..]
            } else if id == self.head_ids.1 {
                &g[..]
            } else {
                trunk.get(id).ok_or_else(|| VisionError::Tensor("no gradient for a trainable tensor".into()))?
            };
            if values.len() != len {
                return Err(VisionError::Tensor(format!("gradient of {} values for a tensor of {len}", values.len())));
            }
            flat.extend_from_slice(values);
        }
        Ok(flat)
    }
}
