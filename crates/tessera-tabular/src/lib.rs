//! `tessera-tabular` is what a member does with its own tables: it turns a
//! CSV file into preprocessed local splits, trains the tabular MLP's
//! trainable part on them (SGD with FedProx, or record-level DP-SGD by ghost
//! clipping), evaluates it, and converts that part to and from
//! [`tessera_core::ModelParams`], the only thing that leaves the member.
//!
//! - [`TabularModel`]: the member's model behind `tessera_learn::LocalModel`,
//!   the one way the client driver and the simulator reach this crate's
//!   training.
//! - [`TabularTask`]: one member's data, network and device; a round of
//!   local training ([`TabularTask::train_round`],
//!   [`TabularTask::train_round_dp`]) and evaluation on a [`Split`].
//! - Tables: [`load_csv`] reads and type-checks a file into a [`RawTable`],
//!   [`hashed_split`] cuts it into [`SplitIndices`] by a keyed hash of each
//!   row (one record never moves another), a [`Preprocessor`] encodes it as
//!   the declared `tessera_core::FeatureSchema` says ([`load_schema`]) or,
//!   as the non-private opt-in, fitted on the training rows, and
//!   [`TabularData`] holds the three encoded [`Dataset`]s. [`TabularSpec`]
//!   and [`SplitConfig`] configure these steps; [`stratified_split`] cuts
//!   public tables for pretraining.
//! - The network: a [`TabularMlp`] of shape [`MlpConfig`] whose exchanged
//!   part is chosen by [`TrainablePart`]; a tensor is addressed by layer
//!   index and [`Field`], and [`import_slots`] loads an exchanged set.
//! - The shared `[model]` section: [`mlp_config`] and
//!   [`initial_trainable_params`], from which the aggregator seeds the
//!   global model and exports the trained one.
//! - Pretraining: [`pretrain_backbone`] on a public part of a table
//!   ([`public_private_rows`], [`subset`]); [`save_backbone`] and
//!   [`load_backbone`] for safetensors checkpoints, with [`TensorMapping`]
//!   for files written by other tools.
//! - DP statistics: [`count_statistics`] gives a member's exact counts for
//!   a release from its [`StatisticsSource`] (they leave only noised).
//! - Errors: [`DataError`] for files and their configuration, [`LearnError`]
//!   for everything else.
//!
//! What every model shares (backend, settings checks, the Poisson sampler,
//! DP-SGD's configuration and noise) comes from `tessera-learn`, metrics
//! from `tessera_core::evaluate`; the backend is chosen at run time through
//! [`tessera_learn::ComputeBackend`].
//!
//! It must NOT touch the network, masks or privacy accounting, and must never
//! print, log or put a record or per-example value into an error: errors name
//! files, lines, columns and tensors only, because they reach logs that the
//! member's operator may share.

#![warn(missing_docs)]

mod data;
mod dpsgd;
mod encode;
mod error;
mod local;
mod model;
mod pretrain;
mod spec;
mod split;
mod statistics;
mod train;

// The member's model and the task it drives.
pub use local::TabularModel;
pub use statistics::{StatisticsSource, count_statistics};
pub use train::{ModelSpec, Progress, ProgressFn, TabularTask, TrainReport};

// Tables: loading, splitting, preprocessing.
pub use data::{
    Dataset, RawColumn, RawTable, Split, TabularData, TabularSpec, load_csv, load_schema, shipped_data_path,
};
pub use encode::Preprocessor;
pub use split::{SplitConfig, SplitIndices, hashed_split, stratified_split};

// The network and its exchanged tensors.
pub use model::{Field, MlpConfig, TabularMlp, TrainablePart, import_slots};

// The shared `[model]` section.
pub use spec::{configured_mlp, initial_trainable_params, mlp_config};

// Backbone pretraining and checkpoints.
pub use pretrain::{
    PretrainReport, TensorMapping, load_backbone, pretrain_backbone, public_private_rows, save_backbone, subset,
};

// Errors.
pub use error::{DataError, LearnError};
