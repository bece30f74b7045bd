//! EfficientNet-Lite0 on burn's GPU backend (`backend = "wgpu"`, issue #19):
//!
//! - `gpu/forward_{px}px_b{batch}`: the backbone's forward pass (features),
//!   images per second;
//! - `gpu/train_all_blocks_{px}px_b{batch}`: one Adam step training every
//!   block, the head convolution and the head through burn autodiff, images
//!   per second;
//! - `gpu/lora_2_blocks_{px}px/{non_private,dp_sgd}_epoch`: a member's
//!   local epoch (`VisionModel::train`, the member's own code path) with
//!   LoRA (rank 4) on the last two blocks, without DP and with record-level
//!   DP-SGD (q = batch/N, clip 1, z = 1), over N training images; the DP
//!   arm runs one backward pass per sampled example, so its time over N is
//!   the per-example cost. (Record-level DP-SGD through fully unfrozen
//!   blocks runs on CPU backends only: its per-example gradients are the
//!   hand-written channels-last ones.)
//!
//! One command, on whatever wgpu picks (a discrete GPU first; a software
//! Vulkan device such as lavapipe when that is all there is):
//!
//! ```sh
//! cargo bench --workspace --bench gpu --profile dev
//! # smaller, for a software device: TESSERA_GPU_PX=32 TESSERA_GPU_BATCH=4 TESSERA_GPU_DP_IMAGES=20
//! ```
//!
//! It prints the adapter `vulkaninfo --summary` reports (when installed)
//! and says so when that is a CPU (software) device: such figures are not
//! GPU figures. Where no wgpu device can be created it prints `SKIPPED`
//! and why, and measures nothing. The backbone is the pretrained one when
//! scripts/fetch-weights.sh has run, else seeded random weights.

use std::hint::black_box;
use std::time::Duration;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tessera_core::{
    BackboneInit, DpSettings, LoraConfig, NoisePlacement, PrivacyUnit, TrainSettings, VisionModelConfig,
};
use tessera_learn::{BackendUnavailable, ComputeBackend, LocalModel};
use tessera_vision::{
    EfficientNetLite0, ImageDataset, NUM_BLOCKS, Normalization, Preprocess, TransferModel, VisionModel, VisionNet,
    default_weights_path, load_fashion_mnist,
};

/// `name` from the environment, else `default`.
fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a whole number")),
        Err(_) => default,
    }
}

/// The wgpu backend with its device, or `None` after saying why not.
fn gpu() -> Option<ComputeBackend> {
    match ComputeBackend::wgpu().and_then(ComputeBackend::check) {
        Ok(b) => Some(b),
        Err(e @ BackendUnavailable::NoDevice { .. }) => {
            println!("SKIPPED: no wgpu device: {e}. Nothing was measured.");
            None
        }
        Err(e) => {
            println!("SKIPPED: {e}. Nothing was measured.");
            None
        }
    }
}

/// What `vulkaninfo --summary` says of the devices, with a warning when one
/// is a CPU (software) device. wgpu may still choose another backend (Metal,
/// DX12, GL); the line then only describes what Vulkan sees.
fn describe_adapters() {
    let Ok(out) = std::process::Command::new("vulkaninfo").arg("--summary").output() else {
        println!("adapter: unknown (vulkaninfo not installed); wgpu prefers a discrete GPU when there is one");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| l.starts_with("deviceName") || l.starts_with("deviceType")).collect();
    println!("Vulkan devices: {}", lines.join("; "));
    let software = lines.iter().any(|l| l.contains("PHYSICAL_DEVICE_TYPE_CPU"));
    let hardware = lines.iter().any(|l| l.contains("GPU"));
    if software && !hardware {
        println!("NOTE: only a software (CPU) Vulkan device is present: the figures below are not GPU figures");
    }
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

fn gpu_bench(c: &mut Criterion) {
    let Some(backend) = gpu() else { return };
    describe_adapters();
    let px = env_usize("TESSERA_GPU_PX", 224);
    let batch = env_usize("TESSERA_GPU_BATCH", 32);
    let dp_images = env_usize("TESSERA_GPU_DP_IMAGES", 200).max(10);
    println!("wgpu: {px} px, batch {batch}, DP-SGD over {dp_images} images");
    let device = backend.device();
    let ad = backend.training_device();

    let mut g = c.benchmark_group("gpu");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let images = fashion("t10k", batch.div_ceil(10));
    let idx: Vec<usize> = (0..batch).collect();
    let pre = Preprocess::new((px, px), 3, Normalization::LITE);

    let bb = backbone(&device);
    let x = pre.batch(&images, &idx, &device).unwrap();
    g.throughput(Throughput::Elements(batch as u64));
    // Reading the features back waits for the device to finish.
    g.bench_function(format!("forward_{px}px_b{batch}"), |b| b.iter(|| black_box(bb.features(x.clone()).into_data())));

    let cfg = VisionModelConfig {
        backbone: BackboneInit::PretrainedIfPresent,
        ..VisionModelConfig::efficientnet_head(10, px)
    };
    let VisionNet::Transfer(net) =
        VisionNet::build(&VisionModelConfig { trainable_blocks: NUM_BLOCKS, ..cfg.clone() }, &device).unwrap()
    else {
        unreachable!("an EfficientNet config builds a transfer model")
    };
    let mut model = (*net).fork(&ad).train();
    let mut adam = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let xa = pre.batch(&images, &idx, &ad).unwrap();
    let labels: Vec<i64> = idx.iter().map(|&i| images.labels()[i] as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &ad);
    g.bench_function(format!("train_all_blocks_{px}px_b{batch}"), |b| {
        b.iter(|| {
            let loss = loss_fn.forward(model.forward(xa.clone()), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = adam.step(1e-3, model.clone(), grads);
            // Waits for the step: the next forward reads the new weights.
            black_box(model.head.bias.as_ref().map(|b| b.val().into_data()))
        })
    });

    // A member's local epoch with LoRA on the last two blocks, on this backend.
    let lora = VisionModelConfig { trainable_blocks: 2, lora: Some(LoraConfig { rank: 4, alpha: 8.0 }), ..cfg };
    let train = fashion("train", dp_images.div_ceil(10));
    let n = train.len();
    let mut member = VisionModel::from_config_on(&lora, train, fashion("t10k", 1), backend).unwrap();
    let start = member.net().trainable_params().unwrap();
    let s = TrainSettings {
        local_epochs: 1,
        batch_size: batch as u32,
        learning_rate: 1e-3,
        proximal_mu: 0.0,
        seed: 7,
        example_weight_cap: 0,
    };
    let dp = DpSettings {
        unit: PrivacyUnit::Record,
        noise: NoisePlacement::Local,
        clip_norm: 1.0,
        noise_multiplier: 1.0,
        sampling_rate: (batch as f64 / n as f64).min(1.0),
        min_contributors: 1,
        delta: 1e-5,
        adaptive: None,
    };
    // Counted in training images: N per epoch, and in expectation N sampled under DP.
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("lora_2_blocks_{px}px/non_private_epoch"), |b| {
        b.iter(|| black_box(member.train(&start, &s, None).unwrap()))
    });
    g.bench_function(format!("lora_2_blocks_{px}px/dp_sgd_epoch"), |b| {
        b.iter(|| black_box(member.train(&start, &s, Some(&dp)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, gpu_bench);
criterion_main!(benches);
