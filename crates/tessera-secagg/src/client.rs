//! One cohort member's side of one round. The session is a state machine fed
//! with what the aggregator relays; every refusal leaves it unchanged, so a
//! daemon can report the error and drop out without corrupting anything.
//!
//! Steps: [`ClientSession::new`] (`AdvertiseKeys`) ->
//! [`ClientSession::on_roster`] (`GraphRoster` in, `RevealGraphSeed` out) ->
//! [`ClientSession::on_cohort_keys`] (`CohortKeys` in, `ShareKeys` out) ->
//! [`ClientSession::on_forwarded_shares`] (`ForwardShares` in) ->
//! [`ClientSession::mask_chunk`] for each `MaskedChunk` ->
//! [`ClientSession::on_survivor_set`] (`SurvivorSet` in, `SignSurvivors` out) ->
//! [`ClientSession::on_unmask_request`] (`UnmaskRequest` in, `UnmaskShares` out).

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use rand_core::CryptoRngCore;
use tessera_core::{EncryptedShare, PartyId, PublicKeys, ShareReveal, SharedList};
use zeroize::Zeroizing;

use crate::context::RoundContext;
use crate::crypto::{self, AgreementSecret, MaskOp, NONCE_LEN, Seed};
use crate::error::{SecAggError, Step};
use crate::shamir::{self, SHARE_BYTES, SecretShare};
use crate::shared::{self, PartyBytes};

/// Plaintext of a share bundle: sender, recipient, self-mask share, mask-key share.
const BUNDLE_BYTES: usize = 8 + 2 * SHARE_BYTES;

/// Shares this member holds of one peer's two secrets (or of its own).
struct HeldShares {
    self_mask: SecretShare,
    mask_key: SecretShare,
}

/// One member's secure-aggregation state for one round: its key pairs, the
/// shares it holds for its neighbours, and the masks it applies. Secrets are
/// zeroized on drop.
pub struct ClientSession {
    ctx: RoundContext,
    me: PartyId,
    step: Step,
    cipher_sk: AgreementSecret,
    mask_sk: AgreementSecret,
    public: PublicKeys,
    self_seed: Seed,
    /// This member's contribution to the graph seed, revealed at `GraphRoster`.
    graph_reveal: [u8; 32],
    /// `(party, graph commitment)` of U1, from `GraphRoster`.
    roster: PartyBytes,
    /// U3 as this member signed it, from `SurvivorSet`, and the signed message.
    survivors: SharedList<PartyId>,
    survivor_message: Option<Arc<Vec<u8>>>,
    /// Neighbours that advertised keys (from `CohortKeys`).
    peers: BTreeMap<PartyId, PublicKeys>,
    /// The two X25519 shared secrets with each of them (cipher, mask),
    /// agreed once at `CohortKeys` and used at `ForwardShares`: key
    /// agreement is most of a member's work, and doing it once per key
    /// instead of twice halves it.
    agreed: BTreeMap<PartyId, (Seed, Seed)>,
    /// Shares held per party, own included; filled at `ForwardShares`.
    held: BTreeMap<PartyId, HeldShares>,
    /// PRG keys this member masks with: its self mask, then signed pairwise masks.
    masks: Vec<(Seed, MaskOp)>,
    /// Threads [`ClientSession::mask_chunk`] may use.
    mask_threads: NonZeroUsize,
}

impl ClientSession {
    /// Makes the two fresh X25519 key pairs of this round and returns the
    /// `AdvertiseKeys` payload.
    pub fn new<R: CryptoRngCore + ?Sized>(
        ctx: RoundContext,
        me: PartyId,
        rng: &mut R,
    ) -> Result<(Self, PublicKeys), SecAggError> {
        ctx.check_party(me)?;
        let mut fresh_secret = || {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            AgreementSecret::from_bytes(bytes)
        };
        let cipher_sk = fresh_secret();
        let mask_sk = fresh_secret();
        let mut self_seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(self_seed.as_mut());
        let mut graph_reveal = [0u8; 32];
        rng.fill_bytes(&mut graph_reveal);
        let public = PublicKeys { cipher_pk: cipher_sk.public(), mask_pk: mask_sk.public() };
        let session = Self {
            ctx,
            me,
            step: Step::AdvertiseKeys,
            cipher_sk,
            mask_sk,
            public,
            self_seed,
            graph_reveal,
            roster: SharedList::default(),
            survivors: SharedList::default(),
            survivor_message: None,
            peers: BTreeMap::new(),
            agreed: BTreeMap::new(),
            held: BTreeMap::new(),
            masks: Vec::new(),
            mask_threads: default_mask_threads(),
        };
        Ok((session, public))
    }

