//! Populations larger than cohorts (`[population]`): `clients` members
//! exist, but each round the simulator draws its cohort from all of them
//! (a fixed count, or Poisson sampling) and builds only the members drawn.
//!
//! An idle member costs its data index (its rows, `MemberSource`) and
//! nothing else: its model, certificate and key, state machine and
//! connection are made when a round draws it and dropped when the round
//! ends. Each round runs one coordinator (`serve`) that starts from the
//! previous round's global model, server-optimizer state and round
//! numbers (`Resume`), with `[cohort] = all` over exactly the members
//! drawn. So a round's cost is its cohort's, whatever the population, and
//! the members still run the daemons' protocol code: the same drivers,
//! participant and coordinator as every other run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tessera_aggregator::{DriverOptions, RunEnd, serve};
use tessera_core::Limits;
use tessera_protocol::coordinator::{CentralNoise, CohortSelection, Coordinator, Resume};
use tessera_protocol::derive_seed;
use tessera_transport::{AdmitAll, Dialer, MemoryNetwork};
use tokio::sync::Semaphore;

use crate::faults::FaultPlan;
use crate::members::{MemberSource, member_name};
use crate::observer::SimObserver;
use crate::run::{MemberStart, coordinator_config, in_process_options, spawn_member};
use crate::scenario::Scenario;

/// `[population]`: how each round's cohort is drawn from the scenario's
/// `clients` members, by the simulator, before any of them is built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PopulationDraw {
    /// `count` members drawn uniformly without replacement each round.
    Count {
        /// Members per round, 2 up to the population.
        count: u32,
    },
    /// Each member joins a round independently with probability `rate`
    /// (expected cohort `rate * clients`); a draw of fewer than two
    /// members is drawn again from the next stream.
    Poisson {
        /// Inclusion probability, in (0, 1].
        rate: f64,
    },
}

impl PopulationDraw {
    pub(crate) fn validate(&self, population: usize) -> Result<(), String> {
        match *self {
            PopulationDraw::Count { count } if count < 2 || count as usize > population => {
                Err(format!("population.count must lie in 2..={population}"))
            }
            PopulationDraw::Poisson { rate } if !(rate > 0.0 && rate <= 1.0) => {
                Err("population.rate must lie in (0, 1]".into())
            }
            _ => Ok(()),
        }
    }

    /// The cohort of logical round `round` (attempt `attempt`), as sorted
    /// member indices. Work and memory are O(cohort), not O(population):
    /// Floyd's sample for a count, geometric skips for Poisson.
    pub(crate) fn draw(&self, population: usize, seed: u64, round: u64, attempt: u64) -> Vec<usize> {
        let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(seed, round, b"population"));
        rng.set_stream(attempt);
        match *self {
            PopulationDraw::Count { count } => {
                let mut v = rand::seq::index::sample(&mut rng, population, count as usize).into_vec();
                v.sort_unstable();
                v
            }
            PopulationDraw::Poisson { rate } if rate >= 1.0 => (0..population).collect(),
            PopulationDraw::Poisson { rate } => {
                // The gap to the next member drawn is geometric: skipping it
                // in one step draws the same distribution as one coin per member.
                let log_q = (1.0 - rate).ln();
                let mut out = Vec::new();
                let mut next = 0usize;
                loop {
                    let u: f64 = 1.0 - rng.gen_range(0.0..1.0); // (0, 1]
                    let gap = (u.ln() / log_q).floor();
                    if !gap.is_finite() || gap >= (population - next) as f64 {
                        break;
                    }
                    next += gap as usize;
                    out.push(next);
                    next += 1;
                }
                out
            }
        }
    }
}

/// What a population run hands back besides the coordinator and its end.
pub(crate) struct PopulationRun {
    pub(crate) coordinator: Coordinator,
    pub(crate) end: RunEnd,
    /// The members each accepted or aborted round was drawn as, in order.
    pub(crate) cohorts: Vec<Vec<usize>>,
}

/// Everything a population run needs from `run_scenario`.
pub(crate) struct PopulationSetup<'a> {
    pub(crate) scenario: &'a Scenario,
    pub(crate) draw: &'a PopulationDraw,
    pub(crate) source: &'a MemberSource,
    pub(crate) plan: Arc<FaultPlan>,
    pub(crate) workers: Arc<Semaphore>,
    /// Counts every member built (model, certificate, state machine).
    pub(crate) built: Arc<AtomicU64>,
}

