//! The two directions of an established session. Frames go through as raw bytes, many per write; only the
//! headers are read, plus the messages that carry SQL when the session's database has migrations, and the
//! replies that must be reshaped. Each pump reads again only after its write has completed, so a slow reader
//! on one side throttles the other instead of growing pgshift's buffers.

use super::cancel::Gate;
use super::fault::SessionError;
use super::inflight::InFlight;
use super::pending::{Matched, Pending, Request};
use super::respond::{Output, Respond};
use super::statements::{Entry, Statements};
use super::Phase;
use crate::metrics;
use crate::protocol::frame::{Flow, FrameError, Scanner, Seen};
use crate::protocol::messages::{self, encode};
use bytes::{Buf, Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// Read buffer sizes. A buffer grows past these only to hold one inspected frame.
pub const CLIENT_BUF: usize = 8 * 1024;
pub const UPSTREAM_BUF: usize = 32 * 1024;

/// Ensures room for a full-sized read; `reserve` reuses the allocation once everything was forwarded.
fn make_room(buf: &mut BytesMut, size: usize) {
    if buf.capacity() - buf.len() < size / 4 {
        buf.reserve(size);
    }
}

/// What the two pumps of one session share.
#[derive(Debug)]
pub struct SessionState {
    /// Transaction status from the last ReadyForQuery: `I`, `T` or `E`.
    status: AtomicU8,
    /// FIFO entries sent by the client pump and not yet taken by the upstream pump.
    in_channel: AtomicUsize,
    /// The upstream pump's FIFO owes nothing.
    queue_idle: AtomicBool,
    /// The latest application_name the server reported (SET application_name changes it).
    application_name: Mutex<Option<String>>,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            status: AtomicU8::new(b'I'),
            in_channel: AtomicUsize::new(0),
            queue_idle: AtomicBool::new(true),
            application_name: Mutex::new(None),
        }
    }
}

impl SessionState {
    /// Between transactions with nothing in flight: where routes and config snapshots may change.
    fn idle(&self) -> bool {
        self.in_channel.load(Ordering::Acquire) == 0
            && self.queue_idle.load(Ordering::Acquire)
            && self.status.load(Ordering::Acquire) == b'I'
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

/// Client to upstream: forwards frames (rewriting SQL where migrations apply) and tells the other pump which
/// replies to expect and how to shape them.
pub struct ClientPump<'s> {
    buf: BytesMut,
    scanner: Scanner,
    expect: mpsc::UnboundedSender<Entry>,
    state: &'s SessionState,
    statements: Statements,
    out: BytesMut,
    writing: bool,
    gate: &'s Gate,
}

/// A frame seen by the scan, processed after it (processing may wait for the catalog).
enum Scanned {
    Whole { tag: u8, at: usize, len: usize },
    Streamed(u8),
}

impl<'s> ClientPump<'s> {
    pub fn new(
        mut buf: BytesMut,
        expect: mpsc::UnboundedSender<Entry>,
        state: &'s SessionState,
        statements: Statements,
        gate: &'s Gate,
    ) -> Self {
        make_room(&mut buf, CLIENT_BUF);
        ClientPump {
            buf,
            scanner: Scanner::default(),
            expect,
            state,
            statements,
            out: BytesMut::new(),
            writing: false,
            gate,
        }
    }

    /// True if the upstream stream is at a frame boundary, so pgshift may still send it a Terminate.
    pub fn is_clean(&self) -> bool {
        !self.writing && !self.scanner.mid_frame()
    }

