//! One example's gradient of a [`TransferModel`] with trainable blocks.
//!
//! Record-level DP-SGD clips each sampled example's gradient on its own
//! before summing, so that gradient must exist on its own. The trunk's part
//! comes from [`HostFineTuner`] on a batch of one image, the new head's in
//! closed form (softmax cross-entropy, as in [`crate::head`]). The result
//! is flat, in the order and layout of [`TransferModel::trainable_params`]:
//! what DP-SGD clips, sums and steps.

use burn::module::ParamId;

use super::{HostFineTuner, Tape};
use crate::efficientnet::FEATURE_DIM;
use crate::error::{Result, VisionError};
use crate::nhwc::tensor_values;
use crate::params::param_ids;
use crate::transfer::TransferModel;

/// Per-example gradients of one model's trainable tensors.
#[derive(Debug)]
pub struct ExampleGradients {
    tuner: HostFineTuner,
    tape: Tape,
    /// The trainable tensors in `trainable_params` order: id and length.
    order: Vec<(ParamId, usize)>,
    head_ids: (ParamId, ParamId),
    /// Head weight `[1280, classes]` row-major, and bias.
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

impl ExampleGradients {
    pub fn new(model: &TransferModel) -> Result<Self> {
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cross-entropy loss gradient of one preprocessed image (`[c, h, w]`,
    /// channels-first values) with `label`, flat in trainable-tensor order.
    pub fn gradient(&mut self, image: &[f32], [c, h, w]: [usize; 3], label: usize) -> Result<Vec<f32>> {
        let classes = self.head_bias.len();
        if label >= classes {
            return Err(VisionError::InvalidConfig(format!("label {label} outside the head's {classes} classes")));
        }
        let features = self.tuner.forward(image, [1, c, h, w], &mut self.tape)?;
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
