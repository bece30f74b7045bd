//! A tiny in-memory driver: plays the aggregator daemon and n client daemons
//! message by message, with dropouts chosen per step.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_core::{EncryptedShare, PartyId, PublicKeys, RunId, SecAggSettings};
use tessera_secagg::{AggregateSum, ClientSession, RoundContext, SecAggError, ServerSession};

pub fn cohort(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("member-{i:05}")).collect()
}

pub fn settings(threshold: u32, modulus_bits: u32, neighbours: Option<u32>) -> SecAggSettings {
    SecAggSettings { threshold, modulus_bits, clip_range: 1.0, neighbours }
}

pub fn context(n: u32, s: SecAggSettings, d: u64) -> RoundContext {
    RoundContext::new(RunId([9; 16]), 3, &cohort(n), s, d).expect("valid test context")
}

/// Who drops out, by the step they never complete.
#[derive(Clone, Debug, Default)]
pub struct Dropouts {
    /// Never send `AdvertiseKeys`.
    pub before_advertise: BTreeSet<PartyId>,
    /// Advertise, never send `ShareKeys`.
    pub before_shares: BTreeSet<PartyId>,
    /// Share keys, never finish the masked stream (some send part of it).
    pub before_masked: BTreeSet<PartyId>,
    /// Send masked input, never sign the survivor set.
    pub before_sign: BTreeSet<PartyId>,
    /// Sign the survivor set, never answer `UnmaskRequest`.
    pub before_unmask: BTreeSet<PartyId>,
}

impl Dropouts {
    pub fn contributors(&self, n: u32) -> Vec<PartyId> {
        (0..n)
            .filter(|p| {
                !self.before_advertise.contains(p) && !self.before_shares.contains(p) && !self.before_masked.contains(p)
            })
            .collect()
    }
}

pub struct Outcome {
    pub result: Result<AggregateSum, SecAggError>,
    pub expected: Vec<u32>,
}

/// Runs one round; `inputs[p]` is party p's quantized vector (< 2^k).
/// Protocol errors of the close/finish steps land in `result`; any other
/// error is a test failure.
pub fn run_round(
    ctx: &RoundContext,
    inputs: &[Vec<u32>],
    drops: &Dropouts,
    chunk: usize,
    slots: u32,
    seed: u64,
) -> Outcome {
    let n = ctx.cohort_size();
    let k = ctx.modulus_bits();
    let ring = if k == 32 { u32::MAX } else { (1 << k) - 1 };
    let d = ctx.vector_len() as usize;
    let mut expected = vec![0u32; d];
    for p in drops.contributors(n) {
        for (e, v) in expected.iter_mut().zip(&inputs[p as usize]) {
            *e = e.wrapping_add(*v) & ring;
        }
    }
    let result = drive(ctx, inputs, drops, chunk, slots, seed);
    Outcome { result, expected }
}

/// What each member advertised: keys and graph commitment.
pub type Adverts = BTreeMap<PartyId, (PublicKeys, [u8; 32])>;

