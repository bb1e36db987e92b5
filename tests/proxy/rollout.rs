//! Guarded rollouts with two pgshift replicas sharing one control database: a ramp walking its steps (only ever
//! adding routing keys), the fleet-wide rollback reaching both replicas within a second under load, a guard
//! tripping on errors on the new route and rolling back both, a restarted replica resuming at its step, and
//! `start`/`promote` refused without a fresh verification.

use crate::support::{
    cluster, connect, eventually, fresh_db, http_get, start_proxy, Proxy, ProxyOptions,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE SCHEMA v2;
CREATE TABLE users (id bigint PRIMARY KEY, fullname text NOT NULL, email text);
CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text);
INSERT INTO users SELECT g, 'n' || g, 'e' || g FROM generate_series(1, 50) g;
INSERT INTO v2.users SELECT id, fullname, email FROM users;";

/// The users_v2 migration with a ramp and fast guards, its state shared through `db`.
fn migration(db: &str, steps: &str, interval: &str, guard: &str) -> String {
    format!(
        "[control]\ndsn = {:?}\n\
         [[migration]]\nname = \"users_v2\"\nkind = \"table\"\ntable = \"public.users\"\nnew_table = \"v2.users\"\n\
         key = [\"id\"]\ncolumns = [{{ old = \"fullname\", new = \"display_name\" }}]\nwrites = \"dual_write\"\n\
         [migration.reads]\nkey = \"application_name\"\n[migration.reads.ramp]\nsteps = {steps}\ninterval = {interval:?}\n\
         [migration.guard]\ninterval = \"200ms\"\nfailure_limit = 1\n{guard}\n",
        cluster().url(db)
    )
}

/// The same migrations in a file the commands read.
fn config_file(dir: &Path, migrations: &str) -> PathBuf {
    let path = dir.join("pgshift.toml");
    std::fs::write(
        &path,
        format!("[upstream]\naddr = {:?}\n{migrations}", cluster().addr()),
    )
    .unwrap();
    path
}

