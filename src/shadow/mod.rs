//! Shadow reads: a sampled share of the reads on a migrated table is also evaluated on the other route and
//! compared, so a wrong `down`, lost precision or a forgotten column shows up before clients are routed there.
//!
//! **Where comparisons run: on pgshift's own connections** (the `[control] dsn`, one per database and worker),
//! in a read-only transaction under the client's role (`SET LOCAL ROLE`) and the settings its session had
//! (search_path, TimeZone, DateStyle, … as `pg_settings` reported them at its last transaction boundary). The
//! client's own connection was the other choice: it has the client's role, settings and temporary tables for
//! free, but a comparison at an idle point delays whatever the client sends next by the comparison's own
//! duration (measured: BENCHMARKS.md), and inside a transaction it would take locks for the client and could
//! abort its transaction. On separate connections the client pays only the sampling decision and a queue push;
//! the price is that the control role must be a member of the client roles it compares for, and reads of the
//! client's temporary tables or uncommitted rows are compared on committed data (both sides alike, so they
//! still agree or not on the same snapshot).
//!
//! A sample is taken when the client's statement is planned and handed over only when it completed without an
//! error, so nothing is compared for a failed statement or inside a failed transaction.

pub mod compare;
pub mod findings;
pub mod verdict;
mod worker;

use crate::config::migration::Migration;
use crate::config::reload::ConfigHandle;
use crate::rewrite::Plan;
use bytes::Bytes;
use compare::Side;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Who the client is in the database: its current role and the settings its session changed from the server's
/// defaults (startup parameters, SET, per-role and per-database settings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub role: String,
    pub settings: Vec<(String, String)>,
}

/// Reads the client's [`Identity`] on its own connection: `current_user` and the settings a comparison needs
/// to see what the client sees. Those that only pgshift's own transaction decides (role, timeouts,
/// transaction modes, client_encoding) are left out, as are those no session may change.
pub const IDENTITY_SQL: &str = "SELECT current_user::text, \
    (SELECT json_agg(json_build_array(name, setting))::text FROM pg_settings \
     WHERE source IN ('client', 'session', 'user', 'database', 'database user') \
     AND context IN ('user', 'superuser') \
     AND name NOT IN ('role', 'session_authorization', 'application_name', 'client_encoding', \
       'statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'idle_session_timeout', \
       'transaction_isolation', 'transaction_read_only', 'transaction_deferrable', \
       'default_transaction_isolation', 'default_transaction_read_only', 'default_transaction_deferrable') \
     AND name NOT LIKE 'pgshift.%')";

impl Identity {
    /// From the row of [`IDENTITY_SQL`].
    pub fn from_row(row: &[Option<String>]) -> Option<Identity> {
        let role = row.first()?.clone()?;
        let settings = match row.get(1).cloned().flatten() {
            Some(json) => serde_json::from_str::<Vec<(String, String)>>(&json).ok()?,
            None => Vec::new(),
        };
        Some(Identity { role, settings })
    }
}

/// The bound parameters of an extended-protocol read, kept as the client sent them and re-bound as such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Parameter type OIDs from the client's Parse (0: let Postgres infer).
    pub types: Vec<u32>,
    /// Format code of each value (0 text, 1 binary).
    pub formats: Vec<i16>,
    pub values: Vec<Option<Bytes>>,
}

/// One sampled read, on its way to a comparison.
#[derive(Debug)]
pub struct Job {
    pub migration: Arc<str>,
    /// [`mapping_hash`] of the migration when sampled: findings restart when it changes.
    pub mapping: u64,
    pub database: String,
    /// The route the client was served from.
    pub served: Side,
    /// The client's SQL, and its plan on the new route.
    pub sql: String,
    pub new_plan: Arc<Plan>,
    pub params: Option<Params>,
    pub identity: Arc<Identity>,
}

/// A job waiting for its statement to complete: handed over only if it succeeds.
#[derive(Debug)]
pub struct Sample {
    pub job: Job,
    pub shadow: Shadow,
}

impl Sample {
    pub fn submit(self) {
        self.shadow.submit(self.job);
    }
}

/// The handle sessions hold: a bounded queue to the comparison workers, and the findings.
#[derive(Clone)]
pub struct Shadow(Arc<Inner>);

struct Inner {
    tx: mpsc::Sender<Job>,
    findings: findings::Findings,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shadow")
    }
}

impl Shadow {
    /// Starts the comparison workers on the current runtime (they connect when the first sample comes); the
    /// caller aborts their tasks when pgshift stops.
    pub fn start(live: Arc<ConfigHandle>) -> (Shadow, Vec<tokio::task::JoinHandle<()>>) {
        let settings = live.current().control.shadow.clone();
        let (tx, rx) = mpsc::channel(settings.queue);
        let shadow = Shadow(Arc::new(Inner {
            tx,
            findings: findings::Findings::default(),
        }));
        let workers = worker::start(rx, shadow.clone(), live, settings.connections);
        (shadow, workers)
    }

    pub fn findings(&self) -> &findings::Findings {
        &self.0.findings
    }

    /// Queues a comparison; a full queue skips it rather than wait (the client must not).
    pub fn submit(&self, job: Job) {
        if let Err(e) = self.0.tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            self.0
                .findings
                .skipped(&job.migration, job.mapping, "queue_full");
        }
    }

    /// A sampled read that will not be compared, and why.
    pub fn skipped(&self, migration: &str, mapping: u64, reason: &'static str) {
        self.0.findings.skipped(migration, mapping, reason);
    }
}

/// What a comparison's outcome depends on in a migration's definition: findings made under another mapping
/// say nothing about this one.
pub fn mapping_hash(m: &Migration) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    format!("{:?}{:?}{:?}{:?}", m.kind, m.table, m.new_table, m.columns).hash(&mut h);
    h.finish()
}

/// Whether the `n`-th draw of a session samples, at `ppm` parts per million: a fast deterministic mix of a
/// per-session seed and a counter.
pub fn draw(state: &mut u64, ppm: u32) -> bool {
    if ppm == 0 {
        return false;
    }
    if ppm >= 1_000_000 {
        return true;
    }
    // splitmix64
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % 1_000_000 < u64::from(ppm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_hit_the_rate() {
        let mut state = 42;
        let hits = (0..1_000_000).filter(|_| draw(&mut state, 10_000)).count();
        assert!((9_500..10_500).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| draw(&mut state, 0)));
        assert!((0..1000).all(|_| draw(&mut state, 1_000_000)));
    }

    #[test]
    fn identity_rows() {
        let row = [
            Some("app".to_owned()),
            Some(r#"[["search_path","app, public"],["TimeZone","Asia/Tokyo"]]"#.to_owned()),
        ];
        assert_eq!(
            Identity::from_row(&row),
            Some(Identity {
                role: "app".into(),
                settings: vec![
                    ("search_path".into(), "app, public".into()),
                    ("TimeZone".into(), "Asia/Tokyo".into())
                ],
            })
        );
        assert_eq!(
            Identity::from_row(&[Some("app".to_owned()), None])
                .unwrap()
                .settings,
            vec![]
        );
        assert_eq!(Identity::from_row(&[None, None]), None);
    }
}
