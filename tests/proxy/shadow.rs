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
