//! Fuzz entry points, one `fn(&[u8])` per target. The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` call them under libFuzzer; `tests/tests/fuzz_corpus.rs`
//! compiles this same library into the workspace's test suite and replays every
//! saved corpus file and crash artifact through them with a plain
//! `cargo test`, so regressions are caught without nightly flags.
//!
//! Besides "never panics", the protocol targets assert security properties
//! that must hold whatever the peer sends: a member never sends a plaintext
//! update under its default policy, never reveals two secrets of one peer,
//! never advertises two key sets, sends two updates or two unmask answers
//! for one round; the
//! aggregator never asks anyone to reveal both secrets of a party and never
//! lets a round make the global model non-finite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::{
    Advertisement, AggregatorMsg, ClientMsg, EncryptedShare, EvalMetrics, FrameDecoder, HEADER_LEN, Limits,
    ModelParams, ModelPurpose, ParamLayout, ParamTensor, PartyId, PublicKeys, RoundSettings, RunId, SecAggSettings,
    ShareReveal, TrainSettings, decode_payload, encode_frame, model_messages,
};

mod codec;
mod configs;
mod coordinator;
mod loaders;
mod participant;
mod shared;
mod structured;

pub use codec::{aggregator_msg, client_msg, frame_decoder};
pub use configs::config;
pub use coordinator::coordinator;
pub use loaders::{csv_loader, idx_loader, image_loader};
pub use participant::participant;
pub use structured::{coordinator_inputs, member_inputs};

use participant::*;
use shared::*;

/// A fuzz entry point: feeds arbitrary bytes to one decoder or machine.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("frame_decoder", frame_decoder),
    ("client_msg", client_msg),
    ("aggregator_msg", aggregator_msg),
    ("participant", participant),
    ("coordinator", coordinator),
    ("member_inputs", member_inputs),
    ("coordinator_inputs", coordinator_inputs),
    ("csv_loader", csv_loader),
    ("idx_loader", idx_loader),
    ("image_loader", image_loader),
    ("config", config),
];
