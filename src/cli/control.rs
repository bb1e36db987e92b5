//! What `backfill` and `verify` share: the control connection, the migration's mapping from the live catalog,
//! and the progress output (a bar on a terminal, JSON lines otherwise).

use super::CliError;
use crate::admin;
use crate::backfill::mapping::Mapping;
use crate::backfill::Event;
use crate::config::migration::Migration;
use crate::config::{Config, Overrides};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tokio_postgres::Client;

/// `--format`: a progress bar for people, JSON lines for machines; `auto` picks by whether stdout is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Auto,
    Human,
    Json,
}

/// What `backfill` and `verify` act on, and how they report.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The config file that declares the migration.
    #[arg(short, long)]
    pub config: PathBuf,
    /// The migration's name in the config.
    #[arg(long)]
    pub migration: String,
    /// The database (default: [control] dsn); the password comes from PGPASSWORD or control.password_file.
    #[arg(long)]
    pub dsn: Option<String>,
    /// Progress as a bar (human) or JSON lines; auto: a bar on a terminal.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
}

/// The config, the migration named, a connection to its database and its mapping.
pub struct Control {
    pub config: Config,
    pub migration: Migration,
    pub client: Client,
    pub mapping: Mapping,
}

pub async fn open(target: &Target) -> Result<Control, CliError> {
    let (name, dsn) = (target.migration.as_str(), target.dsn.as_deref());
    let config = Config::load(&target.config, &Overrides::default())?;
    let migration = config
        .migrations
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .ok_or_else(|| CliError::NoMigration {
            name: name.to_owned(),
            known: config.migrations.iter().map(|m| m.name.clone()).collect(),
        })?;
    let dsn = dsn
        .map(str::to_owned)
        .or_else(|| config.control.dsn.clone())
        .ok_or(CliError::NoDsn)?;
    let client = admin::connect_control(&dsn, config.control.password_file.as_deref()).await?;
    let schema = admin::schema(&client, &[&migration]).await?;
    let mapping =
        Mapping::of(&migration, &schema).map_err(|e| crate::backfill::CopyError::Mapping {
            migration: migration.name.clone(),
            detail: e.detail,
        })?;
    Ok(Control {
        config,
        migration,
        client,
        mapping,
    })
}

/// Renders events as they come.
pub struct Reporter {
    json: bool,
    bar: Option<ProgressBar>,
}

impl Reporter {
    pub fn new(format: Format) -> Reporter {
        let json = match format {
            Format::Json => true,
            Format::Human => false,
            Format::Auto => !std::io::IsTerminal::is_terminal(&std::io::stdout()),
        };
        Reporter { json, bar: None }
    }

    pub fn event(&mut self, event: Event) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&event).expect("events serialize")
            );
            return;
        }
        match event {
            Event::Started {
                migration,
                direction,
                estimated_rows,
                resumed_from,
                rows_done,
            } => {
                let from = resumed_from
                    .map(|k| format!(", resuming after key ({})", k.join(", ")))
                    .unwrap_or_default();
                println!("{migration}: {direction}, about {estimated_rows} rows{from}");
                let bar = ProgressBar::new(estimated_rows.max(rows_done).max(1) as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg:10} [{wide_bar}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
                    )
                    .expect("a valid template"),
                );
                bar.set_position(rows_done as u64);
                self.bar = Some(bar);
            }
            Event::Restarted { migration, reason } => println!("{migration}: {reason}"),
            Event::Batch { rows_done, .. } | Event::Chunk { rows_done, .. } => {
                if let Some(bar) = &self.bar {
                    let done = rows_done as u64;
                    if done > bar.length().unwrap_or(0) {
                        bar.set_length(done);
                    }
                    bar.set_position(done);
                    bar.set_message("");
                }
            }
            Event::Paused {
                lag_millis,
                max_lag_millis,
            } => self.say_in_bar(
                "paused",
                format!("replication lag {lag_millis} ms > {max_lag_millis} ms"),
            ),
            Event::Waiting { statements } => self.say_in_bar(
                "waiting",
                format!(
                    "waiting for {statements} statement(s) older than the last batch to finish"
                ),
            ),
            Event::Retrying {
                attempt,
                error,
                batch_size,
            } => self.line(format!(
                "retry {attempt} with {batch_size} rows after: {error}"
            )),
            Event::Difference {
                kind,
                key,
                source,
                target,
            } => {
                let side = |v: Option<serde_json::Value>| {
                    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
                };
                let values = if source.is_some() || target.is_some() {
                    format!("  source {}  target {}", side(source), side(target))
                } else {
                    String::new()
                };
                self.line(format!("{kind}: key ({}){values}", key.join(", ")))
            }
            Event::Finished {
                migration,
                rows_read,
                rows_written,
                stopped_early,
            } => {
                self.done();
                if stopped_early {
                    println!("{migration}: stopped after {rows_read} rows ({rows_written} written); run the same command to resume");
                } else {
                    println!("{migration}: backfill complete, {rows_read} rows read, {rows_written} written");
                }
            }
            Event::Verified {
                migration,
                verdict,
                clean,
            } => {
                self.done();
                println!(
                    "{migration}: {} — {} rows checked, {} missing, {} extra, {} different, {} repaired",
                    if clean { "clean" } else { "DIFFERENCES" },
                    verdict.rows_checked,
                    verdict.missing,
                    verdict.extra,
                    verdict.different,
                    verdict.repaired
                );
            }
        }
    }

    fn say_in_bar(&self, msg: &'static str, why: String) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(msg);
                bar.println(why);
            }
            None => println!("{why}"),
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
