//! `pgshift demo`: a throwaway PostgreSQL cluster with pgshift in front of it and a guided migration tour:
//! two sample migrations in dual-write, a small application workload through the proxy, and a live view of
//! reads per route and dual writes that changes as you edit the demo's config file.

pub mod cluster;

use crate::config::reload::ConfigHandle;
use crate::config::{Config, Overrides};
use crate::server;
use cluster::{Cluster, Options};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0} (pick other addresses with --listen / --metrics)")]
    Start(#[from] server::StartError),
    #[error("could not create the demo schema: {0}")]
    Schema(String),
    #[error("could not write the demo config: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Address(String),
}

/// The expand phase and the backfill, done up front: both new schemas exist and hold the old data.
const SCHEMA: &str = "
CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, legacy_status text NOT NULL,
                     created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders (customer, legacy_status)
  SELECT 'customer ' || g, (ARRAY['new','paid','shipped'])[1 + g % 3] FROM generate_series(1, 100) g;
ALTER TABLE orders ADD COLUMN new_status text;
UPDATE orders SET new_status = upper(legacy_status);
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text,
                    created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO users (fullname, email) SELECT 'User ' || g, 'user' || g || '@example.com' FROM generate_series(1, 50) g;
CREATE SCHEMA v2;
CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text, created_at timestamptz NOT NULL);
INSERT INTO v2.users SELECT id, fullname, email, created_at FROM users;";

fn config_text(
    listen: &str,
    upstream: &str,
    metrics: &str,
    users_percent: u32,
    orders_percent: u32,
) -> String {
    format!(
        r#"# pgshift demo config. Edit and save: pgshift reloads it at once (watch the live view).
# Try: reads.new_percent = 25, then 100; set 0 for the kill switch.

[listen]
addr = "{listen}"
max_connections = 200
[upstream]
addr = "{upstream}"
[upstream.tls]
mode = "disable"
[metrics]
addr = "{metrics}"
[log]
level = "warn"

[[migration]]
name = "users_v2"
kind = "table"
table = "public.users"
new_table = "v2.users"
key = ["id"]
columns = [{{ old = "fullname", new = "display_name" }}]
writes = "dual_write"
[migration.reads]
new_percent = {users_percent}
key = "application_name"

[[migration]]
name = "orders_status"
kind = "column"
table = "public.orders"
key = ["id"]
columns = [{{ old = "legacy_status", new = "new_status", up = "upper(legacy_status)", down = "lower(new_status)" }}]
writes = "dual_write"
[migration.reads]
new_percent = {orders_percent}
key = "application_name"
rules = [{{ application_name = "batch_processor", new_percent = 0 }}]
"#
    )
}

