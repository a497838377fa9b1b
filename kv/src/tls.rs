//! TLS for a member: etcd's certificate flags (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth` and their `--peer-` twins) turned into rustls configurations for the
//! client listener, the peer listener and the peer dialer, re-read when their files change.
//!
//! [`Tls`] checks the files' modification time, length and inode at most once every
//! [`CHECK_INTERVAL`] when a connection is made, and loads them again if any changed: new
//! connections get the new certificate, key and CA bundle, established ones keep theirs. A
//! file that does not load (half-written during a rotation) leaves the previous configuration
//! in place until the next change. etcd re-reads certificates but never its CA (etcd#11555).
//!
//! As etcd's `TLSInfo.ServerConfig`: a trusted CA file or `--client-cert-auth` makes the server
//! require a client certificate that CA signed; the client listener offers ALPN `h2`.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::api::identity::CertificateIdentity;

/// How often, at most, the files are checked for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One listener's (or the peer dialer's) certificate flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify client certificates (implied by a trusted CA file, as in etcd).
    pub client_cert_auth: bool,
}

impl TlsFiles {
    /// Whether connecting clients must present a certificate the trusted CA signed.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_cert_auth || self.trusted_ca_file.is_some()
    }

    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert_file.as_path(), self.key_file.as_path()];
        paths.extend(self.trusted_ca_file.as_deref());
        paths
    }
}

/// Why TLS files could not be turned into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("--client-cert-auth needs a trusted CA file to verify client certificates with")]
    NoTrustedCa,
    #[error("{what}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the trusted CA file {}", .0.display())]
    Verifier(PathBuf, #[source] rustls::server::VerifierBuilderError),
}

/// What identifies a file's contents cheaply: a rotation changes at least one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// The configurations made from one set of files.
struct Loaded {
    server: Arc<ServerConfig>,
    /// For dialing peers; `None` without a trusted CA (nothing to verify a server with).
    client: Option<Arc<ClientConfig>>,
}

struct State {
    loaded: Loaded,
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
}

/// A listener's or dialer's TLS, re-read from its files when they change.
pub struct Tls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files (an error if they do not load); `alpn` is what the server offers.
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        if files.client_cert_auth && files.trusted_ca_file.is_none() {
            return Err(TlsError::NoTrustedCa);
        }
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let stamps = files.paths().into_iter().map(stamp).collect();
        let loaded = load(&files, &alpn)?;
        Ok(Arc::new(Self {
            files,
            alpn,
            state: Mutex::new(State {
                loaded,
                stamps,
                checked: Instant::now(),
            }),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The server configuration for a connection accepted now.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current(|loaded| loaded.server.clone())
    }

    /// The client configuration for dialing a peer now: our certificate, the CA to verify it by.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.current(|loaded| loaded.client.clone())
    }

    fn current<T>(&self, pick: impl Fn(&Loaded) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= CHECK_INTERVAL {
            state.checked = Instant::now();
            self.reload_if_changed(&mut state);
        }
        pick(&state.loaded)
    }

    fn reload_if_changed(&self, state: &mut State) {
        let stamps: Vec<Option<Stamp>> = self.files.paths().into_iter().map(stamp).collect();
        if stamps == state.stamps {
            return;
        }
        state.stamps = stamps;
        match load(&self.files, &self.alpn) {
            Ok(loaded) => {
                tracing::info!(cert = %self.files.cert_file.display(), "TLS files changed: reloaded");
                state.loaded = loaded;
            }
            Err(e) => tracing::warn!(
                "TLS files changed but do not load, keeping the previous ones: {}",
                crate::error::chain(&e)
            ),
        }
    }

    /// Accepts a TLS connection on `stream` with the current configuration, within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<S>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }

    /// Connects TLS on `stream` to the server named `host` (a DNS name or an IP address its
    /// certificate must carry).
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        host: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let config = self.client_config().ok_or_else(|| {
            invalid("a TLS peer needs --peer-trusted-ca-file to verify it by".to_string())
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| invalid(format!("{host}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
    }
}

/// The verified certificate a TLS client presented, as much as authorization needs (its
/// subject's common name).
pub fn client_identity(connection: &rustls::ServerConnection) -> Option<CertificateIdentity> {
    let der = connection.peer_certificates()?.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(CertificateIdentity { common_name })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|source| TlsError::Rustls {
            what: format!("adding a CA certificate of {}", path.display()),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn rustls_error(what: &str, files: &TlsFiles) -> impl FnOnce(rustls::Error) -> TlsError {
    let what = format!("{what} ({})", files.cert_file.display());
    move |source| TlsError::Rustls { what, source }
}

fn load(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<Loaded, TlsError> {
    let chain = certificates(&files.cert_file)?;
    let key = private_key(&files.key_file)?;
    let roots = files.trusted_ca_file.as_deref().map(roots).transpose()?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error("TLS versions", files))?;
    let builder = match (&roots, files.requires_client_certificates()) {
        (Some(roots), true) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| {
                    TlsError::Verifier(files.trusted_ca_file.clone().unwrap_or_default(), e)
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err(TlsError::NoTrustedCa),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(rustls_error("the certificate and key", files))?;
    server.alpn_protocols = alpn.to_vec();
    let client = match roots {
        Some(roots) => {
            let client = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(rustls_error("TLS versions", files))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(rustls_error("the certificate and key", files))?;
            Some(Arc::new(client))
        }
        None => None,
    };
    Ok(Loaded {
        server: Arc::new(server),
        client,
    })
}
