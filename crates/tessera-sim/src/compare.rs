//! `tessera-sim compare`: the same data and model as a scenario, five ways.
//! Centralized (all members' training rows pooled, no privacy), local only
//! (each member alone on its own rows), federated without DP, federated
//! with DP at the scenario's budget, and federated + personalized (each
//! member fine-tunes the last federated run's final model on its own rows,
//! as `tessera-client personalize` does). Centralized and local train the
//! same model with `tessera-learn` directly for `rounds × local_epochs`
//! epochs; the federated rows are full simulator runs.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use tessera_client::LocalModel;
use tessera_core::{EvalMetrics, ModelParams};
use tessera_tabular::{SplitIndices, TabularData, TabularModel};

use crate::data::{member_splits, scenario_partition, table_spec};
use crate::run::{SimOptions, run_scenario};
use crate::scenario::Scenario;

/// One row of the comparison table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    /// Which baseline, in words.
    pub setting: String,
    /// Accuracy on the members' test splits (for federated rows, the
    /// harness's evaluation of the final model, `SimResult::harness`).
    pub accuracy: f64,
    /// ROC AUC on the same examples.
    pub auc: f64,
    /// Privacy spent (federated with DP only).
    pub epsilon: Option<f64>,
    /// Bytes each member sent over the run (federated rows only).
    pub bytes_per_client: Option<u64>,
    /// Wall-clock seconds the setting took.
    pub wall_seconds: f64,
}

/// Train `data` alone from the scenario's initial model, evaluate on its test split.
fn train_alone(s: &Scenario, data: TabularData, opts: &SimOptions) -> anyhow::Result<EvalMetrics> {
    let mut model = TabularModel::new(data, s.tabular_model()?, opts.backend)?;
    let mut params = tessera_aggregator::daemon::initial_params(&s.model_section()?)?;
    let mut settings = s.train.settings();
    for round in 1..=s.rounds {
        settings.seed = tessera_protocol::derive_seed(s.seed, round, b"compare");
        params = model.train(&params, &settings, None).map_err(anyhow::Error::msg)?.params;
    }
    model.evaluate(&params).map_err(anyhow::Error::msg)
}

/// Every member fine-tunes `global` on its own train split (one round of its
/// usual local training, without DP: the result never leaves it) and is
/// evaluated on its own test split.
fn personalized(
    s: &Scenario,
    members: Vec<TabularData>,
    global: &ModelParams,
    opts: &SimOptions,
) -> anyhow::Result<Vec<EvalMetrics>> {
    let mut settings = s.train.settings();
    let mut out = Vec::with_capacity(members.len());
    for (k, data) in members.into_iter().enumerate() {
        let mut model = TabularModel::new(data, s.tabular_model()?, opts.backend)?;
        settings.seed = tessera_protocol::derive_seed(s.seed, k as u64, b"personalize");
        let tuned = model.train(global, &settings, None).map_err(anyhow::Error::msg)?.params;
        out.push(
            model.evaluate(&tuned).map_err(anyhow::Error::msg).with_context(|| format!("client {k} personalized"))?,
        );
    }
    Ok(out)
}

