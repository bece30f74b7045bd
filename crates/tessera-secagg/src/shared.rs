//! A member's checks of the round-wide lists (graph roster, graph reveals,
//! survivor set), each computed once per [`SharedList`].
//!
//! Every member of a round is sent the same roster, reveals and survivor
//! set. A member's checks of them do not depend on who the member is,
//! only on the list, the round's binding and the roster, so they are
//! memoized on the list under a key that names exactly those inputs
//! ([`SharedList::memo`]). In one process whose members share one list (the
//! simulator) each check then runs once per round instead of once per
//! member, and the graph is drawn once and shared; a member still gets the
//! very result it would have computed from the list it was handed. What
//! does depend on the member (its own entry, its neighbours, its place in
//! the survivor set) is checked by each member, in O(neighbours + log n).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tessera_core::{PartyId, SharedList};

use crate::context::RoundContext;
use crate::error::SecAggError;
use crate::graph::NeighbourGraph;

/// `(party, 32 bytes)` sorted by party: the graph roster, or the reveals.
pub(crate) type PartyBytes = SharedList<(PartyId, [u8; 32])>;

/// A memo key: a domain tag and every other input of the computation.
fn memo_key(tag: &[u8], inputs: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tessera-secagg/v1/memo/");
    h.update(tag);
    for input in inputs {
        h.update((input.len() as u64).to_le_bytes());
        h.update(input);
    }
    h.finalize().into()
}

/// SHA-256 of the roster's entries (count, then each party and commitment).
pub(crate) fn roster_digest(roster: &PartyBytes) -> [u8; 32] {
    struct Digested([u8; 32]);
    let digest = roster.memo(memo_key(b"roster-digest", &[]), |entries| {
        let mut h = Sha256::new();
        h.update((entries.len() as u64).to_le_bytes());
        for (p, c) in entries {
            h.update(p.to_le_bytes());
            h.update(c);
        }
        Digested(h.finalize().into())
    });
    digest.0
}

/// The roster is sorted by party with no party twice, and every party lies
/// in a cohort of `cohort_size`.
pub(crate) fn check_roster(roster: &PartyBytes, cohort_size: u32) -> Result<(), SecAggError> {
    struct Checked(Result<(), SecAggError>);
    let checked = roster.memo(memo_key(b"roster-check", &[&cohort_size.to_le_bytes()]), |entries| {
        Checked(if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
            Err(SecAggError::BadRoster("not sorted by party, or a party twice"))
        } else if let Some((p, _)) = entries.iter().find(|(p, _)| *p >= cohort_size) {
            Err(SecAggError::UnknownParty(*p))
        } else {
            Ok(())
        })
    });
    checked.0.clone()
}

/// The round's graph, drawn from every roster member's reveal: each reveal
/// must be in roster order and open that member's roster commitment.
pub(crate) fn graph_from_reveals(
    ctx: &RoundContext,
    roster: &PartyBytes,
    reveals: &PartyBytes,
) -> Result<Arc<NeighbourGraph>, SecAggError> {
    struct Drawn(Result<Arc<NeighbourGraph>, SecAggError>);
    let key = memo_key(b"graph", &[ctx.binding(), &roster_digest(roster)]);
    reveals.memo(key, |reveals| Drawn(draw(ctx, roster, reveals))).0.clone()
}

fn draw(
    ctx: &RoundContext,
    roster: &[(PartyId, [u8; 32])],
    reveals: &[(PartyId, [u8; 32])],
) -> Result<Arc<NeighbourGraph>, SecAggError> {
    let binding = ctx.binding();
    let mut full = Vec::with_capacity(roster.len());
    for (i, (p, commitment)) in roster.iter().enumerate() {
        let (q, reveal) = reveals.get(i).ok_or(SecAggError::MissingGraphReveal(*p))?;
        if q != p {
            return Err(SecAggError::MissingGraphReveal(*p));
        }
        if crate::advert::graph_commitment(binding, *p, reveal) != *commitment {
            return Err(SecAggError::GraphRevealMismatch(*p));
        }
        full.push((*p, *commitment, *reveal));
    }
    if reveals.len() != roster.len() {
        return Err(SecAggError::BadRoster("more reveals than roster entries"));
    }
    Ok(Arc::new(ctx.graph_for(crate::advert::graph_seed(binding, &full))))
}

