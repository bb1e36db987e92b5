//! The `pgshift` command line.

use clap::{Parser, Subcommand};
use pgshift::config::reload::{ConfigHandle, Trigger};
use pgshift::config::{Config, Overrides};
use pgshift::rewrite::{DmlTag, Plan, Shape};
use pgshift::routing::Route;
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
        /// The SQL, as the application sends it.
        sql: String,
    },
    /// Start a throwaway PostgreSQL cluster with pgshift in front of it, until Ctrl-C.
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
    // Accepting, signals, reloads and /metrics; sessions run on `listen.workers` threads of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
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
        Cmd::Rewrite {
            config,
            route,
            dsn,
            sql,
        } => {
            let config = Config::load(&config, &Overrides::default()).map_err(|e| e.to_string())?;
            let schema = match &dsn {
                Some(dsn) => {
                    let client = pgshift::admin::connect(dsn).await?;
                    let migrations: Vec<_> = config.migrations.iter().collect();
                    pgshift::admin::schema(&client, &migrations).await?
                }
                None => Default::default(),
            };
            let routes = match route.as_deref() {
                Some("new") => vec![Route::New],
                Some(_) => vec![Route::Old],
                None => vec![Route::Old, Route::New],
            };
            for route in routes {
                println!(
                    "-- reads routed to {}:",
                    if route == Route::New { "new" } else { "old" }
                );
                match pgshift::admin::rewrite(&sql, &config, &schema, route) {
                    Plan::Forward { actions } => println!(
                        "{sql}\n-- sent unchanged: {}",
                        pgshift::admin::why_unchanged(&sql, &config, &actions, dsn.is_some())
                    ),
                    Plan::Rewrite { sql, shapes, .. } => {
                        println!("{sql}");
                        for (i, shape) in shapes.iter().enumerate() {
                            if let Shape::Dml { tag, returning, .. } = shape {
                                let rows = if *returning {
                                    "its RETURNING rows are the client's"
                                } else {
                                    "its zero-column rows are dropped"
                                };
                                let tag = match tag {
                                    DmlTag::Insert => "INSERT 0 n",
                                    DmlTag::Update => "UPDATE n",
                                    DmlTag::Delete => "DELETE n",
                                };
                                println!("-- statement {}: the client sees the command tag {tag}; {rows}", i + 1);
                            }
                        }
                    }
                    Plan::Refuse(r) => println!(
                        "-- refused with SQLSTATE 0A000: pgshift cannot rewrite this statement for migration \"{}\": {}",
                        r.migration, r.reason
                    ),
                }
            }
            Ok(())
        }
        Cmd::Check { config, dsn } => {
            let config = Config::load(&config, &Overrides::default()).map_err(|e| e.to_string())?;
            println!("config is valid (epoch {})", config.epoch);
            println!("  listen:   {}", config.listen_addr);
            println!(
                "  upstream: {} (tls mode = {})",
                config.upstream.describe(),
                word(&config.upstream.tls.mode)
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
                    "  migration {}: kind = {}, {}{target}, writes = {}, reads {}% to new, {} rule(s)",
                    m.name,
                    word(&m.kind),
                    m.table,
                    word(&m.writes),
                    f64::from(m.reads.new_bp) / 100.0,
                    m.reads.rules.len()
                );
            }
            if let Some(dsn) = dsn {
                let client = pgshift::admin::connect(&dsn).await?;
                let problems = pgshift::admin::check(&client, &config).await?;
                if !problems.is_empty() {
                    return Err(format!(
                        "the live catalog does not match {} migration(s):\n  - {}",
                        config.migrations.len(),
                        problems.join("\n  - ")
                    ));
                }
                println!("live catalog: every migration checks out");
            }
            Ok(())
        }
        Cmd::Demo {
            listen,
            metrics,
            run_for,
        } => pgshift::demo::run(&listen, &metrics, run_for)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// How the config file spells a setting's value (`dual_write`, `verify-full`), not its Rust name.
fn word<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
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
