//! Every message of the protocol, in the order a round uses them. See
//! `docs/protocol.md` for the narrative. Large vectors (the model going
//! down, masked updates coming up) never travel in one message: they are a
//! `*Start` header, a run of bounded chunks, and an end marker, so neither
//! side ever needs a second full copy of a multi-gigabyte update.

use serde::{Deserialize, Serialize};

use crate::PartyId;
use crate::metrics::EvalMetrics;
use crate::params::ParamLayout;
use crate::round::{RoundSettings, RunId};

/// The two X25519 public keys a cohort member advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// Used for key agreement that encrypts Shamir shares.
    pub cipher_pk: [u8; 32],
    /// Used for key agreement that seeds pairwise masks.
    pub mask_pk: [u8; 32],
}

/// A Shamir share bundle from one member to another, AES-GCM encrypted under
/// a key only the two of them can derive. The aggregator relays it blind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    pub from: PartyId,
    pub to: PartyId,
    pub ciphertext: Vec<u8>,
}

/// What a survivor reveals about one peer in the unmasking step: exactly one
/// of the two secrets, chosen by whether that peer survived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareReveal {
    /// The peer survived: its self-mask seed share.
    SelfMask { peer: PartyId, share: Vec<u8> },
    /// The peer dropped: its mask secret-key share.
    MaskKey { peer: PartyId, share: Vec<u8> },
}

/// Why a model is being sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelPurpose {
    /// Train on it and answer with an update.
    Train,
    /// Evaluate it on the held-out split and answer with metrics.
    Evaluate,
}

/// Messages from the aggregator to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AggregatorMsg {
    /// Sent once after the TLS handshake admitted the member.
    Welcome {
        run_id: RunId,
        member: String,
    },
    /// Selects the member into a round's cohort. `cohort` is the sorted list
    /// of member names; the member's `PartyId` is its index in it.
    RoundStart {
        round: u64,
        settings: RoundSettings,
        cohort: Vec<String>,
        party: PartyId,
    },
    /// Header of a streamed model; `ModelChunk`s follow, then `ModelEnd`.
    ModelStart {
        round: u64,
        purpose: ModelPurpose,
        layout: ParamLayout,
    },
    ModelChunk {
        round: u64,
        offset: u64,
        values: Vec<f32>,
    },
    /// `digest` is the SHA-256 of the model (see `ModelParams::digest`).
    ModelEnd {
        round: u64,
        digest: [u8; 32],
    },
    /// SecAgg step 1 result: the public keys of this member's neighbours.
    CohortKeys {
        round: u64,
        keys: Vec<(PartyId, PublicKeys)>,
    },
    /// SecAgg step 2 result: the share ciphertexts addressed to this member.
    ForwardShares {
        round: u64,
        shares: Vec<EncryptedShare>,
    },
    /// SecAgg step 4: which neighbours sent masked input and which dropped.
    UnmaskRequest {
        round: u64,
        survivors: Vec<PartyId>,
        dropped: Vec<PartyId>,
    },
    /// The round ended; `accepted` says whether an aggregate was produced.
    RoundEnd {
        round: u64,
        accepted: bool,
        reason: String,
    },
    /// The run is over (rounds done or budget spent); the client may exit.
    Shutdown {
        reason: String,
    },
}

/// Messages from a client to the aggregator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message on a connection. The member's identity comes from its
    /// certificate, never from this message; `member` is only cross-checked.
    Hello {
        member: String,
        protocol_version: u8,
    },
    /// SecAgg step 1.
    AdvertiseKeys {
        round: u64,
        keys: PublicKeys,
    },
    /// SecAgg step 2.
    ShareKeys {
        round: u64,
        shares: Vec<EncryptedShare>,
    },
    /// SecAgg step 3 header: `len` ring elements follow in chunks.
    MaskedStart {
        round: u64,
        len: u64,
    },
    MaskedChunk {
        round: u64,
        offset: u64,
        values: Vec<u32>,
    },
    MaskedEnd {
        round: u64,
    },
    /// SecAgg step 4.
    UnmaskShares {
        round: u64,
        reveals: Vec<ShareReveal>,
    },
    /// Research-only plaintext update (simulator `insecure_plaintext`).
    PlainStart {
        round: u64,
        len: u64,
        weight: f64,
    },
    PlainChunk {
        round: u64,
        offset: u64,
        values: Vec<f32>,
    },
    PlainEnd {
        round: u64,
    },
    /// Metrics on the member's own held-out split, for `ModelPurpose::Evaluate`.
    EvalReport {
        round: u64,
        metrics: EvalMetrics,
    },
    /// The member will not take part in this round (e.g. its own privacy
    /// budget is spent, or the aggregator asked for something it refuses).
    Decline {
        round: u64,
        reason: String,
    },
}

/// The kind of a member's message, as logs, the egress ledger and the simulator's
/// dropout model name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientMsgKind {
    Hello,
    AdvertiseKeys,
    ShareKeys,
    MaskedStart,
    MaskedChunk,
    MaskedEnd,
    UnmaskShares,
    PlainStart,
    PlainChunk,
    PlainEnd,
    EvalReport,
    Decline,
}

