//! Listening sockets: binding a member's `http://` and `https://` URLs and accepting
//! connections (Nagle's algorithm off, TLS handshakes on `https://` listeners). Shared by the
//! peer server and the client (gRPC) server.
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

use crate::api::identity::ClientConnectInfo;
use crate::error::StoreError;
use crate::tls::{Tls, client_identity};

/// Connections per listener that finished their handshake and wait to be served.
const ACCEPTED_BACKLOG: usize = 64;
/// TLS handshakes in progress per listener; past it, accepting waits (each handshake ends
/// within [`crate::tls::HANDSHAKE_TIMEOUT`]).
const MAX_HANDSHAKES: usize = 256;

/// A bound URL.
#[derive(Debug)]
pub struct Listener {
    pub url: String,
    pub tcp: TcpListener,
    /// An `https://` URL: connections speak TLS.
    pub secure: bool,
}

/// The `host:port` and whether it is `https` of a listen URL.
fn host_port(url: &str) -> Result<(&str, bool), StoreError> {
    let (rest, secure) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else {
        return Err(StoreError::Config(format!(
            "{url}: only http:// and https:// URLs are supported"
        )));
    };
    Ok((rest.trim_end_matches('/'), secure))
}

/// The listen backlog asked for: the kernel caps it at `net.core.somaxconn`, so a listener
/// queues as many connections as the host allows, as Go's (etcd's) listeners do. tokio's
/// `TcpListener::bind` asks for 128, as std does: thousands of nodes (re)connecting at once
/// overflow it, and the kernel drops their SYNs (a second lost per retry) or sends cookies.
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds every URL.
pub async fn bind_all(urls: &[String]) -> Result<Vec<Listener>, StoreError> {
    let mut listeners = Vec::new();
    for url in urls {
        let (host_port, secure) = host_port(url)?;
        let tcp = bind(host_port)
            .await
            .map_err(|e| StoreError::Config(format!("listening on {url}: {e}")))?;
        listeners.push(Listener {
            url: url.clone(),
            tcp,
            secure,
        });
    }
    Ok(listeners)
}

/// A listener on the first address `host_port` resolves to that can be bound (as
/// `TcpListener::bind`), with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (as std sets it).
async fn bind(host_port: &str) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(host_port).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Accepted TCP connections with Nagle's algorithm off (tonic only sets TCP_NODELAY on
/// listeners it binds itself); small gRPC and peer frames would otherwise wait for delayed ACKs.
pub fn incoming(listener: TcpListener) -> impl futures::Stream<Item = io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("setting TCP_NODELAY: {e}");
            }
        })
    })
}

/// How many connections each client address holds open, across the listeners that share it
/// (`--max-connections-per-client`).
#[derive(Debug, Clone)]
pub struct PerClient {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerClient {
    pub fn new(limit: usize) -> Self {
        PerClient {
            limit,
            open: Arc::default(),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection from `ip`, or `None` when it has its limit.
    fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open();
        let count = open.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Admitted {
            ip,
            clients: self.clone(),
        })
    }
}

/// One admitted connection's place, given back when the connection is dropped.
#[derive(Debug)]
struct Admitted {
    ip: IpAddr,
    clients: PerClient,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.clients.open();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection past the limit hears before it is closed: the server's HTTP/2 SETTINGS
/// and a GOAWAY (ENHANCE_YOUR_CALM) whose debug data says why, which gRPC clients report.
fn refusal(limit: usize) -> Vec<u8> {
    let reason = format!(
        "too many connections from this address (at most {limit}, --max-connections-per-client)"
    );
    let mut bytes = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let length = (8 + reason.len()) as u32;
    bytes.extend_from_slice(&length.to_be_bytes()[1..]);
    bytes.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&0xbu32.to_be_bytes());
    bytes.extend_from_slice(reason.as_bytes());
    bytes
}

/// Admits `connection` under `per_client`'s limit, or tells it why not and closes it.
async fn admit(mut connection: Connection, per_client: &Option<PerClient>) -> Option<Connection> {
    let (Some(clients), Some(remote)) = (per_client, connection.info.remote) else {
        return Some(connection);
    };
    match clients.admit(remote.ip()) {
        Some(admitted) => {
            connection._admitted = Some(admitted);
            Some(connection)
        }
        None => {
            tracing::warn!(%remote, limit = clients.limit, "refusing a connection: too many from its address");
            let refusal = refusal(clients.limit);
            tokio::spawn(async move {
                let written = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    connection.write_all(&refusal).await?;
                    connection.shutdown().await
                });
                if let Ok(Err(e)) = written.await {
                    tracing::debug!("telling a refused connection why: {e}");
                }
            });
            None
        }
    }
}

