//! `pgshift backfill` and `pgshift verify`: copy what existed before the dual write began, prove both sides
//! agree, repair what does not. Both run over pgshift's own connection to the database, never through the
//! proxy, while the proxy keeps dual-writing.
//!
//! - [`mapping`]: the SQL, from the rewriter's own mapping;
//! - [`pace`]: batch sizing by time, rate limit, backoff (pure);
//! - [`store`]: checkpoints and verify results in the `pgshift` schema; [`status`]: their view on `/status`;
//! - this file: the loops, with throttling on replication lag and stop/resume.

pub mod mapping;
pub mod pace;
pub mod status;
pub mod store;

use crate::admin::cause;
use crate::config::BackfillSection;
use mapping::Mapping;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Why a backfill or verify stopped before its end (exit status 2). Progress up to the last committed batch is
/// kept.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{what}: {cause}")]
    Database { what: &'static str, cause: String },
    #[error("the replica's replication lag cannot be read ({0}); stopped rather than copy blind. Progress is saved: run the same command to resume")]
    LagUnreadable(String),
    #[error("migration \"{migration}\" cannot be copied: {detail}")]
    Mapping { migration: String, detail: String },
}

fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> CopyError {
    move |e| CopyError::Database {
        what,
        cause: cause(&e),
    }
}

/// Where replication lag is read.
pub enum LagSource {
    /// The largest `replay_lag` in the primary's `pg_stat_replication` (0 without replicas).
    Primary,
    /// A replica's own replay delay; a failure to read it stops the backfill.
    Replica(Client),
}

impl LagSource {
    async fn read(&self, primary: &Client) -> Result<Duration, CopyError> {
        let secs: f64 = match self {
            LagSource::Primary => {
                let row = primary
                    .query_one(
                        "SELECT count(*) FILTER (WHERE state IS NULL), \
                         coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication",
                        &[],
                    )
                    .await
                    .map_err(db("reading pg_stat_replication"))?;
                // Without pg_monitor (or pg_read_all_stats) the replicas are listed with their columns NULL.
                if row.get::<_, i64>(0) > 0 {
                    return Err(CopyError::LagUnreadable(
                        "pg_stat_replication hides the replicas' lag from this role: grant it pg_monitor, \
                         or set [control] replica_dsn"
                            .into(),
                    ));
                }
                row.get(1)
            }
            LagSource::Replica(replica) => return replica_lag(replica).await,
        };
        Ok(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX))
    }
}

/// A replica's own replay delay; a server that is not in recovery is an error (the DSN points at a primary).
/// Also a rollout guard.
pub async fn replica_lag(replica: &Client) -> Result<Duration, CopyError> {
    let row = replica
        .query_one(
            "SELECT pg_is_in_recovery(), CASE \
             WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
             ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END::float8",
            &[],
        )
        .await
        .map_err(|e| CopyError::LagUnreadable(cause(&e)))?;
    if !row.get::<_, bool>(0) {
        return Err(CopyError::LagUnreadable(
            "the replica DSN points at a primary".into(),
        ));
    }
    // Behind, with no transaction replayed yet to date it: as far behind as can be.
    let secs = row.get::<_, Option<f64>>(1).unwrap_or(f64::MAX);
    Ok(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX))
}

/// What a backfill or verify reports as it goes; the CLI renders it (progress bar or JSON lines).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        migration: String,
        direction: &'static str,
        estimated_rows: i64,
        resumed_from: Option<Vec<String>>,
        rows_done: i64,
    },
    Restarted {
        migration: String,
        reason: String,
    },
    Batch {
        rows: i64,
        written: i64,
        rows_done: i64,
        batch_size: u64,
        millis: u64,
    },
    Paused {
        lag_millis: u64,
        max_lag_millis: u64,
    },
    Retrying {
        attempt: u32,
        error: String,
        batch_size: u64,
    },
    /// Waiting for client statements older than the last batch before settling it.
    Waiting {
        statements: i64,
    },
    Chunk {
        rows: i64,
        rows_done: i64,
        differences: i64,
    },
    /// A differing key, with both sides' values (the source mapped to the target's columns) for the first
    /// [`SHOWN_WITH_VALUES`] of a run.
    Difference {
        kind: String,
        key: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<serde_json::Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<serde_json::Value>,
    },
    Finished {
        migration: String,
        rows_read: i64,
        rows_written: i64,
        stopped_early: bool,
    },
    Verified {
        migration: String,
        #[serde(flatten)]
        verdict: store::Verdict,
        clean: bool,
    },
}

/// How a backfill ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub rows_read: i64,
    pub rows_written: i64,
    /// Stopped by SIGINT after a batch; resumable.
    pub stopped_early: bool,
}

