//! Shadow comparison statements (`pgshift rewrite --shadow`) run against real Postgres: a wrong `down` is seen
//! as rows only in old and only in new, a right one as none, and a nondeterministic query differs from itself.

use crate::support::{cluster, connect, fresh_db, run};
use tokio::process::Command;
use tokio_postgres::Client;

/// The statements `pgshift rewrite --shadow` prints: (old against new, old against old).
async fn comparisons(config: &std::path::Path, dsn: &str, sql: &str) -> (String, String) {
    let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_pgshift")).args([
        "rewrite",
        "--shadow",
        "--config",
        config.to_str().unwrap(),
        "--dsn",
        dsn,
        sql,
    ]))
    .await;
    assert!(ok, "{err}");
    let statements: Vec<&str> = out
        .split(";\n")
        .filter_map(|part| part.find("\nWITH ").map(|at| &part[at + 1..]))
        .collect();
    assert_eq!(statements.len(), 2, "{out}");
    (statements[0].to_owned(), statements[1].to_owned())
}

/// (only in old, only in new, old rows, new rows).
async fn counts(client: &Client, sql: &str) -> (i64, i64, i64, i64) {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

fn config(dir: &std::path::Path, down: &str) -> std::path::PathBuf {
    let path = dir.join("pgshift.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\naddr = {:?}\n[[migration]]\nname = \"orders_status\"\nkind = \"column\"\ntable = \"orders\"\n\
             key = [\"id\"]\ncolumns = [{{ old = \"legacy_status\", new = \"new_status\", up = \"upper(legacy_status)\", \
             down = {down:?} }}]\nwrites = \"dual_write\"\n",
            cluster().addr()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparisons_tell_a_wrong_mapping_from_noise() {
    let db = fresh_db("t_shadow_statements").await;
    let dsn = cluster().url(&db);
    let direct = connect(&dsn).await;
    direct
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, legacy_status text, new_status text);
             INSERT INTO orders SELECT g, (ARRAY['Open', 'closed', 'HELD'])[g % 3 + 1], NULL FROM generate_series(1, 300) g;
             UPDATE orders SET new_status = upper(legacy_status);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let read = "SELECT id, legacy_status FROM orders WHERE id <= 30";

    // lower(new_status) loses the case of 'Open' and 'HELD': 20 of 30 rows differ, on each side.
    let wrong = config(dir.path(), "lower(new_status)");
    let (old_vs_new, old_vs_old) = comparisons(&wrong, &dsn, read).await;
    assert_eq!(counts(&direct, &old_vs_new).await, (20, 20, 30, 30));
    assert_eq!(counts(&direct, &old_vs_old).await, (0, 0, 30, 30));

    // The data as the mapping says: every 'closed' row is what lower(upper('closed')) gives.
    direct
        .batch_execute("UPDATE orders SET legacy_status = lower(legacy_status)")
        .await
        .unwrap();
    assert_eq!(counts(&direct, &old_vs_new).await, (0, 0, 30, 30));

    // Ordered reads compare sequences.
    let (ordered, _) = comparisons(
        &wrong,
        &dsn,
        "SELECT legacy_status FROM orders ORDER BY id DESC LIMIT 10",
    )
    .await;
    assert_eq!(counts(&direct, &ordered).await, (0, 0, 10, 10));

    // A query that is not deterministic differs from itself: the noise floor sees it.
    let (_, noisy) = comparisons(
        &wrong,
        &dsn,
        "SELECT id, legacy_status FROM orders ORDER BY random() LIMIT 5",
    )
    .await;
    let mut differed = 0;
    for _ in 0..20 {
        if counts(&direct, &noisy).await.0 > 0 {
            differed += 1;
        }
    }
    assert!(
        differed > 10,
        "random() differs from itself in most runs: {differed} of 20"
    );
}

// ---- Shadow reads on live traffic ----

use crate::raw::{self, Raw};
use crate::support::{eventually, http_get, start_proxy, Proxy, ProxyOptions};
use serde_json::Value;
use std::time::Duration;

const USERS: &str = "CREATE SCHEMA v2;
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text);
CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text);";

