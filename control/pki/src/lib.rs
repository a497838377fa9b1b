//! A cluster's certificates: a certificate authority ([`Authority`]) and the server, peer and
//! client certificates it signs ([`Request`], [`Issued`]), as PEM files in etcd's usual layout
//! (`ca.pem`, `ca-key.pem`, `<name>.pem`, `<name>-key.pem`).
//!
//! Keys are ECDSA P-256 (what Go's and rustls' TLS stacks both accept) and every private key is
//! written owner-only (0600) into an owner-only directory (0700) from the moment it exists: a
//! key file is never readable by others, not even between its creation and a `chmod`.
mod cluster;

pub use cluster::{
    CLIENTS, ClusterNode, FLANNEL, FLEET, PEER, ROOT, SERVER, issue_cluster, node_dir,
};

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The CA certificate's file name in a PKI directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a PKI directory.
pub const CA_KEY: &str = "ca-key.pem";

/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::days(10 * 365);
/// How long a certificate the CA signs is valid unless the request says otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::days(365);
/// Allowance for clocks that run behind the signer's.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, PkiError>;

fn certificate_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Certificate { what, source }
}

/// What a certificate is for, which decides its extended key usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (a store's client port, a health endpoint).
    Server,
    /// A store member's peer port: it serves its peers and dials them with the same
    /// certificate, so it is both a server and a client.
    Peer,
    /// A client that proves who it is (etcd takes the common name as the user).
    Client,
}

impl Usage {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// A certificate to issue: its subject's common name, the DNS names and IP addresses it is valid
/// for (servers and peers), what it is for and how long it lasts.
#[derive(Debug, Clone)]
pub struct Request {
    pub common_name: String,
    pub hosts: Vec<String>,
    pub usage: Usage,
    pub validity: Duration,
}

impl Request {
    /// A certificate for `common_name`, valid for [`DEFAULT_VALIDITY`] and no host names.
    pub fn new(common_name: impl Into<String>, usage: Usage) -> Self {
        Self {
            common_name: common_name.into(),
            hosts: Vec::new(),
            usage,
            validity: DEFAULT_VALIDITY,
        }
    }

