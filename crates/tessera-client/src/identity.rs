//! The member's consortium identity for signed key advertisements: an
//! [`AdvertSigner`] over the member's certificate key (ECDSA P-256 through
//! AWS-LC), the CA certificate as trust anchor, the transport's own
//! certificate-to-name mapping, and the system clock for certificate validity.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tessera_protocol::member::{AdvertSigner, MemberIdentity, SignError};

/// Signs advertisements with the member's PKCS#8 ECDSA P-256 key (the key
/// `pki issue` writes and the QUIC dialer presents). Signatures are the
/// fixed-length `r ‖ s` form (64 bytes), so advertisements have one size.
/// ECDSA's per-signature nonce comes from AWS-LC's own CSPRNG.
pub struct EcdsaSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl EcdsaSigner {
    /// A signer over a PKCS#8 (DER) ECDSA P-256 private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| SignError(format!("member key is not a PKCS#8 ECDSA P-256 key: {e}")))?;
        Ok(Self { key, rng: SystemRandom::new() })
    }
}

impl std::fmt::Debug for EcdsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EcdsaSigner")
    }
}

impl AdvertSigner for EcdsaSigner {
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let sig = self.key.sign(&self.rng, message).map_err(|_| SignError("ECDSA signing failed".into()))?;
        Ok(sig.as_ref().to_vec())
    }
}

/// Seconds since the Unix epoch from the system clock (0 if it is before 1970).
fn system_clock() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The identity a member signs and checks advertisements with: its
/// certificate and PKCS#8 key (DER), and the consortium CA (DER).
pub fn member_identity(cert: Vec<u8>, key_pkcs8: &[u8], ca: Vec<u8>) -> Result<MemberIdentity, SignError> {
    Ok(MemberIdentity {
        signer: Box::new(EcdsaSigner::from_pkcs8(key_pkcs8)?),
        certificate: cert,
        ca,
        name_of: tessera_transport::pki::member_name_of,
        clock: Box::new(system_clock),
    })
}

/// The identity from the files in `client.toml`'s `[aggregator]` section:
/// `cert`, `key` (PKCS#8 PEM, as `pki issue` writes it) and `ca`.
pub fn load_member_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> anyhow::Result<MemberIdentity> {
    use tessera_transport::pki;
    let cert_der = pki::load_certs(cert)?.swap_remove(0).to_vec();
    let ca_der = pki::load_certs(ca)?.swap_remove(0).to_vec();
    let key_der = match pki::load_key(key)? {
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => anyhow::bail!("{}: the member key must be PKCS#8 (as `pki issue` writes it)", key.display()),
    };
    Ok(member_identity(cert_der, &key_der, ca_der)?)
}

/// Refuse to start as `member` with a certificate issued to another name:
/// the aggregator admits the certificate's name, not `member`, so the
/// member would run (and keep its ledgers) under one name while the
/// consortium knows it by another. The name is read exactly as the
/// aggregator's admission reads it (`pki::member_name_of`).
pub(crate) fn check_member_name(member: &str, cert: &std::path::Path) -> anyhow::Result<()> {
    let der = tessera_transport::pki::load_certs(cert)?.swap_remove(0);
    match tessera_transport::pki::member_name_of(&der) {
        Some(name) if name == member => Ok(()),
        Some(name) => anyhow::bail!(
            "member = {member:?} in the configuration, but the certificate {} is issued to {name:?}: \
             set member to the certificate's name, or point [aggregator] cert and key at {member:?}'s files",
            cert.display()
        ),
        None => anyhow::bail!(
            "the certificate {} names no member (no valid common name or DNS name), so it cannot be {member:?}'s",
            cert.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::check_member_name;

    #[test]
    fn member_must_be_the_certificates_name() {
        let dir = tempfile::tempdir().unwrap();
        tessera_transport::pki::init(dir.path(), &Default::default()).unwrap();
        let b = tessera_transport::pki::issue(dir.path(), "hospital-b").unwrap();
        check_member_name("hospital-b", &b.cert).unwrap();
        let msg = check_member_name("hospital-a", &b.cert).unwrap_err().to_string();
        assert!(msg.contains("\"hospital-a\"") && msg.contains("issued to \"hospital-b\""), "{msg}");
        assert!(msg.contains(&b.cert.display().to_string()), "{msg}");
    }
}
