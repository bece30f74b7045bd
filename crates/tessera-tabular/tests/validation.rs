//! The validation split (`[data] validation`, issue #19): local training
//! stops early on it, keeps the best epoch, and without it runs every epoch.

use tessera_core::TrainSettings;
use tessera_learn::ComputeBackend;
use tessera_tabular::{
    ModelSpec, SplitConfig, TabularData, TabularSpec, TabularTask, TrainablePart, shipped_data_path,
};

fn task(validation: f64) -> TabularTask {
    let split = SplitConfig { validation, test: 0.2, seed: 4 };
    let data = TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &split).unwrap();
    let spec = ModelSpec { hidden: vec![32, 16], trainable: TrainablePart::All, init_seed: 3 };
    TabularTask::new(data, &spec, ComputeBackend::default()).unwrap()
}

/// A learning rate high enough that the validation loss rises well within
/// the round's epochs on WDBC.
fn settings(epochs: u32) -> TrainSettings {
    TrainSettings {
        local_epochs: epochs,
        batch_size: 16,
        learning_rate: 0.3,
        proximal_mu: 0.0,
        seed: 9,
        example_weight_cap: 0,
    }
}

#[test]
fn a_validation_split_stops_the_round_early_and_keeps_the_best_epoch() {
    let mut stopped = task(0.3);
    assert!(!stopped.data().validation.is_empty());
    let report = stopped.train_round(&settings(60), None).unwrap();
    assert!(report.epochs >= 1 && report.epochs < 60, "stopped after {} of 60 epochs", report.epochs);
    // It ran one epoch past the kept ones, and counts it.
    let steps_per_epoch = stopped.num_train_examples().div_ceil(16);
    assert_eq!(report.steps, u64::from(report.epochs + 1) * steps_per_epoch);

    // What it kept is exactly a round of that many epochs: the parameters
    // from before the epoch that raised the validation loss.
    let mut shorter = task(0.3);
    let short = shorter.train_round(&settings(report.epochs), None).unwrap();
    assert_eq!(short.epochs, report.epochs, "every kept epoch lowered the validation loss");
    assert_eq!(stopped.trainable_params().unwrap(), shorter.trainable_params().unwrap());
}

#[test]
fn without_a_validation_split_every_epoch_runs() {
    let mut t = task(0.0);
    assert!(t.data().validation.is_empty());
    let report = t.train_round(&settings(60), None).unwrap();
    assert_eq!(report.epochs, 60);
    assert_eq!(report.steps, 60 * t.num_train_examples().div_ceil(16));
}

#[test]
fn one_epoch_is_never_stopped() {
    let mut t = task(0.3);
    let report = t.train_round(&settings(1), None).unwrap();
    assert_eq!((report.epochs, report.steps), (1, t.num_train_examples().div_ceil(16)));
}
