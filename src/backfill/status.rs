//! What `/status` shows of backfills and verifications: read every few seconds over the control connection
//! (`[control] dsn`), so every pgshift replica reports the same progress whoever runs the backfill.

use crate::config::reload::ConfigHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::Client;

const EVERY: Duration = Duration::from_secs(5);

const PROGRESS: &str = "SELECT json_build_object(
    'backfills', (SELECT coalesce(json_agg(json_build_object(
        'migration', migration, 'direction', direction, 'rows_read', rows_read, 'rows_written', rows_written,
        'rows_estimated', rows_total, 'last_key', last_key, 'started_at', started_at, 'updated_at', updated_at,
        'finished_at', finished_at) ORDER BY migration), '[]') FROM pgshift.backfills),
    'verifications', (SELECT coalesce(json_agg(json_build_object(
        'migration', migration, 'finished_at', finished_at, 'age_seconds', extract(epoch FROM now() - finished_at)::bigint,
        'rows_checked', rows_checked, 'missing', missing, 'extra', extra, 'different', different,
        'repaired', repaired, 'clean', clean, 'fresh', clean AND finished_at > now() - interval '24 hours')
        ORDER BY migration), '[]')
        FROM (SELECT DISTINCT ON (migration) * FROM pgshift.verifications WHERE finished_at IS NOT NULL
              ORDER BY migration, finished_at DESC) v)
)::text";

/// Keeps `out` at the latest progress; `null` without a control DSN. Runs until dropped.
pub async fn watch(config: Arc<ConfigHandle>, out: watch::Sender<serde_json::Value>) {
    let mut connected: Option<(String, Client)> = None;
    let mut failing = false;
    loop {
        let current = config.current();
        let value = match current.control.dsn.clone() {
            None => {
                connected = None;
                serde_json::Value::Null
            }
            Some(dsn) => {
                if connected
                    .as_ref()
                    .is_none_or(|(d, c)| *d != dsn || c.is_closed())
                {
                    connected = crate::admin::connect_control(
                        &dsn,
                        current.control.password_file.as_deref(),
                    )
                    .await
                    .map_err(|e| {
                        // Once per outage, not every round.
                        if !failing {
                            tracing::warn!(error = %e, "control connection for /status failed; retrying every 5 s");
                        }
                    })
                    .ok()
                    .map(|c| (dsn.clone(), c));
                    failing = connected.is_none();
                }
                match &connected {
                    None => serde_json::json!({"error": "cannot connect to [control] dsn"}),
                    Some((_, client)) => read(client).await,
                }
            }
        };
        out.send_replace(value);
        tokio::time::sleep(EVERY).await;
    }
}

async fn read(client: &Client) -> serde_json::Value {
    match client.query_one(PROGRESS, &[]).await {
        Ok(row) => serde_json::from_str(row.get::<_, &str>(0)).unwrap_or_default(),
        // No backfill or verify has run in this database yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            serde_json::json!({"backfills": [], "verifications": []})
        }
        Err(e) => serde_json::json!({"error": crate::admin::cause(&e)}),
    }
}
