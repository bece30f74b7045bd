//! The one error type of the crate. Variants name parties and offsets but
//! never carry a vector value, a share or a key: errors end up in logs.

use tessera_core::PartyId;

/// Protocol steps, named after the messages that carry them. A client
/// session reports the last step it completed; errors name the step a call
/// needs and the one the session is at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Each member publishes its two public keys and its commitments.
    AdvertiseKeys,
    /// Each member reveals its graph-seed contribution, after the roster of
    /// every commitment is fixed.
    RevealGraph,
    /// Each member sends encrypted Shamir shares to its neighbours.
    ShareKeys,
    /// Each member streams its masked vector.
    MaskedInput,
    /// Each survivor signs the survivor set (the consistency check).
    SignSurvivors,
    /// Survivors reveal the shares that remove the masks.
    Unmask,
    /// The session has answered its last message.
    Done,
}

/// Which of the two Shamir-shared secrets a reveal concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// The seed of a member's own mask, revealed for survivors.
    SelfMask,
    /// The key-agreement secret behind pairwise masks, revealed for dropouts.
    MaskKey,
}

/// Everything that can go wrong in a round, on either side. A member that
/// gets one stops taking part; the aggregator drops or blames the party named.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SecAggError {
    // Round configuration.
    /// The round's settings cannot work (modulus, threshold, neighbours, vector length).
    #[error("invalid secure-aggregation settings: {0}")]
    InvalidSettings(&'static str),
    /// `RoundContext::new` got a cohort that is not strictly ascending.
    #[error("cohort member list must be sorted and free of duplicates")]
    CohortNotSorted,
    /// The quantizer's range, modulus or cohort size leaves no room for the sum.
    #[error("quantizer cannot be built: {0}")]
    InvalidQuantizer(&'static str),

    // Protocol order.
    /// A message arrived out of order.
    #[error("call belongs to step {expected:?} but the session is at step {actual:?}")]
    WrongStep {
        /// The step the call belongs to.
        expected: Step,
        /// The step the session is at.
        actual: Step,
    },

    // Who may say what.
    /// A party id outside the cohort.
    #[error("party {0} is not a member of this cohort")]
    UnknownParty(PartyId),
    /// A message concerns a pair that the neighbour graph does not join.
    #[error("party {peer} is not a neighbour of party {of}")]
    NotNeighbour {
        /// The party whose neighbourhood was asked about.
        of: PartyId,
        /// The party outside it.
        peer: PartyId,
    },
    /// A party sent the same step twice.
    #[error("party {0} already submitted this step")]
    Duplicate(PartyId),
    /// A party skipped the previous step, so it may not take this one.
    #[error("party {0} did not move on at the previous step")]
    NotInStep(PartyId),
    /// Two members advertised the same key (a replay or a copied identity).
    #[error("two cohort members advertised the same public key")]
    RepeatedPublicKey,
    /// A peer's key would make the pairwise mask predictable.
    #[error("key agreement with party {0} is not contributory (low-order public key)")]
    WeakPublicKey(PartyId),

    // Shares.
    /// A share fails authentication: tampered, or from another round.
    #[error("share from party {from} to party {to} failed to decrypt or is bound to another round")]
    ShareDecryption {
        /// The sender.
        from: PartyId,
        /// The recipient.
        to: PartyId,
    },
    /// A share decrypted but does not parse.
    #[error("share from party {0} is malformed")]
    MalformedShare(PartyId),
    /// A share reached a member it was not encrypted for.
    #[error("share from party {from} is addressed to party {to}, not to this member")]
    Misaddressed {
        /// The sender.
        from: PartyId,
        /// The recipient named inside the share.
        to: PartyId,
    },
    /// A neighbour's share bundle lacks one for this recipient.
    #[error("party {missing} sent no share to party {to}")]
    MissingShare {
        /// The party whose share is absent.
        missing: PartyId,
        /// The recipient left without it.
        to: PartyId,
    },

    // Drawing the neighbour graph.
    /// A call needs the neighbour graph before its seed was drawn.
    #[error("the neighbour graph is not drawn yet")]
    GraphNotDrawn,
    /// The roster of graph commitments is malformed or does not hold this
    /// member's own commitment.
    #[error("graph roster refused: {0}")]
    BadRoster(&'static str),
    /// A revealed graph-seed contribution does not open its commitment.
    #[error("the graph-seed reveal of party {0} does not match its commitment")]
    GraphRevealMismatch(PartyId),
    /// A roster member's graph-seed reveal is missing; the seed cannot be
    /// computed without it (dropping it would let the aggregator choose).
    #[error("the graph-seed reveal of party {0} is missing")]
    MissingGraphReveal(PartyId),
    /// A neighbour's signed advertisement commits to another graph-seed
    /// contribution than the roster lists.
    #[error("party {0}'s advertisement and the roster disagree on its graph commitment")]
    RosterMismatch(PartyId),
    /// The aggregator withheld the advertisement of a neighbour that is in
    /// the roster.
    #[error("the advertisement of neighbour {0}, who is in the roster, was withheld")]
    WithheldNeighbour(PartyId),

    // The consistency check.
    /// The announced survivor set is malformed or leaves this member out.
    #[error("survivor set refused: {0}")]
    BadSurvivorSet(&'static str),
    /// Fewer members of the neighbourhood than the threshold signed the
    /// survivor set this member signed; revealing now could serve a split view.
    #[error("only {have} members of this neighbourhood signed the survivor set, {threshold} are needed")]
    TooFewSignatures {
        /// Valid signatures, this member's own included.
        have: u32,
        /// The Shamir threshold.
        threshold: u32,
    },

    // Unmasking.
    /// A member's answer to the unmask request names a party it was not
    /// asked about, or leaves one out. (A member cannot be asked for both
    /// secrets of a party: which one it reveals follows from the survivor
    /// set it signed.)
    #[error("unmask answer names party {0} inconsistently with the request")]
    InconsistentUnmaskRequest(PartyId),
    /// A reveal of the other secret than the one asked for.
    #[error("reveal for party {peer} from party {from} has the wrong kind {kind:?}")]
    WrongRevealKind {
        /// The revealing survivor.
        from: PartyId,
        /// The party whose secret it is.
        peer: PartyId,
        /// The kind revealed.
        kind: SecretKind,
    },
    /// Shares of one secret disagree, so at least one is forged.
    #[error("the revealed shares of party {0} do not recombine to a valid secret")]
    InconsistentShares(PartyId),
    /// Too few members are left for the round to produce a sum.
    #[error("{have} survivors but the threshold is {threshold}")]
    BelowThreshold {
        /// Members still in the round.
        have: u32,
        /// The Shamir threshold.
        threshold: u32,
    },
    /// A secret needed to remove a mask got fewer shares than the threshold.
    #[error("only {have} shares of party {peer}'s secret reached the aggregator, {threshold} are needed")]
    CannotReconstruct {
        /// The party whose secret is needed.
        peer: PartyId,
        /// Shares received.
        have: u32,
        /// The Shamir threshold.
        threshold: u32,
    },

    // Masked input stream.
    /// A masked chunk does not continue where the previous one ended.
    #[error("masked stream of party {from}: expected offset {expected}, got {actual}")]
    StreamOffset {
        /// The streaming party.
        from: PartyId,
        /// The next offset due.
        expected: u64,
        /// The offset received.
        actual: u64,
    },
    /// A range runs past the round's vector.
    #[error("vector range [{offset}, {offset}+{len}) lies outside the {vector_len}-element vector")]
    OutOfRange {
        /// Start of the range, in ring elements.
        offset: u64,
        /// Its length, in ring elements.
        len: u64,
        /// The round's vector length.
        vector_len: u64,
    },
    /// An element is not reduced mod 2^modulus_bits.
    #[error("element at offset {0} is not below 2^modulus_bits")]
    ValueOutOfRing(u64),
    /// The stream ended short of the vector length.
    #[error("masked stream of party {0} ended before the whole vector arrived")]
    StreamIncomplete(PartyId),
    /// A chunk or end for a party with no stream open.
    #[error("no masked stream of party {0} is open")]
    NoStream(PartyId),
    /// Every staging slot holds an open stream; back-pressure, not a fault.
    #[error("all {0} staging slots are busy; hold the stream back until one finishes")]
    StreamSlotsBusy(u32),
}