/// Run the scenario's rounds, one coordinator per round, each over the
/// members its draw picked. `first` is the coordinator `run_scenario` made
/// (its model, optimizer and privacy-free config carry over).
pub(crate) async fn run_rounds(
    p: PopulationSetup<'_>,
    first: Coordinator,
    observer: &mut SimObserver,
) -> anyhow::Result<PopulationRun> {
    let s = p.scenario;
    let admission = s.admission_policy()?;
    let pki = tessera_transport::pki::MemoryPki::new("Tessera simulated consortium")?;
    let mut coordinator = first;
    let mut cohorts = Vec::new();
    let mut attempt = 0u64;
    loop {
        let completed = coordinator.completed();
        if completed >= s.rounds {
            let reason = format!("all {} rounds completed", s.rounds);
            return Ok(PopulationRun {
                coordinator,
                end: RunEnd { reason, completed_rounds: completed, failed: None },
                cohorts,
            });
        }
        let mut cohort = p.draw.draw(s.clients, s.seed, completed + 1, attempt);
        while cohort.len() < 2 {
            attempt += 1;
            cohort = p.draw.draw(s.clients, s.seed, completed + 1, attempt);
        }
        let mut cfg = coordinator_config(s, admission);
        cfg.rounds = completed + 1;
        cfg.cohort = CohortSelection::All;
        cfg.start_quorum = cohort.len() as u32;
        let default_min = (2 * cohort.len()).div_ceil(3).max(2) as u32;
        cfg.min_clients = s.min_clients.unwrap_or(default_min).min(cohort.len() as u32);
        // Retries happen here, with a fresh draw, not inside the round's coordinator.
        cfg.max_round_retries = 0;
        let resume = Resume {
            next_round: coordinator.next_round(),
            completed_rounds: completed,
            spent: Vec::new(),
            clip_norm: None,
        };
        let global = (**coordinator.global()).clone();
        let optimizer = coordinator.optimizer().clone();
        let round = Coordinator::new(cfg, global, Some(optimizer), resume, CentralNoise::reproducible(s.seed))
            .map_err(|e| anyhow::anyhow!("scenario {}: {e}", s.name))?;
        let net = MemoryNetwork::new();
        let listener = net.listen(Arc::new(AdmitAll), Limits::default())?;
        let mut members = Vec::with_capacity(cohort.len());
        for &k in &cohort {
            let name = member_name(k, s.clients);
            let c = pki.issue(&name)?;
            let identity = tessera_client::member_identity(c.cert, &c.key, pki.ca_cert().to_vec())?;
            let model = p.source.model(k)?;
            p.built.fetch_add(1, Ordering::Relaxed);
            let dialer = Dialer::Memory { network: net.clone(), member: name.clone() };
            // A member drawn again later starts a fresh stream for that round.
            let rng_seed = derive_seed(derive_seed(s.seed, k as u64, b"member"), completed + 1, b"population");
            let settings = admission.expected;
            let m = MemberStart { k, name, model, dialer, identity, rng_seed };
            members.push(spawn_member(s, m, &p.plan, settings, in_process_options(&p.workers)));
        }
        let (next, end) = serve(listener, round, observer, DriverOptions::default()).await;
        crate::run::join_members(members).await;
        cohorts.push(cohort);
        if end.completed_rounds > completed {
            attempt = 0;
        } else {
            attempt += 1;
            if attempt > u64::from(s.max_round_retries) {
                return Ok(PopulationRun { coordinator: next, end, cohorts });
            }
        }
        coordinator = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_sorted_sized_and_differ_per_round() {
        let d = PopulationDraw::Count { count: 20 };
        let a = d.draw(200, 1, 1, 0);
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|k| *k < 200));
        assert_eq!(a, d.draw(200, 1, 1, 0));
        assert_ne!(a, d.draw(200, 1, 2, 0));
        assert_ne!(a, d.draw(200, 1, 1, 1));
    }

    #[test]
    fn poisson_draws_the_expected_share() {
        let d = PopulationDraw::Poisson { rate: 0.01 };
        let total: usize = (1..=50).map(|r| d.draw(100_000, 3, r, 0).len()).sum();
        // 50 rounds of Binomial(100000, 0.01): mean 50000, sd about 222.
        assert!((48_500..51_500).contains(&total), "{total}");
        let one = d.draw(100_000, 3, 1, 0);
        assert!(one.windows(2).all(|w| w[0] < w[1]) && one.iter().all(|k| *k < 100_000));
        assert_eq!(PopulationDraw::Poisson { rate: 1.0 }.draw(5, 3, 1, 0), vec![0, 1, 2, 3, 4]);
    }
}
