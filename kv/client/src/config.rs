//! How to reach the store: the endpoints (validated), the timeout and keep-alive, and the TLS
//! files and credentials, turned into etcd-client's connect options in one place.

use std::{fmt, path::PathBuf, time::Duration};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::error::{StoreError, StoreResult};

/// The request timeout when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The keep-alive ping interval when none is configured.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Everything needed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Tried in order; see [`Endpoint::parse`] for the accepted forms.
    pub endpoints: Vec<String>,
    /// Bounds connecting and every request made through [`crate::StoreClient::call`].
    pub timeout: Duration,
    /// HTTP/2 ping interval (the ping itself times out after `timeout`); `None` for no pings.
    pub keep_alive: Option<Duration>,
    pub tls: Option<TlsFiles>,
    pub credentials: Option<Credentials>,
}

impl StoreConfig {
    /// Plain connections to `endpoints` with the default timeout and keep-alive.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: DEFAULT_TIMEOUT,
            keep_alive: Some(DEFAULT_KEEP_ALIVE),
            tls: None,
            credentials: None,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The endpoints, parsed; bare `host:port` gets `https://` when TLS is configured.
    pub fn parsed_endpoints(&self) -> StoreResult<Vec<Endpoint>> {
        if self.endpoints.is_empty() {
            return Err(StoreError::NoEndpoints);
        }
        let tls = self.tls.as_ref().is_some_and(|tls| !tls.is_empty());
        self.endpoints
            .iter()
            .map(|text| Endpoint::parse(text, tls))
            .collect()
    }

    /// etcd-client's options for this config (reads the TLS files).
    pub fn connect_options(&self) -> StoreResult<ConnectOptions> {
        let mut options = ConnectOptions::new().with_connect_timeout(self.timeout);
        if let Some(interval) = self.keep_alive {
            options = options.with_keep_alive(interval, self.timeout);
        }
        if let Some(credentials) = &self.credentials {
            options = options.with_user(credentials.user.clone(), credentials.password.clone());
        }
        if let Some(tls) = self.tls.as_ref().filter(|tls| !tls.is_empty()) {
            options = options.with_tls(tls.client_config()?);
        }
        Ok(options)
    }
}

/// PEM files for TLS: the CA that signs the store's certificate, and the client's own
/// certificate and key when the store checks clients. Only the given files are used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The files given, or `None` when they do not turn TLS on (see [`TlsFiles::is_empty`]):
    /// what a component's `ca`/`cert`/`key` options become.
    pub fn given(ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Option<Self> {
        Some(Self { ca, cert, key }).filter(|tls| !tls.is_empty())
    }

    /// True when neither a CA nor a certificate/key pair is given (TLS stays off).
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && (self.cert.is_none() || self.key.is_none())
    }

    /// The TLS configuration of a gRPC channel to the store with these files (etcd-client's
    /// `TlsOptions` is tonic's `ClientTlsConfig`), for a component's own channel too.
    pub fn client_config(&self) -> StoreResult<TlsOptions> {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

fn read(path: &PathBuf) -> StoreResult<Vec<u8>> {
    std::fs::read(path).map_err(|source| StoreError::ReadTlsFile {
        path: path.clone(),
        source,
    })
}

/// A store user and password (etcd's auth).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// One store member's client URL: `http://host:port`, `https://host:port` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
}

impl Endpoint {
    /// Validates `text`; a bare `host:port` gets `https://` if `tls`, else `http://`.
    pub fn parse(text: &str, tls: bool) -> StoreResult<Self> {
        let invalid = |reason| StoreError::InvalidEndpoint {
            endpoint: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        let (scheme, rest) = match trimmed.split_once("://") {
            Some(("http", rest)) => ("http", rest),
            Some(("https", rest)) => ("https", rest),
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None if tls => ("https", trimmed),
            None => ("http", trimmed),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(invalid("an endpoint has no path"));
        }
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err(invalid("expected host:port"));
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(invalid("the host is empty"));
        }
        if port.parse::<u16>().ok().filter(|port| *port != 0).is_none() {
            return Err(invalid("the port is not a number from 1 to 65535"));
        }
        Ok(Self {
            url: format!("{scheme}://{authority}"),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str, tls: bool) -> String {
        Endpoint::parse(text, tls).expect(text).url().to_string()
    }

    #[test]
    fn endpoints_keep_their_scheme_and_bare_ones_get_one() {
        assert_eq!(url("http://127.0.0.1:2379", false), "http://127.0.0.1:2379");
        assert_eq!(url("https://store:2379/", false), "https://store:2379");
        assert_eq!(url("10.0.0.1:2379", false), "http://10.0.0.1:2379");
        assert_eq!(url("10.0.0.1:2379", true), "https://10.0.0.1:2379");
        assert_eq!(url("http://[::1]:2379", true), "http://[::1]:2379");
    }

    #[test]
    fn malformed_endpoints_are_refused() {
        for text in [
            "",
            "store",
            "ftp://store:2379",
            "http://store",
            "http://:2379",
            "http://store:0",
            "http://store:port",
            "http://store:2379/v3",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(text, false),
                    Err(StoreError::InvalidEndpoint { .. })
                ),
                "{text:?} accepted"
            );
        }
    }

    #[test]
    fn a_config_needs_endpoints_and_parses_all() {
        assert!(matches!(
            StoreConfig::new(Vec::<String>::new()).parsed_endpoints(),
            Err(StoreError::NoEndpoints)
        ));
        let config = StoreConfig::new(["a:1", "https://b:2"]).with_tls(TlsFiles {
            ca: Some("/ca.pem".into()),
            ..TlsFiles::default()
        });
        let urls: Vec<String> = config
            .parsed_endpoints()
            .expect("valid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(urls, ["https://a:1", "https://b:2"]);
    }

    #[test]
    fn tls_is_off_without_a_ca_or_a_full_identity() {
        assert!(TlsFiles::default().is_empty());
        let cert_only = TlsFiles {
            cert: Some("/c.pem".into()),
            ..TlsFiles::default()
        };
        assert!(cert_only.is_empty());
        let config = StoreConfig::new(["a:1"]).with_tls(cert_only);
        assert_eq!(
            config.parsed_endpoints().expect("valid")[0].url(),
            "http://a:1"
        );
    }

    #[test]
    fn a_missing_tls_file_is_named() {
        let config = StoreConfig::new(["a:1"]).with_tls(TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        });
        let err = config.connect_options().expect_err("no such file");
        assert_eq!(err.to_string(), "reading /nonexistent/ca.pem");
    }

    #[test]
    fn credentials_do_not_print_the_password() {
        let credentials = Credentials {
            user: "root".into(),
            password: "secret".into(),
        };
        assert!(!format!("{credentials:?}").contains("secret"));
    }
}
