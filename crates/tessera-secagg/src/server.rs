//! The aggregator's side of one round. It relays keys and share ciphertexts
//! it cannot read, relays the graph-seed commitments and reveals it cannot
//! steer, sums masked vectors, relays the survivors' signatures on the
//! survivor set, and at the end removes the masks from the sum only,
//! checking every rebuilt secret against what its owner signed. Every
//! `on_*` call that fails leaves the session as it was; a `close_*` call
//! decides who moved on, and everyone else is a dropout of that step.
//!
//! # Masked streams and dropouts mid-stream
//!
//! A value added into the running sum cannot be taken out again without
//! keeping it, and a party that stops half way through its `MaskedChunk`s
//! must not leave half a masked vector in the sum. So a stream is *staged*:
//! `MaskedStart` claims one of a fixed number of staging slots (default
//! [`DEFAULT_STREAM_SLOTS`]), chunks must arrive in order and are copied into
//! the slot, and only `MaskedEnd` after the last element adds the slot into
//! the sum and frees it. A stream that never ends is discarded
//! ([`ServerSession::abandon_stream`] or `close_masked`) and its party is a
//! dropout before masked input, which the protocol already recovers from.
//! Memory is `(1 + slots) * vector_len` words whatever the cohort size; when
//! every slot is busy `on_masked_start` answers
//! [`SecAggError::StreamSlotsBusy`] and the daemon holds that stream back
//! (stops reading it) until a slot frees up.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tessera_core::{EncryptedShare, PartyId, PublicKeys, ShareReveal};
use zeroize::Zeroizing;

use crate::context::RoundContext;
use crate::crypto::{self, AgreementSecret, MaskOp};
use crate::error::{SecAggError, SecretKind, Step};
use crate::reconstruct;
use crate::shamir::{self, SecretShare};

/// Staging slots for concurrent masked streams (see the module docs). One
/// keeps the session at twice the vector (sum + slot), inside the 3x peak
/// memory bound of issue #2; each further slot lets one more stream overlap
/// at the cost of one more vector.
pub const DEFAULT_STREAM_SLOTS: u32 = 1;

/// Bytes of a survivor-set signature: ECDSA P-256 `r ‖ s`.
const SURVIVOR_SIGNATURE_BYTES: usize = 64;

/// Bytes of a share ciphertext: nonce, bundle (ids and two shares), GCM tag.
const SHARE_CIPHERTEXT_BYTES: usize = crypto::NONCE_LEN + 8 + 2 * shamir::SHARE_BYTES + 16;

/// Where the aggregator stands in the round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Collecting `AdvertiseKeys`.
    Advertise,
    /// Collecting `RevealGraphSeed`.
    Reveal,
    /// Collecting `ShareKeys`.
    Shares,
    /// Collecting masked streams.
    Masked,
    /// Collecting `SignSurvivors`.
    Consistency,
    /// Collecting `UnmaskShares`.
    Unmask,
}

impl Phase {
    fn step(self) -> Step {
        match self {
            Phase::Advertise => Step::AdvertiseKeys,
            Phase::Reveal => Step::RevealGraph,
            Phase::Shares => Step::ShareKeys,
            Phase::Masked => Step::MaskedInput,
            Phase::Consistency => Step::SignSurvivors,
            Phase::Unmask => Step::Unmask,
        }
    }
}

/// The only output of a round: the sum mod 2^k over the survivors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateSum {
    /// Element-wise sum mod 2^`modulus_bits` of the survivors' inputs.
    pub sum: Vec<u32>,
    /// Whose inputs the sum holds (sorted); its length is the contributor count.
    pub survivors: Vec<PartyId>,
    /// k of the ring Z_{2^k} the sum lives in.
    pub modulus_bits: u32,
    /// Members whose revealed share failed the check against what its owner
    /// signed (sorted): the round completed without them, and the caller
    /// writes them to the audit log.
    pub bad_shares: Vec<PartyId>,
}

/// What a member committed to in its signed advertisement.
#[derive(Clone, Copy)]
struct Commitments {
    self_seed: [u8; 32],
    graph: [u8; 32],
}

struct Stream {
    values: Vec<u32>,
    next: u64,
}

/// One survivor's unmask request, kept to check its answer.
struct Asked {
    survivors: BTreeSet<PartyId>,
    dropped: BTreeSet<PartyId>,
}

