//! The simulated members: one model per member over its share of the
//! scenario's data, tabular (the scenario's table, partitioned and split)
//! or images (the shipped Fashion-MNIST training images, each member a
//! `tessera_vision::VisionModel`, e.g. EfficientNet-Lite0 transfer learning:
//! a frozen pretrained backbone and a trained head).

use anyhow::Context;
use tessera_core::{DpSettings, EvalMetrics, ModelParams, TrainSettings, TrainedUpdate, VisionModelConfig};
use tessera_learn::{LocalError, LocalModel};
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

/// Every member of a scenario before any is built, whatever the data kind:
/// the data, each member's share of it, and how to build member `k`. A run
/// builds all of them, a population run only those a round draws, a worker
/// process only its range; all build member `k` the same way, so every path
/// trains the same model on the same rows.
pub(crate) enum MemberSource {
    /// Rows of the scenario's table.
    Tabular(TabularSource),
    /// The shipped Fashion-MNIST training images.
    Image(ImageSource),
}

impl MemberSource {
    pub(crate) fn new(s: &Scenario, opts: &SimOptions) -> anyhow::Result<Self> {
        Ok(match &s.vision_model {
            Some(cfg) => Self::Image(ImageSource::new(s, cfg, opts)?),
            None => Self::Tabular(TabularSource::new(s, opts)?),
        })
    }

    /// Member `k`'s model over its own data.
    pub(crate) fn model(&self, k: usize) -> anyhow::Result<SimModel> {
        match self {
            Self::Tabular(t) => t.model(k),
            Self::Image(i) => i.model(k),
        }
    }

    /// Every member's model, in index order.
    pub(crate) fn build_all(&self) -> anyhow::Result<Vec<SimModel>> {
        (0..self.examples().len()).map(|k| self.model(k)).collect()
    }

    /// The harness's evaluation of `model` (see `SimResult::harness`): each
    /// member, built afresh, evaluates it on its held-out split; the
    /// example-weighted mean of the reports. The experimenter holds every
    /// member's data, so this measures without the protocol.
    pub(crate) fn harness_eval(&self, model: &ModelParams) -> anyhow::Result<EvalMetrics> {
        let mut reports = Vec::with_capacity(self.examples().len());
        for k in 0..self.examples().len() {
            let mut m = self.model(k)?;
            reports.push(m.evaluate(model).map_err(anyhow::Error::msg).with_context(|| format!("client {k}"))?);
        }
        Ok(EvalMetrics::weighted_mean(&reports))
    }

    /// Training examples per member (the latency model's input).
    pub(crate) fn examples(&self) -> &[u64] {
        match self {
            Self::Tabular(t) => &t.examples,
            Self::Image(i) => &i.examples,
        }
    }

    /// Examples of each class per member (the report's label plot).
    pub(crate) fn label_counts(&self) -> &[Vec<usize>] {
        match self {
            Self::Tabular(t) => &t.label_counts,
            Self::Image(i) => &i.label_counts,
        }
    }

    /// The classes' names, in label order.
    pub(crate) fn class_names(&self) -> &[String] {
        match self {
            Self::Tabular(t) => &t.class_names,
            Self::Image(i) => &i.class_names,
        }
    }
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

/// An image scenario's members before any is built: the images, each
/// member's indices into them and the model they train.
pub(crate) struct ImageSource {
    data: ImageDataset,
    parts: Vec<Vec<usize>>,
    cfg: VisionModelConfig,
    backend: tessera_learn::ComputeBackend,
    test: f64,
    seed: u64,
    examples: Vec<u64>,
    label_counts: Vec<Vec<usize>>,
    class_names: Vec<String>,
}

impl ImageSource {
    fn new(s: &Scenario, cfg: &VisionModelConfig, opts: &SimOptions) -> anyhow::Result<Self> {
        let (data, labels, parts) = partition_images(s)?;
        let mut source = Self {
            label_counts: label_counts(&parts, &labels, data.num_classes()),
            class_names: data.class_names().to_vec(),
            data,
            parts,
            cfg: cfg.clone(),
            backend: opts.backend,
            test: s.data.test,
            seed: s.seed,
            examples: Vec::new(),
        };
        source.examples =
            (0..source.parts.len()).map(|k| Ok(source.split(k)?.0.len() as u64)).collect::<anyhow::Result<_>>()?;
        Ok(source)
    }

    /// Member `k`'s images, split into train and test by its own seed.
    fn split(&self, k: usize) -> anyhow::Result<(ImageDataset, ImageDataset)> {
        let local = self.data.select(&self.parts[k]).with_context(|| format!("client {k}"))?;
        local
            .stratified_split(self.test, derive_seed(self.seed, k as u64, b"split"))
            .with_context(|| format!("client {k}: every member needs examples of every class"))
    }

    /// Member `k`'s image model (its features are extracted on first use).
    fn model(&self, k: usize) -> anyhow::Result<SimModel> {
        let (train, test) = self.split(k)?;
        let model =
            VisionModel::from_config_on(&self.cfg, train, test, self.backend).with_context(|| format!("client {k}"))?;
        Ok(SimModel::Vision(Box::new(model.with_seeded_noise(true))))
    }
}
