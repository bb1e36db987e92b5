//! `pgshift demo`: a throwaway PostgreSQL cluster with pgshift in front of it, until Ctrl-C.

use crate::config::{Config, Overrides};
use crate::pgcluster::{Cluster, Options};
use crate::server;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] crate::pgcluster::ClusterError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0} (pick other addresses with --listen / --metrics)")]
    Start(#[from] server::StartError),
    #[error("could not create the demo schema: {0}")]
    Schema(String),
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer text NOT NULL, \
    legacy_status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO orders (customer, legacy_status) SELECT 'customer ' || g, (ARRAY['new','paid','shipped'])[1 + g % 3] \
    FROM generate_series(1, 100) g;";

pub async fn run(listen: &str, metrics: &str) -> Result<(), DemoError> {
    eprintln!("Starting a throwaway PostgreSQL cluster…");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&Options::default()))
        .await
        .expect("cluster start does not panic")?;
    create_schema(&cluster)?;

    let overrides = Overrides {
        listen: Some(listen.to_owned()),
        upstream: Some(cluster.addr()),
        metrics: Some(metrics.to_owned()),
    };
    let text = "[upstream]\naddr = \"127.0.0.1:5432\"\n[upstream.tls]\nmode = \"disable\"\n";
    let config = Config::parse(text, Path::new("<demo>"), &overrides)?;
    crate::logging::init(&config.log);
    let running = server::start(config).await?;

    println!();
    println!("pgshift demo is running.");
    println!(
        "  connect through pgshift:  psql \"postgres://postgres@{}/postgres\"",
        running.addr
    );
    println!(
        "  the same database direct: psql \"{}\"",
        cluster.url("postgres")
    );
    if let Some(maddr) = running.metrics_addr {
        println!("  metrics:                  curl http://{maddr}/metrics");
    }
    println!("  try:                      SELECT legacy_status, count(*) FROM orders GROUP BY 1;");
    println!("Press Ctrl-C to stop (the cluster and its data are removed).");

    let _ = tokio::signal::ctrl_c().await;
    eprintln!("Stopping…");
    running.drain();
    running.close();
    let _ = running.wait().await;
    drop(cluster);
    Ok(())
}

fn create_schema(cluster: &Cluster) -> Result<(), DemoError> {
    let psql = cluster.bin_dir.join("psql");
    let psql = if psql.is_file() { psql } else { "psql".into() };
    let out = Command::new(psql)
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &cluster.url("postgres"),
            "-c",
            SCHEMA,
        ])
        .output()
        .map_err(|e| DemoError::Schema(format!("running psql: {e}")))?;
    if !out.status.success() {
        return Err(DemoError::Schema(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}
