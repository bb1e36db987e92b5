//! tokio-postgres through pgshift and directly: the same statements must give the same results.

use crate::support::{connect, fresh_db, proxy};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};

/// Rows and command tags of a simple-protocol exchange, in order, as text.
async fn simple(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                let cols: Vec<String> = (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                    .collect();
                format!("row {}", cols.join("|"))
            }
            SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
            SimpleQueryMessage::RowDescription(cols) => {
                format!(
                    "columns {}",
                    cols.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
                )
            }
            _ => "other".to_owned(),
        })
        .collect()
}

const SETUP: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), tags text[]);
    INSERT INTO items VALUES (1, 'apple', 1.25, '{fruit,red}'), (2, 'bread', 3.50, '{bakery}'), (3, NULL, 0, NULL);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_multi_statement_matches_direct() {
    let db = fresh_db("t_simple_multi").await;
    let proxy = proxy().await;
    let direct = connect(&crate::support::cluster().url(&db)).await;
    let through = connect(&proxy.url(&db)).await;
    direct.batch_execute(SETUP).await.unwrap();
    let sql = "SELECT id, name, price, tags FROM items ORDER BY id; UPDATE items SET price = price + 1 WHERE id < 3; \
               SELECT count(*) FROM items WHERE price > 2; SELECT 'x' AS a, NULL AS b; DELETE FROM items WHERE false";
    let want = vec![
        "columns id,name,price,tags",
        "row 1|apple|1.25|{fruit,red}",
        "row 2|bread|3.50|{bakery}",
        "row 3|NULL|0.00|NULL",
        "complete 3",
        "complete 2",
        "columns count",
        "row 2",
        "complete 1",
        "columns a,b",
        "row x|NULL",
        "complete 1",
        "complete 0",
    ];
    let got = simple(&through, sql).await;
    assert_eq!(got, want);
    direct
        .batch_execute("UPDATE items SET price = price - 1 WHERE id < 3")
        .await
        .unwrap();
    assert_eq!(simple(&direct, sql).await, want);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_parameter_types_round_trip() {
    let db = fresh_db("t_ext_types").await;
    let proxy = proxy().await;
    let client = connect(&proxy.url(&db)).await;
    let row = client
        .query_one(
            "SELECT $1::int2, $2::int4, $3::int8, $4::float8, $5::text, $6::bytea, $7::bool, $8::int4, \
             $9::int4[], $10::text[], $11::float4",
            &[
                &-7i16,
                &2_000_000_000i32,
                &-9_000_000_000_000i64,
                &3.25f64,
                &"héllo, wörld ✓",
                &vec![0u8, 1, 255, 0],
                &true,
                &None::<i32>,
                &vec![1i32, -2, 3],
                &vec!["a".to_owned(), "b c".to_owned()],
                &1.5f32,
            ],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i16>(0), -7);
    assert_eq!(row.get::<_, i32>(1), 2_000_000_000);
    assert_eq!(row.get::<_, i64>(2), -9_000_000_000_000);
    assert_eq!(row.get::<_, f64>(3), 3.25);
    assert_eq!(row.get::<_, String>(4), "héllo, wörld ✓");
    assert_eq!(row.get::<_, Vec<u8>>(5), vec![0u8, 1, 255, 0]);
    assert!(row.get::<_, bool>(6));
    assert_eq!(row.get::<_, Option<i32>>(7), None);
    assert_eq!(row.get::<_, Vec<i32>>(8), vec![1, -2, 3]);
    assert_eq!(row.get::<_, Vec<String>>(9), vec!["a", "b c"]);
    assert_eq!(row.get::<_, f32>(10), 1.5);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_reused_and_pipelined() {
    let db = fresh_db("t_prepared").await;
    let proxy = proxy().await;
    let client = connect(&proxy.url(&db)).await;
    client.batch_execute(SETUP).await.unwrap();
    let stmt = client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[tokio_postgres::types::Type::INT4]);
    assert_eq!(stmt.columns()[0].name(), "name");
    for _ in 0..20 {
        let row = client.query_one(&stmt, &[&2i32]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "bread");
    }
    // Concurrent queries on one connection are pipelined by tokio-postgres.
    let echo = client.prepare("SELECT $1::int * 10").await.unwrap();
    let futures = (0..50).map(|i| {
        let (client, echo) = (&client, &echo);
        async move {
            client
                .query_one(echo, &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    });
    let results = futures_util::future::join_all(futures).await;
    assert_eq!(results, (0..50).map(|i| i * 10).collect::<Vec<_>>());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_savepoints_and_error_recovery() {
    let db = fresh_db("t_transactions").await;
    let proxy = proxy().await;
    let mut client = connect(&proxy.url(&db)).await;
    client.batch_execute(SETUP).await.unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items (id, name) VALUES (10, 'kept')", &[])
        .await
        .unwrap();
    tx.batch_execute("SAVEPOINT s1").await.unwrap();
    tx.execute(
        "INSERT INTO items (id, name) VALUES (11, 'rolled back')",
        &[],
    )
    .await
    .unwrap();
    tx.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items (id, name) VALUES (12, 'never')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let ids: Vec<i32> = client
        .query("SELECT id FROM items WHERE id >= 10 ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![10]);

    // An error inside a transaction aborts it until ROLLBACK, exactly as directly.
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .execute("INSERT INTO items (id) VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    let err = client.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    let err = client.prepare("SELEC nonsense").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::SYNTAX_ERROR));
    let err = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(
        client
            .query_one("SELECT 41 + 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_including_errors() {
    let db = fresh_db("t_copy").await;
    let proxy = proxy().await;
    let client = connect(&proxy.url(&db)).await;
    client
        .batch_execute("CREATE TABLE c (id int, body text)")
        .await
        .unwrap();

    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tline {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);

    let out: Vec<bytes::Bytes> = client
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), data.as_bytes());

    // Bad data mid-COPY: the server's error reaches the client and the session stays usable.
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tok\nnot-a-number\tbad\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    let count: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 5000);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_result_streams_through() {
    let db = fresh_db("t_large").await;
    let proxy = proxy().await;
    let client = connect(&proxy.url(&db)).await;
    let sql = "SELECT g, md5(g::text) FROM generate_series(1, 100000) g";
    let rows = client.query(sql, &[]).await.unwrap();
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows[99_999].get::<_, i32>(0), 100_000);
    let direct = connect(&crate::support::cluster().url(&db)).await;
    let want = direct.query(sql, &[]).await.unwrap();
    assert!(rows
        .iter()
        .zip(&want)
        .all(|(a, b)| a.get::<_, String>(1) == b.get::<_, String>(1)));
    // A 20 MB single value crosses several read buffers as one streamed frame.
    let big: String = client
        .query_one("SELECT repeat('y', 20000000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 20_000_000);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_and_notices_pass_through() {
    let db = fresh_db("t_notify").await;
    let proxy = proxy().await;
    let (listener, mut connection) =
        tokio_postgres::connect(&proxy.url(&db), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let notifier = connect(&proxy.url(&db)).await;
    notifier
        .batch_execute("NOTIFY jobs, 'payload 1'")
        .await
        .unwrap();
    notifier
        .execute("SELECT pg_notify('jobs', 'payload 2')", &[])
        .await
        .unwrap();
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("notifications arrive")
            .unwrap();
        match message {
            AsyncMessage::Notification(n) => seen.push(format!("{}: {}", n.channel(), n.payload())),
            AsyncMessage::Notice(n) => seen.push(format!("notice: {}", n.message())),
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "jobs: payload 1",
            "jobs: payload 2",
            "notice: hello from plpgsql"
        ]
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_upstream_and_the_session_stays_usable() {
    let db = fresh_db("t_cancel").await;
    let proxy = proxy().await;
    let client = connect(&proxy.url(&db)).await;
    let token = client.cancel_token();
    let direct = connect(&crate::support::cluster().url(&db)).await;
    let canceller = tokio::spawn(async move {
        crate::support::eventually(
            std::time::Duration::from_secs(10),
            "the statement runs",
            || async { crate::support::running(&direct, "t_cancel_marker").await == 1 },
        )
        .await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let err = client
        .query("SELECT pg_sleep(30) -- t_cancel_marker", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    canceller.await.unwrap();
    assert_eq!(
        client
            .query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    proxy.stop().await;
}
