//! Noise sampling throughput (issue #5): exact discrete Gaussian draws for
//! d = 1M coordinates against the raw CSPRNG words they consume and against
//! OpenDP's `make_gaussian`, side by side in one run.
//!
//! `cargo bench -p tessera-benches --bench noise`
//!
//! - `raw_chacha20_u64`: 1M `next_u64` from `ChaCha20Rng`, the CSPRNG every
//!   sampler draws from (target: the sampler within 5x of it);
//! - `table`: `DiscreteGaussian::fill`, the cumulative-distribution-table
//!   sampler (certified total-variation distance below 2^-90 per draw);
//! - `rejection`: `DiscreteGaussian::fill_rejection`, the exact CKS20
//!   rejection sampler (the only one above `MAX_TABLE_SIGMA`);
//! - `opendp_make_gaussian`: OpenDP's vector Gaussian measurement on integers
//!   (its exact big-rational sampler, OS randomness), timed on 50k
//!   coordinates because 1M takes seconds; throughput is per element, so it
//!   reads against the others directly (target: the table sampler >= 20x);
//! - `convolved`: `ConvolvedGaussian::fill` (two table draws, k·Y + R) at
//!   sigma = 2^16, what `GaussianMechanism` uses for ~1M values at z = 1,
//!   against `rejection` at the same sigma (what it used before);
//! - `raw_aes_ctr_u64`, `convolved_aes_ctr`: the same with words from
//!   `NoiseStream` (AES-256-CTR through AWS-LC), the stream DP-SGD's large
//!   releases draw from;
//! - `mechanism_d1M/{chacha20,aes_ctr}`: `GaussianMechanism::add_to` on 1M
//!   f32 values at z = 1, C = 1 (rounding, the two-table draw, scaling
//!   back): one DP-SGD step's noise through unfrozen blocks, on one stream
//!   of each kind;
//! - `table_build`: building the table once, for the largest sigma allowed too.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_privacy::{ConvolvedGaussian, DiscreteGaussian, GaussianMechanism, MAX_TABLE_SIGMA, NoiseStream};

const D: usize = 1_000_000;
const OPENDP_D: usize = 50_000;
/// sigma in lattice units: 1000 as in the earlier figures, plus a small one.
const SIGMAS: [f64; 2] = [1000.0, 10.0];

fn sampling(c: &mut Criterion) {
    let mut g = c.benchmark_group("noise");
    g.sample_size(20).warm_up_time(Duration::from_secs(1));
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    g.throughput(Throughput::Elements(D as u64));
    let mut words = vec![0u64; D];
    g.bench_function("raw_chacha20_u64/d1M", |b| b.iter(|| words.iter_mut().for_each(|w| *w = rng.next_u64())));
    let mut aes = NoiseStream::from_key([7; 32]);
    g.bench_function("raw_aes_ctr_u64/d1M", |b| b.iter(|| words.iter_mut().for_each(|w| *w = aes.next_u64())));
    let mut out = vec![0i64; D];
    for sigma in SIGMAS {
        let dg = DiscreteGaussian::new(sigma).expect("sigma");
        eprintln!("sigma {sigma}: table distance <= 2^{:.1}", dg.table_tv_log2().expect("table"));
        g.bench_function(BenchmarkId::new("table/d1M", sigma), |b| b.iter(|| dg.fill(&mut out, &mut rng)));
        g.bench_function(BenchmarkId::new("rejection/d1M", sigma), |b| {
            b.iter(|| dg.fill_rejection(&mut out, &mut rng))
        });
    }
    // Beyond one table: sigma/g ≈ 2^16 is what a 1M-value release at z = 1 needs.
    let wide = 65_536.0;
    let conv = ConvolvedGaussian::new(wide).expect("sigma");
    eprintln!("sigma {wide}: convolved distance <= 2^{:.1}", conv.tv_log2());
    g.bench_function(BenchmarkId::new("convolved/d1M", wide), |b| b.iter(|| conv.fill(&mut out, &mut rng)));
    g.bench_function(BenchmarkId::new("convolved_aes_ctr/d1M", wide), |b| b.iter(|| conv.fill(&mut out, &mut aes)));
    let mechanism = GaussianMechanism::new(1.0, 1.0, D).expect("mechanism");
    let mut values = vec![0.0f32; D];
    g.bench_function("mechanism_d1M/chacha20", |b| {
        b.iter(|| {
            values.fill(0.0);
            mechanism.add_to(&mut values, &mut rng).expect("noise")
        })
    });
    g.bench_function("mechanism_d1M/aes_ctr", |b| {
        b.iter(|| {
            values.fill(0.0);
            mechanism.add_to(&mut values, &mut aes).expect("noise")
        })
    });
    let dg = DiscreteGaussian::new(wide).expect("sigma");
    g.bench_function(BenchmarkId::new("rejection/d1M", wide), |b| b.iter(|| dg.fill_rejection(&mut out, &mut rng)));
    g.finish();

    let mut g = c.benchmark_group("noise");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).throughput(Throughput::Elements(OPENDP_D as u64));
    let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<i64>::default(),
        SIGMAS[0],
        None,
    )
    .expect("OpenDP measurement");
    let zeros = vec![0i64; OPENDP_D];
    g.bench_function(BenchmarkId::new("opendp_make_gaussian/d50k", SIGMAS[0]), |b| {
        b.iter(|| m.invoke(&zeros).expect("OpenDP sample"))
    });
    g.finish();

    let mut g = c.benchmark_group("noise/table_build");
    g.sample_size(10);
    for sigma in [SIGMAS[0], MAX_TABLE_SIGMA] {
        g.bench_function(BenchmarkId::from_parameter(sigma), |b| {
            b.iter(|| DiscreteGaussian::new(sigma).expect("sigma").table_tv_log2())
        });
    }
    g.finish();
}

criterion_group!(benches, sampling);
criterion_main!(benches);
