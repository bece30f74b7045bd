//! The operator's revocation list, `<pki_dir>/revoked.txt`: the member
//! names and the certificates (by SHA-256 fingerprint) the consortium no
//! longer admits.
//!
//! Two kinds of entry, because they answer two different incidents:
//!
//! - a **certificate** (`sha256:<64 hex>`) refuses exactly that key. It is
//!   what a stolen or leaked key calls for: the member is re-keyed (`pki
//!   issue` after moving the old files away) and keeps working with its new
//!   certificate, while the old one stays refused for good.
//! - a **name** refuses every certificate that names the member, including
//!   ones issued later, until `pki reinstate --name`. It is what a member
//!   leaving (or being suspended from) the consortium calls for.
//!
//! `pki revoke --name` writes both: the name, and the fingerprint of the
//! certificate the PKI directory holds for it. Reinstating the name later
//! removes only the name, so a certificate that was out in the world when
//! the member was revoked is never re-admitted by accident; it takes an
//! explicit `pki reinstate --fingerprint` to let that one key back in.
//!
//! The file is plain text so an operator can read it and put it under
//! configuration management; it is written atomically (temporary file,
//! fsync, rename, fsync of the directory), so a crash leaves the old list
//! or the new one, never half of one. One entry per line; `#` starts a
//! comment:
//!
//! ```text
//! # a name: every certificate for hospital-c
//! hospital-c
//! # a certificate, with the member it was issued to (informational)
//! sha256:3f1c…(64 hex digits)… hospital-c
//! ```
//!
//! A bare name is also what the lists of earlier versions hold, so an old
//! list reads unchanged. A line that is neither is an error: the daemon
//! then admits nobody new (fail closed) until the file is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_transport::pki::{CertFingerprint, validate_member_name};

/// Name of the revocation list inside the PKI directory.
pub const REVOKED_FILE: &str = "revoked.txt";

/// Why the revocation list could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The file exists but could not be read, or could not be written.
    #[error("revocation list {path}")]
    Io {
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is neither a member name nor a `sha256:` fingerprint.
    #[error("revocation list {path}, line {line}: {text:?} is neither a member name nor sha256:<64 hex digits>")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending entry (comment stripped).
        text: String,
    },
}

/// Which entry refuses a connection; its [`Display`](std::fmt::Display) is
/// the close reason the member sees (short, no record data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokedBy {
    /// The member's name is revoked.
    Name(String),
    /// The certificate presented is revoked.
    Certificate(CertFingerprint),
}

impl std::fmt::Display for RevokedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokedBy::Name(n) => write!(f, "revoked: member {n} withdrawn by the operator"),
            RevokedBy::Certificate(fp) => {
                write!(f, "revoked: certificate sha256:{} withdrawn by the operator", fp.short())
            }
        }
    }
}

/// The revocation list: names, and certificate fingerprints with the member
/// each was issued to where known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    names: BTreeSet<String>,
    certificates: BTreeMap<CertFingerprint, Option<String>>,
}

