//! What both sides of one round agree on before any key moves: run, round,
//! cohort, settings and vector length, folded into one `binding` digest that
//! enters every key derivation and every AEAD associated data. Two rounds
//! that differ in any of these derive unrelated keys, so nothing replays.
//! The neighbour graph is not among them: its seed is drawn during the round
//! (commit, then reveal; see [`crate::graph_seed`]) and set with
//! [`RoundContext::draw_graph`].

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tessera_core::{PartyId, RunId, SecAggSettings, SharedList};

use crate::error::SecAggError;
use crate::graph::NeighbourGraph;

/// Longest vector one round can mask (256 GiB of masked input): far beyond
/// any model, it keeps every offset arithmetic well inside u64 and each mask
/// key's AES-256-CTR stream (one vector per key) at 2^34 blocks, far below
/// the 2^64-block birthday bound of a 128-bit block cipher.
pub(crate) const MAX_VECTOR_LEN: u64 = 1 << 36;

/// Below this many members SecAgg+ saves nothing worth its weaker guarantee,
/// so [`default_plan`] uses the complete graph.
pub(crate) const FULL_GRAPH_MAX_COHORT: u32 = 32;

/// Neighbour count and threshold for a cohort size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecAggPlan {
    /// `None` = complete graph (plain SecAgg).
    pub neighbours: Option<u32>,
    /// Shamir threshold, relative to the neighbourhood (member + neighbours).
    pub threshold: u32,
}

/// Smallest threshold accepted for a neighbourhood of `m` share holders:
/// more than two thirds of it (`t > 2m/3`), and at least 2 (so a sum is never
/// one member's value).
///
/// Why two thirds: an aggregator that shows different dropout views to two
/// disjoint groups of honest share holders learns both secrets of a member
/// when each group, with the `c` colluding members it controls, reaches `t`:
/// that needs `2(t - c) + c <= m`, i.e. `t <= (m + c) / 2`. With `t > 2m/3`
/// it fails for any `c < m/3` colluders in the neighbourhood
/// (docs/secure-aggregation.md, "Thresholds").
pub fn min_threshold(neighbourhood_size: u32) -> u32 {
    (2 * u64::from(neighbourhood_size) / 3 + 1).max(2) as u32
}

/// The threshold a plan uses: the smallest safe one ([`min_threshold`]),
/// which tolerates the most dropouts.
pub fn default_threshold(neighbourhood_size: u32) -> u32 {
    min_threshold(neighbourhood_size)
}

/// Fewest neighbours a member accepts in a SecAgg+ cohort of `n`: the
/// logarithmic degree of Bell et al. (2020), `2 * ceil(log2 n)`, capped at the
/// complete graph. A smaller degree lets a few colluders make up a whole
/// neighbourhood, so a member refuses it whatever the aggregator announces.
pub fn min_neighbours(cohort_size: u32) -> u32 {
    if cohort_size < 2 {
        return 0;
    }
    let log2 = u32::BITS - (cohort_size - 1).leading_zeros(); // ceil(log2 n) for n >= 2
    (2 * log2).min(cohort_size - 1)
}

/// The degree a SecAgg+ round uses: `4 * ceil(log2 n)`, twice the floor
/// [`min_neighbours`], capped at the complete graph. The floor is what
/// privacy needs; the margin is for liveness. A round aborts when any
/// neighbourhood keeps fewer than `t > 2m/3` survivors, so a neighbourhood
/// tolerates fewer than `m/3` dropouts: at n = 1000 and 10 % dropout, about
/// 96 % of rounds would abort at `k = 20` and about 2.5 % do at `k = 40`
/// (binomial tails; docs/secure-aggregation.md, "Thresholds and degree").
pub fn default_neighbours(cohort_size: u32) -> u32 {
    (2 * min_neighbours(cohort_size)).min(cohort_size.saturating_sub(1))
}

/// Defaults for a cohort of `n`: the complete graph up to 32 members (below
/// that SecAgg+ saves nothing worth its weaker guarantee), else
/// [`default_neighbours`]; threshold [`default_threshold`] of the
/// neighbourhood size `m`.
pub fn default_plan(cohort_size: u32) -> SecAggPlan {
    if cohort_size <= FULL_GRAPH_MAX_COHORT {
        return SecAggPlan { neighbours: None, threshold: default_threshold(cohort_size) };
    }
    let k = default_neighbours(cohort_size);
    SecAggPlan { neighbours: Some(k), threshold: default_threshold(k + 1) }
}

