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
use crate::shared::{Shared, SharedList};

/// The two X25519 public keys a cohort member advertises.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// Used for key agreement that encrypts Shamir shares.
    pub cipher_pk: [u8; 32],
    /// Used for key agreement that seeds pairwise masks.
    pub mask_pk: [u8; 32],
}

/// A member's signed advertisement for one round: its two public keys, a
/// commitment to its self-mask seed, and an ECDSA P-256 signature over
/// `tessera_secagg::advert_message` (round binding, party, both keys, the
/// commitment) made with the private key of its consortium certificate.
/// The aggregator forwards it untouched; every receiving member checks that
/// the certificate chains to the consortium CA, names the cohort member at
/// that party index, and that the signature verifies under its key. So an
/// aggregator cannot substitute keys it made for a member's neighbours.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertisement {
    /// The round's fresh X25519 public keys.
    pub keys: PublicKeys,
    /// SHA-256 commitment to the member's self-mask seed (domain-separated,
    /// bound to the round and party), so a rebuilt seed can be checked.
    pub seed_commitment: [u8; 32],
    /// SHA-256 commitment to the member's contribution to the round's
    /// neighbour-graph seed, revealed in [`ClientMsg::RevealGraphSeed`] only
    /// after every member's commitment is fixed (commit, then reveal), so
    /// no single party, the aggregator included, picks the graph.
    pub graph_commitment: [u8; 32],
    /// The member's consortium certificate (DER).
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// ECDSA P-256 / SHA-256 signature over the signed message, fixed-length
    /// `r ‖ s` (64 bytes), so every advertisement has the same size.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// What a member announces about its configuration when it connects: a
/// SHA-256 digest of its `[model]` section and one of its feature schema
/// (both computed by `tessera_protocol::settings_digest`). The aggregator
/// compares them with its own before the member may join any round, so a
/// misconfigured member is refused by name instead of aborting rounds that
/// other members have already paid privacy budget for.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SettingsDigest {
    /// Digest of the `[model]` section (file locations and local-only
    /// performance knobs left out).
    pub model: [u8; 32],
    /// Digest of the declared feature schema; all zeros when the member
    /// declares none (images, or `fit-locally`).
    pub schema: [u8; 32],
}

impl SettingsDigest {
    /// The first 8 bytes of `model` and `schema` in hex, as logs show them.
    pub fn short(&self) -> String {
        let hex = |b: &[u8]| b.iter().take(8).map(|x| format!("{x:02x}")).collect::<String>();
        format!("model {} schema {}", hex(&self.model), hex(&self.schema))
    }
}

impl std::fmt::Display for SettingsDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

/// A Shamir share bundle from one member to another, AES-GCM encrypted under
/// a key only the two of them can derive. The aggregator relays it blind.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    /// The member that dealt the shares.
    pub from: PartyId,
    /// The member that holds them.
    pub to: PartyId,
    /// AES-256-GCM ciphertext of the share bundle; opaque to the aggregator.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// What a survivor reveals about one peer in the unmasking step: exactly one
/// of the two secrets, chosen by whether that peer survived.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareReveal {
    /// The peer survived: its self-mask seed share.
    SelfMask {
        /// The peer the share belongs to.
        peer: PartyId,
        /// This member's Shamir share of the peer's self-mask seed.
        #[serde(with = "serde_bytes")]
        share: Vec<u8>,
    },
    /// The peer dropped: its mask secret-key share.
    MaskKey {
        /// The peer the share belongs to.
        peer: PartyId,
        /// This member's Shamir share of the peer's mask secret key.
        #[serde(with = "serde_bytes")]
        share: Vec<u8>,
    },
}

/// Why a model is being sent.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelPurpose {
    /// Train on it and answer with an update.
    Train,
    /// Evaluate it on the held-out split and answer with metrics.
    Evaluate,
}

