//! One secure-aggregation round driven in memory, for the benches: the grid
//! points of issue #4, a member set up to the masked-input step, a whole round
//! up to masked input, and the aggregator's timed part (summing the masked
//! streams, unmasking) checked against the survivors' plain sum every time.
//!
//! Every random draw comes from a ChaCha20 RNG seeded per call, so preparing
//! the same point with the same seed twice yields the same keys, the same
//! neighbour graph (drawn by the members' commit and reveal) and hence the
//! same masked vectors; the benches rely on that to cache masked vectors, and
//! [`Point::round`] draws its dropouts on the graph `prepare_round` with the
//! same seed draws.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use tessera_core::{PartyId, PublicKeys, RunId, SecAggSettings};
use tessera_secagg::{ClientSession, NeighbourGraph, RoundContext, ServerSession, default_threshold};

/// Ring width of the benches: the widest the protocol allows, as a deployment would use.
pub const MODULUS_BITS: u32 = 32;

/// Plain SecAgg (complete graph) or SecAgg+ (about 2 log2 n neighbours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graph {
    Complete,
    Sparse,
}

/// One point of the grid: cohort size, vector length, graph, dropout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub n: u32,
    pub d: u64,
    pub graph: Graph,
    /// Members (in percent of the cohort) that share keys and then never
    /// finish their masked input: the dropouts the aggregator must unmask.
    pub dropout_pct: u32,
}

fn ceil_log2(n: u32) -> u32 {
    u32::BITS - (n.max(2) - 1).leading_zeros()
}

impl Point {
    /// SecAgg+ degree `4 * ceil(log2 n)`, as `default_plan` picks above 32 members.
    pub fn neighbours(&self) -> Option<u32> {
        match self.graph {
            Graph::Complete => None,
            Graph::Sparse => Some(tessera_secagg::default_neighbours(self.n)),
        }
    }

    /// The round context with threshold `t` (`None`: the default, the
    /// smallest safe threshold `floor(2m/3) + 1` of the neighbourhood size `m`).
    pub fn context_with(&self, threshold: Option<u32>) -> RoundContext {
        // The neighbourhood size is the graph's shape, whatever its seed.
        let m = NeighbourGraph::new(self.n, self.neighbours(), [0; 32]).neighbourhood_size();
        let settings = SecAggSettings {
            threshold: threshold.unwrap_or_else(|| default_threshold(m)),
            modulus_bits: MODULUS_BITS,
            clip_range: 1.0,
            neighbours: self.neighbours(),
        };
        let cohort: Vec<String> = (0..self.n).map(|i| format!("member-{i:05}")).collect();
        RoundContext::new(RunId([7; 16]), 1, &cohort, settings, self.d).expect("valid bench context")
    }

    pub fn context(&self) -> RoundContext {
        self.context_with(None)
    }

    /// The context and the dropout set of this point. Every neighbourhood
    /// must keep `t` survivors or the round aborts. A safe threshold
    /// (`t > 2m/3`) leaves a neighbourhood fewer than a third of dropouts, so
    /// the grids stop at 20 %: 30 % spread over a sparse graph exceeds that
    /// somewhere, and such a round aborts by design.
    /// The context comes with the graph that `prepare_round` with the same
    /// `seed` draws.
    pub fn round(&self, seed: u64) -> (RoundContext, BTreeSet<PartyId>) {
        let ctx = drawn_context(&self.context(), seed);
        let dropped = choose_dropouts(&ctx, self.dropouts(), seed)
            .unwrap_or_else(|| panic!("{}: no dropout set keeps every neighbourhood at threshold", self.label()));
        (ctx, dropped)
    }

    /// Number of dropouts, rounded to the nearest member.
    pub fn dropouts(&self) -> u32 {
        (self.n * self.dropout_pct + 50) / 100
    }

    /// Short id such as `secagg+/n100/d1M/drop10`.
    pub fn label(&self) -> String {
        let graph = match self.graph {
            Graph::Complete => "secagg",
            Graph::Sparse => "secagg+",
        };
        format!("{graph}/n{}/{}/drop{}", self.n, size_label(self.d), self.dropout_pct)
    }
}

/// `100k`, `1M`, or the plain number.
pub fn size_label(d: u64) -> String {
    match d {
        d if d >= 1_000_000 && d % 1_000_000 == 0 => format!("d{}M", d / 1_000_000),
        d if d >= 1_000 && d % 1_000 == 0 => format!("d{}k", d / 1_000),
        d => format!("d{d}"),
    }
}

