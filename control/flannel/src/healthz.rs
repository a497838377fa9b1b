//! `--healthz-ip/--healthz-port`: answers `GET /healthz` with 200 while the overlay runs.
use std::net::SocketAddr;

use shoal_store_client::Chain;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Binds the health endpoint; the returned listener is served by [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves health checks until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read = stream.read(&mut request).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..read]);
            let response = if head.starts_with("GET /healthz") {
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            if let Err(err) = stream.write_all(response.as_bytes()).await {
                tracing::debug!("answering a health check: {}", Chain(&err));
            }
        });
    }
}
