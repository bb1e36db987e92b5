//! Every metric name in one place, and the Prometheus recorder. [`crate::http`] serves what it records.
//!
//! Data-path counters are resolved once into [`Handles`] so that recording costs an atomic add, not a
//! registry lookup; they are recorded per read batch or per message, never per row.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, Counter, Gauge, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const CONNECTIONS_ACTIVE: &str = "pgshift_client_connections_active";
pub const CONNECTIONS_TOTAL: &str = "pgshift_client_connections_total";
pub const CONNECTIONS_REFUSED: &str = "pgshift_client_connections_refused_total";
pub const BYTES: &str = "pgshift_bytes_total";
pub const MESSAGES: &str = "pgshift_client_messages_total";
pub const UPSTREAM_CONNECT_FAILURES: &str = "pgshift_upstream_connect_failures_total";
pub const PROTOCOL_ERRORS: &str = "pgshift_protocol_errors_total";
pub const SESSION_DURATION: &str = "pgshift_session_duration_seconds";
pub const CANCEL_REQUESTS: &str = "pgshift_cancel_requests_total";
pub const CONFIG_INFO: &str = "pgshift_config_info";
pub const CONFIG_RELOADS: &str = "pgshift_config_reloads_total";
pub const STATEMENTS_REWRITTEN: &str = "pgshift_statements_rewritten_total";
pub const STATEMENTS_REFUSED: &str = "pgshift_statements_refused_total";
pub const READS: &str = "pgshift_reads_total";
pub const STATEMENT_DURATION: &str = "pgshift_statement_duration_seconds";
pub const STATEMENT_ERRORS: &str = "pgshift_statement_errors_total";
pub const SHADOW_COMPARISONS: &str = "pgshift_shadow_comparisons_total";
pub const SHADOW_MISMATCH_RATIO: &str = "pgshift_shadow_mismatch_ratio";
pub const SHADOW_DURATION: &str = "pgshift_shadow_comparison_seconds";
pub const ROLLOUT_STEP: &str = "pgshift_rollout_step";
pub const ROLLOUT_PERCENT: &str = "pgshift_rollout_new_percent";
pub const ROLLOUT_STATE: &str = "pgshift_rollout_state";
pub const ROLLOUT_CHECKS: &str = "pgshift_rollout_guard_checks_total";
pub const ROLLOUT_ROLLBACKS: &str = "pgshift_rollout_rollbacks_total";

/// Client message kinds counted in [`MESSAGES`], by frontend tag.
const MESSAGE_KINDS: [(u8, &str); 11] = [
    (b'Q', "query"),
    (b'P', "parse"),
    (b'B', "bind"),
    (b'D', "describe"),
    (b'E', "execute"),
    (b'C', "close"),
    (b'S', "sync"),
    (b'H', "flush"),
    (b'F', "function_call"),
    (b'd', "copy_data"),
    (b'X', "terminate"),
];

/// Pre-resolved handles for the per-message and per-batch counters.
pub struct Handles {
    pub bytes_from_client: Counter,
    pub bytes_from_upstream: Counter,
    pub connections_active: Gauge,
    messages: [Counter; 256],
}