/// The aggregator's secure-aggregation state for one round: it relays keys
/// and shares, sums masked streams, and removes the masks once enough
/// survivors answer. It never holds one member's unmasked input.
pub struct ServerSession {
    ctx: RoundContext,
    phase: Phase,
    stream_slots: u32,
    /// U1: who advertised keys.
    keys: BTreeMap<PartyId, PublicKeys>,
    /// U1's signed commitments.
    commitments: BTreeMap<PartyId, Commitments>,
    /// Graph-seed reveals, checked against their commitments.
    reveals: BTreeMap<PartyId, [u8; 32]>,
    /// Every public key advertised so far; none may repeat.
    seen_keys: HashSet<[u8; 32]>,
    /// U2 (after `close_shares`): who sent their share bundles, and the bundles until relayed.
    shares: BTreeMap<PartyId, Vec<EncryptedShare>>,
    sum: Vec<u32>,
    streams: BTreeMap<PartyId, Stream>,
    spare: Vec<Vec<u32>>,
    /// U3: whose masked vector is in the sum.
    committed: BTreeSet<PartyId>,
    /// U4: survivors that signed U3, with their signatures (checked by the
    /// members, who hold the certificates).
    signatures: BTreeMap<PartyId, Vec<u8>>,
    asked: BTreeMap<PartyId, Asked>,
    answered: BTreeSet<PartyId>,
    /// Revealed shares per secret owner: self-mask shares of survivors,
    /// mask-key shares of dropouts (never both kinds for one owner).
    revealed: BTreeMap<PartyId, Vec<(PartyId, SecretShare)>>,
}

impl ServerSession {
    /// A session at [`Phase::Advertise`] with [`DEFAULT_STREAM_SLOTS`].
    pub fn new(ctx: RoundContext) -> Self {
        Self {
            ctx,
            phase: Phase::Advertise,
            stream_slots: DEFAULT_STREAM_SLOTS,
            keys: BTreeMap::new(),
            commitments: BTreeMap::new(),
            reveals: BTreeMap::new(),
            seen_keys: HashSet::new(),
            shares: BTreeMap::new(),
            sum: Vec::new(),
            streams: BTreeMap::new(),
            spare: Vec::new(),
            committed: BTreeSet::new(),
            signatures: BTreeMap::new(),
            asked: BTreeMap::new(),
            answered: BTreeSet::new(),
            revealed: BTreeMap::new(),
        }
    }

    /// Number of masked streams staged at once (at least 1); memory is
    /// `(1 + slots) * vector_len` words.
    pub fn with_stream_slots(mut self, slots: u32) -> Self {
        self.stream_slots = slots.max(1);
        self
    }

    /// Which messages the session is collecting.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The round this session belongs to.
    pub fn context(&self) -> &RoundContext {
        &self.ctx
    }

    /// Parties whose masked vector is in the sum so far (U3).
    pub fn survivors(&self) -> Vec<PartyId> {
        self.committed.iter().copied().collect()
    }

