//! Throughput of local training on WDBC per CPU backend, and DP-SGD cost.
//!
//! Run: `cargo run --release -p tessera-learn --example backend_bench`

use std::time::Instant;

use tessera_core::TrainSettings;
use tessera_learn::{ComputeBackend, DpSgdConfig};
use tessera_tabular::{
    ModelSpec, SplitConfig, TabularData, TabularSpec, TabularTask, TrainablePart, shipped_data_path,
};

const EPOCHS: u32 = 20;

fn task(backend: ComputeBackend) -> TabularTask {
    let data = TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &SplitConfig::default())
        .expect("shipped data loads");
    let spec = ModelSpec { hidden: vec![64, 32], trainable: TrainablePart::All, init_seed: 0 };
    TabularTask::new(data, &spec, backend).expect("model builds")
}

fn main() {
    let s = TrainSettings {
        local_epochs: EPOCHS,
        batch_size: 32,
        learning_rate: 0.05,
        proximal_mu: 0.0,
        seed: 1,
        example_weight_cap: 0,
    };
    for backend in [ComputeBackend::Flex, ComputeBackend::NdArray] {
        let mut t = task(backend);
        t.train_round(&TrainSettings { local_epochs: 1, ..s.clone() }, None).expect("warm-up");
        let start = Instant::now();
        let r = t.train_round(&s, None).expect("training");
        let secs = start.elapsed().as_secs_f64();
        let sgd_step = secs / r.steps as f64;
        println!(
            "{:8} SGD    : {:>9.0} examples/s, {:.3} ms/step (batch 32, MLP 30-64-32-2)",
            backend.name(),
            r.num_examples as f64 / secs,
            sgd_step * 1e3
        );
        // DP-SGD with the same expected batch size (q = 32 / N).
        let n = t.num_train_examples() as f64;
        let dp = DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
            sampling_rate: 32.0 / n,
            sampling_seed: Some(3),
            expected_batch: Some(32.0),
            placement: tessera_core::NoisePlacement::Local,
        };
        let start = Instant::now();
        let r = t.train_round_dp(&s, &dp, &mut |_: &mut [f32]| {}, None).expect("dp training");
        let dp_step = start.elapsed().as_secs_f64() / r.steps as f64;
        println!(
            "{:8} DP-SGD : {:.3} ms/step, {:.2}x the non-private step",
            backend.name(),
            dp_step * 1e3,
            dp_step / sgd_step
        );
    }
}
