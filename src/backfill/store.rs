//! pgshift's own tables, in the `pgshift` schema of the migrated database: backfill checkpoints, verify
//! results, rollout state and events (`crate::rollout::store`). Written in the same transaction as the batch they describe, so a killed backfill resumes exactly
//! where its last committed batch ended.

use tokio_postgres::GenericClient;

/// Creates the schema and tables if missing (idempotent; two runs racing to create them is retried once).
pub const SCHEMA: &str = "\
CREATE SCHEMA IF NOT EXISTS pgshift;
CREATE TABLE IF NOT EXISTS pgshift.backfills (
    migration    text PRIMARY KEY,
    mapping      text NOT NULL,
    direction    text NOT NULL,
    last_key     text[],
    rows_read    bigint NOT NULL DEFAULT 0,
    rows_written bigint NOT NULL DEFAULT 0,
    rows_total   bigint,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE TABLE IF NOT EXISTS pgshift.verifications (
    id           bigserial PRIMARY KEY,
    migration    text NOT NULL,
    mapping      text NOT NULL,
    direction    text NOT NULL,
    epoch        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    last_key     text[],
    rows_checked bigint NOT NULL DEFAULT 0,
    chunks       bigint NOT NULL DEFAULT 0,
    missing      bigint NOT NULL DEFAULT 0,
    extra        bigint NOT NULL DEFAULT 0,
    different    bigint NOT NULL DEFAULT 0,
    repaired     bigint NOT NULL DEFAULT 0,
    remaining    bigint NOT NULL DEFAULT 0,
    -- The first differing keys (key columns joined by ', '), for whoever reads this later.
    differing_keys text[] NOT NULL DEFAULT '{}',
    clean        boolean
);
CREATE TABLE IF NOT EXISTS pgshift.rollouts (
    migration    text PRIMARY KEY,
    status       text NOT NULL,
    step         integer NOT NULL DEFAULT 0,
    since        timestamptz NOT NULL DEFAULT now(),
    reason       text NOT NULL DEFAULT '',
    promoted     boolean NOT NULL DEFAULT false,
    version      bigint NOT NULL DEFAULT 1,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgshift.events (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    migration    text,
    kind         text NOT NULL,
    actor        text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);";

pub async fn ensure(client: &impl GenericClient) -> Result<(), tokio_postgres::Error> {
    // Already there: a role without CREATE on the database may use it (CREATE … IF NOT EXISTS checks the
    // privilege first).
    let present: bool = client
        .query_one(
            "SELECT to_regclass('pgshift.backfills') IS NOT NULL \
             AND to_regclass('pgshift.verifications') IS NOT NULL \
             AND to_regclass('pgshift.rollouts') IS NOT NULL AND to_regclass('pgshift.events') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if present {
        return Ok(());
    }
    match client.batch_execute(SCHEMA).await {
        // Another pgshift created them at the same moment (unique_violation on the catalog).
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            client.batch_execute(SCHEMA).await
        }
        other => other,
    }
}

/// A backfill's saved position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub mapping: String,
    pub last_key: Option<Vec<String>>,
    pub rows_read: i64,
    pub rows_written: i64,
    pub finished: bool,
}

pub async fn load(
    client: &impl GenericClient,
    migration: &str,
) -> Result<Option<Checkpoint>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT mapping, last_key, rows_read, rows_written, finished_at IS NOT NULL \
             FROM pgshift.backfills WHERE migration = $1",
            &[&migration],
        )
        .await?;
    Ok(row.map(|r| Checkpoint {
        mapping: r.get(0),
        last_key: r.get(1),
        rows_read: r.get(2),
        rows_written: r.get(3),
        finished: r.get(4),
    }))
}