/// Digest of the sorted cohort member names, as `RoundStart` lists them.
pub(crate) fn cohort_digest(cohort: &[String]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tessera-secagg/v1/cohort");
    h.update((cohort.len() as u64).to_le_bytes());
    for name in cohort {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    h.finalize().into()
}

/// [`cohort_digest`] of a shared cohort, or [`SecAggError::CohortNotSorted`],
/// computed once per list ([`SharedList::memo`]): every member of a round
/// in one process holds the same list, and the digest is a function of its
/// contents alone.
pub fn shared_cohort_digest(cohort: &SharedList<String>) -> Result<[u8; 32], SecAggError> {
    struct Summary(Result<[u8; 32], SecAggError>);
    let key: [u8; 32] = Sha256::digest(b"tessera-secagg/v1/memo/cohort").into();
    let summary = cohort.memo(key, |names| {
        Summary(if names.windows(2).any(|w| w[0] >= w[1]) {
            Err(SecAggError::CohortNotSorted)
        } else {
            Ok(cohort_digest(names))
        })
    });
    summary.0.clone()
}

/// Everything one round of secure aggregation is bound to.
#[derive(Clone, Debug)]
pub struct RoundContext {
    run_id: RunId,
    round: u64,
    cohort_size: u32,
    cohort_digest: [u8; 32],
    settings: SecAggSettings,
    vector_len: u64,
    min_survivors: u32,
    /// `None` = the complete graph; else neighbours on each side of the ring.
    half: Option<u32>,
    /// Drawn once the graph seed is known; shared by the members of one
    /// process that drew it from the same roster and reveals.
    graph: Option<Arc<NeighbourGraph>>,
    binding: [u8; 32],
}

impl RoundContext {
    /// `cohort` is the sorted member list of `RoundStart`; a member's
    /// `PartyId` is its index in it.
    pub fn new(
        run_id: RunId,
        round: u64,
        cohort: &[String],
        settings: SecAggSettings,
        vector_len: u64,
    ) -> Result<Self, SecAggError> {
        if cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SecAggError::CohortNotSorted);
        }
        let cohort_size =
            u32::try_from(cohort.len()).map_err(|_| SecAggError::InvalidSettings("cohort larger than 2^32"))?;
        Self::from_digest(run_id, round, cohort_size, cohort_digest(cohort), settings, vector_len)
    }

    /// [`RoundContext::new`] for a [`SharedList`] cohort: the sort check and
    /// digest come from [`shared_cohort_digest`], once per list.
    pub fn for_shared_cohort(
        run_id: RunId,
        round: u64,
        cohort: &SharedList<String>,
        settings: SecAggSettings,
        vector_len: u64,
    ) -> Result<Self, SecAggError> {
        let digest = shared_cohort_digest(cohort)?;
        let cohort_size =
            u32::try_from(cohort.len()).map_err(|_| SecAggError::InvalidSettings("cohort larger than 2^32"))?;
        Self::from_digest(run_id, round, cohort_size, digest, settings, vector_len)
    }

    /// Same as [`RoundContext::new`] when only the cohort size and its digest are at hand.
    pub(crate) fn from_digest(
        run_id: RunId,
        round: u64,
        cohort_size: u32,
        cohort_digest: [u8; 32],
        settings: SecAggSettings,
        vector_len: u64,
    ) -> Result<Self, SecAggError> {
        if cohort_size < 2 {
            return Err(SecAggError::InvalidSettings("a cohort needs at least two members"));
        }
        if !(1..=32).contains(&settings.modulus_bits) {
            return Err(SecAggError::InvalidSettings("modulus_bits must lie in 1..=32"));
        }
        if !(settings.clip_range.is_finite() && settings.clip_range > 0.0) {
            return Err(SecAggError::InvalidSettings("clip_range must be finite and positive"));
        }
        if settings.neighbours == Some(0) {
            return Err(SecAggError::InvalidSettings("a member needs at least one neighbour"));
        }
        if vector_len == 0 || vector_len > MAX_VECTOR_LEN {
            return Err(SecAggError::InvalidSettings("vector_len must lie in 1..=2^36"));
        }
        let half = NeighbourGraph::half_degree(cohort_size, settings.neighbours);
        let m = half.map_or(cohort_size, |h| 2 * h + 1);
        if settings.threshold < min_threshold(m) || settings.threshold > m {
            return Err(SecAggError::InvalidSettings("threshold must exceed two thirds of the neighbourhood"));
        }
        let mut ctx = Self {
            run_id,
            round,
            cohort_size,
            cohort_digest,
            min_survivors: settings.threshold,
            settings,
            vector_len,
            half,
            graph: None,
            binding: [0; 32],
        };
        ctx.binding = ctx.compute_binding();
        Ok(ctx)
    }

    /// Raises the number of survivors below which the whole round aborts
    /// (defaults to the threshold). In SecAgg+ the threshold is per
    /// neighbourhood, so deployments usually want a larger global floor.
    pub fn with_min_survivors(mut self, min_survivors: u32) -> Result<Self, SecAggError> {
        if min_survivors < self.settings.threshold || min_survivors > self.cohort_size {
            return Err(SecAggError::InvalidSettings("min_survivors must lie between threshold and cohort size"));
        }
        self.min_survivors = min_survivors;
        self.binding = self.compute_binding();
        Ok(self)
    }

    fn compute_binding(&self) -> [u8; 32] {
        let s = &self.settings;
        let mut h = Sha256::new();
        h.update(b"tessera-secagg/v1/round");
        h.update(self.run_id.0);
        h.update(self.round.to_le_bytes());
        h.update(self.cohort_size.to_le_bytes());
        h.update(self.cohort_digest);
        h.update(s.threshold.to_le_bytes());
        h.update(s.modulus_bits.to_le_bytes());
        h.update(s.clip_range.to_bits().to_le_bytes());
        h.update(s.neighbours.map_or([0xff; 5], |k| {
            let mut b = [0u8; 5];
            b[1..].copy_from_slice(&k.to_le_bytes());
            b
        }));
        h.update(self.vector_len.to_le_bytes());
        h.update(self.min_survivors.to_le_bytes());
        h.finalize().into()
    }

    /// The run the round belongs to.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }
    /// The round number.
    pub fn round(&self) -> u64 {
        self.round
    }
    /// Members in the cohort; party ids run from 0 to this minus 1.
    pub fn cohort_size(&self) -> u32 {
        self.cohort_size
    }
    /// The round's secure-aggregation settings.
    pub fn settings(&self) -> &SecAggSettings {
        &self.settings
    }
    /// Ring elements in each member's masked vector.
    pub fn vector_len(&self) -> u64 {
        self.vector_len
    }
    /// Shamir threshold per neighbourhood.
    pub fn threshold(&self) -> u32 {
        self.settings.threshold
    }
    /// k of the ring Z_{2^k}.
    pub fn modulus_bits(&self) -> u32 {
        self.settings.modulus_bits
    }
    /// Survivors below which the round aborts (see [`Self::with_min_survivors`]).
    pub fn min_survivors(&self) -> u32 {
        self.min_survivors
    }
    /// Who exchanges masks with whom, once drawn ([`Self::draw_graph`]).
    pub fn graph(&self) -> Option<&NeighbourGraph> {
        self.graph.as_deref()
    }
    /// Draws the neighbour graph from the round's agreed seed
    /// ([`crate::graph_seed`]); both sides call it with the same seed.
    pub fn draw_graph(&mut self, seed: [u8; 32]) {
        self.graph = Some(Arc::new(self.graph_for(seed)));
    }
    /// The graph this round draws from `seed`, without keeping it.
    pub(crate) fn graph_for(&self, seed: [u8; 32]) -> NeighbourGraph {
        NeighbourGraph::new(self.cohort_size, self.settings.neighbours, seed)
    }
    /// Sets a graph drawn by [`Self::graph_for`] from this round's seed.
    pub(crate) fn set_graph(&mut self, graph: Arc<NeighbourGraph>) {
        self.graph = Some(graph);
    }
    pub(crate) fn drawn_graph(&self) -> Result<&NeighbourGraph, SecAggError> {
        self.graph.as_deref().ok_or(SecAggError::GraphNotDrawn)
    }
    /// Whether every member neighbours every other (plain SecAgg); known
    /// before the graph is drawn.
    pub fn is_complete_graph(&self) -> bool {
        self.half.is_none()
    }
    /// Share holders per secret (the member and its neighbours); known
    /// before the graph is drawn.
    pub fn neighbourhood_size(&self) -> u32 {
        self.half.map_or(self.cohort_size, |h| 2 * h + 1)
    }
    /// Digest bound into every key derivation and AEAD associated data.
    pub fn binding(&self) -> &[u8; 32] {
        &self.binding
    }

    /// Mask selecting the low `modulus_bits` bits: arithmetic is mod 2^k.
    pub fn ring_mask(&self) -> u32 {
        ring_mask(self.settings.modulus_bits)
    }

    pub(crate) fn check_party(&self, p: PartyId) -> Result<(), SecAggError> {
        if p < self.cohort_size { Ok(()) } else { Err(SecAggError::UnknownParty(p)) }
    }

    pub(crate) fn check_range(&self, offset: u64, len: usize) -> Result<(), SecAggError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.vector_len => Ok(()),
            _ => Err(SecAggError::OutOfRange { offset, len, vector_len: self.vector_len }),
        }
    }
}

