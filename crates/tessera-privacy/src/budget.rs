//! Privacy budgets and the write-ahead ledger that enforces them.
//!
//! Discipline: before a noisy release leaves a party, the spend is *reserved*
//! and the reservation durably recorded by a [`LedgerStore`]; only then may
//! the release happen. [`PrivacyLedger::commit`] marks it released;
//! [`PrivacyLedger::abort`] returns the spend and may only be called when
//! nothing was released. After a crash every reservation without an abort
//! counts as spent, because the ledger cannot know whether the release went
//! out. So the ledger can over-count after a crash, never under-count.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accountant::RdpAccountant;

/// An (epsilon, delta) guarantee: a target to stay within, or an amount spent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyBudget {
    /// The epsilon of (epsilon, delta)-DP (natural log of the likelihood ratio bound).
    pub epsilon: f64,
    /// The delta of (epsilon, delta)-DP: the probability mass the epsilon bound may miss.
    pub delta: f64,
}

/// What one round spends: `steps` Poisson-subsampled Gaussian releases.
/// A client-level round with full participation is `steps = 1, sampling_rate = 1`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GaussianSpend {
    /// Noise standard deviation over L2 sensitivity.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q in (0, 1]; 1 means no amplification.
    pub sampling_rate: f64,
    /// Releases composed in the round.
    pub steps: u64,
}

/// One line of the ledger's durable log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LedgerEntry {
    /// `spend` is set aside for `round` before its release; counts as spent
    /// unless an `Aborted` for the round follows.
    Reserved {
        /// The round the spend is for.
        round: u64,
        /// What the release costs.
        spend: GaussianSpend,
    },
    /// The round's release went out.
    Committed {
        /// The reserved round.
        round: u64,
    },
    /// Nothing was released for the round; its spend is returned.
    Aborted {
        /// The reserved round.
        round: u64,
    },
}

/// Why the ledger refused a spend or could not keep its log.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store could not write, sync or read.
    #[error("ledger storage failed: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record does not parse.
    #[error("ledger record {line} is unreadable")]
    Corrupt {
        /// 1-based record number.
        line: usize,
    },
    /// A stored record breaks the reserve-then-commit-or-abort order.
    #[error("ledger record {line} contradicts the records before it")]
    Inconsistent {
        /// 1-based record number.
        line: usize,
    },
    /// The round was reserved before.
    #[error("round {round} already has a reservation")]
    DuplicateRound {
        /// The round asked for.
        round: u64,
    },
    /// Commit or abort of a round without a pending reservation.
    #[error("round {round} has no open reservation")]
    NotReserved {
        /// The round asked for.
        round: u64,
    },
    /// The spend would take the total past the budget; nothing was recorded.
    #[error("spending this would exceed the privacy budget")]
    BudgetExceeded,
    /// The accounting itself failed (e.g. an invalid spend).
    #[error(transparent)]
    Privacy(#[from] crate::PrivacyError),
}

/// Durable storage of ledger entries. `append` must not return `Ok` before
/// the entry would survive a crash; `load` returns every entry appended.
pub trait LedgerStore {
    /// Durably record `entry` after every earlier one.
    fn append(&mut self, entry: &LedgerEntry) -> Result<(), LedgerError>;
    /// Every entry appended so far, oldest first.
    fn load(&mut self) -> Result<Vec<LedgerEntry>, LedgerError>;
}

/// A store that lives as long as the process; for tests.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryLedgerStore {
    entries: Vec<LedgerEntry>,
}

#[cfg(test)]
impl LedgerStore for MemoryLedgerStore {
    fn append(&mut self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.entries.push(entry.clone());
        Ok(())
    }
    fn load(&mut self) -> Result<Vec<LedgerEntry>, LedgerError> {
        Ok(self.entries.clone())
    }
}

/// Append-only JSON lines, fsynced on every append: what a client daemon
/// keeps on its own disk.
#[derive(Debug)]
pub struct FileLedgerStore {
    path: PathBuf,
    file: File,
}