/// The connections of `listener`, TLS ones once their handshake succeeded (each handshake runs
/// in a task of its own, so a slow client holds up nobody). `tls` is required for an
/// `https://` listener and ignored, with a warning, for an `http://` one (as etcd does). With
/// `per_client`, an address past its limit of connections is refused.
pub fn connections(
    listener: Listener,
    tls: Option<Arc<Tls>>,
    per_client: Option<PerClient>,
) -> Result<impl futures::Stream<Item = io::Result<Connection>>, StoreError> {
    let tls = match (listener.secure, tls) {
        (true, None) => {
            return Err(StoreError::Config(format!(
                "{}: an https URL needs a certificate and key",
                listener.url
            )));
        }
        (true, tls) => tls,
        (false, Some(_)) => {
            tracing::warn!(
                "{} is http: serving it without TLS although certificate files are given",
                listener.url
            );
            None
        }
        (false, None) => None,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(incoming(listener.tcp));
        while let Some(stream) = accepted.next().await {
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    if sender.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let remote = stream.peer_addr().ok();
            match &tls {
                None => {
                    let connection = Connection {
                        stream: Stream::Plain(stream),
                        info: ClientConnectInfo {
                            remote,
                            certificate: None,
                        },
                        _admitted: None,
                    };
                    let Some(connection) = admit(connection, &per_client).await else {
                        continue;
                    };
                    if sender.send(Ok(connection)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let Ok(permit) = handshakes.clone().acquire_owned().await else {
                        return;
                    };
                    let (tls, sender) = (tls.clone(), sender.clone());
                    let per_client = per_client.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tls.accept(stream).await {
                            Ok(stream) => {
                                // etcd takes a certificate's CN for the user only with
                                // --client-cert-auth, not with a trusted CA file alone.
                                let certificate = tls
                                    .files()
                                    .client_cert_auth
                                    .then(|| client_identity(stream.get_ref().1))
                                    .flatten();
                                let connection = Connection {
                                    stream: Stream::Tls(Box::new(stream)),
                                    info: ClientConnectInfo {
                                        remote,
                                        certificate,
                                    },
                                    _admitted: None,
                                };
                                if let Some(connection) = admit(connection, &per_client).await {
                                    let _ = sender.send(Ok(connection)).await;
                                }
                            }
                            Err(e) => tracing::debug!(?remote, "TLS handshake refused: {e}"),
                        }
                    });
                }
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// An accepted connection, plain or TLS, and who is on the other end.
pub struct Connection {
    stream: Stream,
    info: ClientConnectInfo,
    /// Its place under `--max-connections-per-client`, held while it is open.
    _admitted: Option<Admitted>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connection {
    pub fn info(&self) -> &ClientConnectInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ClientConnectInfo;

    fn connect_info(&self) -> ClientConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::bind;

    /// A burst of connections larger than tokio's default backlog (128, of which 129 complete)
    /// all complete while nothing accepts them: the kernel queues them up to
    /// `net.core.somaxconn`.
    #[tokio::test]
    async fn a_burst_past_tokios_default_backlog_is_queued_not_dropped() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("somaxconn")
            .trim()
            .parse()
            .expect("a number");
        let burst = 1_500.min(somaxconn);
        assert!(
            burst > 1_024,
            "net.core.somaxconn {somaxconn} caps the backlog at tokio's"
        );
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let connects = (0..burst).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, burst, "connections completed without an accept");
        drop(listener);
    }
}