/// Run the five settings; each federated run writes its own run directory
/// under `opts.out` (`federated`, `federated-dp`).
pub fn compare(s: &Scenario, scenario_text: &str, opts: &SimOptions) -> anyhow::Result<Vec<Row>> {
    let spec = table_spec(s);
    let table = crate::data::load_table(s)?;
    let parts = scenario_partition(s, &table)?;
    let splits = member_splits(s, &table, &parts)?;
    let mut rows = Vec::new();

    let t = Instant::now();
    let union = |f: fn(&SplitIndices) -> &Vec<usize>| splits.iter().flat_map(|x| f(x).iter().copied()).collect();
    let pooled =
        SplitIndices { train: union(|x| &x.train), validation: union(|x| &x.validation), test: union(|x| &x.test) };
    let m = train_alone(s, crate::data::encode(&table, &spec, &pooled)?, opts)?;
    rows.push(Row {
        setting: "centralized (pooled, no privacy)".into(),
        accuracy: m.accuracy,
        auc: m.auc,
        epsilon: None,
        bytes_per_client: None,
        wall_seconds: t.elapsed().as_secs_f64(),
    });

    let t = Instant::now();
    let mut local = Vec::new();
    for (k, data) in crate::data::member_data(s, &table, &parts)?.into_iter().enumerate() {
        local.push(train_alone(s, data, opts).with_context(|| format!("client {k} alone"))?);
    }
    let wall = t.elapsed().as_secs_f64();
    let n = local.len() as f64;
    rows.push(Row {
        setting: "local only (mean over members)".into(),
        accuracy: local.iter().map(|m| m.accuracy).sum::<f64>() / n,
        auc: local.iter().map(|m| m.auc).sum::<f64>() / n,
        epsilon: None,
        bytes_per_client: None,
        wall_seconds: wall,
    });
    let worst = local.iter().min_by(|a, b| a.accuracy.total_cmp(&b.accuracy)).context("no members")?;
    rows.push(Row {
        setting: "local only (worst member)".into(),
        accuracy: worst.accuracy,
        auc: worst.auc,
        epsilon: None,
        bytes_per_client: None,
        wall_seconds: wall,
    });

    let mut last_run = None;
    let mut federated = |name: &str, dir: &str, sc: &Scenario| -> anyhow::Result<()> {
        let o = SimOptions { out: opts.out.join(dir), ..opts.clone() };
        let r = run_scenario(sc, scenario_text, &o).with_context(|| name.to_string())?;
        let last = r.records.iter().rev().find(|x| x.accepted).cloned().unwrap_or_default();
        let measured = r.harness.clone().context("a tabular run has the harness's evaluation")?;
        rows.push(Row {
            setting: name.into(),
            accuracy: measured.accuracy,
            auc: measured.auc,
            epsilon: last.epsilon,
            bytes_per_client: Some(r.records.iter().map(|x| x.bytes_up).sum::<u64>() / sc.clients as u64),
            wall_seconds: r.wall_seconds,
        });
        last_run = Some((sc.clone(), r, o.out));
        Ok(())
    };
    let plain = Scenario { privacy: None, ..s.clone() };
    federated("federated, secure aggregation, no DP", "federated", &plain)?;
    if let Some(p) = &s.privacy {
        let name = format!("federated, secure aggregation, DP (epsilon {})", p.epsilon);
        federated(&name, "federated-dp", s)?;
    }
    if let Some((sc, r, _)) = &last_run {
        let t = Instant::now();
        let tuned = personalized(sc, crate::data::member_data(s, &table, &parts)?, &r.final_model, opts)?;
        let n = tuned.len().max(1) as f64;
        let from = rows.last().cloned().context("a federated row")?;
        rows.push(Row {
            setting: "federated + personalized (mean over members)".into(),
            accuracy: tuned.iter().map(|m| m.accuracy).sum::<f64>() / n,
            auc: tuned.iter().map(|m| m.auc).sum::<f64>() / n,
            // It starts from the last federated row's model and releases nothing more.
            epsilon: from.epsilon,
            bytes_per_client: from.bytes_per_client,
            wall_seconds: from.wall_seconds + t.elapsed().as_secs_f64(),
        });
    }
    // The table goes into compare.md and into the report of the scenario's
    // own setting (the last federated run).
    let text = format!("## Baselines (`tessera-sim compare`)\n\n{}", self::table(&rows));
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(opts.out.join("compare.md"), &text)?;
    std::fs::write(opts.out.join("compare.json"), serde_json::to_string_pretty(&rows)?)?;
    if let Some((sc, r, dir)) = last_run {
        crate::report::write_report(&dir, &sc, &r, Some(&text))?;
    }
    Ok(rows)
}

/// The comparison as a Markdown table (also what the CLI prints).
pub fn table(rows: &[Row]) -> String {
    let mut m = String::from("| setting | accuracy | AUC | epsilon | bytes sent per member | wall time (s) |\n");
    m.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            m,
            "| {} | {:.4} | {:.4} | {} | {} | {:.2} |",
            r.setting,
            r.accuracy,
            r.auc,
            r.epsilon.map_or("-".into(), |e| format!("{e:.3}")),
            r.bytes_per_client.map_or("-".into(), |b| b.to_string()),
            r.wall_seconds
        );
    }
    m
}
