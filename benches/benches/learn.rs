//! Local learning costs (issue #3, with the DP-SGD overhead target of issue #5):
//!
//! - `dp_overhead/*`: one local epoch of DP-SGD (Poisson sampling with
//!   q = 32/N, per-example clipping, noise from tessera-privacy's exact
//!   sampler) against one non-private epoch at batch 32, for the WDBC MLP
//!   (30-64-2, `TabularModel`) and the image head on a frozen
//!   EfficientNet-Lite0 (`VisionModel`, cached features, and augmented
//!   views through the backbone at every step; and with the last block
//!   trainable, clipped by ghost norms from one batched pass, at 32 and 96 px). Both arms
//!   take ceil(N/32) steps; throughput is counted in steps.
//!   `noise_only_epoch` times the noise draws of a DP epoch alone, to
//!   attribute the overhead.
//! - `feature_cache/*`: one head epoch on a frozen backbone with cached
//!   features against the same epoch recomputing every feature.
//! - `throughput/*`: training examples per second, to read against the
//!   PyTorch figures (benches/pytorch_train.py): the WDBC MLP with Adam at
//!   batch 32; EfficientNet-Lite0 forward at 224 and 96 px, and one Adam
//!   step at 96 px training the head only (backbone forward, no cache) and
//!   training every block.
//!
//! `cargo bench --workspace --bench learn --profile dev` (dependencies at
//! opt-level 3, as in tests; see docs/benchmarks.md for why not release).
//! The backbone is the pretrained one when scripts/fetch-weights.sh has run,
//! else seeded random weights: the cost is the same.

use std::hint::black_box;
use std::time::Duration;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use tessera_client::LocalModel;
use tessera_core::{
    AugmentConfig, BackboneInit, DpSettings, ModelConfig, NoisePlacement, PrivacyUnit, TrainSettings, TrainableConfig,
    VisionModelConfig,
};
use tessera_learn::ComputeBackend;
use tessera_tabular::{SplitConfig, TabularData, TabularSpec, shipped_data_path};
use tessera_vision::NUM_BLOCKS;
use tessera_vision::{
    EfficientNetLite0, FeatureCache, HeadWeights, ImageDataset, Normalization, Preprocess, TransferModel,
    TransferTrainer, default_weights_path, load_fashion_mnist,
};
use tessera_vision::{VisionModel, VisionNet};

const BATCH: usize = 32;

fn settings(lr: f64) -> TrainSettings {
    TrainSettings {
        local_epochs: 1,
        batch_size: BATCH as u32,
        learning_rate: lr,
        proximal_mu: 0.0,
        seed: 7,
        example_weight_cap: 0,
    }
}

fn dp(n: usize) -> DpSettings {
    DpSettings {
        unit: PrivacyUnit::Record,
        noise: NoisePlacement::Local,
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        sampling_rate: BATCH as f64 / n as f64,
        min_contributors: 1,
        delta: 1e-5,
        adaptive: None,
    }
}

fn wdbc() -> TabularData {
    TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &SplitConfig::default()).unwrap()
}

fn fashion(prefix: &str, per_class: usize) -> ImageDataset {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/fashion-mnist");
    load_fashion_mnist(&dir, prefix).unwrap().stratified_sample(per_class, 1).unwrap()
}

fn backbone(device: &Device) -> EfficientNetLite0 {
    let path = default_weights_path();
    if path.is_file() {
        TransferModel::from_pretrained(&path, 10, 0, 1, device).unwrap().backbone
    } else {
        EfficientNetLite0::random(device, 1)
    }
}

