//! The simulator runs the daemons' protocol code; the transport underneath
//! must not change the result.

use std::path::Path;

use tessera_sim::{Scenario, SimOptions, TransportKind, run_scenario};

fn scenario() -> (Scenario, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/hospitals-wdbc.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut s = Scenario::load(&path).unwrap();
    s.rounds = 3;
    (s, text)
}

fn opts(out: &Path, transport: TransportKind, workers: usize) -> SimOptions {
    SimOptions {
        out: out.to_path_buf(),
        transport,
        workers,
        progress: false,
        backend: tessera_learn::DEFAULT_BACKEND,
        report: true,
    }
}

#[test]
fn memory_and_quic_transports_give_the_same_model() {
    tessera_e2e::init_tracing();
    let (s, text) = scenario();
    let dir = tempfile::tempdir().unwrap();
    let mem = run_scenario(&s, &text, &opts(&dir.path().join("mem"), TransportKind::Memory, 2)).unwrap();
    let quic = run_scenario(&s, &text, &opts(&dir.path().join("quic"), TransportKind::Quic, 2)).unwrap();
    assert_eq!(mem.end.completed_rounds, 3);
    assert_eq!(quic.end.completed_rounds, 3);
    assert_eq!(mem.final_model, quic.final_model, "final parameters differ between transports");
    for (a, b) in mem.records.iter().zip(&quic.records) {
        assert_eq!((a.accuracy, a.loss, a.participants), (b.accuracy, b.loss, b.participants));
    }
    // It really trained: the federated model is good on held-out data (the
    // harness's own measurement; the rounds carry the private evaluation).
    assert_eq!(mem.harness, quic.harness);
    let measured = mem.harness.as_ref().unwrap();
    assert!(measured.accuracy > 0.9, "accuracy {}", measured.accuracy);
    let last = mem.records.last().unwrap();
    assert!(last.accuracy.is_some_and(|a| a > 0.5), "record-level private evaluation: {last:?}");
    for f in ["metrics.jsonl", "summary.json", "scenario.toml"] {
        assert!(dir.path().join("mem").join(f).exists(), "{f} missing");
    }
    not_released_reads_absent(&dir.path().join("mem"), &mem.records);
}

/// Record-level private evaluation releases noised confusion counts only:
/// every round's loss and AUC are absent (`null` in `metrics.jsonl`, a dash
/// in the round line and `report.md`), and its accuracy is a real number.
fn not_released_reads_absent(run: &Path, records: &[tessera_core::RoundRecord]) {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), records.len());
    for l in &lines {
        assert!(l["loss"].is_null() && l["auc"].is_null(), "not released, yet written as measured: {l}");
        assert!(l["accuracy"].as_f64().is_some_and(|a| a > 0.5), "accuracy is released: {l}");
    }
    let line = tessera_aggregator::round_line(records.last().unwrap());
    assert!(line.contains("loss=\u{2013} ") && line.contains(" auc=\u{2013} "), "{line}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("| \u{2013} | \u{2013} |"), "AUC and loss not marked absent:\n{report}");
    assert!(!report.contains("| 0.5000 | 0.0000 |"), "AUC 0.5 and loss 0 read as measured:\n{report}");
}

