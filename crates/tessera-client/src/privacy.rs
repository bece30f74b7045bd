//! The member's own privacy budget: a write-ahead ledger on local disk that
//! the participant charges before any training on private data, so the
//! institution's limit holds whatever the aggregator asks, and a crash at
//! any instant never forgets a spend.

use std::path::Path;

use tessera_privacy::{
    FileLedgerStore, GaussianSpend, LedgerError, LedgerStore, PrivacyBudget, PrivacyLedger, Reservation,
};

use tessera_protocol::member::{BudgetRefusal, PrivacyGuard};

/// A [`PrivacyLedger`] as the participant's [`PrivacyGuard`]: each DP
/// round's spend is reserved and committed (durably) before training
/// starts, and a round the remaining budget cannot afford is refused.
pub struct LedgerGuard<S: LedgerStore> {
    ledger: PrivacyLedger<S>,
    /// The charge of the round in progress, reserved (and so counted) but
    /// not yet committed: `refund` can still take it back.
    open: Option<(u64, Reservation)>,
}

impl LedgerGuard<FileLedgerStore> {
    /// Open (or create) the ledger file and replay it against `budget`.
    pub fn open(path: &Path, budget: PrivacyBudget) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self::new(PrivacyLedger::open(FileLedgerStore::open(path)?, budget)?))
    }
}

impl<S: LedgerStore> LedgerGuard<S> {
    /// A guard over an already opened ledger (any store).
    pub fn new(ledger: PrivacyLedger<S>) -> Self {
        Self { ledger, open: None }
    }

    /// The ledger, to read what has been spent.
    pub fn ledger(&self) -> &PrivacyLedger<S> {
        &self.ledger
    }
}

impl<S: LedgerStore + Send> PrivacyGuard for LedgerGuard<S> {
    fn charge(&mut self, round: u64, spend: &GaussianSpend) -> Result<(), BudgetRefusal> {
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
        // The spend is durable (and counted) now; training may follow. A
        // crash leaves it counted. An older open charge is final: its round
        // ended without word of it (a lost connection).
        if let Some((_, older)) = self.open.replace((round, reservation)) {
            self.ledger.commit(older).map_err(ledger_failed)?;
        }
        Ok(())
    }

    fn released(&mut self, round: u64) -> Result<(), BudgetRefusal> {
        match self.open.take() {
            Some((r, reservation)) if r == round => {
                self.ledger.commit(reservation).map_err(|e| BudgetRefusal::Ledger(e.to_string()))
            }
            other => {
                self.open = other;
                Ok(())
            }
        }
    }

    fn refund(&mut self, round: u64) -> Result<Option<f64>, BudgetRefusal> {
        let ledger_failed = |e: LedgerError| BudgetRefusal::Ledger(e.to_string());
        match self.open.take() {
            Some((r, reservation)) if r == round => {
                let before = self.ledger.spent().map_err(ledger_failed)?.epsilon;
                self.ledger.abort(reservation).map_err(ledger_failed)?;
                let after = self.ledger.spent().map_err(ledger_failed)?.epsilon;
                Ok(Some(before - after))
            }
            other => {
                self.open = other;
                Ok(None)
            }
        }
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

    /// A charge is refunded only while its update has not begun to leave;
    /// a crash before either keeps it counted.
    #[test]
    fn a_charge_is_refunded_only_before_the_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("privacy.jsonl");
        let budget = PrivacyBudget { epsilon: 100.0, delta: 1e-5 };
        let mut g = LedgerGuard::open(&path, budget).unwrap();
        g.charge(5, &spend()).unwrap();
        let one = g.ledger().spent().unwrap().epsilon;
        assert!(one > 0.0);
        // Another round's end refunds nothing; this round's end does.
        assert_eq!(g.refund(4).unwrap(), None);
        let back = g.refund(5).unwrap().expect("refunded");
        assert!((back - one).abs() < 1e-9, "{back} vs {one}");
        assert_eq!(g.ledger().spent().unwrap().epsilon, 0.0);
        assert_eq!(g.refund(5).unwrap(), None, "once only");

        // Released: final.
        g.charge(6, &spend()).unwrap();
        g.released(6).unwrap();
        assert_eq!(g.refund(6).unwrap(), None);
        let after_release = g.ledger().spent().unwrap().epsilon;
        assert!((after_release - one).abs() < 1e-9);

        // Charged, then the process dies: the reservation still counts.
        g.charge(7, &spend()).unwrap();
        let two = g.ledger().spent().unwrap().epsilon;
        drop(g);
        let g = LedgerGuard::open(&path, budget).unwrap();
        assert_eq!(g.ledger().spent().unwrap().epsilon, two);
    }
}
