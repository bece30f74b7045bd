//! Replays every saved fuzz input through the same entry points the
//! cargo-fuzz targets call: the seed corpus in `fuzz/corpus/<target>/` and
//! every crash, timeout or leak artifact in `fuzz/artifacts/<target>/`
//! (each one a regression test once its bug is fixed). Then a short
//! mutational smoke run per target: seeded mutations of the corpus (bit
//! flips, byte overwrites, truncation, insertion, duplication, splicing)
//! for `TESSERA_FUZZ_SMOKE_SECS` seconds (default 2). It has no coverage
//! feedback, so it is a stable-toolchain tripwire for regressions near the
//! corpus, not a replacement for `scripts/fuzz.sh` (libFuzzer). Runs with a
//! plain `cargo test`; no nightly flags, no libFuzzer.

#[path = "../../fuzz/src/entries/mod.rs"]
mod entries;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

fn replay(target: &str) {
    let (_, entry) = entries::TARGETS.iter().find(|(n, _)| *n == target).expect("known target");
    let corpus = files_in(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ holds no seed inputs");
    let artifacts = files_in(&fuzz_dir().join("artifacts").join(target));
    for file in corpus.iter().chain(&artifacts) {
        let bytes = std::fs::read(file).unwrap();
        let name = file.display().to_string();
        let outcome = std::panic::catch_unwind(|| entry(&bytes));
        assert!(outcome.is_ok(), "{target}: input {name} fails again");
    }
    eprintln!("{target}: {} corpus inputs and {} artifacts replayed", corpus.len(), artifacts.len());
    let seeds: Vec<Vec<u8>> = corpus.iter().map(|f| std::fs::read(f).unwrap()).collect();
    smoke(target, *entry, &seeds);
}

/// Seeded mutational fuzzing of `seeds` for a few seconds (at least 64
/// inputs). A failing input is written to the temporary directory and named
/// in the failure, ready to be copied into `fuzz/artifacts/<target>/`.
fn smoke(target: &str, entry: fn(&[u8]), seeds: &[Vec<u8>]) {
    let secs = std::env::var("TESSERA_FUZZ_SMOKE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(2.0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut rng = ChaCha8Rng::seed_from_u64(0x7e55e7a ^ target.len() as u64);
    let mut runs = 0u64;
    while runs < 64 || Instant::now() < until {
        let input = mutate(&mut rng, seeds);
        if std::panic::catch_unwind(|| entry(&input)).is_err() {
            let path = std::env::temp_dir().join(format!("tessera-fuzz-smoke-{target}-{runs}"));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{target}: mutated input #{runs} fails; saved to {} (copy it into fuzz/artifacts/{target}/)",
                path.display()
            );
        }
        runs += 1;
    }
    eprintln!("{target}: {runs} mutated inputs ran clean");
}

fn mutate(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut x = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let len = x.len();
        match rng.gen_range(0..6) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                x[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                x[i] = [0, 1, 0x7f, 0x80, 0xff, rng.r#gen::<u8>()][rng.gen_range(0..6)];
            }
            2 if len > 0 => x.truncate(rng.gen_range(0..len)),
            3 => {
                let at = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.r#gen::<u8>()).collect();
                x.splice(at..at, bytes);
            }
            4 if len > 1 => {
                let a = rng.gen_range(0..len);
                let b = rng.gen_range(a..=len.min(a + 64));
                let at = rng.gen_range(0..=len);
                let piece = x[a..b].to_vec();
                x.splice(at..at, piece);
            }
            _ => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                let cut = rng.gen_range(0..=len);
                let from = rng.gen_range(0..=other.len());
                x.truncate(cut);
                x.extend_from_slice(&other[from..]);
            }
        }
    }
    x
}

#[test]
fn every_target_has_a_corpus_and_a_cargo_fuzz_binary() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in entries::TARGETS {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml lacks the {name} target");
        assert!(fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")).is_file());
    }
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(#[test]
        fn $target() {
            replay(stringify!($target));
        })*
    };
}

replay_tests!(
    frame_decoder,
    client_msg,
    aggregator_msg,
    participant,
    coordinator,
    member_inputs,
    coordinator_inputs,
    csv_loader,
    idx_loader,
    image_loader,
    config,
);

