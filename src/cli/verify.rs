//! `pgshift verify`: prove the target holds what the source says, chunk by chunk, each chunk compared inside
//! Postgres in one snapshot; `--repair` makes differing rows right. Exit 1 when differences remain. A run that
//! did not finish (killed) is resumed after its last chunk by the next one.

use super::control::{self, Format, Reporter};
use super::CliError;
use crate::backfill;
use std::path::Path;

pub async fn run(
    path: &Path,
    migration: &str,
    dsn: Option<&str>,
    repair: bool,
    max_rate: Option<u64>,
    format: Format,
) -> Result<(), CliError> {
    let mut c = control::open(path, migration, dsn).await?;
    let mut limits = c.config.control.backfill.clone();
    if let Some(rate) = max_rate {
        limits.max_rate = rate;
    }
    let mut reporter = Reporter::new(format);
    let verdict = backfill::verify(
        &mut c.client,
        &c.migration.name,
        &c.config.epoch,
        &c.mapping,
        repair,
        &limits,
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