    /// This round's public keys, as advertised.
    pub fn public_keys(&self) -> PublicKeys {
        self.public
    }

    /// This member's index in the sorted cohort.
    pub fn party(&self) -> PartyId {
        self.me
    }

    /// The last step this member completed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Commitment to this member's self-mask seed (see [`crate::seed_commitment`]).
    pub fn seed_commitment(&self) -> [u8; 32] {
        crate::advert::seed_commitment(self.ctx.binding(), self.me, &self.self_seed)
    }

    /// Commitment to this member's graph-seed contribution (see [`crate::graph_seed`]).
    pub fn graph_commitment(&self) -> [u8; 32] {
        crate::advert::graph_commitment(self.ctx.binding(), self.me, &self.graph_reveal)
    }

    /// The bytes this member signs to advertise its keys (see [`crate::advert_message`]).
    pub fn advert_message(&self) -> Vec<u8> {
        let binding = self.ctx.binding();
        crate::advert::advert_message(binding, self.me, &self.public, &self.seed_commitment(), &self.graph_commitment())
    }

    /// The round this session belongs to.
    pub fn context(&self) -> &RoundContext {
        &self.ctx
    }

    /// Threads [`Self::mask_chunk`] may use (default [`default_mask_threads`]).
    /// A simulator running many members side by side sets 1; the result does
    /// not depend on it.
    pub fn set_mask_threads(&mut self, threads: NonZeroUsize) {
        self.mask_threads = threads;
    }

    /// Threads [`Self::mask_chunk`] may use now.
    pub fn mask_threads(&self) -> NonZeroUsize {
        self.mask_threads
    }

    fn expect(&self, expected: Step) -> Result<(), SecAggError> {
        if self.step == expected { Ok(()) } else { Err(SecAggError::WrongStep { expected, actual: self.step }) }
    }

    /// Enough parties left (this member included)? In the complete graph the
    /// neighbourhood is the cohort, so the global floor applies too.
    fn check_count(&self, have: usize) -> Result<(), SecAggError> {
        let mut threshold = self.ctx.threshold();
        if self.ctx.is_complete_graph() {
            threshold = threshold.max(self.ctx.min_survivors());
        }
        let have = have as u32;
        if have < threshold { Err(SecAggError::BelowThreshold { have, threshold }) } else { Ok(()) }
    }

    /// `GraphRoster`: checks that the roster of graph commitments is sorted,
    /// lies in the cohort, is no smaller than the survivor floor and holds
    /// this member's own commitment; returns this member's reveal
    /// (`RevealGraphSeed`). Revealing only now is what keeps the seed out of
    /// anyone's hands: every commitment is fixed before it.
    pub fn on_roster(&mut self, roster: &[(PartyId, [u8; 32])]) -> Result<[u8; 32], SecAggError> {
        self.on_shared_roster(&roster.to_vec().into())
    }

    /// [`Self::on_roster`] for a roster shared by the members of one
    /// process: the checks of the whole list run once per list
    /// ([`SharedList::memo`]), this member's own entry is found by binary
    /// search, and the list is kept by reference.
    pub fn on_shared_roster(&mut self, roster: &SharedList<(PartyId, [u8; 32])>) -> Result<[u8; 32], SecAggError> {
        self.expect(Step::AdvertiseKeys)?;
        shared::check_roster(roster, self.ctx.cohort_size())?;
        match roster.binary_search_by_key(&self.me, |(p, _)| *p) {
            Err(_) => return Err(SecAggError::BadRoster("leaves this member out")),
            Ok(i) if roster[i].1 != self.graph_commitment() => {
                return Err(SecAggError::BadRoster("lists another commitment for this member"));
            }
            Ok(_) => {}
        }
        let (have, threshold) = (roster.len() as u32, self.ctx.min_survivors());
        if have < threshold {
            return Err(SecAggError::BelowThreshold { have, threshold });
        }
        self.roster = roster.clone();
        self.step = Step::RevealGraph;
        Ok(self.graph_reveal)
    }

