//! Signed key advertisements (issue #17): what one member pays per round at
//! n = 100 to sign its advertisement (ECDSA P-256, AWS-LC) and to check its
//! neighbours' (certificate path to the consortium CA, member name, ECDSA
//! signature; rustls-webpki over ring): 14 neighbours under SecAgg+
//! (`default_plan(100)`), 99 under the complete graph.
//!
//! `cargo bench -p tessera-benches --bench signed`

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_core::{Advertisement, PublicKeys};
use tessera_protocol::member::MemberIdentity;
use tessera_transport::pki::MemoryPki;

const N: usize = 100;

struct Setup {
    cohort: Vec<String>,
    me: MemberIdentity,
    adverts: Vec<(Vec<u8>, Advertisement)>,
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
            let message = tessera_secagg::advert_message(&binding, p as u32, &keys, &commitment);
            let signature = id.sign(&message).unwrap();
            (
                message,
                Advertisement { keys, seed_commitment: commitment, certificate: id.certificate.clone(), signature },
            )
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
                for (i, (message, advert)) in s.adverts[..count].iter().enumerate() {
                    s.me.verify(&s.cohort, i as u32 + 1, message, advert).unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, signed);
criterion_main!(benches);
