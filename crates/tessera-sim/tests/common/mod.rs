//! What the simulator's test files share: the shipped WDBC table and a
//! small scenario over it.

use std::path::{Path, PathBuf};

/// The shipped WDBC table (`examples/data/wdbc.csv`).
pub fn wdbc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/wdbc.csv").canonicalize().unwrap()
}

/// The text of a small WDBC scenario (a one-hidden-layer MLP, SecAgg with
/// threshold 0.5); `extra` is appended (dropout, latency, privacy…).
pub fn wdbc_scenario(name: &str, seed: u64, clients: usize, rounds: u64, min_clients: u32, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
seed = {seed}
clients = {clients}
rounds = {rounds}
min_clients = {min_clients}
max_round_retries = 100

[data]
path = "{data}"
label = "diagnosis"
classes = ["benign", "malignant"]
schema = "{schema}"

[model]
num_features = 30
num_classes = 2
hidden = [4]
trainable = {{ kind = "all" }}
init_seed = 7

[train]
local_epochs = 1
batch_size = 32
learning_rate = 0.1

[secure]
threshold_fraction = 0.5
{extra}
"#,
        data = wdbc().display(),
        schema = wdbc().with_file_name("wdbc.schema.toml").display(),
    )
}