    /// `CohortKeys`: draws the graph from every reveal, checks that the
    /// neighbours' keys are exactly this member's neighbours in the roster
    /// (each with the graph commitment the roster lists), Shamir-shares the
    /// self-mask seed and the mask secret key among them, and returns one
    /// encrypted bundle per neighbour (`ShareKeys`). `keys` holds each
    /// neighbour's keys and graph commitment from its advertisement, whose
    /// signature the caller has checked.
    pub fn on_cohort_keys<R: CryptoRngCore + ?Sized>(
        &mut self,
        keys: &[(PartyId, PublicKeys, [u8; 32])],
        reveals: &[(PartyId, [u8; 32])],
        rng: &mut R,
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        self.on_cohort_keys_shared(keys, &reveals.to_vec().into(), rng)
    }

    /// [`Self::on_cohort_keys`] with reveals shared by the members of one
    /// process: the reveals are checked and the graph drawn once per list
    /// (for this round's binding and roster), and the graph is shared.
    pub fn on_cohort_keys_shared<R: CryptoRngCore + ?Sized>(
        &mut self,
        keys: &[(PartyId, PublicKeys, [u8; 32])],
        reveals: &SharedList<(PartyId, [u8; 32])>,
        rng: &mut R,
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        self.expect(Step::RevealGraph)?;
        let graph = shared::graph_from_reveals(&self.ctx, &self.roster, reveals)?;
        self.ctx.set_graph(graph);
        let binding = *self.ctx.binding();
        let graph = self.ctx.drawn_graph()?;
        let mut peers = BTreeMap::new();
        let mut seen_keys: BTreeSet<[u8; 32]> = [self.public.cipher_pk, self.public.mask_pk].into();
        let mut share_keys = BTreeMap::new();
        let mut agreed = BTreeMap::new();
        for (p, k, graph_commitment) in keys {
            self.ctx.check_party(*p)?;
            if !graph.are_neighbours(self.me, *p) {
                return Err(SecAggError::NotNeighbour { of: self.me, peer: *p });
            }
            match self.roster.binary_search_by_key(p, |(q, _)| *q) {
                Ok(i) if self.roster[i].1 == *graph_commitment => {}
                _ => return Err(SecAggError::RosterMismatch(*p)),
            }
            if peers.insert(*p, *k).is_some() {
                return Err(SecAggError::Duplicate(*p));
            }
            // Bonawitz et al.: all advertised keys must differ, or a replayed
            // key could make two members share a mask.
            if !seen_keys.insert(k.cipher_pk) || !seen_keys.insert(k.mask_pk) {
                return Err(SecAggError::RepeatedPublicKey);
            }
            let shared = self.cipher_sk.agree(&k.cipher_pk).ok_or(SecAggError::WeakPublicKey(*p))?;
            let mask = self.mask_sk.agree(&k.mask_pk).ok_or(SecAggError::WeakPublicKey(*p))?;
            share_keys.insert(*p, crypto::share_key(&shared, &binding, self.me, *p));
            agreed.insert(*p, (shared, mask));
        }
        // A neighbour in the roster left out would shrink the neighbourhood
        // the aggregator must answer for.
        if let Some(p) = graph
            .neighbours(self.me)
            .into_iter()
            .find(|p| self.roster.binary_search_by_key(p, |(q, _)| *q).is_ok() && !peers.contains_key(p))
        {
            return Err(SecAggError::WithheldNeighbour(p));
        }
        self.check_count(peers.len() + 1)?;

        let holders: Vec<PartyId> = peers.keys().copied().chain([self.me]).collect();
        let t = self.ctx.threshold();
        let self_mask_shares = shamir::split(&self.self_seed, t, &holders, rng);
        let mask_key_shares = shamir::split(self.mask_sk.bytes(), t, &holders, rng);
        let mut out = Vec::with_capacity(peers.len());
        for ((to, self_mask), (_, mask_key)) in self_mask_shares.into_iter().zip(mask_key_shares) {
            let Some(key) = share_keys.get(&to) else {
                self.held.insert(to, HeldShares { self_mask, mask_key });
                continue;
            };
            let mut bundle = Zeroizing::new([0u8; BUNDLE_BYTES]);
            bundle[..4].copy_from_slice(&self.me.to_le_bytes());
            bundle[4..8].copy_from_slice(&to.to_le_bytes());
            bundle[8..8 + SHARE_BYTES].copy_from_slice(self_mask.to_bytes().as_ref());
            bundle[8 + SHARE_BYTES..].copy_from_slice(mask_key.to_bytes().as_ref());
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let aad = crypto::share_aad(&binding, self.me, to);
            out.push(EncryptedShare { from: self.me, to, ciphertext: crypto::seal(key, nonce, &aad, bundle.as_ref()) });
        }
        self.peers = peers;
        self.agreed = agreed;
        self.step = Step::ShareKeys;
        Ok(out)
    }