/// A fresh database with `users` and `v2.users` holding the same `rows` rows, then `more` run.
async fn users_with_rows(name: &str, rows: u32, more: &str) -> (String, Client) {
    let db = fresh_db(name).await;
    let direct = connect(&cluster().url(&db)).await;
    direct
        .batch_execute(&format!(
            "{USERS}
             INSERT INTO users (fullname, email) SELECT 'n' || g, 'e' || g FROM generate_series(1, {rows}) g;
             INSERT INTO v2.users SELECT id, fullname, email FROM users;
             {more}"
        ))
        .await
        .unwrap();
    (db, direct)
}

/// A `users_v2` table migration (dual writes, `reads` as given) comparing `sample` percent of reads.
fn users_v2(db: &str, reads: &str, sample: &str) -> String {
    format!(
        "[control]\ndsn = {:?}\n\
         [[migration]]\nname = \"users_v2\"\nkind = \"table\"\ntable = \"public.users\"\nnew_table = \"v2.users\"\n\
         key = [\"id\"]\ncolumns = [{{ old = \"fullname\", new = \"display_name\" }}]\nwrites = \"dual_write\"\n\
         [migration.reads]\n{reads}\n[migration.shadow]\nsample_percent = {sample}\n",
        cluster().url(db)
    )
}

/// The shadow findings of migration `name` on `/status`.
async fn findings(proxy: &Proxy, name: &str) -> Value {
    let (status, body) = http_get(proxy.metrics_addr, "/status").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    v["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no migration {name}: {v:#}"))["shadow"]["findings"]
        .clone()
}

fn results(f: &Value, result: &str) -> u64 {
    f["comparisons"][result].as_u64().unwrap_or(0)
}

/// Comparisons that gave an answer or failed (not the skipped ones).
fn compared(f: &Value) -> u64 {
    ["match", "mismatch", "noise", "error"]
        .iter()
        .map(|r| results(f, r))
        .sum()
}

async fn wait_compared(proxy: &Proxy, name: &str, at_least: u64) -> Value {
    eventually(Duration::from_secs(60), "comparisons done", || async {
        compared(&findings(proxy, name).await) >= at_least
    })
    .await;
    findings(proxy, name).await
}

fn orders_status(db: &str, column: &str, sample: &str) -> String {
    format!(
        "[control]\ndsn = {:?}\n\
         [[migration]]\nname = \"orders_status\"\nkind = \"column\"\ntable = \"orders\"\nkey = [\"id\"]\n\
         columns = [{{ {column} }}]\nwrites = \"dual_write\"\n[migration.shadow]\nsample_percent = {sample}\n",
        cluster().url(db)
    )
}