/// Party `p`'s quantized input at index `i`: a cheap mix of both, below
/// 2^(k - ceil(log2 n)) as the quantizer would produce.
pub fn input_word(p: PartyId, i: u64, client_bits: u32) -> u32 {
    let mut x = (u64::from(p) << 40) ^ i ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) as u32) & (u32::MAX >> (32 - client_bits))
}

/// Bits each member's input occupies so that the cohort sum cannot wrap.
pub fn client_bits(ctx: &RoundContext) -> u32 {
    ctx.modulus_bits() - ceil_log2(ctx.cohort_size())
}

pub fn fill_input(p: PartyId, offset: u64, out: &mut [u32], client_bits: u32) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = input_word(p, offset + j as u64, client_bits);
    }
}

/// `count` members that drop out after sharing keys, chosen greedily in a
/// seeded random order so that every neighbourhood (each member and its
/// neighbours) keeps at least `threshold` survivors: otherwise the round
/// would abort rather than unmask. `None` if 64 tries find no such set.
pub fn choose_dropouts(ctx: &RoundContext, count: u32, seed: u64) -> Option<BTreeSet<PartyId>> {
    let n = ctx.cohort_size();
    let g = ctx.graph().expect("a drawn graph (see drawn_context)");
    let t = ctx.threshold();
    let hood: Vec<Vec<PartyId>> = (0..n).map(|u| g.neighbours(u).into_iter().chain([u]).collect()).collect();
    for attempt in 0..64u64 {
        let mut alive: Vec<u32> = hood.iter().map(|h| h.len() as u32).collect();
        let mut order: Vec<PartyId> = (0..n).collect();
        order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed ^ attempt));
        let mut dropped = BTreeSet::new();
        for v in order {
            if dropped.len() as u32 == count {
                break;
            }
            // Dropping v removes one survivor from every neighbourhood v belongs to.
            if n - dropped.len() as u32 > ctx.min_survivors() && hood[v as usize].iter().all(|u| alive[*u as usize] > t)
            {
                hood[v as usize].iter().for_each(|u| alive[*u as usize] -= 1);
                dropped.insert(v);
            }
        }
        if dropped.len() as u32 == count {
            return Some(dropped);
        }
    }
    None
}

/// Every member of `ctx` after the graph draw: the server (at share
/// collection, its context holding the graph), the sessions, each member's
/// neighbours' keys with graph commitments, every reveal, and the RNG to go on with.
pub struct GraphDrawn {
    pub server: ServerSession,
    pub clients: Vec<ClientSession>,
    #[allow(clippy::type_complexity)]
    pub cohort_keys: Vec<(PartyId, Vec<(PartyId, PublicKeys, [u8; 32])>)>,
    pub reveals: Vec<(PartyId, [u8; 32])>,
    pub rng: ChaCha20Rng,
}

/// Advertise, roster and reveal for every member of `ctx`, honestly.
pub fn draw_graph(ctx: &RoundContext, slots: u32, seed: u64) -> GraphDrawn {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = ServerSession::new(ctx.clone()).with_stream_slots(slots);
    let mut clients = Vec::with_capacity(ctx.cohort_size() as usize);
    let mut adverts = Vec::with_capacity(ctx.cohort_size() as usize);
    for p in 0..ctx.cohort_size() {
        let (c, keys) = ClientSession::new(ctx.clone(), p, &mut rng).expect("client starts");
        server.on_advertise(p, keys, c.seed_commitment(), c.graph_commitment()).expect("keys accepted");
        adverts.push((keys, c.graph_commitment()));
        clients.push(c);
    }
    let roster = server.close_advertise().expect("enough members advertised");
    for c in &mut clients {
        let reveal = c.on_roster(&roster).expect("roster accepted");
        server.on_graph_reveal(c.party(), reveal).expect("reveal accepted");
    }
    let (reveals, neighbours) = server.close_reveal().expect("every member revealed");
    let cohort_keys = neighbours
        .into_iter()
        .map(|(p, nb)| (p, nb.iter().map(|v| (*v, adverts[*v as usize].0, adverts[*v as usize].1)).collect()))
        .collect();
    GraphDrawn { server, clients, cohort_keys, reveals, rng }
}

/// `ctx` with the graph that a round prepared with `seed` draws.
pub fn drawn_context(ctx: &RoundContext, seed: u64) -> RoundContext {
    draw_graph(ctx, 1, seed).server.context().clone()
}

