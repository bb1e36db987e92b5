//! `pgshift backfill` and `pgshift verify` against real Postgres: copying, idempotence, verification with
//! exact differences, repair, resume after SIGKILL, a changed mapping, both migration kinds and both phases,
//! and a backfill running while the application writes through pgshift.

use crate::migrations::{assert_mirrored, orders_migration, setup, users_migration, Lcg};
use crate::support::{cluster, connect, eventually, fresh_db};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE SCHEMA v2;
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text,
                    created_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text, created_at timestamptz NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer text, legacy_status text, new_status text);";

/// Rows that differ between old and new users (through the column map); 0 when mirrored.
const USERS_DIFFER: &str = "SELECT count(*) FROM users u FULL JOIN v2.users n USING (id) \
    WHERE u.id IS NULL OR n.id IS NULL \
    OR (u.fullname, u.email, u.created_at) IS DISTINCT FROM (n.display_name, n.email, n.created_at)";

fn write_config(dir: &Path, db: &str, migrations: &str, limits: &str) -> PathBuf {
    let path = dir.join("pgshift.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\naddr = {:?}\n[control]\ndsn = {:?}\n[control.backfill]\n{limits}\n{migrations}",
            cluster().addr(),
            cluster().url(db)
        ),
    )
    .unwrap();
    path
}

const SMALL_BATCHES: &str = "batch_time = \"20ms\"\nmin_rows = 50\nmax_rows = 400";

