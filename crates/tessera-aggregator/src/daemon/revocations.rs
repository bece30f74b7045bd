//! The daemon's side of revocation: a watcher task that polls the list
//! every [`REVOCATION_POLL`], hands a change to the driver (which closes
//! the live connections it now refuses), updates the status and records
//! the change in the state database, audited.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_transport::pki::CertFingerprint;
use tokio::sync::watch;

use super::REVOCATION_POLL;
use crate::http::SharedStatus;
use crate::observer::{SharedStore, lock, lock_status};
use crate::revocation::RevocationList;
use crate::store::{StateStore, now_ms};

/// Whether the status should show `member` as revoked: its name is, or the
/// certificate the PKI directory holds for it (its current one, as far as
/// the operator's files say) is.
pub(super) fn member_revoked(list: &RevocationList, pki_dir: &Path, member: &str) -> bool {
    let current = CertFingerprint::of_pem_file(&tessera_transport::pki::member_files(pki_dir, member).cert).ok();
    list.refuses(member, current.as_ref()).is_some()
}

/// Record the list in the state database: names in `members`, certificates
/// in `revoked_certificates`; every change is audited.
pub(super) fn record_revocations(
    store: &mut StateStore,
    list: &RevocationList,
    now: i64,
) -> Result<(), crate::store::StoreError> {
    let names: Vec<String> = list.names().map(String::from).collect();
    let (new, back) = store.sync_revocations(&names, now)?;
    for m in new {
        tracing::warn!(member = %m, "revocation of the member name recorded (audited)");
    }
    for m in back {
        tracing::warn!(member = %m, "member name reinstated (audited)");
    }
    let certs: Vec<(String, Option<String>)> =
        list.certificates().map(|(fp, m)| (fp.to_string(), m.map(String::from))).collect();
    let (new, back) = store.sync_revoked_certificates(&certs, now)?;
    for fp in new {
        tracing::warn!(certificate = %fp, "revocation of a certificate recorded (audited)");
    }
    for fp in back {
        tracing::warn!(certificate = %fp, "certificate reinstated (audited)");
    }
    Ok(())
}

/// Every [`REVOCATION_POLL`]: re-read the revocation list; on a change,
/// hand it to the driver (which closes the live connections it refuses),
/// update the status and record it in the database (audited). An
/// unreadable or malformed list leaves live connections alone (admission
/// refuses every new one meanwhile) and is logged once per failure spell.
pub(super) async fn watch_revocations(
    path: PathBuf,
    pki_dir: PathBuf,
    mut current: RevocationList,
    store: SharedStore,
    status: SharedStatus,
    tx: watch::Sender<Arc<RevocationList>>,
) {
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let list = match RevocationList::read(&path) {
            Ok(list) => list,
            Err(e) => {
                if !failing {
                    tracing::error!(error = %tessera_cli::ErrorChain(&e), "revocation list unreadable: every new connection is refused until it is fixed");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!(path = %path.display(), "revocation list readable again");
            failing = false;
        }
        if list == current {
            continue;
        }
        tracing::warn!(
            names = list.names().count(),
            certificates = list.certificates().count(),
            "revocation list changed; closing the live connections it refuses"
        );
        let _ = tx.send(Arc::new(list.clone()));
        let now = now_ms();
        {
            let mut s = lock_status(&status);
            for m in &mut s.members {
                m.revoked = member_revoked(&list, &pki_dir, &m.name);
            }
            s.updated_ms = now;
        }
        if let Err(e) = record_revocations(&mut lock(&store), &list, now) {
            tracing::warn!(error = %tessera_cli::ErrorChain(&e), "could not record the revocations in the state database");
        }
        current = list;
    }
}
