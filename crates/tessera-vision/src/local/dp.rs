//! Per-example gradients for record-level DP-SGD of image models whose
//! gradients need a backward pass: the SmallCnn (burn autodiff on a
//! batch of one), EfficientNet-Lite0 with unfrozen blocks
//! (`ExampleGradients`: the trunk by hand, channels-last, on a CPU
//! backend; one batched pass per group with ghost norms, no pass per
//! example), and EfficientNet-Lite0 with LoRA adapters (burn autodiff on
//! one example's trainable suffix, after the frozen prefix ran once for the
//! whole step). [`Sampled`] feeds any of them to `tessera_learn::dp_sgd`, the loop
//! (Poisson-sampled steps, per-example clipping, noise, FedProx step) every
//! model shares.

use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use tessera_core::ModelParams;
use tessera_learn::{LocalError, PerExampleGradients};

use super::flat_grads;
use crate::params::collect_grads;
use crate::tune::ExampleGradients;
use crate::{Augmenter, ImageDataset, Preprocess, SmallCnn, TransferModel, VisionError};

/// One sampled image's gradient, flat in the layout of the exchanged tensors.
pub(super) trait PerImage {
    /// Makes `params` the model's exchanged tensors for the next step.
    fn set_params(&mut self, params: &ModelParams) -> Result<(), LocalError>;
    /// Sees a group of a step's sampled raw images before their gradients
    /// are asked for (work shared by all of them goes here).
    fn prepare(&mut self, _images: &[Vec<f32>]) -> Result<(), LocalError> {
        Ok(())
    }
    /// The loss gradient of the group's `index`-th image (`image`, raw, not
    /// yet preprocessed) with `label`.
    fn gradient(&mut self, index: usize, image: &[f32], label: usize) -> Result<Vec<f32>, LocalError>;
    /// [`gradient`](Self::gradient) written over `out`, one value per
    /// exchanged parameter (see `PerExampleGradients::gradient_into`).
    fn gradient_into(&mut self, index: usize, image: &[f32], label: usize, out: &mut [f32]) -> Result<(), LocalError> {
        let g = self.gradient(index, image, label)?;
        if g.len() != out.len() {
            return Err(LocalError::Unsupported(format!(
                "a gradient of {} values for {} parameters",
                g.len(),
                out.len()
            )));
        }
        out.copy_from_slice(&g);
        Ok(())
    }

    /// The group's clipped sum in one batched pass, when the model has one
    /// (see `PerExampleGradients::add_clipped`; the group's labels in
    /// order); `None` to be asked one image at a time instead.
    fn add_clipped(
        &mut self,
        _labels: &[usize],
        _clip: &mut dyn FnMut(f64) -> Option<f32>,
        _scratch: &mut [f32],
        _sum: &mut [f32],
    ) -> Option<Result<(), LocalError>> {
        None
    }
}

/// The member's training images, augmented per epoch, through a [`PerImage`].
pub(super) struct Sampled<'a, E> {
    train: &'a ImageDataset,
    augment: Option<&'a Augmenter>,
    rows: Vec<usize>,
    views: Vec<Vec<f32>>,
    inner: E,
}

impl<'a, E: PerImage> Sampled<'a, E> {
    pub(super) fn new(train: &'a ImageDataset, augment: Option<&'a Augmenter>, inner: E) -> Self {
        Self { train, augment, rows: Vec::new(), views: Vec::new(), inner }
    }

    pub(super) fn into_inner(self) -> E {
        self.inner
    }
}

