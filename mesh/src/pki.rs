//! Cluster PKI: a cluster certificate authority and the node certificates it signs.
//!
//! For: `meridian certs init` ([`init_ca`]), `meridian certs issue --node NAME`
//! ([`issue_node_cert`]), automatic dev/demo certificates ([`ensure_dev_certs`]) and
//! loading the PEM files into rustls types ([`NodeCerts::load`]).
//!
//! Not for: revocation, rotation or storing keys anywhere but plain PEM files (mode 0600 on
//! Unix). Trust is "signed by the cluster CA and within its validity window"; the transport
//! enforces it on both ends of every connection (see [`crate::transport`]).
//!
//! Files: a CA dir holds `ca.pem` and `ca.key`; a node dir holds `node.pem` and `node.key`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// File name of the CA certificate inside a CA dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA dir.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of a node certificate inside a node cert dir.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of a node private key inside a node cert dir.
pub const NODE_KEY_FILE: &str = "node.key";
/// DNS name every node certificate carries besides its own name; the transport dials peers
/// with this server name, so any certificate of the cluster CA is accepted as a peer.
pub const MESH_SERVER_NAME: &str = "mesh.meridian.internal";
/// Common name of the cluster CA (the issuer name node certificates refer to).
const CA_COMMON_NAME: &str = "Meridian Cluster CA";
/// Validity of a cluster CA created by [`init_ca`].
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default validity of a node certificate (used by [`ensure_dev_certs`]).
pub const NODE_CERT_VALIDITY_DEFAULT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating of `not_before`, so moderate clock skew between nodes doesn't reject a fresh cert.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);
/// Longest node name accepted (it becomes a DNS SAN).
pub const NODE_NAME_MAX_BYTES: usize = 63;

/// Errors of the PKI functions.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `init_ca` refuses to overwrite an existing CA.
    #[error("a CA already exists in {0} (refusing to overwrite)")]
    CaExists(PathBuf),
    /// Node names must be DNS labels: `[a-z0-9-]`, 1..=63 bytes, not starting with '-'.
    #[error("invalid node name {0:?}: use 1-63 characters of a-z, 0-9 and '-'")]
    InvalidNodeName(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// This node's own certificate is expired, not yet valid, or not from the cluster CA.
    #[error("node certificate rejected: {0} (issue a new one with `meridian certs issue`)")]
    InvalidCertificate(String),
    /// A PEM file did not contain what it should.
    #[error("{path}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(io_err(path))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Meridian");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + valid_for;
}

/// Creates a cluster CA (`ca.pem`, `ca.key`) in `dir`, creating the dir if needed.
/// Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path) -> Result<(), PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if cert_path.exists() || key_path.exists() {
        return Err(PkiError::CaExists(dir.to_path_buf()));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok(())
}

fn check_node_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= NODE_NAME_MAX_BYTES
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidNodeName(name.to_string()))
    }
}

/// Issues a node certificate signed by the CA in `ca_dir`, valid for `validity` from now
/// (backdated by [`CLOCK_SKEW_ALLOWANCE`]). Writes `node.pem` (leaf followed by the CA
/// cert) and `node.key` into `out_dir`, overwriting an existing node cert.
///
/// SANs: `node_name`, [`MESH_SERVER_NAME`], `localhost`, `127.0.0.1`. The certificate is
/// usable both as a TLS server and client certificate (mutual TLS).
pub fn issue_node_cert(
    ca_dir: &Path,
    node_name: &str,
    out_dir: &Path,
    validity_for: Duration,
) -> Result<(), PkiError> {
    check_node_name(node_name)?;
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key = KeyPair::from_pem(&read_file(&ca_key_path)?).map_err(|e| PkiError::BadPem {
        path: ca_key_path.clone(),
        reason: e.to_string(),
    })?;
    let ca_cert_pem = read_file(&ca_cert_path)?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut params = CertificateParams::new(vec![
        node_name.to_string(),
        MESH_SERVER_NAME.to_string(),
        "localhost".to_string(),
    ])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, validity_for);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    write_file(&out_dir.join(NODE_KEY_FILE), &key.serialize_pem(), true)?;
    write_file(
        &out_dir.join(NODE_CERT_FILE),
        &format!("{}{}", cert.pem(), ca_cert_pem),
        false,
    )?;
    Ok(())
}

/// Paths of the PEM files a node needs (what [`crate::MeshConfig`] takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The cluster CA certificate (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The node certificate chain (`node.pem`).
    pub node_cert: PathBuf,
    /// The node private key (`node.key`).
    pub node_key: PathBuf,
}

