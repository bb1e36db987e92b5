//! Why a session ended abnormally: what both pumps and the session's phases return.

use crate::error::ClientError;
use crate::protocol::frame::FrameError;
use crate::protocol::startup::StartupError;
use std::time::Duration;

/// Why a session ended abnormally. Each variant names the side at fault.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("upstream I/O: {0}")]
    UpstreamIo(std::io::Error),
    #[error("client broke the protocol: {0}")]
    ClientProtocol(String),
    #[error("client sent a bad startup packet: {0}")]
    Startup(StartupError),
    #[error("upstream broke the protocol: {0}")]
    UpstreamProtocol(FrameError),
    #[error("client TLS handshake failed: {0}")]
    ClientTls(std::io::Error),
    #[error("client did not complete startup within {0:?}")]
    StartupTimeout(Duration),
    /// pgshift refused the session and has told the client why.
    #[error("refused: {0}")]
    Refused(ClientError),
}
