//! Signed key advertisements (issue #17): what one member pays per round at
//! n = 100 to sign its advertisement (ECDSA P-256, AWS-LC) and to check its
//! neighbours' (certificate path to the consortium CA, member name, ECDSA
//! signature; rustls-webpki over ring): 14 neighbours under SecAgg+
//! (`default_plan(100)`), 99 under the complete graph.
//!
//! Also the rest of what issue #17's malicious-aggregator defences cost a
//! member: signing the survivor set and checking the neighbours'
//! signatures on it (`survivor_set`), and drawing the graph from every
//! reveal (`graph_draw`, n = 100 and 1000).
//!
//! `cargo bench -p tessera-benches --bench signed`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_benches::secagg_round::{Graph, Point, client_bits, fill_input, prepare_round};
use tessera_core::{Advertisement, PublicKeys};
use tessera_protocol::member::{CertificateCache, MemberIdentity};
use tessera_secagg::{ClientSession, ServerSession};
use tessera_transport::pki::MemoryPki;

const N: usize = 100;

struct Setup {
    cohort: Vec<String>,
    me: MemberIdentity,
    adverts: Vec<(Vec<u8>, Advertisement, MemberIdentity)>,
}

fn setup() -> Setup {
    let pki = MemoryPki::new("bench consortium").unwrap();
    let cohort: Vec<String> = (0..N).map(|i| format!("member-{i:03}")).collect();
    let identity = |name: &str| {
        let c = pki.issue(name).unwrap();
        tessera_client::member_identity(c.cert, &c.key, pki.ca_cert().to_vec()).unwrap()
    };
    let me = identity(&cohort[0]);
    let binding = [7u8; 32];
    let adverts = (1..N)
        .map(|p| {
            let mut id = identity(&cohort[p]);
            let keys = PublicKeys { cipher_pk: [p as u8; 32], mask_pk: [p as u8 ^ 0xff; 32] };
            let commitment = [3u8; 32];
            let graph_commitment = [4u8; 32];
            let message = tessera_secagg::advert_message(&binding, p as u32, &keys, &commitment, &graph_commitment);
            let signature = id.sign(&message).unwrap();
            let advert = Advertisement {
                keys,
                seed_commitment: commitment,
                graph_commitment,
                certificate: id.certificate.clone(),
                signature,
            };
            (message, advert, id)
        })
        .collect();
    Setup { cohort, me, adverts }
}

fn signed(c: &mut Criterion) {
    let mut s = setup();
    let k = tessera_secagg::default_plan(N as u32).neighbours.expect("SecAgg+ at n = 100") as usize;
    let mut g = c.benchmark_group("signed_advert");
    let message = s.adverts[0].0.clone();
    g.bench_function("n100/sign", |b| b.iter(|| s.me.sign(&message).unwrap()));
    for (label, count) in [(format!("n100/verify_k{k}"), k), ("n100/verify_complete99".to_string(), N - 1)] {
        g.bench_function(&label, |b| {
            b.iter(|| {
                for (i, (message, advert, _)) in s.adverts[..count].iter().enumerate() {
                    s.me.verify(&s.cohort, i as u32 + 1, message, advert).unwrap();
                }
            })
        });
    }
    // From the second round on a member has validated its neighbours'
    // certificates (cached for an hour): only names and signatures remain.
    let mut cache = CertificateCache::default();
    g.bench_function(format!("n100/verify_cached_k{k}"), |b| {
        b.iter(|| {
            for (i, (message, advert, _)) in s.adverts[..k].iter().enumerate() {
                s.me.verify_cached(&mut cache, &s.cohort, i as u32 + 1, message, advert).unwrap();
            }
        })
    });
    g.finish();

    // The consistency check (issue #17): one signature on the survivor set,
    // and the neighbours' signatures checked under keys already verified.
    let survivors: Vec<u32> = (0..N as u32).filter(|p| p % 10 != 3).collect();
    let set = tessera_secagg::survivor_message(&[7u8; 32], &survivors);
    let keys: Vec<_> = s
        .adverts
        .iter()
        .enumerate()
        .map(|(i, (m, a, _))| s.me.verify(&s.cohort, i as u32 + 1, m, a).unwrap())
        .collect();
    let sigs: Vec<Vec<u8>> = s.adverts.iter_mut().map(|(_, _, id)| id.sign(&set).unwrap()).collect();
    let mut g = c.benchmark_group("survivor_set");
    g.bench_function("n100/sign", |b| b.iter(|| s.me.sign(&set).unwrap()));
    g.bench_function(format!("n100/verify_k{k}"), |b| {
        b.iter(|| {
            for (key, sig) in keys.iter().zip(&sigs).take(k) {
                assert!(key.verifies(&set, sig));
            }
        })
    });
    g.finish();

    // The graph draw: a member checks every reveal against the roster and
    // hashes them into the seed, then draws the graph.
    let mut g = c.benchmark_group("graph_draw");
    for n in [100u32, 1000] {
        let binding = [9u8; 32];
        let roster: Vec<(u32, [u8; 32], [u8; 32])> = (0..n)
            .map(|p| {
                let reveal = [(p % 251) as u8; 32];
                (p, tessera_secagg::graph_commitment(&binding, p, &reveal), reveal)
            })
            .collect();
        let k = tessera_secagg::default_neighbours(n);
        g.bench_function(format!("n{n}/member"), |b| {
            b.iter(|| {
                for (p, c, r) in &roster {
                    assert_eq!(tessera_secagg::graph_commitment(&binding, *p, r), *c);
                }
                let seed = tessera_secagg::graph_seed(&binding, &roster);
                tessera_secagg::NeighbourGraph::new(n, Some(k), seed).neighbours(0)
            })
        });
    }
    g.finish();
}

