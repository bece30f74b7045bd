//! Splitting one data set across simulated members: IID, Dirichlet label
//! skew, label shards, quantity skew, or the data's own grouping (a natural
//! id column such as a hospital). Every example goes to exactly one member;
//! all draws come from the scenario seed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// `[partition]`: how a scenario's examples are split across its members
/// (`kind = "iid"` by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Partitioner {
    /// Uniformly shuffled, equal sizes (±1).
    Iid,
    /// Per class, member shares drawn from Dirichlet(alpha): small alpha,
    /// strong label skew.
    Dirichlet {
        /// Concentration, positive: 0.1 leaves most members with a few
        /// classes; 100 is close to IID.
        alpha: f64,
    },
    /// Each member receives examples of `labels_per_client` classes.
    Shards {
        /// Classes per member, 1 up to the number of classes.
        labels_per_client: usize,
    },
    /// IID labels, member sizes drawn from Dirichlet(alpha).
    Quantity {
        /// Concentration, positive: small values give very unequal sizes.
        alpha: f64,
    },
    /// The data's natural split: one member per distinct value of
    /// `column` (e.g. the site a record came from), in sorted value order.
    Column {
        /// The id column; never a feature. Needs as many distinct values as members.
        column: String,
    },
    /// Each member draws `examples` distinct rows uniformly, independently
    /// of every other member, so members may share rows: for a population
    /// larger than the data (`[population]`). Member k's draw depends only
    /// on the seed and k.
    Sampled {
        /// Rows per member, 1 up to the number of rows.
        examples: usize,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum PartitionError {
    #[error("alpha must be positive and finite, got {0}")]
    BadAlpha(f64),
    #[error("{clients} members but only {examples} examples")]
    TooFewExamples { clients: usize, examples: usize },
    #[error("labels_per_client must lie in 1..={classes}, got {got}")]
    BadShards { got: usize, classes: usize },
    #[error("need at least one member")]
    NoClients,
    #[error("column `{column}` has {groups} distinct values but the scenario has {clients} members")]
    GroupMismatch { column: String, groups: usize, clients: usize },
    #[error("sampled partition: examples must lie in 1..={rows}, got {got}")]
    BadSample { got: usize, rows: usize },
    #[error("the column partitioner needs the column's values (use partition_by_groups)")]
    NeedsGroups,
}

/// Assign example indices to `clients` members.
pub(crate) fn partition(
    how: &Partitioner,
    labels: &[u32],
    num_classes: usize,
    clients: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    if clients == 0 {
        return Err(PartitionError::NoClients);
    }
    if let Partitioner::Sampled { examples } = how {
        return sampled(labels.len(), *examples, clients, seed);
    }
    if labels.len() < clients {
        return Err(PartitionError::TooFewExamples { clients, examples: labels.len() });
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = vec![Vec::new(); clients];
    let by_class = |rng: &mut ChaCha20Rng| {
        let mut c: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
        for (i, l) in labels.iter().enumerate() {
            c[*l as usize].push(i);
        }
        for v in &mut c {
            v.shuffle(rng);
        }
        c
    };
    match how {
        Partitioner::Iid => {
            let mut idx: Vec<usize> = (0..labels.len()).collect();
            idx.shuffle(&mut rng);
            for (k, i) in idx.into_iter().enumerate() {
                out[k % clients].push(i);
            }
        }
        Partitioner::Dirichlet { alpha } => {
            check_alpha(*alpha)?;
            for class in by_class(&mut rng) {
                let shares = dirichlet(&mut rng, *alpha, clients);
                split_by_shares(&class, &shares, &mut out);
            }
        }
        Partitioner::Shards { labels_per_client } => {
            if *labels_per_client == 0 || *labels_per_client > num_classes {
                return Err(PartitionError::BadShards { got: *labels_per_client, classes: num_classes });
            }
            // Member k holds classes k, k+1, … (mod C); each class is split
            // evenly among the members holding it.
            let mut holders: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
            for k in 0..clients {
                for j in 0..*labels_per_client {
                    holders[(k + j) % num_classes].push(k);
                }
            }
            for (c, class) in by_class(&mut rng).into_iter().enumerate() {
                let h = if holders[c].is_empty() { vec![c % clients] } else { holders[c].clone() };
                for (n, i) in class.into_iter().enumerate() {
                    out[h[n % h.len()]].push(i);
                }
            }
        }
        Partitioner::Column { .. } => return Err(PartitionError::NeedsGroups),
        Partitioner::Sampled { .. } => unreachable!("drawn above"),
        Partitioner::Quantity { alpha } => {
            check_alpha(*alpha)?;
            let mut idx: Vec<usize> = (0..labels.len()).collect();
            idx.shuffle(&mut rng);
            let shares = dirichlet(&mut rng, *alpha, clients);
            split_by_shares(&idx, &shares, &mut out);
        }
    }
    // No member may end up empty: move one example from the largest.
    for k in 0..clients {
        if out[k].is_empty() {
            let big = (0..clients).max_by_key(|j| out[*j].len()).expect("clients > 0");
            if let Some(i) = out[big].pop() {
                out[k].push(i);
            }
        }
    }
    for v in &mut out {
        v.sort_unstable();
    }
    Ok(out)
}

/// [`Partitioner::Sampled`]: member k's rows from its own ChaCha20 stream
/// (stream k of the seed's key), sorted.
fn sampled(rows: usize, examples: usize, clients: usize, seed: u64) -> Result<Vec<Vec<usize>>, PartitionError> {
    if examples == 0 || examples > rows {
        return Err(PartitionError::BadSample { got: examples, rows });
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Ok((0..clients)
        .map(|k| {
            rng.set_stream(k as u64);
            rng.set_word_pos(0);
            let mut v = rand::seq::index::sample(&mut rng, rows, examples).into_vec();
            v.sort_unstable();
            v
        })
        .collect())
}

/// Natural partition: member k holds the examples whose group (the index of
/// their id-column value) is k.
pub(crate) fn partition_by_groups(
    column: &str,
    groups: &[u32],
    num_groups: usize,
    clients: usize,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    if clients == 0 {
        return Err(PartitionError::NoClients);
    }
    if num_groups != clients {
        return Err(PartitionError::GroupMismatch { column: column.into(), groups: num_groups, clients });
    }
    let mut out = vec![Vec::new(); clients];
    for (i, g) in groups.iter().enumerate() {
        out[*g as usize].push(i);
    }
    Ok(out)
}

fn check_alpha(alpha: f64) -> Result<(), PartitionError> {
    if alpha.is_finite() && alpha > 0.0 { Ok(()) } else { Err(PartitionError::BadAlpha(alpha)) }
}

/// Dirichlet(alpha, …, alpha) via normalised Gamma(alpha, 1) draws
/// (Marsaglia–Tsang, with the alpha < 1 boost).
fn dirichlet(rng: &mut ChaCha20Rng, alpha: f64, k: usize) -> Vec<f64> {
    let g: Vec<f64> = (0..k).map(|_| gamma(rng, alpha)).collect();
    let s: f64 = g.iter().sum();
    if s > 0.0 { g.iter().map(|x| x / s).collect() } else { vec![1.0 / k as f64; k] }
}

fn gamma(rng: &mut ChaCha20Rng, alpha: f64) -> f64 {
    if alpha < 1.0 {
        let u: f64 = rng.r#gen::<f64>().max(f64::MIN_POSITIVE);
        return gamma(rng, alpha + 1.0) * u.powf(1.0 / alpha);
    }
    let d = alpha - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.r#gen();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// Box–Muller; partitioning (and the latency model) is not a privacy
/// mechanism, so float sampling is fine here.
pub(crate) fn standard_normal(rng: &mut ChaCha20Rng) -> f64 {
    let u1: f64 = rng.r#gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.r#gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Cut `items` into consecutive pieces proportional to `shares`.
fn split_by_shares(items: &[usize], shares: &[f64], out: &mut [Vec<usize>]) {
    let n = items.len();
    let mut start = 0usize;
    let mut acc = 0.0;
    for (k, s) in shares.iter().enumerate() {
        acc += s;
        let end = if k + 1 == shares.len() { n } else { ((acc * n as f64).round() as usize).clamp(start, n) };
        out[k].extend_from_slice(&items[start..end]);
        start = end;
    }
}

/// Per-member label histogram, as a table for `tessera-sim partition`.
pub fn histogram(parts: &[Vec<usize>], labels: &[u32], class_names: &[String]) -> String {
    let mut s = format!("{:<10}", "member");
    for c in class_names {
        s.push_str(&format!(" {:>10}", truncate(c, 10)));
    }
    s.push_str(&format!(" {:>8}\n", "total"));
    for (k, p) in parts.iter().enumerate() {
        let mut counts = vec![0usize; class_names.len()];
        for i in p {
            counts[labels[*i] as usize] += 1;
        }
        s.push_str(&format!("{:<10}", format!("client-{k}")));
        for c in counts {
            s.push_str(&format!(" {c:>10}"));
        }
        s.push_str(&format!(" {:>8}\n", p.len()));
    }
    s
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize, c: u32) -> Vec<u32> {
        (0..n).map(|i| (i as u32 * 7 + 3) % c).collect()
    }

    fn assert_exact_cover(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "every example exactly once");
        assert!(parts.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn every_partitioner_assigns_each_example_once() {
        let l = labels(1000, 5);
        for how in [
            Partitioner::Iid,
            Partitioner::Dirichlet { alpha: 0.3 },
            Partitioner::Shards { labels_per_client: 2 },
            Partitioner::Quantity { alpha: 1.0 },
        ] {
            let p = partition(&how, &l, 5, 12, 7).unwrap();
            assert_eq!(p.len(), 12);
            assert_exact_cover(&p, 1000);
            assert_eq!(p, partition(&how, &l, 5, 12, 7).unwrap(), "deterministic");
        }
    }

    /// Mean total-variation distance of members' label distributions from the global one.
    fn skew(parts: &[Vec<usize>], l: &[u32], c: usize) -> f64 {
        let global: Vec<f64> =
            (0..c).map(|k| l.iter().filter(|x| **x as usize == k).count() as f64 / l.len() as f64).collect();
        parts
            .iter()
            .map(|p| {
                (0..c)
                    .map(|k| {
                        (p.iter().filter(|i| l[**i] as usize == k).count() as f64 / p.len() as f64 - global[k]).abs()
                    })
                    .sum::<f64>()
                    / 2.0
            })
            .sum::<f64>()
            / parts.len() as f64
    }

    #[test]
    fn dirichlet_skew_responds_to_alpha() {
        let l = labels(5000, 10);
        let s = |a| skew(&partition(&Partitioner::Dirichlet { alpha: a }, &l, 10, 20, 3).unwrap(), &l, 10);
        let (low, mid, high) = (s(0.1), s(1.0), s(100.0));
        assert!(low > mid && mid > high, "skew {low} {mid} {high}");
        assert!(high < 0.1, "alpha=100 is near IID: {high}");
        assert!(low > 0.5, "alpha=0.1 is strongly skewed: {low}");
    }

    #[test]
    fn groups_give_each_member_its_site() {
        let groups = [2u32, 0, 1, 2, 2, 0];
        let p = partition_by_groups("site", &groups, 3, 3).unwrap();
        assert_exact_cover(&p, 6);
        assert_eq!(p, vec![vec![1, 5], vec![2], vec![0, 3, 4]]);
    }

    #[test]
    fn quantity_skew_responds_to_alpha() {
        let l = labels(5000, 4);
        // Spread of member sizes (max / min): large for small alpha.
        let spread = |a| {
            let p = partition(&Partitioner::Quantity { alpha: a }, &l, 4, 10, 9).unwrap();
            let sizes: Vec<usize> = p.iter().map(Vec::len).collect();
            *sizes.iter().max().unwrap() as f64 / *sizes.iter().min().unwrap() as f64
        };
        let (low, high) = (spread(0.3), spread(100.0));
        assert!(low > 5.0 && high < 2.0, "size spread {low} vs {high}");
        // Labels stay IID under quantity skew.
        let p = partition(&Partitioner::Quantity { alpha: 100.0 }, &l, 4, 10, 9).unwrap();
        assert!(skew(&p, &l, 4) < 0.1);
    }

    #[test]
    fn shards_give_each_member_its_labels() {
        let l = labels(600, 6);
        let p = partition(&Partitioner::Shards { labels_per_client: 2 }, &l, 6, 6, 1).unwrap();
        for part in &p {
            let mut seen: Vec<u32> = part.iter().map(|i| l[*i]).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 2);
        }
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let l = labels(100, 4);
        assert_eq!(partition(&Partitioner::Dirichlet { alpha: 0.0 }, &l, 4, 3, 1), Err(PartitionError::BadAlpha(0.0)));
        assert_eq!(partition(&Partitioner::Quantity { alpha: -1.0 }, &l, 4, 3, 1), Err(PartitionError::BadAlpha(-1.0)));
        assert_eq!(
            partition(&Partitioner::Shards { labels_per_client: 5 }, &l, 4, 3, 1),
            Err(PartitionError::BadShards { got: 5, classes: 4 })
        );
        assert!(matches!(partition(&Partitioner::Iid, &l, 4, 101, 1), Err(PartitionError::TooFewExamples { .. })));
        assert_eq!(
            partition_by_groups("site", &[0, 1, 2, 1], 3, 4),
            Err(PartitionError::GroupMismatch { column: "site".into(), groups: 3, clients: 4 })
        );
        let e = PartitionError::BadShards { got: 5, classes: 4 }.to_string();
        assert!(e.contains("labels_per_client") && e.contains('4'), "{e}");
        assert!(
            histogram(
                &partition(&Partitioner::Iid, &l, 4, 3, 1).unwrap(),
                &l,
                &["a".into(), "b".into(), "c".into(), "d".into()]
            )
            .contains("client-2")
        );
    }
}