/// Without DP the members report their evaluations in the clear, and the
/// harness's own evaluation of the final model (what the utility figures
/// report under DP) measures the same model on the same rows: they agree.
/// Under DP without `[privacy.evaluation]` the rounds carry no evaluation.
#[test]
fn the_harness_measures_what_the_members_report_without_dp() {
    let (mut s, text) = scenario();
    s.privacy = None;
    let dir = tempfile::tempdir().unwrap();
    let r = run_scenario(&s, &text, &opts(&dir.path().join("plain"), TransportKind::Memory, 2)).unwrap();
    let (last, measured) = (r.records.last().unwrap(), r.harness.as_ref().unwrap());
    assert!(measured.accuracy > 0.9, "{measured:?}");
    let (auc, loss) = (last.auc.expect("released in the clear"), last.loss.expect("released in the clear"));
    let accuracy = last.accuracy.expect("released in the clear");
    for (a, b) in [(accuracy, measured.accuracy), (auc, measured.auc), (loss, measured.loss)] {
        assert!((a - b).abs() < 1e-9, "the members' last reports ({last:?}) and the harness's {measured:?} differ");
    }
    let text = std::fs::read_to_string(dir.path().join("plain").join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["loss"].as_f64(), Some(loss), "{line}");
    let (mut s, text) = scenario();
    s.privacy.as_mut().unwrap().evaluation = None;
    let r = run_scenario(&s, &text, &opts(&dir.path().join("dp"), TransportKind::Memory, 2)).unwrap();
    let unmeasured = |x: &tessera_core::RoundRecord| {
        [x.accuracy, x.balanced_accuracy, x.f1, x.auc, x.loss].iter().all(Option::is_none)
    };
    assert!(r.records.iter().all(unmeasured), "no evaluation under DP: {:?}", r.records);
    // Nothing evaluated reads absent everywhere, never as a measured 0.
    let text = std::fs::read_to_string(dir.path().join("dp").join("metrics.jsonl")).unwrap();
    for l in text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        for key in ["accuracy", "balanced_accuracy", "f1", "auc", "loss"] {
            assert!(l[key].is_null(), "{key} was not measured, yet written as {}: {l}", l[key]);
        }
    }
    let line = tessera_aggregator::round_line(r.records.last().unwrap());
    assert!(line.contains("loss=\u{2013} accuracy=\u{2013} auc=\u{2013} "), "{line}");
    let report = std::fs::read_to_string(dir.path().join("dp").join("report.md")).unwrap();
    assert!(!report.contains("| 0.0000 |"), "an unmeasured value reads as 0 in report.md:\n{report}");
    assert!(r.harness.unwrap().accuracy > 0.9);
}

#[test]
fn worker_count_does_not_change_the_result() {
    let (mut s, text) = scenario();
    s.rounds = 2;
    let dir = tempfile::tempdir().unwrap();
    let one = run_scenario(&s, &text, &opts(&dir.path().join("w1"), TransportKind::Memory, 1)).unwrap();
    let four = run_scenario(&s, &text, &opts(&dir.path().join("w4"), TransportKind::Memory, 4)).unwrap();
    assert_eq!(one.final_model, four.final_model);
}

/// Issue #18's utility targets, at the shipped scenarios' own seeds: WDBC
/// under record-level DP with secure aggregation reaches accuracy 0.97 at
/// epsilon 8 and 0.95 at epsilon 1 on the hospitals' held-out rows, within
/// the budget. docs/privacy.md ("Utility") has the figures over 16 seeds.
#[test]
fn shipped_wdbc_scenarios_reach_the_utility_targets() {
    let dir = tempfile::tempdir().unwrap();
    for (file, epsilon, target) in [("hospitals-wdbc.toml", 8.0, 0.97), ("hospitals-wdbc-eps1.toml", 1.0, 0.95)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let s = Scenario::load(&path).unwrap();
        assert_eq!(s.privacy.as_ref().map(|p| p.epsilon), Some(epsilon), "{file}");
        let run = run_scenario(&s, &text, &opts(&dir.path().join(file), TransportKind::Memory, 2)).unwrap();
        assert_eq!(run.end.completed_rounds, s.rounds, "{file}");
        let last = run.records.last().unwrap();
        // The harness's own measurement of the final model: under DP the
        // protocol evaluates privately or not at all.
        let measured = run.harness.as_ref().unwrap();
        assert!(measured.accuracy >= target, "{file}: accuracy {} below {target}", measured.accuracy);
        let spent = last.epsilon.unwrap();
        assert!(spent <= epsilon + 1e-9, "{file}: spent epsilon {spent} over {epsilon}");
    }
}

