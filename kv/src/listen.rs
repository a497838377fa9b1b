//! Listening sockets: binding a member's `http://host:port` URLs and accepting connections with
//! Nagle's algorithm off. Shared by the peer server and the client (gRPC) server.
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::StoreError;

/// Binds every URL (only `http://` URLs are supported).
pub async fn bind_all(urls: &[String]) -> Result<Vec<TcpListener>, StoreError> {
    let mut listeners = Vec::new();
    for url in urls {
        let host_port = url
            .strip_prefix("http://")
            .ok_or_else(|| StoreError::Config(format!("{url}: only http:// URLs are supported")))?
            .trim_end_matches('/');
        let listener = TcpListener::bind(host_port)
            .await
            .map_err(|e| StoreError::Config(format!("listening on {url}: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepted connections with Nagle's algorithm off (tonic only sets TCP_NODELAY on listeners
/// it binds itself); small gRPC and peer frames would otherwise wait for delayed ACKs.
pub fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("setting TCP_NODELAY: {e}");
            }
        })
    })
}