/// Whether a database error is worth retrying the batch: lock or statement timeout, deadlock, serialization.
fn transient(e: &tokio_postgres::Error) -> Option<bool> {
    let code = e.code()?;
    let timeout = *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED;
    let conflict =
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE;
    (timeout || conflict).then_some(timeout)
}

const MAX_ATTEMPTS: u32 = 8;

/// Copies every source row to the target in key order, resuming from the migration's checkpoint if its
/// mapping is unchanged. `limits` may change while it runs; `stop` ends it after the current batch.
pub async fn backfill(
    client: &mut Client,
    migration: &str,
    mapping: &Mapping,
    limits: watch::Receiver<BackfillSection>,
    stop: watch::Receiver<bool>,
    lag: &LagSource,
    report: &mut dyn FnMut(Event),
) -> Result<Outcome, CopyError> {
    store::ensure(&*client)
        .await
        .map_err(db("creating the pgshift schema"))?;
    let fingerprint = mapping.fingerprint();
    let estimated: i64 = client
        .query_one(&mapping.estimate_sql(), &[])
        .await
        .map_err(db("estimating the source's rows"))?
        .get(0);
    let saved = store::load(&*client, migration)
        .await
        .map_err(db("reading the checkpoint"))?;
    let (mut last_key, mut rows_read, mut rows_written) = match saved {
        Some(c) if c.mapping == fingerprint && !c.finished => {
            (c.last_key, c.rows_read, c.rows_written)
        }
        other => {
            let reason = match other {
                Some(c) if c.mapping == fingerprint => Some("the last backfill finished; copying again (rows already equal are not rewritten)"),
                Some(_) => Some("the mapping changed since the checkpoint was taken (columns, expressions, key or phase); starting over"),
                None => None,
            };
            if let Some(reason) = reason {
                report(Event::Restarted {
                    migration: migration.to_owned(),
                    reason: reason.into(),
                });
            }
            store::start(
                &*client,
                migration,
                &fingerprint,
                mapping.direction.label(),
                estimated,
            )
            .await
            .map_err(db("saving the checkpoint"))?;
            (None, 0, 0)
        }
    };
    report(Event::Started {
        migration: migration.to_owned(),
        direction: mapping.direction.label(),
        estimated_rows: estimated,
        resumed_from: last_key.clone(),
        rows_done: rows_read,
    });
    let mut size = limits
        .borrow()
        .min_rows
        .max(1000)
        .min(limits.borrow().max_rows);
    let started = Instant::now();
    let mut copied_here: u64 = 0;
    let mut removed = 0;
    let mut stopped_early = false;
    loop {
        if *stop.borrow() {
            stopped_early = true;
            break;
        }
        let l = limits.borrow().clone();
        // Throttle: wait while replicas lag, and keep to the rate limit.
        loop {
            let behind = lag.read(client).await?;
            if behind <= l.max_lag {
                break;
            }
            report(Event::Paused {
                lag_millis: u64::try_from(behind.as_millis()).unwrap_or(u64::MAX),
                max_lag_millis: l.max_lag.as_millis() as u64,
            });
            if wait_or_stop(Duration::from_secs(1), &stop).await {
                break;
            }
        }
        if *stop.borrow() {
            stopped_early = true;
            break;
        }
        let pause = pace::rate_pause(copied_here, started.elapsed(), l.max_rate);
        if !pause.is_zero() && wait_or_stop(pause, &stop).await {
            stopped_early = true;
            break;
        }
        let mut attempt = 0;
        let (read, written, key, took) = loop {
            attempt += 1;
            let begun = Instant::now();
            match run_batch(client, migration, mapping, last_key.as_deref(), size, &l).await {
                Ok((read, written, key)) => break (read, written, key, begun.elapsed()),
                Err(e) => match transient(&e) {
                    Some(timeout) if attempt < MAX_ATTEMPTS => {
                        if timeout {
                            size = pace::after_timeout(size, &l);
                        }
                        report(Event::Retrying {
                            attempt,
                            error: cause(&e),
                            batch_size: size,
                        });
                        if wait_or_stop(pace::backoff(attempt), &stop).await {
                            report(Event::Finished {
                                migration: migration.to_owned(),
                                rows_read,
                                rows_written: rows_written + removed,
                                stopped_early: true,
                            });
                            return Ok(Outcome {
                                rows_read,
                                rows_written,
                                stopped_early: true,
                            });
                        }
                    }
                    _ => return Err(db("copying a batch")(e)),
                },
            }
        };
        let Some(key) = key else {
            // An empty batch: the end, unless rows it locked were deleted meanwhile and more follow.
            let more = match &last_key {
                None => false,
                Some(k) => {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        k.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
                    client
                        .query_one(&mapping.more_sql(), &params)
                        .await
                        .map_err(db("checking for more rows"))?
                        .get(0)
                }
            };
            if more {
                continue;
            }
            removed += settle_after_commit(
                client,
                mapping,
                last_key.as_deref(),
                None,
                &l,
                &stop,
                report,
            )
            .await?;
            break;
        };
        let prev = last_key.replace(key.clone());
        removed += settle_after_commit(
            client,
            mapping,
            prev.as_deref(),
            Some(&key),
            &l,
            &stop,
            report,
        )
        .await?;
        rows_read += read;
        rows_written += written;
        copied_here += read as u64;
        report(Event::Batch {
            rows: read,
            written,
            rows_done: rows_read,
            batch_size: size,
            millis: took.as_millis() as u64,
        });
        size = pace::next_size(size, took, &l);
    }
    if !stopped_early {
        store::finish(&*client, migration)
            .await
            .map_err(db("saving the checkpoint"))?;
    }
    report(Event::Finished {
        migration: migration.to_owned(),
        rows_read,
        rows_written: rows_written + removed,
        stopped_early,
    });
    Ok(Outcome {
        rows_read,
        rows_written,
        stopped_early,
    })
}