    /// `ForwardShares`: decrypts and checks the bundles of the neighbours
    /// that moved on; those neighbours are exactly the ones this member
    /// masks with.
    pub fn on_forwarded_shares(&mut self, shares: &[EncryptedShare]) -> Result<(), SecAggError> {
        self.expect(Step::ShareKeys)?;
        let binding = *self.ctx.binding();
        let mut received = BTreeMap::new();
        for s in shares {
            if s.to != self.me {
                return Err(SecAggError::Misaddressed { from: s.from, to: s.to });
            }
            let (shared, mask) =
                self.agreed.get(&s.from).ok_or(SecAggError::NotNeighbour { of: self.me, peer: s.from })?;
            if received.contains_key(&s.from) {
                return Err(SecAggError::Duplicate(s.from));
            }
            let key = crypto::share_key(shared, &binding, s.from, self.me);
            let aad = crypto::share_aad(&binding, s.from, self.me);
            let plain = crypto::open(&key, &aad, &s.ciphertext)
                .ok_or(SecAggError::ShareDecryption { from: s.from, to: self.me })?;
            if plain.len() != BUNDLE_BYTES || plain[..4] != s.from.to_le_bytes() || plain[4..8] != self.me.to_le_bytes()
            {
                return Err(SecAggError::MalformedShare(s.from));
            }
            let self_mask = SecretShare::from_bytes(&plain[8..8 + SHARE_BYTES]);
            let mask_key = SecretShare::from_bytes(&plain[8 + SHARE_BYTES..]);
            let (Some(self_mask), Some(mask_key)) = (self_mask, mask_key) else {
                return Err(SecAggError::MalformedShare(s.from));
            };
            let seed = crypto::pairwise_seed(mask, &binding, self.me, s.from);
            // One side adds, the other subtracts: the pair cancels in the sum.
            let op = if self.me < s.from { MaskOp::Add } else { MaskOp::Subtract };
            received.insert(s.from, (HeldShares { self_mask, mask_key }, seed, op));
        }
        self.check_count(received.len() + 1)?;
        self.masks.push((crypto::self_mask_key(&self.self_seed, &binding, self.me), MaskOp::Add));
        for (peer, (held, seed, op)) in received {
            self.held.insert(peer, held);
            self.masks.push((seed, op));
        }
        // The pairwise seeds are derived: the agreed secrets are done with.
        self.agreed.clear();
        self.step = Step::MaskedInput;
        Ok(())
    }

    /// Masks `values[i]` (the quantized update at `offset + i`, each below
    /// 2^k) in place. Chunks are independent, so the update is masked as it
    /// streams out and never held twice. A long chunk is split into disjoint
    /// slices masked on up to [`Self::mask_threads`] scoped threads, joined
    /// before this returns; the result is bit-identical to one thread's.
    pub fn mask_chunk(&self, offset: u64, values: &mut [u32]) -> Result<(), SecAggError> {
        self.expect(Step::MaskedInput)?;
        self.ctx.check_range(offset, values.len())?;
        let ring = self.ctx.ring_mask();
        if let Some(i) = values.iter().position(|v| *v > ring) {
            return Err(SecAggError::ValueOutOfRing(offset + i as u64));
        }
        let keys: Vec<(&[u8; 32], MaskOp)> = self.masks.iter().map(|(seed, op)| (&**seed, *op)).collect();
        let reduce = |part: &mut [u32]| part.iter_mut().for_each(|v| *v &= ring);
        crypto::apply_prgs_parallel(
            &keys,
            offset,
            values,
            self.mask_threads.get(),
            crypto::MIN_WORDS_PER_WORKER,
            &reduce,
        );
        Ok(())
    }

