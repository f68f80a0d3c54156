//! The cluster's root CA and the certificates it signs for nodes.
//!
//! Like Swarm: an ECDSA P-256 root valid for 20 years; node certificates
//! valid for 90 days whose subject carries the node id (CN), the role (OU,
//! `swarm-manager` or `swarm-worker`) and the cluster id (O). A joiner sends
//! a CSR; the manager keeps only its public key and writes the subject
//! itself.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// A node's role, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds cluster state and answers cluster verbs.
    Manager,
    /// Runs tasks.
    Worker,
}

impl Role {
    /// The OU written in certificates.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => "swarm-manager",
            Role::Worker => "swarm-worker",
        }
    }

    fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "swarm-manager" => Some(Role::Manager),
            "swarm-worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Generating, parsing or signing failed.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate does not carry a Shoal node identity.
    #[error("certificate carries no node id and role")]
    NoIdentity,
    /// A certificate does not parse.
    #[error("certificate does not parse")]
    BadCertificate,
    /// The operating system gave no random bytes.
    #[error("no randomness available from the operating system")]
    NoRandomness,
}

/// The cluster CA: its certificate and private key, PEM-encoded.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterCa {
    /// CA certificate.
    pub cert_pem: String,
    /// CA private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// Validity of node certificates unless `swarm init --cert-expiry` says
/// otherwise (Swarm: 90 days).
pub const NODE_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// Whom a node certificate is for, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Node id (CN).
    pub node_id: &'a str,
    /// Role (OU).
    pub role: Role,
    /// Cluster id (O).
    pub cluster_id: &'a str,
    /// How long the certificate is valid.
    pub validity: std::time::Duration,
}

impl ClusterCa {
    /// Creates a new root CA for cluster `cluster_id`.
    pub fn create(cluster_id: &str) -> Result<ClusterCa, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-ca");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(20 * 365);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> Vec<u8> {
        pem_to_der(&self.cert_pem).expect("a CA created or loaded here is valid PEM")
    }

    /// SHA-256 of the CA certificate (DER): what join tokens carry.
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.cert_der())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CaError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Signs a node certificate for `node_id` in `role` over the public key of
    /// `csr_pem`; the CSR's own subject is ignored.
    pub fn sign_csr(&self, csr_pem: &str, subject: Subject<'_>) -> Result<String, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = node_params(subject)?;
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }

    /// Issues a key and certificate for `node_id` directly (for the first
    /// manager, which creates the CA itself).
    pub fn issue(&self, subject: Subject<'_>) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = node_params(subject)?.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn node_params(
    Subject { node_id, role, cluster_id, validity }: Subject<'_>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, role.ou());
    dn.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = dn;
    // Only a manager may serve the control plane: only its certificate
    // carries the name clients verify and the server-auth usage.
    params.subject_alt_names = vec![SanType::DnsName(node_id.try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if role == Role::Manager {
        params.subject_alt_names.push(SanType::DnsName(crate::transport::SERVER_NAME.try_into()?));
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::try_from(validity).map_err(|_| CaError::BadCertificate)?;
    Ok(params)
}

/// A new key and a CSR for it, both PEM, for a joining node.
pub fn new_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let params = CertificateParams::new(Vec::<String>::new())?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// `N` bytes from the operating system's random source.
pub fn random<const N: usize>() -> Result<[u8; N], CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| CaError::NoRandomness)?;
    Ok(bytes)
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("32 bytes")
}

/// The DER body of the first PEM block of `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(parsed.contents)
}

/// The node id and role a certificate (DER) was issued for, and when it
/// expires (Unix seconds).
pub fn identity(cert_der: &[u8]) -> Result<(String, Role, i64), CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|_| CaError::BadCertificate)?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).ok_or(CaError::NoIdentity)?;
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .and_then(Role::from_ou)
        .ok_or(CaError::NoIdentity)?;
    Ok((cn.to_owned(), ou, cert.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(node_id: &'a str, role: Role, cluster_id: &'a str) -> Subject<'a> {
        Subject { node_id, role, cluster_id, validity: NODE_CERT_VALIDITY }
    }

    #[test]
    fn a_csr_is_signed_with_the_managers_choice_of_identity() {
        let ca = ClusterCa::create("cluster1").unwrap();
        let (csr, _key) = new_csr().unwrap();
        let cert = ca.sign_csr(&csr, subject("node123", Role::Worker, "cluster1")).unwrap();
        let (id, role, expiry) = identity(&pem_to_der(&cert).unwrap()).unwrap();
        assert_eq!((id.as_str(), role), ("node123", Role::Worker));
        let days = (expiry - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((89..=90).contains(&days), "{days}");
    }

    #[test]
    fn the_ca_round_trips_and_its_digest_is_stable() {
        let ca = ClusterCa::create("c").unwrap();
        let json = serde_json::to_string(&ca).unwrap();
        let back: ClusterCa = serde_json::from_str(&json).unwrap();
        assert_eq!(back.digest(), ca.digest());
        let (cert, _) = back.issue(subject("m1", Role::Manager, "c")).unwrap();
        assert_eq!(identity(&pem_to_der(&cert).unwrap()).unwrap().1, Role::Manager);
        assert_ne!(ClusterCa::create("c").unwrap().digest(), ca.digest());
    }

    #[test]
    fn garbage_is_refused() {
        let ca = ClusterCa::create("c").unwrap();
        assert!(ca.sign_csr("not a csr", subject("n", Role::Worker, "c")).is_err());
        assert!(matches!(identity(b"junk"), Err(CaError::BadCertificate)));
        assert!(matches!(identity(&ca.cert_der()), Err(CaError::NoIdentity)));
    }
}
