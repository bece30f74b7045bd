//! What must be refused: rounds below threshold, requests for both secrets,
//! tampered or replayed shares, and masked vectors that leak their input.

mod common;

use common::{Dropouts, context, run_round, settings, up_to_masking, up_to_shares};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::{PublicKeys, RunId, ShareReveal};
use tessera_secagg::{ClientSession, RoundContext, SecAggError, ServerSession};

#[test]
fn fewer_survivors_than_threshold_abort() {
    let n = 6;
    let ctx = context(n, settings(5, 16, None), 8);
    let inputs: Vec<Vec<u32>> = (0..n).map(|p| vec![p; 8]).collect();

    // Three drop before masked input: 3 < t = 5 survivors, no unmask request goes out.
    let drops = Dropouts { before_masked: [0, 2, 4].into(), ..Default::default() };
    let out = run_round(&ctx, &inputs, &drops, 3, 2, 1);
    assert_eq!(out.result.unwrap_err(), SecAggError::BelowThreshold { have: 3, threshold: 5 });

    // Three advertise nothing: abort before any share is made.
    let drops = Dropouts { before_advertise: [1, 2, 3].into(), ..Default::default() };
    assert!(matches!(run_round(&ctx, &inputs, &drops, 3, 2, 1).result, Err(SecAggError::BelowThreshold { .. })));

    // Five survive masking but only three answer (t = 5): secrets cannot be rebuilt.
    let drops = Dropouts { before_masked: [5].into(), before_unmask: [0, 1].into(), ..Default::default() };
    assert!(matches!(run_round(&ctx, &inputs, &drops, 3, 2, 1).result, Err(SecAggError::CannotReconstruct { .. })));

    // A threshold of 1 (a "sum" of one member) can never be configured.
    assert!(RoundContext::new(RunId([0; 16]), 0, &common::cohort(2), settings(1, 16, None), 8).is_err());
    let two = context(2, settings(2, 16, None), 4);
    let drops = Dropouts { before_unmask: [1].into(), ..Default::default() };
    assert!(run_round(&two, &[vec![1; 4], vec![2; 4]], &drops, 4, 1, 3).result.is_err());
}

/// Streams every member's masked input (value p for party p).
fn mask_all(r: &mut common::Ready, n: u32, d: u64) {
    for p in 0..n {
        r.server.on_masked_start(p, d).unwrap();
        let mut v = vec![p; d as usize];
        r.clients[p as usize].mask_chunk(0, &mut v).unwrap();
        r.server.on_masked_chunk(p, 0, &v).unwrap();
        r.server.on_masked_end(p).unwrap();
    }
}

#[test]
fn client_refuses_bad_survivor_sets_and_too_few_signatures() {
    let ctx = context(7, settings(5, 16, None), 4);
    let mut r = up_to_masking(&ctx, 7);
    let c = &mut r.clients[0];
    // Malformed, outside the cohort, without this member, below the floor.
    let bad_set = |e: &SecAggError| matches!(e, SecAggError::BadSurvivorSet(_));
    assert!(bad_set(&c.on_survivor_set(&[0, 2, 1, 3, 4]).unwrap_err()));
    assert!(bad_set(&c.on_survivor_set(&[0, 1, 1, 2, 3, 4]).unwrap_err()));
    assert!(matches!(c.on_survivor_set(&[0, 1, 2, 3, 9]), Err(SecAggError::BadSurvivorSet(_))));
    assert!(bad_set(&c.on_survivor_set(&[1, 2, 3, 4, 5, 6]).unwrap_err()));
    assert_eq!(c.on_survivor_set(&[0, 1, 2, 3]).unwrap_err(), SecAggError::BelowThreshold { have: 4, threshold: 5 });
    // No reveal before a set is signed.
    assert!(matches!(c.on_unmask_request(&[1, 2, 3, 4].into()), Err(SecAggError::WrongStep { .. })));
    let message = c.on_survivor_set(&[0, 1, 2, 3, 4, 5]).unwrap();
    assert_eq!(message, tessera_secagg::survivor_message(ctx.binding(), &[0, 1, 2, 3, 4, 5]));
    // One set per round: a second one is refused.
    assert!(matches!(c.on_survivor_set(&[0, 1, 2, 3, 4, 5, 6]), Err(SecAggError::WrongStep { .. })));
    // Signers outside the signed set, or too few of them (3 + itself < t = 5).
    assert!(matches!(c.on_unmask_request(&[1, 2, 3, 6].into()), Err(SecAggError::BadSurvivorSet(_))));
    assert_eq!(
        c.on_unmask_request(&[1, 2, 3].into()).unwrap_err(),
        SecAggError::TooFewSignatures { have: 4, threshold: 5 }
    );
    // The refusals changed nothing: with enough signers the member reveals,
    // once, exactly one secret kind per party, as the signed set says.
    let reveals = c.on_unmask_request(&[1, 2, 3, 4].into()).unwrap();
    assert_eq!(reveals.len(), 7);
    for r in &reveals {
        match r {
            ShareReveal::SelfMask { peer, .. } => assert_ne!(*peer, 6),
            ShareReveal::MaskKey { peer, .. } => assert_eq!(*peer, 6),
        }
    }
    assert!(matches!(c.on_unmask_request(&[1, 2, 3, 4].into()), Err(SecAggError::WrongStep { .. })));
    let mut v = [0u32; 4];
    assert!(c.mask_chunk(0, &mut v).is_err(), "no masking after revealing");
}