pub(crate) fn ring_mask(bits: u32) -> u32 {
    if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings(threshold: u32, neighbours: Option<u32>) -> SecAggSettings {
        SecAggSettings { threshold, modulus_bits: 16, clip_range: 1.0, neighbours }
    }

    fn cohort(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i:04}")).collect()
    }

    #[test]
    fn defaults_follow_cohort_size() {
        // t = floor(2m/3) + 1: more than two thirds of the neighbourhood.
        assert_eq!(default_plan(3), SecAggPlan { neighbours: None, threshold: 3 });
        assert_eq!(default_plan(30), SecAggPlan { neighbours: None, threshold: 21 });
        // n = 1000: ceil(log2) = 10, k = 40, m = 41, t = 28.
        assert_eq!(default_plan(1000), SecAggPlan { neighbours: Some(40), threshold: 28 });
        assert_eq!(default_plan(1024).neighbours, Some(40));
        assert_eq!(default_plan(1025).neighbours, Some(44));
        for m in 2..500u32 {
            let t = min_threshold(m);
            assert!(3 * t > 2 * m && (t == 2 || 3 * (t - 1) <= 2 * m), "m = {m}, t = {t}");
        }
        assert_eq!(min_neighbours(1000), 20);
        assert_eq!(min_neighbours(5), 4);
        assert_eq!(default_neighbours(40), 24);
        assert_eq!(default_neighbours(10), 9);
        for n in 2..3000 {
            let p = default_plan(n);
            let ctx = RoundContext::new(RunId([0; 16]), 0, &cohort(n as usize), settings(p.threshold, p.neighbours), 1);
            assert!(ctx.is_ok(), "default plan for {n} is rejected");
        }
    }

    #[test]
    fn a_shared_cohort_gives_the_same_context_and_is_checked_once() {
        let names = cohort(50);
        let shared: SharedList<String> = names.clone().into();
        let s = settings(34, None);
        let plain = RoundContext::new(RunId([4; 16]), 2, &names, s.clone(), 9).unwrap();
        let a = RoundContext::for_shared_cohort(RunId([4; 16]), 2, &shared, s.clone(), 9).unwrap();
        let b = RoundContext::for_shared_cohort(RunId([4; 16]), 2, &shared.clone(), s.clone(), 9).unwrap();
        assert_eq!((a.binding(), b.binding()), (plain.binding(), plain.binding()));
        let mut unsorted = names;
        unsorted.swap(3, 4);
        let err = RoundContext::for_shared_cohort(RunId([4; 16]), 2, &unsorted.into(), s, 9).unwrap_err();
        assert_eq!(err, SecAggError::CohortNotSorted);
    }

    #[test]
    fn rejects_bad_settings() {
        let c = cohort(10);
        let id = RunId([0; 16]);
        assert!(RoundContext::new(id, 0, &c, settings(6, None), 1).is_err()); // not above 2/3
        assert!(RoundContext::new(id, 0, &c, settings(7, None), 1).is_ok());
        assert!(RoundContext::new(id, 0, &c, settings(11, None), 1).is_err());
        assert!(RoundContext::new(id, 0, &c, settings(7, None), 0).is_err());
        let mut s = settings(7, None);
        s.modulus_bits = 33;
        assert!(RoundContext::new(id, 0, &c, s, 1).is_err());
        let mut unsorted = c.clone();
        unsorted.swap(0, 1);
        assert_eq!(
            RoundContext::new(id, 0, &unsorted, settings(7, None), 1).unwrap_err(),
            SecAggError::CohortNotSorted
        );
        assert!(RoundContext::new(id, 0, &c[..1], settings(2, None), 1).is_err());
    }

    #[test]
    fn binding_covers_every_field() {
        let c = cohort(10);
        let base = RoundContext::new(RunId([0; 16]), 1, &c, settings(7, None), 8).unwrap();
        let others = [
            RoundContext::new(RunId([1; 16]), 1, &c, settings(7, None), 8).unwrap(),
            RoundContext::new(RunId([0; 16]), 2, &c, settings(7, None), 8).unwrap(),
            RoundContext::new(RunId([0; 16]), 1, &cohort(9), settings(7, None), 8).unwrap(),
            RoundContext::new(RunId([0; 16]), 1, &c, settings(8, None), 8).unwrap(),
            RoundContext::new(RunId([0; 16]), 1, &c, settings(4, Some(4)), 8).unwrap(),
            RoundContext::new(RunId([0; 16]), 1, &c, settings(7, None), 9).unwrap(),
            base.clone().with_min_survivors(8).unwrap(),
        ];
        for o in &others {
            assert_ne!(o.binding(), base.binding());
        }
    }
}
