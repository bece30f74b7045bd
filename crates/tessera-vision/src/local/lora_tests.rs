//! LoRA on EfficientNet-Lite0 (`[model] lora`), on a seeded random
//! backbone (these tests check the mechanics, not what pretraining buys,
//! so they need no checkpoint) at 32 px.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use tessera_core::{LoraConfig, ParamTensor};

use super::tests::{assert_dp_step, dp, fashion, full_batch, settings};
use super::*;
use crate::TransferModel;
use crate::params::param_ids;

fn lora_cfg() -> VisionModelConfig {
    VisionModelConfig {
        backbone: BackboneInit::Random,
        trainable_blocks: 2,
        lora: Some(LoraConfig { rank: 2, alpha: 4.0 }),
        feature_batch: 100,
        ..VisionModelConfig::efficientnet_head(10, 32)
    }
}

fn transfer(cfg: &VisionModelConfig) -> TransferModel {
    let VisionNet::Transfer(m) = VisionNet::build(cfg, &Device::flex()).unwrap() else { unreachable!() };
    *m
}

/// `params` with every adapter factor `B` (`lora_b`) drawn at random, so
/// that the adapters change the network.
fn nonzero_b(params: &ModelParams, seed: u64) -> ModelParams {
    let mut rng = <ChaCha8Rng as SeedableRng>::seed_from_u64(seed);
    let tensors = params.tensors.iter().map(|t| {
        let data = if t.name.contains(".lora_b.") {
            t.data.iter().map(|_| rng.gen_range(-0.05..0.05)).collect()
        } else {
            t.data.clone()
        };
        ParamTensor { data, ..t.clone() }
    });
    ModelParams::new(tensors.collect())
}

fn images(n: usize) -> Tensor<4> {
    let data = fashion("t10k", 1);
    let rows: Vec<usize> = (0..n).collect();
    crate::preprocess(&lora_cfg()).batch(&data, &rows, &Device::flex()).unwrap()
}

fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> (f32, f32) {
    let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    (diff, a.iter().map(|x| x.abs()).fold(0.0f32, f32::max))
}

#[test]
fn adapters_start_at_zero_so_the_model_is_the_frozen_one() {
    let lora = transfer(&lora_cfg());
    let plain = transfer(&VisionModelConfig { lora: None, ..lora_cfg() });
    let params = lora.trainable_params().unwrap();
    let b = params.tensors.iter().filter(|t| t.name.contains(".lora_b."));
    assert!(b.clone().count() == 5 && b.flat_map(|t| &t.data).all(|&v| v == 0.0), "every B is zero");
    let a = params.tensors.iter().filter(|t| t.name.contains(".lora_a."));
    assert!(a.flat_map(|t| &t.data).any(|&v| v != 0.0), "A is not");
    let x = images(4);
    let (diff, _) = max_abs_diff(lora.forward(x.clone()), plain.forward(x));
    assert_eq!(diff, 0.0, "B = 0: the adapted network is the frozen one");
}

/// The update is the adapters and the head, and nothing else: for rank r,
/// each adapted `[out, in]` 1x1 convolution adds `r (in + out)` values.
#[test]
fn only_adapters_and_head_train_and_travel() {
    let cfg = lora_cfg();
    let mut m = VisionModel::from_config(&cfg, fashion("train", 2), fashion("t10k", 1)).unwrap();
    let start = m.net().trainable_params().unwrap();
    assert!(start.tensors.iter().all(|t| t.name.starts_with("head.") || t.name.contains("_lora.lora_")));
    // Blocks 14 and 15 (expand 192 -> 1152, project 1152 -> 192 and
    // 1152 -> 320), conv_head 320 -> 1280, rank 2; head 1280 x 10 + 10.
    let adapters = 2 * ((192 + 1152) * 3 + (1152 + 320) + (320 + 1280));
    assert_eq!(start.numel(), adapters + 1280 * 10 + 10);
    let frozen = m.net().frozen_params().unwrap();
    // Two steps (20 examples, batches of 20): the first moves B off zero,
    // after which A has a gradient too.
    let up = m.train(&start, &settings(2, 0.01, 1), None).unwrap();
    assert_eq!(up.params.layout(), start.layout());
    assert_eq!(m.net().frozen_params().unwrap(), frozen, "frozen tensors bit-identical");
    for t in &up.params.tensors {
        let before = start.get(&t.name).unwrap();
        assert_ne!(t.data, before.data, "{} did not train", t.name);
    }
    // Evaluation sees the adapters (merged into the fast kernels).
    assert_ne!(m.evaluate(&up.params).unwrap().loss, m.evaluate(&start).unwrap().loss);
}

