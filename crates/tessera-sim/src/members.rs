//! The simulated members: one model per member over its share of the
//! scenario's data, tabular (the scenario's table, partitioned and split)
//! or images (the shipped Fashion-MNIST training images, each member a
//! `tessera_vision::VisionModel`, e.g. EfficientNet-Lite0 transfer learning:
//! a frozen pretrained backbone and a trained head).

use anyhow::Context;
use tessera_core::{DpSettings, EvalMetrics, ModelParams, TrainSettings, TrainedUpdate, VisionModelConfig};
use tessera_learn::{ComputeBackend, LocalError, LocalModel};
use tessera_protocol::derive_seed;
use tessera_tabular::{StatisticsSource, TabularModel};
use tessera_vision::{ImageDataset, VisionModel};

use crate::data::{encode, label_counts, member_splits, scenario_partition, table_spec};
use crate::partition::partition;
use crate::run::SimOptions;
use crate::scenario::Scenario;

/// Member `k` of `n`'s name, zero-padded so names sort in index order.
pub(crate) fn member_name(k: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len();
    format!("client-{k:0width$}")
}

/// The index `k` of a name [`member_name`] made.
pub(crate) fn member_index(name: &str) -> Option<usize> {
    name.strip_prefix("client-")?.parse().ok()
}

/// A simulated member's model: tabular, or an image model.
pub(crate) enum SimModel {
    Tabular(Box<TabularModel>),
    Vision(Box<VisionModel>),
}

impl LocalModel for SimModel {
    fn train(
        &mut self,
        model: &ModelParams,
        settings: &TrainSettings,
        dp: Option<&DpSettings>,
    ) -> Result<TrainedUpdate, LocalError> {
        match self {
            SimModel::Tabular(m) => m.train(model, settings, dp),
            SimModel::Vision(m) => m.train(model, settings, dp),
        }
    }

    fn evaluate(&mut self, model: &ModelParams) -> Result<EvalMetrics, LocalError> {
        match self {
            SimModel::Tabular(m) => m.evaluate(model),
            SimModel::Vision(m) => m.evaluate(model),
        }
    }

    fn statistics(
        &mut self,
        release: &tessera_core::StatsRelease,
    ) -> Result<tessera_core::LocalStatistics, LocalError> {
        match self {
            SimModel::Tabular(m) => m.statistics(release),
            SimModel::Vision(m) => m.statistics(release),
        }
    }
}

/// Everything the run needs about its members, whatever the data kind.
pub(crate) struct Members {
    pub(crate) models: Vec<SimModel>,
    /// Training examples per member (latency model).
    pub(crate) examples: Vec<u64>,
    pub(crate) label_counts: Vec<Vec<usize>>,
    pub(crate) class_names: Vec<String>,
}

pub(crate) fn tabular_members(source: &TabularSource) -> anyhow::Result<Members> {
    let models = (0..source.splits.len()).map(|k| source.model(k)).collect::<anyhow::Result<_>>()?;
    Ok(Members {
        models,
        examples: source.examples.clone(),
        label_counts: source.label_counts.clone(),
        class_names: source.class_names.clone(),
    })
}

/// A tabular scenario's members before any is built: the table, each
/// member's rows (its data index) and what a member's model needs. A
/// population run builds a member from it only when a round draws it;
/// every run builds member `k` the same way, so both paths train the same
/// model on the same rows.
pub(crate) struct TabularSource {
    table: tessera_tabular::RawTable,
    spec: tessera_tabular::TabularSpec,
    splits: Vec<tessera_tabular::SplitIndices>,
    model: tessera_core::ModelConfig,
    backend: tessera_learn::ComputeBackend,
    /// With `[statistics]`: the table members count over (shared) and the
    /// folder of their exact reports (`<run dir>/statistics/`).
    statistics: Option<(std::sync::Arc<tessera_tabular::RawTable>, std::path::PathBuf)>,
    /// Training examples per member (latency model).
    pub(crate) examples: Vec<u64>,
    pub(crate) label_counts: Vec<Vec<usize>>,
    pub(crate) class_names: Vec<String>,
}

impl TabularSource {
    pub(crate) fn new(s: &Scenario, opts: &SimOptions) -> anyhow::Result<Self> {
        let table = crate::data::load_table(s)?;
        let parts = scenario_partition(s, &table)?;
        let splits = member_splits(s, &table, &parts)?;
        let statistics = match &s.statistics {
            Some(_) => {
                let dir = opts.out.join("statistics");
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Some((std::sync::Arc::new(table.clone()), dir))
            }
            None => None,
        };
        Ok(Self {
            statistics,
            examples: splits.iter().map(|d| d.train.len() as u64).collect(),
            label_counts: label_counts(&parts, &table.labels, table.num_classes()),
            class_names: table.class_names.clone(),
            spec: table_spec(s),
            table,
            splits,
            model: s.tabular_model()?.clone(),
            backend: opts.backend,
        })
    }