    fn send(&self, entry: Entry) {
        self.state.in_channel.fetch_add(1, Ordering::AcqRel);
        // The receiver lives as long as the session; a send error means it is ending anyway.
        let _ = self.expect.send(entry);
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
            let engaged = self.statements.engaged();
            let mut seen = Vec::new();
            let (len, flow) = self
                .scanner
                .scan::<FrameError>(
                    &self.buf,
                    |tag| engaged && tag != b'd',
                    |s| {
                        let (tag, item) = match s {
                            Seen::Frame(tag, frame, at) => (
                                tag,
                                Scanned::Whole {
                                    tag,
                                    at,
                                    len: frame.len(),
                                },
                            ),
                            Seen::Streamed(h) => (h.tag, Scanned::Streamed(h.tag)),
                        };
                        handles.message(tag).increment(1);
                        seen.push(item);
                        Ok(if tag == b'X' {
                            Flow::Stop
                        } else {
                            Flow::Continue
                        })
                    },
                )
                .map_err(|e| SessionError::ClientProtocol(e.to_string()))?;
            if len > 0 {
                if engaged {
                    self.rewrite_batch(&seen, len, upstream).await?;
                } else {
                    for item in &seen {
                        let tag = match item {
                            Scanned::Whole { tag, .. } | Scanned::Streamed(tag) => *tag,
                        };
                        if let Some(request) = Request::from_tag(tag) {
                            self.send(Entry::forward(request));
                        }
                    }
                    self.gate.before_send().await;
                    self.writing = true;
                    upstream
                        .write_all(&self.buf[..len])
                        .await
                        .map_err(SessionError::UpstreamIo)?;
                    self.writing = false;
                }
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

    /// The migration path: SQL-carrying messages go through [`Statements`]; everything else is copied as is.
    async fn rewrite_batch<W: AsyncWrite + Unpin>(
        &mut self,
        seen: &[Scanned],
        len: usize,
        upstream: &mut W,
    ) -> Result<(), SessionError> {
        self.out.clear();
        let mut copied = 0;
        let mut first = true;
        for item in seen {
            let Scanned::Whole { tag, at, len: flen } = *item else {
                if let Scanned::Streamed(tag) = item {
                    if let Some(request) = Request::from_tag(*tag) {
                        self.send(Entry::forward(request));
                    }
                }
                continue;
            };
            let carries_sql = matches!(tag, b'Q' | b'P' | b'B');
            if carries_sql && first && copied == at && self.out.is_empty() && self.state.idle() {
                // A transaction boundary: the moment to take the current config, routes and catalog.
                self.refresh(upstream).await?;
            }
            first = false;
            if !matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C') {
                if let Some(request) = Request::from_tag(tag) {
                    self.send(Entry::forward(request));
                }
                continue;
            }
            self.out.extend_from_slice(&self.buf[copied..at]);
            copied = at + flen;
            let frame = &self.buf[at..at + flen];
            let mut entries = Vec::with_capacity(1);
            let result = match tag {
                b'Q' => self
                    .statements
                    .on_query(frame, &mut self.out)
                    .map(|e| entries.push(e)),
                b'P' => self
                    .statements
                    .on_parse(frame, &mut self.out)
                    .map(|e| entries.push(e)),
                b'B' => self.statements.on_bind(frame, &mut self.out, &mut entries),
                b'D' => self
                    .statements
                    .on_describe(frame, &mut self.out)
                    .map(|e| entries.push(e)),
                b'E' => self
                    .statements
                    .on_execute(frame, &mut self.out)
                    .map(|e| entries.push(e)),
                _ => self
                    .statements
                    .on_close(frame, &mut self.out)
                    .map(|e| entries.push(e)),
            };
            if let Err(e) = result {
                // Malformed: forward it untouched and let the server reject it, as it would directly.
                tracing::debug!(error = %e, "malformed message forwarded as is");
                self.out.extend_from_slice(frame);
                entries.clear();
                if let Some(request) = Request::from_tag(tag) {
                    entries.push(Entry::forward(request));
                }
            }
            for entry in entries {
                self.send(entry);
            }
        }
        self.out.extend_from_slice(&self.buf[copied..len]);
        self.gate.before_send().await;
        self.writing = true;
        upstream
            .write_all(&self.out)
            .await
            .map_err(SessionError::UpstreamIo)?;
        self.writing = false;
        Ok(())
    }

    /// Re-reads config and routes, first looking up on the upstream connection what the session no longer
    /// knows (the routing settings after a SET, the catalog after a reload or a search_path change).
    async fn refresh<W: AsyncWrite + Unpin>(
        &mut self,
        upstream: &mut W,
    ) -> Result<(), SessionError> {
        let application_name = self
            .state
            .application_name
            .lock()
            .expect("state lock")
            .clone();
        while let Some((lookup, sql)) = self.statements.refresh(application_name.clone()) {
            let (done, rows) = oneshot::channel();
            let mut query = BytesMut::new();
            encode::query(&mut query, &sql);
            self.send(Entry {
                request: Request::Query,
                respond: Respond::Catalog {
                    rows: Vec::new(),
                    error: None,
                    done: Some(done),
                },
                timing: None,
            });
            self.gate.before_send().await;
            self.writing = true;
            upstream
                .write_all(&query)
                .await
                .map_err(SessionError::UpstreamIo)?;
            self.writing = false;
            let rows = rows
                .await
                .unwrap_or_else(|_| Err("the session ended during a lookup".to_owned()));
            self.statements.absorb(lookup, rows);
        }
        Ok(())
    }
}

/// Upstream to client: forwards responses, matches them to requests, reshapes the replies of rewritten and
/// injected requests, and tracks the transaction status.
pub struct UpstreamPump<'s> {
    buf: BytesMut,
    scanner: Scanner,
    expected: mpsc::UnboundedReceiver<Entry>,
    pending: Pending<InFlight>,
    state: &'s SessionState,
    out: BytesMut,
    writing: bool,
    phase: watch::Receiver<Phase>,
    gate: &'s Gate,
}

impl<'s> UpstreamPump<'s> {
    pub fn new(
        buf: BytesMut,
        expected: mpsc::UnboundedReceiver<Entry>,
        state: &'s SessionState,
        phase: watch::Receiver<Phase>,
        gate: &'s Gate,
    ) -> Self {
        UpstreamPump {
            buf,
            scanner: Scanner::default(),
            expected,
            pending: Pending::default(),
            state,
            out: BytesMut::new(),
            writing: false,
            phase,
            gate,
        }
    }