/// Advertise (everyone but `skip`), exchange the roster and reveals, and
/// return each advertised member's `CohortKeys` input: its neighbours'
/// keys with their graph commitments, and every reveal.
#[allow(clippy::type_complexity)]
pub fn setup_graph(
    server: &mut ServerSession,
    clients: &mut [Option<ClientSession>],
    ctx: &RoundContext,
    skip: &BTreeSet<PartyId>,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<(PartyId, Vec<(PartyId, PublicKeys, [u8; 32])>, Vec<(PartyId, [u8; 32])>)>, SecAggError> {
    let mut adverts = Adverts::new();
    for p in 0..ctx.cohort_size() {
        if skip.contains(&p) {
            continue;
        }
        let (c, keys) = ClientSession::new(ctx.clone(), p, rng).expect("client starts");
        server.on_advertise(p, keys, c.seed_commitment(), c.graph_commitment()).expect("server accepts keys");
        adverts.insert(p, (keys, c.graph_commitment()));
        clients[p as usize] = Some(c);
    }
    let roster = server.close_advertise()?;
    for (p, _) in &roster {
        let reveal = clients[*p as usize].as_mut().expect("advertised").on_roster(&roster).expect("roster accepted");
        server.on_graph_reveal(*p, reveal).expect("reveal accepted");
    }
    let (reveals, neighbours) = server.close_reveal()?;
    Ok(neighbours
        .into_iter()
        .map(|(p, nb)| {
            let keys = nb.iter().map(|v| (*v, adverts[v].0, adverts[v].1)).collect();
            (p, keys, reveals.clone())
        })
        .collect())
}

/// The consistency check, honest: every survivor not in `skip` signs, and
/// each asked member gets its signing neighbours as verified signers.
pub fn sign_survivors(
    server: &mut ServerSession,
    clients: &mut [Option<ClientSession>],
    skip: &BTreeSet<PartyId>,
) -> Result<Vec<(PartyId, BTreeSet<PartyId>)>, SecAggError> {
    let survivors = server.close_masked()?;
    for &p in &survivors {
        if skip.contains(&p) {
            continue;
        }
        clients[p as usize].as_mut().expect("survivor exists").on_survivor_set(&survivors).expect("set accepted");
        server.on_survivor_signature(p, vec![0xA5; 64]).expect("signature accepted");
    }
    Ok(server
        .close_consistency()?
        .into_iter()
        .map(|(p, sigs)| (p, sigs.into_iter().map(|(v, _)| v).collect()))
        .collect())
}

fn drive(
    ctx: &RoundContext,
    inputs: &[Vec<u32>],
    drops: &Dropouts,
    chunk: usize,
    slots: u32,
    seed: u64,
) -> Result<AggregateSum, SecAggError> {
    let n = ctx.cohort_size();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = ServerSession::new(ctx.clone()).with_stream_slots(slots);
    let mut clients: Vec<Option<ClientSession>> = (0..n).map(|_| None).collect();
    let cohort_keys = setup_graph(&mut server, &mut clients, ctx, &drops.before_advertise, &mut rng)?;
    let mut sent_shares = Vec::new();
    for (p, keys, reveals) in cohort_keys {
        if drops.before_shares.contains(&p) {
            continue;
        }
        let c = clients[p as usize].as_mut().expect("advertised client exists");
        // A client may refuse (e.g. its neighbourhood is too small): it drops out.
        if let Ok(shares) = c.on_cohort_keys(&keys, &reveals, &mut rng) {
            sent_shares.push((p, shares));
        }
    }
    for (p, shares) in sent_shares {
        server.on_shares(p, shares).expect("server accepts shares");
    }
    let forwarded = server.close_shares()?;
    let mut streaming = Vec::new();
    for (p, shares) in forwarded {
        let c = clients[p as usize].as_mut().expect("client exists");
        c.on_forwarded_shares(&shares).expect("client accepts forwarded shares");
        streaming.push(p);
    }
    // Stream in batches of `slots`, chunks interleaved within a batch.
    let batches: Vec<&[u32]> = streaming.chunks(slots as usize).collect();
    for (b, batch) in batches.iter().enumerate() {
        let last_batch = b + 1 == batches.len();
        for &p in *batch {
            server.on_masked_start(p, ctx.vector_len()).expect("stream starts");
        }
        let d = ctx.vector_len() as usize;
        let mut offset = 0;
        while offset < d {
            let end = (offset + chunk).min(d);
            for &p in *batch {
                // Droppers at this step send their first chunk only.
                if drops.before_masked.contains(&p) && offset > 0 {
                    continue;
                }
                let c = clients[p as usize].as_ref().expect("client exists");
                let mut values = inputs[p as usize][offset..end].to_vec();
                c.mask_chunk(offset as u64, &mut values).expect("masking succeeds");
                server.on_masked_chunk(p, offset as u64, &values).expect("chunk accepted");
            }
            offset = end;
        }
        for &p in *batch {
            if drops.before_masked.contains(&p) {
                // An unfinished stream holds its slot until the daemon gives
                // up on it; in the last batch half are left to close_masked.
                if p % 2 == 0 || !last_batch {
                    assert!(server.abandon_stream(p));
                }
            } else {
                server.on_masked_end(p).expect("stream ends");
            }
        }
    }
    let requests = sign_survivors(&mut server, &mut clients, &drops.before_sign)?;
    let mut answers = Vec::new();
    for (p, signers) in requests {
        if drops.before_unmask.contains(&p) {
            continue;
        }
        let c = clients[p as usize].as_mut().expect("client exists");
        answers.push((p, c.on_unmask_request(&signers).expect("client reveals")));
    }
    for (p, reveals) in answers {
        server.on_unmask(p, reveals).expect("server accepts reveals");
    }
    server.finish()
}

/// Sessions driven up to the masked-input step, nobody dropped.
pub struct Ready {
    pub clients: Vec<ClientSession>,
    pub server: ServerSession,
    pub forwarded: Vec<(u32, Vec<EncryptedShare>)>,
}

pub fn up_to_shares(ctx: &RoundContext, seed: u64) -> Ready {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = ServerSession::new(ctx.clone());
    let mut slots: Vec<Option<ClientSession>> = (0..ctx.cohort_size()).map(|_| None).collect();
    let cohort_keys = setup_graph(&mut server, &mut slots, ctx, &BTreeSet::new(), &mut rng).unwrap();
    let mut clients: Vec<ClientSession> = slots.into_iter().map(|c| c.unwrap()).collect();
    for (p, keys, reveals) in cohort_keys {
        let shares = clients[p as usize].on_cohort_keys(&keys, &reveals, &mut rng).unwrap();
        server.on_shares(p, shares).unwrap();
    }
    let forwarded = server.close_shares().unwrap();
    Ready { clients, server, forwarded }
}

pub fn up_to_masking(ctx: &RoundContext, seed: u64) -> Ready {
    let mut r = up_to_shares(ctx, seed);
    for (p, shares) in &r.forwarded {
        r.clients[*p as usize].on_forwarded_shares(shares).unwrap();
    }
    r
}
