//! Trainable parts: frozen tensors never move, only trainable tensors are
//! exchanged, and LoRA shrinks the update by the factor its shapes predict.

use tessera_core::TrainSettings;
use tessera_learn::ComputeBackend;
use tessera_tabular::{
    Field, ModelSpec, Split, SplitConfig, TabularData, TabularSpec, TabularTask, TrainablePart, shipped_data_path,
};

fn task(hidden: Vec<usize>, trainable: TrainablePart) -> TabularTask {
    let data =
        TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &SplitConfig::default()).unwrap();
    TabularTask::new(data, &ModelSpec { hidden, trainable, init_seed: 9 }, ComputeBackend::default()).unwrap()
}

fn snapshot(t: &TabularTask) -> Vec<(String, Vec<u32>)> {
    let m = t.model();
    m.all_slots()
        .into_iter()
        .map(|(l, f)| {
            let p = m.read_slot(l, f).unwrap();
            (p.name, p.data.iter().map(|v| v.to_bits()).collect())
        })
        .collect()
}

fn train_and_check(trainable: TrainablePart, expected_names: &[&str]) -> TabularTask {
    let mut t = task(vec![32, 16], trainable);
    assert_eq!(t.trainable_names(), expected_names);
    let exchanged = t.trainable_params().unwrap();
    assert_eq!(exchanged.tensors.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), expected_names);
    let before = snapshot(&t);
    let s = TrainSettings {
        local_epochs: 3,
        batch_size: 32,
        learning_rate: 0.05,
        proximal_mu: 0.0,
        seed: 1,
        example_weight_cap: 0,
    };
    t.train_round(&s, None).unwrap();
    let after = snapshot(&t);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if expected_names.contains(&name.as_str()) {
            assert_ne!(a, b, "trainable `{name}` did not move");
        } else {
            assert_eq!(a, b, "frozen `{name}` changed");
        }
    }
    t
}

#[test]
fn head_only_freezes_the_backbone() {
    train_and_check(TrainablePart::HeadOnly, &["head.weight", "head.bias"]);
}

#[test]
fn last_layers_trains_the_head_and_the_last_backbone_layer() {
    train_and_check(
        TrainablePart::LastLayers(1),
        &["backbone.layers.1.weight", "backbone.layers.1.bias", "head.weight", "head.bias"],
    );
}

#[test]
fn all_trains_everything() {
    let names = [
        "backbone.layers.0.weight",
        "backbone.layers.0.bias",
        "backbone.layers.1.weight",
        "backbone.layers.1.bias",
        "head.weight",
        "head.bias",
    ];
    train_and_check(TrainablePart::All, &names);
}

#[test]
fn lora_trains_adapters_and_head_only_and_learns() {
    let names = [
        "backbone.layers.0.lora_a",
        "backbone.layers.0.lora_b",
        "backbone.layers.1.lora_a",
        "backbone.layers.1.lora_b",
        "head.weight",
        "head.bias",
    ];
    let mut t = train_and_check(TrainablePart::Lora { rank: 2, alpha: 4.0 }, &names);
    let s = TrainSettings {
        local_epochs: 20,
        batch_size: 32,
        learning_rate: 0.05,
        proximal_mu: 0.0,
        seed: 2,
        example_weight_cap: 0,
    };
    t.train_round(&s, None).unwrap();
    let acc = t.evaluate(Split::Test).unwrap().accuracy;
    assert!(acc > 0.9, "LoRA test accuracy {acc}");
}

#[test]
fn lora_update_is_smaller_by_the_factor_of_its_shapes() {
    let (d, h, c, r) = (30usize, 64usize, 2usize, 2usize);
    let last = task(vec![h, h], TrainablePart::LastLayers(1)).trainable_params().unwrap();
    let lora = task(vec![h, h], TrainablePart::Lora { rank: r, alpha: 2.0 }).trainable_params().unwrap();
    let head = h * c + c;
    let expected_last = head + h * h + h;
    let expected_lora = head + (d * r + r * h) + (h * r + r * h);
    assert_eq!(last.numel(), expected_last);
    assert_eq!(lora.numel(), expected_lora);
    let factor = last.byte_len() as f64 / lora.byte_len() as f64;
    assert!((factor - expected_last as f64 / expected_lora as f64).abs() < 1e-12);
    assert!(factor > 7.0, "{factor}");
    // LoRA starts as the base model: B is zero.
    let t = task(vec![h, h], TrainablePart::Lora { rank: r, alpha: 2.0 });
    assert!(t.model().read_slot(0, Field::LoraB).unwrap().data.iter().all(|v| *v == 0.0));
}

#[test]
fn too_many_last_layers_is_a_config_error() {
    let data =
        TabularData::load(&shipped_data_path("wdbc.csv"), &TabularSpec::wdbc(), &SplitConfig::default()).unwrap();
    let spec = ModelSpec { hidden: vec![8], trainable: TrainablePart::LastLayers(2), init_seed: 0 };
    assert!(TabularTask::new(data, &spec, ComputeBackend::default()).is_err());
}
