//! The member's consortium identity inside the protocol: how it signs its
//! key advertisement and the survivor set, and how it checks everyone
//! else's.
//!
//! Without this a malicious aggregator could hand a member key pairs it made
//! itself for every neighbour, open the member's share bundles and strip its
//! mask. With it, every advertisement carries the sender's consortium
//! certificate and an ECDSA P-256 signature over
//! [`tessera_secagg::advert_message`] (round binding, party index, both
//! public keys, the self-mask seed commitment), and a member uses a key only
//! after checking that (1) the certificate chains to the consortium CA at the
//! given time, (2) the member name it proves is the cohort entry at that
//! party index, and (3) the signature verifies under the certificate's key.
//!
//! The crate stays sans-IO: the private key never enters it (the driver
//! injects an [`AdvertSigner`]), the CA certificate arrives as bytes, the
//! current time comes from the driver's [`MemberIdentity::clock`], and the
//! certificate-to-name mapping is the transport's own admission function,
//! injected so that the handshake and the advertisement check can never
//! disagree about who a certificate names.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use tessera_core::{Advertisement, PartyId};

/// Signs a member's advertisement with the private key of its consortium
/// certificate: ECDSA P-256 with SHA-256, fixed-length `r ‖ s` (64 bytes,
/// IEEE P1363) rather than ASN.1 DER, so that every advertisement has the
/// same size. The daemon
/// implements it over its `key.pem`; tests and the simulator over keys from
/// an in-memory PKI.
pub trait AdvertSigner: Send {
    /// Signs `message` (the bytes of [`tessera_secagg::advert_message`] or
    /// [`tessera_secagg::survivor_message`]).
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// The signer could not sign (a key that does not parse, a failing token).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("signing the advertisement failed: {0}")]
pub struct SignError(pub String);

/// Maps a certificate (DER) to the member name it proves, or `None`. The
/// drivers pass `tessera_transport::pki::member_name_of`, the function
/// admission uses on the TLS handshake.
pub type MemberNameOf = fn(&[u8]) -> Option<String>;

/// What a member needs to sign its own advertisement and check others'.
pub struct MemberIdentity {
    /// Signs with the member's certificate key.
    pub signer: Box<dyn AdvertSigner>,
    /// The member's own certificate (DER), sent with its advertisement.
    pub certificate: Vec<u8>,
    /// The consortium CA's certificate (DER): the one trust anchor.
    pub ca: Vec<u8>,
    /// Certificate to member name, as admission reads it.
    pub name_of: MemberNameOf,
    /// Seconds since the Unix epoch, for certificate validity. The daemon
    /// passes the system clock; the protocol crate never reads a clock.
    pub clock: Box<dyn Fn() -> u64 + Send>,
}

impl std::fmt::Debug for MemberIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberIdentity").field("certificate_bytes", &self.certificate.len()).finish_non_exhaustive()
    }
}

/// Why one forwarded advertisement was refused. The refusal
/// ([`crate::member::Refusal::Advertisement`]) names the party.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdvertProblem {
    /// The certificate does not parse or does not chain to the consortium CA
    /// (another CA, expired, wrong key usage); the webpki error says which.
    #[error("certificate is not issued by the consortium CA: {0}")]
    UntrustedCertificate(String),
    /// The certificate proves no usable member name.
    #[error("certificate names no member")]
    NoMemberName,
    /// A valid certificate of another member than the cohort entry at that index.
    #[error("certificate is {found:?}'s, but the cohort entry is {expected:?}")]
    WrongMember {
        /// The cohort entry at the party index.
        expected: String,
        /// The name the certificate proves.
        found: String,
    },
    /// The signature does not verify under the certificate's key.
    #[error("signature does not verify under the certificate's key")]
    BadSignature,
    /// The party index lies outside the cohort.
    #[error("party index outside the cohort")]
    UnknownParty,
}