/// Messages from the aggregator to a client.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AggregatorMsg {
    /// Sent once after the TLS handshake admitted the member.
    Welcome {
        /// The run the member joined.
        run_id: RunId,
        /// The name the member was admitted under (from its certificate).
        member: String,
    },
    /// Selects the member into a round's cohort. `cohort` is the sorted list
    /// of member names; the member's `PartyId` is its index in it.
    RoundStart {
        /// The round number; must exceed every round the member saw before.
        round: u64,
        /// How to train, mask and privatize this round's update.
        settings: RoundSettings,
        /// Names of the members selected, sorted.
        cohort: SharedList<String>,
        /// This member's index in `cohort`.
        party: PartyId,
    },
    /// Header of a streamed model; `ModelChunk`s follow, then `ModelEnd`.
    ModelStart {
        /// The round the model belongs to.
        round: u64,
        /// Whether to train on it or evaluate it.
        purpose: ModelPurpose,
        /// Names and shapes of the tensors that follow.
        layout: ParamLayout,
    },
    /// A run of consecutive model values.
    ModelChunk {
        /// The round the model belongs to.
        round: u64,
        /// Index of the first value in the flat model, in values.
        offset: u64,
        /// At most [`Limits::chunk_values`](crate::Limits) values.
        values: Vec<f32>,
    },
    /// The model is complete.
    ModelEnd {
        /// The round the model belongs to.
        round: u64,
        /// SHA-256 of the model (see [`ModelParams::digest`](crate::ModelParams::digest)).
        digest: [u8; 32],
    },
    /// SecAgg step 1 result, to every member that advertised (U1): every
    /// advertised graph commitment, sorted by party. A member reveals its
    /// own graph-seed contribution only after it has seen this list, so the
    /// list is fixed before anyone can compute the graph.
    GraphRoster {
        /// The round.
        round: u64,
        /// `(party, graph_commitment)` for every member of U1, sorted by party.
        commitments: SharedList<(PartyId, [u8; 32])>,
    },
    /// SecAgg step 1b result: every revealed graph-seed contribution (from
    /// which the member computes the graph itself) and the signed
    /// advertisements of this member's neighbours under that graph,
    /// forwarded as the members sent them.
    CohortKeys {
        /// The round.
        round: u64,
        /// Each neighbour's party index and signed advertisement, shared
        /// with the other members it is forwarded to (encoded as the
        /// advertisement itself).
        adverts: Vec<(PartyId, Shared<Advertisement>)>,
        /// `(party, reveal)` for every entry of the roster, in its order.
        reveals: SharedList<(PartyId, [u8; 32])>,
    },
    /// SecAgg step 2 result: the share ciphertexts addressed to this member.
    ForwardShares {
        /// The round.
        round: u64,
        /// Every share bundle whose `to` is this member.
        shares: Vec<EncryptedShare>,
    },
    /// SecAgg step 4a (the consistency check of Bonawitz et al. 2017,
    /// section 4): the survivor set U3, whose masked input is in the sum.
    /// Every member of U3 signs it; the set decides which secret of each
    /// neighbour a member reveals.
    SurvivorSet {
        /// The round.
        round: u64,
        /// Every member whose masked input is in the sum, sorted.
        survivors: SharedList<PartyId>,
    },
    /// SecAgg step 4b: reveal shares. Carries the signatures on the survivor
    /// set made by this member's neighbours; the member reveals nothing
    /// until at least `threshold` members of its neighbourhood (itself
    /// included) have signed the very set it signed.
    UnmaskRequest {
        /// The round.
        round: u64,
        /// `(party, signature)` of neighbours on the survivor set.
        signatures: Vec<(PartyId, Vec<u8>)>,
    },
    /// The round ended; `accepted` says whether an aggregate was produced.
    RoundEnd {
        /// The round.
        round: u64,
        /// Whether an aggregate was produced.
        accepted: bool,
        /// Why, for the member's log.
        reason: String,
    },
    /// The run is over (rounds done or budget spent); the client may exit.
    Shutdown {
        /// Why, for the member's log.
        reason: String,
    },
}