impl Handles {
    pub fn message(&self, tag: u8) -> &Counter {
        &self.messages[tag as usize]
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();
static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle; later calls reuse it.
pub fn install() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(SESSION_DURATION.to_owned()),
                    &[0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(STATEMENT_DURATION.to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        10.0,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(SHADOW_DURATION.to_owned()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Folds recorded histogram samples into their buckets every few seconds. The exporter keeps each sample until
/// a scrape or this upkeep folds it in, so without it a pgshift nobody scrapes grows with every session.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

pub fn handles() -> &'static Handles {
    HANDLES.get_or_init(|| Handles {
        bytes_from_client: counter!(BYTES, "direction" => "client_to_upstream"),
        bytes_from_upstream: counter!(BYTES, "direction" => "upstream_to_client"),
        connections_active: gauge!(CONNECTIONS_ACTIVE),
        messages: std::array::from_fn(|tag| {
            let kind = MESSAGE_KINDS
                .iter()
                .find(|(t, _)| usize::from(*t) == tag)
                .map_or("other", |(_, k)| k);
            counter!(MESSAGES, "message" => kind)
        }),
    })
}

fn describe() {
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now.");
    describe_counter!(CONNECTIONS_TOTAL, "Client connections accepted.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused, by reason."
    );
    describe_counter!(BYTES, Unit::Bytes, "Bytes forwarded, by direction.");
    describe_counter!(
        MESSAGES,
        "Client protocol messages forwarded, by message kind."
    );
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES,
        "Failed connections to the upstream, by cause."
    );
    describe_counter!(
        PROTOCOL_ERRORS,
        "Sessions ended by a protocol violation, by the side at fault."
    );
    describe_histogram!(SESSION_DURATION, Unit::Seconds, "Client session lifetimes.");
    describe_counter!(CANCEL_REQUESTS, "Cancel requests received, by outcome.");
    describe_gauge!(
        CONFIG_INFO,
        "Always 1; the label `epoch` is the loaded config's content hash."
    );
    describe_histogram!(
        STATEMENT_DURATION,
        Unit::Seconds,
        "Latency of statements on migrated tables, from the client's message to the end of its reply, by migration and route."
    );
    describe_counter!(
        SHADOW_COMPARISONS,
        "Shadow comparisons of sampled reads, by migration and result (match, mismatch, noise, error, skipped)."
    );
    describe_gauge!(
        SHADOW_MISMATCH_RATIO,
        "Share of a migration's shadow comparisons (under its current mapping) whose sides differed."
    );
    describe_histogram!(
        SHADOW_DURATION,
        Unit::Seconds,
        "Time one shadow comparison took on pgshift's own connection (what a client would wait for it on its own)."
    );
    describe_gauge!(
        ROLLOUT_STEP,
        "The index of a ramped migration's current step."
    );
    describe_gauge!(
        ROLLOUT_PERCENT,
        "The share of reads a ramped migration's rollout routes to new now, in percent."
    );
    describe_gauge!(
        ROLLOUT_STATE,
        "1 for a ramped migration's rollout state (pending, ramping, paused, rolled_back, complete), 0 for the others."
    );
    describe_counter!(
        ROLLOUT_CHECKS,
        "Guard checks of ramped migrations on this replica's traffic, by result (pass, fail, insufficient)."
    );
    describe_counter!(
        ROLLOUT_ROLLBACKS,
        "Rollouts rolled back, by migration and reason (guard, command)."
    );
    describe_counter!(
        STATEMENT_ERRORS,
        "Statements on migrated tables the server answered with an error, by migration, route and SQLSTATE class."
    );
}

/// A per-migration counter with one extra label, resolved through the registry once per thread and reused:
/// the data path records per statement, and a registry lookup with label allocation (or a lock shared by the
/// session threads) would cost more than the rest of the statement's handling.
pub fn migration_counter(
    metric: &'static str,
    migration: &str,
    label: &'static str,
    value: &'static str,
) -> Counter {
    type ByMigration = rustc_hash::FxHashMap<String, Counter>;
    type Counters = rustc_hash::FxHashMap<(&'static str, &'static str, &'static str), ByMigration>;
    thread_local! {
        static COUNTERS: std::cell::RefCell<Counters> = Default::default();
    }
    COUNTERS.with_borrow_mut(|counters| {
        let by_migration = counters.entry((metric, label, value)).or_default();
        if let Some(c) = by_migration.get(migration) {
            return c.clone();
        }
        let c = counter!(metric, "migration" => migration.to_owned(), label => value);
        by_migration.insert(migration.to_owned(), c.clone());
        c
    })
}

/// The statement latency histogram for a migration and route, cached like [`migration_counter`].
pub fn statement_duration(migration: &str, route: &'static str) -> metrics::Histogram {
    type ByMigration = rustc_hash::FxHashMap<String, metrics::Histogram>;
    thread_local! {
        static HISTOGRAMS: std::cell::RefCell<rustc_hash::FxHashMap<&'static str, ByMigration>> =
            Default::default();
    }
    HISTOGRAMS.with_borrow_mut(|all| {
        let by_migration = all.entry(route).or_default();
        if let Some(h) = by_migration.get(migration) {
            return h.clone();
        }
        let h = metrics::histogram!(STATEMENT_DURATION, "migration" => migration.to_owned(), "route" => route);
        by_migration.insert(migration.to_owned(), h.clone());
        h
    })
}