/// A wrong `down` is reported with its statement and keys within a few hundred sampled reads; the fixed
/// mapping, reloaded, starts the findings over and they match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_mapping_is_reported_and_a_fixed_one_matches() {
    let db = fresh_db("t_shadow_wrong_mapping").await;
    let direct = connect(&cluster().url(&db)).await;
    direct
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, legacy_status text, new_status text);
             INSERT INTO orders SELECT g, (ARRAY['Open', 'closed', 'HELD'])[g % 3 + 1], NULL FROM generate_series(1, 300) g;
             UPDATE orders SET new_status = upper(legacy_status);",
        )
        .await
        .unwrap();
    let proxy = start_proxy(ProxyOptions {
        migrations: orders_status(
            &db,
            "old = \"legacy_status\", new = \"new_status\", up = \"upper(legacy_status)\", down = \"lower(new_status)\"",
            "100",
        ),
        ..Default::default()
    })
    .await;
    let client = connect(&proxy.url(&db)).await;
    let read = client
        .prepare("SELECT id, legacy_status FROM orders WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=150i64 {
        let rows = client.query(&read, &[&id]).await.unwrap();
        let status: &str = rows[0].get(1);
        assert_eq!(
            status,
            ["Open", "closed", "HELD"][(id % 3) as usize],
            "the client reads old, untouched"
        );
    }
    // And through the simple protocol, constants inline.
    for id in 151..=200 {
        client
            .simple_query(&format!(
                "SELECT id, legacy_status FROM orders WHERE id = {id}"
            ))
            .await
            .unwrap();
    }
    let f = wait_compared(&proxy, "orders_status", 200).await;
    assert_eq!(f["verdict"], "mismatch", "{f:#}");
    let top = &f["statements"][0];
    assert_eq!(
        top["query"], "SELECT id, legacy_status FROM orders WHERE id = $1",
        "{f:#}"
    );
    assert_eq!(top["verdict"], "mismatch");
    assert_eq!(top["fingerprint"].as_str().unwrap().len(), 16, "{f:#}");
    // 'Open' and 'HELD' come back as 'open' and 'held': two reads in three differ, 'closed' ones match.
    assert_eq!(top["samples"], 200, "{f:#}");
    assert_eq!(top["mismatches"].as_u64().unwrap(), 133, "{f:#}");
    assert_eq!(top["noise_rate"], 0.0);
    let examples: Vec<&str> = top["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(examples.len(), 3, "{f:#}");
    // 'closed' rows (id % 3 == 1) match; the others differ. Examples are the first differences found.
    for example in &examples {
        let (side, key) = example
            .split_once(": id=")
            .unwrap_or_else(|| panic!("keys, not values: {f:#}"));
        assert!(side == "only in old" || side == "only in new", "{f:#}");
        assert_ne!(key.parse::<i64>().unwrap() % 3, 1, "{f:#}");
    }
    assert_eq!(
        top["difference"], "1 rows only in old, 1 only in new",
        "{f:#}"
    );
    let (_, metrics) = http_get(proxy.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains(
            "pgshift_shadow_comparisons_total{migration=\"orders_status\",result=\"mismatch\"} 133"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgshift_shadow_mismatch_ratio{migration=\"orders_status\"} 0.665"),
        "{metrics}"
    );

    // The data as a faithful mapping would have it, then the mapping fixed by a reload.
    direct
        .batch_execute("UPDATE orders SET new_status = legacy_status")
        .await
        .unwrap();
    proxy.reload_migrations(&orders_status(
        &db,
        "old = \"legacy_status\", new = \"new_status\"",
        "100",
    ));
    client.batch_execute("SELECT 1").await.unwrap(); // a transaction boundary: the session takes the reload
    for id in 1..=30i64 {
        client
            .query("SELECT id, legacy_status FROM orders WHERE id = $1", &[&id])
            .await
            .unwrap();
    }
    let f = wait_compared(&proxy, "orders_status", 30).await;
    assert_eq!(f["verdict"], "match", "{f:#}");
    assert_eq!(results(&f, "match"), 30, "{f:#}");
    assert_eq!(results(&f, "mismatch"), 0, "{f:#}");
    proxy.stop().await;
}

/// A correct mapping under concurrent writes through pgshift, reads served from both routes: every comparison
/// matches (each sees old and new in one snapshot, and dual writes keep them equal in every snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_mapping_matches_under_concurrent_writes() {
    use crate::migrations::Lcg;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (db, _direct) = users_with_rows("t_shadow_concurrent", 500, "").await;
    let proxy = start_proxy(ProxyOptions {
        migrations: users_v2(&db, "new_percent = 50", "100"),
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for seed in 0..2u64 {
        let client = connect(&proxy.url(&db)).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Lcg(seed + 11);
            let mut writes = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + rng.next(600);
                let sql = match rng.next(4) {
                    0 => format!(
                        "INSERT INTO users (fullname, email) VALUES ('w{id}', 'x{}')",
                        rng.next(99)
                    ),
                    1 => format!(
                        "UPDATE users SET email = 'u{}' WHERE id % 20 = {}",
                        rng.next(99),
                        id % 20
                    ),
                    2 => format!("DELETE FROM users WHERE id = {id}"),
                    _ => format!("UPDATE users SET fullname = fullname || '!' WHERE id = {id}"),
                };
                client.batch_execute(&sql).await.unwrap();
                writes += 1;
            }
            writes
        }));
    }
    let reads = [
        "SELECT id, fullname, email FROM users WHERE id = $1",
        "SELECT count(*), max(fullname) FROM users WHERE id % 10 = $1::bigint % 10",
        "SELECT fullname FROM users WHERE id BETWEEN $1 AND $1 + 20 ORDER BY id",
        "SELECT u.email FROM users u WHERE u.fullname LIKE 'n%' AND u.id > $1 ORDER BY u.id DESC LIMIT 5",
    ];
    let mut readers = Vec::new();
    for app in ["reader-a", "reader-b", "reader-c", "reader-d"] {
        let url = format!("{}?application_name={app}", proxy.url(&db));
        let client = connect(&url).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut rng = Lcg(app.len() as u64 + app.as_bytes()[7] as u64);
            while !stop.load(Ordering::Relaxed) {
                let id = 1 + rng.next(600) as i64;
                let sql = reads[rng.next(reads.len() as u64) as usize];
                client.query(sql, &[&id]).await.unwrap();
            }
        }));
    }
    let f = wait_compared(&proxy, "users_v2", 2000).await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    assert!(writes > 100, "too few writes: {writes}");
    assert_eq!(f["verdict"], "match", "{f:#}");
    assert!(results(&f, "match") >= 2000, "{f:#}");
    for result in ["mismatch", "noise", "error"] {
        assert_eq!(results(&f, result), 0, "{result}: {f:#}");
    }
    assert_eq!(
        f["statements"].as_array().unwrap().len(),
        reads.len(),
        "{f:#}"
    );
    let (_, metrics) = http_get(proxy.metrics_addr, "/metrics").await;
    for route in ["old", "new"] {
        assert!(
            metrics.contains(&format!(
                "pgshift_reads_total{{migration=\"users_v2\",route=\"{route}\"}}"
            )),
            "reads served from {route}: {metrics}"
        );
    }
    proxy.stop().await;
}

