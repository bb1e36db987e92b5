//! One client session, in phases: negotiate (SSL/GSS/cancel/startup), connect upstream, relay the
//! authentication exchange, then run the two pumps until either side ends.

use super::cancel::{Gate, Owner};
use super::fault::SessionError;
use super::pump::{self, ClientExit, ClientPump, SessionState, UpstreamExit, UpstreamPump};
use super::statements::{settings_from_options, Statements};
use super::stream::Stream;
use super::upstream;
use super::{Phase, Shared};
use crate::config::model::ClientTlsMode;
use crate::error::ClientError;
use crate::metrics::{
    self as m, CONNECTIONS_REFUSED, PROTOCOL_ERRORS, SESSION_DURATION, UPSTREAM_CONNECT_FAILURES,
};
use crate::protocol::frame::{peek_header, FrameError};
use crate::protocol::messages::{self, auth};
use crate::protocol::startup::{
    self, CancelKey, CancelRequest, StartupError, StartupMessage, StartupPacket,
};
use crate::protocol::tls::ALPN_POSTGRESQL;
use crate::routing::SessionFacts;
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// How long pgshift spends on goodbyes (a last error to the client, Terminate to the upstream).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session that ran normally ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    UpstreamClosed,
    Cancel,
    Drained,
    Shutdown,
}

/// Runs one client connection, accepted at `arrived`, to completion. Never panics on client input; errors end
/// this session only.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, arrived: Instant) {
    let started = Instant::now();
    let result = handle(&shared, tcp, peer, arrived).await;
    match &result {
        Ok(end) => debug!(
            ?end,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "session ended"
        ),
        Err(SessionError::Refused(e)) => info!(error = %e, "session refused"),
        Err(e @ (SessionError::ClientProtocol(_) | SessionError::UpstreamProtocol(_))) => {
            warn!(error = %e, "session ended by a protocol error");
        }
        Err(e) => info!(error = %e, "session ended"),
    }
    metrics::histogram!(SESSION_DURATION).record(started.elapsed().as_secs_f64());
    shared.ended.fetch_add(1, Ordering::Relaxed);
}

/// The opening of a connection, once negotiation is over.
enum Opening {
    Startup {
        stream: Stream,
        buf: BytesMut,
        msg: StartupMessage,
    },
    Cancel(CancelRequest),
    /// The client went away before sending a startup packet (e.g. a TCP health check).
    Closed,
}

async fn handle(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    arrived: Instant,
) -> Result<End, SessionError> {
    let _ = tcp.set_nodelay(true);
    let startup_timeout = shared.config.timeouts.startup;
    let opening = tokio::time::timeout(startup_timeout, negotiate(shared, tcp))
        .await
        .map_err(|_| SessionError::StartupTimeout(startup_timeout))??;
    let (mut client, cbuf, msg) = match opening {
        Opening::Closed => return Ok(End::ClientClosed),
        Opening::Cancel(request) => {
            shared
                .cancels
                .forward(&request, arrived, shared.config.timeouts.connect)
                .await;
            return Ok(End::Cancel);
        }
        Opening::Startup { stream, buf, msg } => (stream, buf, msg),
    };
    info!(
        user = msg.param("user").unwrap_or(""),
        database = msg.param("database").unwrap_or(""),
        application_name = msg.param("application_name").unwrap_or(""),
        tls = client.is_tls(),
        %peer,
        "session started"
    );

    if *shared.phase.borrow() != Phase::Running {
        return Err(refuse(&mut client, ClientError::shutting_down(), "shutdown").await);
    }
    let _slot = match SessionSlot::take(shared) {
        Some(slot) => slot,
        None => {
            let limit = shared.sessions;
            let (err, reason) = match limit.descriptors.filter(|_| limit.capped) {
                Some(fds) => (
                    ClientError::out_of_descriptors(fds, limit.max),
                    "descriptors",
                ),
                None => (ClientError::too_many_connections(limit.max), "limit"),
            };
            return Err(refuse(&mut client, err, reason).await);
        }
    };

    let mut upstream = match upstream::connect(
        &shared.upstream,
        &shared.upstream_tls,
        shared.config.timeouts.connect,
    )
    .await
    {
        Ok(stream) => stream,
        Err(e) => {
            metrics::counter!(UPSTREAM_CONNECT_FAILURES, "reason" => e.reason()).increment(1);
            warn!(upstream = %shared.upstream.describe(), error = %e, "cannot connect to upstream");
            let err =
                ClientError::upstream_unavailable(&shared.upstream.describe(), &e.to_string());
            return Err(refuse(&mut client, err, "upstream").await);
        }
    };
    upstream
        .write_all(&msg.raw)
        .await
        .map_err(SessionError::UpstreamIo)?;

    let gate = Gate::new(Owner {
        upstream: shared.upstream.clone(),
        tls: shared.upstream_tls.clone(),
    });
    let mut key = KeyGuard {
        shared,
        key: None,
        gate: gate.clone(),
    };
    let mut cbuf = cbuf;
    let mut ubuf = BytesMut::with_capacity(pump::UPSTREAM_BUF);
    let auth = tokio::time::timeout(
        startup_timeout,
        relay_auth(&mut client, &mut cbuf, &mut upstream, &mut ubuf, &mut key),
    )
    .await
    .map_err(|_| SessionError::StartupTimeout(startup_timeout))?;
    match auth {
        Ok(true) => {}
        Ok(false) => return Ok(End::UpstreamClosed),
        Err(SessionError::Refused(err)) => {
            let _ = goodbye(&mut client, Some(&err), &mut upstream, true).await;
            return Err(SessionError::Refused(err));
        }
        Err(e) => return Err(e),
    }

    let facts = session_facts(&msg, peer);
    run_pumps(shared, client, cbuf, upstream, ubuf, facts, &gate).await
}