/// A member of `ctx` that has completed key sharing with all its neighbours
/// and is ready to mask: only its neighbourhood deals shares.
pub fn masking_client(ctx: &RoundContext, me: PartyId, seed: u64) -> ClientSession {
    let mut g = draw_graph(ctx, 1, seed);
    let graph = g.server.context().graph().expect("drawn").clone();
    let needed: BTreeSet<PartyId> = graph.neighbours(me).into_iter().chain([me]).collect();
    let mut inbox = Vec::new();
    for (p, keys) in g.cohort_keys.iter().filter(|(p, _)| needed.contains(p)) {
        let shares = g.clients[*p as usize].on_cohort_keys(keys, &g.reveals, &mut g.rng).expect("shares made");
        inbox.extend(shares.into_iter().filter(|s| s.to == me));
    }
    let mut client = g.clients.swap_remove(me as usize);
    client.on_forwarded_shares(&inbox).expect("forwarded shares accepted");
    client
}

/// A round at the start of masked input: the aggregator has relayed every
/// share and every member is ready to mask.
pub struct Prepared {
    pub server: ServerSession,
    pub clients: Vec<ClientSession>,
}

pub fn prepare_round(ctx: &RoundContext, slots: u32, seed: u64) -> Prepared {
    let GraphDrawn { mut server, mut clients, cohort_keys, reveals, mut rng } = draw_graph(ctx, slots, seed);
    if let (Some(expected), Some(drawn)) = (ctx.graph(), server.context().graph()) {
        let same = (0..ctx.cohort_size()).all(|p| expected.neighbours(p) == drawn.neighbours(p));
        assert!(same, "prepare_round must use the seed the context's graph was drawn with");
    }
    for (p, keys) in cohort_keys {
        let shares = clients[p as usize].on_cohort_keys(&keys, &reveals, &mut rng).expect("shares made");
        server.on_shares(p, shares).expect("shares accepted");
    }
    for (p, shares) in server.close_shares().expect("enough members shared") {
        clients[p as usize].on_forwarded_shares(&shares).expect("forwarded shares accepted");
    }
    Prepared { server, clients }
}

/// Where the aggregator's time went in one round.
#[derive(Clone, Copy, Debug, Default)]
pub struct AggregatorTime {
    /// `on_masked_start`/`on_masked_chunk`/`on_masked_end` of every survivor.
    pub sum: Duration,
    /// `close_masked`, `on_unmask` of every survivor and `finish`.
    pub unmask: Duration,
    /// CPU time of this thread in the same calls (`None` where it could
    /// not be read, or for `sum` when members masked in between).
    pub cpu_sum: Option<Duration>,
    pub cpu_unmask: Option<Duration>,
}

impl AggregatorTime {
    pub fn total(&self) -> Duration {
        self.sum + self.unmask
    }
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux;
/// nanoseconds, updated at least every scheduler tick).
pub fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// Runs `f`, returning its result, wall time and CPU time.
fn clocked<T>(f: impl FnOnce() -> T) -> (T, Duration, Option<Duration>) {
    let cpu = thread_cpu();
    let t = Instant::now();
    let out = f();
    let wall = t.elapsed();
    let cpu = cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
    (out, wall, cpu)
}

fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *acc += t.elapsed();
    out
}

/// Survivors' masked vectors, computed once per point when they fit in memory.
pub type MaskedCache = Vec<Vec<u32>>;

/// Streams every survivor's masked vector into the aggregator from the cache.
fn ingest_cached(server: &mut ServerSession, survivors: &[PartyId], d: u64, chunk: usize, cache: &MaskedCache) {
    for (&p, masked) in survivors.iter().zip(cache) {
        server.on_masked_start(p, d).expect("stream starts");
        for (i, part) in masked.chunks(chunk).enumerate() {
            server.on_masked_chunk(p, (i * chunk) as u64, part).expect("chunk accepted");
        }
        server.on_masked_end(p).expect("stream ends");
    }
}