impl CertPaths {
    /// Paths of a CA dir and a node cert dir laid out as this module writes them.
    pub fn new(ca_dir: &Path, node_dir: &Path) -> Self {
        Self {
            ca_cert: ca_dir.join(CA_CERT_FILE),
            node_cert: node_dir.join(NODE_CERT_FILE),
            node_key: node_dir.join(NODE_KEY_FILE),
        }
    }
}

/// For local dev and `meridian demo`: makes sure a CA and a node certificate exist, creating
/// whatever is missing. The CA lives in `shared_ca_dir` when given (so several demo nodes
/// share one CA), else in `data_dir/certs/ca`; the node cert lives in
/// `data_dir/certs/<node_name>`. An existing node cert is kept as is.
pub fn ensure_dev_certs(
    data_dir: &Path,
    node_name: &str,
    shared_ca_dir: Option<&Path>,
) -> Result<CertPaths, PkiError> {
    check_node_name(node_name)?;
    let ca_dir = shared_ca_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("certs").join("ca"));
    let node_dir = data_dir.join("certs").join(node_name);
    if !ca_dir.join(CA_CERT_FILE).exists() {
        init_ca(&ca_dir)?;
    }
    let paths = CertPaths::new(&ca_dir, &node_dir);
    if !paths.node_cert.exists() || !paths.node_key.exists() {
        issue_node_cert(&ca_dir, node_name, &node_dir, NODE_CERT_VALIDITY_DEFAULT)?;
    }
    Ok(paths)
}

/// Certificates and key loaded into rustls types.
#[derive(Debug)]
pub struct NodeCerts {
    /// Trust anchors: the cluster CA certificate(s).
    pub ca: Vec<CertificateDer<'static>>,
    /// The node's chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl NodeCerts {
    /// Loads the PEM files named by `paths`.
    pub fn load(paths: &CertPaths) -> Result<Self, PkiError> {
        let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, PkiError> {
            let bad = |reason: String| PkiError::BadPem {
                path: path.to_path_buf(),
                reason,
            };
            let data = read_file(path)?;
            let certs = CertificateDer::pem_slice_iter(data.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate found".into()));
            }
            Ok(certs)
        };
        let ca = certs(&paths.ca_cert)?;
        let chain = certs(&paths.node_cert)?;
        let key_pem = read_file(&paths.node_key)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::BadPem {
                path: paths.node_key.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { ca, chain, key })
    }

    /// Checks this node's own chain the way peers will: signed by the cluster CA, within
    /// its validity window, valid for [`MESH_SERVER_NAME`]. Fails fast with a clear error
    /// instead of a node that silently cannot talk to anyone.
    pub fn verify(&self) -> Result<(), PkiError> {
        let invalid = |e: &dyn std::fmt::Display| PkiError::InvalidCertificate(e.to_string());
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in &self.ca {
            roots.add(ca.clone()).map_err(|e| invalid(&e))?;
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| invalid(&e))?;
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| PkiError::InvalidCertificate("empty chain".into()))?;
        let name =
            rustls::pki_types::ServerName::try_from(MESH_SERVER_NAME).map_err(|e| invalid(&e))?;
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            verifier.as_ref(),
            leaf,
            intermediates,
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|e| invalid(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        assert!(matches!(init_ca(&ca), Err(PkiError::CaExists(_))));
        let node = dir.path().join("n1");
        issue_node_cert(&ca, "n1", &node, Duration::from_secs(60)).unwrap();
        let loaded = NodeCerts::load(&CertPaths::new(&ca, &node)).unwrap();
        assert_eq!(loaded.ca.len(), 1);
        assert_eq!(loaded.chain.len(), 2);
        loaded.verify().unwrap();
        // A cert from another CA, checked against ours, is rejected.
        let other = dir.path().join("other");
        init_ca(&other).unwrap();
        issue_node_cert(&other, "n1", &node, Duration::from_secs(60)).unwrap();
        let foreign = NodeCerts::load(&CertPaths::new(&ca, &node)).unwrap();
        assert!(matches!(
            foreign.verify(),
            Err(PkiError::InvalidCertificate(_))
        ));
        assert!(matches!(
            issue_node_cert(&ca, "Bad Name", &node, Duration::from_secs(60)),
            Err(PkiError::InvalidNodeName(_))
        ));
    }

    #[test]
    fn dev_certs_share_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("shared-ca");
        let a = ensure_dev_certs(&dir.path().join("a"), "a", Some(&ca)).unwrap();
        let b = ensure_dev_certs(&dir.path().join("b"), "b", Some(&ca)).unwrap();
        assert_eq!(a.ca_cert, b.ca_cert);
        // Idempotent.
        let a2 = ensure_dev_certs(&dir.path().join("a"), "a", Some(&ca)).unwrap();
        assert_eq!(a, a2);
    }
}
