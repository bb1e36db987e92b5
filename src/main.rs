//! The `pgshift` command line.

use clap::{Parser, Subcommand};
use pgshift::config::reload::{ConfigHandle, Trigger};
use pgshift::config::{Config, Overrides};
use pgshift::server;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "pgshift",
    version,
    about = "A transparent PostgreSQL proxy for zero-downtime schema migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Serve {
        /// Config file (see config/pgshift.example.toml). Optional when --upstream is given.
        #[arg(short, long, env = "PGSHIFT_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Validate a config file and print what it sets; exits non-zero if it is invalid.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL cluster with pgshift in front of it, until Ctrl-C.
    Demo {
        /// Address pgshift listens on.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: String,
        /// Address of the /metrics endpoint.
        #[arg(long, default_value = "127.0.0.1:9187")]
        metrics: String,
    },
}

#[derive(clap::Args)]
struct OverrideArgs {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pgshift: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Cmd) -> Result<(), String> {
    match command {
        Cmd::Serve { config, overrides } => {
            let config_path = config.clone();
            let overrides = Overrides {
                listen: overrides.listen,
                upstream: overrides.upstream,
                metrics: overrides.metrics,
            };
            let config = match (&config, &overrides.upstream) {
                (Some(path), _) => Config::load(path, &overrides),
                (None, Some(_)) => Config::from_overrides(&overrides),
                (None, None) => return Err("give --config FILE or --upstream HOST:PORT".to_owned()),
            }
            .map_err(|e| e.to_string())?;
            pgshift::logging::init(&config.log);
            let source = config_path.map(|p| (p, overrides));
            serve(ConfigHandle::new(config, source)).await
        }
        Cmd::Check { config } => {
            let config = Config::load(&config, &Overrides::default()).map_err(|e| e.to_string())?;
            println!("config is valid (epoch {})", config.epoch);
            println!("  listen:   {}", config.listen_addr);
            println!(
                "  upstream: {} (tls {:?})",
                config.upstream.describe(),
                config.upstream.tls.mode
            );
            if let Some(m) = config.metrics_addr {
                println!("  metrics:  {m}");
            }
            for m in &config.migrations {
                let target = m
                    .new_table
                    .as_ref()
                    .map(|t| format!(" -> {t}"))
                    .unwrap_or_default();
                println!(
                    "  migration {}: {:?} {}{target}, writes {:?}, reads {}% to new, {} rule(s)",
                    m.name,
                    m.kind,
                    m.table,
                    m.writes,
                    f64::from(m.reads.new_bp) / 100.0,
                    m.reads.rules.len()
                );
            }
            Ok(())
        }
        Cmd::Demo { listen, metrics } => pgshift::demo::run(&listen, &metrics)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Serves until SIGTERM or SIGINT (drain), and a second one (close at once); SIGHUP reloads the config.
async fn serve(handle: std::sync::Arc<ConfigHandle>) -> Result<(), String> {
    let running = server::start_with(handle.clone())
        .await
        .map_err(|e| e.to_string())?;
    let control = running.controller();
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let wait = running.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            result = &mut wait => return result.map_err(|e| e.to_string()),
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                let handle = handle.clone();
                let _ = tokio::task::spawn_blocking(move || handle.reload(Trigger::Sighup)).await;
                continue;
            }
        }
        if control.phase() == pgshift::proxy::Phase::Running {
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
