//! Centralized training on the shipped data sets, exchange of parameters,
//! determinism and progress reporting.

use std::sync::{Arc, Mutex};

use tessera_core::{ModelParams, ParamTensor, TrainSettings};
use tessera_learn::ComputeBackend;
use tessera_tabular::{
    LearnError, ModelSpec, Split, SplitConfig, TabularData, TabularSpec, TabularTask, TrainablePart, shipped_data_path,
};

fn wdbc() -> TabularData {
    TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &SplitConfig::default()).unwrap()
}

fn settings(epochs: u32, lr: f64, seed: u64) -> TrainSettings {
    TrainSettings {
        local_epochs: epochs,
        batch_size: 32,
        learning_rate: lr,
        proximal_mu: 0.0,
        seed,
        example_weight_cap: 0,
    }
}

fn mlp(trainable: TrainablePart) -> ModelSpec {
    ModelSpec { hidden: vec![32, 16], trainable, init_seed: 3 }
}

#[test]
fn wdbc_mlp_reaches_95_percent_test_accuracy() {
    let data = wdbc();
    assert_eq!(data.train.num_features, 30);
    assert_eq!(data.train.len() + data.validation.len() + data.test.len(), 569);
    let mut task = TabularTask::new(data, &mlp(TrainablePart::All), ComputeBackend::default()).unwrap();
    let before = task.evaluate(Split::Test).unwrap();
    let report = task.train_round(&settings(20, 0.05, 1), None).unwrap();
    assert_eq!(report.steps, 20 * task.num_train_examples().div_ceil(32));
    assert_eq!(report.num_examples, 20 * task.num_train_examples());
    let after = task.evaluate(Split::Test).unwrap();
    assert!(after.accuracy >= 0.95, "test accuracy {}", after.accuracy);
    assert!(after.auc > 0.98, "auc {}", after.auc);
    assert!(after.loss < before.loss);
    // The keyed hash sends about 20 % of the rows (113.8 expected) to test.
    assert!((90..=140).contains(&after.num_examples), "{}", after.num_examples);
    assert_eq!(after.confusion.iter().flatten().sum::<u64>(), after.num_examples);
}

#[test]
fn wdbc_logistic_regression_trains() {
    let mut task = TabularTask::new(wdbc(), &ModelSpec::logistic(0), ComputeBackend::default()).unwrap();
    assert_eq!(task.trainable_names(), vec!["head.weight", "head.bias"]);
    task.train_round(&settings(15, 0.1, 2), None).unwrap();
    let m = task.evaluate(Split::Test).unwrap();
    assert!(m.accuracy >= 0.95, "test accuracy {}", m.accuracy);
}

#[test]
fn german_credit_beats_the_majority_class() {
    let split = SplitConfig { seed: 5, ..SplitConfig::default() };
    let path = shipped_data_path("germancredit.csv");
    let spec = TabularSpec::german_credit();
    for model in [ModelSpec::logistic(1), mlp(TrainablePart::All)] {
        let mut task = TabularTask::from_csv(&path, &spec, &split, &model, ComputeBackend::default()).unwrap();
        let data = task.data();
        assert_eq!(data.class_names, vec!["bad", "good"]);
        // 7 numeric columns plus 54 one-hot categories.
        assert_eq!(data.train.num_features, 61);
        let counts = data.test.class_counts();
        let majority = *counts.iter().max().unwrap() as f64 / data.test.len() as f64;
        task.train_round(&settings(20, 0.05, 3), None).unwrap();
        let m = task.evaluate(Split::Test).unwrap();
        assert!(m.accuracy > majority, "accuracy {} vs majority {majority}", m.accuracy);
        assert!(m.auc > 0.7, "auc {}", m.auc);
    }
}

#[test]
fn same_seed_same_result_different_seed_different_result() {
    let run = |seed: u64| {
        let mut task = TabularTask::new(wdbc(), &mlp(TrainablePart::All), ComputeBackend::default()).unwrap();
        let r = task.train_round(&settings(2, 0.05, seed), None).unwrap();
        (task.trainable_params().unwrap(), r.mean_loss)
    };
    let (a, la) = run(11);
    let (b, lb) = run(11);
    assert_eq!(a, b);
    assert_eq!(la, lb);
    let (c, _) = run(12);
    assert_ne!(a, c);
}

#[test]
fn set_trainable_params_checks_names_shapes_and_values() {
    let mut task = TabularTask::new(wdbc(), &mlp(TrainablePart::HeadOnly), ComputeBackend::default()).unwrap();
    let p = task.trainable_params().unwrap();
    assert_eq!(p.layout().entries, vec![("head.weight".into(), vec![16, 2]), ("head.bias".into(), vec![2])]);
    // Round trip with new values.
    let mut q = p.clone();
    q.scale(0.5);
    task.set_trainable_params(&q).unwrap();
    assert_eq!(task.trainable_params().unwrap(), q);
    // Non-finite values are rejected and nothing changes.
    let mut bad = q.clone();
    bad.tensors[1].data[0] = f32::INFINITY;
    assert!(matches!(task.set_trainable_params(&bad), Err(LearnError::NonFinite { .. })));
    assert_eq!(task.trainable_params().unwrap(), q);
    // Wrong name, wrong shape, wrong count.
    let mut renamed = q.clone();
    renamed.tensors[0].name = "head.weights".into();
    assert!(matches!(task.set_trainable_params(&renamed), Err(LearnError::ParamMismatch(_))));
    let reshaped = ModelParams::new(vec![
        ParamTensor::new("head.weight", vec![2, 16], q.tensors[0].data.clone()).unwrap(),
        q.tensors[1].clone(),
    ]);
    assert!(matches!(task.set_trainable_params(&reshaped), Err(LearnError::ParamMismatch(_))));
    let short = ModelParams::new(vec![q.tensors[0].clone()]);
    assert!(matches!(task.set_trainable_params(&short), Err(LearnError::ParamMismatch(_))));
}

#[test]
fn fedprox_pulls_towards_the_anchor() {
    let start = TabularTask::new(wdbc(), &mlp(TrainablePart::All), ComputeBackend::default()).unwrap();
    let anchor = start.trainable_params().unwrap();
    let drift = |mu: f64| {
        let mut task = TabularTask::new(wdbc(), &mlp(TrainablePart::All), ComputeBackend::default()).unwrap();
        let s = TrainSettings { proximal_mu: mu, ..settings(3, 0.05, 4) };
        task.train_round(&s, Some(&anchor)).unwrap();
        task.trainable_params().unwrap().delta_from(&anchor).unwrap().l2_norm()
    };
    let free = drift(0.0);
    let held = drift(5.0);
    assert!(held < free * 0.8, "prox drift {held} vs free drift {free}");
}

#[test]
fn progress_callback_sees_every_step_and_bad_settings_are_rejected() {
    let mut task = TabularTask::new(wdbc(), &ModelSpec::logistic(0), ComputeBackend::default()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    task.set_progress(Some(Box::new(move |p| sink.lock().unwrap().push((p.epoch, p.step)))));
    let r = task.train_round(&settings(2, 0.1, 0), None).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, r.steps);
    assert_eq!(seen.last().unwrap().0, 1);
    let zero_batch = TrainSettings { batch_size: 0, ..settings(1, 0.1, 0) };
    assert!(matches!(task.train_round(&zero_batch, None), Err(LearnError::Settings(_))));
    let nan_lr = settings(1, f64::NAN, 0);
    assert!(matches!(task.train_round(&nan_lr, None), Err(LearnError::Settings(_))));
}