/// Runs `pgshift <args>`: (exit code, stdout, stderr).
async fn pgshift(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn rollout(config: &Path, lever: &str) -> (i32, String, String) {
    pgshift(&[
        "rollout",
        lever,
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "users_v2",
    ])
    .await
}

async fn verify(config: &Path) {
    verify_migration(config, "users_v2").await
}

async fn verify_migration(config: &Path, migration: &str) {
    let (code, out, err) = pgshift(&[
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--migration",
        migration,
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
}

/// The rollout as a replica's `/status` shows it.
async fn state(proxy: &Proxy) -> Value {
    let (_, body) = http_get(proxy.metrics_addr, "/status").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["migrations"][0]["rollout"].clone()
}

/// One pgshift with `migrations`, the migration verified and its rollout started: (the config's directory, the
/// config file the commands read, the proxy).
async fn started(migrations: String) -> (tempfile::TempDir, PathBuf, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &migrations);
    let proxy = start_proxy(ProxyOptions {
        migrations,
        ..Default::default()
    })
    .await;
    verify(&config).await;
    assert_eq!(rollout(&config, "start").await.0, 0);
    (dir, config, proxy)
}

/// A session keyed by `app` (the routing key) through `proxy`.
async fn session(proxy: &Proxy, db: &str, app: &str) -> Client {
    connect(&format!("{}?application_name={app}", proxy.url(db))).await
}

/// Whether this session's reads go to new: id -1 exists only there.
async fn reads_new(client: &Client) -> bool {
    let row = client
        .query_one("SELECT count(*) FROM users WHERE id = -1", &[])
        .await
        .unwrap();
    row.get::<_, i64>(0) == 1
}

async fn marked(db: &str) -> Client {
    let direct = connect(&cluster().url(db)).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    direct
}

/// A ramp with a two-second interval walks 10 % → 50 % → 100 % on both replicas, each step only adding keys;
/// `start` and `promote` are refused without a fresh clean verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_walks_its_steps_only_adding_keys() {
    let db = fresh_db("t_rollout_ramp").await;
    let direct = marked(&db).await;
    // Latency is not what this test is about: on a busy test machine a window's p99 jumps.
    let migrations = migration(
        &db,
        "[10, 50, 100]",
        "2s",
        "min_samples = 1\nlatency_floor = \"10s\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &migrations);
    let options = ProxyOptions {
        migrations: migrations.clone(),
        ..Default::default()
    };
    let (a, b) = (
        start_proxy(options.clone()).await,
        start_proxy(options).await,
    );
    let (code, _, err) = rollout(&config, "start").await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("has no clean verification: run pgshift verify first"),
        "{err}"
    );
    // The marker row is the only difference, and verify would report it: verify before adding it.
    direct
        .batch_execute("DELETE FROM v2.users WHERE id = -1")
        .await
        .unwrap();
    verify(&config).await;
    direct
        .batch_execute("INSERT INTO v2.users VALUES (-1, 'marker', NULL)")
        .await
        .unwrap();
    assert_eq!(state(&a).await["status"], "pending");

    let keys: Vec<String> = (0..30).map(|i| format!("key{i}")).collect();
    let mut sessions = Vec::new();
    for k in &keys {
        sessions.push((session(&a, &db, k).await, session(&b, &db, k).await));
    }
    let (code, out, err) = rollout(&config, "start").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "users_v2: ramping at step 0 — reads 10% to new, writes dual_write"
    );

    // Probe every key on both replicas until the ramp completes: the keys on new only ever grow.
    let mut history: Vec<Vec<bool>> = Vec::new();
    let mut steps_seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = state(&a).await;
        steps_seen.insert(format!("{}@{}", st["status"], st["new_percent"]));
        let mut now = Vec::new();
        for (via_a, via_b) in &sessions {
            now.push(reads_new(via_a).await || reads_new(via_b).await);
        }
        if let Some(last) = history.last() {
            for (i, (was, is)) in last.iter().zip(&now).enumerate() {
                assert!(
                    !was || *is,
                    "key {i} went back to old during the ramp: {:#}",
                    state(&a).await
                );
            }
        }
        history.push(now);
        if st["status"] == "complete" && state(&b).await["status"] == "complete" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ramp did not complete: {st:#}"
        );
    }
    for step in ["\"ramping\"@10.0", "\"ramping\"@50.0", "\"complete\"@100.0"] {
        assert!(steps_seen.contains(step), "{steps_seen:?}");
    }
    for (via_a, via_b) in &sessions {
        assert!(reads_new(via_a).await && reads_new(via_b).await);
    }
    let some_but_not_all = history
        .iter()
        .any(|h| h.iter().any(|&n| n) && !h.iter().all(|&n| n));
    assert!(some_but_not_all, "a step between none and all was seen");

    // promote needs a fresh verification too.
    direct
        .batch_execute("DELETE FROM pgshift.verifications")
        .await
        .unwrap();
    let (code, _, err) = rollout(&config, "promote").await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has no clean verification"), "{err}");
    direct
        .batch_execute("DELETE FROM v2.users WHERE id = -1")
        .await
        .unwrap();
    verify(&config).await;
    let (code, out, err) = rollout(&config, "promote").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("writes new_primary"), "{out}");
    for proxy in [&a, &b] {
        eventually(
            Duration::from_secs(5),
            "promoted on every replica",
            || async { state(proxy).await["writes"] == "new_primary" },
        )
        .await;
    }
    let (code, out, _) = rollout(&config, "status").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("complete at step 2") && out.contains("command"),
        "{out}"
    );
    // Two replicas judged every step; exactly one wrote each move.
    let moves: i64 = direct
        .query_one(
            "SELECT count(*) FROM pgshift.events WHERE kind = 'step'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(moves, 3, "10 → 50 → 100, then complete");
    // The kill switch also undoes the promotion: writes fall back to dual_write.
    assert_eq!(rollout(&config, "rollback").await.0, 0);
    for proxy in [&a, &b] {
        eventually(Duration::from_secs(2), "rolled back everywhere", || async {
            let st = state(proxy).await;
            st["writes"] == "dual_write" && st["new_percent"] == 0.0
        })
        .await;
    }
    // Each replica announced its config, and what it changed.
    let changes: String = direct
        .query_one(
            "SELECT detail->'changes'->>'added' FROM pgshift.events WHERE kind = 'config' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(changes, "[\"users_v2\"]");
    drop(sessions);
    a.stop().await;
    b.stop().await;
}

/// `pgshift rollout rollback` reaches both replicas within a second while they serve a prepared-statement
/// load; a replica started mid-rollout resumes at the same step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_reaches_every_replica_within_a_second() {
    let db = fresh_db("t_rollout_rollback").await;
    let direct = marked(&db).await;
    let migrations = migration(&db, "[100]", "1h", "min_samples = 1000000");
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &migrations);
    let options = ProxyOptions {
        migrations,
        ..Default::default()
    };
    let (a, b) = (
        start_proxy(options.clone()).await,
        start_proxy(options.clone()).await,
    );
    direct
        .batch_execute("DELETE FROM v2.users WHERE id = -1")
        .await
        .unwrap();
    verify(&config).await;
    direct
        .batch_execute("INSERT INTO v2.users VALUES (-1, 'marker', NULL)")
        .await
        .unwrap();
    assert_eq!(rollout(&config, "start").await.0, 0);

    // A replica started now routes as the others do.
    let c = start_proxy(options).await;
    eventually(
        Duration::from_secs(5),
        "the new replica reads the state",
        || async { state(&c).await["status"] == "ramping" },
    )
    .await;
    assert!(reads_new(&session(&c, &db, "late").await).await);
    c.stop().await;

    // Load: on each replica, sessions running a prepared statement back to back, noting when they see old.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_new = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for (i, proxy) in [&a, &b, &a, &b].into_iter().enumerate() {
        let client = session(proxy, &db, &format!("load{i}")).await;
        let (stop, on_new) = (stop.clone(), on_new.clone());
        readers.push(tokio::spawn(async move {
            let read = client
                .prepare("SELECT count(*) FROM users WHERE id = $1")
                .await
                .unwrap();
            let mut saw_new = false;
            loop {
                let n: i64 = client.query_one(&read, &[&-1i64]).await.unwrap().get(0);
                if n == 1 {
                    if !saw_new {
                        on_new.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    saw_new = true;
                } else if saw_new {
                    return Ok(Instant::now());
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(format!("reader {i}: saw new {saw_new}, never old"));
                }
            }
        }));
    }
    eventually(Duration::from_secs(5), "every reader on new", || async {
        on_new.load(std::sync::atomic::Ordering::Relaxed) == 4
    })
    .await;
    let launched = Instant::now();
    let (code, out, err) = rollout(&config, "rollback").await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rolled_back at step 0 — reads 0% to new"),
        "{out}"
    );
    let guard = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut slowest = Duration::ZERO;
    for r in readers {
        let at = match r.await.unwrap() {
            Ok(at) => at,
            Err(e) => panic!("{e}: a {:#} b {:#}", state(&a).await, state(&b).await),
        };
        slowest = slowest.max(at.saturating_duration_since(launched));
    }
    guard.abort();
    println!("rollback reached every session {slowest:?} after the command was launched");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    let (kind, actor): (String, String) = {
        let row = direct
            .query_one(
                "SELECT kind, actor FROM pgshift.events WHERE detail->>'status' = 'rolled_back'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(kind, "command");
    assert!(actor.ends_with("(pgshift rollout)"), "{actor}");
    // Each replica announced the config it runs.
    let configs: i64 = direct
        .query_one(
            "SELECT count(DISTINCT actor) FROM pgshift.events WHERE kind = 'config' \
             AND detail->'migrations'->0->'ramp'->'steps' = '[100.0]'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(configs, 3, "replicas a, b and c");
    a.stop().await;
    b.stop().await;
}

/// Errors on the new route (its grant revoked) trip the guard of the replica that serves them; the trip is
/// written to the shared state and rolls back the other replica too, with the event and its numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_on_new_trip_the_guard_and_roll_back_both_replicas() {
    let db = fresh_db("t_rollout_trip").await;
    let direct = marked(&db).await;
    direct
        .batch_execute(
            "DROP ROLE IF EXISTS rollout_app; CREATE ROLE rollout_app LOGIN;
             GRANT USAGE ON SCHEMA v2 TO rollout_app; GRANT SELECT ON users, v2.users TO rollout_app;
             DELETE FROM v2.users WHERE id = -1;",
        )
        .await
        .unwrap();
    let migrations = migration(&db, "[50, 100]", "1h", "min_samples = 5");
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &migrations);
    let options = ProxyOptions {
        migrations,
        ..Default::default()
    };
    let (a, b) = (
        start_proxy(options.clone()).await,
        start_proxy(options).await,
    );
    verify(&config).await;
    assert_eq!(rollout(&config, "start").await.0, 0);
    for proxy in [&a, &b] {
        eventually(Duration::from_secs(5), "ramping", || async {
            state(proxy).await["status"] == "ramping"
        })
        .await;
    }
    direct
        .batch_execute("REVOKE SELECT ON v2.users FROM rollout_app")
        .await
        .unwrap();
    // Traffic on replica a only, from keys on both routes.
    let mut clients = Vec::new();
    for i in 0..10 {
        let url = format!(
            "postgres://rollout_app@127.0.0.1:{}/{db}?application_name=app{i}",
            a.port()
        );
        clients.push(connect(&url).await);
    }
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&a).await["status"] != "rolled_back" {
        if Instant::now() > deadline {
            let (_, metrics) = http_get(a.metrics_addr, "/metrics").await;
            let reads: Vec<&str> = metrics.lines().filter(|l| l.contains("users_v2")).collect();
            let e = clients[0]
                .query("SELECT fullname FROM users WHERE id = 3", &[])
                .await;
            let (_, status) = http_get(a.metrics_addr, "/status").await;
            let _ = status;
            panic!("the guard did not trip: failed={failed} {reads:#?} {e:?}");
        }
        for c in &clients {
            if c.query("SELECT fullname FROM users WHERE id = 3", &[])
                .await
                .is_err()
            {
                failed += 1;
            }
        }
    }
    let tripped = Instant::now();
    assert!(failed > 0, "some reads failed on new");
    eventually(
        Duration::from_secs(2),
        "the other replica rolled back",
        || async {
            let st = state(&b).await;
            st["status"] == "rolled_back" && st["new_percent"] == 0.0
        },
    )
    .await;
    println!(
        "the trip reached the other replica {:?} after the tripping one showed it",
        tripped.elapsed()
    );
    let reason = state(&b).await["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("guard: error rate 100.00% on new"),
        "{reason}"
    );
    // Every client reads old again, without errors.
    for c in &clients {
        c.query("SELECT fullname FROM users WHERE id = 3", &[])
            .await
            .unwrap();
    }
    let row = direct
        .query_one("SELECT kind, actor, detail->'check'->>'result' FROM pgshift.events WHERE kind = 'trip'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(2), "fail");
    assert!(row.get::<_, String>(1).starts_with("pgshift@"));
    drop(clients);
    a.stop().await;
    b.stop().await;
    direct
        .batch_execute("DROP OWNED BY rollout_app; DROP ROLE rollout_app")
        .await
        .unwrap();
}