/// One batch and its checkpoint, in one transaction with the batch's timeouts.
async fn run_batch(
    client: &mut Client,
    migration: &str,
    mapping: &Mapping,
    after: Option<&[String]>,
    size: u64,
    limits: &BackfillSection,
) -> Result<(i64, i64, Option<Vec<String>>), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&timeouts(limits)).await?;
    let limit = size as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit];
    if let Some(key) = after {
        params.extend(key.iter().map(|s| s as &(dyn ToSql + Sync)));
    }
    let row = tx
        .query_one(&mapping.batch_sql(after.is_some()), &params)
        .await?;
    let (read, written, key): (i64, i64, Option<Vec<String>>) =
        (row.get(0), row.get(1), row.get(2));
    if let Some(key) = &key {
        store::advance(&tx, migration, key, read, written).await?;
    }
    tx.commit().await?;
    Ok((read, written, key))
}

/// After a batch commits: waits until no client statement that may hold a snapshot from before the commit is
/// still running, then removes target rows of the batch's key range whose source row is gone (table kind).
///
/// Such a statement may have deleted a source row the batch had just copied: it waited on the batch's row
/// lock, and its mirrored delete then read the target with a snapshot that does not see the copy. Returns the
/// rows changed.
async fn settle_after_commit(
    client: &mut Client,
    mapping: &Mapping,
    lower: Option<&[String]>,
    upper: Option<&[String]>,
    limits: &BackfillSection,
    stop: &watch::Receiver<bool>,
    report: &mut dyn FnMut(Event),
) -> Result<i64, CopyError> {
    if mapping.kind != crate::config::migration::MigrationKind::Table {
        return Ok(0);
    }
    let committed: std::time::SystemTime = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .map_err(db("reading the clock"))?
        .get(0);
    let waiting_since = Instant::now();
    let mut told = false;
    loop {
        let older: i64 = client
            .query_one(OLDER_SNAPSHOTS, &[&committed])
            .await
            .map_err(db("reading pg_stat_activity"))?
            .get(0);
        if older == 0 {
            break;
        }
        if !told && waiting_since.elapsed() > Duration::from_secs(1) {
            told = true;
            report(Event::Waiting { statements: older });
        }
        if wait_or_stop(Duration::from_millis(5), stop).await {
            // Stopped while waiting: this range stays as copied; `verify --repair` (or the next backfill from
            // the start) settles it.
            return Ok(0);
        }
    }
    repair_rows(
        client,
        mapping,
        limits,
        &Repair::OrphansIn { lower, upper },
        "settling a batch",
    )
    .await
}

/// Which target rows a repair makes what the source says.
enum Repair<'k> {
    Keys(Vec<Vec<String>>),
    /// The target rows of a key range whose source row is gone, found and locked in the repair's transaction.
    OrphansIn {
        lower: Option<&'k [String]>,
        upper: Option<&'k [String]>,
    },
}

