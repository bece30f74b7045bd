//! burn's GPU backend (`backend = "wgpu"`, issue #19) against the CPU
//! default, flex: the tabular MLP trained a few steps and the
//! EfficientNet-Lite0 trunk's forward pass must agree within float
//! rounding. The workspace's tests build the backend (this crate turns on
//! `tessera-learn/wgpu` as a dev-dependency), and CI installs Debian's
//! `mesa-vulkan-drivers` (lavapipe, a software Vulkan device), so this runs
//! on every CI machine, GPU or not. It skips, saying why, only where no
//! wgpu device can be created at all.
//!
//! Tolerances: the two backends sum in different orders, so results differ
//! in the last bits of f32 and those differences grow through the steps
//! and layers. Trained MLP parameters: within 1e-4 of flex's (they are of
//! order 0.1); the trunk's 1280 features: within 1e-3 relative to the
//! largest feature.

use burn::tensor::{Tensor, TensorData};
use tessera_core::TrainSettings;
use tessera_learn::{BackendUnavailable, ComputeBackend};
use tessera_tabular::{ModelSpec, SplitConfig, TabularData, TabularSpec, TabularTask, TrainablePart};
use tessera_vision::EfficientNetLite0;

/// The wgpu backend with its device created, or `None` after saying why not.
fn wgpu() -> Option<ComputeBackend> {
    match ComputeBackend::wgpu().and_then(ComputeBackend::check) {
        Ok(b) => Some(b),
        Err(e @ BackendUnavailable::NoDevice { .. }) => {
            eprintln!("SKIPPED: {e}; install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers)");
            None
        }
        Err(e) => panic!("{e}: the workspace's tests build the wgpu backend (tests/Cargo.toml)"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tabular_mlp_trains_on_wgpu_as_on_flex() {
    let Some(gpu) = wgpu() else { return };
    let split = SplitConfig { validation: 0.0, test: 0.2, seed: 2 };
    let data = TabularData::load(&tessera_e2e::wdbc(), &TabularSpec::wdbc(), &split).unwrap();
    let spec = ModelSpec { hidden: vec![32, 16], trainable: TrainablePart::All, init_seed: 3 };
    // One epoch in batches of 64: 8 SGD steps.
    let s = TrainSettings {
        local_epochs: 1,
        batch_size: 64,
        learning_rate: 0.1,
        proximal_mu: 0.0,
        seed: 4,
        example_weight_cap: 0,
    };
    let run = |backend| {
        let mut task = TabularTask::new(data.clone(), &spec, backend).unwrap();
        let start = task.trainable_params().unwrap();
        let report = task.train_round(&s, None).unwrap();
        (start, task.trainable_params().unwrap(), report, task.evaluate(tessera_tabular::Split::Test).unwrap())
    };
    let (start, cpu, cpu_report, cpu_eval) = run(ComputeBackend::Flex);
    let (gpu_start, on_gpu, gpu_report, gpu_eval) = run(gpu);
    assert_eq!(gpu_start, start, "the same seeded initial weights");
    assert_eq!(gpu_report.steps, 8);
    let moved: f32 =
        start.tensors.iter().zip(&cpu.tensors).map(|(a, b)| max_abs_diff(&a.data, &b.data)).fold(0.0, f32::max);
    assert!(moved > 1e-3, "training moved the weights by {moved}");
    for (c, g) in cpu.tensors.iter().zip(&on_gpu.tensors) {
        assert_eq!((&c.name, &c.shape), (&g.name, &g.shape));
        let d = max_abs_diff(&c.data, &g.data);
        assert!(d <= 1e-4, "{}: wgpu differs from flex by {d}", c.name);
    }
    assert!((cpu_report.mean_loss - gpu_report.mean_loss).abs() <= 1e-4, "{cpu_report:?} vs {gpu_report:?}");
    assert!((cpu_eval.loss - gpu_eval.loss).abs() <= 1e-4, "{} vs {}", cpu_eval.loss, gpu_eval.loss);
}

#[test]
fn efficientnet_lite0_forward_on_wgpu_matches_flex() {
    let Some(gpu) = wgpu() else { return };
    // Two 64x64 images (the trunk's output is 2x2 before pooling).
    let (n, side) = (2, 64);
    let pixels: Vec<f32> = (0..n * 3 * side * side).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let features = |backend: ComputeBackend| {
        let device = backend.device();
        let net = EfficientNetLite0::random(&device, 11);
        let images = Tensor::<4>::from_data(TensorData::new(pixels.clone(), [n, 3, side, side]), &device);
        let f = net.features(images);
        assert_eq!(f.dims(), [n, tessera_vision::FEATURE_DIM]);
        f.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    let (cpu, on_gpu) = (features(ComputeBackend::Flex), features(gpu));
    let scale = cpu.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(scale > 1e-3, "the trunk produced features (largest {scale})");
    let d = max_abs_diff(&cpu, &on_gpu);
    assert!(d <= 1e-3 * scale, "wgpu features differ from flex by {d} (largest feature {scale})");
}