/// `random()` differs from itself as much as from new, and `LIMIT` without ORDER BY depends on each table's
/// physical order: both are noise, not mismatches, while a real difference next to them still is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterministic_reads_are_noise() {
    // New holds the same rows in the reverse physical order, and one wrong email.
    let (db, _direct) = users_with_rows(
        "t_shadow_noise",
        200,
        "TRUNCATE v2.users; INSERT INTO v2.users SELECT id, fullname, email FROM users ORDER BY id DESC;
         UPDATE v2.users SET email = 'wrong' WHERE id = 7;",
    )
    .await;
    let proxy = start_proxy(ProxyOptions {
        migrations: users_v2(&db, "new_percent = 0", "100"),
        ..Default::default()
    })
    .await;
    let client = connect(&proxy.url(&db)).await;
    for _ in 0..40 {
        for sql in [
            "SELECT id FROM users WHERE random() < 0.5",
            "SELECT id, fullname FROM users LIMIT 5",
            "SELECT id, email FROM users WHERE id < 10",
        ] {
            client.simple_query(sql).await.unwrap();
        }
    }
    let f = wait_compared(&proxy, "users_v2", 120).await;
    let statement = |query: &str| {
        f["statements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["query"] == query)
            .unwrap_or_else(|| panic!("{query}: {f:#}"))
            .clone()
    };
    let random = statement("SELECT id FROM users WHERE random() < $1");
    assert_eq!(random["verdict"], "noise", "{f:#}");
    assert!(random["noise_rate"].as_f64().unwrap() > 0.9, "{f:#}");
    let limit = statement("SELECT id, fullname FROM users LIMIT $1");
    assert_eq!(limit["verdict"], "noise", "{f:#}");
    assert_eq!(
        limit["mismatches"], 40,
        "old's first rows are not new's: {f:#}"
    );
    assert_eq!(
        limit["nondeterministic"],
        "LIMIT or OFFSET without ORDER BY"
    );
    let wrong = statement("SELECT id, email FROM users WHERE id < $1");
    assert_eq!(wrong["verdict"], "mismatch", "{f:#}");
    assert_eq!(wrong["examples"][0], "only in old: id=7", "{f:#}");
    assert_eq!(f["verdict"], "mismatch");
    assert_eq!(results(&f, "noise"), 80, "{f:#}");
    assert_eq!(results(&f, "mismatch"), 40, "{f:#}");
    proxy.stop().await;
}

