//! Secure aggregation costs (issue #4): the PRG's raw keystream, a member's
//! masking, and the aggregator's sum + unmasking, for SecAgg (complete graph)
//! and SecAgg+ (2·ceil(log2 n) neighbours).
//!
//! `cargo bench -p tessera-benches --bench secagg` runs the headline points
//! in a few minutes; `TESSERA_SECAGG_GRID=full` runs the whole grid
//! (n ∈ {10, 100, 1000}, d ∈ {100k, 1M}, dropout ∈ {0, 10, 30} %), except the
//! complete graph at n = 1000, whose setup alone takes minutes per round and
//! whose unmasking regenerates ~10^5 masks: `TESSERA_SECAGG_GRID=all` adds it.
//! A filter works as usual: `cargo bench ... --bench secagg -- 'n100/d1M'`.
//!
//! Throughput of `client_mask` is counted in keystream bytes, (neighbours + 1)
//! · d · 4, so it reads directly against `prg/keystream_raw/aes256ctr`: the
//! one-core floor. Each point runs with one masking thread (`threads1`, the
//! simulator's setting) and with the default, every core (`threadsN`).
//! The aggregator points time only the aggregator's calls (masked streams in,
//! then `close_masked`, `on_unmask`, `finish`); the members' work and the key
//! phases are prepared untimed, and every round's result is checked against
//! the survivors' plain sum.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use aws_lc_rs::cipher::{AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use chacha20::ChaChaCore;
use chacha20::cipher::consts::U10;
use chacha20::cipher::{KeyIvInit, StreamCipherCore};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_benches::secagg_round::{
    AggregatorTime, Graph, MaskedCache, Point, aggregate, client_bits, fill_input, masking_client, prepare_round,
    size_label,
};
use tessera_core::{Limits, PartyId};
use tessera_secagg::{MaskOp, Quantizer, RoundContext, apply_prg, default_mask_threads};

const SIZES: [u64; 2] = [100_000, 1_000_000];
const COHORTS: [u32; 3] = [10, 100, 1000];
const DROPOUTS: [u32; 3] = [0, 10, 20];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Grid {
    Headline,
    Full,
    All,
}

fn grid() -> Grid {
    match std::env::var("TESSERA_SECAGG_GRID").as_deref() {
        Ok("full") => Grid::Full,
        Ok("all") => Grid::All,
        _ => Grid::Headline,
    }
}

fn wanted(p: &Point, g: Grid) -> bool {
    g == Grid::All || !(p.graph == Graph::Complete && p.n >= 1000)
}

fn client_points(g: Grid) -> Vec<Point> {
    let all = COHORTS.iter().flat_map(|&n| {
        SIZES
            .iter()
            .flat_map(move |&d| [Graph::Complete, Graph::Sparse].map(|graph| Point { n, d, graph, dropout_pct: 0 }))
    });
    match g {
        Grid::Headline => vec![
            Point { n: 100, d: 1_000_000, graph: Graph::Sparse, dropout_pct: 0 },
            Point { n: 100, d: 1_000_000, graph: Graph::Complete, dropout_pct: 0 },
            Point { n: 1000, d: 1_000_000, graph: Graph::Sparse, dropout_pct: 0 },
            Point { n: 10, d: 1_000_000, graph: Graph::Complete, dropout_pct: 0 },
        ],
        _ => all.filter(|p| wanted(p, g)).collect(),
    }
}

fn aggregator_points(g: Grid) -> Vec<Point> {
    let sparse = |n, d, dropout_pct| Point { n, d, graph: Graph::Sparse, dropout_pct };
    let complete = |n, d, dropout_pct| Point { n, d, graph: Graph::Complete, dropout_pct };
    match g {
        Grid::Headline => vec![
            sparse(100, 1_000_000, 10),
            sparse(100, 1_000_000, 0),
            sparse(100, 1_000_000, 20),
            complete(100, 1_000_000, 10),
            complete(10, 1_000_000, 10),
        ],
        _ => COHORTS
            .iter()
            .flat_map(|&n| {
                SIZES
                    .iter()
                    .flat_map(move |&d| DROPOUTS.iter().flat_map(move |&dr| [complete(n, d, dr), sparse(n, d, dr)]))
            })
            .filter(|p| wanted(p, g))
            .collect(),
    }
}

