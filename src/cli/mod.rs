//! The `pgshift` command line: one file per command. Each returns a typed [`CliError`]; `main` prints it.

mod backfill;
mod check;
mod control;
pub mod demo;
mod rewrite;
mod rollout;
mod serve;
mod verify;

use crate::admin::AdminError;
use crate::config::ConfigError;
use crate::server::StartError;
use clap::{Parser, Subcommand};
use demo::DemoError;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "pgshift",
    version,
    about = "A transparent PostgreSQL proxy for zero-downtime schema migrations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the proxy.
    Serve {
        /// Config file (see config/pgshift.example.toml). Optional when --upstream is given.
        #[arg(short, long, env = "PGSHIFT_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Validate a config file and print what it sets; exits non-zero if it is invalid. With --dsn, also check
    /// every migration against the live catalog (tables, columns, keys, that up/down expressions plan).
    Check {
        /// The config file to validate (see config/pgshift.example.toml).
        #[arg(short, long)]
        config: PathBuf,
        /// A connection string for checking the catalog, e.g. postgres://user@host/db
        #[arg(long)]
        dsn: Option<String>,
    },
    /// Show what pgshift would send upstream for a statement, on each read route, or why it refuses it.
    Rewrite {
        /// The config file whose migrations apply (see config/pgshift.example.toml).
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route (default: both).
        #[arg(long, value_parser = ["old", "new"])]
        route: Option<String>,
        /// Read the tables' columns from this database (needed for most rewrites).
        #[arg(long)]
        dsn: Option<String>,
        /// Show the shadow comparison of a read instead: one statement evaluating it on old and on new (and
        /// on old twice, the noise floor), to run by hand.
        #[arg(long)]
        shadow: bool,
        /// The SQL, as the application sends it.
        sql: String,
    },
    /// Copy a migration's existing rows to the side the dual write keeps (new under dual_write, old under
    /// new_primary), in key order, resumable. Exit 0 when done, 2 on error.
    Backfill {
        #[command(flatten)]
        target: control::Target,
        #[command(flatten)]
        limits: backfill::LimitArgs,
    },
    /// Compare a migration's two sides row by row; with --repair, make the target what the source says.
    /// Exit 0 when clean, 1 when differences remain, 2 on error.
    Verify {
        #[command(flatten)]
        target: control::Target,
        /// Make each differing target row what the source says, then check its chunk again.
        #[arg(long)]
        repair: bool,
        /// At most this many rows per second (default: control.backfill.max_rate).
        #[arg(long)]
        max_rate: Option<u64>,
    },
    /// A migration's guarded rollout: status, start, pause, resume, rollback (every replica, within a second),
    /// promote (writes to new_primary; needs a fresh clean verification).
    Rollout(rollout::Args),
    /// Start a throwaway PostgreSQL cluster with pgshift in front of it, until Ctrl-C or SIGTERM.
    Demo {
        /// Address pgshift listens on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Address of the /metrics endpoint.
        #[arg(long, default_value = "127.0.0.1:9187")]
        metrics: String,
        /// Stop after this long (e.g. "30s") instead of waiting for Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration, hide = true)]
        run_for: Option<std::time::Duration>,
    },
}

#[derive(clap::Args)]
pub struct OverrideArgs {
    /// Address to accept clients on, overriding listen.addr (e.g. 127.0.0.1:6432).
    #[arg(long)]
    listen: Option<String>,
    /// Upstream PostgreSQL, overriding upstream.addr: host:port or a unix socket path.
    #[arg(long)]
    upstream: Option<String>,
    /// Address of the /metrics endpoint, overriding metrics.addr.
    #[arg(long)]
    metrics: Option<String>,
}

/// Why a command failed; printed as `pgshift: <message>` with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("give --config FILE or --upstream HOST:PORT")]
    NoConfig,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Tls(#[from] crate::protocol::tls::TlsSetupError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("no migration named \"{name}\" in the config (it has: {})", known.join(", "))]
    NoMigration { name: String, known: Vec<String> },
    #[error("give --dsn or set [control] dsn in the config")]
    NoDsn,
    #[error("rollout: {0}")]
    Rollout(String),
    #[error(transparent)]
    Copy(#[from] crate::backfill::CopyError),
    #[error("migration \"{migration}\": {count} difference(s) remain")]
    Differences { migration: String, count: i64 },
    /// An operator command that reports differences with status 1 failed otherwise.
    #[error(transparent)]
    Failed(Box<CliError>),
    #[error("the live catalog does not match {migrations} migration(s):\n  - {}", problems.join("\n  - "))]
    Catalog {
        migrations: usize,
        problems: Vec<String>,
    },
}

impl CliError {
    /// 1 for most failures and for differences `verify` found; 2 when `backfill` or `verify` could not finish.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 2,
            _ => 1,
        }
    }
}

/// Runs one command to its end.
pub async fn run(command: Cmd) -> Result<(), CliError> {
    match command {
        Cmd::Serve { config, overrides } => serve::run(config, overrides).await,
        Cmd::Check { config, dsn } => check::run(&config, dsn.as_deref()).await,
        Cmd::Rewrite {
            config,
            route,
            dsn,
            shadow: false,
            sql,
        } => rewrite::run(&config, route.as_deref(), dsn.as_deref(), &sql).await,
        Cmd::Rewrite {
            config,
            dsn,
            shadow: true,
            sql,
            ..
        } => rewrite::shadow(&config, dsn.as_deref(), &sql).await,
        Cmd::Rollout(args) => rollout::run(&args).await,
        Cmd::Backfill { target, limits } => backfill::run(&target, &limits)
            .await
            .map_err(|e| CliError::Failed(Box::new(e))),
        Cmd::Verify {
            target,
            repair,
            max_rate,
        } => match verify::run(&target, repair, max_rate).await {
            Err(e @ CliError::Differences { .. }) => Err(e),
            other => other.map_err(|e| CliError::Failed(Box::new(e))),
        },
        Cmd::Demo {
            listen,
            metrics,
            run_for,
        } => Ok(demo::run(&listen, &metrics, run_for).await?),
    }
}

/// How the config file spells a setting's value (`dual_write`, `verify-full`), not its Rust name.
fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}
