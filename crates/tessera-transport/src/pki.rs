//! The consortium PKI: one self-signed CA, one aggregator certificate, one
//! certificate per member. Everything is written as PEM into a single
//! directory; private keys are created with mode 0600 from the start.
//!
//! Identity comes from certificates, never from messages: the listener reads
//! the member name a peer proved with its handshake from its certificate.
//!
//! Operators call [`init`] once per consortium and [`issue`] once per member;
//! the transports read the files back with [`load_certs`] and [`load_key`].
//! Member names pass [`validate_member_name`] wherever they enter.
//!
//! A certificate is named for revocation by its [`CertFingerprint`], the
//! SHA-256 of its DER encoding: a name outlives re-keying, a fingerprint
//! names exactly one key, so revoking a stolen certificate by fingerprint
//! keeps it out after the member has been issued a new one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the consortium CA's certificate inside a PKI directory; every
/// member needs a copy to authenticate the aggregator.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key; only [`issue`] reads it.
pub(crate) const CA_KEY: &str = "ca.key";
/// The aggregator's certificate and key, read by its listener.
pub(crate) const AGGREGATOR_CERT: &str = "aggregator.pem";
pub(crate) const AGGREGATOR_KEY: &str = "aggregator.key";

/// Longest member name; also keeps file names and log lines short.
pub(crate) const MAX_MEMBER_NAME: usize = 64;

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Tolerates modest clock skew between the CA operator and the members.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Names reserved for the consortium's own files.
const RESERVED_NAMES: [&str; 2] = ["ca", "aggregator"];

/// Why a PKI file could not be created, read or trusted. Every variant names
/// the file or the name at fault, never key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// [`init`] found a CA certificate or key already there.
    #[error("a consortium CA already exists at {0}; refusing to overwrite it")]
    CaExists(PathBuf),
    /// A file to be written exists; nothing is ever overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    /// A file to be read is absent.
    #[error("{0} does not exist")]
    Missing(PathBuf),
    /// The file holds no PEM block of the `expected` kind.
    #[error("{path} holds no PEM {expected}")]
    NotPem {
        /// The file read.
        path: PathBuf,
        /// The PEM label looked for, e.g. `CERTIFICATE`.
        expected: &'static str,
    },
    /// The file parsed but its content is unusable.
    #[error("{path}: {detail}")]
    Invalid {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A member name fails [`validate_member_name`].
    #[error("invalid member name {name:?}: {why}")]
    InvalidName {
        /// The name, cut to the longest allowed length.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// An aggregator name in [`InitOptions`] is neither an IP address nor a
    /// DNS name (or the list is empty).
    #[error("invalid aggregator host name {0:?}")]
    InvalidHostname(String),
    /// rcgen could not create a key or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),
    /// A peer's certificate proves no valid member name.
    #[error("certificate carries no usable member name: {0}")]
    NoIdentity(String),
    /// A certificate fingerprint is not 64 hexadecimal digits.
    #[error("invalid certificate fingerprint {0:?}: expected 64 hex digits (SHA-256), optionally `sha256:`-prefixed")]
    InvalidFingerprint(String),
    /// Any other file-system error.
    #[error("{path}: {detail}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error (in the message, not a `source()`: PKI
        /// errors, like the transport's, carry their cause in their text).
        detail: std::io::Error,
    },
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Generate(e)
    }
}

/// Options for [`init`].
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Names the aggregator is reached by: DNS names or IP addresses. Each
    /// becomes a subject alternative name of the aggregator's certificate.
    pub aggregator_names: Vec<String>,
    /// Common name of the consortium CA.
    pub consortium: String,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self { aggregator_names: vec!["localhost".into(), "127.0.0.1".into()], consortium: "Tessera consortium".into() }
    }
}

/// Files produced by [`init`] or [`issue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedFiles {
    /// The certificate (PEM, mode 0644).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600); never leaves the owner's site.
    pub key: PathBuf,
}

