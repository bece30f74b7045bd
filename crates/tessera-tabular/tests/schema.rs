//! A declared schema makes a record's encoding, the feature count and the
//! split a function of that record alone: neighbouring data sets (one record
//! added, with an extreme value and an unseen category) agree on everything
//! about every other record.

use std::path::{Path, PathBuf};

use tessera_core::{FeatureDecl, FeatureSchema, SchemaSource};
use tessera_tabular::{SplitConfig, TabularData, TabularSpec, hashed_split, load_csv, load_schema, shipped_data_path};

fn credit_spec(schema: SchemaSource) -> TabularSpec {
    TabularSpec { classes: Some(vec!["bad".into(), "good".into()]), schema, ..TabularSpec::new("creditability") }
}

fn declared() -> SchemaSource {
    SchemaSource::File(shipped_data_path("germancredit.schema.toml"))
}

/// The interval each encoded column of `schema` lies in: a numeric feature
/// clamped to `[min, max]` and scaled, a 0/1 indicator or one-hot column.
fn encoded_bounds(schema: &FeatureSchema) -> Vec<(f32, f32)> {
    let mut out = Vec::new();
    for f in &schema.features {
        match f {
            FeatureDecl::Numeric { min, max, center, scale, missing_indicator, .. } => {
                out.push((((min - center) / scale) as f32, ((max - center) / scale) as f32));
                if *missing_indicator {
                    out.push((0.0, 1.0));
                }
            }
            FeatureDecl::Categorical { .. } => out.extend(std::iter::repeat_n((0.0, 1.0), f.width())),
        }
    }
    out
}

/// The encoded column of the numeric feature `name`.
fn column_of(schema: &FeatureSchema, name: &str) -> usize {
    let at = schema.features.iter().position(|f| f.name() == name).unwrap();
    schema.features[..at].iter().map(FeatureDecl::width).sum()
}

/// German Credit plus one applicant who borrows a billion DM for a purpose
/// the schema has never heard of.
fn neighbour(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(shipped_data_path("germancredit.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let first = text.lines().nth(1).unwrap();
    let mut row = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(first.as_bytes())
        .records()
        .next()
        .unwrap()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    row[col("credit_amount")] = "1000000000".into();
    row[col("purpose")] = "a spaceship".into();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&row).unwrap();
    let extra = String::from_utf8(w.into_inner().unwrap()).unwrap();
    let path = dir.join("neighbour.csv");
    std::fs::write(&path, format!("{}{extra}", if text.ends_with('\n') { text } else { text + "\n" })).unwrap();
    path
}

#[test]
fn neighbouring_data_sets_agree_on_every_other_record() {
    let dir = tempfile::tempdir().unwrap();
    let spec = credit_spec(declared());
    let split = SplitConfig { validation: 0.1, test: 0.25, seed: 42 };
    let d = load_csv(&shipped_data_path("germancredit.csv"), &spec).unwrap();
    let d2 = load_csv(&neighbour(dir.path()), &spec).unwrap();
    assert_eq!(d2.len(), d.len() + 1);
    let (a, b) =
        (TabularData::from_table(&d, &spec, &split).unwrap(), TabularData::from_table(&d2, &spec, &split).unwrap());

    // The same feature count, the one the schema declares, and the same encoding.
    let width = load_schema(&shipped_data_path("germancredit.schema.toml")).unwrap().width();
    assert_eq!((a.train.num_features, b.train.num_features), (width, width));
    assert_eq!(a.preprocessor, b.preprocessor);

    // The same split for every other record.
    let all = |n: usize| (0..n).collect::<Vec<_>>();
    let (sa, sb) =
        (hashed_split(&d, &all(d.len()), &split).unwrap(), hashed_split(&d2, &all(d2.len()), &split).unwrap());
    let old = |v: &[usize]| v.iter().copied().filter(|&r| r < d.len()).collect::<Vec<_>>();
    assert_eq!((old(&sb.train), old(&sb.validation), old(&sb.test)), (sa.train.clone(), sa.validation, sa.test));

    // Every other record encodes exactly as before.
    let before = a.preprocessor.transform(&d, &all(d.len()));
    let after = b.preprocessor.transform(&d2, &all(d.len()));
    assert_eq!(before, after);

    // The new record: its amount clamped to the schema's bound, its purpose
    // in the `other` column, every value within the schema's bounds.
    let new = b.preprocessor.transform(&d2, &[d.len()]);
    let row = new.row(0);
    let schema = load_schema(&shipped_data_path("germancredit.schema.toml")).unwrap();
    let bounds = encoded_bounds(&schema);
    assert!(row.iter().zip(&bounds).all(|(v, (lo, hi))| (lo - 1e-6..=hi + 1e-6).contains(v)), "{row:?}");
    let amount = column_of(&schema, "credit_amount");
    assert!((row[amount] - bounds[amount].1).abs() <= 1e-6, "the amount sits at the bound: {row:?}");
    let first = a.preprocessor.transform(&d, &[0]);
    let differs: Vec<usize> = (0..width).filter(|&k| first.row(0)[k] != row[k]).collect();
    // Exactly three columns moved: the amount, the declared purpose that the
    // first applicant had (now 0), and `other` (now 1).
    assert_eq!(differs.len(), 3, "{differs:?}");
}

/// The same neighbour under the non-private opt-in: fitting on local rows
/// lets the one record change the feature count and every other record's
/// features. This is what the declared schema removes.
#[test]
fn fitting_locally_lets_one_record_move_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let categorical = load_schema(&shipped_data_path("germancredit.schema.toml"))
        .unwrap()
        .features
        .iter()
        .filter(|f| matches!(f, FeatureDecl::Categorical { .. }))
        .map(|f| f.name().to_string())
        .collect();
    let spec = TabularSpec { categorical, ..credit_spec(SchemaSource::FitLocally) };
    let split = SplitConfig { validation: 0.0, test: 0.0, seed: 1 };
    let a = TabularData::load(&shipped_data_path("germancredit.csv"), &spec, &split).unwrap();
    let b = TabularData::load(&neighbour(dir.path()), &spec, &split).unwrap();
    assert_eq!(b.train.num_features, a.train.num_features + 1, "an unseen category widens the encoding");
    assert_ne!(a.preprocessor, b.preprocessor);
}