/// Sends a FATAL error to a client whose session will not start, and counts it.
async fn refuse(client: &mut Stream, err: ClientError, reason: &'static str) -> SessionError {
    metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        client.write_all(&err.to_bytes()).await?;
        client.shutdown().await
    })
    .await;
    SessionError::Refused(err)
}

/// Counts the session against `listen.max_connections` (capped by the descriptor limit) for as long as it lives.
struct SessionSlot<'a>(&'a Shared);

impl<'a> SessionSlot<'a> {
    fn take(shared: &'a Shared) -> Option<Self> {
        let before = shared.active.fetch_add(1, Ordering::AcqRel);
        let slot = SessionSlot(shared);
        m::handles().connections_active.increment(1.0);
        (before < shared.sessions.max).then_some(slot)
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        m::handles().connections_active.decrement(1.0);
    }
}

/// Keeps the session's cancel key registered exactly as long as the session lives.
struct KeyGuard<'a> {
    shared: &'a Shared,
    key: Option<CancelKey>,
    gate: Arc<Gate>,
}

impl KeyGuard<'_> {
    fn set(&mut self, key: CancelKey) {
        if let Some(old) = self.key.replace(key.clone()) {
            self.shared.cancels.remove(&old);
        }
        self.shared.cancels.register(key, self.gate.clone());
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.cancels.remove(&key);
        }
    }
}

/// The startup phase: SSLRequest / GSSENCRequest / CancelRequest / StartupMessage, in any order the
/// protocol allows (e.g. libpq 17 sends a CancelRequest after a refused SSLRequest).
async fn negotiate(shared: &Shared, tcp: TcpStream) -> Result<Opening, SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut encrypted = false;
    // PostgreSQL 17 direct TLS: the connection opens with a TLS ClientHello instead of an SSLRequest.
    let mut stream = match &shared.client_tls {
        Some(tls) => {
            let mut first = [0u8; 1];
            if tcp.peek(&mut first).await.map_err(SessionError::ClientIo)? == 0 {
                return Ok(Opening::Closed);
            }
            if first[0] == startup::TLS_HANDSHAKE_BYTE {
                let tls = tls
                    .acceptor
                    .accept(tcp)
                    .await
                    .map_err(SessionError::ClientTls)?;
                if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                    return Err(SessionError::ClientProtocol(
                        "direct TLS connection without ALPN \"postgresql\"".to_owned(),
                    ));
                }
                encrypted = true;
                Stream::ServerTls(Box::new(tls))
            } else {
                Stream::Tcp(tcp)
            }
        }
        None => Stream::Tcp(tcp),
    };

    loop {
        let packet = match read_startup_packet(&mut stream, &mut buf).await {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(Opening::Closed),
            Err(SessionError::Startup(e)) => {
                let err = match e {
                    StartupError::UnsupportedProtocol(major, minor) => {
                        ClientError::unsupported_protocol(major, minor)
                    }
                    other => ClientError::protocol_violation(other),
                };
                metrics::counter!(PROTOCOL_ERRORS, "side" => "client").increment(1);
                return Err(refuse(&mut stream, err, "protocol").await);
            }
            Err(e) => return Err(e),
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if encrypted => {
                let err = ClientError::protocol_violation(
                    "SSL or GSS negotiation requested on an encrypted connection",
                );
                return Err(refuse(&mut stream, err, "protocol").await);
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if !buf.is_empty() => {
                // Bytes that arrived with the request would be read as if they came through TLS.
                metrics::counter!(PROTOCOL_ERRORS, "side" => "client").increment(1);
                return Err(refuse(
                    &mut stream,
                    ClientError::plaintext_after_ssl_request(),
                    "protocol",
                )
                .await);
            }
            StartupPacket::SslRequest => {
                stream = match (stream, &shared.client_tls) {
                    (Stream::Tcp(mut tcp), Some(tls)) => {
                        tcp.write_all(b"S").await.map_err(SessionError::ClientIo)?;
                        let tls = tls
                            .acceptor
                            .accept(tcp)
                            .await
                            .map_err(SessionError::ClientTls)?;
                        encrypted = true;
                        Stream::ServerTls(Box::new(tls))
                    }
                    (mut other, _) => {
                        other
                            .write_all(b"N")
                            .await
                            .map_err(SessionError::ClientIo)?;
                        other
                    }
                };
            }
            StartupPacket::GssEncRequest => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            StartupPacket::Cancel(request) => return Ok(Opening::Cancel(request)),
            StartupPacket::Startup(msg) => {
                let tls_required = shared
                    .client_tls
                    .as_ref()
                    .is_some_and(|tls| tls.mode == ClientTlsMode::Require);
                if tls_required && !encrypted {
                    return Err(
                        refuse(&mut stream, ClientError::tls_required(), "tls_required").await,
                    );
                }
                return Ok(Opening::Startup { stream, buf, msg });
            }
        }
    }
}