/// Runs masked input (survivors stream their vectors one after the other,
/// in chunks of `chunk` values) and unmasking, timing only the aggregator's
/// calls; the members' masking is untimed. Panics unless the result is
/// exactly the survivors' plain sum. With `cache`, masked vectors are taken
/// from it (filled on first use) instead of being masked again: valid
/// because `prepare_round` with the same seed derives the same keys.
pub fn aggregate(
    ctx: &RoundContext,
    mut round: Prepared,
    dropped: &BTreeSet<PartyId>,
    chunk: usize,
    mut cache: Option<&mut MaskedCache>,
) -> AggregatorTime {
    let d = ctx.vector_len();
    let bits = client_bits(ctx);
    let survivors: Vec<PartyId> = (0..ctx.cohort_size()).filter(|p| !dropped.contains(p)).collect();
    let mut time = AggregatorTime::default();
    match cache.as_deref_mut() {
        Some(c) if !c.is_empty() => {
            let ((), wall, cpu) = clocked(|| ingest_cached(&mut round.server, &survivors, d, chunk, c));
            (time.sum, time.cpu_sum) = (wall, cpu);
        }
        _ => {
            // Members mask chunk by chunk (untimed) and the aggregator takes each in.
            let mut buf = vec![0u32; chunk.min(d as usize)];
            for &p in &survivors {
                timed(&mut time.sum, || round.server.on_masked_start(p, d)).expect("stream starts");
                let mut masked = cache.is_some().then(|| Vec::with_capacity(d as usize));
                let mut offset = 0u64;
                while offset < d {
                    let v = &mut buf[..(d - offset).min(chunk as u64) as usize];
                    fill_input(p, offset, v, bits);
                    round.clients[p as usize].mask_chunk(offset, v).expect("masking succeeds");
                    timed(&mut time.sum, || round.server.on_masked_chunk(p, offset, v)).expect("chunk accepted");
                    if let Some(m) = masked.as_mut() {
                        m.extend_from_slice(v);
                    }
                    offset += v.len() as u64;
                }
                timed(&mut time.sum, || round.server.on_masked_end(p)).expect("stream ends");
                if let (Some(c), Some(m)) = (cache.as_deref_mut(), masked) {
                    c.push(m);
                }
            }
        }
    }
    let (survivor_set, wall_close, cpu_close) = clocked(|| round.server.close_masked());
    let survivor_set = survivor_set.expect("enough survivors");
    // The consistency check: every survivor signs (the bench's signatures
    // are placeholders; ECDSA is the members' cost, measured in `signed`).
    for &p in &survivor_set {
        round.clients[p as usize].on_survivor_set(&survivor_set).expect("set accepted");
    }
    let (requests, wall_sign, cpu_sign) = clocked(|| {
        for &p in &survivor_set {
            round.server.on_survivor_signature(p, vec![0; 64]).expect("signature accepted");
        }
        round.server.close_consistency()
    });
    let wall = wall_close + wall_sign;
    let cpu_close = cpu_close.zip(cpu_sign).map(|(a, b)| a + b);
    let answers: Vec<_> = requests
        .expect("every neighbourhood signed")
        .into_iter()
        .map(|(p, signatures)| {
            let signers = signatures.into_iter().map(|(v, _)| v).collect();
            (p, round.clients[p as usize].on_unmask_request(&signers).expect("member reveals"))
        })
        .collect();
    let mut server = round.server;
    let (sum, wall_finish, cpu_finish) = clocked(move || {
        for (p, reveals) in answers {
            server.on_unmask(p, reveals).expect("reveals accepted");
        }
        server.finish()
    });
    let sum = sum.expect("round unmasks");
    time.unmask = wall + wall_finish;
    time.cpu_unmask = cpu_close.zip(cpu_finish).map(|(a, b)| a + b);
    assert_eq!(sum.survivors, survivors, "survivor set");
    let ring = ctx.ring_mask();
    for (i, s) in sum.sum.iter().enumerate() {
        let expected = survivors.iter().fold(0u32, |acc, p| acc.wrapping_add(input_word(*p, i as u64, bits))) & ring;
        assert_eq!(*s, expected, "unmasked sum differs at element {i}");
    }
    time
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bench driver itself: small points of every kind unmask exactly
    /// (`aggregate` asserts the sum), with and without the cache.
    #[test]
    fn small_rounds_unmask_exactly() {
        for graph in [Graph::Complete, Graph::Sparse] {
            for dropout_pct in [0, 10, 20] {
                let point = Point { n: 24, d: 600, graph, dropout_pct };
                let (ctx, dropped) = point.round(5);
                assert_eq!(dropped.len() as u32, point.dropouts());
                let mut cache = MaskedCache::new();
                for _ in 0..2 {
                    aggregate(&ctx, prepare_round(&ctx, 1, 5), &dropped, 250, Some(&mut cache));
                }
                aggregate(&ctx, prepare_round(&ctx, 1, 5), &dropped, 600, None);
            }
        }
    }

    #[test]
    fn masking_client_masks() {
        let ctx = Point { n: 20, d: 64, graph: Graph::Sparse, dropout_pct: 0 }.context();
        let c = masking_client(&ctx, 3, 1);
        let mut v = vec![0u32; 64];
        c.mask_chunk(0, &mut v).unwrap();
        assert!(v.iter().any(|x| *x != 0));
    }
}
