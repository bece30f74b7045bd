//! The member's own privacy budget: a write-ahead ledger on local disk that
//! the participant charges before any training on private data, so the
//! institution's limit holds whatever the aggregator asks, and a crash at
//! any instant never forgets a spend.

use std::path::Path;

use tessera_privacy::{FileLedgerStore, GaussianSpend, LedgerError, LedgerStore, PrivacyBudget, PrivacyLedger};

use tessera_protocol::member::{BudgetRefusal, PrivacyGuard};

/// A [`PrivacyLedger`] as the participant's [`PrivacyGuard`]: each DP
/// round's spend is reserved and committed (durably) before training
/// starts, and a round the remaining budget cannot afford is refused.
pub struct LedgerGuard<S: LedgerStore> {
    ledger: PrivacyLedger<S>,
}

impl LedgerGuard<FileLedgerStore> {
    /// Open (or create) the ledger file and replay it against `budget`.
    pub fn open(path: &Path, budget: PrivacyBudget) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self { ledger: PrivacyLedger::open(FileLedgerStore::open(path)?, budget)? })
    }
}

impl<S: LedgerStore> LedgerGuard<S> {
    /// A guard over an already opened ledger (any store).
    pub fn new(ledger: PrivacyLedger<S>) -> Self {
        Self { ledger }
    }

    /// The ledger, to read what has been spent.
    pub fn ledger(&self) -> &PrivacyLedger<S> {
        &self.ledger
    }
}

impl<S: LedgerStore + Send> PrivacyGuard for LedgerGuard<S> {
    fn charge(&mut self, _round: u64, spend: &GaussianSpend) -> Result<(), BudgetRefusal> {
        // Entries are keyed by a local sequence number: round numbers restart
        // with every run, but the member's budget spans all of them.
        let key = self.ledger.last_round().map_or(1, |r| r + 1);
        let ledger_failed = |e: LedgerError| BudgetRefusal::Ledger(e.to_string());
        let reservation = match self.ledger.reserve(key, *spend) {
            Err(LedgerError::BudgetExceeded) => {
                let budget = self.ledger.budget();
                let spent = self.ledger.spent().map_err(ledger_failed)?;
                return Err(BudgetRefusal::Exhausted {
                    epsilon: budget.epsilon,
                    delta: budget.delta,
                    spent_epsilon: spent.epsilon,
                });
            }
            other => other.map_err(ledger_failed)?,
        };
        // The spend is durable now; the release may follow. It stays
        // counted whether or not the round completes.
        self.ledger.commit(reservation).map_err(ledger_failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend() -> GaussianSpend {
        GaussianSpend { noise_multiplier: 1.0, sampling_rate: 1.0, steps: 1 }
    }

    /// The budget is enforced across a restart: the ledger file replays.
    #[test]
    fn budget_survives_restart_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/privacy.jsonl");
        let budget = PrivacyBudget { epsilon: 10.0, delta: 1e-5 };
        let mut g = LedgerGuard::open(&path, budget).unwrap();
        let mut granted = 0;
        while g.charge(1, &spend()).is_ok() {
            granted += 1;
            if granted == 2 {
                // Restart in the middle: nothing is forgotten.
                drop(g);
                g = LedgerGuard::open(&path, budget).unwrap();
            }
        }
        assert!(granted >= 3, "{granted}");
        let spent = g.ledger().spent().unwrap().epsilon;
        assert!(spent <= 10.0 && spent > 5.0, "{spent}");
        let again = LedgerGuard::open(&path, budget).unwrap();
        assert_eq!(again.ledger().spent().unwrap().epsilon, spent);
        let err = LedgerGuard::open(&path, budget).unwrap().charge(7, &spend()).unwrap_err();
        assert!(matches!(err, BudgetRefusal::Exhausted { spent_epsilon, .. } if spent_epsilon == spent), "{err:?}");
        assert!(err.to_string().contains("cannot afford"), "{err}");
    }
}