/// What a client sees, message by message: tags, rows, errors by SQLSTATE, transaction status.
fn describe(messages: Vec<(u8, Vec<u8>)>) -> Vec<String> {
    messages
        .into_iter()
        .map(|(tag, body)| match tag {
            b'E' => format!("E {}", raw::sqlstate(&body)),
            _ => format!("{} {}", tag as char, String::from_utf8_lossy(&body)),
        })
        .collect()
}

/// One session's traffic: simple queries in and out of transactions, a failed transaction, a locking read,
/// a pipeline of prepared statements with an error in the middle, and parameterized prepared statements.
async fn transcript(proxy: &Proxy, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut session = Raw::login(proxy.addr, db).await;
    for sql in [
        "SELECT id, fullname, email FROM users WHERE id <= 5 ORDER BY id",
        "BEGIN",
        "SELECT count(*) FROM users",
        "SELECT id FROM users WHERE id = 2 FOR UPDATE",
        "SELECT fullname FROM users WHERE id = 1/0",
        "SELECT id FROM users WHERE id = 1",
        "ROLLBACK",
        "BEGIN; SELECT fullname FROM users WHERE id = 4; COMMIT",
        "SELECT id FROM users WHERE id = 'x'",
        "SET TimeZone = 'Asia/Tokyo'",
        "SELECT id, fullname, now() - now() FROM users WHERE id = 6",
    ] {
        session.send(&raw::query(sql)).await;
        out.push(format!("> {sql}"));
        out.extend(describe(session.read_until_ready().await));
    }
    let mut pipeline = Vec::new();
    for part in [
        raw::parse("s1", "SELECT id, fullname FROM users WHERE id = 3"),
        raw::bind("", "s1"),
        raw::execute(""),
        raw::parse("", "SELECT fullname FROM users WHERE id = 1/0"),
        raw::bind("", ""),
        raw::execute(""),
        raw::bind("", "s1"),
        raw::execute(""),
        raw::sync(),
        raw::bind("p", "s1"),
        raw::describe_portal("p"),
        raw::execute("p"),
        raw::sync(),
    ] {
        pipeline.extend(part);
    }
    session.send(&pipeline).await;
    out.push("> pipeline".into());
    out.extend(describe(session.read_until_ready().await));
    out.extend(describe(session.read_until_ready().await));

    let client = connect(&proxy.url(db)).await;
    let read = client
        .prepare("SELECT id, fullname FROM users WHERE id = $1 AND email = $2")
        .await
        .unwrap();
    let rows = |rows: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>| match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| format!("{}|{}", r.get::<_, i64>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => format!("error {:?}", e.code()),
    };
    for id in 1..=8i64 {
        let email = format!("e{id}");
        out.push(rows(client.query(&read, &[&id, &email]).await));
    }
    // Pipelined: three reads in flight at once.
    let (a, b, c) = tokio::join!(
        client.query(&read, &[&1i64, &"e1"]),
        client.query(&read, &[&2i64, &"nope"]),
        client.query(&read, &[&3i64, &"e3"]),
    );
    out.extend([rows(a), rows(b), rows(c)]);
    out
}

