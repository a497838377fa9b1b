//! Who is on the other end of a client connection, as the listener learned it: tonic puts the
//! connection's [`ClientConnectInfo`] into the extensions of every request it carries, where
//! authentication reads it (with `--client-cert-auth`, etcd takes the verified client
//! certificate's common name as the user when a request carries no token).
use std::net::SocketAddr;

/// What every request of a client connection carries in its extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientConnectInfo {
    /// The client's address, when the transport has one.
    pub remote: Option<SocketAddr>,
    /// The client's certificate, verified against the trusted CA during the TLS handshake, on
    /// a listener with `--client-cert-auth` (etcd ignores it otherwise).
    pub certificate: Option<CertificateIdentity>,
}

/// A verified client certificate, as much of it as authorization needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The certificate subject's common name (etcd's user name for the connection).
    pub common_name: String,
}
