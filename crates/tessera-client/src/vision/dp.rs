//! Record-level DP-SGD for image models whose per-example gradients need a
//! backward pass each: the SmallCnn (burn autodiff on a batch of one) and
//! EfficientNet-Lite0 with unfrozen blocks
//! ([`tessera_vision::ExampleGradients`]: the trunk by hand, channels-last,
//! on a CPU backend). Both run the same loop: Poisson-sampled steps, each
//! sampled example's gradient clipped to C on its own, the sum noised by
//! tessera-privacy's exact sampler, then an SGD step (with FedProx's
//! proximal term when asked), exactly as the linear head does in closed form.

use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use tessera_core::ModelParams;
use tessera_core::round::{DpSettings, TrainSettings};
use tessera_vision::{ExampleGradients, Preprocess, SmallCnn, TransferModel, VisionError};

use super::{VisionModel, flat_grads};

/// Sampled images prepared together (their frozen-prefix outputs held at once).
const PREPARE_GROUP: usize = 32;

/// One sampled example's gradient, flat in the layout of the exchanged tensors.
pub(super) trait PerExample {
    /// Makes `params` the model's exchanged tensors for the next step.
    fn set_params(&mut self, params: &ModelParams) -> Result<(), String>;
    /// Sees a step's sampled raw images before their gradients are asked
    /// for (work shared by all of them goes here).
    fn prepare(&mut self, _images: &[Vec<f32>]) -> Result<(), String> {
        Ok(())
    }
    /// The loss gradient of the step's `index`-th image (`image`, raw, not
    /// yet preprocessed) with `label`.
    fn gradient(&mut self, index: usize, image: &[f32], label: usize) -> Result<Vec<f32>, String>;
}

fn err(e: VisionError) -> String {
    e.to_string()
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

impl PerExample for CnnExamples {
    fn set_params(&mut self, params: &ModelParams) -> Result<(), String> {
        self.model = self.model.clone().with_params(params).map_err(err)?;
        self.tracked = self.model.clone().fork(&self.ad).train();
        Ok(())
    }

    fn gradient(&mut self, _index: usize, image: &[f32], label: usize) -> Result<Vec<f32>, String> {
        let x = self.preprocess.batch_from(&[image], self.shape, &self.ad).map_err(err)?;
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![label as i64], [1]), &self.ad);
        let grads = self.loss_fn.forward(self.tracked.forward(x), y).backward();
        flat_grads(&self.tracked, &grads)
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
    ) -> Result<Self, String> {
        let grads = ExampleGradients::new(&model).map_err(err)?;
        Ok(Self { model, grads, preprocess, shape, buf: Vec::new() })
    }
}

impl PerExample for TransferExamples {
    fn set_params(&mut self, params: &ModelParams) -> Result<(), String> {
        self.model = self.model.clone().with_trainable_params(params).map_err(err)?;
        self.grads.refresh(&self.model).map_err(err)
    }

    /// The frozen prefix once for all of the step's images.
    fn prepare(&mut self, images: &[Vec<f32>]) -> Result<(), String> {
        self.buf.clear();
        for image in images {
            self.preprocess.apply_into(image, self.shape, &mut self.buf).map_err(err)?;
        }
        let (h, w) = self.preprocess.size;
        self.grads.prepare(&self.buf, [images.len(), self.preprocess.channels, h, w]).map_err(err)
    }

    fn gradient(&mut self, index: usize, _image: &[f32], label: usize) -> Result<Vec<f32>, String> {
        self.grads.gradient(index, label).map_err(err)
    }
}

/// Runs DP-SGD from `start` over `model`'s train split with `examples`
/// supplying per-example gradients; returns the trained exchanged tensors.
pub(super) fn dp_sgd(
    model: &mut VisionModel,
    s: &TrainSettings,
    dp: &DpSettings,
    start: &ModelParams,
    examples: &mut dyn PerExample,
) -> Result<ModelParams, String> {
    let (layout, anchor) = (start.layout(), start.to_flat());
    let mut flat = anchor.clone();
    let (cfg, mut noise_rng, mut sampler) = model.dp_setup(s, dp)?;
    let augment = model.cfg.augmenter(s.seed).map_err(err)?;
    let n = model.train.len();
    let inv_expected = (1.0 / (cfg.sampling_rate * n as f64).max(f64::MIN_POSITIVE)) as f32;
    let steps = (1.0 / cfg.sampling_rate).ceil() as u64;
    let shape = model.train.image_shape();
    for epoch in 0..u64::from(s.local_epochs) {
        for _ in 0..steps {
            let mut sum = vec![0.0f32; flat.len()];
            let sampled: Vec<usize> = (0..n).filter(|_| sampler.gen_bool(cfg.sampling_rate)).collect();
            // Prepared in bounded groups, so memory does not grow with q * N.
            for group in sampled.chunks(PREPARE_GROUP) {
                let views = group
                    .iter()
                    .map(|&i| {
                        let image = model.train.image(i).ok_or(VisionError::EmptyDataset)?;
                        match &augment {
                            Some(a) => a.augment(image, shape, epoch, i as u64),
                            None => Ok(image.to_vec()),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                examples.prepare(&views)?;
                for (j, (&i, view)) in group.iter().zip(&views).enumerate() {
                    let g = examples.gradient(j, view, model.train.labels()[i])?;
                    if g.len() != sum.len() {
                        return Err(format!("DP-SGD: a gradient of {} values for {} parameters", g.len(), sum.len()));
                    }
                    let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                    if !norm.is_finite() {
                        return Err("DP-SGD: non-finite per-example gradient".into());
                    }
                    let c = (cfg.clip_norm / norm.max(1e-12)).min(1.0) as f32;
                    sum.iter_mut().zip(&g).for_each(|(a, v)| *a += c * v);
                }
            }
            model.add_dp_noise(&cfg, &mut sum, &mut noise_rng)?;
            let (lr, mu) = (s.learning_rate as f32, s.proximal_mu as f32);
            for ((p, g), a) in flat.iter_mut().zip(&sum).zip(&anchor) {
                *p -= lr * (inv_expected * g + mu * (*p - a));
            }
            examples.set_params(&ModelParams::from_flat(&layout, &flat).map_err(|e| e.to_string())?)?;
        }
    }
    ModelParams::from_flat(&layout, &flat).map_err(|e| e.to_string())
}
