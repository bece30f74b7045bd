//! Loading a scenario's data set as one table: a CSV file (the default), or
//! the shipped Fashion-MNIST subset as pixel features (both of its splits
//! pooled, average-pooled to a small grid) for cross-device scale runs with
//! a small MLP.

use std::path::Path;

use anyhow::Context;
use tessera_tabular::data::{RawColumn, RawTable, load_csv};

use crate::scenario::{DataKind, Scenario};

/// The whole data set the members' partitions come from.
pub fn load_table(s: &Scenario) -> anyhow::Result<RawTable> {
    match s.data.kind {
        DataKind::Csv => load_csv(&s.data.path, &crate::run::table_spec(s))
            .with_context(|| format!("loading {}", s.data.path.display())),
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