/// A neighbour's certificate key, usable once its advertisement checked out
/// (chain, name, signature): later signatures of the round (on the survivor
/// set) are checked under it without re-validating the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedKey(Vec<u8>);

impl VerifiedKey {
    /// Whether `signature` (fixed-length `r ‖ s`) signs `message` under this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// How long a validated certificate stays trusted without validating its
/// chain again, in seconds of the member's clock. Members see the same
/// neighbours' certificates round after round; re-validating each chain
/// every round was most of a member's per-round signature cost
/// (docs/benchmarks.md, "Signed advertisements"). An expiry is then noticed
/// at most this late.
pub const CERTIFICATE_CACHE_SECS: u64 = 3600;

/// Certificates validated (chain to the CA, usage, time), by SHA-256 of
/// the CA certificate and the certificate's DER, with the name they prove
/// and their key. The signature of every advertisement is still checked
/// every time.
///
/// Clones share their entries. A member keeps its own; the simulator hands
/// one cache to all its members (`Participant::with_certificate_cache`),
/// so each certificate is validated once per process instead of once per
/// member that neighbours it: with SecAgg+ at 10,000 members that is 56
/// validations of each certificate a round (docs/benchmarks.md, "Protocol
/// scale"). The key holds the CA, so a member never takes a validation
/// made against another consortium's CA.
///
/// It also remembers signatures that verified, by SHA-256 of the key, the
/// message and the signature: a neighbour's advertisement and its
/// signature on the survivor set reach every member of its neighbourhood
/// alike, and in one process each is then verified once. A member computes
/// the message itself, so a remembered verification is only ever one of
/// exactly the bytes it would verify; a failed one is not remembered.
#[derive(Clone, Debug, Default)]
pub struct CertificateCache {
    valid: Arc<Mutex<HashMap<[u8; 32], Validated>>>,
    verified: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// The key's hash state after the CA, for the first CA seen: every
    /// lookup would otherwise hash the CA's certificate again (about 40 ms
    /// of CPU a 1,000-member round, docs/benchmarks.md).
    ca_prefix: Arc<OnceLock<(Vec<u8>, Sha256)>>,
}

/// A validated certificate: the name it proves, its key, when it was validated.
type Validated = (String, VerifiedKey, u64);

/// Verified signatures remembered at most; past this the set starts over
/// (a round adds two per member).
const VERIFIED_SIGNATURES: usize = 1 << 20;

impl CertificateCache {
    /// SHA-256 of a domain tag, the CA (length-prefixed) and the
    /// certificate. The hash state after the CA is kept for the first CA
    /// seen and reused whenever the CA is byte-for-byte that one.
    fn key(&self, ca: &[u8], certificate: &[u8]) -> [u8; 32] {
        let after_ca = |ca: &[u8]| {
            let mut h = Sha256::new();
            h.update(b"tessera/v1/validated-certificate");
            h.update((ca.len() as u64).to_le_bytes());
            h.update(ca);
            h
        };
        let (first_ca, prefix) = self.ca_prefix.get_or_init(|| (ca.to_vec(), after_ca(ca)));
        let mut h = if first_ca.as_slice() == ca { prefix.clone() } else { after_ca(ca) };
        h.update(certificate);
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<Validated> {
        self.valid.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn put(&self, key: [u8; 32], entry: Validated) {
        self.valid.lock().unwrap_or_else(PoisonError::into_inner).insert(key, entry);
    }

    /// `key.verifies(message, signature)`, remembered when it holds.
    pub fn verifies(&self, key: &VerifiedKey, message: &[u8], signature: &[u8]) -> bool {
        let mut h = Sha256::new();
        h.update(b"tessera/v1/verified-signature");
        for part in [key.0.as_slice(), message, signature] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let id: [u8; 32] = h.finalize().into();
        if self.verified.lock().unwrap_or_else(PoisonError::into_inner).contains(&id) {
            return true;
        }
        if !key.verifies(message, signature) {
            return false;
        }
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_SIGNATURES {
            verified.clear();
        }
        verified.insert(id);
        true
    }
}

impl MemberIdentity {
    /// Signs this member's advertisement message.
    pub fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.signer.sign(message)
    }

    /// Checks one forwarded advertisement of `party`, whose signed message is
    /// `message` ([`tessera_secagg::advert_message`]), against the CA, the
    /// cohort entry and the signature, and returns the certificate's key. The
    /// participant calls it for every entry of `CohortKeys`; public for
    /// benchmarks and other drivers.
    pub fn verify(
        &self,
        cohort: &[String],
        party: PartyId,
        message: &[u8],
        advert: &Advertisement,
    ) -> Result<VerifiedKey, AdvertProblem> {
        self.verify_cached(&mut CertificateCache::default(), cohort, party, message, advert)
    }

    /// [`Self::verify`], skipping the chain validation of a certificate
    /// validated within [`CERTIFICATE_CACHE_SECS`] (the name and the
    /// signature are checked every time).
    pub fn verify_cached(
        &self,
        cache: &mut CertificateCache,
        cohort: &[String],
        party: PartyId,
        message: &[u8],
        advert: &Advertisement,
    ) -> Result<VerifiedKey, AdvertProblem> {
        let expected = cohort.get(party as usize).ok_or(AdvertProblem::UnknownParty)?;
        let now = (self.clock)();
        let fingerprint = cache.key(&self.ca, &advert.certificate);
        let (found, key) = match cache.get(&fingerprint) {
            Some((name, key, at)) if now >= at && now - at < CERTIFICATE_CACHE_SECS => (name, key),
            _ => {
                let (name, key) = self.validate(advert, now)?;
                cache.put(fingerprint, (name.clone(), key.clone(), now));
                (name, key)
            }
        };
        if &found != expected {
            return Err(AdvertProblem::WrongMember { expected: expected.clone(), found });
        }
        // The advertisement's signature is fixed-length r ‖ s (64 bytes), so
        // every advertisement has one size and traffic counts stay exact; it
        // is checked by AWS-LC under the certificate's (already validated)
        // subject public key.
        if cache.verifies(&key, message, &advert.signature) { Ok(key) } else { Err(AdvertProblem::BadSignature) }
    }

    /// Validates the certificate (chain to the CA, client-auth usage, time)
    /// and returns the member name it proves and its key.
    fn validate(&self, advert: &Advertisement, now: u64) -> Result<(String, VerifiedKey), AdvertProblem> {
        let ca = CertificateDer::from(self.ca.as_slice());
        let anchor = webpki::anchor_from_trusted_cert(&ca)
            .map_err(|e| AdvertProblem::UntrustedCertificate(format!("consortium CA: {e}")))?;
        let der = CertificateDer::from(advert.certificate.as_slice());
        let cert =
            webpki::EndEntityCert::try_from(&der).map_err(|e| AdvertProblem::UntrustedCertificate(e.to_string()))?;
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
        cert.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &[anchor],
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| AdvertProblem::UntrustedCertificate(e.to_string()))?;
        let found = (self.name_of)(&advert.certificate).ok_or(AdvertProblem::NoMemberName)?;
        Ok((found, VerifiedKey(cert.subject_public_key_info().as_ref().to_vec())))
    }
}

/// An in-memory consortium PKI for this crate's tests (the crate may not
/// depend on the transport, which owns the real one): a CA and member
/// certificates with the same parameters `tessera_transport::pki` uses.
#[cfg(test)]
pub(crate) mod test_pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    use super::{AdvertSigner, MemberIdentity, SignError};