/// Contract readiness: `/status` names who still sends statements on the old table, and counts the prepared
/// statements live sessions hold on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_schema_usage_names_clients_and_prepared_statements() {
    let db = fresh_db("t_rollout_usage").await;
    marked(&db).await;
    let proxy = start_proxy(ProxyOptions {
        migrations: crate::migrations::users_migration("dual_write", "new_percent = 0"),
        ..Default::default()
    })
    .await;
    let usage = |proxy: &Proxy| {
        let addr = proxy.metrics_addr;
        async move {
            let (_, body) = http_get(addr, "/status").await;
            let v: Value = serde_json::from_str(&body).unwrap();
            v["migrations"][0]["old_schema_usage"].clone()
        }
    };
    let billing = session(&proxy, &db, "billing").await;
    let one = billing
        .prepare("SELECT fullname FROM users WHERE id = $1")
        .await
        .unwrap();
    let two = billing
        .prepare("UPDATE users SET email = $1 WHERE id = $2")
        .await
        .unwrap();
    for id in 1..=5i64 {
        billing.query(&one, &[&id]).await.unwrap();
        billing.execute(&two, &[&"x", &id]).await.unwrap();
    }
    session(&proxy, &db, "reports")
        .await
        .simple_query("SELECT count(*) FROM users")
        .await
        .unwrap();
    let u = usage(&proxy).await;
    assert_eq!(u["prepared_statements"], 2, "{u:#}");
    let names: Vec<&str> = u["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["application_name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"billing") && names.contains(&"reports"),
        "{u:#}"
    );
    let other = session(&proxy, &db, "unrelated").await;
    other.simple_query("SELECT 1").await.unwrap();
    drop((one, two, billing));
    eventually(
        Duration::from_secs(5),
        "the session's statements released",
        || async {
            let u = usage(&proxy).await;
            u["prepared_statements"] == 0
                && u["clients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["application_name"] == "billing" && c["statements"] == 10)
        },
    )
    .await;
    let u = usage(&proxy).await;
    assert!(u["quiet_seconds"].as_u64().unwrap() < 5, "{u:#}");
    assert!(
        !u["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["application_name"] == "unrelated"),
        "{u:#}"
    );
    drop(other);
    proxy.stop().await;
}

/// The new table without its index: the same statement is far slower on new, the latency guard trips (here:
/// pauses the ramp) while the error rate stays even.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_regression_on_new_trips_the_latency_guard() {
    let db = fresh_db("t_rollout_latency").await;
    let direct = connect(&cluster().url(&db)).await;
    direct
        .batch_execute(
            "CREATE SCHEMA v2;
             CREATE TABLE users (id bigint PRIMARY KEY, fullname text NOT NULL, email text);
             CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text);
             INSERT INTO users SELECT g, 'n' || g, 'e' || g FROM generate_series(1, 200000) g;
             INSERT INTO v2.users SELECT id, fullname, email FROM users;",
        )
        .await
        .unwrap();
    direct
        .batch_execute("ANALYZE users, v2.users")
        .await
        .unwrap();
    let migrations = migration(
        &db,
        "[50, 100]",
        "1h",
        "min_samples = 50\naction = \"pause\"",
    )
    .replace("interval = \"200ms\"", "interval = \"1s\"");
    let (_dir, _config, proxy) = started(migrations).await;
    eventually(Duration::from_secs(5), "ramping", || async {
        state(&proxy).await["status"] == "ramping"
    })
    .await;
    direct
        .batch_execute("ALTER TABLE v2.users DROP CONSTRAINT users_pkey")
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(session(&proxy, &db, &format!("app{i}")).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 0i64;
    while state(&proxy).await["status"] != "paused" {
        assert!(
            Instant::now() < deadline,
            "no trip: {:#}",
            state(&proxy).await
        );
        let reads = clients.iter().map(|c| {
            id += 1;
            let id = id % 200_000 + 1;
            async move {
                c.query("SELECT fullname FROM users WHERE id = $1", &[&id])
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(reads).await;
    }
    let st = state(&proxy).await;
    let reason = st["reason"].as_str().unwrap();
    assert!(reason.starts_with("guard: p95 of statement"), "{reason}");
    assert!(
        !reason.contains("error rate"),
        "the error guard stays green: {reason}"
    );
    assert_eq!(st["new_percent"], 50.0, "paused, not rolled back: {st:#}");
    drop(clients);
    proxy.stop().await;
}

/// With `[control] replica_dsn`, replication lag is a guard; a replica that cannot be read as one (here the DSN
/// names the primary) fails it closed and rolls the ramp back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_replication_lag_rolls_back() {
    let db = fresh_db("t_rollout_lag").await;
    let direct = marked(&db).await;
    direct
        .batch_execute("DELETE FROM v2.users WHERE id = -1")
        .await
        .unwrap();
    let migrations = migration(&db, "[50, 100]", "1h", "min_samples = 1000000").replacen(
        "[control]\n",
        &format!("[control]\nreplica_dsn = {:?}\n", cluster().url(&db)),
        1,
    );
    let (_dir, _config, proxy) = started(migrations).await;
    eventually(Duration::from_secs(10), "rolled back", || async {
        state(&proxy).await["status"] == "rolled_back"
    })
    .await;
    let reason = state(&proxy).await["reason"].as_str().unwrap().to_owned();
    assert_eq!(
        reason,
        "guard: replication lag unreadable: the replica DSN points at a primary"
    );
    proxy.stop().await;
}

/// Without a control database a single pgshift keeps the rollout in a local file: the levers work the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_control_database_the_state_is_a_local_file() {
    let db = fresh_db("t_rollout_file").await;
    let direct = marked(&db).await;
    direct
        .batch_execute("DELETE FROM v2.users WHERE id = -1")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let migrations = migration(&db, "[100]", "1h", "").replacen(
        &format!("[control]\ndsn = {:?}\n", cluster().url(&db)),
        &format!(
            "[control]\nstate_file = {:?}\n",
            state_file.display().to_string()
        ),
        1,
    );
    assert!(!migrations.contains("dsn"), "{migrations}");
    let config = config_file(dir.path(), &migrations);
    let proxy = start_proxy(ProxyOptions {
        migrations,
        ..Default::default()
    })
    .await;
    let url = cluster().url(&db);
    let (code, _, err) = rollout(&config, "start").await;
    assert_eq!(code, 1);
    assert!(err.contains("give --dsn"), "{err}");
    let (code, out, err) = pgshift(&[
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "users_v2",
        "--dsn",
        &url,
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    direct
        .batch_execute("INSERT INTO v2.users VALUES (-1, 'marker', NULL)")
        .await
        .unwrap();
    let lever = |lever: &'static str| {
        let config = config.clone();
        let url = url.clone();
        async move {
            pgshift(&[
                "rollout",
                lever,
                "--config",
                config.to_str().unwrap(),
                "--migration",
                "users_v2",
                "--dsn",
                &url,
            ])
            .await
        }
    };
    assert_eq!(lever("start").await.0, 0);
    let client = session(&proxy, &db, "someone").await;
    eventually(Duration::from_secs(5), "reads on new", || async {
        reads_new(&client).await
    })
    .await;
    assert_eq!(lever("rollback").await.0, 0);
    eventually(Duration::from_secs(2), "reads on old", || async {
        !reads_new(&client).await
    })
    .await;
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    assert_eq!(saved["rollouts"]["users_v2"]["status"], "rolled_back");
    let (code, out, _) = lever("status").await;
    assert_eq!(code, 0);
    assert!(
        out.contains("rolled_back") && out.contains("command"),
        "{out}"
    );
    drop(client);
    proxy.stop().await;
}

/// A mismatch found by shadow reads fails the guard: a wrong `down` rolls the ramp back before its next step,
/// with the statement named in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_mismatch_rolls_the_ramp_back() {
    let db = fresh_db("t_rollout_shadow").await;
    let direct = connect(&cluster().url(&db)).await;
    direct
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, legacy_status text, new_status text);
             INSERT INTO orders SELECT g, (ARRAY['Open', 'HELD'])[g % 2 + 1], NULL FROM generate_series(1, 100) g;
             UPDATE orders SET new_status = upper(legacy_status);",
        )
        .await
        .unwrap();
    // up = upper(…) is what new holds; down = lower(…) does not give the old values back. The migration has a
    // name of its own: metrics are per process, and the shadow tests count theirs.
    let migrations = format!(
        "[control]\ndsn = {:?}\n\
         [[migration]]\nname = \"orders_ramped\"\nkind = \"column\"\ntable = \"orders\"\nkey = [\"id\"]\n\
         columns = [{{ old = \"legacy_status\", new = \"new_status\", up = \"upper(legacy_status)\", down = \"lower(new_status)\" }}]\n\
         writes = \"dual_write\"\n[migration.reads]\nkey = \"application_name\"\n\
         [migration.reads.ramp]\nsteps = [10, 100]\ninterval = \"1h\"\n\
         [migration.guard]\ninterval = \"200ms\"\nfailure_limit = 1\nmin_samples = 1000000\n\
         [migration.shadow]\nsample_percent = 100\n",
        cluster().url(&db)
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &migrations);
    let proxy = start_proxy(ProxyOptions {
        migrations,
        ..Default::default()
    })
    .await;
    // Verify compares old mapped through `up` with new: it agrees, only `down` is wrong.
    verify_migration(&config, "orders_ramped").await;
    let (code, _, err) = pgshift(&[
        "rollout",
        "start",
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "orders_ramped",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let client = session(&proxy, &db, "shop").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0i64;
    while state(&proxy).await["status"] != "rolled_back" {
        assert!(Instant::now() < deadline, "{:#}", state(&proxy).await);
        id = id % 100 + 1;
        client
            .query("SELECT id, legacy_status FROM orders WHERE id = $1", &[&id])
            .await
            .unwrap();
    }
    let reason = state(&proxy).await["reason"].as_str().unwrap().to_owned();
    assert_eq!(
        reason,
        "guard: shadow reads: the new schema answers differently to \
         SELECT id, legacy_status FROM orders WHERE id = $1"
    );
    drop(client);
    proxy.stop().await;
}
