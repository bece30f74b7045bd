//! How each round's cohort is drawn from the members online: all of them, a
//! count or fraction sampled uniformly, or Poisson sampling (what the
//! client-level DP accountant's amplification by sampling assumes).
//!
//! The draw's seed is not derived from `run.seed`: it comes from the
//! coordinator's secret key (`CentralNoise`, drawn from the OS by the daemon),
//! one seed per wire round, so nobody can predict a cohort before it is
//! drawn. The seed is recorded with the round (`Event::RoundStarted`, the
//! aggregator's audit store) after the draw, so a draw can be replayed from
//! the record: `select_cohort` with the same seed and the same members
//! online gives the same cohort.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How a round's cohort is drawn from the members online.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CohortSelection {
    /// Every member online.
    All,
    /// A uniformly random subset of this size (all, if fewer are online).
    Count {
        /// Members per round.
        count: u32,
    },
    /// A uniformly random fraction of those online (at least `min_clients`).
    Fraction {
        /// Share of the members online, in (0, 1].
        fraction: f64,
    },
    /// Poisson sampling: each member online joins independently with
    /// probability `rate`, which the client-level DP accountant turns into
    /// amplification by sampling. The accountant assumes the unconditioned
    /// Poisson draw, so a draw is never redrawn because of its size: a small
    /// draw runs with the members it has (its threshold and `min_clients`
    /// shrink to the cohort), and a draw too small for a secure sum (fewer
    /// than two members) is a skipped round that still counts and stays
    /// charged. Under DP the round's mean divides by the fixed `rate ·
    /// population`, not by the realized size (see [`Self::fixed_denominator`]).
    Poisson {
        /// Each member's inclusion probability, in (0, 1].
        rate: f64,
        /// N, the consortium's size, a public number: under DP the mean
        /// update is the noised sum divided by `rate · N`, so neither the
        /// noise nor the scale of the release depends on how many members
        /// the draw happened to pick. Required with `[privacy]`; the
        /// aggregator daemon fills in its admitted roster's size.
        #[serde(default)]
        population: Option<u32>,
    },
}

impl CohortSelection {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, rule| Err(ConfigError::Cohort { key, rule });
        match *self {
            CohortSelection::Fraction { fraction } if !(fraction > 0.0 && fraction <= 1.0) => {
                bad("fraction", "lie in (0, 1]")
            }
            CohortSelection::Poisson { rate, .. } if !(rate > 0.0 && rate <= 1.0) => bad("rate", "lie in (0, 1]"),
            CohortSelection::Poisson { population: Some(0), .. } => bad("population", "be at least 1"),
            CohortSelection::Count { count: 0 } => bad("count", "be at least 1"),
            _ => Ok(()),
        }
    }

    /// The Poisson rate, when cohorts are Poisson-sampled.
    pub fn poisson_rate(&self) -> Option<f64> {
        match *self {
            CohortSelection::Poisson { rate, .. } => Some(rate),
            _ => None,
        }
    }

    /// The expected cohort size `q · N` that a Poisson round's mean divides
    /// by (McMahan et al. 2018's fixed-denominator estimator): `None` for
    /// the other kinds and when no population is set.
    pub fn fixed_denominator(&self) -> Option<f64> {
        match *self {
            CohortSelection::Poisson { rate, population: Some(n) } => Some(rate * f64::from(n)),
            _ => None,
        }
    }
}

pub(super) fn select_cohort(online: &BTreeSet<String>, how: &CohortSelection, min: u32, seed: u64) -> Vec<String> {
    let all: Vec<String> = online.iter().cloned().collect();
    let want = match how {
        CohortSelection::All => all.len(),
        CohortSelection::Count { count } => *count as usize,
        CohortSelection::Fraction { fraction } => ((fraction * all.len() as f64).ceil() as usize).max(min as usize),
        CohortSelection::Poisson { rate, .. } => {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            // One independent draw per member, in name order.
            return all.into_iter().filter(|_| rng.gen_range(0.0..1.0) < *rate).collect();
        }
    }
    .min(all.len());
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut chosen: Vec<String> =
        rand::seq::index::sample(&mut rng, all.len(), want).into_iter().map(|i| all[i].clone()).collect();
    chosen.sort();
    chosen
}