fn dp_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("dp_overhead");
    g.sample_size(20).measurement_time(Duration::from_secs(5));

    let data = wdbc();
    let n = data.train.len();
    let model_cfg = ModelConfig {
        hidden: vec![64],
        num_features: data.train.num_features,
        num_classes: 2,
        trainable: TrainableConfig::All,
        init_seed: 1,
        pretrained: None,
    };
    let mut mlp = tessera_tabular::TabularModel::new(data, &model_cfg, ComputeBackend::Flex).unwrap();
    let start = tessera_tabular::initial_trainable_params(&model_cfg).unwrap();
    g.throughput(Throughput::Elements(n.div_ceil(BATCH) as u64));
    g.bench_function("wdbc_mlp/non_private_epoch", |b| {
        b.iter(|| black_box(mlp.train(&start, &settings(0.05), None).unwrap()))
    });
    let dps = dp(n);
    g.bench_function("wdbc_mlp/dp_sgd_epoch", |b| {
        b.iter(|| black_box(mlp.train(&start, &settings(0.05), Some(&dps)).unwrap()))
    });
    noise_only(&mut g, "wdbc_mlp/noise_only_epoch", start.numel(), n.div_ceil(BATCH));

    let cfg = VisionModelConfig {
        backbone: BackboneInit::PretrainedIfPresent,
        ..VisionModelConfig::efficientnet_head(10, 32)
    };
    let mut image = VisionModel::from_config(&cfg, fashion("train", 100), fashion("t10k", 10)).unwrap();
    let n = image.num_train_examples() as usize;
    let start = image.net().trainable_params().unwrap();
    // Fill the feature cache outside the measurement.
    image.train(&start, &settings(0.05), None).unwrap();
    g.throughput(Throughput::Elements(n.div_ceil(BATCH) as u64));
    g.bench_function("image_head/non_private_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), None).unwrap()))
    });
    let dps = dp(n);
    g.bench_function("image_head/dp_sgd_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), Some(&dps)).unwrap()))
    });
    // What the DP epoch spends in the exact noise sampler alone.
    noise_only(&mut g, "image_head/noise_only_epoch", start.numel(), n.div_ceil(BATCH));
    g.finish();

    // The same head when every step runs the backbone (augmented views, no cache).
    let mut g = c.benchmark_group("dp_overhead");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let aug = VisionModelConfig { augment: Some(AugmentConfig::light()), ..cfg };
    let mut image = VisionModel::from_config(&aug, fashion("train", 20), fashion("t10k", 10)).unwrap();
    let n = image.num_train_examples() as usize;
    let dps = dp(n);
    g.throughput(Throughput::Elements(n.div_ceil(BATCH) as u64));
    g.bench_function("image_head_augmented_32px/non_private_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), None).unwrap()))
    });
    g.bench_function("image_head_augmented_32px/dp_sgd_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), Some(&dps)).unwrap()))
    });

    // The last block, the head convolution and the head trainable: the
    // non-private epoch is the batched channels-last fine-tuner (Adam), the
    // DP epoch one batched forward and backward pass per group of sampled
    // examples, clipped by ghost norms (no pass per example).
    let last = VisionModelConfig { trainable_blocks: 1, augment: None, ..aug };
    let mut image = VisionModel::from_config(&last, fashion("train", 20), fashion("t10k", 10)).unwrap();
    let start = image.net().trainable_params().unwrap();
    g.bench_function("last_block_32px/non_private_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), None).unwrap()))
    });
    g.bench_function("last_block_32px/dp_sgd_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), Some(&dps)).unwrap()))
    });
    // Its noise alone: ~1.0M coordinates at z = 1 need a grid finer than
    // one table covers (sigma/g ≈ 2^16 for at most 3 % rounding inflation),
    // so these draws come from the two-table sampler (`ConvolvedGaussian`).
    noise_only(&mut g, "last_block_32px/noise_only_epoch", start.numel(), n.div_ceil(BATCH));
    // The same at 96 px, the size at which unfrozen blocks pay off
    // (docs/transfer-learning.md): the trainable blocks see 3x3 instead of
    // 1x1 positions, so both arms do more work per example, the noise the same.
    let at96 = VisionModelConfig { image_size: 96, ..last };
    let mut image = VisionModel::from_config(&at96, fashion("train", 20), fashion("t10k", 10)).unwrap();
    g.bench_function("last_block_96px/non_private_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), None).unwrap()))
    });
    g.bench_function("last_block_96px/dp_sgd_epoch", |b| {
        b.iter(|| black_box(image.train(&start, &settings(0.05), Some(&dps)).unwrap()))
    });
    g.finish();
}