/// One repair transaction with the batch timeouts, retried with backoff on timeouts and conflicts; returns the
/// rows changed.
async fn repair_rows(
    client: &mut Client,
    mapping: &Mapping,
    limits: &BackfillSection,
    which: &Repair<'_>,
    what: &'static str,
) -> Result<i64, CopyError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let tx = client.transaction().await?;
            tx.batch_execute(&timeouts(limits)).await?;
            let keys: Vec<Vec<String>> = match which {
                Repair::Keys(keys) => keys.clone(),
                Repair::OrphansIn { lower, upper } => {
                    let params: Vec<&(dyn ToSql + Sync)> = [lower, upper]
                        .into_iter()
                        .flatten()
                        .flat_map(|key| key.iter().map(|s| s as &(dyn ToSql + Sync)))
                        .collect();
                    tx.query(
                        &mapping.orphans_sql(lower.is_some(), upper.is_some()),
                        &params,
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
                }
            };
            let mut changed = 0;
            if !keys.is_empty() {
                // A new statement, so a new snapshot: what it sees of the source is what holds now that the
                // target rows are locked.
                let columns = key_columns(&keys, mapping.source_key.len());
                let params: Vec<&(dyn ToSql + Sync)> =
                    columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                let row = tx.query_one(&mapping.repair_sql(), &params).await?;
                changed = row.get::<_, i64>(0) + row.get::<_, i64>(1);
            }
            tx.commit().await?;
            Ok::<i64, tokio_postgres::Error>(changed)
        }
        .await;
        match result {
            Ok(n) => return Ok(n),
            Err(e) if transient(&e).is_some() && attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(pace::backoff(attempt)).await;
            }
            Err(e) => return Err(db(what)(e)),
        }
    }
}

/// Client statements in this database that may hold a snapshot from before `$1`.
const OLDER_SNAPSHOTS: &str = "SELECT count(*) FROM pg_stat_activity \
    WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND datname = current_database() \
    AND backend_xmin IS NOT NULL AND coalesce(xact_start, query_start) < $1";

fn timeouts(limits: &BackfillSection) -> String {
    format!(
        "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
        limits.lock_timeout.as_millis().max(1),
        limits.statement_timeout.as_millis().max(1)
    )
}

/// Keys as one text[] per key column, for `unnest`.
fn key_columns(keys: &[Vec<String>], width: usize) -> Vec<Vec<String>> {
    (0..width)
        .map(|i| keys.iter().map(|k| k[i].clone()).collect())
        .collect()
}

/// Sleeps for `d`, or less if a stop is requested; true when stopped.
async fn wait_or_stop(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}

/// Compares source and target chunk by chunk in key order; with `repair`, makes each differing target row
/// what the source says and checks the chunk again.
pub async fn verify(
    client: &mut Client,
    migration: &str,
    epoch: &str,
    mapping: &Mapping,
    repair: bool,
    limits: &BackfillSection,
    report: &mut dyn FnMut(Event),
) -> Result<store::Verdict, CopyError> {
    store::ensure(&*client)
        .await
        .map_err(db("creating the pgshift schema"))?;
    let estimated: i64 = client
        .query_one(&mapping.estimate_sql(), &[])
        .await
        .map_err(db("estimating the source's rows"))?
        .get(0);
    let (run, mut verdict, mut last_key) = store::open_verification(
        &*client,
        migration,
        epoch,
        &mapping.fingerprint(),
        mapping.direction.label(),
    )
    .await
    .map_err(db("recording the verification"))?;
    report(Event::Started {
        migration: migration.to_owned(),
        direction: mapping.direction.label(),
        estimated_rows: estimated,
        resumed_from: last_key.clone(),
        rows_done: verdict.rows_checked,
    });
    let mut shown_so_far = 0;
    // Reading is cheaper than writing: chunks may be larger than backfill batches.
    let mut size = limits.max_rows.min(10_000).max(limits.min_rows);
    let chunk_limits = BackfillSection {
        max_rows: limits.max_rows.saturating_mul(4),
        ..limits.clone()
    };
    let started = Instant::now();
    let mut checked_here: u64 = 0;
    loop {
        // `max_rate` holds for verify too: its reads load the primary.
        tokio::time::sleep(pace::rate_pause(
            checked_here,
            started.elapsed(),
            limits.max_rate,
        ))
        .await;
        let begun = Instant::now();
        let (differences, rows, key) =
            verify_chunk(client, mapping, last_key.as_deref(), size).await?;
        let took = begun.elapsed();
        verdict.rows_checked += rows;
        checked_here += rows as u64;
        for (_, key) in differences.iter() {
            if verdict.differing_keys.len() < SHOWN_WITH_VALUES {
                verdict.differing_keys.push(key.join(", "));
            }
        }
        for (kind, _) in &differences {
            match kind.as_str() {
                "missing" => verdict.missing += 1,
                "extra" => verdict.extra += 1,
                _ => verdict.different += 1,
            }
        }
        let shown = SHOWN_WITH_VALUES
            .saturating_sub(shown_so_far)
            .min(differences.len());
        let mut values = values_of(client, mapping, &differences[..shown]).await?;
        for (kind, key) in differences.iter().take(SHOWN_PER_CHUNK) {
            let (source, target) = values.remove(key).unwrap_or((None, None));
            report(Event::Difference {
                kind: kind.clone(),
                key: key.clone(),
                source,
                target,
            });
        }
        shown_so_far += shown;
        verdict.chunks += 1;
        let mut remaining = differences.len() as i64;
        if repair && !differences.is_empty() {
            let keys = differences.iter().map(|(_, k)| k.clone()).collect();
            verdict.repaired += repair_rows(
                client,
                mapping,
                limits,
                &Repair::Keys(keys),
                "repairing differences",
            )
            .await?;
            let (left, _, _) = verify_chunk(client, mapping, last_key.as_deref(), size).await?;
            remaining = left.len() as i64;
        }
        verdict.remaining += remaining;
        report(Event::Chunk {
            rows,
            rows_done: verdict.rows_checked,
            differences: differences.len() as i64,
        });
        let Some(key) = key else {
            break;
        };
        store::save_verification(&*client, run, &verdict, Some(&key), false)
            .await
            .map_err(db("recording the verification"))?;
        last_key = Some(key);
        size = pace::next_size(size, took, &chunk_limits);
    }
    store::save_verification(&*client, run, &verdict, last_key.as_deref(), true)
        .await
        .map_err(db("recording the verification"))?;
    report(Event::Verified {
        migration: migration.to_owned(),
        clean: verdict.remaining == 0,
        verdict: verdict.clone(),
    });
    Ok(verdict)
}

