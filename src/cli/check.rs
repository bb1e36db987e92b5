//! `pgshift check`: validate a config file and print what it sets in the config's own words; with `--dsn`,
//! check every migration against the live catalog.

use super::{word, CliError};
use crate::admin;
use crate::config::{Config, Overrides};
use std::path::Path;

pub async fn run(path: &Path, dsn: Option<&str>) -> Result<(), CliError> {
    let config = Config::load(path, &Overrides::default())?;
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
    let Some(dsn) = dsn else {
        return Ok(());
    };
    let client = admin::connect(dsn).await?;
    let findings = admin::check(&client, &config).await?;
    for note in &findings.notes {
        println!("  {note}");
    }
    if !findings.problems.is_empty() {
        return Err(CliError::Catalog {
            migrations: config.migrations.len(),
            problems: findings.problems,
        });
    }
    println!("live catalog: every migration checks out");
    Ok(())
}