#[test]
fn server_refuses_a_reveal_of_the_wrong_kind() {
    let ctx = context(5, settings(4, 16, None), 4);
    let mut r = up_to_masking(&ctx, 11);
    mask_all(&mut r, 5, 4);
    let survivors = r.server.close_masked().unwrap();
    assert_eq!(survivors, vec![0, 1, 2, 3, 4]);
    for p in 0..5u32 {
        r.clients[p as usize].on_survivor_set(&survivors).unwrap();
        r.server.on_survivor_signature(p, vec![1; 64]).unwrap();
    }
    assert_eq!(r.server.on_survivor_signature(0, vec![1; 64]).unwrap_err(), SecAggError::Duplicate(0));
    let requests = r.server.close_consistency().unwrap();
    let (p, sigs) = requests[0].clone();
    assert_eq!(sigs.len(), 4, "every neighbour's signature is forwarded");
    let signers = sigs.iter().map(|(v, _)| *v).collect();
    let mut reveals = r.clients[p as usize].on_unmask_request(&signers).unwrap();
    // A malicious member relabels a self-mask share as a mask-key share.
    let honest = reveals.clone();
    if let Some(ShareReveal::SelfMask { peer, share }) = reveals.pop() {
        reveals.push(ShareReveal::MaskKey { peer, share });
    }
    assert!(matches!(r.server.on_unmask(p, reveals), Err(SecAggError::WrongRevealKind { .. })));
    r.server.on_unmask(p, honest.clone()).unwrap();
    assert_eq!(r.server.on_unmask(p, honest).unwrap_err(), SecAggError::Duplicate(p));
}

#[test]
fn tampered_and_misrouted_shares_are_rejected() {
    let ctx = context(5, settings(4, 16, None), 4);
    let mut r = up_to_shares(&ctx, 3);
    let (p, shares) = r.forwarded[0].clone();

    let mut tampered = shares.clone();
    let last = tampered[0].ciphertext.len() - 1;
    tampered[0].ciphertext[last] ^= 0x01;
    let from = tampered[0].from;
    assert_eq!(
        r.clients[p as usize].on_forwarded_shares(&tampered).unwrap_err(),
        SecAggError::ShareDecryption { from, to: p }
    );

    // A bundle relabelled as coming from another member fails authentication.
    let mut relabelled = shares.clone();
    relabelled[0].from = relabelled[1].from;
    relabelled[1].from = from;
    assert!(matches!(r.clients[p as usize].on_forwarded_shares(&relabelled), Err(SecAggError::ShareDecryption { .. })));

    // A bundle for someone else is refused before decryption.
    let (q, other) = r.forwarded[1].clone();
    let mut misrouted = shares.clone();
    misrouted[0] = other.into_iter().find(|s| s.from != p).unwrap();
    assert!(
        matches!(r.clients[p as usize].on_forwarded_shares(&misrouted), Err(SecAggError::Misaddressed { to, .. }) if to == q)
    );

    // Nothing was committed by the failures: the genuine bundles still go through.
    r.clients[p as usize].on_forwarded_shares(&shares).unwrap();
}

#[test]
fn shares_replayed_from_another_round_or_run_are_rejected() {
    // Identically seeded RNGs give every member the very same X25519 keys in
    // both rounds, so only the round binding tells the ciphertexts apart.
    let s = settings(3, 16, None);
    let round_a = RoundContext::new(RunId([1; 16]), 1, &common::cohort(4), s.clone(), 4).unwrap();
    let round_b = RoundContext::new(RunId([1; 16]), 2, &common::cohort(4), s.clone(), 4).unwrap();
    let run_c = RoundContext::new(RunId([2; 16]), 1, &common::cohort(4), s, 4).unwrap();
    let old = up_to_shares(&round_a, 99);
    for ctx in [&round_b, &run_c] {
        let mut new = up_to_shares(ctx, 99);
        let (p, genuine) = new.forwarded[0].clone();
        let (p_old, replayed) = old.forwarded[0].clone();
        assert_eq!(p, p_old);
        assert_eq!(
            genuine.iter().map(|s| s.from).collect::<Vec<_>>(),
            replayed.iter().map(|s| s.from).collect::<Vec<_>>()
        );
        assert!(matches!(
            new.clients[p as usize].on_forwarded_shares(&replayed),
            Err(SecAggError::ShareDecryption { .. })
        ));
        new.clients[p as usize].on_forwarded_shares(&genuine).unwrap();
    }
}