/// The aggregator's share of the defences, at n = 100 and 1000 (SecAgg+,
/// 10 % dropout): checking every graph reveal and drawing the graph, and
/// the consistency check (taking each survivor's signature, forwarding each
/// member its neighbours'), plus the commitment check of every rebuilt
/// self-mask seed. Vectors are tiny (d = 16): these costs do not depend on
/// d, while the rest of the aggregator's round (summing, unmasking) grows
/// with it, so they are compared with the `secagg` bench's d = 1M figures.
fn aggregator_added(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregator_added");
    g.sample_size(10);
    for n in [100u32, 1000] {
        let point = Point { n, d: 16, graph: Graph::Sparse, dropout_pct: 10 };
        let ctx = point.context();
        g.bench_function(format!("n{n}/graph_reveal"), |b| {
            b.iter_batched(
                || {
                    let mut rng = ChaCha20Rng::seed_from_u64(1);
                    let mut server = ServerSession::new(ctx.clone());
                    let mut clients = Vec::new();
                    for p in 0..n {
                        let (c, k) = ClientSession::new(ctx.clone(), p, &mut rng).unwrap();
                        server.on_advertise(p, k, c.seed_commitment(), c.graph_commitment()).unwrap();
                        clients.push(c);
                    }
                    let roster = server.close_advertise().unwrap();
                    let reveals: Vec<[u8; 32]> = clients.iter_mut().map(|c| c.on_roster(&roster).unwrap()).collect();
                    (server, reveals)
                },
                |(mut server, reveals)| {
                    for (p, r) in reveals.iter().enumerate() {
                        server.on_graph_reveal(p as u32, *r).unwrap();
                    }
                    server.close_reveal().unwrap()
                },
                BatchSize::LargeInput,
            )
        });
        let (drawn, dropped) = point.round(3);
        g.bench_function(format!("n{n}/consistency"), |b| {
            b.iter_batched(
                || {
                    let mut r = prepare_round(&drawn, 1, 3);
                    let bits = client_bits(&drawn);
                    for p in (0..n).filter(|p| !dropped.contains(p)) {
                        let mut v = vec![0u32; 16];
                        fill_input(p, 0, &mut v, bits);
                        r.clients[p as usize].mask_chunk(0, &mut v).unwrap();
                        r.server.on_masked_start(p, 16).unwrap();
                        r.server.on_masked_chunk(p, 0, &v).unwrap();
                        r.server.on_masked_end(p).unwrap();
                    }
                    let set = r.server.close_masked().unwrap();
                    (r.server, set)
                },
                |(mut server, set)| {
                    for p in &set {
                        server.on_survivor_signature(*p, vec![0; 64]).unwrap();
                    }
                    server.close_consistency().unwrap()
                },
                BatchSize::LargeInput,
            )
        });
        let seeds: Vec<[u8; 32]> = (0..n).map(|p| [(p % 251) as u8; 32]).collect();
        g.bench_function(format!("n{n}/seed_commitment_checks"), |b| {
            b.iter(|| {
                seeds
                    .iter()
                    .enumerate()
                    .fold(0u8, |acc, (p, s)| acc ^ tessera_secagg::seed_commitment(&[3; 32], p as u32, s)[0])
            })
        });
    }
    g.finish();
}

criterion_group!(benches, signed, aggregator_added);
criterion_main!(benches);
