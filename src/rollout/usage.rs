//! Contract readiness: who still sends statements that touch a migration's old table (every statement pgshift
//! plans for the migration names it), and how many prepared statements held by live sessions do — so an
//! operator can see "no old-schema statements for 72 h" before removing the migration and dropping the old
//! table or column. Sessions report at most once a second per migration, not per statement.

use std::collections::HashMap;
use std::sync::Mutex;

/// Who a session is, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client {
    pub application_name: String,
    pub user: String,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    statements: u64,
    last_seen_unix: u64,
}

/// Clients kept per migration; the least recently seen are dropped past this.
const MAX_CLIENTS: usize = 1000;

#[derive(Default)]
pub struct Usage {
    clients: Mutex<HashMap<String, HashMap<Client, Seen>>>,
    prepared: Mutex<HashMap<String, i64>>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Usage {
    /// `n` statements on `migration` from `client`, just now.
    pub fn statements(&self, migration: &str, client: &Client, n: u64) {
        let mut all = self.clients.lock().expect("usage lock");
        let clients = all.entry(migration.to_owned()).or_default();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            if let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, s)| s.last_seen_unix)
                .map(|(c, _)| c.clone())
            {
                clients.remove(&oldest);
            }
        }
        let seen = clients.entry(client.clone()).or_default();
        seen.statements += n;
        seen.last_seen_unix = now_unix();
    }

    /// Prepared statements on `migration` held by live sessions: `delta` more (or fewer).
    pub fn prepared(&self, migration: &str, delta: i64) {
        *self
            .prepared
            .lock()
            .expect("usage lock")
            .entry(migration.to_owned())
            .or_default() += delta;
    }

    /// `/status` of one migration: its clients by last use, prepared statements, time since the last use.
    pub fn status(&self, migration: &str) -> serde_json::Value {
        let now = now_unix();
        let all = self.clients.lock().expect("usage lock");
        let mut clients: Vec<(&Client, &Seen)> = all
            .get(migration)
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        clients.sort_by_key(|(_, s)| std::cmp::Reverse(s.last_seen_unix));
        let last = clients.first().map(|(_, s)| s.last_seen_unix);
        let prepared = self
            .prepared
            .lock()
            .expect("usage lock")
            .get(migration)
            .copied()
            .unwrap_or(0);
        serde_json::json!({
            "prepared_statements": prepared,
            "last_seen_unix": last,
            "quiet_seconds": last.map(|l| now.saturating_sub(l)),
            "clients": clients.iter().take(50).map(|(c, s)| serde_json::json!({
                "application_name": c.application_name,
                "user": c.user,
                "client_addr": c.client_addr,
                "statements": s.statements,
                "last_seen_unix": s.last_seen_unix,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_and_prepared_statements_are_reported() {
        let u = Usage::default();
        let app = |name: &str| Client {
            application_name: name.into(),
            user: "app".into(),
            client_addr: Some("10.0.0.7".into()),
        };
        u.statements("m", &app("billing"), 3);
        u.statements("m", &app("billing"), 2);
        u.statements("m", &app("reports"), 1);
        u.prepared("m", 2);
        u.prepared("m", -1);
        let s = u.status("m");
        assert_eq!(s["prepared_statements"], 1);
        assert_eq!(s["clients"].as_array().unwrap().len(), 2);
        let billing = s["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["application_name"] == "billing")
            .unwrap();
        assert_eq!(billing["statements"], 5);
        assert_eq!(billing["client_addr"], "10.0.0.7");
        assert_eq!(s["quiet_seconds"], 0);
        assert_eq!(u.status("other")["last_seen_unix"], serde_json::Value::Null);
    }
}
