//! Simulator throughput on the WDBC workload (issue #7): client-rounds per
//! second for `simulations/hospitals-wdbc.toml`'s consortium and data (5
//! members) with the workload pinned here, as measured for
//! docs/benchmarks.md and as `benches/flower_sim.py` runs it (10 rounds, MLP
//! 30-16-2, 3 local epochs of SGD at lr 0.1 in batches of 16; the scenario
//! itself now trains a DP-tuned logistic regression), without DP, with
//! secure aggregation (the default) and in the research plaintext mode, over
//! the in-memory network with one worker per core. Reports are off;
//! everything else is a full run (partition, training, masking, aggregation,
//! evaluation).
//!
//! `cargo bench --workspace --bench sim`. `benches/flower_sim.py` is the
//! Flower side of the comparison (docs/benchmarks.md, "Simulation").

use std::path::Path;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tessera_sim::{Scenario, SimOptions, TransportKind, run_scenario};

fn scenario(plaintext: bool) -> (Scenario, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/hospitals-wdbc.toml");
    let text = std::fs::read_to_string(&path).expect("scenario");
    let mut s = Scenario::load(&path).expect("scenario");
    s.privacy = None;
    s.insecure_plaintext = plaintext;
    // The measured workload, whatever the scenario is tuned for.
    s.rounds = 10;
    s.model.as_mut().expect("a tabular scenario").hidden = vec![16];
    s.train.local_epochs = 3;
    s.train.learning_rate = 0.1;
    s.train.batch_size = 16;
    (s, text)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim_wdbc");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, plaintext) in [("secure", false), ("plaintext", true)] {
        let (s, text) = scenario(plaintext);
        g.throughput(Throughput::Elements(s.clients as u64 * s.rounds));
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SimOptions {
            out: dir.path().join(name),
            transport: TransportKind::Memory,
            workers,
            progress: false,
            backend: tessera_learn::DEFAULT_BACKEND,
            report: false,
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let _ = std::fs::remove_dir_all(&opts.out);
                let r = run_scenario(&s, &text, &opts).expect("run");
                assert_eq!(r.end.completed_rounds, s.rounds);
                r
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
