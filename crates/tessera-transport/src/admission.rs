//! Admission: after the certificate chain is verified, the aggregator asks
//! its caller whether the named member may connect right now.

#[cfg(test)]
use std::collections::HashSet;
#[cfg(test)]
use std::sync::RwLock;

use crate::error::close_code;
use crate::pki::CertFingerprint;

/// Why a member was turned away; carried to the client as the close reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate is valid but its name is not a member of the consortium.
    NotMember,
    /// The member's access was withdrawn.
    Revoked,
    /// Any other policy reason; keep it short and free of record data.
    Other(String),
}

impl Refusal {
    /// The QUIC application close code the client sees ([`crate::close_code`]).
    pub fn code(&self) -> u32 {
        match self {
            Refusal::NotMember => close_code::NOT_MEMBER,
            Refusal::Revoked => close_code::REVOKED,
            Refusal::Other(_) => close_code::REFUSED,
        }
    }

    /// The close reason sent to the client: short, never record data.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::NotMember => "not a member",
            Refusal::Revoked => "revoked",
            Refusal::Other(s) => s,
        }
    }
}

/// Decides whether a member whose certificate chains to the consortium CA
/// may connect. Called once per connection, after the TLS handshake; the
/// aggregator implements it over its database.
pub trait Admission: Send + Sync + 'static {
    /// `Ok` lets `member` in; a [`Refusal`] closes its connection with that
    /// code and reason. Runs on a blocking thread, so it may query a database.
    fn admit(&self, member: &str) -> Result<(), Refusal>;

    /// Like [`Admission::admit`], also given the SHA-256 fingerprint of the
    /// certificate presented, so that one certificate can be refused while
    /// the same member's other (re-issued) certificates are let in. The
    /// QUIC listener calls this; the default judges by name alone.
    fn admit_certificate(&self, member: &str, fingerprint: &CertFingerprint) -> Result<(), Refusal> {
        let _ = fingerprint;
        self.admit(member)
    }
}

impl<F> Admission for F
where
    F: Fn(&str) -> Result<(), Refusal> + Send + Sync + 'static,
{
    fn admit(&self, member: &str) -> Result<(), Refusal> {
        self(member)
    }
}

/// Admits every certificate the CA signed (tests, single-tenant demos).
#[derive(Clone, Copy, Debug, Default)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&self, _member: &str) -> Result<(), Refusal> {
        Ok(())
    }
}

/// An in-memory member list with revocation, changeable while serving
/// (the tests' admission; the aggregator admits from its database).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemberList {
    inner: RwLock<Lists>,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct Lists {
    members: HashSet<String>,
    revoked: HashSet<String>,
}

#[cfg(test)]
impl MemberList {
    pub(crate) fn new<I: IntoIterator<Item = S>, S: Into<String>>(members: I) -> Self {
        let members = members.into_iter().map(Into::into).collect();
        Self { inner: RwLock::new(Lists { members, revoked: HashSet::new() }) }
    }

    pub(crate) fn revoke(&self, member: &str) {
        let mut l = self.inner.write().unwrap_or_else(|p| p.into_inner());
        l.revoked.insert(member.to_owned());
    }
}

#[cfg(test)]
impl Admission for MemberList {
    fn admit(&self, member: &str) -> Result<(), Refusal> {
        let l = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if l.revoked.contains(member) {
            Err(Refusal::Revoked)
        } else if l.members.contains(member) {
            Ok(())
        } else {
            Err(Refusal::NotMember)
        }
    }
}