    /// Signs with an rcgen key pair's PKCS#8 key (ECDSA P-256, fixed `r ‖ s`).
    pub(crate) struct KeySigner(pub(crate) KeyPair);

    impl AdvertSigner for KeySigner {
        fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.0.serialize_der())
                .map_err(|e| SignError(e.to_string()))?;
            let sig = key.sign(&aws_lc_rs::rand::SystemRandom::new(), message).map_err(|e| SignError(e.to_string()))?;
            Ok(sig.as_ref().to_vec())
        }
    }

    /// Common name, which must equal the DNS SAN (the transport's rule).
    impl super::MemberIdentity {
        /// The key of `cert` once validated against this identity's CA.
        pub(crate) fn validate_for_test(&self, cert: &[u8]) -> super::VerifiedKey {
            let advert = tessera_core::Advertisement {
                keys: tessera_core::PublicKeys { cipher_pk: [0; 32], mask_pk: [0; 32] },
                seed_commitment: [0; 32],
                graph_commitment: [0; 32],
                certificate: cert.to_vec(),
                signature: Vec::new(),
            };
            self.validate(&advert, now()).expect("a certificate of this CA").1
        }
    }

    pub(crate) fn name_of(der: &[u8]) -> Option<String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, x509) = X509Certificate::from_der(der).ok()?;
        let cn = x509.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
        let san = x509.subject_alternative_name().ok()??.value.general_names.iter().find_map(|g| match g {
            GeneralName::DNSName(s) => Some((*s).to_owned()),
            _ => None,
        });
        (san.as_deref() == Some(cn.as_str())).then_some(cn)
    }

    pub(crate) fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    /// A CA and the certificates it issues.
    pub(crate) struct TestPki {
        key: KeyPair,
        params: CertificateParams,
        ca: Vec<u8>,
    }

    impl TestPki {
        pub(crate) fn new(consortium: &str) -> Self {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, consortium);
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let ca = params.self_signed(&key).unwrap().der().to_vec();
            Self { key, params, ca }
        }

        /// A member certificate (DER) and its key.
        pub(crate) fn issue(&self, name: &str) -> (Vec<u8>, KeyPair) {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, name);
            p.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.use_authority_key_identifier_extension = true;
            // A fixed window (the transport issues for two years from now).
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2045, 1, 1);
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = p.signed_by(&key, &Issuer::from_params(&self.params, &self.key)).unwrap();
            (cert.der().to_vec(), key)
        }

        /// The CA certificate (DER).
        pub(crate) fn ca(&self) -> Vec<u8> {
            self.ca.clone()
        }

        /// A member identity trusting this CA.
        pub(crate) fn identity(&self, name: &str) -> MemberIdentity {
            let (certificate, key) = self.issue(name);
            MemberIdentity {
                signer: Box::new(KeySigner(key)),
                certificate,
                ca: self.ca(),
                name_of,
                clock: Box::new(now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::test_pki::{KeySigner, TestPki};
    use super::*;
    use tessera_core::PublicKeys;

    /// A cached certificate skips chain validation for an hour of the
    /// member's clock, never the name or the signature check; after that
    /// it is validated again, so an expired certificate is refused.
    #[test]
    fn the_certificate_cache_keeps_name_and_signature_checks_and_expires() {
        let pki = TestPki::new("consortium");
        let clock = Arc::new(AtomicU64::new(test_pki::now()));
        let mut me = pki.identity("m0");
        let c = clock.clone();
        me.clock = Box::new(move || c.load(Ordering::Relaxed));
        let (cert, key) = pki.issue("m1");
        let mut signer = KeySigner(key);
        let keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
        let message = b"advert".to_vec();
        let signature = signer.sign(&message).unwrap();
        let advert =
            Advertisement { keys, seed_commitment: [0; 32], graph_commitment: [0; 32], certificate: cert, signature };
        let cohort = vec!["m0".to_string(), "m1".to_string()];
        let mut cache = CertificateCache::default();
        me.verify_cached(&mut cache, &cohort, 1, &message, &advert).unwrap();
        assert_eq!(cache.valid.lock().unwrap().len(), 1);
        // Cached: a wrong index or a wrong signature is still refused.
        assert!(matches!(
            me.verify_cached(&mut cache, &cohort, 0, &message, &advert),
            Err(AdvertProblem::WrongMember { .. })
        ));
        assert_eq!(me.verify_cached(&mut cache, &cohort, 1, b"other", &advert), Err(AdvertProblem::BadSignature));
        // 2070: long after the certificate expired (2045). Within the cache
        // window of the last validation it is not re-validated...
        let validated_at = clock.load(Ordering::Relaxed);
        let future = 100 * 365 * 24 * 3600;
        cache.valid.lock().unwrap().values_mut().for_each(|e| e.2 = future - 10);
        clock.store(future, Ordering::Relaxed);
        me.verify_cached(&mut cache, &cohort, 1, &message, &advert).unwrap();
        // ...and past the window it is, and refused.
        clock.store(future + CERTIFICATE_CACHE_SECS, Ordering::Relaxed);
        assert!(matches!(
            me.verify_cached(&mut cache, &cohort, 1, &message, &advert),
            Err(AdvertProblem::UntrustedCertificate(e)) if e.contains("Expired")
        ));
        assert!(validated_at < future);
    }

    /// One cache shared by members of two consortia (the simulator shares
    /// one per process): a certificate validated under one CA is never
    /// taken under the other, whichever CA the cache met first, and the
    /// remembered hash state after the first CA gives the key a full hash
    /// of the same bytes gives.
    #[test]
    fn a_validation_under_one_ca_is_never_taken_under_another() {
        let (a, b) = (TestPki::new("consortium-a"), TestPki::new("consortium-b"));
        let (cert, key) = a.issue("m1");
        let message = b"advert".to_vec();
        let signature = KeySigner(key).sign(&message).unwrap();
        let keys = PublicKeys { cipher_pk: [1; 32], mask_pk: [2; 32] };
        let advert = Advertisement {
            keys,
            seed_commitment: [0; 32],
            graph_commitment: [0; 32],
            certificate: cert.clone(),
            signature,
        };
        let cohort = vec!["m0".to_string(), "m1".to_string()];
        let (in_a, in_b) = (a.identity("m0"), b.identity("m0"));
        for (first, second) in [(&in_a, &in_b), (&in_b, &in_a)] {
            let mut shared = CertificateCache::default();
            let _ = shared.key(&first.ca, &[]);
            let fresh = CertificateCache::default();
            assert_eq!(shared.key(&second.ca, &cert), fresh.key(&second.ca, &cert), "prefix and full hash agree");
            assert_ne!(shared.key(&in_a.ca, &cert), shared.key(&in_b.ca, &cert));
            in_a.verify_cached(&mut shared, &cohort, 1, &message, &advert).unwrap();
            assert!(matches!(
                in_b.verify_cached(&mut shared, &cohort, 1, &message, &advert),
                Err(AdvertProblem::UntrustedCertificate(_))
            ));
        }
    }

    /// A shared cache remembers a verified signature for exactly its key,
    /// message and signature: any other message or signature is verified
    /// (and refused), and a failure is never remembered.
    #[test]
    fn a_remembered_signature_covers_only_its_own_bytes() {
        let pki = TestPki::new("consortium");
        let (cert, key) = pki.issue("m1");
        let mut signer = KeySigner(key);
        let spki = pki.identity("m0").validate_for_test(&cert);
        let signature = signer.sign(b"survivors").unwrap();
        let (cache, shared) = (CertificateCache::default(), CertificateCache::default());
        let other = shared.clone();
        assert!(shared.verifies(&spki, b"survivors", &signature));
        assert_eq!(other.verified.lock().unwrap().len(), 1, "clones share what verified");
        assert!(!other.verifies(&spki, b"survivor", &signature));
        let mut bad = signature.clone();
        bad[10] ^= 1;
        assert!(!other.verifies(&spki, b"survivors", &bad));
        assert!(!other.verifies(&spki, b"survivors", &bad), "a failure is not remembered");
        assert_eq!(other.verified.lock().unwrap().len(), 1);
        assert!(cache.verified.lock().unwrap().is_empty());
    }
}