/// Issue #18's epsilon = 1 target, robustly: the shipped WDBC scenario
/// (record-level DP with distributed noise, docs/privacy.md "Record-level DP
/// with distributed noise") reaches a mean accuracy of 0.95 over several of
/// its documented seeds, each run within the budget, and its updates carry
/// the members' shares only (one DP-SGD step a round).
#[test]
fn shipped_wdbc_eps1_scenario_reaches_the_target_over_seeds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/hospitals-wdbc-eps1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let base = Scenario::load(&path).unwrap();
    let privacy = base.privacy.as_ref().unwrap();
    assert_eq!((privacy.epsilon, privacy.noise), (1.0, Some(tessera_core::NoisePlacement::Distributed)));
    let dir = tempfile::tempdir().unwrap();
    let seeds = [42u64, 1, 2, 3];
    let mut sum = 0.0;
    for seed in seeds {
        let mut s = base.clone();
        s.seed = seed;
        let run = run_scenario(&s, &text, &opts(&dir.path().join(seed.to_string()), TransportKind::Memory, 2)).unwrap();
        assert_eq!(run.end.completed_rounds, s.rounds, "seed {seed}");
        let spent = run.records.last().unwrap().epsilon.unwrap();
        assert!(spent <= 1.0 + 1e-9, "seed {seed}: spent epsilon {spent} over 1");
        sum += run.harness.as_ref().unwrap().accuracy;
    }
    let mean = sum / seeds.len() as f64;
    assert!(mean >= 0.95, "mean accuracy {mean} over seeds {seeds:?} below 0.95");
}

/// Issue #18's German Credit target at the shipped scenario's own seed: 4
/// banks under record-level DP at epsilon 8 reach a mean per-bank AUC of
/// 0.75 on their held-out rows. The lever is DP-SGD's public expected batch
/// size (docs/privacy.md, "DP-SGD's scale"): dividing by each bank's own q·N
/// let a tiny bank's noise swamp the average.
#[test]
fn shipped_german_credit_scenario_reaches_the_utility_target() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/banks-credit.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = Scenario::load(&path).unwrap();
    assert_eq!(s.privacy.as_ref().map(|p| p.epsilon), Some(8.0));
    let dir = tempfile::tempdir().unwrap();
    let run = run_scenario(&s, &text, &opts(&dir.path().join("credit"), TransportKind::Memory, 2)).unwrap();
    assert_eq!(run.end.completed_rounds, s.rounds);
    let auc = run.harness.as_ref().unwrap().auc;
    assert!(auc >= 0.75, "AUC {auc} below 0.75");
    let spent = run.records.last().unwrap().epsilon.unwrap();
    assert!(spent <= 8.0 + 1e-9, "spent epsilon {spent} over 8");
}