    /// `SurvivorSet`: checks the announced U3 (sorted, inside the roster,
    /// holding this member, at least the survivor floor) and returns the
    /// bytes to sign ([`crate::survivor_message`]). This member signs one
    /// set per round: the session moves on and never signs another.
    pub fn on_survivor_set(&mut self, survivors: &[PartyId]) -> Result<Vec<u8>, SecAggError> {
        self.on_shared_survivor_set(&survivors.to_vec().into())
    }

    /// [`Self::on_survivor_set`] for a set shared by the members of one
    /// process: the checks of the whole set and its message are computed
    /// once per set (for this round's binding and roster).
    pub fn on_shared_survivor_set(&mut self, survivors: &SharedList<PartyId>) -> Result<Vec<u8>, SecAggError> {
        self.expect(Step::MaskedInput)?;
        let message = shared::check_survivors(&self.ctx, &self.roster, survivors)?;
        if survivors.binary_search(&self.me).is_err() {
            return Err(SecAggError::BadSurvivorSet("leaves this member out"));
        }
        let (have, threshold) = (survivors.len() as u32, self.ctx.min_survivors());
        if have < threshold {
            return Err(SecAggError::BelowThreshold { have, threshold });
        }
        self.survivors = survivors.clone();
        self.survivor_message = Some(message.clone());
        self.step = Step::SignSurvivors;
        Ok(message.to_vec())
    }

    /// The survivor set this member signed, once it has (`None` before).
    pub fn signed_survivors(&self) -> Option<Vec<PartyId>> {
        (self.step == Step::SignSurvivors).then(|| self.survivors.to_vec())
    }

    /// The message this member signed on the survivor set
    /// ([`crate::survivor_message`]), once it has (`None` before): its
    /// neighbours' signatures must be on the same bytes.
    pub fn signed_survivor_message(&self) -> Option<&[u8]> {
        (self.step == Step::SignSurvivors).then_some(self.survivor_message.as_deref()?.as_slice())
    }

    /// `UnmaskRequest`: `signers` are the neighbours whose signature on the
    /// survivor set this member signed the caller has verified. Reveals
    /// nothing unless they and this member reach the threshold; then, for
    /// each party it holds shares of, reveals the self-mask share if the
    /// signed set has it and the mask-key share if not, never both. Answers
    /// once.
    pub fn on_unmask_request(&mut self, signers: &BTreeSet<PartyId>) -> Result<Vec<ShareReveal>, SecAggError> {
        self.expect(Step::SignSurvivors)?;
        let graph = self.ctx.drawn_graph()?;
        for p in signers {
            if !graph.are_neighbours(self.me, *p) {
                return Err(SecAggError::NotNeighbour { of: self.me, peer: *p });
            }
            if self.survivors.binary_search(p).is_err() {
                return Err(SecAggError::BadSurvivorSet("a signer is not in the set it signed"));
            }
        }
        let (have, threshold) = (signers.len() as u32 + 1, self.ctx.threshold());
        if have < threshold {
            return Err(SecAggError::TooFewSignatures { have, threshold });
        }
        self.check_count(self.held.keys().filter(|p| self.survivors.binary_search(p).is_ok()).count())?;
        let reveals = self
            .held
            .iter()
            .map(|(peer, held)| {
                if self.survivors.binary_search(peer).is_ok() {
                    ShareReveal::SelfMask { peer: *peer, share: held.self_mask.to_bytes().to_vec() }
                } else {
                    ShareReveal::MaskKey { peer: *peer, share: held.mask_key.to_bytes().to_vec() }
                }
            })
            .collect();
        self.held.clear();
        self.masks.clear();
        self.step = Step::Done;
        Ok(reveals)
    }
}

/// Shows where the session is, never a key, seed or share.
impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("party", &self.me)
            .field("round", &self.ctx.round())
            .field("step", &self.step)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The machine's available parallelism (1 if it cannot be read): the default
/// thread count of [`ClientSession::mask_chunk`].
///
/// Read once per process and remembered: on Linux the standard library
/// reads the cgroup quota files on every call (an `open`, `read` and
/// `statx` each), and every session and every member `Policy` starts from
/// this value, so a simulator building 10,000 members paid that 20,000
/// times a round (about 2 % of a 1,000-member round's CPU time,
/// docs/benchmarks.md, "Protocol scale"). A quota changed while the
/// process runs is not seen; the count only sizes a thread pool.
pub fn default_mask_threads() -> NonZeroUsize {
    static THREADS: std::sync::OnceLock<NonZeroUsize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
}