/// The noise draws of one DP-SGD epoch alone: `steps` calls of the DP arms'
/// `GaussianMechanism` (z = 1, C = 1) over `numel` coordinates.
fn noise_only(g: &mut BenchmarkGroup<'_, WallTime>, id: &str, numel: usize, steps: usize) {
    // The stream DP-SGD's large releases draw from (tessera-learn's dp.rs).
    let mut rng = tessera_privacy::NoiseStream::from_key([1; 32]);
    let mut flat = vec![0.0f32; numel];
    let mechanism = tessera_privacy::GaussianMechanism::new(1.0, 1.0, numel).unwrap();
    g.bench_function(id, |b| {
        b.iter(|| {
            for _ in 0..steps {
                flat.iter_mut().for_each(|v| *v = 0.0);
                mechanism.add_to(&mut flat, &mut rng).unwrap();
            }
            black_box(&flat);
        })
    });
}

/// One plain-SGD head epoch at batch 32 over `features`.
fn head_epoch(head: &mut HeadWeights, features: &[f32], labels: &[usize], device: &Device) {
    let dim = head.dim;
    for (x, y) in features.chunks(BATCH * dim).zip(labels.chunks(BATCH)) {
        let g = head.gradient_sum(x, y, None, device).unwrap();
        let lr = 0.05 / y.len() as f32;
        head.weight.iter_mut().zip(&g.weight).for_each(|(w, d)| *w -= lr * d);
        head.bias.iter_mut().zip(&g.bias).for_each(|(w, d)| *w -= lr * d);
    }
}

fn feature_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("feature_cache");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let device = Device::flex();
    let bb = backbone(&device);
    let data = fashion("train", 20);
    let pre = Preprocess::new((64, 64), 3, Normalization::LITE);
    let head0 = HeadWeights::new(1280, 10, vec![0.0; 12_800], vec![0.0; 10]).unwrap();
    let cache = FeatureCache::extract(&bb, &data, &pre, BATCH, &device).unwrap();
    g.throughput(Throughput::Elements(data.len() as u64));
    g.bench_function("64px_200img/epoch_cached", |b| {
        b.iter(|| {
            let mut head = head0.clone();
            head_epoch(&mut head, cache.features(), cache.labels(), &device);
            black_box(head)
        })
    });
    g.bench_function("64px_200img/epoch_uncached", |b| {
        b.iter(|| {
            let fresh = FeatureCache::extract(&bb, &data, &pre, BATCH, &device).unwrap();
            let mut head = head0.clone();
            head_epoch(&mut head, fresh.features(), fresh.labels(), &device);
            black_box(head)
        })
    });
    g.finish();
}

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.l2.forward(relu(self.l1.forward(x)))
    }
}