/// Record unit, distributed noise (docs/privacy.md, "Record-level DP with
/// distributed noise"): five WDBC members' one-step updates, coded on the
/// round's grid with their noise shares and summed as secure aggregation sums
/// them, equal one central clipped DP-SGD step over the union of their
/// training rows (q = 1, the same public B), up to the grid's rounding; what
/// is left is the shares' noise, of the planned size, and nothing else: no
/// member adds noise of its own.
#[test]
fn record_distributed_secure_sum_is_one_central_step_over_the_union() {
    use rand::SeedableRng;
    use tessera_core::{
        DpSettings, ModelConfig, NoisePlacement, PrivacyUnit, RoundSettings, SchemaSource, SecAggSettings,
        TrainSettings, TrainableConfig,
    };
    use tessera_learn::{ComputeBackend, LocalModel};
    use tessera_tabular::{SplitIndices, TabularData, TabularModel, TabularSpec, load_csv, shipped_data_path};

    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data/wdbc.schema.toml");
    let spec = TabularSpec { schema: SchemaSource::File(schema), ..TabularSpec::wdbc() };
    let table = load_csv(&shipped_data_path("wdbc.csv"), &spec).unwrap();
    let config = ModelConfig {
        hidden: vec![],
        num_features: 30,
        num_classes: 2,
        trainable: TrainableConfig::All,
        init_seed: 7,
        pretrained: None,
    };
    let member = |train: Vec<usize>| {
        let idx = SplitIndices { train, validation: vec![], test: (550..569).collect() };
        let data = TabularData::from_indices(&table, &spec, &idx).unwrap();
        TabularModel::new(data, &config, ComputeBackend::default()).unwrap()
    };
    let dp = DpSettings {
        unit: PrivacyUnit::Record,
        noise: NoisePlacement::Distributed,
        clip_norm: 1.0,
        noise_multiplier: 2.0,
        sampling_rate: 1.0,
        min_contributors: 4,
        delta: 1e-5,
        adaptive: None,
    };
    let train = TrainSettings {
        local_epochs: 1,
        batch_size: 85,
        learning_rate: 0.5,
        proximal_mu: 0.0,
        seed: 3,
        example_weight_cap: 0,
    };
    let global = tessera_tabular::initial_trainable_params(&config).unwrap();
    let step = |rows: Vec<usize>| {
        let up = member(rows).train(&global, &train, Some(&dp)).unwrap();
        up.params.delta_from(&global).unwrap().to_flat()
    };
    let n = 5usize;
    let parts: Vec<Vec<usize>> = (0..n).map(|k| (k * 110..(k + 1) * 110).collect()).collect();
    let deltas: Vec<Vec<f32>> = parts.iter().map(|rows| step(rows.clone())).collect();
    let central = step(parts.concat());
    let d = central.len();
    // Linear in the clipped sums: the members' updates add up to the central step.
    for j in 0..d {
        let sum: f64 = deltas.iter().map(|u| f64::from(u[j])).sum();
        let c = f64::from(central[j]);
        assert!((sum - c).abs() <= 1e-4 * c.abs().max(1.0), "coordinate {j}: members {sum}, central {c}");
    }
    assert!(central.iter().any(|v| v.abs() > 0.1), "the step moved the model");
    assert!(deltas.iter().flatten().all(|v| v.abs() < 1.0), "within clip_range: nothing clamped here");

    // Secure aggregation of the five updates with their shares, as members
    // upload them and the aggregator decodes them (masks cancel in the sum).
    let settings = RoundSettings {
        train: train.clone(),
        secagg: Some(SecAggSettings { threshold: 4, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
        dp: Some(dp.clone()),
        eval: None,
        stats: None,
    };
    let s = settings.secagg.clone().unwrap();
    let agreed = tessera_protocol::update_coding(&settings, d as u64, n as u32).unwrap();
    let plan = agreed.plan.unwrap();
    let share = tessera_privacy::DiscreteGaussian::new(plan.share_sigma).unwrap();
    let layout = global.layout();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let mut residuals = Vec::new();
    for _ in 0..20 {
        let mut sum = vec![0u32; d + 1];
        for u in &deltas {
            let delta = tessera_core::ModelParams::from_flat(&layout, u).unwrap();
            let enc = tessera_secagg::UpdateEncoder::with_coding(&s, n as u32, &delta, 1.0, agreed.coding).unwrap();
            let mut values = vec![0u32; d + 1];
            enc.encode(0, &mut values, &mut rng).unwrap();
            let mut z = vec![0i64; d];
            share.fill(&mut z, &mut rng);
            tessera_secagg::add_ring_noise(&mut values[..d], &z, 32).unwrap();
            sum.iter_mut().zip(&values).for_each(|(a, v)| *a = a.wrapping_add(*v));
        }
        let mean = tessera_secagg::mean_update_with(&layout, &s, n as u32, &sum, n as u32, agreed.coding).unwrap();
        for (m, c) in mean.to_flat().iter().zip(&central) {
            residuals.push(f64::from(*m) * n as f64 - f64::from(*c));
        }
    }
    // What remains is the sum of five shares: std sqrt(5/4)·z·lr·C/B.
    let want = plan.sum_noise_std(n as u32);
    let floor = 2.0 * 0.5 / 85.0 * (5.0f64 / 4.0).sqrt();
    assert!(want >= floor && want < 1.01 * floor, "planned {want}, floor {floor}");
    let k = residuals.len() as f64;
    let mean = residuals.iter().sum::<f64>() / k;
    let std = (residuals.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.15, "residual std {std}, the shares' {want}");
    assert!(mean.abs() < 5.0 * want / k.sqrt(), "biased: {mean}");
}