async fn read_startup_packet(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Option<StartupPacket>, SessionError> {
    loop {
        if let Some(packet) = startup::split_startup(buf).map_err(SessionError::Startup)? {
            return Ok(Some(packet));
        }
        if stream.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(SessionError::Startup(StartupError::Malformed(
                "incomplete startup packet",
            )));
        }
    }
}

/// Reads one whole typed frame, or `None` at a clean end of stream.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Result<Bytes, FrameError>>> {
    loop {
        match peek_header(buf) {
            Err(e) => return Ok(Some(Err(e))),
            Ok(Some(h)) if buf.len() >= h.total() => {
                return Ok(Some(Ok(buf.split_to(h.total()).freeze())))
            }
            Ok(Some(h)) => buf.reserve(h.total() - buf.len()),
            Ok(None) => {}
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Relays the authentication exchange, which is strictly request/response: each Authentication request that
/// needs an answer gets exactly one client message. Returns `false` if the upstream ended the session (a
/// failed login: its ErrorResponse has been forwarded).
async fn relay_auth(
    client: &mut Stream,
    cbuf: &mut BytesMut,
    upstream: &mut Stream,
    ubuf: &mut BytesMut,
    key: &mut KeyGuard<'_>,
) -> Result<bool, SessionError> {
    let mut out = BytesMut::new();
    let mut sasl_offered = false;
    loop {
        let frame = match read_frame(upstream, ubuf)
            .await
            .map_err(SessionError::UpstreamIo)?
        {
            Some(frame) => frame.map_err(SessionError::UpstreamProtocol)?,
            None => {
                client
                    .write_all(&out)
                    .await
                    .map_err(SessionError::ClientIo)?;
                return Ok(false);
            }
        };
        out.extend_from_slice(&frame);
        let needs_answer = match frame[0] {
            b'R' => {
                let code = messages::auth_code(&frame).map_err(SessionError::UpstreamProtocol)?;
                sasl_offered = code == auth::SASL;
                !matches!(code, auth::OK | auth::SASL_FINAL)
            }
            b'K' => {
                key.set(messages::backend_key(&frame).map_err(SessionError::UpstreamProtocol)?);
                false
            }
            b'Z' => {
                client
                    .write_all(&out)
                    .await
                    .map_err(SessionError::ClientIo)?;
                return Ok(true);
            }
            _ => false,
        };
        if !needs_answer {
            continue;
        }
        client
            .write_all(&out)
            .await
            .map_err(SessionError::ClientIo)?;
        out.clear();
        let answer = match read_frame(client, cbuf)
            .await
            .map_err(SessionError::ClientIo)?
        {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => return Err(SessionError::Refused(ClientError::protocol_violation(e))),
            None => return Ok(false),
        };
        if sasl_offered
            && answer[0] == b'p'
            && messages::sasl_initial_mechanism(&answer) == Ok(b"SCRAM-SHA-256-PLUS")
        {
            return Err(SessionError::Refused(
                ClientError::channel_binding_unsupported(),
            ));
        }
        sasl_offered = false;
        upstream
            .write_all(&answer)
            .await
            .map_err(SessionError::UpstreamIo)?;
    }
}

/// Runs both directions until one ends, then closes both sides as cleanly as their state allows.
/// What routing rules and keys can know about this session, from its startup packet and address.
fn session_facts(msg: &StartupMessage, peer: SocketAddr) -> SessionFacts {
    let user = msg.param("user").unwrap_or_default().to_owned();
    let mut facts = SessionFacts {
        database: msg
            .param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_owned(),
        user,
        application_name: msg.param("application_name").unwrap_or_default().to_owned(),
        client_addr: Some(peer.ip()),
        startup: msg.params.clone(),
        ..Default::default()
    };
    for (name, value) in settings_from_options(msg.param("options").unwrap_or_default()) {
        match name.as_str() {
            "pgshift.key" => facts.key_setting = Some(value),
            "pgshift.context" => facts.context = Some(value),
            "application_name" => facts.application_name = value,
            _ => {}
        }
    }
    facts
}

async fn run_pumps(
    shared: &Shared,
    client: Stream,
    cbuf: BytesMut,
    upstream: Stream,
    ubuf: BytesMut,
    facts: SessionFacts,
    gate: &Gate,
) -> Result<End, SessionError> {
    match (client, upstream) {
        // Plain TCP on both legs (the common case): borrowed halves, no lock around each read and write.
        (Stream::Tcp(mut client), Stream::Tcp(mut upstream)) => {
            let (cr, cw) = client.split();
            let (ur, uw) = upstream.split();
            drive(shared, (cr, cw), cbuf, (ur, uw), ubuf, facts, gate).await
        }
        (client, upstream) => {
            let (cr, cw) = tokio::io::split(client);
            let (ur, uw) = tokio::io::split(upstream);
            drive(shared, (cr, cw), cbuf, (ur, uw), ubuf, facts, gate).await
        }
    }
}

/// Runs both directions until one ends, then closes both sides as cleanly as their state allows.
async fn drive<CR, CW, UR, UW>(
    shared: &Shared,
    (mut cr, mut cw): (CR, CW),
    cbuf: BytesMut,
    (mut ur, mut uw): (UR, UW),
    ubuf: BytesMut,
    facts: SessionFacts,
    gate: &Gate,
) -> Result<End, SessionError>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let state = SessionState::default();
    let statements = Statements::new(
        shared.live.clone(),
        facts,
        shared.shadow.clone(),
        shared.rollouts.clone(),
    );
    let mut front = ClientPump::new(cbuf, tx, &state, statements, gate);
    let mut back = UpstreamPump::new(ubuf, rx, &state, shared.phase.clone(), gate);

    let exit = tokio::select! {
        exit = front.run(&mut cr, &mut uw) => Ok(exit),
        exit = back.run(&mut ur, &mut cw) => Err(exit),
    };
    let client_clean = back.is_clean();
    let upstream_clean = front.is_clean();
    if matches!(
        exit,
        Ok(Ok(ClientExit::Eof)) | Ok(Err(SessionError::ClientIo(_)))
    ) {
        // Directly, the query would run on to its end holding its locks; nobody is waiting for it.
        gate.cancel_running(shared.config.timeouts.connect).await;
    }
    let (notice, end) = match exit {
        Ok(Ok(ClientExit::Terminated)) => (None, Ok(End::ClientClosed)),
        Ok(Ok(ClientExit::Eof)) => (None, Ok(End::ClientClosed)),
        Ok(Err(e)) => {
            let notice = match &e {
                SessionError::ClientProtocol(detail) => {
                    metrics::counter!(PROTOCOL_ERRORS, "side" => "client").increment(1);
                    Some(ClientError::protocol_violation(detail))
                }
                _ => None,
            };
            (notice, Err(e))
        }
        Err(Ok(UpstreamExit::Eof)) => (None, Ok(End::UpstreamClosed)),
        Err(Ok(UpstreamExit::Drained)) => (Some(ClientError::shutting_down()), Ok(End::Drained)),
        Err(Ok(UpstreamExit::Shutdown)) => (Some(ClientError::shutting_down()), Ok(End::Shutdown)),
        Err(Err(e)) => {
            if matches!(e, SessionError::UpstreamProtocol(_)) {
                metrics::counter!(PROTOCOL_ERRORS, "side" => "upstream").increment(1);
            }
            (None, Err(e))
        }
    };
    let notice = notice.filter(|_| client_clean);
    let _ = goodbye(&mut cw, notice.as_ref(), &mut uw, upstream_clean).await;
    end
}

/// Last words: an error for the client if there is one, Terminate for the upstream, then close both.
async fn goodbye<C: AsyncWrite + Unpin, U: AsyncWrite + Unpin>(
    client: &mut C,
    notice: Option<&ClientError>,
    upstream: &mut U,
    upstream_clean: bool,
) -> std::io::Result<()> {
    tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if let Some(err) = notice {
            let _ = client.write_all(&err.to_bytes()).await;
        }
        let _ = client.shutdown().await;
        if upstream_clean {
            upstream.write_all(&[b'X', 0, 0, 0, 4]).await?;
        }
        upstream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}