/// Messages from a client to the aggregator.
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message on a connection. The member's identity comes from its
    /// certificate, never from this message; `member` is only cross-checked.
    Hello {
        /// The name the member believes it has.
        member: String,
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the member's build.
        protocol_version: u8,
        /// The member's `[model]` and schema, checked at admission.
        settings: SettingsDigest,
    },
    /// SecAgg step 1: this member's signed public keys for the round.
    AdvertiseKeys {
        /// The round.
        round: u64,
        /// Fresh keys for this round only, signed with the member's
        /// certificate key.
        advert: Advertisement,
    },
    /// SecAgg step 1b: the member's graph-seed contribution, whose
    /// commitment it advertised; sent only after the `GraphRoster`.
    RevealGraphSeed {
        /// The round.
        round: u64,
        /// The 32 random bytes behind the advertised `graph_commitment`.
        reveal: [u8; 32],
    },
    /// SecAgg step 2: the member's shares, one bundle per neighbour.
    ShareKeys {
        /// The round.
        round: u64,
        /// One bundle per neighbour, for the aggregator to forward.
        shares: Vec<EncryptedShare>,
    },
    /// SecAgg step 3 header: `len` ring elements follow in chunks.
    MaskedStart {
        /// The round.
        round: u64,
        /// Length of the masked vector, in ring elements.
        len: u64,
    },
    /// A run of consecutive masked values.
    MaskedChunk {
        /// The round.
        round: u64,
        /// Index of the first element in the masked vector.
        offset: u64,
        /// Masked elements of Z_{2^k}, k =
        /// [`SecAggSettings::modulus_bits`](crate::SecAggSettings::modulus_bits).
        values: Vec<u32>,
    },
    /// The masked vector is complete.
    MaskedEnd {
        /// The round.
        round: u64,
    },
    /// SecAgg step 4a: the member's signature (ECDSA P-256, with its
    /// certificate key) on the survivor set it was shown.
    SignSurvivors {
        /// The round.
        round: u64,
        /// Fixed-length `r ‖ s` signature over
        /// `tessera_secagg::survivor_message`.
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// SecAgg step 4b: the secrets that let the aggregator unmask the sum.
    UnmaskShares {
        /// The round.
        round: u64,
        /// One reveal per neighbour named in the `UnmaskRequest`.
        reveals: Vec<ShareReveal>,
    },
    /// Research-only plaintext update (simulator `insecure_plaintext`).
    PlainStart {
        /// The round.
        round: u64,
        /// Length of the update, in values.
        len: u64,
        /// The member's FedAvg weight; the values that follow are already
        /// multiplied by it.
        weight: f64,
    },
    /// A run of consecutive plaintext update values.
    PlainChunk {
        /// The round.
        round: u64,
        /// Index of the first value in the update.
        offset: u64,
        /// Weighted update values.
        values: Vec<f32>,
    },
    /// The plaintext update is complete.
    PlainEnd {
        /// The round.
        round: u64,
    },
    /// Metrics on the member's own held-out split, for `ModelPurpose::Evaluate`.
    EvalReport {
        /// The round whose model was evaluated.
        round: u64,
        /// Aggregates only, never a per-example value.
        metrics: EvalMetrics,
    },
    /// The member will not take part in this round (e.g. its own privacy
    /// budget is spent, or the aggregator asked for something it refuses).
    Decline {
        /// The round declined.
        round: u64,
        /// Why, for the aggregator's log.
        reason: String,
    },
}

/// The kind of a member's message, as logs, the egress ledger and the simulator's
/// dropout model name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientMsgKind {
    /// [`ClientMsg::Hello`].
    Hello,
    /// [`ClientMsg::AdvertiseKeys`].
    AdvertiseKeys,
    /// [`ClientMsg::RevealGraphSeed`].
    RevealGraphSeed,
    /// [`ClientMsg::ShareKeys`].
    ShareKeys,
    /// [`ClientMsg::MaskedStart`].
    MaskedStart,
    /// [`ClientMsg::MaskedChunk`].
    MaskedChunk,
    /// [`ClientMsg::MaskedEnd`].
    MaskedEnd,
    /// [`ClientMsg::SignSurvivors`].
    SignSurvivors,
    /// [`ClientMsg::UnmaskShares`].
    UnmaskShares,
    /// [`ClientMsg::PlainStart`].
    PlainStart,
    /// [`ClientMsg::PlainChunk`].
    PlainChunk,
    /// [`ClientMsg::PlainEnd`].
    PlainEnd,
    /// [`ClientMsg::EvalReport`].
    EvalReport,
    /// [`ClientMsg::Decline`].
    Decline,
}