/// Merging gives a plain EfficientNet-Lite0 with the adapted forward; so
/// does installing the exported (PyTorch-layout) tensors into one.
#[test]
fn merged_and_exported_models_have_the_adapted_forward() {
    let cfg = lora_cfg();
    let adapted = transfer(&cfg);
    let trained = nonzero_b(&adapted.trainable_params().unwrap(), 7);
    let adapted = adapted.with_trainable_params(&trained).unwrap();
    let x = images(4);
    let want = adapted.forward(x.clone());
    let plain_x = transfer(&VisionModelConfig { lora: None, ..cfg.clone() }).forward(x.clone());
    let (moved, _) = max_abs_diff(want.clone(), plain_x);
    assert!(moved > 1e-4, "the adapters change the output ({moved})");
    let (diff, scale) = max_abs_diff(adapted.merged().forward(x.clone()), want.clone());
    assert!(diff <= 1e-4 * scale.max(1.0), "merged: {diff} (scale {scale})");

    let (exported, what) = crate::pytorch_tensors(&cfg, &trained, &Device::flex()).unwrap();
    assert!(what.contains("merged"), "{what}");
    assert_eq!(exported.tensors.len(), 2 + 5, "head + five merged convolutions");
    assert_eq!(exported.get("head.weight").unwrap().shape, vec![10, 1280], "torch.nn.Linear layout");
    // A plain network (no adapters) with the file's tensors, the head back in burn's layout.
    let mut plain = transfer(&VisionModelConfig { lora: None, trainable_blocks: 0, ..cfg.clone() });
    let mut tensors = exported.tensors.clone();
    for t in &mut tensors {
        if t.name == "head.weight" {
            let [o, i] = t.shape[..] else { unreachable!() };
            t.data = (0..i * o).map(|k| t.data[(k % o) * i + k / o]).collect();
            t.shape = vec![i, o];
        }
    }
    plain = crate::params::assign_params(plain, &ModelParams::new(tensors)).unwrap();
    let (diff, scale) = max_abs_diff(plain.forward(x), want);
    assert!(diff <= 1e-4 * scale.max(1.0), "exported: {diff} (scale {scale})");
}

/// Record-level DP-SGD with adapters: with every example in the one step, a
/// clip far above any gradient and negligible noise it is exactly one
/// full-batch gradient step over the adapters and the head (checked against
/// burn autodiff on the whole batch); a tiny clip bounds the step by lr * C.
#[test]
fn dp_sgd_clips_per_example_over_exactly_the_adapters_and_head() {
    let cfg = lora_cfg();
    let data = fashion("train", 2);
    let n = data.len();
    let mut m = VisionModel::from_config(&cfg, data.clone(), fashion("t10k", 1)).unwrap().with_seeded_noise(true);
    let start = nonzero_b(&m.net().trainable_params().unwrap(), 3);
    let frozen = m.net().frozen_params().unwrap();
    let all = DpSettings { sampling_rate: 1.0, ..dp(1e6, 1e-12) };
    let up = m.train(&start, &full_batch(n), Some(&all)).unwrap();
    assert_eq!(up.params.layout(), start.layout());
    assert_eq!(m.net().frozen_params().unwrap(), frozen, "frozen tensors bit-identical");

    let net = transfer(&cfg).with_trainable_params(&start).unwrap();
    let ad = Device::flex().autodiff();
    let tracked = net.clone().fork(&ad).train();
    let x = crate::preprocess(&cfg).batch(&data, &(0..n).collect::<Vec<_>>(), &ad).unwrap();
    let labels: Vec<i64> = data.labels().iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &ad);
    let loss = CrossEntropyLossConfig::new().init(&ad).forward(tracked.forward(x), y);
    let grads = GradientsParams::from_grads(loss.backward(), &tracked);
    let mut g = Vec::new();
    for ((_, id), t) in param_ids(&net, &|p| net.is_trainable(p)).into_iter().zip(&start.tensors) {
        let values = match t.shape.len() {
            4 => grads.get::<4>(id).map(|t| t.into_data()),
            2 => grads.get::<2>(id).map(|t| t.into_data()),
            _ => grads.get::<1>(id).map(|t| t.into_data()),
        };
        g.extend(values.unwrap().try_to_vec::<f32>().unwrap());
    }
    assert_eq!(g.len(), start.numel());
    assert_dp_step(&mut m, n, &up.params, &start, &g);
}

#[test]
fn lora_needs_adapted_blocks() {
    let none = VisionModelConfig { trainable_blocks: 0, ..lora_cfg() };
    assert!(VisionNet::build(&none, &Device::flex()).is_err());
    let rank0 = VisionModelConfig { lora: Some(LoraConfig { rank: 0, alpha: 1.0 }), ..lora_cfg() };
    assert!(rank0.validate().is_err());
}