/// Sampling every read changes nothing a client sees: rows, tags, errors and transaction status are those of
/// sampling off, message for message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_every_read_changes_nothing_the_client_sees() {
    let (db, _direct) = users_with_rows("t_shadow_invisible", 20, "").await;
    let off = start_proxy(ProxyOptions {
        migrations: users_v2(&db, "new_percent = 0", "0"),
        ..Default::default()
    })
    .await;
    let on = start_proxy(ProxyOptions {
        migrations: users_v2(&db, "new_percent = 0", "100"),
        ..Default::default()
    })
    .await;
    let without = transcript(&off, &db).await;
    let with = transcript(&on, &db).await;
    assert_eq!(with, without);
    assert!(
        without.iter().any(|m| m == "Z E"),
        "the failed transaction is in the transcript"
    );
    assert!(without.iter().any(|m| m == "E 25P02"));

    // The successful reads were compared, the locking and multi-statement ones skipped, the failed ones not
    // sampled at all.
    let f = wait_compared(&on, "users_v2", 16).await;
    assert_eq!(results(&f, "match"), 16, "{f:#}");
    assert_eq!(compared(&f), 16, "{f:#}");
    assert_eq!(f["skipped"]["locking"], 1, "{f:#}");
    assert_eq!(f["skipped"]["not_a_read"], 1, "{f:#}");
    assert_eq!(
        findings(&off, "users_v2").await["comparisons"],
        serde_json::json!({})
    );
    off.stop().await;
    on.stop().await;
}

/// The client's role decides what a comparison may read: the new table it has no grant on makes the new side
/// fail (a mismatch the operator must fix before routing anyone there); a control role that cannot take the
/// client's role makes the comparison an error. Either way the client sees only its own results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparisons_run_with_the_clients_privileges() {
    let (db, direct) = users_with_rows(
        "t_shadow_privileges",
        20,
        "DROP ROLE IF EXISTS shadow_app; DROP ROLE IF EXISTS shadow_ctl;
             CREATE ROLE shadow_app LOGIN; GRANT SELECT ON users TO shadow_app;
             CREATE ROLE shadow_ctl LOGIN;",
    )
    .await;
    let as_app = |proxy: &Proxy| format!("postgres://shadow_app@127.0.0.1:{}/{db}", proxy.port());
    let superuser = start_proxy(ProxyOptions {
        migrations: users_v2(&db, "new_percent = 0", "100"),
        ..Default::default()
    })
    .await;
    let control_url = cluster().url(&db).replace("postgres@", "shadow_ctl@");
    let unprivileged = start_proxy(ProxyOptions {
        migrations: users_v2(&db, "new_percent = 0", "100").replace(
            &format!("{:?}", cluster().url(&db)),
            &format!("{control_url:?}"),
        ),
        ..Default::default()
    })
    .await;
    for proxy in [&superuser, &unprivileged] {
        let client = connect(&as_app(proxy)).await;
        for id in 1..=12i64 {
            let row = client
                .query_one("SELECT fullname FROM users WHERE id = $1", &[&id])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), format!("n{id}"));
        }
    }
    let f = wait_compared(&superuser, "users_v2", 12).await;
    assert_eq!(results(&f, "mismatch"), 12, "{f:#}");
    let top = &f["statements"][0];
    assert_eq!(top["verdict"], "mismatch", "{f:#}");
    assert_eq!(
        top["examples"][0], "only the new side fails: permission denied for schema v2 (42501)",
        "{f:#}"
    );
    let f = wait_compared(&unprivileged, "users_v2", 12).await;
    assert_eq!(results(&f, "error"), 12, "{f:#}");
    assert_eq!(
        f["verdict"], "insufficient",
        "errors say nothing of the mapping: {f:#}"
    );
    let error = f["statements"][0]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("cannot act as role \"shadow_app\"")
            && error.contains("permission denied to set role"),
        "{error}"
    );
    superuser.stop().await;
    unprivileged.stop().await;
    direct
        .batch_execute("DROP OWNED BY shadow_app; DROP ROLE shadow_app; DROP ROLE shadow_ctl")
        .await
        .unwrap();
}