impl FileLedgerStore {
    /// Open or create the log at `path`. A torn final line (a crash mid-append)
    /// is cut off: that append never returned, so its release never happened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        if !existed {
            // Make the new file's directory entry durable too.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut store = Self { path, file };
        store.truncate_torn_tail()?;
        Ok(store)
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_all(&mut self) -> Result<Vec<u8>, LedgerError> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn truncate_torn_tail(&mut self) -> Result<(), LedgerError> {
        let bytes = self.read_all()?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if keep < bytes.len() {
            self.file.set_len(keep as u64)?;
            self.file.sync_all()?;
        }
        Ok(())
    }
}

impl LedgerStore for FileLedgerStore {
    fn append(&mut self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        Ok(())
    }

    fn load(&mut self) -> Result<Vec<LedgerEntry>, LedgerError> {
        let bytes = self.read_all()?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_slice(l).map_err(|_| LedgerError::Corrupt { line: i + 1 }))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Pending,
    Committed,
}

/// Proof that a round's spend is durably reserved; hand it back to
/// [`PrivacyLedger::commit`] after the release (or `abort` if none happened).
#[must_use = "a reservation must be committed or aborted"]
#[derive(Debug, PartialEq)]
pub struct Reservation {
    round: u64,
    spend: GaussianSpend,
}

impl Reservation {
    /// The round reserved for.
    pub fn round(&self) -> u64 {
        self.round
    }
    /// The spend set aside.
    pub fn spend(&self) -> GaussianSpend {
        self.spend
    }
}

/// A budget plus the RDP accounting of everything reserved against it.
#[derive(Debug)]
pub struct PrivacyLedger<S: LedgerStore> {
    store: S,
    budget: PrivacyBudget,
    rounds: BTreeMap<u64, (GaussianSpend, State)>,
    accountant: RdpAccountant,
}

impl<S: LedgerStore> PrivacyLedger<S> {
    /// Replay `store` against `budget`.
    pub fn open(mut store: S, budget: PrivacyBudget) -> Result<Self, LedgerError> {
        if !(budget.epsilon >= 0.0 && budget.delta > 0.0 && budget.delta < 1.0) {
            return Err(crate::PrivacyError::InvalidParameter("budget needs epsilon >= 0 and delta in (0, 1)").into());
        }
        let mut rounds = BTreeMap::new();
        for (i, entry) in store.load()?.into_iter().enumerate() {
            let line = i + 1;
            match entry {
                LedgerEntry::Reserved { round, spend } => {
                    if rounds.insert(round, (spend, State::Pending)).is_some() {
                        return Err(LedgerError::Inconsistent { line });
                    }
                }
                LedgerEntry::Committed { round } => match rounds.get_mut(&round) {
                    Some((_, s @ State::Pending)) => *s = State::Committed,
                    _ => return Err(LedgerError::Inconsistent { line }),
                },
                LedgerEntry::Aborted { round } => match rounds.get(&round) {
                    Some((_, State::Pending)) => {
                        rounds.remove(&round);
                    }
                    _ => return Err(LedgerError::Inconsistent { line }),
                },
            }
        }
        let accountant = Self::account(&rounds)?;
        Ok(Self { store, budget, rounds, accountant })
    }

    fn account(rounds: &BTreeMap<u64, (GaussianSpend, State)>) -> Result<RdpAccountant, LedgerError> {
        let mut acc = RdpAccountant::default();
        for (spend, _) in rounds.values() {
            acc.compose_poisson_gaussian(spend.noise_multiplier, spend.sampling_rate, spend.steps)?;
        }
        Ok(acc)
    }

    /// The budget the ledger enforces.
    pub fn budget(&self) -> PrivacyBudget {
        self.budget
    }

    /// Epsilon spent so far at the budget's delta, pending reservations included.
    pub fn spent(&self) -> Result<PrivacyBudget, LedgerError> {
        Ok(PrivacyBudget { epsilon: self.accountant.epsilon(self.budget.delta)?.0, delta: self.budget.delta })
    }