#[test]
fn server_rejects_malformed_traffic() {
    let ctx = context(40, settings(4, 16, Some(4)), 6);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut server = ServerSession::new(ctx.clone());
    let mut clients = Vec::new();
    for p in 0..40 {
        let (c, keys) = ClientSession::new(ctx.clone(), p, &mut rng).unwrap();
        let (sc, gc) = (c.seed_commitment(), c.graph_commitment());
        server.on_advertise(p, keys, sc, gc).unwrap();
        if p == 0 {
            assert_eq!(server.on_advertise(0, keys, sc, gc).unwrap_err(), SecAggError::Duplicate(0));
            assert_eq!(server.on_advertise(1, keys, sc, gc).unwrap_err(), SecAggError::RepeatedPublicKey);
        }
        clients.push(c);
    }
    let stranger_keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
    assert_eq!(server.on_advertise(40, stranger_keys, [0; 32], [0; 32]).unwrap_err(), SecAggError::UnknownParty(40));
    let roster = server.close_advertise().unwrap();
    assert_eq!(roster.len(), 40);
    let mut reveals = Vec::new();
    for (p, _) in &roster {
        reveals.push(clients[*p as usize].on_roster(&roster).unwrap());
    }
    // A reveal that does not open its commitment, or from a stranger.
    assert_eq!(server.on_graph_reveal(0, reveals[1]).unwrap_err(), SecAggError::GraphRevealMismatch(0));
    assert_eq!(server.on_graph_reveal(40, reveals[0]).unwrap_err(), SecAggError::NotInStep(40));
    for (p, r) in reveals.iter().enumerate().skip(1) {
        server.on_graph_reveal(p as u32, *r).unwrap();
    }
    // Without party 0's reveal there is no seed.
    let mut early = ServerSession::new(ctx.clone());
    assert!(matches!(early.close_reveal(), Err(SecAggError::WrongStep { .. })));
    server.on_graph_reveal(0, reveals[0]).unwrap();
    let (all_reveals, neighbours) = server.close_reveal().unwrap();
    let graph = server.context().graph().unwrap().clone();
    let mut all_shares = Vec::new();
    for (p, nb) in &neighbours {
        assert_eq!(nb.len(), 4, "SecAgg+ member sees only its neighbours");
        let keys: Vec<_> = nb
            .iter()
            .map(|v| (*v, clients[*v as usize].public_keys(), clients[*v as usize].graph_commitment()))
            .collect();
        all_shares.push((*p, clients[*p as usize].on_cohort_keys(&keys, &all_reveals, &mut rng).unwrap()));
    }
    let (p0, shares0) = all_shares[0].clone();
    let non_neighbour = (0..40).find(|v| *v != p0 && !graph.are_neighbours(p0, *v)).unwrap();
    let mut bad = shares0.clone();
    bad[0].to = non_neighbour;
    assert!(matches!(server.on_shares(p0, bad), Err(SecAggError::NotNeighbour { .. })));
    let mut bad = shares0.clone();
    bad[0].to = 77;
    assert_eq!(server.on_shares(p0, bad).unwrap_err(), SecAggError::UnknownParty(77));
    assert!(matches!(server.on_shares(p0, shares0[1..].to_vec()), Err(SecAggError::MissingShare { .. })));
    let mut bad = shares0.clone();
    bad[0].ciphertext.push(0);
    assert_eq!(server.on_shares(p0, bad).unwrap_err(), SecAggError::MalformedShare(p0));
    for (p, s) in all_shares {
        server.on_shares(p, s).unwrap();
    }
    assert_eq!(server.on_shares(p0, shares0).unwrap_err(), SecAggError::Duplicate(p0));
    let forwarded = server.close_shares().unwrap();
    for (p, s) in &forwarded {
        clients[*p as usize].on_forwarded_shares(s).unwrap();
    }
    // Masked stream checks.
    assert_eq!(server.on_masked_chunk(0, 0, &[1]).unwrap_err(), SecAggError::NoStream(0));
    assert!(matches!(server.on_masked_start(0, 5), Err(SecAggError::OutOfRange { .. })));
    server.on_masked_start(0, 6).unwrap();
    assert_eq!(server.on_masked_start(0, 6).unwrap_err(), SecAggError::Duplicate(0));
    assert!(matches!(
        server.on_masked_chunk(0, 2, &[1]),
        Err(SecAggError::StreamOffset { expected: 0, actual: 2, .. })
    ));
    assert!(matches!(server.on_masked_chunk(0, 0, &[1; 7]), Err(SecAggError::OutOfRange { .. })));
    assert_eq!(server.on_masked_chunk(0, 0, &[1 << 16]).unwrap_err(), SecAggError::ValueOutOfRing(0));
    server.on_masked_chunk(0, 0, &[1, 2, 3]).unwrap();
    assert_eq!(server.on_masked_end(0).unwrap_err(), SecAggError::StreamIncomplete(0));
    let slots = tessera_secagg::DEFAULT_STREAM_SLOTS;
    for p in 1..=slots {
        server.on_masked_start(p, 6).unwrap();
    }
    assert_eq!(server.on_masked_start(slots + 1, 6).unwrap_err(), SecAggError::StreamSlotsBusy(slots));
    assert!(server.survivors().is_empty(), "nothing was committed by partial streams");
}

