//! Record-level DP-SGD on the trainable part: Poisson sampling, per-example
//! clipping, Gaussian noise from a caller-supplied sampler, and scaling by
//! the public expected batch size (never by the member's own row count).
//!
//! Per-example gradients are never materialized. For a dense layer
//! `z = x W + b` the per-example gradients are `x_i g_i^T` and `g_i`, with
//! `g_i = dL_i/dz_i`, so their norms are `||x_i|| ||g_i||` and `||g_i||`, and
//! the clipped sum is `X^T (c ⊙ G)` ("ghost clipping"). `G` comes from one
//! backward pass through a zero probe added to each traced pre-activation.
//! LoRA factors follow the same rule with `h = x A` and `dL/dh = s G B^T`.
//! The cost is one forward, one backward and a few matmuls per step.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;
use tessera_core::{ModelParams, TrainSettings};

use tessera_learn::{CLIP_SAFETY, DpSgdConfig, PoissonSampler};

use crate::error::LearnError;
use crate::model::{Field, TabularMlp, tensor2, to_vec};
use crate::train::{Progress, TabularTask, TrainReport, apply_sgd, check_settings, one_hot};

/// Zeros in the shape of each slot: the sum over no examples.
fn zero_sums(model: &TabularMlp, slots: &[(usize, Field)]) -> Vec<Tensor<2>> {
    slots.iter().map(|&(l, f)| model.param(l, f).expect("slot exists").val().inner().zeros_like()).collect()
}

/// Sum over the batch of per-example gradients, each clipped to L2 norm
/// `clip` (with `tessera_privacy::CLIP_SAFETY`'s f32 margin), for the slots
/// `slots` (values as inner, non-autodiff tensors), and how many examples
/// were left out because their gradient norm was not finite. Such an
/// example contributes zero: declining the round instead would release,
/// unnoised, that some record makes training diverge. The count is for the
/// member's own report only.
pub(crate) fn clipped_grad_sum(
    model: &TabularMlp,
    slots: &[(usize, Field)],
    x: &[f32],
    y: &[u32],
    num_classes: usize,
    clip: f64,
) -> Result<(Vec<Tensor<2>>, u64), LearnError> {
    if y.is_empty() {
        return Ok((zero_sums(model, slots), 0));
    }
    match ghost_clipped_sum(model, slots, x, y, num_classes, clip)? {
        Ok(sums) => Ok((sums, 0)),
        Err(norms) => {
            // Rows are independent through the network, so the finite rows'
            // gradients are the same without the others.
            let d = x.len() / y.len();
            let keep: Vec<usize> = (0..y.len()).filter(|&i| norms[i].is_finite()).collect();
            let zeroed = (y.len() - keep.len()) as u64;
            if keep.is_empty() {
                return Ok((zero_sums(model, slots), zeroed));
            }
            let xs: Vec<f32> = keep.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
            let ys: Vec<u32> = keep.iter().map(|&i| y[i]).collect();
            match ghost_clipped_sum(model, slots, &xs, &ys, num_classes, clip)? {
                Ok(sums) => Ok((sums, zeroed)),
                Err(_) => Err(LearnError::Diverged { what: "per-example gradient" }),
            }
        }
    }
}