    /// True if the client stream is at a frame boundary, so pgshift may still send it an error.
    pub fn is_clean(&self) -> bool {
        !self.writing && !self.scanner.mid_frame()
    }

    /// Between transactions with nothing owed: the point where a draining session may be closed.
    fn is_idle(&self) -> bool {
        self.state.status.load(Ordering::Acquire) == b'I'
            && self.pending.is_idle()
            && self.buf.is_empty()
            && !self.scanner.mid_frame()
    }

    fn take_expected(&mut self) {
        while let Ok(entry) = self.expected.try_recv() {
            self.state.in_channel.fetch_sub(1, Ordering::AcqRel);
            let (request, flight) = entry.into_parts();
            self.pending.push(request, flight);
        }
        self.state
            .queue_idle
            .store(self.pending.is_idle(), Ordering::Release);
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
            let shaping = self.pending.any(|flight| flight.respond.is_special());
            let (pending, state) = (&mut self.pending, self.state);
            let mut edits: Vec<(usize, usize, Option<Bytes>)> = Vec::new();
            let (len, _) = self
                .scanner
                .scan::<FrameError>(
                    &self.buf,
                    |tag| if shaping { tag != b'd' } else { matches!(tag, b'Z' | b'S') },
                    |seen| {
                        let tag = match seen {
                            Seen::Frame(tag, frame, at) => {
                                match tag {
                                    b'Z' => state.status.store(messages::ready_status(frame)?, Ordering::Release),
                                    b'S' => {
                                        let (name, value) = messages::parameter_status(frame)?;
                                        if name == b"application_name" {
                                            *state.application_name.lock().expect("state lock") =
                                                Some(String::from_utf8_lossy(value).into_owned());
                                        }
                                    }
                                    _ => {}
                                }
                                if let Some((request, flight)) = pending.front_mut() {
                                    match flight.on_reply(request, tag, frame) {
                                        Output::Forward => {}
                                        Output::Drop => edits.push((at, frame.len(), None)),
                                        Output::Replace(bytes) => edits.push((at, frame.len(), Some(bytes))),
                                    }
                                }
                                tag
                            }
                            Seen::Streamed(header) => header.tag,
                        };
                        if let Matched::Unexpected = pending.on_backend(tag) {
                            tracing::debug!(tag = %(tag as char), "response matched no pending request");
                        }
                        Ok(Flow::Continue)
                    },
                )
                .map_err(SessionError::UpstreamProtocol)?;
            let owes_nothing = self.pending.is_idle();
            self.state.queue_idle.store(owes_nothing, Ordering::Release);
            if owes_nothing && self.state.in_channel.load(Ordering::Acquire) == 0 {
                self.gate.idle();
            }
            if len == 0 {
                continue;
            }
            self.writing = true;
            if edits.is_empty() {
                client
                    .write_all(&self.buf[..len])
                    .await
                    .map_err(SessionError::ClientIo)?;
            } else {
                self.out.clear();
                let mut copied = 0;
                for (at, flen, replacement) in edits {
                    self.out.extend_from_slice(&self.buf[copied..at]);
                    if let Some(bytes) = replacement {
                        self.out.extend_from_slice(&bytes);
                    }
                    copied = at + flen;
                }
                self.out.extend_from_slice(&self.buf[copied..len]);
                client
                    .write_all(&self.out)
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            self.writing = false;
            self.buf.advance(len);
        }
    }
}
