//! `pgshift verify`: prove the target holds what the source says, chunk by chunk, each chunk compared inside
//! Postgres in one snapshot; `--repair` makes differing rows right. Exit 1 when differences remain. A run that
//! did not finish (killed) is resumed after its last chunk by the next one.

use super::control::{self, Reporter, Target};
use super::CliError;
use crate::backfill;

pub async fn run(target: &Target, repair: bool, max_rate: Option<u64>) -> Result<(), CliError> {
    let mut c = control::open(target).await?;
    let mut limits = c.config.control.backfill.clone();
    if let Some(rate) = max_rate {
        limits.max_rate = rate;
    }
    let mut reporter = Reporter::new(target.format);
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