/// Ghost clipping over one batch; `Err(norms)` (per-example squared norms)
/// when some example's gradient norm is not finite.
#[allow(clippy::type_complexity)]
fn ghost_clipped_sum(
    model: &TabularMlp,
    slots: &[(usize, Field)],
    x: &[f32],
    y: &[u32],
    num_classes: usize,
    clip: f64,
) -> Result<Result<Vec<Tensor<2>>, Vec<f32>>, LearnError> {
    let n = y.len();
    let device = model.head.weight.val().device();
    let d = x.len() / n.max(1);
    let layers = model.num_backbone_layers() + 1;
    let mut trace = vec![false; layers];
    for &(l, _) in slots {
        trace[l] = true;
    }
    let (logits, traces) = model.forward_traced(tensor2(x.to_vec(), n, d, &device), &trace);
    // Sum (not mean) of the losses: the probe gradient row i is then dL_i/dz_i.
    let loss = (log_softmax(logits, 1) * one_hot(y, num_classes, &device)).sum().neg();
    let grads = loss.backward();

    struct Parts {
        x: Tensor<2>,
        g: Tensor<2>,
        h: Option<Tensor<2>>,
        gh: Option<Tensor<2>>,
    }
    let mut parts: Vec<Option<Parts>> = Vec::with_capacity(layers);
    let mut norm_sq: Option<Tensor<2>> = None;
    let row_sq = |t: &Tensor<2>| t.clone().powi_scalar(2).sum_dim(1);
    for (l, tr) in traces.into_iter().enumerate() {
        let Some(tr) = tr else {
            parts.push(None);
            continue;
        };
        let layer = model.layer(l);
        let xin = tr.input.inner();
        let g = tr.probe.grad(&grads).unwrap_or_else(|| tr.probe.clone().inner().zeros_like());
        let (h, gh) = match (&layer.lora_a, &layer.lora_b) {
            (Some(a), Some(b)) => {
                let h = xin.clone().matmul(a.val().inner());
                let gh = g.clone().matmul(b.val().inner().transpose()).mul_scalar(layer.lora_scale);
                (Some(h), Some(gh))
            }
            _ => (None, None),
        };
        let (x_sq, g_sq) = (row_sq(&xin), row_sq(&g));
        for &(_, f) in slots.iter().filter(|(sl, _)| *sl == l) {
            let term = match f {
                Field::Weight => x_sq.clone() * g_sq.clone(),
                Field::Bias => g_sq.clone(),
                Field::LoraA => x_sq.clone() * row_sq(gh.as_ref().expect("adapter present")),
                Field::LoraB => {
                    row_sq(h.as_ref().expect("adapter present")).mul_scalar(layer.lora_scale.powi(2)) * g_sq.clone()
                }
            };
            norm_sq = Some(match norm_sq {
                Some(acc) => acc + term,
                None => term,
            });
        }
        parts.push(Some(Parts { x: xin, g, h, gh }));
    }
    let Some(norm_sq) = norm_sq else {
        return Ok(Ok(Vec::new()));
    };
    let norms = to_vec(norm_sq.clone())?;
    if norms.iter().any(|v| !v.is_finite()) {
        return Ok(Err(norms));
    }
    // c_i = min(1, C' / ||grad_i||) with C' = C (1 - 2^-20), the margin `clip.rs` keeps.
    let scale = norm_sq.sqrt().clamp_min(1e-12).recip().mul_scalar((clip * CLIP_SAFETY) as f32).clamp_max(1.0);

    let mut out = Vec::with_capacity(slots.len());
    for &(l, f) in slots {
        let p = parts[l].as_ref().expect("traced layer");
        let lora_scale = model.layer(l).lora_scale;
        let cg = p.g.clone() * scale.clone();
        let t = match f {
            Field::Weight => p.x.clone().transpose().matmul(cg),
            Field::Bias => cg.sum_dim(0),
            Field::LoraA => p.x.clone().transpose().matmul(p.gh.clone().expect("adapter") * scale.clone()),
            Field::LoraB => p.h.clone().expect("adapter").transpose().matmul(cg).mul_scalar(lora_scale),
        };
        out.push(t);
    }
    Ok(Ok(out))
}

impl TabularTask {
    /// One round of DP-SGD. Each of `local_epochs * ceil(1/q)` steps (one
    /// under distributed noise: `dp.epochs`, `dp.steps_per_epoch`, the
    /// accountant's count) samples
    /// every training example independently with probability q, sums the
    /// clipped per-example gradients, hands the flat sum to `noise` (which
    /// must add i.i.d. N(0, (sigma C)^2) to every value under local noise,
    /// and adds nothing under distributed noise), divides by the
    /// public expected batch size B (`dp.expected_batch`, the round's batch
    /// size; q N only for a config without one) and takes an SGD step (plus
    /// the FedProx pull, which does not touch data). `mean_loss` is not
    /// reported (0): it would be an unprivatized statistic of the data.
    pub fn train_round_dp(
        &mut self,
        s: &TrainSettings,
        dp: &DpSgdConfig,
        noise: &mut dyn FnMut(&mut [f32]),
        prox_anchor: Option<&ModelParams>,
    ) -> Result<TrainReport, LearnError> {
        check_settings(s)?;
        dp.validate().map_err(LearnError::from_local)?;
        if self.data.train.is_empty() {
            return Err(LearnError::EmptySplit("train"));
        }
        let anchor = if s.proximal_mu > 0.0 { Some(self.prox_anchor_tensors(prox_anchor)?) } else { None };
        let n = self.data.train.len();
        let expected_batch = dp.denominator(n);
        let mut sampler = PoissonSampler::new(dp.sampling_rate, dp.sampling_seed);
        let (epochs, steps_per_epoch) = (dp.epochs(s.local_epochs), dp.steps_per_epoch());
        let (mut seen, mut steps, mut zeroed) = (0u64, 0u64, 0u64);
        for epoch in 0..epochs {
            for step in 0..steps_per_epoch {
                let rows = sampler.sample(n);
                let (x, y) = self.data.train.gather(&rows);
                let (sums, bad) =
                    clipped_grad_sum(&self.model, &self.slots, &x, &y, self.data.class_names.len(), dp.clip_norm)?;
                zeroed += bad;
                let grads = self.privatize(sums, noise, expected_batch)?;
                apply_sgd(&mut self.model, &self.slots, grads, s, anchor.as_deref());
                seen += rows.len() as u64;
                steps += 1;
                if let Some(cb) = self.progress.as_mut() {
                    cb(Progress { epoch, epochs, step: step + 1, steps_per_epoch });
                }
            }
        }
        self.trainable_params()?.check_finite().map_err(|_| LearnError::Diverged { what: "parameter" })?;
        Ok(TrainReport { num_examples: seen, mean_loss: 0.0, steps, zeroed_gradients: zeroed, epochs })
    }