type Differences = Vec<(String, Vec<String>)>;

/// Differing keys reported per chunk, and of those, how many per run come with both sides' values.
const SHOWN_PER_CHUNK: usize = 20;
pub const SHOWN_WITH_VALUES: usize = 20;

type Values =
    std::collections::HashMap<Vec<String>, (Option<serde_json::Value>, Option<serde_json::Value>)>;

/// Both sides' values of the given differences, by key.
async fn values_of(
    client: &Client,
    mapping: &Mapping,
    differences: &[(String, Vec<String>)],
) -> Result<Values, CopyError> {
    if differences.is_empty() {
        return Ok(Values::new());
    }
    let keys: Vec<Vec<String>> = differences.iter().map(|(_, k)| k.clone()).collect();
    let columns = key_columns(&keys, mapping.source_key.len());
    let params: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    let rows = client
        .query(&mapping.values_sql(), &params)
        .await
        .map_err(db("reading the differing rows"))?;
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), (json(r.get(1)), json(r.get(2)))))
        .collect())
}

/// One chunk: the key range after `after` holding `size` source rows (the rest of the table when fewer
/// remain): its differences, its row count and its last key (`None` for the last chunk).
async fn verify_chunk(
    client: &Client,
    mapping: &Mapping,
    after: Option<&[String]>,
    size: u64,
) -> Result<(Differences, i64, Option<Vec<String>>), CopyError> {
    let limit = size as i64;
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(key) = after {
        params.extend(key.iter().map(|s| s as &(dyn ToSql + Sync)));
    }
    params.push(&limit);
    let upper: Option<Vec<String>> = client
        .query_opt(&mapping.bound_sql(after.is_some()), &params)
        .await
        .map_err(db("finding a chunk's end"))?
        .map(|r| r.get(0));
    params.pop();
    if let Some(key) = &upper {
        params.extend(key.iter().map(|s| s as &(dyn ToSql + Sync)));
    }
    let (lower, bounded) = (after.is_some(), upper.is_some());
    if mapping.kind == crate::config::migration::MigrationKind::Table {
        let row = client
            .query_one(&mapping.checksum_sql(lower, bounded), &params)
            .await
            .map_err(db("comparing a chunk"))?;
        let (source_rows, target_rows, same): (i64, i64, bool) =
            (row.get(0), row.get(1), row.get(2));
        if source_rows == target_rows && same {
            return Ok((Vec::new(), source_rows, upper));
        }
    }
    let rows = client
        .query(&mapping.verify_sql(lower, bounded), &params)
        .await
        .map_err(db("comparing a chunk"))?;
    let mut differences = Vec::new();
    let mut count = 0;
    for row in rows {
        let kind: String = row.get(0);
        if kind == "chunk" {
            count = row.get(2);
        } else {
            differences.push((kind, row.get::<_, Vec<String>>(1)));
        }
    }
    Ok((differences, count, upper))
}