fn labels_tensor(labels: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = labels.len();
    Tensor::from_data(TensorData::new(labels, [n]), device)
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10).measurement_time(Duration::from_secs(10));

    // WDBC MLP 30-64-2, Adam (lr 1e-3), batch 32: one epoch over the train split.
    let data = wdbc();
    let (n, d) = (data.train.len(), data.train.num_features);
    let ad = Device::flex().autodiff();
    let batches: Vec<(Tensor<2>, Tensor<1, Int>)> = (0..n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|rows| {
            let (x, y) = data.train.gather(rows);
            (
                Tensor::from_data(TensorData::new(x, [rows.len(), d]), &ad),
                labels_tensor(y.into_iter().map(i64::from).collect(), &ad),
            )
        })
        .collect();
    let mut mlp = Mlp { l1: LinearConfig::new(d, 64).init(&ad), l2: LinearConfig::new(64, 2).init(&ad) };
    let mut adam = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("wdbc_mlp_30_64_2_adam_b32/epoch", |b| {
        b.iter(|| {
            for (x, y) in &batches {
                let loss = loss_fn.forward(mlp.forward(x.clone()), y.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &mlp);
                mlp = adam.step(1e-3, mlp.clone(), grads);
            }
        })
    });

    // EfficientNet-Lite0 on a batch of 32 Fashion-MNIST images.
    let device = Device::flex();
    let images = fashion("t10k", 4);
    let idx: Vec<usize> = (0..BATCH).collect();
    let bb = backbone(&device);
    for px in [224, 96] {
        let x = Preprocess::new((px, px), 3, Normalization::LITE).batch(&images, &idx, &device).unwrap();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("efficientnet_lite0_forward_{px}px_b32"), |b| {
            b.iter(|| black_box(bb.features(x.clone()).into_data()))
        });
        // What feature extraction runs: batch norms folded into the convolutions.
        let folded = tessera_vision::FoldedEfficientNet::new(&bb);
        g.bench_function(format!("efficientnet_lite0_forward_folded_{px}px_b32"), |b| {
            b.iter(|| black_box(folded.features(x.clone()).into_data()))
        });
        // What feature extraction runs on a CPU device: the folded trunk channels-last.
        let frozen = tessera_vision::FrozenEfficientNet::from_folded(&folded).unwrap();
        g.bench_function(format!("efficientnet_lite0_forward_frozen_nhwc_{px}px_b32"), |b| {
            b.iter(|| black_box(frozen.features(x.clone()).unwrap()))
        });
    }
    let y: Vec<i64> = idx.iter().map(|&i| images.labels()[i] as i64).collect();
    let x96 = Preprocess::new((96, 96), 3, Normalization::LITE).batch(&images, &idx, &ad).unwrap();
    let y96 = labels_tensor(y, &ad);
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let cfg = VisionModelConfig {
        backbone: BackboneInit::PretrainedIfPresent,
        ..VisionModelConfig::efficientnet_head(10, 96)
    };
    // Head-only training as a member runs it when features cannot be cached
    // (augmentation): the frozen trunk channels-last, then an Adam step on
    // the new 1280 -> 10 head. PyTorch's head-only figure runs the same
    // (frozen backbone, no graph through it).
    {
        let frozen = tessera_vision::FeatureExtractor::new(&bb, &device).unwrap();
        let mut head = LinearConfig::new(tessera_vision::FEATURE_DIM, 10).init(&ad);
        let mut adam = AdamConfig::new().init();
        let x = Preprocess::new((96, 96), 3, Normalization::LITE).batch(&images, &idx, &device).unwrap();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function("efficientnet_lite0_train_head_only_frozen_nhwc_96px_b32", |b| {
            b.iter(|| {
                let f = frozen.features(x.clone()).unwrap();
                let f = Tensor::<2>::from_data(TensorData::new(f, [BATCH, tessera_vision::FEATURE_DIM]), &ad);
                let loss = loss_fn.forward(head.forward(f), y96.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &head);
                head = adam.step(1e-3, head.clone(), grads);
            })
        });
    }
    for (name, blocks) in [("head_only", 0), ("all_blocks", NUM_BLOCKS)] {
        let VisionNet::Transfer(net) =
            VisionNet::build(&VisionModelConfig { trainable_blocks: blocks, ..cfg.clone() }, &device).unwrap()
        else {
            unreachable!("an EfficientNet config builds a transfer model")
        };
        let mut model = (*net).fork(&ad).train();
        let mut adam = AdamConfig::new().init();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("efficientnet_lite0_train_{name}_96px_b32"), |b| {
            b.iter(|| {
                let loss = loss_fn.forward(model.forward(x96.clone()), y96.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = adam.step(1e-3, model.clone(), grads);
            })
        });
    }
    // What a member runs when it fine-tunes backbone blocks on a CPU: the
    // trunk's forward and backward channels-last (tessera_vision::tune),
    // burn for the head, the loss and Adam.
    let x = Preprocess::new((96, 96), 3, Normalization::LITE).batch(&images, &idx, &device).unwrap();
    let labels: Vec<usize> = idx.iter().map(|&i| images.labels()[i]).collect();
    for (name, blocks) in [("last_4_blocks", 4), ("all_blocks", NUM_BLOCKS)] {
        let VisionNet::Transfer(net) =
            VisionNet::build(&VisionModelConfig { trainable_blocks: blocks, ..cfg.clone() }, &device).unwrap()
        else {
            unreachable!("an EfficientNet config builds a transfer model")
        };
        let mut trainer = TransferTrainer::new(*net, &device).unwrap();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("efficientnet_lite0_train_{name}_channels_last_96px_b32"), |b| {
            b.iter(|| black_box(trainer.step(x.clone(), &labels, 1e-3).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, dp_overhead, feature_cache, throughput);
criterion_main!(benches);