impl<E: PerImage> PerExampleGradients for Sampled<'_, E> {
    fn set_params(&mut self, params: &ModelParams) -> Result<(), LocalError> {
        self.inner.set_params(params)
    }

    fn prepare(&mut self, rows: &[usize], epoch: u64) -> Result<(), LocalError> {
        let shape = self.train.image_shape();
        self.views = rows
            .iter()
            .map(|&i| {
                let image = self.train.image(i).ok_or(VisionError::EmptyDataset)?;
                match self.augment {
                    Some(a) => a.augment(image, shape, epoch, i as u64),
                    None => Ok(image.to_vec()),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(LocalError::model)?;
        self.rows = rows.to_vec();
        self.inner.prepare(&self.views)
    }

    fn gradient(&mut self, index: usize) -> Result<Vec<f32>, LocalError> {
        let label = self.train.labels()[self.rows[index]];
        self.inner.gradient(index, &self.views[index], label)
    }

    fn gradient_into(&mut self, index: usize, out: &mut [f32]) -> Result<(), LocalError> {
        let label = self.train.labels()[self.rows[index]];
        self.inner.gradient_into(index, &self.views[index], label, out)
    }

    fn add_clipped(
        &mut self,
        group: usize,
        clip: &mut dyn FnMut(f64) -> Option<f32>,
        scratch: &mut [f32],
        sum: &mut [f32],
    ) -> Result<(), LocalError> {
        let labels: Vec<usize> = self.rows.iter().take(group).map(|&i| self.train.labels()[i]).collect();
        match self.inner.add_clipped(&labels, clip, scratch, sum) {
            Some(done) => done,
            None => tessera_learn::add_clipped_each(self, group, clip, scratch, sum),
        }
    }
}

fn err(e: VisionError) -> LocalError {
    LocalError::model(e)
}

/// The SmallCnn through burn autodiff.
pub(super) struct CnnExamples {
    pub(super) model: SmallCnn,
    tracked: SmallCnn,
    ad: Device,
    loss_fn: CrossEntropyLoss,
    preprocess: Preprocess,
    shape: (usize, usize, usize),
}

impl CnnExamples {
    pub(super) fn new(model: SmallCnn, device: &Device, preprocess: Preprocess, shape: (usize, usize, usize)) -> Self {
        let ad = device.clone().autodiff();
        let tracked = model.clone().fork(&ad).train();
        let loss_fn = CrossEntropyLossConfig::new().init(&ad);
        Self { model, tracked, ad, loss_fn, preprocess, shape }
    }
}

impl PerImage for CnnExamples {
    fn set_params(&mut self, params: &ModelParams) -> Result<(), LocalError> {
        self.model = self.model.clone().with_params(params).map_err(err)?;
        self.tracked = self.model.clone().fork(&self.ad).train();
        Ok(())
    }

    fn gradient(&mut self, _index: usize, image: &[f32], label: usize) -> Result<Vec<f32>, LocalError> {
        let x = self.preprocess.batch_from(&[image], self.shape, &self.ad).map_err(err)?;
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![label as i64], [1]), &self.ad);
        let grads = self.loss_fn.forward(self.tracked.forward(x), y).backward();
        flat_grads(&self.tracked, &grads).map_err(|e| LocalError::Unsupported(format!("SmallCnn gradient: {e}")))
    }
}

/// EfficientNet-Lite0 with unfrozen blocks, channels-last on the CPU.
pub(super) struct TransferExamples {
    pub(super) model: TransferModel,
    grads: ExampleGradients,
    preprocess: Preprocess,
    shape: (usize, usize, usize),
    buf: Vec<f32>,
}

impl TransferExamples {
    pub(super) fn new(
        model: TransferModel,
        preprocess: Preprocess,
        shape: (usize, usize, usize),
    ) -> Result<Self, LocalError> {
        let grads = ExampleGradients::new(&model).map_err(err)?;
        Ok(Self { model, grads, preprocess, shape, buf: Vec::new() })
    }
}

impl PerImage for TransferExamples {
    fn set_params(&mut self, params: &ModelParams) -> Result<(), LocalError> {
        self.model = self.model.clone().with_trainable_params(params).map_err(err)?;
        self.grads.refresh(&self.model).map_err(err)
    }

    /// The frozen prefix once for all of the step's images.
    fn prepare(&mut self, images: &[Vec<f32>]) -> Result<(), LocalError> {
        self.buf.clear();
        for image in images {
            self.preprocess.apply_into(image, self.shape, &mut self.buf).map_err(err)?;
        }
        let (h, w) = self.preprocess.size;
        self.grads.prepare(&self.buf, [images.len(), self.preprocess.channels, h, w]).map_err(err)
    }