/// Create the consortium CA and the aggregator's certificate in `dir`
/// (created if missing). Refuses to touch an existing CA.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<IssuedFiles, PkiError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    for p in [&ca_cert_path, &ca_key_path] {
        if p.exists() {
            return Err(PkiError::CaExists(p.clone()));
        }
    }
    if opts.aggregator_names.is_empty() {
        return Err(PkiError::InvalidHostname(String::new()));
    }
    fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), detail: source })?;

    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn(&opts.consortium);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut ca_params, CA_VALIDITY);
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut agg = CertificateParams::default();
    agg.distinguished_name = dn("tessera aggregator");
    agg.subject_alt_names = opts.aggregator_names.iter().map(|n| host_san(n)).collect::<Result<_, _>>()?;
    agg.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    agg.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    agg.use_authority_key_identifier_extension = true;
    set_validity(&mut agg, LEAF_VALIDITY);
    let agg_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let agg_cert = agg.signed_by(&agg_key, &issuer)?;

    // Key first, so a crash never leaves a CA certificate without its key.
    write_new(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&ca_cert_path, ca_cert.pem().as_bytes(), 0o644)?;
    let files = IssuedFiles { cert: dir.join(AGGREGATOR_CERT), key: dir.join(AGGREGATOR_KEY) };
    write_new(&files.key, agg_key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, agg_cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Issue a member certificate (client auth, CN and SAN DNS = `name`) signed
/// by the CA in `dir`; writes `<name>.pem` and `<name>.key`.
pub fn issue(dir: &Path, name: &str) -> Result<IssuedFiles, PkiError> {
    validate_member_name(name)?;
    let files = member_files(dir, name);
    for p in [&files.cert, &files.key] {
        if p.exists() {
            return Err(PkiError::AlreadyExists(p.clone()));
        }
    }
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| PkiError::Invalid { path: ca_key_path.clone(), detail: format!("not a usable CA key: {e}") })?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_pem = read_text(&ca_cert_path)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)
        .map_err(|e| PkiError::Invalid { path: ca_cert_path, detail: format!("not a usable CA certificate: {e}") })?;

    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;

    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(files)
}

/// Where [`issue`] puts a member's certificate and key.
pub fn member_files(dir: &Path, name: &str) -> IssuedFiles {
    IssuedFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}

/// Member names: 1 to 64 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn validate_member_name(name: &str) -> Result<(), PkiError> {
    let bad = |why| Err(PkiError::InvalidName { name: name.chars().take(MAX_MEMBER_NAME).collect(), why });
    if name.is_empty() || name.len() > MAX_MEMBER_NAME {
        return bad("must be 1 to 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)) {
        return bad("only a-z, 0-9, '-', '_' and '.' are allowed");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if RESERVED_NAMES.contains(&name) {
        return bad("reserved for the consortium's own files");
    }
    Ok(())
}

/// Load every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let text = read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Invalid { path: path.to_path_buf(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(PkiError::NotPem { path: path.to_path_buf(), expected: "CERTIFICATE" });
    }
    Ok(certs)
}

/// The SHA-256 of a certificate's DER encoding: the identity revocation
/// names. Shown as 64 lowercase hex digits (what `openssl x509 -fingerprint
/// -sha256` prints, without the colons); parsed from that, upper or lower
/// case, with or without colons and a `sha256:` prefix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(der).into())
    }

    /// The fingerprint of the first (leaf) certificate in a PEM file.
    pub fn of_pem_file(path: &Path) -> Result<Self, PkiError> {
        let certs = load_certs(path)?;
        Ok(Self::of_der(certs[0].as_ref()))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 16 hex digits, for log lines and close reasons.
    pub fn short(&self) -> String {
        self.to_string()[..16].to_owned()
    }
}

impl std::fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl std::str::FromStr for CertFingerprint {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PkiError::InvalidFingerprint(s.chars().take(120).collect());
        let t = s.trim();
        let t = t.strip_prefix("sha256:").or_else(|| t.strip_prefix("SHA256:")).unwrap_or(t);
        let digits: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            *o = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// Load the first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let text = read_text(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            PkiError::NotPem { path: path.to_path_buf(), expected: "PRIVATE KEY" }
        }
        other => PkiError::Invalid { path: path.to_path_buf(), detail: other.to_string() },
    })
}

/// The member name a certificate proves: its common name, which must agree
/// with its DNS subject alternative name when it has one.
pub(crate) fn member_name(cert: &CertificateDer<'_>) -> Result<String, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::NoIdentity(e.to_string()))?;
    let cn = x509.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let san = match x509.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.iter().find_map(|g| match g {
            GeneralName::DNSName(s) => Some((*s).to_owned()),
            _ => None,
        }),
        Ok(None) => None,
        Err(e) => return Err(PkiError::NoIdentity(e.to_string())),
    };
    let name = match (cn, san) {
        (Some(cn), Some(san)) if cn != san => {
            return Err(PkiError::NoIdentity("common name and DNS name disagree".into()));
        }
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => return Err(PkiError::NoIdentity("no common name or DNS name".into())),
    };
    validate_member_name(&name).map_err(|e| PkiError::NoIdentity(e.to_string()))?;
    Ok(name)
}