    /// Member `k`'s model over its encoded rows.
    pub(crate) fn model(&self, k: usize) -> anyhow::Result<SimModel> {
        let data = encode(&self.table, &self.spec, &self.splits[k]).with_context(|| format!("client {k}"))?;
        let model = TabularModel::new(data, &self.model, self.backend).with_context(|| format!("client {k}"))?;
        let model = match (&self.statistics, self.spec.declared_schema()?) {
            // Statistics count every row the member holds, whatever its split.
            (Some((table, dir)), Some(schema)) => {
                let split = &self.splits[k];
                let rows = [&split.train, &split.validation, &split.test].into_iter().flatten().copied().collect();
                let report = Some(dir.join(format!("{}.json", member_name(k, self.splits.len()))));
                model.with_statistics_source(StatisticsSource { table: table.clone(), rows, schema, report })
            }
            _ => model,
        };
        Ok(SimModel::Tabular(Box::new(model.with_seeded_noise(true))))
    }

    /// The harness's evaluation of `model` (see `SimResult::harness`): each
    /// member's rows, built afresh, evaluate it on their held-out split; the
    /// example-weighted mean of the reports. The experimenter holds every
    /// member's data, so this measures without the protocol.
    pub(crate) fn harness_eval(&self, model: &ModelParams) -> anyhow::Result<EvalMetrics> {
        let mut reports = Vec::with_capacity(self.splits.len());
        for k in 0..self.splits.len() {
            let mut m = self.model(k)?;
            reports.push(m.evaluate(model).map_err(anyhow::Error::msg).with_context(|| format!("client {k}"))?);
        }
        Ok(EvalMetrics::weighted_mean(&reports))
    }
}

/// An image scenario's partition: the shipped Fashion-MNIST training
/// images, their labels and each member's image indices.
pub fn partition_images(s: &Scenario) -> anyhow::Result<(ImageDataset, Vec<u32>, Vec<Vec<usize>>)> {
    let data = tessera_vision::load_fashion_mnist(&s.data.path, "train")
        .with_context(|| format!("loading {}", s.data.path.display()))?;
    let labels: Vec<u32> = data.labels().iter().map(|l| *l as u32).collect();
    let parts = partition(&s.partition, &labels, data.num_classes(), s.clients, s.seed)?;
    Ok((data, labels, parts))
}

/// An image run's data for the harness's evaluation (`SimResult::harness`):
/// each member's splits, from which a fresh model is built after the run.
pub(crate) struct ImageHarness {
    cfg: VisionModelConfig,
    backend: ComputeBackend,
    splits: Vec<(ImageDataset, ImageDataset)>,
}

impl ImageHarness {
    /// Each member's held-out split evaluates `model` through a model built
    /// afresh (so nothing the run's members kept is reused); the
    /// example-weighted mean of the reports, as for tabular runs.
    pub(crate) fn eval(&self, model: &ModelParams) -> anyhow::Result<EvalMetrics> {
        let mut reports = Vec::with_capacity(self.splits.len());
        for (k, (train, test)) in self.splits.iter().enumerate() {
            let mut m = VisionModel::from_config_on(&self.cfg, train.clone(), test.clone(), self.backend)
                .with_context(|| format!("client {k}"))?;
            reports.push(m.evaluate(model).map_err(anyhow::Error::msg).with_context(|| format!("client {k}"))?);
        }
        Ok(EvalMetrics::weighted_mean(&reports))
    }
}

/// Build the members of an image scenario (`[data] kind = "fashion_mnist_images"`),
/// and what the harness evaluates the final model with.
pub(crate) fn image_members(
    s: &Scenario,
    cfg: &VisionModelConfig,
    opts: &SimOptions,
) -> anyhow::Result<(Members, ImageHarness)> {
    let (data, labels, parts) = partition_images(s)?;
    let mut models = Vec::with_capacity(parts.len());
    let mut examples = Vec::with_capacity(parts.len());
    let mut splits = Vec::with_capacity(parts.len());
    for (k, rows) in parts.iter().enumerate() {
        let local = data.select(rows).with_context(|| format!("client {k}"))?;
        let (train, test) = local
            .stratified_split(s.data.test, derive_seed(s.seed, k as u64, b"split"))
            .with_context(|| format!("client {k}: every member needs examples of every class"))?;
        examples.push(train.len() as u64);
        splits.push((train.clone(), test.clone()));
        let model =
            VisionModel::from_config_on(cfg, train, test, opts.backend).with_context(|| format!("client {k}"))?;
        models.push(SimModel::Vision(Box::new(model.with_seeded_noise(true))));
    }
    let members = Members {
        models,
        examples,
        label_counts: label_counts(&parts, &labels, data.num_classes()),
        class_names: data.class_names().to_vec(),
    };
    Ok((members, ImageHarness { cfg: cfg.clone(), backend: opts.backend, splits }))
}
