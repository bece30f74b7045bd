//! Quorum warnings: when the members that could take part cannot make up
//! `min_clients`, the daemon says so, naming who is missing, instead of
//! waiting in silence.
//!
//! Two shortfalls, the first the more fundamental:
//!
//! - *unreachable*: fewer members are **admitted** (listed in
//!   `[server] members`, a certificate issued in the PKI directory, not
//!   revoked) than `min_clients`, so no round can ever start until the
//!   operator issues, reinstates or lowers `min_clients`;
//! - *waiting*: enough are admitted, but fewer are **connected** than
//!   `min_clients`.
//!
//! The decision ([`QuorumWatch::check`]) is plain code over the roster, the
//! online set and a clock, so it is tested without a daemon; the daemon's
//! task ([`watch_quorum`]) reads the PKI directory, the revocation list and
//! the live status once a [`QUORUM_POLL`] and logs what it decides. Warnings
//! are rate-limited to one per `[run] quorum_warning_secs` (default 60 s):
//! the first comes at once, so an operator who starts a consortium that
//! cannot run hears of it immediately, and a daemon waiting overnight does
//! not fill its log.
//!
//! The coordinator (tessera-protocol) is not involved: it knows who is
//! online but not who is admitted, which is the operator's files' business.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tessera_transport::pki::{CertFingerprint, member_files};

use crate::http::SharedStatus;
use crate::revocation::RevocationList;

/// How often the daemon re-evaluates the quorum (cheap: a few small file
/// reads). Warnings themselves are rate-limited separately.
pub(crate) const QUORUM_POLL: Duration = Duration::from_secs(1);

/// Why a configured member is not admitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotAdmitted {
    /// No certificate `<pki_dir>/<name>.pem` was issued for it.
    NoCertificate,
    /// Its name, or its current certificate, is on the revocation list.
    Revoked,
}

/// One configured member as the operator's files say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RosterEntry {
    pub(crate) name: String,
    /// `None`: admitted.
    pub(crate) refused: Option<NotAdmitted>,
}

/// A quorum shortfall, with the names that are missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shortfall {
    /// Fewer admitted members than `min_clients`: no round can start.
    Unreachable {
        min_clients: u32,
        /// Admitted members.
        admitted: Vec<String>,
        /// Configured members that are not admitted, and why.
        not_admitted: Vec<(String, NotAdmitted)>,
    },
    /// Enough admitted, too few connected.
    Waiting {
        min_clients: u32,
        /// Admitted members connected now.
        connected: Vec<String>,
        /// Admitted members not connected.
        missing: Vec<String>,
    },
}

impl Shortfall {
    /// The warning's one-line message.
    pub(crate) fn message(&self) -> String {
        match self {
            Shortfall::Unreachable { min_clients, admitted, not_admitted } => {
                let why: Vec<String> = not_admitted
                    .iter()
                    .map(|(n, r)| match r {
                        NotAdmitted::NoCertificate => format!("{n} (no certificate issued)"),
                        NotAdmitted::Revoked => format!("{n} (revoked)"),
                    })
                    .collect();
                format!(
                    "quorum unreachable: run.min_clients is {min_clients} but only {} members are admitted ({}); \
                     not admitted: {}; no round can start until more members are issued or reinstated, or \
                     min_clients is lowered",
                    admitted.len(),
                    list(admitted),
                    list(&why)
                )
            }
            Shortfall::Waiting { min_clients, connected, missing } => format!(
                "waiting for quorum: {} of run.min_clients = {min_clients} members connected ({}); missing: {}",
                connected.len(),
                list(connected),
                list(missing)
            ),
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "none".to_string() } else { names.join(", ") }
}

/// How long too few members may be *connected* before the first warning:
/// members dial in during the first seconds after a (re)start, and a
/// member reconnecting after a network blip is back within this. An
/// unreachable quorum (too few *admitted*) is reported at once.
pub(crate) const QUORUM_GRACE: Duration = Duration::from_secs(5);

/// Decides when to warn: rate-limited to one warning per `interval`, the
/// first at once (after `grace` for a connection shortfall). Time is an
/// input (milliseconds on any monotonic clock).
#[derive(Debug)]
pub(crate) struct QuorumWatch {
    min_clients: u32,
    interval_ms: u64,
    grace_ms: u64,
    last_warning_ms: Option<u64>,
    /// Since when too few admitted members have been connected.
    short_since_ms: Option<u64>,
}

impl QuorumWatch {
    pub(crate) fn new(min_clients: u32, interval: Duration, grace: Duration) -> Self {
        Self {
            min_clients,
            interval_ms: interval.as_millis() as u64,
            grace_ms: grace.as_millis() as u64,
            last_warning_ms: None,
            short_since_ms: None,
        }
    }