    /// Epsilon left before the budget is exhausted (never negative).
    pub fn remaining(&self) -> Result<f64, LedgerError> {
        Ok((self.budget.epsilon - self.spent()?.epsilon).max(0.0))
    }

    /// Whether reserving `next` would take the total over the budget.
    pub fn would_exceed(&self, next: &GaussianSpend) -> Result<bool, LedgerError> {
        let mut acc = self.accountant.clone();
        acc.compose_poisson_gaussian(next.noise_multiplier, next.sampling_rate, next.steps)?;
        Ok(acc.epsilon(self.budget.delta)?.0 > self.budget.epsilon)
    }

    /// The largest round number with a reservation, if any.
    pub fn last_round(&self) -> Option<u64> {
        self.rounds.keys().next_back().copied()
    }

    /// Rounds that are reserved but neither committed nor aborted.
    pub fn pending_rounds(&self) -> Vec<u64> {
        self.rounds.iter().filter(|(_, (_, s))| *s == State::Pending).map(|(r, _)| *r).collect()
    }

    /// Durably reserve `spend` for `round`. Only after this returns may the
    /// release happen.
    pub fn reserve(&mut self, round: u64, spend: GaussianSpend) -> Result<Reservation, LedgerError> {
        if self.rounds.contains_key(&round) {
            return Err(LedgerError::DuplicateRound { round });
        }
        if self.would_exceed(&spend)? {
            return Err(LedgerError::BudgetExceeded);
        }
        self.store.append(&LedgerEntry::Reserved { round, spend })?;
        self.accountant.compose_poisson_gaussian(spend.noise_multiplier, spend.sampling_rate, spend.steps)?;
        self.rounds.insert(round, (spend, State::Pending));
        Ok(Reservation { round, spend })
    }

    /// Record that the reserved release went out.
    pub fn commit(&mut self, reservation: Reservation) -> Result<(), LedgerError> {
        let round = reservation.round;
        match self.rounds.get(&round) {
            Some((_, State::Pending)) => {}
            _ => return Err(LedgerError::NotReserved { round }),
        }
        self.store.append(&LedgerEntry::Committed { round })?;
        if let Some((_, s)) = self.rounds.get_mut(&round) {
            *s = State::Committed;
        }
        Ok(())
    }

    /// Give the spend back. Only sound if nothing was released for the round.
    pub fn abort(&mut self, reservation: Reservation) -> Result<(), LedgerError> {
        let round = reservation.round;
        match self.rounds.get(&round) {
            Some((_, State::Pending)) => {}
            _ => return Err(LedgerError::NotReserved { round }),
        }
        self.store.append(&LedgerEntry::Aborted { round })?;
        self.rounds.remove(&round);
        self.accountant = Self::account(&self.rounds)?;
        Ok(())
    }

    /// Re-take an open reservation after a restart (e.g. to commit it once
    /// the release is confirmed).
    pub fn pending_reservation(&self, round: u64) -> Option<Reservation> {
        match self.rounds.get(&round) {
            Some((spend, State::Pending)) => Some(Reservation { round, spend: *spend }),
            _ => None,
        }
    }

