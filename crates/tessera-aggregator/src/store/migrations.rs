//! The state database's schema, as the migrations that build it. A
//! database records how many it has applied (`PRAGMA user_version`), so an
//! existing run directory opens with a newer aggregator; one written by a
//! newer aggregator is refused.

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    run_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    stop_reason TEXT
);
CREATE TABLE config_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE members (
    name TEXT PRIMARY KEY,
    first_admitted_ms INTEGER,
    last_seen_ms INTEGER,
    revoked_ms INTEGER
);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY,
    logical INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('started', 'completed', 'aborted', 'interrupted')),
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    cohort TEXT NOT NULL,
    cohort_seed INTEGER NOT NULL,
    contributors TEXT,
    dropped TEXT,
    reason TEXT,
    model_sha256 TEXT,
    record TEXT,
    epsilon REAL,
    delta REAL
);
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    round INTEGER NOT NULL,
    entry TEXT NOT NULL,
    epsilon_after REAL,
    delta REAL
);
CREATE TABLE checkpoints (
    completed INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    layout TEXT NOT NULL,
    model BLOB NOT NULL,
    model_sha256 TEXT NOT NULL,
    strategy TEXT NOT NULL,
    moment1 BLOB NOT NULL,
    moment2 BLOB NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE status (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    updated_ms INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
"#,
    r#"
CREATE TABLE revoked_certificates (
    fingerprint TEXT PRIMARY KEY,
    member TEXT,
    revoked_ms INTEGER NOT NULL
);
"#,
    // A DP statistics release (issue #18) gets its own round status instead
    // of `aborted`, and its released values their own table, written before
    // `statistics.json` so that a crash in between never repeats the release.
    // SQLite cannot change a CHECK constraint in place: the table is rebuilt,
    // and releases recorded before as `aborted` are relabelled.
    r#"
CREATE TABLE rounds_v3 (
    round INTEGER PRIMARY KEY,
    logical INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('started', 'completed', 'aborted', 'interrupted', 'statistics')),
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    cohort TEXT NOT NULL,
    cohort_seed INTEGER NOT NULL,
    contributors TEXT,
    dropped TEXT,
    reason TEXT,
    model_sha256 TEXT,
    record TEXT,
    epsilon REAL,
    delta REAL
);
INSERT INTO rounds_v3
SELECT round, logical,
       CASE WHEN status = 'aborted' AND reason = 'a DP statistics release, not a training round'
            THEN 'statistics' ELSE status END,
       started_ms, finished_ms, cohort, cohort_seed, contributors, dropped,
       CASE WHEN status = 'aborted' AND reason = 'a DP statistics release, not a training round'
            THEN NULL ELSE reason END,
       model_sha256, record, epsilon, delta
FROM rounds;
DROP TABLE rounds;
ALTER TABLE rounds_v3 RENAME TO rounds;
CREATE TABLE statistics_releases (
    round INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE TRIGGER statistics_no_update BEFORE UPDATE ON statistics_releases
BEGIN SELECT RAISE(ABORT, 'a statistics release is final'); END;
CREATE TRIGGER statistics_no_delete BEFORE DELETE ON statistics_releases
BEGIN SELECT RAISE(ABORT, 'a statistics release is final'); END;
"#,
];