    fn expect(&self, phase: Phase) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::WrongStep { expected: phase.step(), actual: self.phase.step() })
        }
    }

    fn check_floor(&self, have: usize) -> Result<(), SecAggError> {
        let threshold = self.ctx.min_survivors();
        let have = have as u32;
        if have < threshold { Err(SecAggError::BelowThreshold { have, threshold }) } else { Ok(()) }
    }

    /// `AdvertiseKeys` from `from`: its keys and the two commitments its
    /// signed advertisement carries (the caller forwards the signature).
    pub fn on_advertise(
        &mut self,
        from: PartyId,
        keys: PublicKeys,
        seed_commitment: [u8; 32],
        graph_commitment: [u8; 32],
    ) -> Result<(), SecAggError> {
        self.expect(Phase::Advertise)?;
        self.ctx.check_party(from)?;
        if self.keys.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        if keys.cipher_pk == keys.mask_pk
            || self.seen_keys.contains(&keys.cipher_pk)
            || self.seen_keys.contains(&keys.mask_pk)
        {
            return Err(SecAggError::RepeatedPublicKey);
        }
        self.seen_keys.extend([keys.cipher_pk, keys.mask_pk]);
        self.keys.insert(from, keys);
        self.commitments.insert(from, Commitments { self_seed: seed_commitment, graph: graph_commitment });
        Ok(())
    }

    /// Ends key advertisement; returns the `GraphRoster` every member of U1
    /// gets: each member's graph commitment, sorted by party.
    pub fn close_advertise(&mut self) -> Result<Vec<(PartyId, [u8; 32])>, SecAggError> {
        self.expect(Phase::Advertise)?;
        self.check_floor(self.keys.len())?;
        self.phase = Phase::Reveal;
        Ok(self.commitments.iter().map(|(p, c)| (*p, c.graph)).collect())
    }

    /// `RevealGraphSeed` from `from`: must open its graph commitment.
    pub fn on_graph_reveal(&mut self, from: PartyId, reveal: [u8; 32]) -> Result<(), SecAggError> {
        self.expect(Phase::Reveal)?;
        let c = self.commitments.get(&from).ok_or(SecAggError::NotInStep(from))?;
        if self.reveals.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        if crate::advert::graph_commitment(self.ctx.binding(), from, &reveal) != c.graph {
            return Err(SecAggError::GraphRevealMismatch(from));
        }
        self.reveals.insert(from, reveal);
        Ok(())
    }

    /// Ends the reveal; draws the graph from every roster member's reveal and
    /// returns all reveals (for every member to draw the graph itself) and,
    /// for each member of U1, its neighbours in U1 (whose adverts its
    /// `CohortKeys` carries). A missing reveal aborts the round: leaving it
    /// out would let the aggregator choose among seeds.
    #[allow(clippy::type_complexity)]
    pub fn close_reveal(&mut self) -> Result<(Vec<(PartyId, [u8; 32])>, Vec<(PartyId, Vec<PartyId>)>), SecAggError> {
        self.expect(Phase::Reveal)?;
        if let Some(p) = self.keys.keys().find(|p| !self.reveals.contains_key(p)) {
            return Err(SecAggError::MissingGraphReveal(*p));
        }
        let roster: Vec<(PartyId, [u8; 32], [u8; 32])> =
            self.commitments.iter().map(|(p, c)| (*p, c.graph, self.reveals[p])).collect();
        self.ctx.draw_graph(crate::advert::graph_seed(self.ctx.binding(), &roster));
        let graph = self.ctx.drawn_graph()?;
        let neighbours = self
            .keys
            .keys()
            .map(|&u| (u, graph.neighbours(u).into_iter().filter(|v| self.keys.contains_key(v)).collect()))
            .collect();
        self.phase = Phase::Shares;
        Ok((self.reveals.iter().map(|(p, r)| (*p, *r)).collect(), neighbours))
    }

    /// `ShareKeys` from `from`: exactly one bundle for each neighbour that advertised.
    pub fn on_shares(&mut self, from: PartyId, shares: Vec<EncryptedShare>) -> Result<(), SecAggError> {
        self.expect(Phase::Shares)?;
        self.ctx.check_party(from)?;
        if !self.keys.contains_key(&from) {
            return Err(SecAggError::NotInStep(from));
        }
        if self.shares.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        let mut recipients = BTreeSet::new();
        for s in &shares {
            if s.from != from {
                return Err(SecAggError::Misaddressed { from: s.from, to: s.to });
            }
            self.ctx.check_party(s.to)?;
            if !self.ctx.drawn_graph()?.are_neighbours(from, s.to) {
                return Err(SecAggError::NotNeighbour { of: from, peer: s.to });
            }
            if !self.keys.contains_key(&s.to) {
                return Err(SecAggError::NotInStep(s.to));
            }
            if !recipients.insert(s.to) {
                return Err(SecAggError::Duplicate(s.to));
            }
            if s.ciphertext.len() != SHARE_CIPHERTEXT_BYTES {
                return Err(SecAggError::MalformedShare(from));
            }
        }
        if let Some(&to) =
            self.neighbours_in(from, |v| self.keys.contains_key(&v)).iter().find(|v| !recipients.contains(v))
        {
            return Err(SecAggError::MissingShare { missing: from, to });
        }
        self.shares.insert(from, shares);
        Ok(())
    }

    /// `u`'s neighbours that pass `keep`; none before the graph is drawn
    /// (every caller runs after `close_reveal`).
    fn neighbours_in(&self, u: PartyId, keep: impl Fn(PartyId) -> bool) -> Vec<PartyId> {
        self.ctx.graph().map(|g| g.neighbours(u)).unwrap_or_default().into_iter().filter(|v| keep(*v)).collect()
    }

    /// Ends share collection; returns the `ForwardShares` of every member
    /// that sent its bundles: the bundles addressed to it by the others that did.
    #[allow(clippy::type_complexity)]
    pub fn close_shares(&mut self) -> Result<Vec<(PartyId, Vec<EncryptedShare>)>, SecAggError> {
        self.expect(Phase::Shares)?;
        self.check_floor(self.shares.len())?;
        let mut inbox: BTreeMap<PartyId, Vec<EncryptedShare>> = self.shares.keys().map(|u| (*u, Vec::new())).collect();
        for bundles in self.shares.values_mut() {
            for s in bundles.drain(..) {
                if let Some(list) = inbox.get_mut(&s.to) {
                    list.push(s);
                }
            }
        }
        self.phase = Phase::Masked;
        Ok(inbox.into_iter().collect())
    }

    fn in_u2(&self, p: PartyId) -> bool {
        self.shares.contains_key(&p)
    }

    /// `MaskedStart` from `from`; `len` must be the round's vector length.
    pub fn on_masked_start(&mut self, from: PartyId, len: u64) -> Result<(), SecAggError> {
        self.expect(Phase::Masked)?;
        self.ctx.check_party(from)?;
        if !self.in_u2(from) {
            return Err(SecAggError::NotInStep(from));
        }
        if self.committed.contains(&from) || self.streams.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        if len != self.ctx.vector_len() {
            return Err(SecAggError::OutOfRange { offset: 0, len, vector_len: self.ctx.vector_len() });
        }
        if self.streams.len() as u32 >= self.stream_slots {
            return Err(SecAggError::StreamSlotsBusy(self.stream_slots));
        }
        let mut values = self.spare.pop().unwrap_or_default();
        values.clear();
        values.resize(self.ctx.vector_len() as usize, 0);
        self.streams.insert(from, Stream { values, next: 0 });
        Ok(())
    }

    /// `MaskedChunk`: the next `values.len()` elements of `from`'s masked vector, in order.
    pub fn on_masked_chunk(&mut self, from: PartyId, offset: u64, values: &[u32]) -> Result<(), SecAggError> {
        self.expect(Phase::Masked)?;
        self.ctx.check_range(offset, values.len())?;
        let ring = self.ctx.ring_mask();
        let stream = self.streams.get_mut(&from).ok_or(SecAggError::NoStream(from))?;
        if offset != stream.next {
            return Err(SecAggError::StreamOffset { from, expected: stream.next, actual: offset });
        }
        if let Some(i) = values.iter().position(|v| *v > ring) {
            return Err(SecAggError::ValueOutOfRing(offset + i as u64));
        }
        let start = offset as usize;
        stream.values[start..start + values.len()].copy_from_slice(values);
        stream.next += values.len() as u64;
        Ok(())
    }

    /// `MaskedEnd`: adds `from`'s complete masked vector into the sum. An
    /// early end discards the stream and makes `from` a dropout.
    pub fn on_masked_end(&mut self, from: PartyId) -> Result<(), SecAggError> {
        self.expect(Phase::Masked)?;
        let stream = self.streams.remove(&from).ok_or(SecAggError::NoStream(from))?;
        if stream.next != self.ctx.vector_len() {
            self.spare.push(stream.values);
            return Err(SecAggError::StreamIncomplete(from));
        }
        if self.sum.is_empty() {
            self.sum = vec![0; self.ctx.vector_len() as usize];
        }
        for (acc, v) in self.sum.iter_mut().zip(&stream.values) {
            *acc = acc.wrapping_add(*v);
        }
        self.spare.push(stream.values);
        self.committed.insert(from);
        Ok(())
    }

    /// Discards `from`'s unfinished stream (its connection died); returns
    /// whether there was one. `from` is then a dropout before masked input.
    pub fn abandon_stream(&mut self, from: PartyId) -> bool {
        match self.streams.remove(&from) {
            Some(stream) => {
                self.spare.push(stream.values);
                true
            }
            None => false,
        }
    }

    /// Ends masked input; returns U3, the survivor set every survivor is
    /// asked to sign (`SurvivorSet`). Aborts (revealing nothing) when fewer
    /// than `min_survivors` are left or some neighbourhood has fewer than
    /// `threshold` survivors to answer.
    pub fn close_masked(&mut self) -> Result<Vec<PartyId>, SecAggError> {
        self.expect(Phase::Masked)?;
        self.check_floor(self.committed.len())?;
        self.check_holders(|v| self.committed.contains(&v))?;
        for (_, stream) in std::mem::take(&mut self.streams) {
            self.spare.push(stream.values);
        }
        self.spare.clear();
        self.phase = Phase::Consistency;
        Ok(self.survivors())
    }

    /// Every secret the sum needs (of each member of U2) has at least
    /// `threshold` holders (itself included) that pass `keep`.
    fn check_holders(&self, keep: impl Fn(PartyId) -> bool) -> Result<(), SecAggError> {
        let t = self.ctx.threshold();
        for &u in self.shares.keys() {
            let have = self.neighbours_in(u, &keep).len() + usize::from(keep(u));
            if (have as u32) < t {
                return Err(SecAggError::CannotReconstruct { peer: u, have: have as u32, threshold: t });
            }
        }
        Ok(())
    }

    /// `SignSurvivors` from survivor `from`: its signature on U3, kept for
    /// its neighbours to check (the aggregator holds no certificate).
    pub fn on_survivor_signature(&mut self, from: PartyId, signature: Vec<u8>) -> Result<(), SecAggError> {
        self.expect(Phase::Consistency)?;
        if !self.committed.contains(&from) {
            return Err(SecAggError::NotInStep(from));
        }
        if self.signatures.contains_key(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        if signature.len() != SURVIVOR_SIGNATURE_BYTES {
            return Err(SecAggError::MalformedShare(from));
        }
        self.signatures.insert(from, signature);
        Ok(())
    }

    /// Ends the consistency check; returns the `UnmaskRequest` of every
    /// signer that can be satisfied: the signatures of its neighbours that
    /// signed. A signer with fewer than `threshold - 1` signing neighbours
    /// would refuse, so it is not asked; the round aborts when some secret
    /// is left with fewer than `threshold` holders to ask.
    #[allow(clippy::type_complexity)]
    pub fn close_consistency(&mut self) -> Result<Vec<(PartyId, Vec<(PartyId, Vec<u8>)>)>, SecAggError> {
        self.expect(Phase::Consistency)?;
        let t = self.ctx.threshold() as usize;
        let signed = |v: PartyId| self.signatures.contains_key(&v);
        // Each signer's signing neighbours, computed once.
        let signing: BTreeMap<PartyId, Vec<PartyId>> = self
            .signatures
            .keys()
            .map(|&w| (w, self.neighbours_in(w, signed)))
            .filter(|(_, nb)| nb.len() + 1 >= t)
            .collect();
        self.check_floor(signing.len())?;
        self.check_holders(|v| signing.contains_key(&v))?;
        let mut out = Vec::with_capacity(signing.len());
        for (&w, nb) in &signing {
            let sigs = nb.iter().map(|v| (*v, self.signatures[v].clone())).collect();
            out.push((w, sigs));
            let holders = self.neighbours_in(w, |v| self.in_u2(v)).into_iter().chain([w]);
            let (survivors, dropped): (BTreeSet<PartyId>, BTreeSet<PartyId>) =
                holders.partition(|v| self.committed.contains(v));
            self.asked.insert(w, Asked { survivors, dropped });
        }
        self.phase = Phase::Unmask;
        Ok(out)
    }

    /// `UnmaskShares` from survivor `from`: one reveal per party it was asked
    /// about, of the kind the request named.
    pub fn on_unmask(&mut self, from: PartyId, reveals: Vec<ShareReveal>) -> Result<(), SecAggError> {
        self.expect(Phase::Unmask)?;
        let asked = self.asked.get(&from).ok_or(SecAggError::NotInStep(from))?;
        if self.answered.contains(&from) {
            return Err(SecAggError::Duplicate(from));
        }
        let mut parsed = BTreeMap::new();
        for r in &reveals {
            let (peer, kind, bytes) = match r {
                ShareReveal::SelfMask { peer, share } => (*peer, SecretKind::SelfMask, share),
                ShareReveal::MaskKey { peer, share } => (*peer, SecretKind::MaskKey, share),
            };
            let expected = if asked.survivors.contains(&peer) {
                SecretKind::SelfMask
            } else if asked.dropped.contains(&peer) {
                SecretKind::MaskKey
            } else {
                return Err(SecAggError::InconsistentUnmaskRequest(peer));
            };
            if kind != expected {
                return Err(SecAggError::WrongRevealKind { from, peer, kind });
            }
            let share = SecretShare::from_bytes(bytes).ok_or(SecAggError::MalformedShare(from))?;
            if parsed.insert(peer, share).is_some() {
                return Err(SecAggError::Duplicate(peer));
            }
        }
        if let Some(p) = asked.survivors.iter().chain(&asked.dropped).find(|p| !parsed.contains_key(p)) {
            return Err(SecAggError::InconsistentUnmaskRequest(*p));
        }
        for (peer, share) in parsed {
            self.revealed.entry(peer).or_default().push((from, share));
        }
        self.answered.insert(from);
        Ok(())
    }

    /// Reconstructs the survivors' self-mask seeds and the dropouts' mask
    /// keys, removes every mask from the sum and returns it. Each rebuilt
    /// secret is checked against what its owner signed (seed commitment,
    /// mask public key); a bad share is skipped by trying other subsets and
    /// its holder is named in [`AggregateSum::bad_shares`]. Aborts when too
    /// few survivors remain, too few shares of some secret arrived, or no
    /// subset of them passes the check.
    pub fn finish(self) -> Result<AggregateSum, SecAggError> {
        self.expect(Phase::Unmask)?;
        self.check_floor(self.committed.len())?;
        let binding = *self.ctx.binding();
        let t = self.ctx.threshold() as usize;
        let mut suspects: BTreeSet<PartyId> = BTreeSet::new();
        let mut lagrange = reconstruct::LagrangeCache::new();
        let mut rebuild = |peer: PartyId, check: &dyn Fn(&[u8; 32]) -> bool| -> Result<_, SecAggError> {
            let shares = self.revealed.get(&peer).map(Vec::as_slice).unwrap_or_default();
            if shares.len() < t {
                return Err(SecAggError::CannotReconstruct { peer, have: shares.len() as u32, threshold: t as u32 });
            }
            let rebuilt = reconstruct::rebuild(shares, t, &suspects, &mut lagrange, check)
                .ok_or(SecAggError::InconsistentShares(peer))?;
            suspects.extend(rebuilt.bad_holders);
            Ok(rebuilt.secret)
        };

        // Rebuild every secret before touching the sum, so an abort leaves nothing half-done.
        let mut self_masks = Vec::with_capacity(self.committed.len());
        for &u in &self.committed {
            let commitment = self.commitments[&u].self_seed;
            let seed = rebuild(u, &|s| crate::advert::seed_commitment(&binding, u, s) == commitment)?;
            self_masks.push(crypto::self_mask_key(&seed, &binding, u));
        }
        let mut pair_masks = Vec::new();
        for &v in self.shares.keys().filter(|v| !self.committed.contains(v)) {
            let mask_pk = self.keys[&v].mask_pk;
            // The mask public key commits to the secret key.
            let check = |s: &[u8; 32]| AgreementSecret::from_bytes(Zeroizing::new(*s)).public() == mask_pk;
            let secret = AgreementSecret::from_bytes(rebuild(v, &check)?);
            for u in self.neighbours_in(v, |u| self.committed.contains(&u)) {
                let shared = secret.agree(&self.keys[&u].mask_pk).ok_or(SecAggError::WeakPublicKey(u))?;
                // Survivor u applied Add if u < v, so take the opposite off.
                let op = if u < v { MaskOp::Subtract } else { MaskOp::Add };
                pair_masks.push((crypto::pairwise_seed(&shared, &binding, u, v), op));
            }
        }
        // Every mask comes off in one pass over the sum (see `crypto::apply_prgs`).
        let keys: Vec<(&[u8; 32], MaskOp)> = self_masks
            .iter()
            .map(|k| (&**k, MaskOp::Subtract))
            .chain(pair_masks.iter().map(|(k, op)| (&**k, *op)))
            .collect();
        let mut sum = self.sum;
        crypto::apply_prgs(&keys, 0, &mut sum);
        let ring = self.ctx.ring_mask();
        sum.iter_mut().for_each(|v| *v &= ring);
        Ok(AggregateSum {
            sum,
            survivors: self.committed.into_iter().collect(),
            modulus_bits: self.ctx.modulus_bits(),
            bad_shares: suspects.into_iter().collect(),
        })
    }
}

/// Counts and phase only; no vector value or share.
impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSession")
            .field("round", &self.ctx.round())
            .field("phase", &self.phase)
            .field("advertised", &self.keys.len())
            .field("revealed_graph", &self.reveals.len())
            .field("shared", &self.shares.len())
            .field("open_streams", &self.streams.len())
            .field("survivors", &self.committed.len())
            .field("signed", &self.signatures.len())
            .field("answered", &self.answered.len())
            .finish_non_exhaustive()
    }
}
