//! The SecAgg+ neighbour graph (Bell et al., CCS 2020): a Harary graph laid
//! on a ring whose order is a permutation drawn from the round's shared
//! `graph_seed`. Every member talks to its `ceil(k/2)` ring neighbours on each
//! side, so the graph is regular, symmetric and connected, and both sides
//! compute it alone from the seed. With no neighbour count (or one that
//! reaches every other member) it is the complete graph of plain SecAgg.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use tessera_core::PartyId;

/// Which members exchange pairwise masks and hold each other's shares:
/// a ring-shaped Harary graph, or the complete graph of plain SecAgg.
#[derive(Clone, Debug)]
pub struct NeighbourGraph {
    /// Ring position of every party.
    position: Vec<u32>,
    /// Party at every ring position.
    ring: Vec<PartyId>,
    /// Neighbours on each side of the ring; `None` is the complete graph.
    half: Option<u32>,
}

impl NeighbourGraph {
    /// `neighbours` is the requested degree; it is rounded up to the next
    /// even number, and the complete graph is used once that reaches `n - 1`.
    pub fn new(cohort_size: u32, neighbours: Option<u32>, graph_seed: [u8; 32]) -> Self {
        let half = Self::half_degree(cohort_size, neighbours);
        let mut ring: Vec<PartyId> = (0..cohort_size).collect();
        if half.is_some() {
            // A vetted CSPRNG (ChaCha20) keyed by the shared seed, so every
            // party derives the same permutation.
            ring.shuffle(&mut ChaCha20Rng::from_seed(graph_seed));
        }
        let mut position = vec![0u32; ring.len()];
        for (pos, party) in ring.iter().enumerate() {
            position[*party as usize] = pos as u32;
        }
        Self { position, ring, half }
    }

    /// Neighbours on each side of the ring for a requested degree, `None`
    /// for the complete graph: the shape, which does not depend on the seed.
    pub(crate) fn half_degree(cohort_size: u32, neighbours: Option<u32>) -> Option<u32> {
        neighbours.map(|k| k.div_ceil(2)).filter(|h| u64::from(*h) * 2 < u64::from(cohort_size).saturating_sub(1))
    }

    /// Parties in the graph.
    pub fn cohort_size(&self) -> u32 {
        self.ring.len() as u32
    }

    /// Whether every party neighbours every other (plain SecAgg).
    pub fn is_complete(&self) -> bool {
        self.half.is_none()
    }

    /// Neighbourhood size including the party itself: how many share holders
    /// each secret has, and what the threshold is measured against.
    pub fn neighbourhood_size(&self) -> u32 {
        match self.half {
            None => self.cohort_size(),
            Some(h) => 2 * h + 1,
        }
    }

    /// True when `a` and `b` are distinct and adjacent.
    pub fn are_neighbours(&self, a: PartyId, b: PartyId) -> bool {
        let n = self.cohort_size();
        if a == b || a >= n || b >= n {
            return false;
        }
        match self.half {
            None => true,
            Some(h) => {
                let (pa, pb) = (self.position[a as usize], self.position[b as usize]);
                let d = pa.abs_diff(pb);
                d.min(n - d) <= h
            }
        }
    }

    /// The neighbours of `party` (never the party itself), in ascending id order.
    pub fn neighbours(&self, party: PartyId) -> Vec<PartyId> {
        let n = self.cohort_size();
        if party >= n {
            return Vec::new();
        }
        let mut out: Vec<PartyId> = match self.half {
            None => (0..n).filter(|p| *p != party).collect(),
            Some(h) => {
                // u64 so that ring arithmetic cannot overflow for any cohort size.
                let (pos, n) = (u64::from(self.position[party as usize]), u64::from(n));
                let at = |p: u64| self.ring[(p % n) as usize];
                (1..=u64::from(h)).flat_map(|j| [at(pos + j), at(pos + n - j)]).collect()
            }
        };
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harary_graph_is_regular_and_symmetric() {
        let g = NeighbourGraph::new(40, Some(7), [3; 32]);
        assert!(!g.is_complete());
        assert_eq!(g.neighbourhood_size(), 9);
        for u in 0..40 {
            let nb = g.neighbours(u);
            assert_eq!(nb.len(), 8);
            assert!(!nb.contains(&u));
            for v in 0..40 {
                assert_eq!(nb.contains(&v), g.are_neighbours(u, v));
                assert_eq!(g.are_neighbours(u, v), g.are_neighbours(v, u));
            }
        }
    }

    #[test]
    fn seed_changes_the_graph_and_large_degree_is_complete() {
        let a = NeighbourGraph::new(40, Some(6), [1; 32]);
        let b = NeighbourGraph::new(40, Some(6), [2; 32]);
        assert!((0..40).any(|u| a.neighbours(u) != b.neighbours(u)));
        let full = NeighbourGraph::new(10, Some(9), [1; 32]);
        assert!(full.is_complete());
        assert_eq!(full.neighbours(3).len(), 9);
        assert!(NeighbourGraph::new(10, None, [1; 32]).is_complete());
    }
}