impl RevocationList {
    /// Read `path`; a missing file is an empty list.
    pub fn read(path: &Path) -> Result<Self, RevocationError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(RevocationError::Io { path: path.to_path_buf(), source }),
        };
        Self::parse(&text).map_err(|(line, text)| RevocationError::Parse { path: path.to_path_buf(), line, text })
    }

    /// Parse the file's text; `Err((line, entry))` names the first bad line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut list = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let bad = || (i + 1, entry.to_owned());
            let mut words = entry.split_whitespace();
            let first = words.next().expect("non-empty");
            if first.starts_with("sha256:") {
                let fp: CertFingerprint = first.parse().map_err(|_| bad())?;
                let member = words.next().map(str::to_owned);
                if member.as_deref().is_some_and(|m| validate_member_name(m).is_err()) || words.next().is_some() {
                    return Err(bad());
                }
                list.certificates.insert(fp, member);
            } else {
                if words.next().is_some() || validate_member_name(first).is_err() {
                    return Err(bad());
                }
                list.names.insert(first.to_owned());
            }
        }
        Ok(list)
    }

    /// Write the list to `path` atomically and durably: a temporary file in
    /// the same directory, fsync'd, renamed over `path`, then the directory
    /// fsync'd so the rename itself survives a crash.
    pub fn write(&self, path: &Path) -> Result<(), RevocationError> {
        let tmp = path.with_extension("txt.tmp");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| RevocationError::Io { path: p, source }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(self.render().as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(())
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# Tessera revocation list (tessera-aggregator pki revoke / reinstate).\n\
             # <member>: every certificate naming it; sha256:<hex> [member]: that one certificate.\n",
        );
        for n in &self.names {
            out.push_str(n);
            out.push('\n');
        }
        for (fp, member) in &self.certificates {
            match member {
                Some(m) => out.push_str(&format!("sha256:{fp} {m}\n")),
                None => out.push_str(&format!("sha256:{fp}\n")),
            }
        }
        out
    }

    /// Revoke a name; `false` if it already was.
    pub fn revoke_name(&mut self, name: &str) -> bool {
        self.names.insert(name.to_owned())
    }

    /// Revoke a certificate; `false` if it already was. `member` is the
    /// name it was issued to, kept for people reading the list.
    pub fn revoke_certificate(&mut self, fp: CertFingerprint, member: Option<String>) -> bool {
        if self.certificates.contains_key(&fp) {
            return false;
        }
        self.certificates.insert(fp, member);
        true
    }

    /// Remove a name; `false` if it was not revoked. Certificates revoked
    /// alongside it stay revoked.
    pub fn reinstate_name(&mut self, name: &str) -> bool {
        self.names.remove(name)
    }

    /// Remove a certificate; `false` if it was not revoked.
    pub fn reinstate_certificate(&mut self, fp: &CertFingerprint) -> bool {
        self.certificates.remove(fp).is_some()
    }

    /// Whether `member`, presenting the certificate `certificate` (when
    /// known), is refused, and by which entry. The certificate is checked
    /// first: it is the more precise answer.
    pub fn refuses(&self, member: &str, certificate: Option<&CertFingerprint>) -> Option<RevokedBy> {
        if let Some(fp) = certificate.filter(|fp| self.certificates.contains_key(fp)) {
            return Some(RevokedBy::Certificate(*fp));
        }
        self.names.contains(member).then(|| RevokedBy::Name(member.to_owned()))
    }

    /// The revoked names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// The revoked certificates, with the member each was issued to where known.
    pub fn certificates(&self) -> impl Iterator<Item = (&CertFingerprint, Option<&str>)> {
        self.certificates.iter().map(|(fp, m)| (fp, m.as_deref()))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.certificates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> CertFingerprint {
        CertFingerprint::of_der(&[b])
    }

    #[test]
    fn round_trips_and_reads_the_old_format() {
        let old = "hospital-a\n\n  hospital-b  \n";
        let list = RevocationList::parse(old).unwrap();
        assert_eq!(list.names().collect::<Vec<_>>(), ["hospital-a", "hospital-b"]);
        let mut list = list;
        assert!(list.revoke_certificate(fp(1), Some("hospital-c".into())));
        assert!(!list.revoke_certificate(fp(1), None));
        assert!(list.revoke_certificate(fp(2), None));
        assert_eq!(RevocationList::parse(&list.render()).unwrap(), list);
    }

    #[test]
    fn name_reinstatement_keeps_the_certificate_out() {
        let mut list = RevocationList::default();
        list.revoke_name("hospital-c");
        list.revoke_certificate(fp(1), Some("hospital-c".into()));
        assert_eq!(list.refuses("hospital-c", Some(&fp(2))), Some(RevokedBy::Name("hospital-c".into())));
        assert!(list.reinstate_name("hospital-c"));
        assert_eq!(list.refuses("hospital-c", Some(&fp(1))), Some(RevokedBy::Certificate(fp(1))));
        assert_eq!(list.refuses("hospital-c", Some(&fp(2))), None);
        assert_eq!(list.refuses("hospital-c", None), None);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(RevocationList::parse("ok\nNot A Name\n"), Err((2, "Not A Name".into())));
        assert_eq!(RevocationList::parse("sha256:abcd\n"), Err((1, "sha256:abcd".into())));
        let line = format!("sha256:{} # hospital-c's old laptop", fp(3));
        assert!(RevocationList::parse(&line).unwrap().refuses("x", Some(&fp(3))).is_some());
    }

    #[test]
    fn writes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REVOKED_FILE);
        assert!(RevocationList::read(&path).unwrap().is_empty());
        let mut list = RevocationList::default();
        list.revoke_certificate(fp(4), None);
        list.write(&path).unwrap();
        assert_eq!(RevocationList::read(&path).unwrap(), list);
        assert!(!path.with_extension("txt.tmp").exists());
    }
}
