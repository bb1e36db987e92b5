//! A running pgshift: binds the client and metrics listeners, serves until told to stop.
//! `main`, the demo and the integration tests all start pgshift through here.

use crate::config::reload::{self, ConfigHandle};
use crate::config::Config;
use crate::http::{self, HttpState};
use crate::metrics;
use crate::protocol::tls::TlsSetupError;
use crate::proxy::descriptors::{self, SessionLimit};
use crate::proxy::{self, Phase};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot start the session threads: {0}")]
    Workers(std::io::Error),
}

pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    control: Controller,
    task: JoinHandle<Result<(), TlsSetupError>>,
    background: Vec<JoinHandle<()>>,
    pub config: Arc<ConfigHandle>,
}

/// Starts pgshift with a config that has no file behind it (nothing to reload).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(ConfigHandle::new(config, None)).await
}

/// Binds the listen address (port 0 picks a free port) and the metrics address, starts serving, and watches
/// the config file (if the handle has one) for hot reloads.
pub async fn start_with(handle: Arc<ConfigHandle>) -> Result<Running, StartError> {
    let config = (*handle.current()).clone();
    let descriptor_limit = match descriptors::raise() {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the file-descriptor limit");
            None
        }
    };
    let prometheus = metrics::install();
    ::metrics::gauge!(metrics::CONFIG_INFO, "epoch" => config.epoch.clone()).set(1.0);
    // Fail on bad TLS files now, before accepting anyone.
    let (control, control_rx) = watch::channel(Phase::Running);
    drop(proxy::Shared::new(
        handle.clone(),
        control_rx.clone(),
        SessionLimit::new(config.max_connections, None, 0),
        None,
        None,
    )?);

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let listener = bind(config.listen_addr).await?;
    let addr = listener.local_addr().expect("bound socket has an address");
    let mut background = vec![tokio::spawn(metrics::upkeep(prometheus.clone()))];
    let (shadow, comparers) = crate::shadow::Shadow::start(handle.clone());
    background.extend(comparers);
    let (rollouts, followers) =
        crate::rollout::Rollouts::start(handle.clone(), Some(shadow.clone()), replica_name(addr));
    background.extend(followers);
    let metrics_addr = match config.metrics_addr {
        Some(maddr) => {
            let http_listener = bind(maddr).await?;
            let bound = http_listener
                .local_addr()
                .expect("bound socket has an address");
            let (copies_tx, copies) = watch::channel(serde_json::Value::Null);
            background.push(tokio::spawn(crate::backfill::status::watch(
                handle.clone(),
                copies_tx,
            )));
            let state = Arc::new(HttpState {
                prometheus,
                phase: control_rx.clone(),
                config: handle.clone(),
                copies,
                shadow: shadow.clone(),
                rollouts: rollouts.clone(),
            });
            background.push(tokio::spawn(http::serve(http_listener, state)));
            Some(bound)
        }
        None => None,
    };
    background.extend(reload::watch_file(handle.clone()));
    let workers = proxy::workers::Workers::start(config.workers).map_err(StartError::Workers)?;
    let sessions = session_limit(config.max_connections, descriptor_limit);
    let task = tokio::spawn(proxy::serve(
        listener,
        handle.clone(),
        control_rx,
        workers,
        sessions,
        Some(shadow),
        Some(rollouts),
    ));
    Ok(Running {
        addr,
        metrics_addr,
        control: Controller(Arc::new(control)),
        task,
        background,
        config: handle,
    })
}

/// How this replica is named in rollout events: host, process and listen address.
fn replica_name(addr: SocketAddr) -> String {
    format!(
        "pgshift@{}:{} (pid {})",
        crate::rollout::hostname(),
        addr.port(),
        std::process::id()
    )
}

/// `listen.max_connections`, capped by what the descriptor limit leaves once pgshift itself is running; warns
/// when the limit is what decides.
fn session_limit(max_connections: usize, limit: Option<descriptors::Limit>) -> SessionLimit {
    let open = descriptors::open_now().unwrap_or(64);
    let sessions = SessionLimit::new(max_connections, limit, open);
    if let (true, Some(limit)) = (sessions.capped, limit) {
        tracing::warn!(
            soft_limit = limit.soft,
            hard_limit = limit.hard,
            max_connections,
            sessions = sessions.max,
            "the file-descriptor limit allows fewer sessions than listen.max_connections (each needs two \
             descriptors); clients past it are refused with 53300. Raise the hard limit (LimitNOFILE=, ulimit -Hn)"
        );
    }
    sessions
}

/// Tells a running pgshift to stop; cheap to clone into a signal handler.
#[derive(Clone)]
pub struct Controller(Arc<watch::Sender<Phase>>);

impl Controller {
    /// Stop accepting; sessions close at their next idle point or at the drain timeout.
    pub fn drain(&self) {
        self.0.send_if_modified(|p| {
            let changed = *p == Phase::Running;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
    }

    /// Close every session now.
    pub fn close(&self) {
        let _ = self.0.send(Phase::Closing);
    }

    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }
}

impl Running {
    pub fn controller(&self) -> Controller {
        self.control.clone()
    }

    pub fn drain(&self) {
        self.control.drain();
    }

    pub fn close(&self) {
        self.control.close();
    }

    /// Waits until the proxy has stopped (after `drain` or `close`).
    pub async fn wait(self) -> Result<(), TlsSetupError> {
        let result = self.task.await.unwrap_or(Ok(()));
        for task in self.background {
            task.abort();
        }
        result
    }
}
