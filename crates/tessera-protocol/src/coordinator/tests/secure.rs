//! The malicious-aggregator defences of issue #17 between the real
//! coordinator and real `Participant`s: robust reconstruction against a
//! member that reveals bad shares, and the commit-reveal graph draw, whose
//! missing reveal aborts the round rather than let anyone choose the seed.

use super::*;
use tessera_core::ShareReveal;

/// A saboteur's `UnmaskShares`: every share replaced by the one it holds of
/// the next peer (well-formed, of the asked kind, and wrong).
pub(super) fn sabotage(msg: ClientMsg) -> ClientMsg {
    let ClientMsg::UnmaskShares { round, mut reveals } = msg else { return msg };
    let donors: Vec<Vec<u8>> = reveals
        .iter()
        .map(|r| match r {
            ShareReveal::SelfMask { share, .. } | ShareReveal::MaskKey { share, .. } => share.clone(),
        })
        .collect();
    let n = donors.len();
    for (i, r) in reveals.iter_mut().enumerate() {
        match r {
            ShareReveal::SelfMask { share, .. } | ShareReveal::MaskKey { share, .. } => {
                *share = donors[(i + 1) % n].clone()
            }
        }
    }
    ClientMsg::UnmaskShares { round, reveals }
}

/// Five members, t = 4 (more than two thirds of 5): one holder's bad shares
/// leave four good ones per secret. The rounds complete with every member's
/// update, the global model is the one an honest run gives, and the
/// saboteur is named every round.
#[test]
fn a_member_revealing_bad_shares_is_named_and_the_rounds_complete() {
    let mut honest = Harness::new(5, cfg(3, true));
    honest.connect_all();
    honest.run(10);
    assert_eq!(honest.finished.len(), 2);

    let mut h = Harness::new(5, cfg(3, true));
    h.saboteurs.insert("m2".into());
    h.connect_all();
    h.run(10);
    assert_eq!(h.finished.len(), 2, "aborted: {:?}", h.aborted);
    assert!(h.finished.iter().all(|f| f.contributors.len() == 5));
    assert_eq!(h.bad_shares, vec![vec!["m2".to_string()]; 2], "the saboteur is named every round");
    assert_eq!(h.coord.global().digest_hex(), honest.coord.global().digest_hex(), "the sum is exact");
    assert!(honest.bad_shares.is_empty());
}

/// Two saboteurs leave three good shares of t = 4: no subset passes the
/// check, so the round aborts (nothing is released) instead of applying
/// noise as a sum.
#[test]
fn too_many_bad_shares_abort_the_round() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    c.max_round_retries = 0;
    let mut h = Harness::new(5, c);
    h.saboteurs.extend(["m1".to_string(), "m3".to_string()]);
    h.connect_all();
    h.run(10);
    assert!(h.finished.is_empty());
    assert!(h.aborted.iter().any(|(_, r)| r.contains("do not recombine")), "{:?}", h.aborted);
}

/// A member that advertised but never reveals its graph-seed contribution:
/// the seed cannot be formed without it (leaving it out would let the
/// aggregator choose among seeds), so the attempt aborts and the retry,
/// without that member, completes.
#[test]
fn a_missing_graph_reveal_aborts_the_attempt() {
    let mut c = cfg(3, true);
    c.rounds = 1;
    let mut h = Harness::new(5, c);
    h.kill_before.insert("m4".into(), "reveal_graph_seed");
    h.connect_all();
    h.run(20);
    assert!(h.aborted.iter().any(|(_, r)| r.contains("graph-seed reveal of party 4 is missing")), "{:?}", h.aborted);
    assert_eq!(h.finished.len(), 1, "the retry completes");
    assert_eq!(h.finished[0].contributors.len(), 4);
}