#[test]
fn client_refuses_bad_rosters_reveals_and_cohort_keys() {
    let ctx = context(40, settings(4, 16, Some(4)), 6);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut server = ServerSession::new(ctx.clone());
    let mut clients = Vec::new();
    for p in 0..40 {
        let (c, keys) = ClientSession::new(ctx.clone(), p, &mut rng).unwrap();
        server.on_advertise(p, keys, c.seed_commitment(), c.graph_commitment()).unwrap();
        clients.push(c);
    }
    let roster = server.close_advertise().unwrap();
    // The roster must hold this member's own commitment, sorted, and reach the floor.
    let bad_roster = |e: SecAggError| matches!(e, SecAggError::BadRoster(_));
    assert!(bad_roster(clients[0].on_roster(&roster[1..]).unwrap_err()));
    let mut swapped = roster.clone();
    swapped[0].1 = swapped[1].1;
    assert!(bad_roster(clients[0].on_roster(&swapped).unwrap_err()));
    let mut unsorted = roster.clone();
    unsorted.swap(2, 3);
    assert!(bad_roster(clients[0].on_roster(&unsorted).unwrap_err()));
    for (p, _) in &roster {
        let reveal = clients[*p as usize].on_roster(&roster).unwrap();
        server.on_graph_reveal(*p, reveal).unwrap();
    }
    let (reveals, neighbours) = server.close_reveal().unwrap();
    let graph = server.context().graph().unwrap().clone();
    let (p, nb) = neighbours[0].clone();
    let keys: Vec<_> =
        nb.iter().map(|v| (*v, clients[*v as usize].public_keys(), clients[*v as usize].graph_commitment())).collect();
    let c = &mut clients[p as usize];
    // Reveals that do not open the roster's commitments, or one withheld.
    let mut forged = reveals.clone();
    forged[5].1 = [0; 32];
    assert_eq!(c.on_cohort_keys(&keys, &forged, &mut rng).unwrap_err(), SecAggError::GraphRevealMismatch(5));
    assert_eq!(c.on_cohort_keys(&keys, &reveals[..39], &mut rng).unwrap_err(), SecAggError::MissingGraphReveal(39));
    let stranger = (0..40).find(|v| *v != p && !graph.are_neighbours(p, *v)).unwrap();
    let mut bad = keys.clone();
    bad[0].0 = stranger;
    assert!(matches!(c.on_cohort_keys(&bad, &reveals, &mut rng), Err(SecAggError::NotNeighbour { .. })));
    let mut bad = keys.clone();
    bad[0].2 = [3; 32];
    assert_eq!(c.on_cohort_keys(&bad, &reveals, &mut rng).unwrap_err(), SecAggError::RosterMismatch(bad[0].0));
    let mut bad = keys.clone();
    bad[1].1 = bad[0].1;
    assert_eq!(c.on_cohort_keys(&bad, &reveals, &mut rng).unwrap_err(), SecAggError::RepeatedPublicKey);
    let mut bad = keys.clone();
    bad[0].1.mask_pk = [0; 32]; // low-order point
    assert_eq!(c.on_cohort_keys(&bad, &reveals, &mut rng).unwrap_err(), SecAggError::WeakPublicKey(bad[0].0));
    // A neighbour in the roster cannot be left out.
    assert_eq!(
        c.on_cohort_keys(&keys[..3], &reveals, &mut rng).unwrap_err(),
        SecAggError::WithheldNeighbour(keys[3].0)
    );
    assert_eq!(c.on_cohort_keys(&keys, &reveals, &mut rng).unwrap().len(), 4);
}
