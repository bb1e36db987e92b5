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
        .filter_map(|part| part.lines().find(|l| l.starts_with("WITH ")))
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
    // id 1 is 'closed' (matches); id 2 'HELD' and id 3 'Open' differ.
    assert_eq!(
        examples,
        [
            "only in old: id=2",
            "only in new: id=2",
            "only in old: id=3"
        ],
        "keys, not values: {f:#}"
    );
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
