//! `tessera-tabular` owns what a member does with its own tables: loading
//! and preprocessing tabular files, the tabular MLP and its trainable part
//! (head, last layers, LoRA adapters), local training with FedProx and
//! record-level DP-SGD (ghost clipping), evaluation, backbone pretraining
//! checkpoints, and [`TabularModel`], the member's model behind
//! `tessera_learn::LocalModel`. It converts the trainable part to and from
//! [`tessera_core::ModelParams`], the only thing that leaves the member.
//! What every model shares (backend, settings checks, the Poisson sampler,
//! DP-SGD's configuration and noise) comes from `tessera-learn`; metrics
//! from `tessera_core::evaluate`.
//!
//! It must NOT touch the network, masks or privacy accounting, and must never
//! print, log or put a record or per-example value into an error: errors name
//! files, lines, columns and tensors only. Backends are chosen at run time
//! through burn 0.22's `Device` ([`ComputeBackend`]).

pub mod data;
pub mod dpsgd;
pub mod error;
mod local;
pub mod model;
pub mod pretrain;
pub mod spec;
pub mod train;

pub use data::{Dataset, Split, SplitConfig, TabularData, TabularSpec};
pub use error::{DataError, LearnError};
pub use local::TabularModel;
pub use model::{MlpConfig, TabularMlp, TrainablePart};
pub use pretrain::{PretrainReport, TensorMapping, load_backbone, pretrain_backbone, save_backbone};
pub use train::{ModelSpec, Progress, ProgressFn, TabularTask, TrainReport};
