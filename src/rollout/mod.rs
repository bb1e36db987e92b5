//! Guarded rollouts: a ramp that advances itself, rolls itself back on bad numbers, and is the same on every
//! replica. The plan is config (`[migration.reads.ramp]`, `[migration.guard]`); where it stands is state in the
//! database (`pgshift.rollouts`, through `[control] dsn`), so every replica behind a load balancer agrees, a
//! restart resumes at the same step, and a change reaches every replica within a second (LISTEN/NOTIFY, with a
//! one-second poll as the fallback). Each replica judges its own traffic; the first to see a guard fail writes the
//! trip, which rolls back all.

pub mod file;
pub mod guard;
pub mod plan;
pub mod store;
pub mod usage;

use crate::config::migration::Migration;
use crate::config::reload::{ConfigHandle, Overlay};
use crate::shadow::Shadow;
use guard::{Action, Check, Failures, Window};
use plan::{Move, State, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How often the state is read when no notification arrives.
const POLL: Duration = Duration::from_secs(1);

/// A replica's own measurements of statements on migrated tables, per migration and route, since the last
/// guard check.
#[derive(Default)]
pub struct Measurements(Mutex<HashMap<String, Window>>);

impl Measurements {
    /// One statement served from `route` (`old` or `new`; writes are not compared).
    pub fn record(
        &self,
        migration: &str,
        route: &str,
        statement: u64,
        seconds: f64,
        class: Option<&str>,
    ) {
        let mut all = self.0.lock().expect("measurements lock");
        let w = match all.get_mut(migration) {
            Some(w) => w,
            None => all.entry(migration.to_owned()).or_default(),
        };
        match route {
            "new" => w.new.record(statement, seconds, class),
            "old" => w.old.record(statement, seconds, class),
            _ => {}
        }
    }

    /// The window since the last call, emptied.
    fn take(&self, migration: &str) -> Window {
        self.0
            .lock()
            .expect("measurements lock")
            .remove(migration)
            .unwrap_or_default()
    }
}

/// What a replica knows of every rollout, and its last guard checks.
pub struct Rollouts {
    live: Arc<ConfigHandle>,
    pub measurements: Measurements,
    /// Who still uses each migration's old table (contract readiness).
    pub usage: usage::Usage,
    states: Mutex<HashMap<String, State>>,
    checks: Mutex<HashMap<String, (Check, u32)>>,
    shadow: Option<Shadow>,
    /// Who this replica is in events.
    actor: String,
    /// The last config summary announced as an event.
    announced: Mutex<Option<serde_json::Value>>,
    changed: Notify,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rollouts")
    }
}

impl Rollouts {
    /// Starts following the shared state (and judging the guards) on the current runtime.
    pub fn start(
        live: Arc<ConfigHandle>,
        shadow: Option<Shadow>,
        actor: String,
    ) -> (Arc<Rollouts>, Vec<JoinHandle<()>>) {
        let r = Arc::new(Rollouts {
            live,
            measurements: Measurements::default(),
            usage: usage::Usage::default(),
            states: Mutex::new(HashMap::new()),
            checks: Mutex::new(HashMap::new()),
            shadow,
            actor,
            announced: Mutex::new(None),
            changed: Notify::new(),
        });
        let tasks = vec![
            tokio::spawn(follow(r.clone())),
            tokio::spawn(judge(r.clone())),
        ];
        (r, tasks)
    }

    fn state(&self, migration: &str) -> State {
        self.states
            .lock()
            .expect("states lock")
            .get(migration)
            .cloned()
            .unwrap_or_else(State::pending)
    }