/// Starts (or restarts) a backfill from the beginning.
pub async fn start(
    client: &impl GenericClient,
    migration: &str,
    mapping: &str,
    direction: &str,
    total: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgshift.backfills (migration, mapping, direction, rows_total) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (migration) DO UPDATE SET mapping = EXCLUDED.mapping, direction = EXCLUDED.direction, \
             last_key = NULL, rows_read = 0, rows_written = 0, rows_total = EXCLUDED.rows_total, \
             started_at = now(), updated_at = now(), finished_at = NULL",
            &[&migration, &mapping, &direction, &total],
        )
        .await
        .map(drop)
}

/// Records one committed batch (call inside the batch's transaction).
pub async fn advance(
    client: &impl GenericClient,
    migration: &str,
    last_key: &[String],
    read: i64,
    written: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgshift.backfills SET last_key = $2, rows_read = rows_read + $3, \
             rows_written = rows_written + $4, updated_at = now() WHERE migration = $1",
            &[&migration, &last_key, &read, &written],
        )
        .await
        .map(drop)
}

pub async fn finish(
    client: &impl GenericClient,
    migration: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgshift.backfills SET finished_at = now(), updated_at = now() WHERE migration = $1",
            &[&migration],
        )
        .await
        .map(drop)
}

/// What one verify run found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub rows_checked: i64,
    pub chunks: i64,
    pub missing: i64,
    pub extra: i64,
    pub different: i64,
    pub repaired: i64,
    /// Differences left after any repair.
    pub remaining: i64,
    /// The first [`super::SHOWN_WITH_VALUES`] differing keys, key columns joined by ", ".
    pub differing_keys: Vec<String>,
}

/// A verify run: resumed when the last run of this migration under the same mapping did not finish, else new.
/// Returns its id, the verdict so far and the key it stopped after.
pub async fn open_verification(
    client: &impl GenericClient,
    migration: &str,
    epoch: &str,
    mapping: &str,
    direction: &str,
) -> Result<(i64, Verdict, Option<Vec<String>>), tokio_postgres::Error> {
    let unfinished = client
        .query_opt(
            "SELECT id, last_key, rows_checked, chunks, missing, extra, different, repaired, remaining, \
             differing_keys \
             FROM pgshift.verifications WHERE migration = $1 AND mapping = $2 AND finished_at IS NULL \
             AND id = (SELECT max(id) FROM pgshift.verifications WHERE migration = $1)",
            &[&migration, &mapping],
        )
        .await?;
    if let Some(r) = unfinished {
        let verdict = Verdict {
            rows_checked: r.get(2),
            chunks: r.get(3),
            missing: r.get(4),
            extra: r.get(5),
            different: r.get(6),
            repaired: r.get(7),
            remaining: r.get(8),
            differing_keys: r.get(9),
        };
        return Ok((r.get(0), verdict, r.get(1)));
    }
    let id = client
        .query_one(
            "INSERT INTO pgshift.verifications (migration, mapping, direction, epoch) VALUES ($1, $2, $3, $4) \
             RETURNING id",
            &[&migration, &mapping, &direction, &epoch],
        )
        .await?
        .get(0);
    Ok((id, Verdict::default(), None))
}

/// Records a checked chunk; `finished` closes the run with its verdict.
pub async fn save_verification(
    client: &impl GenericClient,
    id: i64,
    v: &Verdict,
    last_key: Option<&[String]>,
    finished: bool,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE pgshift.verifications SET last_key = $2, rows_checked = $3, chunks = $4, missing = $5, \
             extra = $6, different = $7, repaired = $8, remaining = $9, differing_keys = $11, updated_at = now(), \
             finished_at = CASE WHEN $10 THEN now() END, clean = CASE WHEN $10 THEN $9::bigint = 0 END WHERE id = $1",
            &[
                &id,
                &last_key,
                &v.rows_checked,
                &v.chunks,
                &v.missing,
                &v.extra,
                &v.different,
                &v.repaired,
                &v.remaining,
                &finished,
                &v.differing_keys,
            ],
        )
        .await
        .map(drop)
}