    fn gradient(&mut self, index: usize, image: &[f32], label: usize) -> Result<Vec<f32>, LocalError> {
        let mut flat = vec![0.0; self.grads.len()];
        self.gradient_into(index, image, label, &mut flat)?;
        Ok(flat)
    }

    /// Straight into DP-SGD's buffer: no allocation, copy or reordering of
    /// the model's size per example.
    fn gradient_into(&mut self, index: usize, _image: &[f32], label: usize, out: &mut [f32]) -> Result<(), LocalError> {
        self.grads.gradient_into(index, label, out).map_err(err)
    }

    /// Ghost clipping: one batched pass for the group, no per-example
    /// backward pass and no per-example gradient of the model's size.
    fn add_clipped(
        &mut self,
        labels: &[usize],
        clip: &mut dyn FnMut(f64) -> Option<f32>,
        scratch: &mut [f32],
        sum: &mut [f32],
    ) -> Option<Result<(), LocalError>> {
        Some(self.grads.add_clipped(labels, clip, scratch, sum).map_err(err))
    }
}

/// EfficientNet-Lite0 with LoRA adapters, through burn autodiff: the frozen
/// prefix (stem and the blocks before the first adapted one) runs once per
/// step for all sampled images, then each image's suffix, head and loss run
/// alone so that its gradient (over exactly the adapters and the head) is
/// its own.
pub(super) struct LoraExamples {
    pub(super) model: TransferModel,
    tracked: TransferModel,
    device: Device,
    ad: Device,
    loss_fn: CrossEntropyLoss,
    preprocess: Preprocess,
    shape: (usize, usize, usize),
    /// The step's prefix activations, `[n, c, h, w]` flat, and one image's `[c, h, w]`.
    prefix: Vec<f32>,
    prefix_dims: [usize; 3],
}

impl LoraExamples {
    pub(super) fn new(
        model: TransferModel,
        device: &Device,
        preprocess: Preprocess,
        shape: (usize, usize, usize),
    ) -> Self {
        let ad = device.clone().autodiff();
        let tracked = model.clone().fork(&ad).train();
        let loss_fn = CrossEntropyLossConfig::new().init(&ad);
        Self {
            model,
            tracked,
            device: device.clone(),
            ad,
            loss_fn,
            preprocess,
            shape,
            prefix: Vec::new(),
            prefix_dims: [0; 3],
        }
    }
}

impl PerImage for LoraExamples {
    fn set_params(&mut self, params: &ModelParams) -> Result<(), LocalError> {
        self.model = self.model.clone().with_trainable_params(params).map_err(err)?;
        self.tracked = self.model.clone().fork(&self.ad).train();
        Ok(())
    }

    fn prepare(&mut self, images: &[Vec<f32>]) -> Result<(), LocalError> {
        if images.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
        let x = self.preprocess.batch_from(&refs, self.shape, &self.device).map_err(err)?;
        let first = self.model.first_trained_block();
        let y = self.model.backbone.prefix(x, first);
        let [_, c, h, w] = y.dims();
        self.prefix_dims = [c, h, w];
        self.prefix = y.into_data().try_into_vec::<f32>().map_err(|e| err(VisionError::Tensor(format!("{e:?}"))))?;
        Ok(())
    }

    fn gradient(&mut self, index: usize, _image: &[f32], label: usize) -> Result<Vec<f32>, LocalError> {
        let [c, h, w] = self.prefix_dims;
        let one = c * h * w;
        let slice = self.prefix.get(index * one..(index + 1) * one).ok_or(err(VisionError::EmptyDataset))?;
        let x = Tensor::<4>::from_data(TensorData::new(slice.to_vec(), [1, c, h, w]), &self.ad);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![label as i64], [1]), &self.ad);
        let first = self.model.first_trained_block();
        let logits = self.tracked.head.forward(self.tracked.backbone.features_from(first, x));
        let grads = self.loss_fn.forward(logits, y).backward();
        let model = &self.model;
        collect_grads(&self.tracked, &grads, &|p| model.is_trainable(p)).map_err(err)
    }
}