impl ClientMsgKind {
    /// The short name written to logs and the egress ledger.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientMsgKind::Hello => "hello",
            ClientMsgKind::AdvertiseKeys => "advertise_keys",
            ClientMsgKind::ShareKeys => "share_keys",
            ClientMsgKind::MaskedStart => "masked_start",
            ClientMsgKind::MaskedChunk => "masked_chunk",
            ClientMsgKind::MaskedEnd => "masked_end",
            ClientMsgKind::UnmaskShares => "unmask_shares",
            ClientMsgKind::PlainStart => "plain_start",
            ClientMsgKind::PlainChunk => "plain_chunk",
            ClientMsgKind::PlainEnd => "plain_end",
            ClientMsgKind::EvalReport => "eval_report",
            ClientMsgKind::Decline => "decline",
        }
    }
}

impl std::fmt::Display for ClientMsgKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl ClientMsg {
    /// What kind of message this is.
    pub fn kind(&self) -> ClientMsgKind {
        match self {
            ClientMsg::Hello { .. } => ClientMsgKind::Hello,
            ClientMsg::AdvertiseKeys { .. } => ClientMsgKind::AdvertiseKeys,
            ClientMsg::ShareKeys { .. } => ClientMsgKind::ShareKeys,
            ClientMsg::MaskedStart { .. } => ClientMsgKind::MaskedStart,
            ClientMsg::MaskedChunk { .. } => ClientMsgKind::MaskedChunk,
            ClientMsg::MaskedEnd { .. } => ClientMsgKind::MaskedEnd,
            ClientMsg::UnmaskShares { .. } => ClientMsgKind::UnmaskShares,
            ClientMsg::PlainStart { .. } => ClientMsgKind::PlainStart,
            ClientMsg::PlainChunk { .. } => ClientMsgKind::PlainChunk,
            ClientMsg::PlainEnd { .. } => ClientMsgKind::PlainEnd,
            ClientMsg::EvalReport { .. } => ClientMsgKind::EvalReport,
            ClientMsg::Decline { .. } => ClientMsgKind::Decline,
        }
    }

    /// The round this message belongs to, if any.
    pub fn round(&self) -> Option<u64> {
        match self {
            ClientMsg::Hello { .. } => None,
            ClientMsg::AdvertiseKeys { round, .. }
            | ClientMsg::ShareKeys { round, .. }
            | ClientMsg::MaskedStart { round, .. }
            | ClientMsg::MaskedChunk { round, .. }
            | ClientMsg::MaskedEnd { round }
            | ClientMsg::UnmaskShares { round, .. }
            | ClientMsg::PlainStart { round, .. }
            | ClientMsg::PlainChunk { round, .. }
            | ClientMsg::PlainEnd { round }
            | ClientMsg::EvalReport { round, .. }
            | ClientMsg::Decline { round, .. } => Some(*round),
        }
    }
}

/// The kind of an aggregator's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggregatorMsgKind {
    Welcome,
    RoundStart,
    ModelStart,
    ModelChunk,
    ModelEnd,
    CohortKeys,
    ForwardShares,
    UnmaskRequest,
    RoundEnd,
    Shutdown,
}

impl AggregatorMsgKind {
    /// The short name written to logs and the egress ledger.
    pub const fn as_str(self) -> &'static str {
        match self {
            AggregatorMsgKind::Welcome => "welcome",
            AggregatorMsgKind::RoundStart => "round_start",
            AggregatorMsgKind::ModelStart => "model_start",
            AggregatorMsgKind::ModelChunk => "model_chunk",
            AggregatorMsgKind::ModelEnd => "model_end",
            AggregatorMsgKind::CohortKeys => "cohort_keys",
            AggregatorMsgKind::ForwardShares => "forward_shares",
            AggregatorMsgKind::UnmaskRequest => "unmask_request",
            AggregatorMsgKind::RoundEnd => "round_end",
            AggregatorMsgKind::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for AggregatorMsgKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl AggregatorMsg {
    /// The round a message belongs to (`None` for Welcome and Shutdown).
    pub fn round(&self) -> Option<u64> {
        match self {
            AggregatorMsg::Welcome { .. } | AggregatorMsg::Shutdown { .. } => None,
            AggregatorMsg::RoundStart { round, .. }
            | AggregatorMsg::ModelStart { round, .. }
            | AggregatorMsg::ModelChunk { round, .. }
            | AggregatorMsg::ModelEnd { round, .. }
            | AggregatorMsg::CohortKeys { round, .. }
            | AggregatorMsg::ForwardShares { round, .. }
            | AggregatorMsg::UnmaskRequest { round, .. }
            | AggregatorMsg::RoundEnd { round, .. } => Some(*round),
        }
    }

    /// What kind of message this is.
    pub fn kind(&self) -> AggregatorMsgKind {
        match self {
            AggregatorMsg::Welcome { .. } => AggregatorMsgKind::Welcome,
            AggregatorMsg::RoundStart { .. } => AggregatorMsgKind::RoundStart,
            AggregatorMsg::ModelStart { .. } => AggregatorMsgKind::ModelStart,
            AggregatorMsg::ModelChunk { .. } => AggregatorMsgKind::ModelChunk,
            AggregatorMsg::ModelEnd { .. } => AggregatorMsgKind::ModelEnd,
            AggregatorMsg::CohortKeys { .. } => AggregatorMsgKind::CohortKeys,
            AggregatorMsg::ForwardShares { .. } => AggregatorMsgKind::ForwardShares,
            AggregatorMsg::UnmaskRequest { .. } => AggregatorMsgKind::UnmaskRequest,
            AggregatorMsg::RoundEnd { .. } => AggregatorMsgKind::RoundEnd,
            AggregatorMsg::Shutdown { .. } => AggregatorMsgKind::Shutdown,
        }
    }
}