    /// `/status` of one migration's rollout: state, current share, last guard check.
    pub fn status(&self, m: &Migration) -> serde_json::Value {
        let Some(ramp) = &m.ramp else {
            return serde_json::Value::Null;
        };
        let state = self.state(&m.name);
        let effect = plan::effect(ramp, &state, m.writes);
        let checks = self.checks.lock().expect("checks lock");
        let (check, failures) = checks
            .get(&m.name)
            .map(|(c, f)| (serde_json::to_value(c).unwrap_or_default(), *f))
            .unwrap_or((serde_json::Value::Null, 0));
        serde_json::json!({
            "status": state.status.label(),
            "step": state.step,
            "steps_percent": ramp.steps.iter().map(|&b| f64::from(b) / 100.0).collect::<Vec<_>>(),
            "new_percent": f64::from(effect.new_bp) / 100.0,
            "writes": effect.writes,
            "promoted": state.promoted,
            "since_unix_ms": state.since_ms,
            "reason": state.reason,
            "version": state.version,
            "last_check": check,
            "consecutive_failures": failures,
        })
    }

    /// The config event's detail: what `config` declares, and what changed since the last one announced.
    fn announce(&self, config: &crate::config::Config) -> serde_json::Value {
        let summary = config_summary(config);
        let mut last = self.announced.lock().expect("announced lock");
        let mut detail = summary.clone();
        detail["changes"] = config_changes(last.as_ref(), &summary);
        *last = Some(summary);
        detail
    }

    /// Takes the states read from the database; applies what they mean to the live config.
    fn absorb(&self, states: Vec<(String, State)>) {
        {
            let mut known = self.states.lock().expect("states lock");
            let fresh: HashMap<String, State> = states.into_iter().collect();
            for (name, state) in &fresh {
                if known.get(name) != Some(state) {
                    tracing::info!(migration = %name, status = state.status.label(), step = state.step,
                        reason = %state.reason, "rollout state changed");
                }
            }
            *known = fresh;
        }
        self.apply();
    }

    /// The overlay every migration with a ramp gets from its state.
    fn apply(&self) {
        let file = self.live.file();
        let states = self.states.lock().expect("states lock");
        let mut overlay = Overlay::new();
        for m in &file.migrations {
            if let Some(ramp) = &m.ramp {
                let state = states.get(&m.name).cloned().unwrap_or_else(State::pending);
                let effect = plan::effect(ramp, &state, m.writes);
                ::metrics::gauge!(crate::metrics::ROLLOUT_STEP, "migration" => m.name.clone())
                    .set(state.step as f64);
                ::metrics::gauge!(crate::metrics::ROLLOUT_PERCENT, "migration" => m.name.clone())
                    .set(f64::from(effect.new_bp) / 100.0);
                for s in [
                    Status::Pending,
                    Status::Ramping,
                    Status::Paused,
                    Status::RolledBack,
                    Status::Complete,
                ] {
                    ::metrics::gauge!(crate::metrics::ROLLOUT_STATE, "migration" => m.name.clone(), "state" => s.label())
                        .set(if s == state.status { 1.0 } else { 0.0 });
                }
                overlay.insert(m.name.clone(), effect);
            }
        }
        drop(states);
        self.live.set_overlay(overlay);
    }
}

