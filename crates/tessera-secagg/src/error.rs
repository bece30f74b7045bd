//! The one error type of the crate. Variants name parties and offsets but
//! never carry a vector value, a share or a key: errors end up in logs.

use tessera_core::PartyId;

/// Protocol steps, named after the messages that carry them. A client
/// session reports the last step it completed; errors name the step a call
/// needs and the one the session is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    Unmask,
    Done,
}

/// Which of the two Shamir-shared secrets a reveal concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    SelfMask,
    MaskKey,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecAggError {
    // Round configuration.
    #[error("invalid secure-aggregation settings: {0}")]
    InvalidSettings(&'static str),
    #[error("cohort member list must be sorted and free of duplicates")]
    CohortNotSorted,
    #[error("quantizer cannot be built: {0}")]
    InvalidQuantizer(&'static str),

    // Protocol order.
    #[error("call belongs to step {expected:?} but the session is at step {actual:?}")]
    WrongStep { expected: Step, actual: Step },

    // Who may say what.
    #[error("party {0} is not a member of this cohort")]
    UnknownParty(PartyId),
    #[error("party {peer} is not a neighbour of party {of}")]
    NotNeighbour { of: PartyId, peer: PartyId },
    #[error("party {0} already submitted this step")]
    Duplicate(PartyId),
    #[error("party {0} did not move on at the previous step")]
    NotInStep(PartyId),
    #[error("two cohort members advertised the same public key")]
    RepeatedPublicKey,
    #[error("key agreement with party {0} is not contributory (low-order public key)")]
    WeakPublicKey(PartyId),

    // Shares.
    #[error("share from party {from} to party {to} failed to decrypt or is bound to another round")]
    ShareDecryption { from: PartyId, to: PartyId },
    #[error("share from party {0} is malformed")]
    MalformedShare(PartyId),
    #[error("share from party {from} is addressed to party {to}, not to this member")]
    Misaddressed { from: PartyId, to: PartyId },
    #[error("party {missing} sent no share to party {to}")]
    MissingShare { missing: PartyId, to: PartyId },

    // Unmasking.
    #[error("asked to reveal both the self-mask share and the mask-key share of party {0}")]
    BothSecretsRequested(PartyId),
    #[error("unmask request names party {0} inconsistently with what this member knows")]
    InconsistentUnmaskRequest(PartyId),
    #[error("reveal for party {peer} from party {from} has the wrong kind {kind:?}")]
    WrongRevealKind { from: PartyId, peer: PartyId, kind: SecretKind },
    #[error("the revealed shares of party {0} do not recombine to a valid secret")]
    InconsistentShares(PartyId),
    #[error("{have} survivors but the threshold is {threshold}")]
    BelowThreshold { have: u32, threshold: u32 },
    #[error("only {have} shares of party {peer}'s secret reached the aggregator, {threshold} are needed")]
    CannotReconstruct { peer: PartyId, have: u32, threshold: u32 },

    // Masked input stream.
    #[error("masked stream of party {from}: expected offset {expected}, got {actual}")]
    StreamOffset { from: PartyId, expected: u64, actual: u64 },
    #[error("vector range [{offset}, {offset}+{len}) lies outside the {vector_len}-element vector")]
    OutOfRange { offset: u64, len: u64, vector_len: u64 },
    #[error("element at offset {0} is not below 2^modulus_bits")]
    ValueOutOfRing(u64),
    #[error("masked stream of party {0} ended before the whole vector arrived")]
    StreamIncomplete(PartyId),
    #[error("no masked stream of party {0} is open")]
    NoStream(PartyId),
    #[error("all {0} staging slots are busy; hold the stream back until one finishes")]
    StreamSlotsBusy(u32),
}