    /// Give the store back (to reopen it, as after a restart).
    pub fn into_store(self) -> S {
        self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEND: GaussianSpend = GaussianSpend { noise_multiplier: 1.1, sampling_rate: 0.01, steps: 100 };
    const BUDGET: PrivacyBudget = PrivacyBudget { epsilon: 3.0, delta: 1e-5 };

    #[test]
    fn stops_at_the_right_round() {
        // Independently: the largest n with epsilon(n * 100 steps) <= 3.
        let mut last_ok = 0u64;
        for n in 1..1000u64 {
            let mut acc = RdpAccountant::default();
            acc.compose_poisson_gaussian(1.1, 0.01, n * 100).unwrap();
            if acc.epsilon(1e-5).unwrap().0 > 3.0 {
                break;
            }
            last_ok = n;
        }
        assert!(last_ok > 1, "test setup must allow several rounds");
        let mut ledger = PrivacyLedger::open(MemoryLedgerStore::default(), BUDGET).unwrap();
        let mut round = 0;
        while !ledger.would_exceed(&SPEND).unwrap() {
            let r = ledger.reserve(round, SPEND).unwrap();
            ledger.commit(r).unwrap();
            round += 1;
        }
        assert_eq!(round, last_ok);
        assert!(matches!(ledger.reserve(round, SPEND), Err(LedgerError::BudgetExceeded)));
        assert!(ledger.remaining().unwrap() < 3.0 && ledger.spent().unwrap().epsilon <= 3.0);
    }

    #[test]
    fn abort_returns_the_spend_and_rules_are_enforced() {
        let mut ledger = PrivacyLedger::open(MemoryLedgerStore::default(), BUDGET).unwrap();
        let r = ledger.reserve(7, SPEND).unwrap();
        assert!(ledger.spent().unwrap().epsilon > 0.0);
        assert!(matches!(ledger.reserve(7, SPEND), Err(LedgerError::DuplicateRound { round: 7 })));
        ledger.abort(r).unwrap();
        assert_eq!(ledger.spent().unwrap().epsilon, 0.0);
        let r = ledger.reserve(7, SPEND).unwrap();
        ledger.commit(r).unwrap();
        let stale = Reservation { round: 7, spend: SPEND };
        assert!(matches!(ledger.abort(stale), Err(LedgerError::NotReserved { round: 7 })));
    }

    #[test]
    fn file_store_survives_reopen_and_pending_counts_as_spent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let spent_before;
        {
            let mut ledger = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap();
            let r = ledger.reserve(0, SPEND).unwrap();
            ledger.commit(r).unwrap();
            let _crashed_before_commit = ledger.reserve(1, SPEND).unwrap();
            spent_before = ledger.spent().unwrap().epsilon;
        }
        let ledger = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap();
        assert_eq!(ledger.spent().unwrap().epsilon, spent_before);
        assert_eq!(ledger.pending_rounds(), vec![1]);
        let mut ledger = ledger;
        let r = ledger.pending_reservation(1).unwrap();
        ledger.commit(r).unwrap();
        assert!(ledger.pending_rounds().is_empty());
    }

    #[test]
    fn torn_last_line_never_shows_less_spent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let spent;
        {
            let mut ledger = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap();
            let r0 = ledger.reserve(0, SPEND).unwrap();
            ledger.commit(r0).unwrap();
            let _r1 = ledger.reserve(1, SPEND).unwrap();
            spent = ledger.spent().unwrap().epsilon;
        }
        // Crash mid-append of an abort for round 1: half a line, no newline.
        let full = serde_json::to_string(&LedgerEntry::Aborted { round: 1 }).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
        drop(f);
        let mut ledger = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap();
        assert_eq!(ledger.spent().unwrap().epsilon, spent, "a torn abort must not return spend");
        // The torn bytes are gone, so new appends start on a clean line.
        let r2 = ledger.reserve(2, SPEND).unwrap();
        ledger.commit(r2).unwrap();
        let reopened = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap();
        assert!(reopened.spent().unwrap().epsilon > spent);
        assert_eq!(reopened.pending_rounds(), vec![1]);
    }

    #[test]
    fn corrupt_or_inconsistent_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        std::fs::write(&path, "{\"kind\":\"committed\",\"round\":3}\n").unwrap();
        let err = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap_err();
        assert!(matches!(err, LedgerError::Inconsistent { line: 1 }));
        std::fs::write(&path, "garbage\n{\"kind\":\"aborted\",\"round\":3}\n").unwrap();
        let err = PrivacyLedger::open(FileLedgerStore::open(&path).unwrap(), BUDGET).unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { line: 1 }));
    }
}