    /// Adds DNS names or IP addresses (each parsed as an IP address when it is one).
    pub fn hosts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.hosts.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Sets how long the certificate is valid.
    pub fn validity(mut self, validity: Duration) -> Self {
        self.validity = validity;
        self
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// Where [`Issued::write`] put a certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// Writes `<dir>/<name>.pem` (0644) and `<dir>/<name>-key.pem` (0600), creating `dir`
    /// owner-only if it does not exist.
    pub fn write(&self, dir: &Path, name: &str) -> Result<Files> {
        create_private_dir(dir)?;
        let files = Files {
            certificate: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        write_file(&files.certificate, self.certificate_pem.as_bytes(), 0o644)?;
        write_file(&files.key, self.key_pem.as_bytes(), 0o600)?;
        Ok(files)
    }
}

/// A certificate authority that signs a cluster's certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid for ten years.
    pub fn create(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate().map_err(certificate_error("generating the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let certificate = params
            .self_signed(&key)
            .map_err(certificate_error("signing the CA certificate"))?;
        Ok(Self {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA whose certificate and key are `ca.pem` and `ca-key.pem` in `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let certificate_pem = read_file(&dir.join(CA_CERT))?;
        let key_pem = read_file(&dir.join(CA_KEY))?;
        let key = KeyPair::from_pem(&key_pem).map_err(certificate_error(format!(
            "parsing {}",
            dir.join(CA_KEY).display()
        )))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key).map_err(certificate_error(
            format!("parsing {}", dir.join(CA_CERT).display()),
        ))?;
        Ok(Self {
            issuer,
            certificate_pem,
            key_pem,
        })
    }

    /// Reads the CA in `dir`, or creates one named `common_name` and writes it there.
    pub fn read_or_create(dir: &Path, common_name: &str) -> Result<Self> {
        if dir.join(CA_CERT).exists() {
            return Self::read(dir);
        }
        let authority = Self::create(common_name)?;
        authority.write(dir)?;
        Ok(authority)
    }

    /// Writes `ca.pem` (0644) and `ca-key.pem` (0600) into `dir` (created 0700).
    pub fn write(&self, dir: &Path) -> Result<Files> {
        Issued {
            certificate_pem: self.certificate_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
        .write(dir, "ca")
    }

    /// The CA certificate, PEM-encoded: what clients and peers trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Signs a new certificate with a new key.
    pub fn issue(&self, request: &Request) -> Result<Issued> {
        let what = format!("issuing a certificate for {:?}", request.common_name);
        let key = KeyPair::generate().map_err(certificate_error(what.clone()))?;
        let mut params =
            CertificateParams::new(request.hosts.clone()).map_err(certificate_error(&*what))?;
        params.distinguished_name = name(&request.common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = request.usage.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, request.validity);
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(certificate_error(what))?;
        Ok(Issued {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
}

/// Creates `dir` (and its parents) owner-only if it does not exist yet.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `path` with `mode`: a new file is created with that mode; an existing one gets the
/// mode before its contents are replaced, so a key never sits in a file others can read.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let io_error = |action| {
        move |source| PkiError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
        .map_err(io_error("opening"))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("setting the mode of"))?;
    file.set_len(0).map_err(io_error("truncating"))?;
    file.write_all(contents).map_err(io_error("writing"))?;
    file.sync_all().map_err(io_error("syncing"))
}

fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
        pem.contents
    }

    #[test]
    fn a_server_certificate_names_its_hosts_and_is_signed_by_the_ca() {
        let ca = Authority::create("shoal test CA").expect("CA");
        let issued = ca
            .issue(&Request::new("node-1", Usage::Server).hosts(["10.0.0.1", "node-1.local"]))
            .expect("issued");
        let ca_der = parse(ca.certificate_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("CA parses");
        let der = parse(&issued.certificate_pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("certificate parses");

        assert!(ca_cert.is_ca());
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        let cn = cert.subject().iter_common_name().next().expect("a CN");
        assert_eq!(cn.as_str().expect("utf-8"), "node-1");
        let sans = cert
            .subject_alternative_name()
            .expect("parses")
            .expect("has SANs");
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        assert_eq!(names, ["IPAddress(0a:00:00:01)", "DNSName(node-1.local)"]);
        let usage = cert.extended_key_usage().expect("parses").expect("has EKU");
        assert!(usage.value.server_auth && !usage.value.client_auth);
    }

    #[test]
    fn peer_certificates_serve_and_dial_client_certificates_only_dial() {
        let ca = Authority::create("ca").expect("CA");
        for (usage, server, client) in [(Usage::Peer, true, true), (Usage::Client, false, true)] {
            let issued = ca.issue(&Request::new("x", usage)).expect("issued");
            let der = parse(&issued.certificate_pem);
            let (_, cert) = X509Certificate::from_der(&der).expect("parses");
            let eku = cert.extended_key_usage().expect("ok").expect("EKU").value;
            assert_eq!(
                (eku.server_auth, eku.client_auth),
                (server, client),
                "{usage:?}"
            );
        }
    }

    #[test]
    fn a_written_ca_reads_back_and_keys_are_owner_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join("pki");
        let created = Authority::read_or_create(&pki, "ca").expect("created");
        let read = Authority::read_or_create(&pki, "ignored").expect("read back");
        assert_eq!(created.certificate_pem(), read.certificate_pem());

        let issued = read
            .issue(&Request::new("root", Usage::Client))
            .expect("issued by the read CA");
        let files = issued.write(&pki, "root").expect("written");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(mode(&pki.join(CA_KEY)), 0o600);
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.certificate), 0o644);

        let ca_der = parse(read.certificate_pem());
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("CA");
        let der = parse(&issued.certificate_pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("parses");
        cert.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA read back from disk");
    }

    #[test]
    fn rewriting_a_world_readable_file_makes_it_private_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key.pem");
        fs::write(&path, "old").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        write_file(&path, b"secret", 0o600).expect("written");
        assert_eq!(fs::read_to_string(&path).expect("read"), "secret");
        assert_eq!(
            fs::metadata(&path).expect("metadata").permissions().mode() & 0o777,
            0o600
        );
    }
}