pub async fn run(listen: &str, metrics: &str, run_for: Option<Duration>) -> Result<(), DemoError> {
    // Find a busy port before spending seconds on a cluster.
    for addr in [listen, metrics] {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            DemoError::Address(format!("{addr:?} is not an address like 127.0.0.1:6432"))
        })?;
        if let Err(source) = std::net::TcpListener::bind(addr) {
            return Err(server::StartError::Bind { addr, source }.into());
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    eprintln!("Starting a throwaway PostgreSQL cluster…");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&Options::default()))
        .await
        .expect("cluster start does not panic")?;
    create_schema(&cluster)?;

    let dir = tempfile::Builder::new().prefix("pgshift-demo-").tempdir()?;
    let path = dir.path().join("pgshift.toml");
    std::fs::write(&path, config_text(listen, &cluster.addr(), metrics, 0, 0))?;
    let config = Config::load(&path, &Overrides::default())?;
    crate::logging::init(&config.log);
    let handle = ConfigHandle::new(config, Some((path.clone(), Overrides::default())));
    let running = server::start_with(handle.clone()).await?;
    // The config names the requested addresses; with port 0 the bound ones differ, so show those.
    let proxy_url = format!("postgres://postgres@{}/postgres", running.addr);

    println!();
    println!("pgshift demo is running.");
    println!("  connect through pgshift:  psql \"{proxy_url}\"");
    println!(
        "  the same database direct: psql \"{}\"",
        cluster.url("postgres")
    );
    if let Some(maddr) = running.metrics_addr {
        println!(
            "  metrics and status:       curl http://{maddr}/metrics ; curl http://{maddr}/status"
        );
    }
    println!("  migrations:               users → v2.users (table), orders.legacy_status → new_status (column),");
    println!("                            both in dual_write; every write through pgshift lands on both sides");
    println!("  edit to shift reads:      {}", path.display());
    println!("  try in psql:              INSERT INTO users (fullname) VALUES ('me') RETURNING *;");
    println!("                            SELECT * FROM v2.users ORDER BY id DESC LIMIT 1;");
    println!("Press Ctrl-C to stop (the cluster, its data and this directory are removed).");
    println!();

    let workload = tokio::spawn(workload(proxy_url));
    let prometheus = crate::metrics::install();
    let view = async {
        let mut last: HashMap<String, f64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = counters(&prometheus.render());
            println!("{}", live_line(&handle, &now, &last));
            last = now;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = view => {}
        _ = async { match run_for { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    eprintln!(
        "Stopping: closing the workload, pgshift, and removing the cluster and {}…",
        dir.path().display()
    );
    // The workload's sessions end with it, so pgshift drains without closing anyone.
    workload.abort();
    let _ = workload.await;
    let control = running.controller();
    control.drain();
    let wait = running.wait();
    tokio::pin!(wait);
    tokio::select! {
        _ = &mut wait => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {
            control.close();
            let _ = wait.await;
        }
    }
    drop(cluster);
    drop(dir);
    eprintln!("Stopped.");
    Ok(())
}

/// A few application instances: each writes and reads both migrated tables a few times a second.
async fn workload(url: String) {
    // Aborting the workload drops the set, which aborts each app with its connection.
    let mut apps = tokio::task::JoinSet::new();
    for i in 0..6 {
        let name = if i == 5 {
            "batch_processor".to_owned()
        } else {
            format!("web-{i}")
        };
        let url = format!("{url}?application_name={name}");
        apps.spawn(async move {
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                return;
            };
            let work = async {
                for n in 0u64.. {
                    let _ = client
                        .execute(
                            "INSERT INTO users (fullname, email) VALUES ($1, $2)",
                            &[&format!("{name} {n}"), &None::<String>],
                        )
                        .await;
                    let _ = client
                        .execute(
                            "UPDATE orders SET legacy_status = $1 WHERE id = $2",
                            &[
                                &["new", "paid", "shipped"][(n % 3) as usize],
                                &(1 + (n % 100) as i64),
                            ],
                        )
                        .await;
                    let _ = client
                        .query("SELECT fullname FROM users ORDER BY id DESC LIMIT 5", &[])
                        .await;
                    let _ = client
                        .query("SELECT legacy_status, count(*) FROM orders GROUP BY 1", &[])
                        .await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            tokio::select! {
                _ = connection => {}
                _ = work => {}
            }
        });
    }
    while apps.join_next().await.is_some() {}
}

/// Counter values by `name{labels}` from the Prometheus text.
fn counters(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| {
            l.starts_with("pgshift_reads_total")
                || l.starts_with("pgshift_statements_rewritten_total")
        })
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn live_line(
    handle: &ConfigHandle,
    now: &HashMap<String, f64>,
    last: &HashMap<String, f64>,
) -> String {
    let config = handle.current();
    let delta = |key: String| {
        now.get(&key).copied().unwrap_or(0.0) - last.get(&key).copied().unwrap_or(0.0)
    };
    let mut parts = vec![format!("epoch {}", &config.epoch[..8])];
    for m in &config.migrations {
        let reads = |route: &str| {
            delta(format!(
                "pgshift_reads_total{{migration=\"{}\",route=\"{route}\"}}",
                m.name
            ))
        };
        let (new, old) = (reads("new"), reads("old") + reads("old_unrewritable"));
        let writes = delta(format!(
            "pgshift_statements_rewritten_total{{migration=\"{}\",kind=\"dual_write\"}}",
            m.name
        ));
        parts.push(format!(
            "{}: {}% configured, reads {new:.0} new / {old:.0} old, {writes:.0} dual writes",
            m.name,
            f64::from(m.reads.new_bp) / 100.0
        ));
    }
    format!("[last 2s] {}", parts.join(" | "))
}

fn create_schema(cluster: &Cluster) -> Result<(), DemoError> {
    cluster.psql("postgres", SCHEMA).map_err(DemoError::Schema)
}

/// The demo's config file, with other read percentages (used by the tests to drive the tour).
pub fn rewrite_percentages(path: &Path, users: u32, orders: u32) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut out = String::new();
    let mut seen = 0;
    for line in text.lines() {
        if line.starts_with("new_percent = ") {
            seen += 1;
            out.push_str(&format!(
                "new_percent = {}\n",
                if seen == 1 { users } else { orders }
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(tmp, path)
}
