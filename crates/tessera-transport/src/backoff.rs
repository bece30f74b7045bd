//! Reconnect with exponential backoff and jitter, for members that lose the
//! network or outlive an aggregator restart.

use std::time::Duration;

use rand::Rng;
use tracing::warn;

use crate::connection::{Connection, Dialer};
use crate::error::TransportError;

/// Exponential backoff: attempt `n` (from 0) waits a random delay in
/// `[d/2, d]` with `d = min(initial * multiplier^n, max)`. Halving jitter
/// spreads members that all lost the aggregator at the same moment.
#[derive(Clone, Debug)]
pub struct BackoffPolicy {
    /// Ceiling of the first delay (default 200 ms).
    pub initial: Duration,
    /// Largest ceiling any delay reaches (default 30 s).
    pub max: Duration,
    /// Growth of the ceiling per failed attempt; values below 1 count as 1
    /// (default 2).
    pub multiplier: f64,
    /// Total dial attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self { initial: Duration::from_millis(200), max: Duration::from_secs(30), multiplier: 2.0, max_attempts: None }
    }
}

impl BackoffPolicy {
    /// Upper bound of the delay after failed attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }

    /// The jittered delay after failed attempt `attempt`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(rng.gen_range(0.5..=1.0))
    }
}

/// Dial until connected, sleeping per `policy` between attempts. Errors that
/// retrying cannot fix (admission refusal, certificate failure, bad
/// configuration) are returned at once; otherwise the last error once the
/// attempts are spent.
pub async fn connect_with_backoff(dialer: &Dialer, policy: &BackoffPolicy) -> Result<Connection, TransportError> {
    let mut attempt: u32 = 0;
    loop {
        let err = match dialer.dial().await {
            Ok(conn) => return Ok(conn),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => e,
        };
        attempt = attempt.saturating_add(1);
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            warn!(attempts = attempt, error = %err, "giving up connecting to the aggregator");
            return Err(err);
        }
        let delay = policy.delay(attempt - 1, &mut rand::thread_rng());
        warn!(attempt, error = %err, retry_in = ?delay, "cannot reach the aggregator; retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let p = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: None,
        };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(10), Duration::from_secs(1));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<_> = (0..50).map(|_| p.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(400) && *d <= Duration::from_millis(800)));
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies the delay");
    }
}
