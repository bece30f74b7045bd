//! Robust reconstruction: share holders that reveal bad shares are skipped
//! and named, and the round still produces the exact sum.

mod common;

use common::{context, settings, up_to_masking};
use tessera_core::ShareReveal;
use tessera_secagg::SecAggError;

/// Replaces every share a saboteur reveals by the share it holds of another
/// peer: well-formed, of the right kind, and wrong.
fn sabotage(reveals: &mut [ShareReveal]) {
    let n = reveals.len();
    let donors: Vec<Vec<u8>> = reveals
        .iter()
        .map(|r| match r {
            ShareReveal::SelfMask { share, .. } | ShareReveal::MaskKey { share, .. } => share.clone(),
        })
        .collect();
    for (i, r) in reveals.iter_mut().enumerate() {
        match r {
            ShareReveal::SelfMask { share, .. } | ShareReveal::MaskKey { share, .. } => {
                *share = donors[(i + 1) % n].clone();
            }
        }
    }
}

/// Seven members (complete graph, t = 5); party 6 drops before masked
/// input, so both secret kinds are rebuilt. `saboteurs` reveal bad shares.
fn round_with(saboteurs: &[u32]) -> Result<tessera_secagg::AggregateSum, SecAggError> {
    let d = 6u64;
    let ctx = context(7, settings(5, 16, None), d);
    let mut r = up_to_masking(&ctx, 21);
    for p in 0..6u32 {
        r.server.on_masked_start(p, d).unwrap();
        let mut v = vec![p + 1; d as usize];
        r.clients[p as usize].mask_chunk(0, &mut v).unwrap();
        r.server.on_masked_chunk(p, 0, &v).unwrap();
        r.server.on_masked_end(p).unwrap();
    }
    let survivors = r.server.close_masked().unwrap();
    assert_eq!(survivors, vec![0, 1, 2, 3, 4, 5]);
    for &p in &survivors {
        r.clients[p as usize].on_survivor_set(&survivors).unwrap();
        r.server.on_survivor_signature(p, vec![7; 64]).unwrap();
    }
    for (p, sigs) in r.server.close_consistency().unwrap() {
        let signers = sigs.iter().map(|(v, _)| *v).collect();
        let mut reveals = r.clients[p as usize].on_unmask_request(&signers).unwrap();
        if saboteurs.contains(&p) {
            sabotage(&mut reveals);
        }
        r.server.on_unmask(p, reveals).unwrap();
    }
    r.server.finish()
}

#[test]
fn bad_shares_are_skipped_and_their_holders_named() {
    let clean = round_with(&[]).unwrap();
    assert_eq!(clean.sum, vec![21; 6], "1 + 2 + ... + 6");
    assert!(clean.bad_shares.is_empty());
    // Six answer and t = 5: one bad share per secret is survivable. The
    // saboteur is inside the first t holders, so the fast path fails.
    let one = round_with(&[1]).unwrap();
    assert_eq!(one.sum, clean.sum);
    assert_eq!(one.bad_shares, vec![1]);
    assert_eq!(one.survivors, clean.survivors);
    // Two bad shares leave four clean ones, below t: the round aborts
    // (revealing nothing unmasked), naming the secret it could not rebuild.
    assert!(matches!(round_with(&[1, 4]), Err(SecAggError::InconsistentShares(_))));
}
