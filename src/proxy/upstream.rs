//! Connecting to the upstream PostgreSQL: TCP or unix socket, then TLS per sslmode.

use super::stream::Stream;
use crate::config::model::UpstreamTlsMode;
use crate::config::{Upstream, UpstreamTarget};
use crate::protocol::startup::encode_ssl_request;
use crate::protocol::tls::UpstreamTls;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server does not support TLS, but upstream.tls.mode is {0:?}")]
    TlsUnsupported(UpstreamTlsMode),
    #[error("unexpected answer {0:?} to SSLRequest")]
    BadSslAnswer(u8),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl UpstreamError {
    /// Short label for the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Io(_) => "io",
            UpstreamError::TlsUnsupported(_)
            | UpstreamError::BadSslAnswer(_)
            | UpstreamError::Tls(_) => "tls",
        }
    }
}

/// Opens a connection to the upstream and negotiates TLS; the caller sends the startup packet.
pub async fn connect(
    upstream: &Upstream,
    tls: &UpstreamTls,
    timeout: Duration,
) -> Result<Stream, UpstreamError> {
    tokio::time::timeout(timeout, connect_inner(upstream, tls))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

async fn connect_inner(upstream: &Upstream, tls: &UpstreamTls) -> Result<Stream, UpstreamError> {
    let mut tcp = match &upstream.target {
        UpstreamTarget::Unix(path) => return Ok(Stream::Unix(UnixStream::connect(path).await?)),
        UpstreamTarget::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await?,
    };
    tcp.set_nodelay(true)?;
    let Some((connector, server_name)) = tls.connector() else {
        return Ok(Stream::Tcp(tcp));
    };
    tcp.write_all(&encode_ssl_request()).await?;
    // Read exactly one byte: anything after it must come through TLS (CVE-2021-23222).
    match tcp.read_u8().await? {
        b'S' => {
            let stream = connector
                .connect(server_name.clone(), tcp)
                .await
                .map_err(UpstreamError::Tls)?;
            Ok(Stream::ClientTls(Box::new(stream)))
        }
        b'N' if tls.mode == UpstreamTlsMode::Prefer => Ok(Stream::Tcp(tcp)),
        b'N' => Err(UpstreamError::TlsUnsupported(tls.mode)),
        other => Err(UpstreamError::BadSslAnswer(other)),
    }
}
