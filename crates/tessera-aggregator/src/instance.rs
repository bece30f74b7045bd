//! One `serve` per state database: an OS file lock on `<state>.lock`, next
//! to the database, held for the daemon's whole life.
//!
//! Why a lock file and not SQLite's own locking: two daemons on one
//! database both start and both drive the run (each takes its write
//! transactions in turn, so SQLite is content), and a second daemon must be
//! refused before it binds a port or touches the run. An advisory
//! `flock`-style lock (std's [`File::try_lock`]) is released by the kernel
//! when the holder dies, however it dies, so a crashed daemon never leaves
//! a stale lock behind; the PID written into the file is only there to tell
//! the operator who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the state database's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: a daemon is already serving this state.
    #[error(
        "another tessera-aggregator ({holder}) is already serving the state database {}; \
         stop it first, or give this run its own [state] path (lock file {})",
        state.display(),
        lock.display()
    )]
    Held {
        /// Who holds it, as the lock file says ("pid 1234", or "pid unknown").
        holder: String,
        /// The state database (absolute).
        state: PathBuf,
        /// The lock file (absolute).
        lock: PathBuf,
    },
    /// The lock file could not be created, locked or written.
    #[error("cannot lock the state database through {}: {source}", lock.display())]
    Io {
        /// The lock file (absolute).
        lock: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The held lock: dropping it (or the process ending) releases it.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

/// The lock file of the state database at `state`: `<state>.lock`.
pub(crate) fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "tessera.db".into());
    name.push(".lock");
    state.with_file_name(name)
}

/// Take the lock of the state database at `state` (creating its folder and
/// the lock file when needed) and write this process's PID into it.
pub(crate) fn lock_state(state: &Path) -> Result<StateLock, LockError> {
    let state = std::path::absolute(state).unwrap_or_else(|_| state.to_path_buf());
    let lock = lock_path(&state);
    let io = |source| LockError::Io { lock: lock.clone(), source };
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "pid unknown".to_string(),
            };
            return Err(LockError::Held { holder, state, lock });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_data().map_err(io)?;
    Ok(StateLock { _file: file })
}

/// Fail fast when another daemon holds the lock of `state`, without keeping
/// it: `serve` asks before it binds its port, so a second instance is told
/// who holds the state rather than "address in use". [`lock_state`] in
/// `daemon::run` is what actually excludes a second instance.
pub(crate) fn check_unlocked(state: &Path) -> Result<(), LockError> {
    lock_state(state).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/tessera.db");
        let held = lock_state(&state).unwrap();
        let text = std::fs::read_to_string(dir.path().join("state/tessera.db.lock")).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let err = lock_state(&state).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Held { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains(&state.display().to_string()), "{msg}");
        assert!(check_unlocked(&state).is_err());
        drop(held);
        let _again = lock_within(&state, Duration::from_secs(10));
    }

    /// Take the lock, retrying until `limit`. A lock belongs to the open file
    /// description, and a child forked by another test in this process (the
    /// export tests start `python3`) holds a copy of every descriptor until
    /// its `exec` closes them, so the kernel may free the lock a moment after
    /// the drop rather than at it. A lock never freed still fails here.
    fn lock_within(state: &Path, limit: Duration) -> StateLock {
        let start = Instant::now();
        loop {
            match lock_state(state) {
                Ok(lock) => return lock,
                Err(LockError::Held { .. }) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("the lock was not freed within {limit:?}: {e}"),
            }
        }
    }
}