/// Runs pgshift; returns its exit code, JSON events and stderr.
async fn pgshift(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(args)
        .args(["--format", "json"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// pgshift running in the background with `--format json`; with `events`, its events are read as they come.
fn start(args: &[&str], events: bool) -> (tokio::process::Child, Option<Events>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(args)
        .args(["--format", "json"])
        .stdout(if events {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let events = child.stdout.take().map(|out| {
        Events(tokio::io::AsyncBufReadExt::lines(
            tokio::io::BufReader::new(out),
        ))
    });
    (child, events)
}

struct Events(tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>);

impl Events {
    /// The next event within 30 s; `None` once pgshift has exited.
    async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(Duration::from_secs(30), self.0.next_line())
            .await
            .expect("an event within 30 s")
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}")))
    }
}

fn last<'a>(events: &'a [Value], event: &str) -> &'a Value {
    events
        .iter()
        .rev()
        .find(|e| e["event"] == event)
        .unwrap_or_else(|| panic!("no {event} event in {events:?}"))
}

fn keys_of(events: &[Value], kind: &str) -> Vec<String> {
    let mut keys: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "difference" && e["kind"] == kind)
        .map(|e| e["key"][0].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

/// A fresh database with the schema and `seed` run in it, and a direct connection.
async fn seeded(name: &str, seed: &str) -> (String, Client) {
    let db = fresh_db(name).await;
    let direct = connect(&cluster().url(&db)).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    direct.batch_execute(seed).await.unwrap();
    (db, direct)
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_copies_verify_finds_exact_differences_and_repair_fixes_them() {
    let (db, direct) = seeded("t_backfill_table", "INSERT INTO users (fullname, email) SELECT 'name ' || g, 'e' || g FROM generate_series(1, 3000) g").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &users_migration("dual_write", "new_percent = 0"),
        SMALL_BATCHES,
    );
    let config = config.to_str().unwrap();
    let args = ["--config", config, "--migration", "users_v2"];

    let (code, events, err) = pgshift(&[&["backfill"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    let done = last(&events, "finished");
    assert_eq!(
        (done["rows_read"].as_i64(), done["rows_written"].as_i64()),
        (Some(3000), Some(3000))
    );
    assert!(
        events.iter().filter(|e| e["event"] == "batch").count() >= 5,
        "batches sized by time: {events:?}"
    );
    assert_eq!(count(&direct, USERS_DIFFER).await, 0);
    // Again: everything is read, nothing is written.
    let (code, events, err) = pgshift(&[&["backfill"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last(&events, "finished")["rows_written"].as_i64(), Some(0));
    assert_eq!(last(&events, "finished")["rows_read"].as_i64(), Some(3000));

    let (code, events, err) = pgshift(&[&["verify"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        last(&events, "verified")["rows_checked"].as_i64(),
        Some(3000)
    );
    assert_eq!(last(&events, "verified")["clean"], true);

    // Damage the new side the ways writes that bypass pgshift would.
    direct
        .batch_execute(
            "DELETE FROM v2.users WHERE id IN (5, 2999); UPDATE v2.users SET email = 'changed' WHERE id = 7; \
             UPDATE v2.users SET email = NULL WHERE id = 3000; \
             INSERT INTO v2.users VALUES (999999, 'ghost', NULL, now()), (0, 'before', NULL, now())",
        )
        .await
        .unwrap();
    let (code, events, err) = pgshift(&[&["verify"][..], &args].concat()).await;
    assert_eq!(code, 1, "differences exit 1: {err}");
    assert!(
        err.contains("migration \"users_v2\": 6 difference(s) remain"),
        "{err}"
    );
    let verdict = last(&events, "verified");
    assert_eq!(
        (
            verdict["missing"].as_i64(),
            verdict["extra"].as_i64(),
            verdict["different"].as_i64()
        ),
        (Some(2), Some(2), Some(2)),
        "{verdict}"
    );
    assert_eq!(keys_of(&events, "missing"), ["2999", "5"]);
    assert_eq!(keys_of(&events, "extra"), ["0", "999999"]);
    assert_eq!(keys_of(&events, "different"), ["3000", "7"]);
    // Both sides' values, the source mapped to the target's columns; absent sides are left out.
    let seven = events
        .iter()
        .find(|e| e["event"] == "difference" && e["key"][0] == "7")
        .unwrap();
    assert_eq!(seven["source"]["email"], "e7", "{seven}");
    assert_eq!(seven["source"]["display_name"], "name 7", "{seven}");
    assert_eq!(seven["target"]["email"], "changed", "{seven}");
    let five = events
        .iter()
        .find(|e| e["event"] == "difference" && e["key"][0] == "5")
        .unwrap();
    assert_eq!(five["source"]["id"], 5, "{five}");
    assert!(five.get("target").is_none(), "{five}");

    let (code, events, err) = pgshift(&[&["verify", "--repair"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last(&events, "verified")["repaired"].as_i64(), Some(6));
    assert_eq!(count(&direct, USERS_DIFFER).await, 0);
    let (code, _, err) = pgshift(&[&["verify"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM pgshift.verifications WHERE migration = 'users_v2' AND clean"
        )
        .await,
        3
    );
    // People get sentences.
    let (ok, out, err) = crate::support::run(
        Command::new(env!("CARGO_BIN_EXE_pgshift"))
            .args(["verify", "--format", "human"])
            .args(args),
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("users_v2: old_to_new, about 3000 rows"),
        "{out}"
    );
    assert!(
        out.contains(
            "users_v2: clean — 3000 rows checked, 0 missing, 0 extra, 0 different, 0 repaired"
        ),
        "{out}"
    );

    // A verify killed midway resumes after its last chunk and counts each row once.
    let slow_dir = tempfile::tempdir().unwrap();
    let slow = write_config(
        slow_dir.path(),
        &db,
        &users_migration("dual_write", "new_percent = 0"),
        "min_rows = 100\nmax_rows = 100\nmax_rate = 400",
    );
    let (mut verify, _) = start(
        &[
            "verify",
            "--config",
            slow.to_str().unwrap(),
            "--migration",
            "users_v2",
        ],
        false,
    );
    let checked = "SELECT coalesce((SELECT rows_checked FROM pgshift.verifications \
                   WHERE migration = 'users_v2' AND finished_at IS NULL), 0)";
    eventually(Duration::from_secs(20), "a verify chunk recorded", || {
        let direct = &direct;
        async move { count(direct, checked).await >= 200 }
    })
    .await;
    verify.kill().await.unwrap();
    let saved = count(&direct, checked).await;
    let (code, events, err) = pgshift(&[
        "verify",
        "--max-rate",
        "0",
        "--config",
        slow.to_str().unwrap(),
        "--migration",
        "users_v2",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last(&events, "started")["rows_done"].as_i64(), Some(saved));
    assert_eq!(
        last(&events, "verified")["rows_checked"].as_i64(),
        Some(3000)
    );

    // Every proxy with the control DSN shows the progress on /status.
    let proxy = crate::support::start_proxy(crate::support::ProxyOptions {
        migrations: format!(
            "[control]\ndsn = {:?}\n{}",
            cluster().url(&db),
            users_migration("dual_write", "new_percent = 0")
        ),
        ..Default::default()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "backfill progress on /status",
        || {
            let addr = proxy.metrics_addr;
            async move {
                let (_, body) = crate::support::http_get(addr, "/status").await;
                let status: Value = serde_json::from_str(&body).unwrap();
                let control = &status["control"];
                control["backfills"][0]["migration"] == "users_v2"
                    && control["backfills"][0]["rows_read"] == 3000
                    && !control["backfills"][0]["finished_at"].is_null()
                    && control["verifications"][0]["clean"] == true
            }
        },
    )
    .await;
    proxy.stop().await;
    // Operator errors exit 2 and say what is wrong.
    let (code, _, err) = pgshift(&["verify", "--config", config, "--migration", "nope"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no migration named \"nope\" in the config (it has: users_v2)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_kind_in_both_phases() {
    let (db, direct) = seeded("t_backfill_column", "INSERT INTO orders (legacy_status) SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE 'st' || g % 5 END FROM generate_series(1, 1200) g").await;
    let dir = tempfile::tempdir().unwrap();
    let dual = write_config(
        dir.path(),
        &db,
        &orders_migration("dual_write", "new_percent = 0"),
        SMALL_BATCHES,
    );
    let dual = dual.to_str().unwrap().to_owned();
    let args = |config: &str| {
        vec![
            "--config".to_owned(),
            config.to_owned(),
            "--migration".into(),
            "orders_status".into(),
        ]
    };
    let run = |cmd: &'static str, config: String, extra: &'static [&'static str]| async move {
        let mut all: Vec<String> = vec![cmd.to_owned()];
        all.extend(extra.iter().map(|s| s.to_string()));
        all.extend(args(&config));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        pgshift(&refs).await
    };
    let (code, events, err) = run("backfill", dual.clone(), &[]).await;
    assert_eq!(code, 0, "{err}");
    // Rows with NULL legacy_status already match (upper(NULL) is NULL): not written.
    let nulls = 1200 / 7;
    assert_eq!(
        last(&events, "finished")["rows_written"].as_i64(),
        Some(1200 - nulls)
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM orders WHERE new_status IS DISTINCT FROM upper(legacy_status)"
        )
        .await,
        0
    );
    let (code, _, err) = run("verify", dual.clone(), &[]).await;
    assert_eq!(code, 0, "{err}");

    // Under new_primary, new is the source: old must be down(new).
    let primary = write_config(
        dir.path(),
        &db,
        &orders_migration("new_primary", "new_percent = 0"),
        SMALL_BATCHES,
    );
    let primary = primary.to_str().unwrap().to_owned();
    direct
        .batch_execute("UPDATE orders SET new_status = 'NEW' WHERE id IN (3, 4)")
        .await
        .unwrap();
    let (code, events, _) = run("verify", primary.clone(), &[]).await;
    assert_eq!(code, 1);
    assert_eq!(keys_of(&events, "different"), ["3", "4"]);
    let (code, events, err) = run("backfill", primary.clone(), &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last(&events, "finished")["rows_written"].as_i64(), Some(2));
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM orders WHERE id IN (3, 4) AND legacy_status = 'new'"
        )
        .await,
        2
    );
    let (code, _, err) = run("verify", primary, &["--repair"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backfill_resumes_and_a_changed_mapping_starts_over() {
    let (db, direct) = seeded("t_backfill_resume", "INSERT INTO users (fullname, email) SELECT 'name ' || g, 'e' || g FROM generate_series(1, 2000) g").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &users_migration("dual_write", "new_percent = 0"),
        "batch_time = \"20ms\"\nmin_rows = 20\nmax_rows = 20\nmax_rate = 200",
    );
    let config = config.to_str().unwrap();
    let args = ["--config", config, "--migration", "users_v2"];
    let (mut slow, _) = start(&[&["backfill"][..], &args].concat(), false);
    let progress = "SELECT coalesce((SELECT rows_read FROM pgshift.backfills WHERE migration = 'users_v2'), 0)";
    eventually(
        Duration::from_secs(20),
        "a checkpoint past 100 rows",
        || {
            let direct = &direct;
            async move {
                direct
                    .query_one(progress, &[])
                    .await
                    .is_ok_and(|r| r.get::<_, i64>(0) >= 100)
            }
        },
    )
    .await;
    slow.kill().await.unwrap(); // SIGKILL
    let saved = count(&direct, progress).await;
    assert!(saved < 2000, "killed before the end: {saved}");
    // The checkpoint and the rows it covers were committed together.
    assert_eq!(count(&direct, "SELECT count(*) FROM v2.users").await, saved);

    let (code, events, err) =
        pgshift(&[&["backfill", "--max-rate", "0"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    let started = last(&events, "started");
    assert_eq!(started["rows_done"].as_i64(), Some(saved));
    assert!(started["resumed_from"].is_array(), "{started}");
    assert_eq!(last(&events, "finished")["rows_read"].as_i64(), Some(2000));
    assert_eq!(
        last(&events, "finished")["rows_written"].as_i64(),
        Some(2000)
    );
    assert_eq!(count(&direct, USERS_DIFFER).await, 0);

    // A different mapping: the checkpoint is not trusted, the copy starts over and rewrites every row.
    let changed = write_config(
        dir.path(),
        &db,
        &users_migration("dual_write", "new_percent = 0").replace(
            "new = \"display_name\" }",
            "new = \"display_name\", up = \"upper(fullname)\", down = \"lower(display_name)\" }",
        ),
        SMALL_BATCHES,
    );
    let (code, events, err) = pgshift(&[
        "backfill",
        "--config",
        changed.to_str().unwrap(),
        "--migration",
        "users_v2",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        last(&events, "restarted")["reason"]
            .as_str()
            .unwrap()
            .contains("the mapping changed"),
        "{events:?}"
    );
    assert_eq!(
        last(&events, "finished")["rows_written"].as_i64(),
        Some(2000)
    );
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM v2.users WHERE display_name = upper(display_name)"
        )
        .await,
        2000
    );
}

/// The application writes through pgshift (inserts, updates, deletes, upserts of the rows being copied) while
/// the backfill runs; afterwards verify finds nothing to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_is_correct_while_the_application_writes_through_pgshift() {
    let (db, proxy, direct) = setup(
        "t_backfill_live",
        format!(
            "{}{}",
            users_migration("dual_write", "new_percent = 50"),
            orders_migration("dual_write", "new_percent = 50")
        ),
    )
    .await;
    // Rows from before the dual write: only in old.
    direct
        .batch_execute(
            "INSERT INTO users (fullname, email) SELECT 'name ' || g, 'e' || g FROM generate_series(1, 2000) g;
             INSERT INTO orders (legacy_status) SELECT 's' || g % 9 FROM generate_series(1, 2000) g",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let migrations = format!(
        "{}{}",
        users_migration("dual_write", "new_percent = 50"),
        orders_migration("dual_write", "new_percent = 50")
    );
    let config = write_config(
        dir.path(),
        &db,
        &migrations,
        "batch_time = \"5ms\"\nmin_rows = 20\nmax_rows = 60",
    );
    let config = config.to_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for seed in 0..3u64 {
        let client = connect(&proxy.url(&db)).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed + 7);
            let mut committed = 0;
            for _ in 0..80 {
                let id = 1 + rng.next(2000);
                let sql = match rng.next(6) {
                    0 => format!("INSERT INTO users (fullname, email) VALUES ('n{id}', 'e{}')", rng.next(1000)),
                    1 => format!("UPDATE users SET email = 'u{}' WHERE id % 50 = {}", rng.next(1000), id % 50),
                    2 => format!("DELETE FROM users WHERE id % 97 = {}", id % 97),
                    3 => format!("INSERT INTO users (id, fullname) VALUES ({id}, 'up{id}') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname"),
                    4 => format!("UPDATE orders SET legacy_status = 't{}' WHERE id % 40 = {}", rng.next(9), id % 40),
                    _ => format!("DELETE FROM orders WHERE id = {id}"),
                };
                match client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await {
                    Ok(()) => committed += 1,
                    Err(e) => {
                        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED), "{sql}: {e}");
                        client.batch_execute("ROLLBACK").await.unwrap();
                    }
                }
            }
            committed
        }));
    }
    let backfills = ["users_v2", "orders_status"].map(|m| {
        let config = config.clone();
        tokio::spawn(
            async move { pgshift(&["backfill", "--config", &config, "--migration", m]).await },
        )
    });
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap();
    }
    for b in backfills {
        let (code, events, err) = b.await.unwrap();
        assert_eq!(code, 0, "{err}");
        assert!(
            events.iter().filter(|e| e["event"] == "batch").count() > 10,
            "{events:?}"
        );
    }
    assert!(committed > 150, "too few commits: {committed}");
    for m in ["users_v2", "orders_status"] {
        let (code, events, err) = pgshift(&["verify", "--config", &config, "--migration", m]).await;
        assert_eq!(code, 0, "{m}: {err} {events:?}");
    }
    assert_mirrored(&direct).await;
    assert_eq!(
        count(
            &direct,
            "SELECT count(*) FROM orders WHERE new_status IS DISTINCT FROM upper(legacy_status)"
        )
        .await,
        0
    );
    proxy.stop().await;
}

/// Limits change while a backfill runs (SIGHUP re-reads them); lag that cannot be read stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reload_on_sighup_and_unreadable_lag_fails_closed() {
    let (db, direct) = seeded(
        "t_backfill_limits",
        "INSERT INTO users (fullname) SELECT 'name ' || g FROM generate_series(1, 2000) g",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let migration = users_migration("dual_write", "new_percent = 0");
    // 20 rows a second: 100 s for the table.
    let config = write_config(
        dir.path(),
        &db,
        &migration,
        "min_rows = 20\nmax_rows = 20\nmax_rate = 20",
    );
    let (mut slow, _) = start(
        &[
            "backfill",
            "--config",
            config.to_str().unwrap(),
            "--migration",
            "users_v2",
        ],
        false,
    );
    eventually(Duration::from_secs(20), "the first batch", || {
        let direct = &direct;
        async move { count(direct, "SELECT count(*) FROM v2.users").await > 0 }
    })
    .await;
    write_config(
        dir.path(),
        &db,
        &migration,
        "min_rows = 20\nmax_rows = 400\nmax_rate = 0",
    );
    let pid = i32::try_from(slow.id().unwrap()).unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), slow.wait())
        .await
        .expect("the backfill speeds up after SIGHUP")
        .unwrap();
    assert!(status.success());
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut slow.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    assert!(err.contains("backfill limits re-read"), "{err}");
    assert_eq!(count(&direct, USERS_DIFFER).await, 0);

    // A replica DSN that does not answer as a replica: the backfill refuses to copy blind (exit 2).
    let blind = format!(
        "[upstream]\naddr = {:?}\n[control]\ndsn = {:?}\nreplica_dsn = {:?}\n{migration}",
        cluster().addr(),
        cluster().url(&db),
        cluster().url(&db)
    );
    std::fs::write(&config, blind).unwrap();
    let (code, _, err) = pgshift(&[
        "backfill",
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "users_v2",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the replica's replication lag cannot be read (the replica DSN points at a primary); stopped rather than copy blind"), "{err}");
}

/// A real streaming standby: while its replay is paused, the backfill waits; when replay resumes, it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_pauses_while_the_standby_lags() {
    use pgshift::cli::demo::cluster::{Cluster, Options};
    let (primary, standby) = tokio::task::spawn_blocking(|| {
        let primary = Cluster::start(&Options::default()).expect("a primary");
        let direct = std::process::Command::new(crate::support::psql_path())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &primary.url("postgres"), "-c"])
            .arg(format!(
                "{SCHEMA}; INSERT INTO users (fullname) SELECT 'name ' || g FROM generate_series(1, 600) g"
            ))
            .output()
            .unwrap();
        assert!(direct.status.success(), "{}", String::from_utf8_lossy(&direct.stderr));
        let standby = primary.start_standby().expect("a standby");
        (primary, standby)
    })
    .await
    .unwrap();
    let replica = connect(&standby.url("postgres")).await;
    eventually(Duration::from_secs(30), "the standby has the table", || {
        let replica = &replica;
        async move {
            replica
                .query_one("SELECT count(*) FROM users", &[])
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 600)
        }
    })
    .await;
    replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgshift.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\naddr = {:?}\n[control]\ndsn = {:?}\nreplica_dsn = {:?}\n\
             [control.backfill]\nmin_rows = 100\nmax_rows = 100\nmax_rate = 200\nmax_lag = \"300ms\"\n{}",
            primary.addr(),
            primary.url("postgres"),
            standby.url("postgres"),
            users_migration("dual_write", "new_percent = 0")
        ),
    )
    .unwrap();
    let (mut backfill, events) = start(
        &[
            "backfill",
            "--config",
            config.to_str().unwrap(),
            "--migration",
            "users_v2",
        ],
        true,
    );
    let mut events = events.unwrap();
    // Paused twice in a row (it re-reads the lag every second) with no batch between: it is waiting.
    let mut before_pause = 0;
    loop {
        let e = events.next().await.expect("the backfill is still running");
        if e["event"] == "paused" {
            break;
        }
        if e["event"] == "batch" {
            before_pause += 1;
        }
    }
    assert!(before_pause < 6, "it must pause before copying everything");
    let e = events.next().await.expect("the backfill is still running");
    assert_eq!(e["event"], "paused", "{e}");
    replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), backfill.wait())
        .await
        .expect("the backfill finishes once the standby catches up")
        .unwrap();
    assert!(status.success());
    let direct = connect(&primary.url("postgres")).await;
    assert_eq!(count(&direct, USERS_DIFFER).await, 0);

    // A role that may copy but not see replication: pg_stat_replication hides the standby's lag from it, and the
    // backfill refuses rather than copy unthrottled.
    direct
        .batch_execute(
            "CREATE ROLE plain LOGIN; GRANT USAGE ON SCHEMA v2, pgshift TO plain;
             GRANT ALL ON ALL TABLES IN SCHEMA public, v2, pgshift TO plain;",
        )
        .await
        .unwrap();
    std::fs::write(
        &config,
        format!(
            "[upstream]\naddr = {:?}\n[control]\ndsn = {:?}\n{}",
            primary.addr(),
            primary.url("postgres").replace("postgres@", "plain@"),
            users_migration("dual_write", "new_percent = 0")
        ),
    )
    .unwrap();
    let (code, _, err) = pgshift(&[
        "backfill",
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "users_v2",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "pg_stat_replication hides the replicas' lag from this role: grant it pg_monitor"
        ),
        "{err}"
    );
    drop((direct, replica));
    tokio::task::spawn_blocking(move || drop((standby, primary)))
        .await
        .unwrap();
}

/// Under `new_primary` the new table is the source: old is made `down(new)`, rows old lacks are added and rows
/// new lacks are removed by the repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_kind_new_primary_copies_new_back_to_old() {
    let (db, direct) = seeded(
        "t_backfill_back",
        "INSERT INTO v2.users SELECT g, 'NAME ' || g, 'e' || g, now() FROM generate_series(1, 1500) g;
             INSERT INTO users (id, fullname, email, created_at) VALUES (7, 'stale', 'e7', now()), (99999, 'gone', NULL, now())",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let migration = users_migration("new_primary", "new_percent = 100").replace(
        "new = \"display_name\" }",
        "new = \"display_name\", up = \"upper(fullname)\", down = \"lower(display_name)\" }",
    );
    let config = write_config(dir.path(), &db, &migration, SMALL_BATCHES);
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "users_v2",
    ];
    let (code, events, err) = pgshift(&[&["backfill"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last(&events, "started")["direction"], "new_to_old");
    // 1,499 rows added to old, row 7 rewritten, and row 99999 (after new's last key, absent from new)
    // removed by the pass that settles the range after the last batch.
    assert_eq!(
        count(&direct, "SELECT count(*) FROM users u FULL JOIN v2.users n USING (id) \
            WHERE u.id IS NULL OR n.id IS NULL OR u.fullname IS DISTINCT FROM lower(n.display_name) \
            OR (u.email, u.created_at) IS DISTINCT FROM (n.email, n.created_at)")
        .await,
        0
    );
    let (code, events, err) = pgshift(&[&["verify"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        last(&events, "verified")["rows_checked"].as_i64(),
        Some(1500)
    );
}

/// A batch that cannot get its row locks in `lock_timeout` is retried, smaller, with backoff; SIGINT stops the
/// backfill after the batch in hand, and the next run resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeouts_are_retried_and_sigint_stops_between_batches() {
    let (db, direct) = seeded(
        "t_backfill_locks",
        "INSERT INTO users (fullname) SELECT 'name ' || g FROM generate_series(1, 1000) g",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &db,
        &users_migration("dual_write", "new_percent = 0"),
        "min_rows = 100\nmax_rows = 100\nlock_timeout = \"50ms\"",
    );
    // Another session holds row 500 (as a long transaction of the application would).
    let holder = connect(&cluster().url(&db)).await;
    holder
        .batch_execute("BEGIN; SELECT * FROM users WHERE id = 500 FOR UPDATE")
        .await
        .unwrap();
    let (mut backfill, events) = start(
        &[
            "backfill",
            "--config",
            config.to_str().unwrap(),
            "--migration",
            "users_v2",
        ],
        true,
    );
    let mut events = events.unwrap();
    let mut retried = 0;
    while retried < 2 {
        let e = events.next().await.expect("still running");
        if e["event"] == "retrying" {
            assert!(e["error"].as_str().unwrap().contains("55P03"), "{e}");
            retried += 1;
        }
    }
    let pid = i32::try_from(backfill.id().unwrap()).unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut finished = None;
    while let Some(e) = events.next().await {
        if e["event"] == "finished" {
            finished = Some(e);
        }
    }
    let finished = finished.expect("a finished event");
    assert_eq!(finished["stopped_early"], true, "{finished}");
    assert_eq!(
        finished["rows_read"].as_i64(),
        Some(400),
        "the batches before row 500: {finished}"
    );
    assert!(backfill.wait().await.unwrap().success());
    holder.batch_execute("COMMIT").await.unwrap();
    let (code, events, err) = pgshift(&[
        "backfill",
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "users_v2",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last(&events, "started")["rows_done"].as_i64(), Some(400));
    assert_eq!(last(&events, "finished")["rows_read"].as_i64(), Some(1000));
    assert_eq!(count(&direct, USERS_DIFFER).await, 0);
}

/// A composite key: batches, chunks, differences and repairs keyed by (tenant, id), in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys() {
    let (db, direct) = seeded(
        "t_backfill_composite",
        "CREATE TABLE accounts (tenant text, id int, balance numeric(12, 2), PRIMARY KEY (tenant, id));
         CREATE TABLE v2.accounts (tenant text, id int, amount numeric(12, 2), PRIMARY KEY (tenant, id));
         INSERT INTO accounts SELECT t, g, g * 1.25 FROM generate_series(1, 400) g, unnest(ARRAY['acme', 'b''s', 'zeta']) t;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let migration = "[[migration]]\nname = \"accounts_v2\"\nkind = \"table\"\ntable = \"accounts\"\n\
        new_table = \"v2.accounts\"\nkey = [\"tenant\", \"id\"]\ncolumns = [{ old = \"balance\", new = \"amount\" }]\n\
        writes = \"dual_write\"\n";
    let config = write_config(dir.path(), &db, migration, SMALL_BATCHES);
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--migration",
        "accounts_v2",
    ];
    let (code, events, err) = pgshift(&[&["backfill"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        last(&events, "finished")["rows_written"].as_i64(),
        Some(1200)
    );
    let differ = "SELECT count(*) FROM accounts a FULL JOIN v2.accounts n USING (tenant, id) \
                  WHERE a.id IS NULL OR n.id IS NULL OR a.balance IS DISTINCT FROM n.amount";
    assert_eq!(count(&direct, differ).await, 0);
    direct
        .batch_execute(
            "UPDATE v2.accounts SET amount = 0 WHERE tenant = 'b''s' AND id = 17;
             DELETE FROM v2.accounts WHERE tenant = 'zeta' AND id = 400;
             INSERT INTO v2.accounts VALUES ('acme', 0, 1)",
        )
        .await
        .unwrap();
    let (code, events, _) = pgshift(&[&["verify"][..], &args].concat()).await;
    assert_eq!(code, 1);
    let mut keys: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "difference")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                format!(
                    "{},{}",
                    e["key"][0].as_str().unwrap(),
                    e["key"][1].as_str().unwrap()
                ),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("different".to_owned(), "b's,17".to_owned()),
            ("extra".to_owned(), "acme,0".to_owned()),
            ("missing".to_owned(), "zeta,400".to_owned()),
        ]
    );
    let (code, _, err) = pgshift(&[&["verify", "--repair"][..], &args].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&direct, differ).await, 0);
}