/// The member name a certificate (DER) proves, as admission reads it on the
/// TLS handshake ([`member_name`]); `None` when it proves none. Members pass
/// this to the protocol crate to check the certificates in signed key
/// advertisements, so the handshake and the advertisement check agree.
pub fn member_name_of(der: &[u8]) -> Option<String> {
    member_name(&CertificateDer::from(der)).ok()
}

/// When the first certificate in a PEM file stops being valid, in seconds
/// since the Unix epoch (its `notAfter`), for `pki list`.
pub fn expiry_of_pem_file(path: &Path) -> Result<i64, PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let certs = load_certs(path)?;
    let cert = certs.first().ok_or_else(|| PkiError::NoIdentity(format!("{}: no certificate", path.display())))?;
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| PkiError::NoIdentity(e.to_string()))?;
    Ok(x509.validity().not_after.timestamp())
}

/// A consortium PKI held in memory (tests and the simulator): the CA, and
/// one certificate and PKCS#8 key per member, made exactly as [`init`] and
/// [`issue`] make them, without touching a disk.
pub struct MemoryPki {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_cert: Vec<u8>,
}

/// A member's certificate and key from a [`MemoryPki`].
#[derive(Clone)]
pub struct MemberCredentials {
    /// The member's certificate (DER).
    pub cert: Vec<u8>,
    /// Its private key (PKCS#8 DER, ECDSA P-256).
    pub key: Vec<u8>,
}

impl std::fmt::Debug for MemberCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberCredentials").field("cert_bytes", &self.cert.len()).finish_non_exhaustive()
    }
}

impl MemoryPki {
    /// A fresh consortium CA named `consortium`.
    pub fn new(consortium: &str) -> Result<Self, PkiError> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ca_params = ca_params(consortium);
        let ca_cert = ca_params.self_signed(&ca_key)?.der().to_vec();
        Ok(Self { ca_key, ca_params, ca_cert })
    }

    /// The CA certificate (DER): the members' trust anchor.
    pub fn ca_cert(&self) -> &[u8] {
        &self.ca_cert
    }

    /// Issues a member certificate with the parameters [`issue`] uses.
    ///
    /// Its length depends only on the name: the CA's ECDSA signature is
    /// drawn again until its DER form takes the full 72 bytes, and the key
    /// until the serial number (derived from it) takes the full 20. A
    /// simulation then counts the same traffic on every run, although every
    /// run has fresh keys.
    pub fn issue(&self, name: &str) -> Result<MemberCredentials, PkiError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        validate_member_name(name)?;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let params = member_params(name)?;
        for _ in 0..256 {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            for _ in 0..64 {
                let cert = params.signed_by(&key, &issuer)?;
                let (_, x509) = X509Certificate::from_der(cert.der())
                    .map_err(|e| PkiError::NoIdentity(format!("issued certificate does not parse: {e}")))?;
                if x509.tbs_certificate.raw_serial().len() != 20 {
                    break; // a shorter serial: another key
                }
                if x509.signature_value.data.len() == 72 {
                    return Ok(MemberCredentials { cert: cert.der().to_vec(), key: key.serialize_der() });
                }
            }
        }
        Err(PkiError::NoIdentity("no full-length certificate after many draws".into()))
    }
}

/// The CA's parameters, as [`init`] sets them.
fn ca_params(consortium: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(consortium);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut p, CA_VALIDITY);
    p
}

/// A member certificate's parameters, as [`issue`] sets them.
fn member_params(name: &str) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(name);
    p.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    set_validity(&mut p, LEAF_VALIDITY);
    Ok(p)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn host_san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if rustls_pki_types::ServerName::try_from(name).is_err() {
        return Err(PkiError::InvalidHostname(name.to_owned()));
    }
    Ok(SanType::DnsName(name.try_into()?))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => PkiError::Missing(path.to_path_buf()),
        ErrorKind::InvalidData => PkiError::NotPem { path: path.to_path_buf(), expected: "text" },
        _ => PkiError::Io { path: path.to_path_buf(), detail: source },
    })
}

/// Create `path` with `mode` (never replacing a file) and write `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |detail| PkiError::Io { path: path.to_path_buf(), detail };
    let mut f: File = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists { PkiError::AlreadyExists(path.to_path_buf()) } else { io(e) }
    })?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