    /// The shortfall of `roster` (every configured member) with `online`
    /// connected, if any, and only when a warning is due at `now_ms`.
    pub(crate) fn check(
        &mut self,
        now_ms: u64,
        roster: &[RosterEntry],
        online: &BTreeSet<String>,
    ) -> Option<Shortfall> {
        let Some(shortfall) = self.shortfall(roster, online) else {
            self.short_since_ms = None;
            return None;
        };
        if matches!(shortfall, Shortfall::Waiting { .. }) {
            let since = *self.short_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < self.grace_ms {
                return None;
            }
        }
        if self.last_warning_ms.is_some_and(|t| now_ms.saturating_sub(t) < self.interval_ms) {
            return None;
        }
        self.last_warning_ms = Some(now_ms);
        Some(shortfall)
    }

    fn shortfall(&self, roster: &[RosterEntry], online: &BTreeSet<String>) -> Option<Shortfall> {
        let admitted: Vec<String> = roster.iter().filter(|m| m.refused.is_none()).map(|m| m.name.clone()).collect();
        let min = self.min_clients;
        if admitted.len() < min as usize {
            let not_admitted = roster.iter().filter_map(|m| m.refused.clone().map(|r| (m.name.clone(), r))).collect();
            return Some(Shortfall::Unreachable { min_clients: min, admitted, not_admitted });
        }
        let (connected, missing): (Vec<String>, Vec<String>) = admitted.into_iter().partition(|m| online.contains(m));
        (connected.len() < min as usize).then_some(Shortfall::Waiting { min_clients: min, connected, missing })
    }
}

/// The configured members as the PKI directory and revocation list say now.
pub(crate) fn roster(members: &[String], pki_dir: &std::path::Path, revoked: &RevocationList) -> Vec<RosterEntry> {
    members
        .iter()
        .map(|name| {
            let cert = member_files(pki_dir, name).cert;
            let refused = match CertFingerprint::of_pem_file(&cert) {
                Err(_) => Some(NotAdmitted::NoCertificate),
                Ok(fp) if revoked.refuses(name, Some(&fp)).is_some() => Some(NotAdmitted::Revoked),
                Ok(_) => None,
            };
            RosterEntry { name: name.clone(), refused }
        })
        .collect()
}

/// What the daemon's quorum task reads.
pub(crate) struct QuorumInputs {
    pub(crate) members: Vec<String>,
    pub(crate) pki_dir: PathBuf,
    pub(crate) revoked_path: PathBuf,
    pub(crate) status: SharedStatus,
}

/// Every [`QUORUM_POLL`], until aborted: log a warning when `watch` says
/// one is due. An unreadable revocation list counts as revoking no one
/// here (admission refuses everyone meanwhile and says so itself).
pub(crate) async fn watch_quorum(inputs: QuorumInputs, mut watch: QuorumWatch) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(QUORUM_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let revoked = RevocationList::read(&inputs.revoked_path).unwrap_or_default();
        let roster = roster(&inputs.members, &inputs.pki_dir, &revoked);
        let online: BTreeSet<String> = {
            let s = inputs.status.read().unwrap_or_else(|p| p.into_inner());
            s.members.iter().filter(|m| m.online).map(|m| m.name.clone()).collect()
        };
        if let Some(shortfall) = watch.check(start.elapsed().as_millis() as u64, &roster, &online) {
            tracing::warn!("{}", shortfall.message());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, refused: Option<NotAdmitted>) -> RosterEntry {
        RosterEntry { name: name.into(), refused }
    }

    fn online(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn too_few_admitted_is_unreachable_and_names_who_is_not_admitted() {
        let mut w = QuorumWatch::new(3, Duration::from_secs(60), QUORUM_GRACE);
        let roster = [
            entry("a", None),
            entry("b", None),
            entry("c", Some(NotAdmitted::NoCertificate)),
            entry("d", Some(NotAdmitted::Revoked)),
        ];
        let s = w.check(0, &roster, &online(&["a", "b"])).expect("warned at once");
        assert_eq!(
            s,
            Shortfall::Unreachable {
                min_clients: 3,
                admitted: vec!["a".into(), "b".into()],
                not_admitted: vec![("c".into(), NotAdmitted::NoCertificate), ("d".into(), NotAdmitted::Revoked)],
            }
        );
        let m = s.message();
        assert!(m.contains("quorum unreachable") && m.contains("c (no certificate issued), d (revoked)"), "{m}");
    }

    #[test]
    fn too_few_connected_names_the_missing_and_is_rate_limited() {
        let mut w = QuorumWatch::new(2, Duration::from_secs(60), Duration::from_secs(5));
        let roster = [entry("a", None), entry("b", None), entry("c", None)];
        // Members get a grace period to dial in.
        assert_eq!(w.check(1_000, &roster, &online(&["b"])), None);
        assert_eq!(w.check(5_999, &roster, &online(&["b"])), None);
        let s = w.check(6_000, &roster, &online(&["b"])).expect("first warning once the grace is over");
        assert_eq!(
            s,
            Shortfall::Waiting { min_clients: 2, connected: vec!["b".into()], missing: vec!["a".into(), "c".into()] }
        );
        assert!(
            s.message().contains("1 of run.min_clients = 2 members connected (b); missing: a, c"),
            "{}",
            s.message()
        );
        // Not again within the interval, whatever changes.
        assert_eq!(w.check(30_000, &roster, &online(&[])), None);
        assert_eq!(w.check(65_999, &roster, &online(&["a"])), None);
        // Then again.
        assert!(w.check(66_000, &roster, &online(&["a"])).is_some());
        // A quorum: nothing to say.
        assert_eq!(w.check(200_000, &roster, &online(&["a", "c"])), None);
        // A connected member that is not admitted does not count; a new
        // shortfall gets the grace period again.
        let roster = [entry("a", None), entry("b", None), entry("c", Some(NotAdmitted::Revoked))];
        assert_eq!(w.check(300_000, &roster, &online(&["a", "c"])), None);
        assert!(matches!(w.check(305_000, &roster, &online(&["a", "c"])), Some(Shortfall::Waiting { .. })));
    }

    #[test]
    fn roster_reads_issued_certificates_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        tessera_transport::pki::init(dir.path(), &Default::default()).unwrap();
        tessera_transport::pki::issue(dir.path(), "a").unwrap();
        tessera_transport::pki::issue(dir.path(), "b").unwrap();
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r = roster(&members, dir.path(), &RevocationList::default());
        assert_eq!(r, vec![entry("a", None), entry("b", None), entry("c", Some(NotAdmitted::NoCertificate))]);
        std::fs::write(dir.path().join(crate::REVOKED_FILE), "b\n").unwrap();
        let list = RevocationList::read(&dir.path().join(crate::REVOKED_FILE)).unwrap();
        assert_eq!(roster(&members, dir.path(), &list)[1], entry("b", Some(NotAdmitted::Revoked)));
    }
}
