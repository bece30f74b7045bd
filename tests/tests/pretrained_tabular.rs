//! `[model] pretrained` for tabular runs (issue #19): the aggregator's
//! initial model, each member's model and the simulator all start from the
//! backbone file, and the export is the model the members trained.

use std::path::{Path, PathBuf};

use tessera_core::{ModelConfig, ModelSection, TrainSettings, TrainableConfig};
use tessera_learn::{ComputeBackend, LocalModel};
use tessera_tabular::{
    Field, MlpConfig, SplitConfig, TabularData, TabularMlp, TabularModel, TabularSpec, TrainablePart, save_backbone,
};

/// Backbone [16, 8]; the last backbone layer and the head train, the first
/// layer is frozen.
fn model(pretrained: Option<PathBuf>) -> ModelConfig {
    ModelConfig {
        hidden: vec![16, 8],
        num_features: 30,
        num_classes: 2,
        trainable: TrainableConfig::LastLayers { layers: 1 },
        init_seed: 3,
        pretrained,
    }
}

/// A backbone of `hidden`'s shape with weights nobody else draws (seed 99),
/// saved to `path`; returned so its tensors can be compared.
fn write_backbone(path: &Path, hidden: Vec<usize>) -> TabularMlp {
    let cfg = MlpConfig { num_features: 30, hidden, num_classes: 2, trainable: TrainablePart::All, init_seed: 99 };
    let file = TabularMlp::new(&cfg, &ComputeBackend::Flex.training_device()).unwrap();
    save_backbone(&file, path).unwrap();
    file
}

fn member(cfg: &ModelConfig) -> Result<TabularModel, tessera_tabular::LearnError> {
    let split = SplitConfig { validation: 0.0, test: 0.2, seed: 1 };
    let data = TabularData::load(&tessera_e2e::wdbc(), &TabularSpec::wdbc(), &split).unwrap();
    TabularModel::new(data, cfg, ComputeBackend::Flex)
}

fn tensor(p: &tessera_core::ModelParams, name: &str) -> Vec<f32> {
    p.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name} missing")).data.clone()
}

#[test]
fn training_starts_from_the_pretrained_backbone_and_the_export_is_what_was_trained() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("backbone.safetensors");
    let file = write_backbone(&ckpt, vec![16, 8]);
    let (cfg, plain) = (model(Some(ckpt)), model(None));

    // The aggregator's initial model: the trainable backbone layer is the
    // file's; the head, which the file does not hold, is the seeded one.
    let initial = tessera_aggregator::daemon::initial_params(&ModelSection::Tabular(cfg.clone())).unwrap();
    let seeded = tessera_aggregator::daemon::initial_params(&ModelSection::Tabular(plain.clone())).unwrap();
    for f in [Field::Weight, Field::Bias] {
        let name = format!("backbone.layers.1.{}", if f == Field::Weight { "weight" } else { "bias" });
        assert_eq!(tensor(&initial, &name), file.read_slot(1, f).unwrap().data, "{name}");
        assert_ne!(tensor(&seeded, &name), tensor(&initial, &name), "{name}: the file differs from the seed");
    }
    assert_eq!(tensor(&initial, "head.weight"), tensor(&seeded, "head.weight"));

    // A member's frozen layer is the file's.
    let mut m = member(&cfg).unwrap();
    let frozen = m.task_mut().model().read_slot(0, Field::Weight).unwrap();
    assert_eq!(frozen.data, file.read_slot(0, Field::Weight).unwrap().data);
    let random = member(&plain).unwrap().task_mut().model().read_slot(0, Field::Weight).unwrap();
    assert_ne!(frozen.data, random.data);

    // One round from the initial model; the frozen layer does not move.
    let s = TrainSettings {
        local_epochs: 2,
        batch_size: 32,
        learning_rate: 0.05,
        proximal_mu: 0.0,
        seed: 5,
        example_weight_cap: 0,
    };
    let update = m.train(&initial, &s, None).unwrap();
    assert_ne!(tensor(&update.params, "head.weight"), tensor(&initial, "head.weight"), "it trained");
    let trained = m.task_mut().model();
    assert_eq!(trained.read_slot(0, Field::Weight).unwrap().data, file.read_slot(0, Field::Weight).unwrap().data);

    // The export from the trained part is, tensor for tensor, the member's
    // model (torch layout: weight [out, in]).
    let (exported, arch) = tessera_aggregator::full_model(&cfg, &update.params).unwrap();
    assert_eq!(arch, "Sequential(Linear(30, 16), ReLU(), Linear(16, 8), ReLU(), Linear(8, 2))");
    for layer in 0..=2 {
        let w = trained.read_slot(layer, Field::Weight).unwrap();
        let (d_in, d_out) = (w.shape[0], w.shape[1]);
        let torch: Vec<f32> =
            (0..d_out).flat_map(|o| (0..d_in).map(move |i| (o, i))).map(|(o, i)| w.data[i * d_out + o]).collect();
        let find = |n: String| exported.iter().find(|t| t.name == n).unwrap().data.clone();
        assert_eq!(find(format!("{}.weight", 2 * layer)), torch, "layer {layer} weight");
        assert_eq!(find(format!("{}.bias", 2 * layer)), trained.read_slot(layer, Field::Bias).unwrap().data);
    }
}

/// A backbone file of the wrong shape stops every party that builds the
/// network, naming the tensor: each of them reads the file.
#[test]
fn every_party_reads_the_pretrained_file() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("narrow.safetensors");
    write_backbone(&ckpt, vec![4, 8]);
    let cfg = model(Some(ckpt.clone()));
    let wrong = |e: String| assert!(e.contains("backbone.layers.0.weight") && e.contains("[30, 4]"), "{e}");

    wrong(format!("{:#}", anyhow::Error::from(member(&cfg).err().expect("the member refuses"))));
    wrong(format!(
        "{:#}",
        anyhow::Error::from(
            tessera_aggregator::daemon::initial_params(&ModelSection::Tabular(cfg.clone()))
                .expect_err("the aggregator refuses")
        )
    ));

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../simulations/hospitals-wdbc.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut s = tessera_sim::Scenario::load(&path).unwrap();
    (s.rounds, s.privacy, s.latency) = (1, None, None);
    s.model = Some(ModelConfig { hidden: vec![16, 8], init_seed: 7, ..cfg });
    let opts = tessera_sim::SimOptions {
        out: dir.path().join("run"),
        transport: tessera_sim::TransportKind::Memory,
        workers: 1,
        progress: false,
        backend: ComputeBackend::Flex,
        report: false,
    };
    let err = tessera_sim::run_scenario(&s, &text, &opts).err().expect("the simulator refuses");
    wrong(format!("{err:#}"));
}