/// Regenerates the hand-made seeds (`seed-*` files) in `fuzz/corpus/`; inputs
/// that libFuzzer found and `scripts/fuzz.sh` merged in are left alone.
/// Run after changing a format:
/// `cargo test -p tessera-e2e --test fuzz_corpus -- --ignored write_seed_corpus`
#[test]
#[ignore = "writes into fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    use tessera_core::{
        Advertisement, AggregatorMsg, ClientMsg, EncryptedShare, EvalMetrics, Limits, ModelPurpose, ParamLayout,
        PublicKeys, RoundSettings, RunId, SecAggSettings, ShareReveal, TrainSettings, encode_frame, to_bytes,
    };

    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    let train = TrainSettings {
        local_epochs: 1,
        batch_size: 8,
        learning_rate: 0.1,
        proximal_mu: 0.0,
        seed: 3,
        example_weight_cap: 100,
    };
    let settings = RoundSettings {
        train,
        secagg: Some(SecAggSettings { threshold: 2, modulus_bits: 32, clip_range: 1.0, neighbours: None }),
        dp: None,
        eval: None,
        stats: None,
    };
    let keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
    let advert = Advertisement {
        keys,
        seed_commitment: [3; 32],
        graph_commitment: [8; 32],
        certificate: vec![4; 300],
        signature: vec![5; 72],
    };
    let share = EncryptedShare { from: 0, to: 1, ciphertext: vec![9; 60] };
    let metrics = EvalMetrics {
        num_examples: 4,
        loss: 0.5,
        accuracy: 0.75,
        balanced_accuracy: 0.75,
        auc: 0.8,
        f1: 0.7,
        confusion: vec![vec![2, 1], vec![0, 1]],
    };
    let client = vec![
        ClientMsg::Hello {
            member: "m1".into(),
            protocol_version: tessera_core::PROTOCOL_VERSION,
            settings: tessera_core::SettingsDigest { model: [8; 32], schema: [9; 32] },
        },
        ClientMsg::AdvertiseKeys { round: 1, advert: advert.clone() },
        ClientMsg::RevealGraphSeed { round: 1, reveal: [6; 32] },
        ClientMsg::ShareKeys { round: 1, shares: vec![share.clone()] },
        ClientMsg::MaskedStart { round: 1, len: 10 },
        ClientMsg::MaskedChunk { round: 1, offset: 0, values: vec![1, 2, u32::MAX] },
        ClientMsg::MaskedEnd { round: 1 },
        ClientMsg::SignSurvivors { round: 1, signature: vec![7; 64] },
        ClientMsg::UnmaskShares {
            round: 1,
            reveals: vec![
                ShareReveal::SelfMask { peer: 0, share: vec![5; 32] },
                ShareReveal::MaskKey { peer: 2, share: vec![6; 32] },
            ],
        },
        ClientMsg::PlainStart { round: 1, len: 3, weight: 0.5 },
        ClientMsg::PlainChunk { round: 1, offset: 0, values: vec![0.5, -1.0] },
        ClientMsg::EvalReport { round: 1, metrics },
        ClientMsg::Decline { round: 2, reason: "budget".into() },
    ];
    let aggregator = vec![
        AggregatorMsg::Welcome { run_id: RunId([7; 16]), member: "m1".into() },
        AggregatorMsg::RoundStart {
            round: 1,
            settings,
            cohort: vec!["m0".to_string(), "m1".to_string()].into(),
            party: 1,
        },
        AggregatorMsg::ModelStart {
            round: 1,
            purpose: ModelPurpose::Train,
            layout: ParamLayout { entries: vec![("w".into(), vec![2, 3]), ("b".into(), vec![3])] },
        },
        AggregatorMsg::ModelChunk { round: 1, offset: 0, values: vec![0.1, 0.2] },
        AggregatorMsg::ModelEnd { round: 1, digest: [3; 32] },
        AggregatorMsg::GraphRoster { round: 1, commitments: vec![(0, [8; 32]), (1, [9; 32])].into() },
        AggregatorMsg::CohortKeys {
            round: 1,
            adverts: vec![(0, advert.into())],
            reveals: vec![(0, [6; 32]), (1, [5; 32])].into(),
        },
        AggregatorMsg::ForwardShares { round: 1, shares: vec![share] },
        AggregatorMsg::SurvivorSet { round: 1, survivors: vec![0, 1].into() },
        AggregatorMsg::UnmaskRequest { round: 1, signatures: vec![(0, vec![7; 64])] },
        AggregatorMsg::RoundEnd { round: 1, accepted: true, reason: String::new() },
        AggregatorMsg::Shutdown { reason: "done".into() },
    ];
    let limits = Limits::default();
    for (i, m) in client.iter().enumerate() {
        write("client_msg", &format!("{i:02}-{}", m.kind()), &to_bytes(m).unwrap());
        let mut f = vec![i as u8];
        f.extend(encode_frame(m, &limits).unwrap());
        write("frame_decoder", &format!("client-{i:02}-{}", m.kind()), &f);
    }
    for (i, m) in aggregator.iter().enumerate() {
        write("aggregator_msg", &format!("{i:02}-{}", m.kind()), &to_bytes(m).unwrap());
        let mut f = vec![(i * 7) as u8];
        f.extend(encode_frame(m, &limits).unwrap());
        write("frame_decoder", &format!("aggregator-{i:02}-{}", m.kind()), &f);
    }
    // Structure-aware targets: a few plain byte patterns; libFuzzer grows the rest.
    for (i, seed) in
        [vec![0u8; 64], (0..=255).collect::<Vec<u8>>(), [1, 0, 3, 2, 0, 1, 1, 2, 3, 4].repeat(20)].iter().enumerate()
    {
        write("participant", &format!("pattern-{i}"), seed);
        write("coordinator", &format!("pattern-{i}"), seed);
    }
    // Tables: the head byte picks the spec (label column "label" or "y", ...).
    let mut csv = vec![0u8];
    csv.extend_from_slice(b"a,b,c,label\n1,2,x,p\n3,4.5,y,q\n,6,x,p\n7,8,z,q\n9,1e3,x,p\n2,3,y,q\n");
    write("csv_loader", "numeric-and-categorical", &csv);
    let mut csv = vec![2u8 | 8];
    csv.extend_from_slice(
        b"id,f1,f2,label\n1,0.5,0.25,a\n2,\"1,5\",0.1,b\n3,NA,0.3,a\n4,0.2,,b\n5,0.9,0.8,a\n6,0.1,0.7,b\n",
    );
    write("csv_loader", "ignored-and-missing", &csv);
    let wdbc: String =
        std::fs::read_to_string(tessera_e2e::wdbc()).unwrap().lines().take(12).collect::<Vec<_>>().join("\n");
    let mut csv = vec![1u8];
    csv.extend_from_slice(wdbc.replace("diagnosis", "y").as_bytes());
    write("csv_loader", "wdbc-head", &csv);
    // IDX: a tiny image stack, and the shipped (gzipped) label file.
    let mut idx = vec![0u8];
    idx.extend(tessera_vision::encode_idx(&[2, 3, 2], &[0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]).unwrap());
    write("idx_loader", "images", &idx);
    let mut gz = vec![1u8];
    gz.extend(std::fs::read(fuzz_dir().join("../examples/data/fashion-mnist/t10k-labels-idx1-ubyte.gz")).unwrap());
    write("idx_loader", "labels-gz", &gz);
    // Images: a small PNG and JPEG.
    let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([(x * 50) as u8, (y * 60) as u8, 128]));
    for (flag, format, name) in [(0u8, image::ImageFormat::Png, "png"), (3u8, image::ImageFormat::Jpeg, "jpeg")] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        let mut seed = vec![flag | 0x20];
        seed.extend(bytes.into_inner());
        write("image_loader", name, &seed);
    }
    // Configurations: the shipped examples, one per loader.
    let root = fuzz_dir().join("..");
    for (flag, file) in [
        (0u8, "examples/consortium/aggregator.toml"),
        (1, "examples/consortium/hospital-a.toml"),
        (2, "simulations/hospitals-wdbc.toml"),
    ] {
        let mut seed = vec![flag];
        seed.extend(std::fs::read(root.join(file)).unwrap());
        write("config", &flag.to_string(), &seed);
    }
}
