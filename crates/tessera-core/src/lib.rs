//! `tessera-core` is the vocabulary every other Tessera crate speaks: named
//! parameter tensors, the protocol messages of a federated round, the one
//! codec that turns them into bytes, and the settings a round travels with.
//!
//! It owns the wire format and nothing else: no sockets, no clocks, no
//! cryptography, no training. Everything here is deterministic and safe to
//! feed hostile bytes: decoding returns a typed [`CodecError`], never
//! panics. bincode is an implementation detail of the codec; no other crate
//! names it, so the format can be swapped without touching callers.
//!
//! # Contents
//!
//! - **Parameters**: [`ModelParams`], the trainable tensors ([`ParamTensor`])
//!   of a model in a fixed order, and their [`ParamLayout`] (names and
//!   shapes, no values), which both sides agree on before values move.
//! - **Messages**: [`AggregatorMsg`] and [`ClientMsg`], every message of a
//!   round, with the secure-aggregation payloads they carry ([`PublicKeys`], [`Advertisement`],
//!   [`EncryptedShare`], [`ShareReveal`]) and their kinds as logs and the
//!   egress ledger name them ([`AggregatorMsgKind`], [`ClientMsgKind`]).
//! - **Codec**: frames of `[version][u32 length][bincode payload]`
//!   ([`encode_frame`], [`FrameDecoder`], a received [`Payload`]) bounded by
//!   [`Limits`], and [`chunk_ranges`] for vectors larger than a frame.
//! - **Shared values**: what many members are sent alike, held once:
//!   [`SharedList`] (the cohort, graph roster and reveals, survivor set,
//!   with results computed from a list memoized on it) and [`Shared`] (a
//!   neighbour's advertisement); each encodes exactly as the plain value.
//! - **Streaming**: [`model_messages`] sends a model as bounded chunks and
//!   [`ModelAssembler`] rebuilds it in place, checking order and digest.
//! - **Round settings**: [`RoundSettings`] (training, secure aggregation,
//!   differential privacy), what a member is told when a round starts;
//!   a statistics round's [`StatsRelease`] and the readable
//!   [`StatisticsReport`] built from its counts.
//! - **Configuration**: the `[model]` section every party builds from, as
//!   plain data ([`ModelSection`]: the tabular [`ModelConfig`] or an image
//!   [`VisionModelConfig`]), and a tabular run's declared feature encoding
//!   ([`FeatureSchema`], chosen by a [`SchemaSource`]).
//! - **Results**: a member's [`TrainedUpdate`], its [`EvalMetrics`] (computed
//!   once for every model by [`eval_metrics`]), and the aggregator's
//!   per-round [`RoundRecord`].

#![warn(missing_docs)]

mod codec;
mod config;
mod evaluate;
mod message;
mod metrics;
mod model;
mod params;
mod round;
mod schema;
mod shared;
mod statistics;
mod stream;
mod update;

pub use codec::{
    CodecError, FrameDecoder, FrameParts, HEADER_LEN, Limits, PROTOCOL_VERSION, Payload, chunk_ranges, decode_payload,
    encode_frame, frame_len, to_bytes,
};
pub use config::{ModelConfig, TrainableConfig};
pub use evaluate::{eval_metrics, metrics_from_noised_counts};
pub use message::{
    Advertisement, AggregatorMsg, AggregatorMsgKind, ClientMsg, ClientMsgKind, EncryptedShare, ModelPurpose,
    PublicKeys, SettingsDigest, ShareReveal,
};
pub use metrics::{EvalMetrics, RoundMetrics, RoundRecord};
pub use model::{
    AugmentConfig, BackboneInit, LoraConfig, ModelConfigError, ModelSection, VisionArchitecture, VisionModelConfig,
};
pub use params::{ModelParams, ParamLayout, ParamTensor, ParamsError};
pub use round::{
    AdaptiveClipSettings, DpSettings, EVAL_TENSOR, EvalRelease, NoisePlacement, PrivacyUnit, RoundSettings, RunId,
    SecAggSettings, TrainSettings, UNCLIPPED_TENSOR,
};
pub use schema::{FIT_LOCALLY, FeatureDecl, FeatureSchema, SchemaError, SchemaSource};
pub use shared::{Shared, SharedList};
pub use statistics::{
    FeatureStatistics, LocalStatistics, MAX_STATS_BINS, MAX_STATS_CLASSES, STATS_TENSOR, StatisticsReport,
    StatsRelease, bin_edges, bin_of,
};
pub use stream::{ModelAssembler, StreamError, model_messages};
pub use update::TrainedUpdate;

/// Position of a member within one round's cohort. Cohort lists are sorted,
/// so the same member set always yields the same indices.
pub type PartyId = u32;
