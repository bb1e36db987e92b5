//! Where every replica reads and writes rollout state: `pgshift.rollouts` (one row per migration, changed only
//! conditionally on its version, so of two replicas deciding the same step exactly one wins) and
//! `pgshift.events` (the audit trail). Each change commits with its event and a `NOTIFY pgshift_rollout`, which
//! every replica LISTENs to.

use super::plan::{State, Status};
use tokio_postgres::{Client, GenericClient};

pub const CHANNEL: &str = "pgshift_rollout";

/// Loads every migration's state.
pub async fn load(
    client: &impl GenericClient,
) -> Result<Vec<(String, State)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT migration, status, step, (extract(epoch FROM since) * 1000)::bigint, reason, promoted, version \
             FROM pgshift.rollouts",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let status: String = r.get(1);
            let status = serde_json::from_value(serde_json::Value::String(status)).ok()?;
            let step: i32 = r.get(2);
            Some((
                r.get(0),
                State {
                    status,
                    step: step.max(0) as usize,
                    since_ms: r.get(3),
                    reason: r.get(4),
                    promoted: r.get(5),
                    version: r.get(6),
                },
            ))
        })
        .collect())
}

/// A change of one migration's state, made only if its version is still `from_version` (0: no row yet).
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub migration: &'a str,
    pub from_version: i64,
    pub status: Status,
    pub step: usize,
    pub reason: &'a str,
    pub promoted: bool,
    /// The event: what happened (`step`, `trip`, `command`, …), who did it, and its numbers.
    pub kind: &'a str,
    pub actor: &'a str,
    pub detail: serde_json::Value,
}

impl Change<'_> {
    /// The event's detail: the change's own details with the state it leads to.
    pub fn event_detail(&self) -> serde_json::Value {
        let mut detail = self.detail.clone();
        if let Some(d) = detail.as_object_mut() {
            d.insert("status".into(), self.status.label().into());
            d.insert("step".into(), self.step.into());
            d.insert("reason".into(), self.reason.into());
        }
        detail
    }
}

/// Applies `change` with its event and notification in one transaction; false if another replica (or an
/// operator) changed the state first.
pub async fn apply(
    client: &mut Client,
    change: &Change<'_>,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let status = change.status.label();
    let step = change.step as i32;
    let changed = if change.from_version == 0 {
        tx.execute(
            "INSERT INTO pgshift.rollouts (migration, status, step, reason, promoted) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (migration) DO NOTHING",
            &[&change.migration, &status, &step, &change.reason, &change.promoted],
        )
        .await?
    } else {
        tx.execute(
            "UPDATE pgshift.rollouts SET status = $2, step = $3, reason = $4, promoted = $5, since = now(), \
             version = version + 1, updated_at = now() WHERE migration = $1 AND version = $6",
            &[
                &change.migration,
                &status,
                &step,
                &change.reason,
                &change.promoted,
                &change.from_version,
            ],
        )
        .await?
    };
    if changed == 0 {
        return Ok(false);
    }
    let detail = change.event_detail();
    event(
        &tx,
        Some(change.migration),
        change.kind,
        change.actor,
        &detail,
    )
    .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &change.migration])
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Records an event in `pgshift.events` and logs it as one JSON line.
pub async fn event(
    client: &impl GenericClient,
    migration: Option<&str>,
    kind: &str,
    actor: &str,
    detail: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    log_event(migration, kind, actor, detail);
    client
        .execute(
            "INSERT INTO pgshift.events (migration, kind, actor, detail) VALUES ($1, $2, $3, $4::text::jsonb)",
            &[&migration, &kind, &actor, &detail.to_string()],
        )
        .await?;
    Ok(())
}

/// The event as one JSON line in the log.
pub fn log_event(migration: Option<&str>, kind: &str, actor: &str, detail: &serde_json::Value) {
    let line = serde_json::json!({"event": kind, "migration": migration, "actor": actor, "detail": detail});
    tracing::info!(target: "pgshift::events", "{line}");
}

/// The most recent events of a migration, newest first: (at, kind, actor, detail).
pub async fn recent_events(
    client: &impl GenericClient,
    migration: &str,
    limit: i64,
) -> Result<Vec<(String, String, String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT to_char(at, 'YYYY-MM-DD HH24:MI:SS.MS TZ'), kind, actor, detail::text FROM pgshift.events \
             WHERE migration = $1 ORDER BY id DESC LIMIT $2",
            &[&migration, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// The age in seconds of the migration's last clean, finished verification, if any.
pub async fn verified_age(
    client: &impl GenericClient,
    migration: &str,
) -> Result<Option<f64>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT extract(epoch FROM now() - max(finished_at))::float8 FROM pgshift.verifications \
             WHERE migration = $1 AND clean AND finished_at IS NOT NULL",
            &[&migration],
        )
        .await?;
    Ok(row.get(0))
}