/// Connects to the control database, `LISTEN`ing if asked.
async fn control(live: &ConfigHandle, listen: Option<Arc<Notify>>) -> Option<Client> {
    let config = live.file();
    let dsn = config.control.dsn.as_deref()?;
    let settings =
        crate::admin::control_config(dsn, config.control.password_file.as_deref()).ok()?;
    let (client, mut conn) = settings.connect(NoTls).await.ok()?;
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(n) = &listen {
                        n.notify_one();
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    crate::backfill::store::ensure(&client).await.ok()?;
    Some(client)
}

/// Keeps the states (and so the routing) in step with the database: at every notification, and every second.
async fn follow(r: Arc<Rollouts>) {
    let mut warned = false;
    loop {
        if !r.live.file().migrations.iter().any(|m| m.ramp.is_some()) {
            r.apply();
            tokio::time::sleep(POLL).await;
            continue;
        }
        let config = r.live.file();
        if config.control.dsn.is_none() {
            follow_file(&r, &config).await;
            continue;
        }
        let notified = Arc::new(Notify::new());
        let Some(client) = control(&r.live, Some(notified.clone())).await else {
            if !warned {
                tracing::warn!("rollouts: cannot reach [control] dsn; routing keeps the last known state, retrying");
                warned = true;
            }
            tokio::time::sleep(POLL).await;
            continue;
        };
        warned = false;
        if client
            .batch_execute(&format!("LISTEN {}", store::CHANNEL))
            .await
            .is_err()
        {
            continue;
        }
        let mut epoch = String::new();
        while !client.is_closed() {
            // A config this replica has not announced yet: what it declares and what changed, as an event.
            let file = r.live.file();
            if file.epoch != epoch {
                epoch = file.epoch.clone();
                let detail = r.announce(&file);
                if let Err(e) = store::event(&client, None, "config", &r.actor, &detail).await {
                    tracing::warn!(error = %crate::admin::cause(&e), "rollout: cannot record the config event");
                }
            }
            match store::load(&client).await {
                Ok(states) => r.absorb(states),
                Err(_) => break,
            }
            tokio::select! {
                _ = notified.notified() => {}
                _ = r.changed.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// The configured replica's replay lag, read as the backfill reads it (a replica that does not answer as a
/// replica is an error, not zero).
async fn replica_lag(
    replica: &mut Option<Client>,
    dsn: &str,
    config: &crate::config::Config,
) -> Result<Duration, String> {
    if replica.as_ref().is_none_or(|c| c.is_closed()) {
        *replica = Some(
            crate::admin::connect_control(dsn, config.control.password_file.as_deref())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let client = replica.as_ref().expect("connected above");
    crate::backfill::replica_lag(client)
        .await
        .map_err(|e| match e {
            crate::backfill::CopyError::LagUnreadable(why) => why,
            other => other.to_string(),
        })
}

/// What changed between two configs' summaries: migrations added, removed, or changed (by name).
fn config_changes(
    before: Option<&serde_json::Value>,
    after: &serde_json::Value,
) -> serde_json::Value {
    let by_name =
        |v: Option<&serde_json::Value>| -> std::collections::BTreeMap<String, serde_json::Value> {
            v.and_then(|v| v["migrations"].as_array())
                .into_iter()
                .flatten()
                .map(|m| (m["name"].as_str().unwrap_or_default().to_owned(), m.clone()))
                .collect()
        };
    let (old, new) = (by_name(before), by_name(Some(after)));
    let added: Vec<&String> = new.keys().filter(|n| !old.contains_key(*n)).collect();
    let removed: Vec<&String> = old.keys().filter(|n| !new.contains_key(*n)).collect();
    let changed: Vec<serde_json::Value> = new
        .iter()
        .filter_map(|(n, m)| {
            let was = old.get(n)?;
            (was != m).then(|| serde_json::json!({"name": n, "from": was, "to": m}))
        })
        .collect();
    serde_json::json!({"added": added, "removed": removed, "changed": changed})
}

/// What a config declares about migrations, for its event: phases, percentages, ramps.
fn config_summary(config: &crate::config::Config) -> serde_json::Value {
    serde_json::json!({
        "epoch": config.epoch,
        "migrations": config.migrations.iter().map(|m| serde_json::json!({
            "name": m.name,
            "writes": m.writes,
            "new_percent": f64::from(m.reads.new_bp) / 100.0,
            "ramp": m.ramp.as_ref().map(|r| serde_json::json!({
                "steps": r.steps.iter().map(|&b| f64::from(b) / 100.0).collect::<Vec<_>>(),
                "interval": humantime::format_duration(r.interval).to_string(),
            })),
            "shadow_percent": f64::from(m.shadow.sample_ppm) / 10_000.0,
        })).collect::<Vec<_>>(),
    })
}

/// A single pgshift without a control database: the state file, re-read when it changes (checked every 200 ms),
/// until the config changes.
async fn follow_file(r: &Rollouts, config: &crate::config::Config) {
    let path = config
        .control
        .state_file
        .clone()
        .unwrap_or_else(|| "pgshift-rollout.json".into());
    let store = file::FileStore::new(path);
    if let Err(e) = store.event(None, "config", &r.actor, &r.announce(config)) {
        tracing::warn!(error = %e, "rollout: cannot record the config event");
    }
    let mut seen = None;
    let mut warned = false;
    while r.live.file().epoch == config.epoch {
        let modified = store.modified();
        if modified != seen || modified.is_none() {
            match store.load() {
                Ok(states) => {
                    seen = modified;
                    warned = false;
                    r.absorb(states);
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "rollout: cannot read the state file; routing keeps the last known state");
                }
                Err(_) => {}
            }
        }
        tokio::select! {
            _ = r.changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Checks each ramped migration's guards every `guard.interval` on this replica's own traffic; trips, or
/// advances the ramp when its step has held long enough and the last check passed.
async fn judge(r: Arc<Rollouts>) {
    let mut backend: Option<Backend> = None;
    let mut replica: Option<Client> = None;
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut failures: HashMap<String, Failures> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let config = r.live.file();
        for m in config.migrations.iter().filter(|m| m.ramp.is_some()) {
            let due = last
                .get(&m.name)
                .is_none_or(|at| at.elapsed() >= m.guard.interval);
            if !due {
                continue;
            }
            last.insert(m.name.clone(), Instant::now());
            let state = r.state(&m.name);
            let window = r.measurements.take(&m.name);
            let shadow = r
                .shadow
                .as_ref()
                .and_then(|s| s.findings().worst(&m.name, &m.shadow.thresholds));
            let lag = match &config.control.replica_dsn {
                Some(dsn) => Some(replica_lag(&mut replica, dsn, &config).await),
                None => None,
            };
            let check = guard::check(&window, &m.guard, shadow.as_deref(), lag.as_ref());
            let f = failures.entry(m.name.clone()).or_default();
            let trip = f.after(&check, m.guard.failure_limit);
            ::metrics::counter!(crate::metrics::ROLLOUT_CHECKS, "migration" => m.name.clone(), "result" => check.label())
                .increment(1);
            let live = matches!(
                state.status,
                Status::Ramping | Status::Paused | Status::Complete
            );
            let change = if trip && live && state.status != Status::Paused {
                let Check::Fail { reasons } = &check else {
                    unreachable!("only failures trip")
                };
                let (status, kind) = match m.guard.action {
                    Action::Rollback => (Status::RolledBack, "trip"),
                    Action::Pause => (Status::Paused, "trip"),
                };
                Some((
                    status,
                    state.step,
                    format!("guard: {}", reasons.join("; ")),
                    kind,
                ))
            } else {
                let pass = matches!(check, Check::Pass { .. });
                match plan::next(m.ramp.as_ref().expect("filtered"), &state, now_ms(), pass) {
                    Move::Hold => None,
                    Move::Advance(step) => Some((
                        Status::Ramping,
                        step,
                        format!("step {step}: guards passed"),
                        "step",
                    )),
                    Move::Complete => Some((
                        Status::Complete,
                        state.step,
                        "last step held: complete".to_owned(),
                        "step",
                    )),
                }
            };
            r.checks
                .lock()
                .expect("checks lock")
                .insert(m.name.clone(), (check.clone(), f.0));
            let Some((status, step, reason, kind)) = change else {
                continue;
            };
            if backend.as_ref().is_none_or(Backend::is_closed) {
                backend = Backend::open(&config).await.ok();
            }
            let Some(store) = backend.as_mut() else {
                tracing::warn!(migration = %m.name, %reason, "rollout: cannot reach [control] dsn to record a change");
                continue;
            };
            let change = store::Change {
                migration: &m.name,
                from_version: state.version,
                status,
                step,
                reason: &reason,
                promoted: state.promoted && status != Status::RolledBack,
                kind,
                actor: &r.actor,
                detail: serde_json::json!({ "check": check }),
            };
            match store.apply(&change).await {
                Ok(true) => {
                    if kind == "trip" {
                        ::metrics::counter!(crate::metrics::ROLLOUT_ROLLBACKS, "migration" => m.name.clone(), "reason" => "guard")
                            .increment(1);
                        failures.insert(m.name.clone(), Failures::default());
                    }
                    r.changed.notify_one();
                }
                Ok(false) => {} // another replica (or an operator) changed it first
                Err(e) => {
                    tracing::warn!(migration = %m.name, error = %e, "rollout: recording a change failed");
                    backend = None;
                }
            }
        }
    }
}

/// This machine's host name (for events).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".to_owned()
    }
}

/// Where a rollout's state lives: the control database (shared by every replica), or a local file for a single
/// pgshift without one.
pub enum Backend {
    Database(Client),
    File(file::FileStore),
}

impl Backend {
    /// The control database if the config names one, else the state file.
    pub async fn open(config: &crate::config::Config) -> Result<Backend, String> {
        match &config.control.dsn {
            Some(dsn) => {
                let client =
                    crate::admin::connect_control(dsn, config.control.password_file.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                crate::backfill::store::ensure(&client)
                    .await
                    .map_err(|e| crate::admin::cause(&e))?;
                Ok(Backend::Database(client))
            }
            None => Ok(Backend::File(file::FileStore::new(
                config
                    .control
                    .state_file
                    .clone()
                    .unwrap_or_else(|| "pgshift-rollout.json".into()),
            ))),
        }
    }

    pub async fn load(&self) -> Result<Vec<(String, State)>, String> {
        match self {
            Backend::Database(c) => store::load(c).await.map_err(|e| crate::admin::cause(&e)),
            Backend::File(f) => f.load(),
        }
    }

    pub async fn apply(&mut self, change: &store::Change<'_>) -> Result<bool, String> {
        match self {
            Backend::Database(c) => store::apply(c, change)
                .await
                .map_err(|e| crate::admin::cause(&e)),
            Backend::File(f) => f.apply(change),
        }
    }

    pub async fn event(
        &self,
        migration: Option<&str>,
        kind: &str,
        actor: &str,
        detail: &serde_json::Value,
    ) -> Result<(), String> {
        match self {
            Backend::Database(c) => store::event(c, migration, kind, actor, detail)
                .await
                .map_err(|e| crate::admin::cause(&e)),
            Backend::File(f) => f.event(migration, kind, actor, detail),
        }
    }

    pub async fn recent_events(
        &self,
        migration: &str,
        limit: usize,
    ) -> Result<Vec<(String, String, String, String)>, String> {
        match self {
            Backend::Database(c) => store::recent_events(c, migration, limit as i64)
                .await
                .map_err(|e| crate::admin::cause(&e)),
            Backend::File(f) => f.recent_events(migration, limit),
        }
    }

    fn is_closed(&self) -> bool {
        matches!(self, Backend::Database(c) if c.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_events_say_what_changed() {
        let v = |ms: serde_json::Value| serde_json::json!({ "migrations": ms });
        let before = v(serde_json::json!([{"name": "a", "new_percent": 0.0}, {"name": "b"}]));
        let after = v(serde_json::json!([{"name": "a", "new_percent": 5.0}, {"name": "c"}]));
        let c = config_changes(Some(&before), &after);
        assert_eq!(c["added"], serde_json::json!(["c"]));
        assert_eq!(c["removed"], serde_json::json!(["b"]));
        assert_eq!(c["changed"][0]["name"], "a");
        assert_eq!(c["changed"][0]["from"]["new_percent"], 0.0);
        assert_eq!(c["changed"][0]["to"]["new_percent"], 5.0);
        assert_eq!(
            config_changes(None, &after)["added"],
            serde_json::json!(["a", "c"])
        );
    }
}
