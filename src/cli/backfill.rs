//! `pgshift backfill`: copy the rows that existed before the dual write began, in batches sized by time,
//! throttled on replication lag, resumable. SIGINT stops after the current batch; SIGHUP re-reads the
//! config's `[control.backfill]` limits (flags given on the command line keep their values).

use super::control::{self, Reporter, Target};
use super::CliError;
use crate::backfill::{self, LagSource};
use crate::config::{BackfillSection, Config, Overrides};
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Limits given on the command line; they win over the config's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// Target duration of one batch (e.g. 200ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub batch_time: Option<Duration>,
    /// Pause while replication lag exceeds this (e.g. 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_lag: Option<Duration>,
    /// At most this many rows per second.
    #[arg(long)]
    pub max_rate: Option<u64>,
}

impl LimitArgs {
    fn apply(&self, mut limits: BackfillSection) -> BackfillSection {
        if let Some(t) = self.batch_time {
            limits.batch_time = t;
        }
        if let Some(l) = self.max_lag {
            limits.max_lag = l;
        }
        if let Some(r) = self.max_rate {
            limits.max_rate = r;
        }
        limits
    }
}

pub async fn run(target: &Target, limits: &LimitArgs) -> Result<(), CliError> {
    let mut c = control::open(target).await?;
    let lag = match &c.config.control.replica_dsn {
        Some(replica) => LagSource::Replica(
            crate::admin::connect_control(replica, c.config.control.password_file.as_deref())
                .await?,
        ),
        None => LagSource::Primary,
    };
    let (limits_tx, limits_rx) = watch::channel(limits.apply(c.config.control.backfill.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(CliError::Signals)?;
    let signals = {
        let path: PathBuf = target.config.clone();
        let flags = limits.clone();
        async move {
            loop {
                tokio::select! {
                    _ = interrupt.recv() => { let _ = stop_tx.send(true); }
                    _ = terminate.recv() => { let _ = stop_tx.send(true); }
                    _ = hangup.recv() => match Config::load(&path, &Overrides::default()) {
                        Ok(config) => {
                            let next = flags.apply(config.control.backfill);
                            eprintln!("pgshift: backfill limits re-read: batch_time {:?}, max_lag {:?}, max_rate {}", next.batch_time, next.max_lag, next.max_rate);
                            let _ = limits_tx.send(next);
                        }
                        Err(e) => eprintln!("pgshift: config not reloaded, keeping the limits in force: {e}"),
                    },
                }
            }
        }
    };
    let mut reporter = Reporter::new(target.format);
    let mut report = |e| reporter.event(e);
    let work = backfill::backfill(
        &mut c.client,
        &c.migration.name,
        &c.mapping,
        limits_rx,
        stop_rx,
        &lag,
        &mut report,
    );
    tokio::select! {
        outcome = work => { outcome?; }
        _ = signals => unreachable!("the signal loop never ends"),
    }
    Ok(())
}
