//! Bad input gives typed errors that name file, line and column, never a value.

use std::io::Write;
use std::path::PathBuf;

use tessera_tabular::{DataError, Preprocessor, SplitConfig, TabularData, TabularSpec, load_csv, stratified_split};

fn write_csv(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    path
}

const GOOD: &str = "age,city,score,label\n\
    30,\"Paris, FR\",1.5,yes\n\
    40,Lyon,2.5,no\n\
    ,\"Paris, FR\",NA,yes\n\
    50,Nice,3.5,no\n";

fn spec() -> TabularSpec {
    TabularSpec { categorical: vec!["city".into()], ..TabularSpec::new("label") }
}

#[test]
fn quoted_commas_missing_values_and_one_hot() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_csv(&dir, "good.csv", GOOD);
    let table = load_csv(&path, &spec()).unwrap();
    assert_eq!(table.len(), 4);
    assert_eq!(table.class_names, vec!["no", "yes"]);
    assert_eq!(table.labels, vec![1, 0, 1, 0]);
    // Fit on rows 0..3 only: city categories {Lyon, "Paris, FR"}; "Nice" is unseen.
    let pre = Preprocessor::fit(&table, &[0, 1, 2], true);
    // age (+indicator: missing in training) + 2 city + score (+indicator).
    assert_eq!(pre.num_features(), 2 + 2 + 2);
    let ds = pre.transform(&table, &[0, 1, 2, 3]);
    // Row 0: age 30 with training mean 35, std 5 -> -1; not missing; city "Paris, FR" -> [0, 1].
    assert_eq!(&ds.row(0)[..4], &[-1.0, 0.0, 0.0, 1.0]);
    // Row 2: missing age -> mean -> 0 with indicator 1; missing score -> indicator 1.
    assert_eq!(ds.row(2)[0], 0.0);
    assert_eq!(ds.row(2)[1], 1.0);
    assert_eq!(ds.row(2)[5], 1.0);
    // Row 3: unseen city -> all zeros; age 50 -> (50-35)/5 = 3 (fitted on training rows only).
    assert_eq!(&ds.row(3)[..4], &[3.0, 0.0, 0.0, 0.0]);
}

#[test]
fn missing_file_is_typed() {
    let err = load_csv(&PathBuf::from("/nonexistent/tessera.csv"), &spec()).unwrap_err();
    assert!(matches!(err, DataError::FileNotFound { .. }), "{err}");
}

#[test]
fn misspelled_column_suggests_the_closest_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_csv(&dir, "good.csv", GOOD);
    let err = load_csv(&path, &TabularSpec::new("lable")).unwrap_err();
    match &err {
        DataError::MissingColumn { column, suggestion, .. } => {
            assert_eq!(column, "lable");
            assert_eq!(suggestion.as_deref(), Some("label"));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("did you mean `label`"));
    let err = load_csv(&path, &TabularSpec { features: Some(vec!["zzzzzz".into()]), ..spec() }).unwrap_err();
    assert!(matches!(err, DataError::MissingColumn { suggestion: None, .. }), "{err}");
}

#[test]
fn non_numeric_value_names_line_and_column_but_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_csv(&dir, "bad.csv", "age,city,score,label\n30,Lyon,1,yes\n31,Lyon,secret-42,no\n");
    let err = load_csv(&path, &spec()).unwrap_err();
    match &err {
        DataError::NonNumeric { line, column, file } => {
            assert_eq!(*line, 3);
            assert_eq!(column, "score");
            assert_eq!(file, &path);
        }
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("line 3") && msg.contains("score"), "{msg}");
    assert!(!msg.contains("secret"), "error echoes a cell value: {msg}");
}

#[test]
fn ragged_row_and_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_csv(&dir, "ragged.csv", "a,label\n1,yes\n2\n");
    let err = load_csv(&path, &TabularSpec::new("label")).unwrap_err();
    assert!(matches!(err, DataError::RaggedRow { line: 3, expected: 2, found: 1, .. }), "{err}");
    let path = write_csv(&dir, "empty.csv", "a,label\n");
    assert!(matches!(load_csv(&path, &TabularSpec::new("label")), Err(DataError::Empty { .. })));
}

#[test]
fn class_without_examples_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_csv(&dir, "good.csv", GOOD);
    let spec = TabularSpec { classes: Some(vec!["no".into(), "yes".into(), "maybe".into()]), ..spec() };
    let err = load_csv(&path, &spec).unwrap_err();
    assert!(matches!(&err, DataError::EmptyClass { class, split: None } if class == "maybe"), "{err}");
    // A single class is not a classification task.
    let one = write_csv(&dir, "one.csv", "a,label\n1,yes\n2,yes\n");
    assert!(matches!(load_csv(&one, &TabularSpec::new("label")), Err(DataError::TooFewClasses { found: 1, .. })));
    // A class too rare to reach the training split (nearly every row tests).
    let rare = write_csv(&dir, "rare.csv", "a,label\n1,yes\n2,yes\n3,yes\n4,no\n");
    let split = SplitConfig { validation: 0.0, test: 0.99, seed: 1 };
    let err = TabularData::load(&rare, &TabularSpec::new("label"), &split).unwrap_err();
    // Classes not configured: named by index, since "no" is a value read from the file.
    assert!(matches!(&err, DataError::EmptyClass { class, split: Some("train") } if class == "#0"), "{err}");
}

#[test]
fn unknown_and_missing_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_csv(&dir, "lab.csv", "a,label\n1,yes\n2,\n");
    assert!(matches!(load_csv(&path, &TabularSpec::new("label")), Err(DataError::MissingLabel { line: 3, .. })));
    let path = write_csv(&dir, "lab2.csv", "a,label\n1,yes\n2,no\n3,other\n");
    let spec = TabularSpec { classes: Some(vec!["no".into(), "yes".into()]), ..TabularSpec::new("label") };
    assert!(matches!(load_csv(&path, &spec), Err(DataError::UnknownClass { line: 4, .. })));
}

#[test]
fn stratified_split_keeps_proportions_and_is_seeded() {
    let labels: Vec<u32> = (0..100).map(|i| u32::from(i % 4 == 0)).collect(); // 25 ones
    let cfg = SplitConfig { validation: 0.2, test: 0.2, seed: 7 };
    let a = stratified_split(&labels, 2, &cfg).unwrap();
    assert_eq!(a, stratified_split(&labels, 2, &cfg).unwrap());
    assert_ne!(a, stratified_split(&labels, 2, &SplitConfig { seed: 8, ..cfg }).unwrap());
    let ones = |rows: &[usize]| rows.iter().filter(|&&r| labels[r] == 1).count();
    assert_eq!((a.test.len(), ones(&a.test)), (20, 5));
    assert_eq!((a.validation.len(), ones(&a.validation)), (20, 5));
    assert_eq!((a.train.len(), ones(&a.train)), (60, 15));
    let mut all: Vec<usize> = a.train.iter().chain(&a.validation).chain(&a.test).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert!(stratified_split(&labels, 2, &SplitConfig { validation: 0.6, test: 0.5, seed: 0 }).is_err());
}
