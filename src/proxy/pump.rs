//! The two directions of an established session. Frames go through as raw bytes, many per write; only the
//! headers are read, plus ReadyForQuery's status byte. Each pump reads again only after its write has
//! completed, so a slow reader on one side throttles the other instead of growing pgshift's buffers.

use super::pending::{Matched, Pending, Request};
use super::session::SessionError;
use super::Phase;
use crate::metrics;
use crate::protocol::frame::{Flow, FrameError, Scanner, Seen};
use crate::protocol::messages;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Read buffer sizes. A buffer grows past these only to hold one inspected frame.
pub const CLIENT_BUF: usize = 8 * 1024;
pub const UPSTREAM_BUF: usize = 32 * 1024;

/// Ensures room for a full-sized read; `reserve` reuses the allocation once everything was forwarded.
fn make_room(buf: &mut BytesMut, size: usize) {
    if buf.capacity() - buf.len() < size / 4 {
        buf.reserve(size);
    }
}

#[derive(Debug)]
pub enum ClientExit {
    /// The client sent Terminate (forwarded).
    Terminated,
    Eof,
}

#[derive(Debug)]
pub enum UpstreamExit {
    Eof,
    /// Shutdown was draining and the session reached an idle point.
    Drained,
    /// The drain timeout passed.
    Shutdown,
}

/// Client to upstream: forwards frames and tells the other pump which responses to expect.
pub struct ClientPump {
    buf: BytesMut,
    scanner: Scanner,
    expect: mpsc::UnboundedSender<Request>,
    writing: bool,
}

impl ClientPump {
    pub fn new(mut buf: BytesMut, expect: mpsc::UnboundedSender<Request>) -> Self {
        make_room(&mut buf, CLIENT_BUF);
        ClientPump {
            buf,
            scanner: Scanner::default(),
            expect,
            writing: false,
        }
    }

    /// True if the upstream stream is at a frame boundary, so pgshift may still send it a Terminate.
    pub fn is_clean(&self) -> bool {
        !self.writing && !self.scanner.mid_frame()
    }

    pub async fn run<R, W>(
        &mut self,
        client: &mut R,
        upstream: &mut W,
    ) -> Result<ClientExit, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let handles = metrics::handles();
        loop {
            // Scan before reading: bytes left over from the startup phase (a pipelined first query) go first.
            let expect = &self.expect;
            let (len, flow) = self
                .scanner
                .scan::<FrameError>(
                    &self.buf,
                    |_| false,
                    |seen| {
                        let tag = match seen {
                            Seen::Frame(tag, _) => tag,
                            Seen::Streamed(header) => header.tag,
                        };
                        handles.message(tag).increment(1);
                        if let Some(request) = Request::from_tag(tag) {
                            // The receiver lives as long as the session; a send error means it is ending anyway.
                            let _ = expect.send(request);
                        }
                        Ok(if tag == b'X' {
                            Flow::Stop
                        } else {
                            Flow::Continue
                        })
                    },
                )
                .map_err(|e| SessionError::ClientProtocol(e.to_string()))?;
            if len > 0 {
                self.writing = true;
                upstream
                    .write_all(&self.buf[..len])
                    .await
                    .map_err(SessionError::UpstreamIo)?;
                self.writing = false;
                self.buf.advance(len);
                if flow == Flow::Stop {
                    return Ok(ClientExit::Terminated);
                }
            }
            make_room(&mut self.buf, CLIENT_BUF);
            let n = client
                .read_buf(&mut self.buf)
                .await
                .map_err(SessionError::ClientIo)?;
            if n == 0 {
                return Ok(ClientExit::Eof);
            }
            handles.bytes_from_client.increment(n as u64);
        }
    }
}

/// Upstream to client: forwards responses, matches them to requests and tracks the transaction status.
pub struct UpstreamPump {
    buf: BytesMut,
    scanner: Scanner,
    expected: mpsc::UnboundedReceiver<Request>,
    pending: Pending,
    /// From the last ReadyForQuery: `I`, `T` or `E`.
    status: u8,
    writing: bool,
    phase: watch::Receiver<Phase>,
}

impl UpstreamPump {
    pub fn new(
        buf: BytesMut,
        expected: mpsc::UnboundedReceiver<Request>,
        phase: watch::Receiver<Phase>,
    ) -> Self {
        UpstreamPump {
            buf,
            scanner: Scanner::default(),
            expected,
            pending: Pending::default(),
            status: b'I',
            writing: false,
            phase,
        }
    }

    /// True if the client stream is at a frame boundary, so pgshift may still send it an error.
    pub fn is_clean(&self) -> bool {
        !self.writing && !self.scanner.mid_frame()
    }

    /// Between transactions with nothing owed: the point where a draining session may be closed.
    fn is_idle(&self) -> bool {
        self.status == b'I'
            && self.pending.is_idle()
            && self.buf.is_empty()
            && !self.scanner.mid_frame()
    }

    fn take_expected(&mut self) {
        while let Ok(request) = self.expected.try_recv() {
            self.pending.push(request);
        }
    }

    pub async fn run<R, W>(
        &mut self,
        upstream: &mut R,
        client: &mut W,
    ) -> Result<UpstreamExit, SessionError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let handles = metrics::handles();
        loop {
            // Both pumps run in one task, so the other pump is parked at an await point here: every request
            // it has forwarded is already in the channel.
            self.take_expected();
            let phase = *self.phase.borrow_and_update();
            match phase {
                Phase::Closing => return Ok(UpstreamExit::Shutdown),
                Phase::Draining if self.is_idle() => return Ok(UpstreamExit::Drained),
                _ => {}
            }
            make_room(&mut self.buf, UPSTREAM_BUF);
            let n = tokio::select! {
                biased;
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return Ok(UpstreamExit::Shutdown);
                    }
                    continue;
                }
                n = upstream.read_buf(&mut self.buf) => n.map_err(SessionError::UpstreamIo)?,
            };
            if n == 0 {
                return Ok(UpstreamExit::Eof);
            }
            handles.bytes_from_upstream.increment(n as u64);
            self.take_expected();
            let (pending, status) = (&mut self.pending, &mut self.status);
            let (len, _) = self
                .scanner
                .scan::<FrameError>(&self.buf, |tag| tag == b'Z', |seen| {
                    let tag = match seen {
                        Seen::Frame(b'Z', frame) => {
                            *status = messages::ready_status(frame)?;
                            b'Z'
                        }
                        Seen::Frame(tag, _) => tag,
                        Seen::Streamed(header) => header.tag,
                    };
                    if let Matched::Unexpected = pending.on_backend(tag) {
                        tracing::debug!(tag = %(tag as char), "response matched no pending request");
                    }
                    Ok(Flow::Continue)
                })
                .map_err(SessionError::UpstreamProtocol)?;
            if len == 0 {
                continue;
            }
            self.writing = true;
            client
                .write_all(&self.buf[..len])
                .await
                .map_err(SessionError::ClientIo)?;
            self.writing = false;
            self.buf.advance(len);
        }
    }
}
