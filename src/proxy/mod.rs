//! The proxy: accepting clients, running sessions, and shutting down gracefully.

pub mod cancel;
pub mod descriptors;
pub mod fault;
pub mod inflight;
pub mod pending;
pub mod pump;
pub mod respond;
pub mod session;
pub mod statements;
pub mod stream;
pub mod trim;
pub mod upstream;
pub mod workers;

use crate::config::model::ClientTlsMode;
use crate::config::reload::ConfigHandle;
use crate::config::{Config, Upstream};
use crate::error::ClientError;
use crate::metrics::CONNECTIONS_TOTAL;
use crate::protocol::tls::{self, TlsSetupError, UpstreamTls};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn, Instrument};

/// Lifecycle of the proxy as a whole, broadcast to every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Not accepting; sessions close at their next idle point (no transaction, nothing in flight).
    Draining,
    /// Drain timeout passed: every session closes now with 57P01.
    Closing,
}

pub struct ClientTlsSetup {
    pub acceptor: TlsAcceptor,
    pub mode: ClientTlsMode,
}

/// What all sessions share: the config and what was prepared from it.
pub struct Shared {
    /// The config pgshift started with: listen, upstream and TLS settings are bound at startup.
    pub config: Config,
    /// The live config, hot-reloaded: migrations are read from here, one snapshot per transaction.
    pub live: Arc<ConfigHandle>,
    pub upstream: Arc<Upstream>,
    pub upstream_tls: UpstreamTls,
    pub client_tls: Option<ClientTlsSetup>,
    pub cancels: cancel::Registry,
    /// Sessions past negotiation, counted against `sessions`.
    pub active: AtomicUsize,
    /// `listen.max_connections`, capped by the descriptor limit.
    pub sessions: descriptors::SessionLimit,
    /// Connections that have ended, ever (when to give freed memory back: [`trim`]).
    pub ended: AtomicU64,
    pub phase: watch::Receiver<Phase>,
    /// Where sessions send sampled reads for shadow comparison.
    pub shadow: Option<crate::shadow::Shadow>,
    /// Where sessions record statements a rollout's guards judge.
    pub rollouts: Option<Arc<crate::rollout::Rollouts>>,
}

impl Shared {
    pub fn new(
        live: Arc<ConfigHandle>,
        phase: watch::Receiver<Phase>,
        sessions: descriptors::SessionLimit,
        shadow: Option<crate::shadow::Shadow>,
        rollouts: Option<Arc<crate::rollout::Rollouts>>,
    ) -> Result<Shared, TlsSetupError> {
        let config = (*live.current()).clone();
        let client_tls = match &config.client_tls {
            Some(t) => Some(ClientTlsSetup {
                acceptor: tls::acceptor(t)?,
                mode: t.mode,
            }),
            None => None,
        };
        Ok(Shared {
            upstream_tls: UpstreamTls::new(&config.upstream)?,
            upstream: Arc::new(config.upstream.clone()),
            client_tls,
            config,
            live,
            cancels: cancel::Registry::default(),
            active: AtomicUsize::new(0),
            sessions,
            ended: AtomicU64::new(0),
            phase,
            shadow,
            rollouts,
        })
    }
}

/// Accepts one client while out of descriptors and tells it so (53300), without reading what it sent.
async fn refuse_unaccepted(listener: &TcpListener, shared: &Shared) {
    let limit = shared.sessions.descriptors.unwrap_or_default();
    let accepted = tokio::time::timeout(Duration::from_millis(10), listener.accept()).await;
    let Ok(Ok((tcp, peer))) = accepted else {
        warn!("out of file descriptors and cannot accept a waiting client to tell it");
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    };
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "descriptors").increment(1);
    warn!(%peer, limit, active = shared.active.load(Ordering::Relaxed), "out of file descriptors: client refused");
    // Read what already arrived (its startup packet), so closing sends FIN rather than RST.
    let mut sink = [0u8; 1024];
    while matches!(tcp.try_read(&mut sink), Ok(n) if n > 0) {}
    let err = ClientError::out_of_descriptors(limit, shared.sessions.max);
    let _ = tcp.try_write(&err.to_bytes());
}

/// Accepts clients on `listener` until `control` leaves `Running`, then drains: sessions close at their next
/// idle point, and any left after `timeouts.drain` (or when `control` says `Closing`) are closed with 57P01.
/// Returns when every session has ended.
pub async fn serve(
    listener: TcpListener,
    live: Arc<ConfigHandle>,
    mut control: watch::Receiver<Phase>,
    workers: workers::Workers,
    sessions: descriptors::SessionLimit,
    shadow: Option<crate::shadow::Shadow>,
    rollouts: Option<Arc<crate::rollout::Rollouts>>,
) -> Result<(), TlsSetupError> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let shared = Arc::new(Shared::new(live, phase_rx, sessions, shadow, rollouts)?);
    let mut spare = descriptors::spare();
    let trimmer = tokio::spawn(trim::run(shared.clone()));
    let drain_timeout = shared.config.timeouts.drain;
    info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %shared.upstream.describe(),
        epoch = %shared.config.epoch,
        "pgshift is accepting connections"
    );
    // Each session holds a clone; when all are dropped, `recv` returns None and the drain is over.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let ids = AtomicU64::new(1);

    while *control.borrow_and_update() == Phase::Running {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) if descriptors::exhausted(&e) => {
                        // The spare descriptor lets the waiting client in, to hear why it is refused.
                        spare.take();
                        refuse_unaccepted(&listener, &shared).await;
                        spare = descriptors::spare();
                        continue;
                    }
                    Err(e) => {
                        // Back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // When a cancel request arrives matters: it may only hit what was running then.
                let arrived = Instant::now();
                metrics::counter!(CONNECTIONS_TOTAL).increment(1);
                let id = ids.fetch_add(1, Ordering::Relaxed);
                // Handed over unregistered: the session registers it with its own thread's event loop.
                let tcp = match tcp.into_std() {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        warn!(error = %e, "cannot hand over an accepted connection");
                        continue;
                    }
                };
                let shared = shared.clone();
                let alive = alive_tx.clone();
                workers.spawn(async move {
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => session::run(shared, tcp, peer, arrived).await,
                        Err(e) => warn!(error = %e, "cannot register an accepted connection"),
                    }
                    drop(alive);
                }.instrument(tracing::info_span!("conn", id)));
            }
            changed = control.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }

    drop(listener);
    drop(alive_tx);
    let _ = phase_tx.send(Phase::Draining);
    info!(
        active = shared.active.load(Ordering::Relaxed),
        drain_timeout = ?drain_timeout,
        "draining: sessions close at their next idle point"
    );
    let forced = async {
        tokio::select! {
            _ = tokio::time::sleep(drain_timeout) => {}
            _ = control.wait_for(|p| *p == Phase::Closing) => {}
        }
    };
    tokio::select! {
        _ = alive_rx.recv() => {}
        _ = forced => {
            warn!(active = shared.active.load(Ordering::Relaxed), "closing the remaining sessions");
            let _ = phase_tx.send(Phase::Closing);
            let _ = alive_rx.recv().await;
        }
    }
    trimmer.abort();
    info!("all sessions ended");
    Ok(())
}
