//! The migration engine end to end against real PostgreSQL: dual writes (table and column kinds) through the
//! simple and the extended protocol, reshaped replies, routed reads, refusals and `new_primary`. Routing by
//! key and the kill switch are in `routing.rs`.

use crate::raw::{query, sqlstate, Raw};
use crate::support::{cluster, connect, fresh_db, start_proxy, Proxy, ProxyOptions};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

const SCHEMA: &str = "CREATE SCHEMA v2;
CREATE TABLE users (id bigserial PRIMARY KEY, fullname text NOT NULL, email text,
                    created_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE v2.users (id bigint PRIMARY KEY, display_name text NOT NULL, email text, created_at timestamptz NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer text, legacy_status text, new_status text);
CREATE TABLE banned (email text, reason text);
CREATE TABLE imports (name text, status text);";

pub(crate) fn users_migration(writes: &str, reads: &str) -> String {
    format!(
        "[[migration]]\nname = \"users_v2\"\nkind = \"table\"\ntable = \"public.users\"\nnew_table = \"v2.users\"\n\
         key = [\"id\"]\ncolumns = [{{ old = \"fullname\", new = \"display_name\" }}]\nwrites = {writes:?}\n\
         [migration.reads]\n{reads}\n"
    )
}

pub(crate) fn orders_migration(writes: &str, reads: &str) -> String {
    format!(
        "[[migration]]\nname = \"orders_status\"\nkind = \"column\"\ntable = \"orders\"\nkey = [\"id\"]\n\
         columns = [{{ old = \"legacy_status\", new = \"new_status\", up = \"upper(legacy_status)\", down = \"lower(new_status)\" }}]\n\
         writes = {writes:?}\n[migration.reads]\n{reads}\n"
    )
}

pub(crate) async fn setup(name: &str, migrations: String) -> (String, Proxy, Client) {
    let db = fresh_db(name).await;
    let direct = connect(&cluster().url(&db)).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = start_proxy(ProxyOptions {
        migrations,
        ..Default::default()
    })
    .await;
    (db, proxy, direct)
}

/// Old and new must hold the same rows (through the column map).
pub(crate) async fn assert_mirrored(direct: &Client) -> usize {
    let rows = |sql: &'static str| async move {
        direct
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let old = rows(
        "SELECT format('%s|%s|%s|%s', id, fullname, email, created_at) FROM users ORDER BY id",
    )
    .await;
    let new = rows("SELECT format('%s|%s|%s|%s', id, display_name, email, created_at) FROM v2.users ORDER BY id").await;
    assert_eq!(old, new, "old and new tables differ");
    old.len()
}

/// Each reply message as text: `C:<tag>`, `T:<columns>`, `D`, `E:<sqlstate>`, `Z:<status>`, `n`.
async fn exchange(raw: &mut Raw, sql: &str) -> Vec<String> {
    raw.send(&query(sql)).await;
    raw.read_until_ready()
        .await
        .into_iter()
        .map(|(tag, body)| match tag {
            b'C' => format!("C:{}", String::from_utf8_lossy(&body[..body.len() - 1])),
            b'T' => format!("T:{}", u16::from_be_bytes([body[0], body[1]])),
            b'E' => format!("E:{}", sqlstate(&body)),
            b'Z' => format!("Z:{}", body[0] as char),
            other => (other as char).to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_kind_dual_writes_through_the_simple_protocol() {
    let (db, proxy, direct) = setup(
        "t_mig_table_simple",
        users_migration("dual_write", "new_percent = 0"),
    )
    .await;
    let mut raw = Raw::login(proxy.addr, &db).await;
    direct
        .batch_execute("INSERT INTO banned VALUES ('bob@x', 'spam')")
        .await
        .unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("INSERT INTO users (fullname, email) VALUES ('Ada', 'ada@x'), ('Bob', 'bob@x')", &["C:INSERT 0 2", "Z:I"]),
        ("INSERT INTO users (fullname) VALUES ('Cy') RETURNING id, upper(fullname) AS shout", &["T:2", "D", "C:INSERT 0 1", "Z:I"]),
        ("UPDATE users SET email = 'cy@x' WHERE fullname = 'Cy' RETURNING *", &["T:4", "D", "C:UPDATE 1", "Z:I"]),
        ("UPDATE users u SET email = 'banned@x' FROM banned b WHERE u.email = b.email", &["C:UPDATE 1", "Z:I"]),
        ("DELETE FROM users USING banned b WHERE users.email = 'banned@x' AND b.reason = 'spam'", &["C:DELETE 1", "Z:I"]),
        (
            "INSERT INTO users (id, fullname) VALUES (100, 'Up') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname",
            &["C:INSERT 0 1", "Z:I"],
        ),
        (
            "INSERT INTO users (id, fullname) VALUES (100, 'Up2') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname RETURNING fullname",
            &["T:1", "D", "C:INSERT 0 1", "Z:I"],
        ),
        ("INSERT INTO users (id, fullname) VALUES (100, 'ignored') ON CONFLICT DO NOTHING", &["C:INSERT 0 0", "Z:I"]),
        ("INSERT INTO users (fullname, email) SELECT 'imp-' || g, 'i' || g || '@x' FROM generate_series(1, 3) g", &["C:INSERT 0 3", "Z:I"]),
        ("WITH src AS (SELECT 'Wit' AS n) INSERT INTO users (fullname) SELECT n FROM src", &["C:INSERT 0 1", "Z:I"]),
        (
            "SELECT 1; INSERT INTO users (fullname) VALUES ('M'); UPDATE users SET email = 'm@x' WHERE fullname = 'M'; \
             DELETE FROM users WHERE fullname = 'M'",
            &["T:1", "D", "C:SELECT 1", "C:INSERT 0 1", "C:UPDATE 1", "C:DELETE 1", "Z:I"],
        ),
        ("INSERT INTO public.\"users\" (fullname) VALUES ('quoted')", &["C:INSERT 0 1", "Z:I"]),
        ("UPDATE Public.Users SET email = 'mixed@x' WHERE fullname = 'quoted'", &["C:UPDATE 1", "Z:I"]),
        ("DELETE FROM users WHERE fullname = 'nobody'", &["C:DELETE 0", "Z:I"]),
    ];
    for (sql, want) in cases {
        assert_eq!(exchange(&mut raw, sql).await, *want, "{sql}");
    }
    // The returned values are the stored post-image.
    let rows = direct
        .query("SELECT display_name FROM v2.users WHERE id = 100", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "Up2");
    assert_eq!(assert_mirrored(&direct).await, 8);

    // Under another search_path, `users` is v2.users: not the migrated table, so not rewritten.
    assert_eq!(
        exchange(&mut raw, "SET search_path = v2, public").await,
        ["C:SET", "Z:I"]
    );
    assert_eq!(
        exchange(
            &mut raw,
            "INSERT INTO users (id, display_name, created_at) VALUES (-5, 'only new', now())"
        )
        .await,
        ["C:INSERT 0 1", "Z:I"]
    );
    let n: i64 = direct
        .query_one("SELECT count(*) FROM public.users WHERE id = -5", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(raw);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_kind_dual_writes_through_the_extended_protocol() {
    let (db, proxy, direct) = setup(
        "t_mig_table_ext",
        users_migration("dual_write", "new_percent = 0"),
    )
    .await;
    let client = connect(&proxy.url(&db)).await;
    assert_eq!(
        client
            .execute(
                "INSERT INTO users (fullname, email) VALUES ($1, $2)",
                &[&"Eve", &"eve@x"]
            )
            .await
            .unwrap(),
        1
    );
    // Describe answers as the client's own statement would: NoData without RETURNING, else its columns.
    let insert = client
        .prepare("INSERT INTO users (fullname) VALUES ($1)")
        .await
        .unwrap();
    assert_eq!(insert.params(), &[Type::TEXT]);
    assert!(insert.columns().is_empty());
    let delete = client
        .prepare("DELETE FROM users WHERE id = $1 RETURNING fullname, id")
        .await
        .unwrap();
    assert_eq!(delete.params(), &[Type::INT8]);
    let cols: Vec<(&str, &Type)> = delete
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_()))
        .collect();
    assert_eq!(cols, vec![("fullname", &Type::TEXT), ("id", &Type::INT8)]);
    // Pipelined executions of the prepared statement.
    let names: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let (client_ref, insert_ref) = (&client, &insert);
    let inserts = names
        .iter()
        .map(|n| async move { client_ref.execute(insert_ref, &[n]).await });
    let counts = futures_util::future::join_all(inserts).await;
    assert!(counts.iter().all(|c| *c.as_ref().unwrap() == 1));
    let rows = client
        .query(
            "UPDATE users SET email = $1 WHERE fullname LIKE 'p1%' RETURNING fullname",
            &[&"p1@x"],
        )
        .await
        .unwrap();
    let mut updated: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    updated.sort();
    assert_eq!(
        updated,
        vec!["p1", "p10", "p11", "p12", "p13", "p14", "p15", "p16", "p17", "p18", "p19"]
    );
    let id: i64 = direct
        .query_one("SELECT id FROM users WHERE fullname = 'p3'", &[])
        .await
        .unwrap()
        .get(0);
    let gone = client.query(&delete, &[&id]).await.unwrap();
    assert_eq!(
        (gone[0].get::<_, String>(0), gone[0].get::<_, i64>(1)),
        ("p3".to_owned(), id)
    );
    assert_eq!(client.execute(&delete, &[&-1i64]).await.unwrap(), 0);
    assert_eq!(assert_mirrored(&direct).await, 20);
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_kind_dual_writes_fill_the_new_column() {
    let (db, proxy, direct) = setup(
        "t_mig_column",
        orders_migration("dual_write", "new_percent = 0"),
    )
    .await;
    let client = connect(&proxy.url(&db)).await;
    direct
        .batch_execute("INSERT INTO imports VALUES ('imp', 'paid')")
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO orders (customer, legacy_status) VALUES ('a', 'new'), ('b', 'paid');
             INSERT INTO orders VALUES (10, 'c', 'shipped');
             INSERT INTO orders (customer, legacy_status) SELECT name, status FROM imports;
             UPDATE orders SET legacy_status = 'refunded' WHERE customer = 'b';
             INSERT INTO orders (id, legacy_status) VALUES (10, 'returned')
               ON CONFLICT (id) DO UPDATE SET legacy_status = EXCLUDED.legacy_status;",
        )
        .await
        .unwrap();
    let n = client
        .execute(
            "UPDATE orders SET legacy_status = $1 WHERE customer = $2",
            &[&"lost", &"a"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let rows = client
        .query(
            "INSERT INTO orders (customer, legacy_status) VALUES ($1, $2) RETURNING id, new_status",
            &[&"d", &"pending"],
        )
        .await
        .unwrap();
    assert_eq!(
        rows[0].get::<_, Option<String>>(1).as_deref(),
        Some("PENDING")
    );
    let all: Vec<(String, Option<String>, Option<String>)> = direct
        .query(
            "SELECT coalesce(customer, '-'), legacy_status, new_status FROM orders ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(all.len(), 5);
    for (customer, legacy, new) in &all {
        assert_eq!(
            new.clone(),
            legacy.as_ref().map(|s| s.to_uppercase()),
            "row {customer}"
        );
    }
    // A value that changes when evaluated twice cannot feed both columns: refused, nothing written.
    let err = client
        .execute("UPDATE orders SET legacy_status = random()::text", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message
            .starts_with("pgshift cannot rewrite this statement for migration \"orders_status\""),
        "{message}"
    );
    let unchanged: i64 = direct
        .query_one(
            "SELECT count(*) FROM orders WHERE legacy_status ~ '^[0-9.]+$'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unchanged, 0);
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_statements_fail_like_errors_and_write_nothing() {
    let (db, proxy, direct) = setup(
        "t_mig_refuse",
        users_migration("dual_write", "new_percent = 0"),
    )
    .await;
    let client = connect(&proxy.url(&db)).await;
    client
        .batch_execute("BEGIN; INSERT INTO users (fullname) VALUES ('in tx')")
        .await
        .unwrap();
    let err = client
        .batch_execute("UPDATE users SET id = id + 1000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    let db_error = err.as_db_error().unwrap();
    assert_eq!(
        db_error.message(),
        "pgshift cannot rewrite this statement for migration \"users_v2\": an UPDATE of key column id is not supported: \
         the mirrored row is found by its key"
    );
    assert!(db_error
        .hint()
        .unwrap()
        .starts_with("Nothing was executed."));
    // Exactly like a server error: the transaction is aborted until ROLLBACK.
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    for sql in [
        "MERGE INTO users u USING banned b ON u.email = b.email WHEN MATCHED THEN DELETE",
        "TRUNCATE users",
        "UPDATE ONLY users SET email = 'x'",
        "WITH d AS (DELETE FROM users RETURNING id) SELECT count(*) FROM d",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{sql}");
        // Extended protocol: the refusal arrives at Parse, like a server-side parse error.
        let err = client.prepare(sql).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{sql}");
    }
    assert_eq!(assert_mirrored(&direct).await, 0);
    assert_eq!(
        client
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    // A write the server rejects (a unique violation) counts as an error of its migration and route.
    let err = client
        .execute(
            "INSERT INTO users (id, fullname) VALUES ($1, $2)",
            &[&5000i64, &"dup"],
        )
        .await
        .and(
            client
                .execute(
                    "INSERT INTO users (id, fullname) VALUES ($1, $2)",
                    &[&5000i64, &"dup"],
                )
                .await,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let (_, metrics) = crate::support::http_get(proxy.metrics_addr, "/metrics").await;
    for want in [
        "pgshift_statement_errors_total{migration=\"users_v2\",route=\"dual_write\",class=\"23\"}",
        "pgshift_statements_refused_total{migration=\"users_v2\",reason=\"key_update\"}",
        "pgshift_statements_refused_total{migration=\"users_v2\",reason=\"merge\"}",
        "pgshift_statements_rewritten_total{migration=\"users_v2\",kind=\"dual_write\"}",
    ] {
        assert!(metrics.contains(want), "missing {want}");
    }
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_routed_to_new_keep_the_old_shape() {
    let (db, proxy, direct) = setup(
        "t_mig_reads",
        format!(
            "{}{}",
            users_migration("dual_write", "new_percent = 100"),
            orders_migration("dual_write", "new_percent = 100")
        ),
    )
    .await;
    direct
        .batch_execute(
            "INSERT INTO v2.users VALUES (1000, 'Only In New', 'n@x', '2026-01-01 00:00:00+00');
             INSERT INTO orders (id, customer, legacy_status, new_status) VALUES (1, 'z', 'stale', 'SHIPPED');",
        )
        .await
        .unwrap();
    let client = connect(&proxy.url(&db)).await;
    let row = client
        .query_one("SELECT * FROM users WHERE id = $1", &[&1000i64])
        .await
        .unwrap();
    let cols: Vec<(&str, &Type)> = row
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_()))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("id", &Type::INT8),
            ("fullname", &Type::TEXT),
            ("email", &Type::TEXT),
            ("created_at", &Type::TIMESTAMPTZ)
        ]
    );
    assert_eq!(row.get::<_, String>(1), "Only In New");
    let joined: String = client
        .query_one(
            "SELECT u.fullname FROM users u WHERE u.id IN (SELECT id FROM users WHERE email = 'n@x') FOR UPDATE OF u",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(joined, "Only In New");
    let status: String = client
        .query_one("SELECT legacy_status FROM orders WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "shipped", "computed by down() from the new column");

    let (_, metrics) = crate::support::http_get(proxy.metrics_addr, "/metrics").await;
    for want in [
        "pgshift_reads_total{migration=\"users_v2\",route=\"new\"}",
        "pgshift_reads_total{migration=\"orders_status\",route=\"new\"}",
        "pgshift_statement_duration_seconds_bucket{migration=\"users_v2\",route=\"new\",le=\"0.001\"}",
    ] {
        assert!(
            metrics.contains(want),
            "missing {want} in\n{}",
            metrics.lines().filter(|l| l.contains("statement_duration") || l.contains("reads_total")).collect::<Vec<_>>().join("\n")
        );
    }

    // 0% is the kill switch: the next transaction reads old again.
    proxy.reload_migrations(&format!(
        "{}{}",
        users_migration("dual_write", "new_percent = 0"),
        orders_migration("dual_write", "new_percent = 0")
    ));
    assert!(client
        .query("SELECT * FROM users WHERE id = 1000", &[])
        .await
        .unwrap()
        .is_empty());
    let status: String = client
        .query_one("SELECT legacy_status FROM orders WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "stale");
    drop(client);
    proxy.stop().await;
}

/// A small deterministic generator, so a failing run can be replayed.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_random_writes_keep_old_and_new_identical() {
    let (db, proxy, direct) = setup(
        "t_mig_parity",
        format!(
            "{}{}",
            users_migration("dual_write", "new_percent = 50"),
            orders_migration("dual_write", "new_percent = 50")
        ),
    )
    .await;
    let mut tasks = Vec::new();
    for seed in 0..4u64 {
        let client = connect(&proxy.url(&db)).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed + 1);
            let (mut committed, mut rolled_back, mut failed) = (0, 0, 0);
            for _ in 0..60 {
                let mut sql = vec!["BEGIN".to_owned()];
                for _ in 0..1 + rng.next(3) {
                    let id = 1 + rng.next(40);
                    sql.push(match rng.next(6) {
                        0 => format!("INSERT INTO users (fullname, email) VALUES ('n{id}', 'e{}')", rng.next(1000)),
                        1 => format!("UPDATE users SET email = 'u{}' WHERE id % 40 = {id}", rng.next(1000)),
                        2 => format!("DELETE FROM users WHERE id % 40 = {id} AND id > 10"),
                        3 => format!(
                            "INSERT INTO users (id, fullname) VALUES ({}, 'up{id}') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname",
                            100_000 + id
                        ),
                        4 => format!("INSERT INTO orders (id, legacy_status) VALUES ({id}, 's{}') ON CONFLICT (id) DO UPDATE SET legacy_status = EXCLUDED.legacy_status", rng.next(9)),
                        _ => format!("UPDATE orders SET legacy_status = 't{}' WHERE id = {id}", rng.next(9)),
                    });
                }
                let rollback = rng.next(5) == 0;
                sql.push(if rollback { "ROLLBACK" } else { "COMMIT" }.to_owned());
                // Half the transactions use the extended protocol statement by statement.
                let result = if rng.next(2) == 0 {
                    client.batch_execute(&sql.join("; ")).await
                } else {
                    let mut r = Ok(());
                    for s in &sql {
                        if let Err(e) = client.execute(s.as_str(), &[]).await {
                            r = Err(e);
                            break;
                        }
                    }
                    r
                };
                match result {
                    Ok(()) if rollback => rolled_back += 1,
                    Ok(()) => committed += 1,
                    Err(e) => {
                        // Deadlocks between the clients are expected; anything else is a bug.
                        assert_eq!(e.code(), Some(&SqlState::T_R_DEADLOCK_DETECTED), "{e}");
                        client.batch_execute("ROLLBACK").await.unwrap();
                        failed += 1;
                    }
                }
            }
            (committed, rolled_back, failed)
        }));
    }
    let mut totals = (0, 0, 0);
    for task in tasks {
        let (c, r, f) = task.await.unwrap();
        totals = (totals.0 + c, totals.1 + r, totals.2 + f);
    }
    assert!(totals.0 > 100, "too few commits: {totals:?}");
    let rows = assert_mirrored(&direct).await;
    assert!(rows > 10, "only {rows} rows");
    let mismatched: i64 = direct
        .query_one(
            "SELECT count(*) FROM orders WHERE new_status IS DISTINCT FROM upper(legacy_status)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mismatched, 0);
    eprintln!("parity: {rows} users rows identical in old and new after {totals:?} (committed, rolled back, deadlocked)");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_primary_writes_new_first_and_mirrors_to_old() {
    let (db, proxy, direct) = setup(
        "t_mig_new_primary",
        format!(
            "{}{}",
            users_migration("new_primary", "new_percent = 100"),
            orders_migration("new_primary", "new_percent = 100")
        ),
    )
    .await;
    // In this phase the new table generates ids and defaults.
    direct
        .batch_execute(
            "ALTER TABLE v2.users ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
             ALTER TABLE v2.users ALTER COLUMN created_at SET DEFAULT clock_timestamp();
             INSERT INTO orders (id, customer, legacy_status, new_status) VALUES (1, 'z', 'new', 'NEW');",
        )
        .await
        .unwrap();
    let mut raw = Raw::login(proxy.addr, &db).await;
    let cases: &[(&str, &[&str])] = &[
        ("INSERT INTO users (fullname, email) VALUES ('Ann', 'ann@x'), ('Ben', 'gone@x')", &["C:INSERT 0 2", "Z:I"]),
        ("INSERT INTO users (fullname) VALUES ('Cat') RETURNING id, fullname", &["T:2", "D", "C:INSERT 0 1", "Z:I"]),
        ("UPDATE users SET fullname = fullname || '!' WHERE fullname = 'Ann'", &["C:UPDATE 1", "Z:I"]),
        ("DELETE FROM users WHERE email = 'gone@x'", &["C:DELETE 1", "Z:I"]),
        (
            "INSERT INTO users (id, fullname) VALUES (50, 'Up') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname",
            &["C:INSERT 0 1", "Z:I"],
        ),
        ("UPDATE orders SET legacy_status = 'Paid' WHERE id = 1", &["C:UPDATE 1", "Z:I"]),
        // UPDATE … FROM is translated (references qualified with the table are unambiguous).
        ("UPDATE users SET email = b.email FROM banned b WHERE users.id = b.email::int", &["C:UPDATE 0", "Z:I"]),
    ];
    for (sql, want) in cases {
        assert_eq!(exchange(&mut raw, sql).await, *want, "{sql}");
    }
    let names: Vec<String> = direct
        .query(
            "SELECT display_name FROM v2.users ORDER BY display_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["Ann!", "Cat", "Up"]);
    assert_eq!(assert_mirrored(&direct).await, 3);
    let order: (String, String) = direct
        .query_one(
            "SELECT legacy_status, new_status FROM orders WHERE id = 1",
            &[],
        )
        .await
        .unwrap()
        .pipe(|r| (r.get(0), r.get(1)));
    assert_eq!(
        order,
        ("paid".to_owned(), "PAID".to_owned()),
        "old is derived from new through down()"
    );
    // Reads come from the new side with the old shape.
    let client = connect(&proxy.url(&db)).await;
    let row = client
        .query_one("SELECT fullname FROM users WHERE id = 50", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Up");
    drop(client);
    drop(raw);
    proxy.stop().await;
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}

impl<T> Pipe for T {}

/// What a plan did is counted each time the statement runs: a prepared read executed three times is three
/// reads, though it was planned once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_counted_per_execution() {
    let (db, proxy, _direct) = setup(
        "t_mig_count",
        users_migration("dual_write", "new_percent = 100").replace("users_v2", "users_counted"),
    )
    .await;
    let client = connect(&proxy.url(&db)).await;
    let statement = client
        .prepare("SELECT * FROM users WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=3i64 {
        client.query(&statement, &[&id]).await.unwrap();
    }
    client
        .simple_query("SELECT count(*) FROM users")
        .await
        .unwrap();
    let (_, metrics) = crate::support::http_get(proxy.metrics_addr, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pgshift_reads_total{migration=\"users_counted\",route=\"new\"}"))
        .unwrap_or_else(|| panic!("no reads counted:\n{metrics}"));
    assert!(line.ends_with(" 4"), "{line}");
    drop(client);
    proxy.stop().await;
}