/// The survivor set is sorted with no party twice and lies inside the
/// roster; returns the message every survivor signs
/// ([`crate::survivor_message`]).
pub(crate) fn check_survivors(
    ctx: &RoundContext,
    roster: &PartyBytes,
    survivors: &SharedList<PartyId>,
) -> Result<Arc<Vec<u8>>, SecAggError> {
    struct Checked(Result<Arc<Vec<u8>>, SecAggError>);
    let key = memo_key(b"survivors", &[ctx.binding(), &roster_digest(roster)]);
    let checked = survivors.memo(key, |parties| {
        Checked(if parties.windows(2).any(|w| w[0] >= w[1]) {
            Err(SecAggError::BadSurvivorSet("not sorted, or a party twice"))
        } else if parties.iter().any(|p| roster.binary_search_by_key(p, |(q, _)| *q).is_err()) {
            Err(SecAggError::BadSurvivorSet("names a party outside the roster"))
        } else {
            Ok(Arc::new(crate::advert::survivor_message(ctx.binding(), parties)))
        })
    });
    checked.0.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{RunId, SecAggSettings};

    fn ctx(round: u64) -> RoundContext {
        let cohort: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
        let s = SecAggSettings { threshold: 7, modulus_bits: 16, clip_range: 1.0, neighbours: Some(8) };
        RoundContext::new(RunId([1; 16]), round, &cohort, s, 4).unwrap()
    }

    fn roster_and_reveals(ctx: &RoundContext) -> (PartyBytes, PartyBytes) {
        let reveals: Vec<(PartyId, [u8; 32])> = (0..40).map(|p| (p, [p as u8 + 1; 32])).collect();
        let roster = reveals.iter().map(|(p, r)| (*p, crate::advert::graph_commitment(ctx.binding(), *p, r))).collect();
        (roster, reveals.into())
    }

    #[test]
    fn the_shared_graph_is_the_one_each_member_would_draw() {
        let c = ctx(1);
        let (roster, reveals) = roster_and_reveals(&c);
        let a = graph_from_reveals(&c, &roster, &reveals).unwrap();
        let b = graph_from_reveals(&c, &roster, &reveals.clone()).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "drawn once per list");
        let full: Vec<_> = roster.iter().zip(reveals.iter()).map(|((p, c), (_, r))| (*p, *c, *r)).collect();
        let own = c.graph_for(crate::advert::graph_seed(c.binding(), &full));
        assert!((0..40).all(|p| own.neighbours(p) == a.neighbours(p)));
    }

    #[test]
    fn a_memo_is_not_taken_for_another_round_or_roster() {
        let c1 = ctx(1);
        let (roster, reveals) = roster_and_reveals(&c1);
        assert!(graph_from_reveals(&c1, &roster, &reveals).is_ok());
        // The same lists under another round's binding: the commitments no
        // longer open, whatever the first round's memo says.
        let c2 = ctx(2);
        assert_eq!(graph_from_reveals(&c2, &roster, &reveals).unwrap_err(), SecAggError::GraphRevealMismatch(0));
        // Another roster with one commitment changed, under the first binding.
        let mut changed = roster.to_vec();
        changed[5].1[0] ^= 1;
        let err = graph_from_reveals(&c1, &changed.into(), &reveals).unwrap_err();
        assert_eq!(err, SecAggError::GraphRevealMismatch(5));
        let survivors: SharedList<PartyId> = (0..40).collect();
        assert!(check_survivors(&c1, &roster, &survivors).is_ok());
        let short: PartyBytes = roster[..30].to_vec().into();
        assert!(check_survivors(&c1, &short, &survivors).is_err());
    }
}