    /// Noise the flat clipped sum and scale it by 1 / `expected_batch`.
    fn privatize(
        &self,
        sums: Vec<Tensor<2>>,
        noise: &mut dyn FnMut(&mut [f32]),
        expected_batch: f64,
    ) -> Result<Vec<Tensor<2>>, LearnError> {
        let shapes: Vec<[usize; 2]> = sums.iter().map(|t| t.dims()).collect();
        let mut flat = Vec::new();
        for t in sums {
            flat.extend(to_vec(t)?);
        }
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(LearnError::Diverged { what: "clipped gradient" });
        }
        noise(&mut flat);
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(LearnError::Diverged { what: "noised gradient" });
        }
        let inv = (1.0 / expected_batch) as f32;
        let device = self.model.head.weight.val().inner().device();
        let mut offset = 0;
        Ok(shapes
            .into_iter()
            .map(|[r, c]| {
                let chunk: Vec<f32> = flat[offset..offset + r * c].iter().map(|v| v * inv).collect();
                offset += r * c;
                tensor2(chunk, r, c, &device)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{TabularData, TabularSpec, shipped_data_path};
    use crate::model::TrainablePart;
    use crate::split::SplitConfig;
    use crate::train::{ModelSpec, TabularTask};
    use tessera_core::NoisePlacement;
    use tessera_learn::ComputeBackend;

    use crate::Split;

    fn task(trainable: TrainablePart) -> TabularTask {
        let data =
            TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &SplitConfig::default()).unwrap();
        TabularTask::new(data, &ModelSpec { hidden: vec![8, 6], trainable, init_seed: 4 }, ComputeBackend::default())
            .unwrap()
    }

    /// The reference: one backward pass per example; returns each example's
    /// flattened-per-tensor gradient.
    fn naive_per_example(t: &TabularTask, rows: &[usize]) -> Vec<Vec<Vec<f32>>> {
        rows.iter()
            .map(|&r| {
                let (x, y) = t.data.train.gather(&[r]);
                let device = t.device.clone();
                let logits = t.model.forward(tensor2(x, 1, t.data.train.num_features, &device));
                let loss = (log_softmax(logits, 1) * one_hot(&y, 2, &device)).sum().neg();
                let grads = loss.backward();
                t.slots
                    .iter()
                    .map(|&(l, f)| {
                        let w = t.model.param(l, f).unwrap().val();
                        to_vec(w.grad(&grads).unwrap_or_else(|| w.inner().zeros_like())).unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    fn norm(g: &[Vec<f32>]) -> f64 {
        g.iter().flatten().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
    }

    /// Clip each example's gradient to `clip` and sum, in f64.
    fn naive_clipped_sum(per_example: &[Vec<Vec<f32>>], clip: f64) -> Vec<Vec<f64>> {
        let mut sum: Vec<Vec<f64>> = per_example[0].iter().map(|v| vec![0.0; v.len()]).collect();
        for g in per_example {
            let c = (clip / norm(g)).min(1.0);
            for (s, v) in sum.iter_mut().zip(g) {
                for (a, b) in s.iter_mut().zip(v) {
                    *a += c * *b as f64;
                }
            }
        }
        sum
    }

    fn assert_matches_naive(mut t: TabularTask) {
        // Non-zero LoRA B factors so that every adapter has a gradient.
        for (l, f) in t.model.all_slots() {
            if f == Field::LoraB {
                let n = t.model.read_slot(l, f).unwrap().data.len();
                t.model.write_slot(l, f, (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect()).unwrap();
            }
        }
        let rows: Vec<usize> = (0..40).collect();
        let per_example = naive_per_example(&t, &rows);
        // Clip at the median norm, so that half the examples are clipped.
        let mut norms: Vec<f64> = per_example.iter().map(|g| norm(g)).collect();
        norms.sort_by(f64::total_cmp);
        let clip = norms[norms.len() / 2];
        assert!(norms[0] < clip && clip < norms[norms.len() - 1], "norms must differ");
        let naive = naive_clipped_sum(&per_example, clip);
        let (x, y) = t.data.train.gather(&rows);
        let (fast, zeroed) = clipped_grad_sum(&t.model, &t.slots, &x, &y, 2, clip).unwrap();
        assert_eq!((fast.len(), zeroed), (naive.len(), 0));
        for ((fast, naive), name) in fast.into_iter().zip(&naive).zip(t.trainable_names()) {
            let fast = to_vec(fast).unwrap();
            let diff = fast.iter().zip(naive).map(|(a, b)| (*a as f64 - b).powi(2)).sum::<f64>().sqrt();
            let size = naive.iter().map(|b| b.powi(2)).sum::<f64>().sqrt();
            assert!(size > 0.0, "`{name}` has a zero gradient");
            assert!(diff <= 1e-5 * size, "`{name}`: relative error {}", diff / size);
        }
    }

    #[test]
    fn ghost_clipping_equals_per_example_clipping_all_layers() {
        assert_matches_naive(task(TrainablePart::All));
    }

    #[test]
    fn ghost_clipping_equals_per_example_clipping_lora() {
        assert_matches_naive(task(TrainablePart::Lora { rank: 3, alpha: 6.0 }));
    }

    #[test]
    fn ghost_clipping_equals_per_example_clipping_last_layer() {
        assert_matches_naive(task(TrainablePart::LastLayers(1)));
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            local_epochs: 3,
            batch_size: 1,
            learning_rate: 0.5,
            proximal_mu: 0.0,
            seed: 0,
            example_weight_cap: 0,
        }
    }

    /// q = 0.1 of WDBC's 455 training rows: B = 45 is about q·N.
    fn dp(seed: u64) -> DpSgdConfig {
        DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            sampling_rate: 0.1,
            sampling_seed: Some(seed),
            expected_batch: Some(45.0),
            placement: NoisePlacement::Local,
        }
    }

    #[test]
    fn dp_training_calls_the_noise_sampler_and_learns() {
        let mut t = task(TrainablePart::All);
        let numel = t.trainable_params().unwrap().numel();
        let mut calls = 0;
        let mut noise = |v: &mut [f32]| {
            assert_eq!(v.len(), numel);
            calls += 1;
        };
        let r = t.train_round_dp(&settings(), &dp(1), &mut noise, None).unwrap();
        assert_eq!(r.steps, 30);
        assert_eq!(calls, 30);
        assert!(r.num_examples > 0);
        assert!(t.evaluate(Split::Test).unwrap().accuracy > 0.9);
        // Same sampling seed, same noise: same model.
        let mut u = task(TrainablePart::All);
        u.train_round_dp(&settings(), &dp(1), &mut |_: &mut [f32]| {}, None).unwrap();
        assert_eq!(t.trainable_params().unwrap(), u.trainable_params().unwrap());
    }

    /// An example whose gradient overflows contributes zero and is counted;
    /// the round goes on (declining it would tell the aggregator, unnoised,
    /// that some record makes training diverge). Clipped norms keep the
    /// f32 margin below C.
    #[test]
    fn a_non_finite_example_gradient_is_zeroed_not_fatal() {
        let t = task(TrainablePart::All);
        let rows: Vec<usize> = (0..10).collect();
        let (x, y) = t.data.train.gather(&rows);
        let d = t.data.train.num_features;
        let mut bad = x.clone();
        bad[3 * d..4 * d].iter_mut().for_each(|v| *v = 1e30);
        let (sums, zeroed) = clipped_grad_sum(&t.model, &t.slots, &bad, &y, 2, 1.0).unwrap();
        assert_eq!(zeroed, 1);
        let keep: Vec<usize> = rows.iter().copied().filter(|&r| r != 3).collect();
        let (xk, yk) = t.data.train.gather(&keep);
        let (without, none) = clipped_grad_sum(&t.model, &t.slots, &xk, &yk, 2, 1.0).unwrap();
        assert_eq!(none, 0);
        for (a, b) in sums.into_iter().zip(without) {
            assert_eq!(to_vec(a).unwrap(), to_vec(b).unwrap());
        }
        // One example alone, clipped: its gradient stays within C.
        let (one, _) = clipped_grad_sum(&t.model, &t.slots, &x[..d], &y[..1], 2, 1e-3).unwrap();
        let norm = one.into_iter().flat_map(|t| to_vec(t).unwrap()).map(|v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        assert!(norm <= 1e-3, "{norm}");
    }

    /// A member's DP-SGD step is its noised sum over the public B whatever
    /// its row count: with the noise replacing the sum by ones, two members
    /// with about 455 and 114 training rows move every parameter by exactly lr / B
    /// per step. (Divided by q·N, as before, they moved by 4 times
    /// different amounts.)
    #[test]
    fn the_step_scale_is_the_public_batch_not_the_row_count() {
        let member = |test: f64| {
            let split = SplitConfig { test, ..SplitConfig::default() };
            let data = TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &split).unwrap();
            let spec = ModelSpec { hidden: vec![], trainable: TrainablePart::All, init_seed: 4 };
            TabularTask::new(data, &spec, ComputeBackend::default()).unwrap()
        };
        let cfg = DpSgdConfig { sampling_rate: 1.0, expected_batch: Some(40.0), ..dp(1) };
        let s = TrainSettings { local_epochs: 2, learning_rate: 0.5, ..settings() };
        let mut moved = Vec::new();
        for test in [0.2, 0.8] {
            let mut t = member(test);
            let before = t.trainable_params().unwrap().to_flat();
            t.train_round_dp(&s, &cfg, &mut |v: &mut [f32]| v.fill(1.0), None).unwrap();
            let after = t.trainable_params().unwrap().to_flat();
            let step: Vec<f32> = before.iter().zip(&after).map(|(b, a)| b - a).collect();
            moved.push((t.data.train.len(), step));
        }
        let [(n_a, a), (n_b, b)] = <[_; 2]>::try_from(moved).unwrap();
        assert!(n_a > 3 * n_b, "{n_a} and {n_b} rows");
        assert_eq!(a, b, "the step depends on the row count");
        // Two steps of lr · 1 / B each.
        assert!(a.iter().all(|d| (d - 2.0 * 0.5 / 40.0).abs() < 1e-6), "{a:?}");
    }

    /// Distributed noise: a round is one step whatever `local_epochs` and q
    /// say (the accountant's count), so the released update is linear in
    /// the clipped sum.
    #[test]
    fn distributed_noise_takes_one_step_a_round() {
        let mut t = task(TrainablePart::All);
        let cfg = DpSgdConfig { sampling_rate: 0.5, placement: NoisePlacement::Distributed, ..dp(1) };
        let mut calls = 0;
        let r = t.train_round_dp(&settings(), &cfg, &mut |_: &mut [f32]| calls += 1, None).unwrap();
        assert_eq!((r.steps, r.epochs, calls), (1, 1, 1));
        let local = t.train_round_dp(&settings(), &DpSgdConfig { sampling_rate: 0.5, ..dp(1) }, &mut |_| {}, None);
        assert_eq!(local.unwrap().steps, 6, "three epochs of two steps under local noise");
    }

    #[test]
    fn non_finite_noise_or_settings_are_refused() {
        let mut t = task(TrainablePart::HeadOnly);
        let before = t.trainable_params().unwrap();
        let err = t.train_round_dp(&settings(), &dp(2), &mut |v: &mut [f32]| v[0] = f32::NAN, None).unwrap_err();
        assert!(matches!(err, LearnError::Diverged { .. }), "{err}");
        assert_eq!(t.trainable_params().unwrap(), before, "nothing released or applied");
        for bad in [DpSgdConfig { sampling_rate: 0.0, ..dp(2) }, DpSgdConfig { expected_batch: Some(0.5), ..dp(2) }] {
            assert!(matches!(
                t.train_round_dp(&settings(), &bad, &mut |_: &mut [f32]| {}, None),
                Err(LearnError::Settings(_))
            ));
        }
    }
}
