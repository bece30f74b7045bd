//! A scenario's tabular data: loading it as one table (a CSV file, the
//! default, or the shipped Fashion-MNIST subset as pixel features, both of
//! its splits pooled and average-pooled to a small grid, for cross-device
//! scale runs with a small MLP), partitioning it among the members, and
//! each member's encoded splits.

use std::path::Path;

use anyhow::Context;
use tessera_core::SchemaSource;
use tessera_protocol::derive_seed;
use tessera_tabular::{
    RawColumn, RawTable, SplitConfig, SplitIndices, TabularData, TabularSpec, hashed_split, load_csv,
};

use crate::partition::{Partitioner, partition, partition_by_groups};
use crate::scenario::{DataKind, Scenario};

/// The whole data set the members' partitions come from.
pub fn load_table(s: &Scenario) -> anyhow::Result<RawTable> {
    match s.data.kind {
        DataKind::Csv => {
            load_csv(&s.data.path, &table_spec(s)).with_context(|| format!("loading {}", s.data.path.display()))
        }
        DataKind::FashionMnistPixels => fashion_pixels(&s.data.path, s.data.pool, s.data.positive_classes.as_deref()),
        DataKind::FashionMnistImages => anyhow::bail!("image data is not a table (use the scenario's vision members)"),
    }
}

/// Fashion-MNIST (`train` and `t10k` pooled) as `pool`×`pool`-averaged
/// pixel columns. With `positive`, the task becomes binary: those classes
/// against the rest (every member then can hold both classes).
fn fashion_pixels(dir: &Path, pool: usize, positive: Option<&[usize]>) -> anyhow::Result<RawTable> {
    let mut sets = Vec::new();
    for split in ["train", "t10k"] {
        sets.push(tessera_vision::load_fashion_mnist(dir, split).with_context(|| format!("{}", dir.display()))?);
    }
    let (_, h, w) = sets[0].image_shape();
    anyhow::ensure!(pool >= 1 && h % pool == 0 && w % pool == 0, "data.pool must divide {h}x{w}");
    let (gh, gw) = (h / pool, w / pool);
    let mut cols: Vec<Vec<Option<f64>>> = vec![Vec::new(); gh * gw];
    let mut labels = Vec::new();
    for set in &sets {
        for (i, label) in set.labels().iter().enumerate() {
            let img = set.image(i).context("image index")?;
            for gy in 0..gh {
                for gx in 0..gw {
                    let mut sum = 0.0f64;
                    for y in gy * pool..(gy + 1) * pool {
                        for x in gx * pool..(gx + 1) * pool {
                            sum += img[y * w + x] as f64;
                        }
                    }
                    cols[gy * gw + gx].push(Some(sum / (pool * pool) as f64));
                }
            }
            labels.push(match positive {
                Some(p) => u32::from(p.contains(label)),
                None => *label as u32,
            });
        }
    }
    let class_names = match positive {
        Some(_) => vec!["other".to_string(), "positive".to_string()],
        None => sets[0].class_names().to_vec(),
    };
    let columns =
        cols.into_iter().enumerate().map(|(i, values)| RawColumn::Numeric { name: format!("px{i}"), values }).collect();
    Ok(RawTable { file: dir.to_path_buf(), columns, labels, class_names })
}

/// The table spec a scenario's data section describes. A natural id
/// column is never a feature (a member's own id says nothing).
pub(crate) fn table_spec(s: &Scenario) -> TabularSpec {
    let mut ignore = s.data.ignore.clone();
    if let Partitioner::Column { column } = &s.partition
        && !ignore.contains(column)
    {
        ignore.push(column.clone());
    }
    TabularSpec {
        label: s.data.label.clone(),
        features: None,
        ignore,
        categorical: s.data.categorical.clone(),
        classes: s.data.classes.clone(),
        missing_indicators: true,
        // `Scenario::validate` refuses a tabular scenario without one.
        schema: s.data.schema.clone().unwrap_or(SchemaSource::FitLocally),
    }
}

/// Example indices of each member's partition of `table`.
pub fn scenario_partition(s: &Scenario, table: &RawTable) -> anyhow::Result<Vec<Vec<usize>>> {
    match &s.partition {
        Partitioner::Column { column } => {
            // Read the id column as if it were the label: its distinct
            // values, sorted, are the members.
            let spec = TabularSpec {
                label: column.clone(),
                features: Some(vec![s.data.label.clone()]),
                ignore: vec![],
                categorical: vec![s.data.label.clone()],
                classes: None,
                missing_indicators: false,
                schema: SchemaSource::FitLocally,
            };
            let ids = load_csv(&s.data.path, &spec).with_context(|| format!("reading id column `{column}`"))?;
            Ok(partition_by_groups(column, &ids.labels, ids.num_classes(), s.clients)?)
        }
        how => Ok(partition(how, &table.labels, table.num_classes(), s.clients, s.seed)?),
    }
}

/// Each member's train/validation/test rows (indices into the table), split
/// as a member splits its own file: by a keyed hash of each row.
pub fn member_splits(s: &Scenario, table: &RawTable, parts: &[Vec<usize>]) -> anyhow::Result<Vec<SplitIndices>> {
    parts
        .iter()
        .enumerate()
        .map(|(k, rows)| {
            let cfg = SplitConfig {
                validation: s.data.validation,
                test: s.data.test,
                seed: derive_seed(s.seed, k as u64, b"split"),
            };
            hashed_split(table, rows, &cfg).with_context(|| format!("client {k}"))
        })
        .collect()
}

/// Rows `idx` of `table` as a member's data, encoded as the scenario's schema says.
pub(crate) fn encode(table: &RawTable, spec: &TabularSpec, idx: &SplitIndices) -> anyhow::Result<TabularData> {
    Ok(TabularData::from_indices(table, spec, idx)?)
}

/// Each simulated member's local splits, from its partition `parts` of the table.
pub(crate) fn member_data(s: &Scenario, table: &RawTable, parts: &[Vec<usize>]) -> anyhow::Result<Vec<TabularData>> {
    let spec = table_spec(s);
    member_splits(s, table, parts)?
        .iter()
        .enumerate()
        .map(|(k, idx)| encode(table, &spec, idx).with_context(|| format!("client {k}")))
        .collect()
}

/// Examples per class in each part.
pub(crate) fn label_counts(parts: &[Vec<usize>], labels: &[u32], classes: usize) -> Vec<Vec<usize>> {
    parts
        .iter()
        .map(|p| {
            let mut c = vec![0usize; classes];
            p.iter().for_each(|i| c[labels[*i] as usize] += 1);
            c
        })
        .collect()
}