/// RustCrypto's AES-256-CTR block function (the PRG before AWS-LC's).
type RustCryptoCtr = ctr::CtrCore<aes::Aes256, ctr::flavors::Ctr128BE>;

/// The mask PRG's keystream as `tessera-secagg` makes it: AWS-LC's
/// AES-256-CTR over a 16 KiB buffer (stays in L1), keystream XORed into it
/// in place (no zeroing, no input to read, nothing to add).
struct RawKeystream {
    key: EncryptingKey,
    buf: Vec<u8>,
    block: u128,
}

impl RawKeystream {
    fn new() -> Self {
        let key = EncryptingKey::ctr(UnboundCipherKey::new(&AES_256, &[3u8; 32]).unwrap()).unwrap();
        Self { key, buf: vec![0u8; 16 << 10], block: 0 }
    }

    fn fill(&mut self) {
        let iv = EncryptionContext::Iv128(self.block.to_be_bytes().into());
        self.key.less_safe_encrypt(&mut self.buf, iv).unwrap();
        self.block += (self.buf.len() / 16) as u128;
    }
}

/// The floor: raw keystream bytes per second, best of 3.
fn keystream_bytes_per_sec() -> f64 {
    let mut raw = RawKeystream::new();
    let rounds = 4096; // 64 MiB
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..rounds {
                raw.fill();
            }
            (rounds * raw.buf.len()) as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn prg(c: &mut Criterion) {
    let mut g = c.benchmark_group("secagg/prg");
    let d = 1usize << 20;
    g.throughput(Throughput::Bytes(4 * d as u64));
    // The floor: the mask PRG's keystream alone, 16 KiB at a time.
    let mut raw = RawKeystream::new();
    g.bench_function("keystream_raw/aes256ctr/4MiB", |b| {
        b.iter(|| {
            for _ in 0..(4 * d) / raw.buf.len() {
                raw.fill();
            }
        })
    });
    // The same cipher from RustCrypto (`aes` 0.8 + `ctr`), the PRG before.
    let mut core = RustCryptoCtr::new(&[3u8; 32].into(), &Default::default());
    let mut blocks = vec![Default::default(); 1024];
    g.bench_function("keystream_raw/aes256ctr_rustcrypto/4MiB", |b| {
        b.iter(|| {
            for _ in 0..(4 * d) / (1024 * 16) {
                core.write_keystream_blocks(&mut blocks);
            }
        })
    });
    // For comparison, the PRG used before (ChaCha20 with the AVX2 backend).
    let mut chacha = ChaChaCore::<U10>::new(&[3u8; 32].into(), &[0u8; 12].into());
    let mut chacha_blocks = vec![Default::default(); 256];
    g.bench_function("keystream_raw/chacha20/4MiB", |b| {
        b.iter(|| {
            for _ in 0..(4 * d) / (256 * 64) {
                chacha.write_keystream_blocks(&mut chacha_blocks);
            }
        })
    });
    let mut values = vec![0u32; d];
    g.bench_function("apply_prg/4MiB", |b| b.iter(|| apply_prg(&[5u8; 32], 0, &mut values, MaskOp::Add)));
    g.finish();
}

/// Masked keystream words a member generates: its self mask plus one per
/// neighbour (every member has the same degree).
fn member_masks(ctx: &RoundContext, _me: PartyId) -> u64 {
    ctx.neighbourhood_size().min(ctx.cohort_size()) as u64
}

fn client(c: &mut Criterion) {
    let floor = keystream_bytes_per_sec();
    eprintln!("raw AES-256-CTR keystream: {:.2} GB/s (the floor below)", floor / 1e9);
    let chunk = Limits::default().chunk_values;
    let mut g = c.benchmark_group("secagg/client_mask");
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
    for p in client_points(grid()) {
        let ctx = p.context();
        let me = 0;
        let mut session = masking_client(&ctx, me, 11);
        let mut values = vec![0u32; p.d as usize];
        fill_input(me, 0, &mut values, client_bits(&ctx));
        let bytes = member_masks(&ctx, me) * p.d * 4;
        eprintln!("{}: {} keystreams, floor {:.1} ms", p.label(), member_masks(&ctx, me), bytes as f64 / floor * 1e3);
        g.throughput(Throughput::Bytes(bytes));
        // One thread (the simulator's setting), then the default: every core.
        let cores = default_mask_threads();
        let threads = if cores.get() > 1 { vec![NonZeroUsize::MIN, cores] } else { vec![cores] };
        for t in threads {
            session.set_mask_threads(t);
            let id = format!("{}/threads{t}", p.label().replace("/drop0", ""));
            g.bench_function(id, |b| {
                b.iter(|| {
                    for (i, part) in values.chunks_mut(chunk).enumerate() {
                        session.mask_chunk((i * chunk) as u64, part).expect("mask");
                    }
                })
            });
        }
    }
    g.finish();

    // Quantizing is the member's other per-element cost (one CSPRNG draw per value).
    let mut g = c.benchmark_group("secagg/client_quantize");
    g.sample_size(10);
    let q = Quantizer::symmetric(1.0, 32, 100).expect("quantizer");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for d in SIZES {
        let input: Vec<f32> = (0..d).map(|i| ((i % 2001) as f32 - 1000.0) / 1000.0).collect();
        let mut out = vec![0u32; d as usize];
        g.throughput(Throughput::Elements(d));
        g.bench_function(BenchmarkId::from_parameter(size_label(d)), |b| {
            b.iter(|| q.quantize(&input, &mut out, &mut rng).expect("quantize"))
        });
    }
    g.finish();
}

/// Masked vectors are cached across iterations up to this many MiB
/// (`TESSERA_SECAGG_CACHE_MB`); beyond it they are masked again, untimed.
fn cache_budget() -> u64 {
    std::env::var("TESSERA_SECAGG_CACHE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024) << 20
}

/// PRG expansions of d the aggregator runs: survivors' self masks, plus each
/// dropout's pairwise mask with each surviving neighbour.
fn server_expansions(ctx: &RoundContext, dropped: &BTreeSet<PartyId>) -> usize {
    let survivors = ctx.cohort_size() as usize - dropped.len();
    let graph = ctx.graph().expect("a drawn graph");
    let pairs: usize =
        dropped.iter().map(|v| graph.neighbours(*v).iter().filter(|u| !dropped.contains(u)).count()).sum();
    survivors + pairs
}

fn aggregator(c: &mut Criterion) {
    let chunk = Limits::default().chunk_values;
    let mut g = c.benchmark_group("secagg/aggregator");
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
    for p in aggregator_points(grid()) {
        let (ctx, dropped) = p.round(17);
        let survivors = u64::from(p.n) - dropped.len() as u64;
        let mut cache = (survivors * p.d * 4 <= cache_budget()).then(MaskedCache::new);
        let spent = RefCell::new(Vec::<AggregatorTime>::new());
        eprintln!(
            "{}: threshold {}, {} survivors, {} PRG expansions to unmask, masked vectors {}",
            p.label(),
            ctx.threshold(),
            survivors,
            server_expansions(&ctx, &dropped),
            if cache.is_some() { "cached" } else { "re-masked every round (untimed)" }
        );
        g.throughput(Throughput::Elements(p.d));
        g.bench_function(p.label(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // The same seed every round: same keys, so cached masked vectors stay valid.
                    let round = prepare_round(&ctx, 1, 17);
                    let t = aggregate(&ctx, round, &dropped, chunk, cache.as_mut());
                    spent.borrow_mut().push(t);
                    total += t.total();
                }
                total
            })
        });
        report(&p.label(), &spent.borrow());
    }
    g.finish();
}

/// Mean wall and CPU time of the rounds run (warm-up included), split into
/// summing and unmasking. CPU time is what one core spends, whatever else
/// the machine runs; it is missing for summing in rounds where members
/// masked in between (the round that fills the cache, or no cache).
fn report(label: &str, rounds: &[AggregatorTime]) {
    let mean = |f: &dyn Fn(&AggregatorTime) -> Option<Duration>| -> String {
        let v: Vec<f64> = rounds.iter().filter_map(f).map(|d| d.as_secs_f64() * 1e3).collect();
        if v.is_empty() { "n/a".into() } else { format!("{:.1} ms", v.iter().sum::<f64>() / v.len() as f64) }
    };
    if !rounds.is_empty() {
        eprintln!(
            "{label}: mean of {} rounds: wall sum {} + unmask {}; CPU sum {} + unmask {}",
            rounds.len(),
            mean(&|t| Some(t.sum)),
            mean(&|t| Some(t.unmask)),
            mean(&|t| t.cpu_sum),
            mean(&|t| t.cpu_unmask),
        );
    }
}

criterion_group!(benches, prg, client, aggregator);
criterion_main!(benches);