#[test]
fn the_shipped_schemas_match_the_shipped_files() {
    let wdbc = TabularSpec {
        classes: Some(vec!["benign".into(), "malignant".into()]),
        schema: SchemaSource::File(shipped_data_path("wdbc.schema.toml")),
        ..TabularSpec::new("diagnosis")
    };
    let data = TabularData::load(&shipped_data_path("wdbc.csv"), &wdbc, &SplitConfig::default()).unwrap();
    assert_eq!(data.train.num_features, 30);
    let bounds = encoded_bounds(&load_schema(&shipped_data_path("wdbc.schema.toml")).unwrap());
    for r in 0..data.train.len() {
        let row = data.train.row(r);
        assert!(row.iter().zip(&bounds).all(|(v, (lo, hi))| (lo - 1e-6..=hi + 1e-6).contains(v)), "{row:?}");
    }
    let credit =
        TabularData::load(&shipped_data_path("germancredit.csv"), &credit_spec(declared()), &SplitConfig::default())
            .unwrap();
    assert_eq!(credit.train.num_features, 74);
    // Every shipped applicant's categories are in the vocabulary: no `other` column is set.
    let schema = load_schema(&shipped_data_path("germancredit.schema.toml")).unwrap();
    let mut k = 0;
    for f in &schema.features {
        k += f.width();
        if let FeatureDecl::Categorical { .. } = f {
            assert!((0..credit.train.len()).all(|r| credit.train.row(r)[k - 1] == 0.0), "{}", f.name());
        }
    }
}

#[test]
fn a_declared_schema_refuses_feature_lists_and_mismatched_files() {
    let spec = TabularSpec { categorical: vec!["purpose".into()], ..credit_spec(declared()) };
    let err = load_csv(&shipped_data_path("germancredit.csv"), &spec).unwrap_err().to_string();
    assert!(err.contains("schema"), "{err}");
    // The WDBC schema names columns German Credit does not have.
    let wrong = credit_spec(SchemaSource::File(shipped_data_path("wdbc.schema.toml")));
    let err = load_csv(&shipped_data_path("germancredit.csv"), &wrong).unwrap_err().to_string();
    assert!(err.contains("mean radius"), "{err}");
    // A schema file that is not one names the file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.schema.toml");
    std::fs::write(&bad, "[[features]]\ntype = \"numeric\"\nname = \"x\"\nmin = 0.0\n").unwrap();
    let err = load_schema(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.schema.toml") && err.contains("max"), "{err}");
}

/// A member whose few rows all train (the hash split has no per-class
/// quota) reports zero test examples instead of failing its evaluation.
#[test]
fn an_empty_test_split_reports_zero_examples() {
    let spec = TabularSpec {
        classes: Some(vec!["benign".into(), "malignant".into()]),
        schema: SchemaSource::File(shipped_data_path("wdbc.schema.toml")),
        ..TabularSpec::new("diagnosis")
    };
    let split = SplitConfig { validation: 0.0, test: 0.0, seed: 3 };
    let data = TabularData::load(&shipped_data_path("wdbc.csv"), &spec, &split).unwrap();
    assert!(data.test.is_empty());
    let model = tessera_core::ModelConfig {
        hidden: vec![4],
        num_features: 30,
        num_classes: 2,
        trainable: tessera_core::TrainableConfig::All,
        init_seed: 1,
        pretrained: None,
    };
    let mut m = tessera_tabular::TabularModel::new(data, &model, tessera_learn::ComputeBackend::default()).unwrap();
    let params = tessera_tabular::initial_trainable_params(&model).unwrap();
    let r = tessera_learn::LocalModel::evaluate(&mut m, &params).unwrap();
    assert_eq!((r.num_examples, r.confusion.iter().flatten().sum::<u64>()), (0, 0));
    assert!(r.loss == 0.0 && [r.accuracy, r.balanced_accuracy, r.auc, r.f1].iter().all(|x| (0.0..=1.0).contains(x)));
}
