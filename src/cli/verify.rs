//! `pgshift verify`: prove the target holds what the source says, chunk by chunk, each chunk compared inside
//! Postgres in one snapshot; `--repair` makes differing rows right. Exit 1 when differences remain.

use super::control::{self, Format, Reporter};
use super::CliError;
use crate::backfill;
use std::path::Path;

pub async fn run(
    path: &Path,
    migration: &str,
    dsn: Option<&str>,
    repair: bool,
    format: Format,
) -> Result<(), CliError> {
    let mut c = control::open(path, migration, dsn).await?;
    let mut reporter = Reporter::new(format);
    let verdict = backfill::verify(
        &mut c.client,
        &c.migration.name,
        &c.config.epoch,
        &c.mapping,
        repair,
        &c.config.control.backfill,
        &mut |e| reporter.event(e),
    )
    .await?;
    if verdict.remaining > 0 {
        return Err(CliError::Differences {
            migration: c.migration.name,
            count: verdict.remaining,
        });
    }
    Ok(())
}
