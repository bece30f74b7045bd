//! Aggregator peak memory while summing 20 updates of 100 MB (issue #2:
//! must stay under 3x one update).
//!
//! `cargo run --release -p tessera-benches --example aggregator_memory`
//!
//! Each configuration runs in a child process of its own (this binary again,
//! with `child <config>`), which reports its peak resident set (`VmHWM` of
//! `/proc/self/status`) per phase, resetting it in between through
//! `/proc/self/clear_refs`. The updates are synthetic and streamed in
//! `Limits::default().chunk_values` chunks, as the daemons stream them, so
//! no member's whole update ever exists in the process: what is measured is
//! the aggregator's own state.
//!
//! Configurations:
//! - `plain`: a running f32 sum of the chunks (the memory floor: 1x);
//! - `secagg-slots1`, `secagg-slots2`: `tessera_secagg::ServerSession` with
//!   that many staging slots and as many streams in flight at once,
//!   followed by unmasking, then `update::mean_update` as the coordinator
//!   calls it at round end.
//!
//! `TESSERA_MEM_PARAMS` overrides the parameter count (default 25,000,000 =
//! 100 MB of f32) and `TESSERA_MEM_MEMBERS` the member count (default 20).

use std::collections::BTreeSet;
use std::process::Command;

use tessera_benches::secagg_round::{Graph, Point, client_bits, fill_input, prepare_round};
use tessera_core::{Limits, ParamLayout, PartyId, SecAggSettings};

/// The daemons' allocator (see `tessera-aggregator`'s main.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak and current resident set in bytes, from `/proc/self/status`.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("status field")
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets `VmHWM` to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset peak RSS");
}

/// Peak RSS above `base` during the phase `f`, in bytes.
fn phase<T>(base: u64, f: impl FnOnce() -> T) -> (T, u64) {
    reset_peak();
    let out = f();
    (out, rss().0.saturating_sub(base))
}

fn child(config: &str, params: u64, members: u32) {
    let chunk = Limits::default().chunk_values;
    let update_bytes = params * 4;
    let mut phases: Vec<(&str, u64)> = Vec::new();
    let base = rss().1;
    match config {
        "plain" => {
            let ((), peak) = phase(base, || {
                let mut sum = vec![0f32; params as usize];
                let mut buf = vec![0f32; chunk];
                for m in 0..members {
                    let mut offset = 0usize;
                    while offset < params as usize {
                        let part = &mut buf[..chunk.min(params as usize - offset)];
                        part.iter_mut().enumerate().for_each(|(i, v)| *v = ((m as usize + offset + i) % 7) as f32);
                        sum[offset..offset + part.len()].iter_mut().zip(part.iter()).for_each(|(s, v)| *s += v);
                        offset += part.len();
                    }
                }
                std::hint::black_box(&sum);
            });
            phases.push(("sum", peak));
        }
        c if c.starts_with("secagg-slots") => {
            let slots: u32 = c["secagg-slots".len()..].parse().expect("slot count");
            // The masked vector is the update plus one weight element, as `update::vector_len` lays it out.
            let point = Point { n: members, d: params + 1, graph: Graph::Complete, dropout_pct: 0 };
            let ctx = point.context();
            let bits = client_bits(&ctx);
            let mut round = prepare_round(&ctx, slots, 1);
            let base = rss().1;
            let d = ctx.vector_len();
            let survivors: Vec<PartyId> = (0..members).collect();
            let ((), peak) = phase(base, || {
                let mut bufs: Vec<Vec<u32>> = (0..slots).map(|_| vec![0u32; chunk]).collect();
                for batch in survivors.chunks(slots as usize) {
                    for &p in batch {
                        round.server.on_masked_start(p, d).expect("stream starts");
                    }
                    let mut offset = 0u64;
                    while offset < d {
                        let len = (d - offset).min(chunk as u64) as usize;
                        for (&p, buf) in batch.iter().zip(&mut bufs) {
                            let v = &mut buf[..len];
                            fill_input(p, offset, v, bits);
                            round.clients[p as usize].mask_chunk(offset, v).expect("mask");
                            round.server.on_masked_chunk(p, offset, v).expect("chunk");
                        }
                        offset += len as u64;
                    }
                    for &p in batch {
                        round.server.on_masked_end(p).expect("stream ends");
                    }
                }
            });
            phases.push(("masked input (sum + slots)", peak));
            let (sum, peak) = phase(base, || {
                let survivors = round.server.close_masked().expect("close");
                for &p in &survivors {
                    round.clients[p as usize].on_survivor_set(&survivors).expect("set accepted");
                    round.server.on_survivor_signature(p, vec![0; 64]).expect("signature accepted");
                }
                for (p, signatures) in round.server.close_consistency().expect("consistency") {
                    let signers = signatures.into_iter().map(|(v, _)| v).collect();
                    let reveals = round.clients[p as usize].on_unmask_request(&signers).expect("reveal");
                    round.server.on_unmask(p, reveals).expect("accept");
                }
                round.server.finish().expect("finish")
            });
            phases.push(("unmask (finish)", peak));
            // Round end as the coordinator does it: the mean update from the sum.
            let settings: SecAggSettings = ctx.settings().clone();
            let layout = ParamLayout { entries: vec![("w".into(), vec![params as usize])] };
            let (mean, peak) =
                phase(base, || tessera_secagg::mean_update(&layout, &settings, members, &sum.sum, members));
            drop(mean);
            phases.push(("round end (mean_update, sum still held)", peak));
        }
        other => panic!("unknown configuration {other}"),
    }
    for (name, peak) in phases {
        println!("{config}\t{name}\t{peak}\t{:.2}", peak as f64 / update_bytes as f64);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let params = env_or("TESSERA_MEM_PARAMS", 25_000_000);
    let members = env_or("TESSERA_MEM_MEMBERS", 20) as u32;
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], params, members);
        return;
    }
    println!(
        "{members} updates of {params} parameters ({:.0} MB each); peak RSS above the process baseline, per phase",
        params as f64 * 4.0 / 1e6
    );
    println!("config\tphase\tpeak bytes\tx one update");
    let exe = std::env::current_exe().expect("own path");
    let mut failed = BTreeSet::new();
    for config in ["plain", "secagg-slots1", "secagg-slots2"] {
        let out = Command::new(&exe).args(["child", config]).output().expect("child runs");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            failed.insert(config);
        }
    }
    assert!(failed.is_empty(), "configurations failed: {failed:?}");
}
