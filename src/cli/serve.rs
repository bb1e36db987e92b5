//! `pgshift serve`: load the config, start, and serve until SIGTERM or SIGINT (drain; a second one closes at
//! once); SIGHUP reloads the config.

use super::{CliError, OverrideArgs};
use crate::config::reload::{ConfigHandle, Trigger};
use crate::config::{Config, Overrides};
use crate::proxy::Phase;
use crate::server;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

pub async fn run(config: Option<PathBuf>, overrides: OverrideArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        listen: overrides.listen,
        upstream: overrides.upstream,
        metrics: overrides.metrics,
    };
    let loaded = match (&config, &overrides.upstream) {
        (Some(path), _) => Config::load(path, &overrides)?,
        (None, Some(_)) => Config::from_overrides(&overrides)?,
        (None, None) => return Err(CliError::NoConfig),
    };
    crate::logging::init(&loaded.log);
    let source = config.map(|p| (p, overrides));
    serve(ConfigHandle::new(loaded, source)).await
}

async fn serve(handle: Arc<ConfigHandle>) -> Result<(), CliError> {
    let running = server::start_with(handle.clone()).await?;
    let control = running.controller();
    let mut term = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;
    let wait = running.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            result = &mut wait => return Ok(result?),
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                let handle = handle.clone();
                let _ = tokio::task::spawn_blocking(move || handle.reload(Trigger::Sighup)).await;
                continue;
            }
        }
        if control.phase() == Phase::Running {
            tracing::info!(
                "shutdown requested: draining (send the signal again to close sessions now)"
            );
            control.drain();
        } else {
            tracing::info!("second shutdown signal: closing all sessions");
            control.close();
        }
    }
}