impl ClientMsgKind {
    /// The short name written to logs and the egress ledger.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientMsgKind::Hello => "hello",
            ClientMsgKind::AdvertiseKeys => "advertise_keys",
            ClientMsgKind::RevealGraphSeed => "reveal_graph_seed",
            ClientMsgKind::ShareKeys => "share_keys",
            ClientMsgKind::MaskedStart => "masked_start",
            ClientMsgKind::MaskedChunk => "masked_chunk",
            ClientMsgKind::MaskedEnd => "masked_end",
            ClientMsgKind::SignSurvivors => "sign_survivors",
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
            ClientMsg::RevealGraphSeed { .. } => ClientMsgKind::RevealGraphSeed,
            ClientMsg::ShareKeys { .. } => ClientMsgKind::ShareKeys,
            ClientMsg::MaskedStart { .. } => ClientMsgKind::MaskedStart,
            ClientMsg::MaskedChunk { .. } => ClientMsgKind::MaskedChunk,
            ClientMsg::MaskedEnd { .. } => ClientMsgKind::MaskedEnd,
            ClientMsg::SignSurvivors { .. } => ClientMsgKind::SignSurvivors,
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
            | ClientMsg::RevealGraphSeed { round, .. }
            | ClientMsg::SignSurvivors { round, .. }
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
    /// [`AggregatorMsg::Welcome`].
    Welcome,
    /// [`AggregatorMsg::RoundStart`].
    RoundStart,
    /// [`AggregatorMsg::ModelStart`].
    ModelStart,
    /// [`AggregatorMsg::ModelChunk`].
    ModelChunk,
    /// [`AggregatorMsg::ModelEnd`].
    ModelEnd,
    /// [`AggregatorMsg::GraphRoster`].
    GraphRoster,
    /// [`AggregatorMsg::CohortKeys`].
    CohortKeys,
    /// [`AggregatorMsg::ForwardShares`].
    ForwardShares,
    /// [`AggregatorMsg::SurvivorSet`].
    SurvivorSet,
    /// [`AggregatorMsg::UnmaskRequest`].
    UnmaskRequest,
    /// [`AggregatorMsg::RoundEnd`].
    RoundEnd,
    /// [`AggregatorMsg::Shutdown`].
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
            AggregatorMsgKind::GraphRoster => "graph_roster",
            AggregatorMsgKind::CohortKeys => "cohort_keys",
            AggregatorMsgKind::ForwardShares => "forward_shares",
            AggregatorMsgKind::SurvivorSet => "survivor_set",
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
            | AggregatorMsg::GraphRoster { round, .. }
            | AggregatorMsg::CohortKeys { round, .. }
            | AggregatorMsg::SurvivorSet { round, .. }
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
            AggregatorMsg::GraphRoster { .. } => AggregatorMsgKind::GraphRoster,
            AggregatorMsg::CohortKeys { .. } => AggregatorMsgKind::CohortKeys,
            AggregatorMsg::SurvivorSet { .. } => AggregatorMsgKind::SurvivorSet,
            AggregatorMsg::ForwardShares { .. } => AggregatorMsgKind::ForwardShares,
            AggregatorMsg::UnmaskRequest { .. } => AggregatorMsgKind::UnmaskRequest,
            AggregatorMsg::RoundEnd { .. } => AggregatorMsgKind::RoundEnd,
            AggregatorMsg::Shutdown { .. } => AggregatorMsgKind::Shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_payload, to_bytes};

    /// The same shapes with plain `Vec<u8>` fields, as they were encoded
    /// before the byte fields took `serde_bytes` (a serde sequence of `u8`).
    #[derive(Serialize, Deserialize)]
    struct PlainAdvertisement(PublicKeys, [u8; 32], [u8; 32], Vec<u8>, Vec<u8>);
    #[derive(Serialize, Deserialize)]
    enum PlainReveal {
        SelfMask(PartyId, Vec<u8>),
        MaskKey(PartyId, Vec<u8>),
    }

    /// The byte fields are bulk-copied (`serde_bytes`), but the bytes on the
    /// wire are the ones a sequence of `u8` gives: a member built before the
    /// change and one built after read each other. A length the payload
    /// cannot hold is an error, not a panic.
    #[test]
    fn byte_fields_encode_as_a_sequence_of_u8_does() {
        let keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
        let (certificate, signature) = ((0..300).map(|i| i as u8).collect::<Vec<u8>>(), vec![9u8; 64]);
        let advert = Advertisement {
            keys,
            seed_commitment: [3; 32],
            graph_commitment: [4; 32],
            certificate: certificate.clone(),
            signature: signature.clone(),
        };
        let plain = PlainAdvertisement(keys, [3; 32], [4; 32], certificate, signature);
        let (bytes, plain_bytes) = (to_bytes(&advert).unwrap(), to_bytes(&plain).unwrap());
        assert_eq!(bytes, plain_bytes);
        assert_eq!(decode_payload::<Advertisement>(&plain_bytes).unwrap(), advert);
        // The certificate's length (8 bytes after the keys and commitments)
        // claiming 200 MiB in a frame that holds 0.5 KiB: refused, no panic.
        let mut lying = plain_bytes.clone();
        lying[128..136].copy_from_slice(&(200u64 << 20).to_le_bytes());
        assert!(decode_payload::<Advertisement>(&lying).is_err());

        let share = EncryptedShare { from: 7, to: 70_000, ciphertext: vec![5; 120] };
        assert_eq!(to_bytes(&share).unwrap(), to_bytes(&(7u32, 70_000u32, vec![5u8; 120])).unwrap());
        for (reveal, plain) in [
            (ShareReveal::SelfMask { peer: 3, share: vec![6; 40] }, PlainReveal::SelfMask(3, vec![6; 40])),
            (ShareReveal::MaskKey { peer: 4, share: vec![] }, PlainReveal::MaskKey(4, vec![])),
        ] {
            let plain_bytes = to_bytes(&plain).unwrap();
            assert_eq!(to_bytes(&reveal).unwrap(), plain_bytes);
            assert_eq!(decode_payload::<ShareReveal>(&plain_bytes).unwrap(), reveal);
        }
    }
}
