//! `tessera-core` is the vocabulary every other Tessera crate speaks: named
//! parameter tensors, the protocol messages of a federated round, the one
//! codec that turns them into bytes, and the settings a round travels with.
//!
//! It owns the wire format and nothing else: no sockets, no clocks, no
//! cryptography, no training. Everything here is deterministic and safe to
//! feed hostile bytes: decoding returns a typed [`codec::CodecError`], never
//! panics. bincode is an implementation detail of [`codec`]; no other crate
//! names it, so the format can be swapped without touching callers.

pub mod codec;
pub mod config;
pub mod evaluate;
pub mod message;
pub mod metrics;
mod model;
pub mod params;
pub mod round;
pub mod stream;
pub mod update;

pub use codec::{CodecError, FrameDecoder, Limits, PROTOCOL_VERSION, Payload};
pub use message::{AggregatorMsg, AggregatorMsgKind, ClientMsg, ClientMsgKind};
pub use metrics::{EvalMetrics, RoundRecord};
pub use model::{AugmentConfig, BackboneInit, ModelConfigError, ModelSection, VisionArchitecture, VisionModelConfig};
pub use params::{ModelParams, ParamLayout, ParamTensor, ParamsError};
pub use round::{RoundSettings, RunId};
pub use update::TrainedUpdate;

/// Position of a member within one round's cohort. Cohort lists are sorted,
/// so the same member set always yields the same indices.
pub type PartyId = u32;
