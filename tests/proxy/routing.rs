//! Read routing end to end: sticky keys (`SET pgshift.key`, startup options, every way Postgres applies a
//! setting), percentages that only ever add keys, and the kill switch under load.

use crate::migrations::{setup, users_migration};
use crate::support::connect;
use pgshift::routing::bucket::bucket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_postgres::Client;

/// Each key's route: `SET pgshift.key` takes effect at the next transaction; keys spread over the connections.
async fn key_routes(clients: &[Client], keys: std::ops::Range<usize>) -> Vec<(usize, bool)> {
    let chunks: Vec<Vec<usize>> = (0..clients.len())
        .map(|c| keys.clone().filter(|k| k % clients.len() == c).collect())
        .collect();
    let futures = clients
        .iter()
        .zip(chunks)
        .map(|(client, chunk)| async move {
            let mut out = Vec::new();
            for k in chunk {
                client
                    .batch_execute(&format!("SET pgshift.key = 'key-{k}'"))
                    .await
                    .unwrap();
                out.push((k, reads_new(client).await));
            }
            out
        });
    let mut all: Vec<(usize, bool)> = futures_util::future::join_all(futures)
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort();
    all
}

/// A database with the routing migration at `percent` and a marker row that exists only in the new table, so
/// [`reads_new`] can tell where a session's reads went.
async fn setup_marked(name: &str, percent: f64) -> (String, crate::support::Proxy, Client) {
    let (db, proxy, direct) = setup(name, routing_reads(percent)).await;
    direct
        .batch_execute("INSERT INTO v2.users VALUES (-1, 'marker', NULL, now())")
        .await
        .unwrap();
    (db, proxy, direct)
}

fn routing_reads(percent: f64) -> String {
    users_migration(
        "dual_write",
        &format!("new_percent = {percent}\nkey = \"setting\""),
    )
}

/// 1 if this session's reads of `users` went to new (a marker row exists only there).
async fn reads_new(client: &Client) -> bool {
    client
        .query_one("SELECT count(*) FROM users WHERE id = -1", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// The routing key follows every way Postgres applies a setting, as Postgres applies it: prepared SETs run
/// again, set_config(), RESET back to the startup value, SET LOCAL ending with its transaction, and a SET
/// rolled back with its transaction. Each takes effect at the next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_key_is_tracked_as_postgres_tracks_it() {
    let (db, proxy, _direct) = setup_marked("t_mig_key_setting", 50.0).await;
    let on_new = |k: &str| bucket("users_v2", k) < 5000;
    let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
    let new = keys.iter().find(|k| on_new(k)).unwrap().clone();
    let old = keys.iter().find(|k| !on_new(k)).unwrap().clone();

    let url = format!("{}?options=-c%20pgshift.key%3D{old}", proxy.url(&db));
    let client = connect(&url).await;
    let mut seen = Vec::new();
    let mut step = |what: &str, new_route: bool| seen.push((what.to_owned(), new_route));
    step("startup option", reads_new(&client).await);

    // Prepared SETs, each executed again later (psycopg prepares any statement run five times).
    let set_new = client
        .prepare(&format!("SET pgshift.key = '{new}'"))
        .await
        .unwrap();
    let set_old = client
        .prepare(&format!("SET pgshift.key = '{old}'"))
        .await
        .unwrap();
    for (statement, name) in [(&set_new, "new"), (&set_old, "old"), (&set_new, "new")] {
        client.execute(statement, &[]).await.unwrap();
        step(&format!("prepared SET {name}"), reads_new(&client).await);
    }
    let set_config = client
        .prepare("SELECT set_config('pgshift.key', $1, false)")
        .await
        .unwrap();
    for (key, name) in [(&old, "old"), (&new, "new")] {
        client.query(&set_config, &[key]).await.unwrap();
        step(&format!("set_config {name}"), reads_new(&client).await);
    }
    client.batch_execute("RESET pgshift.key").await.unwrap();
    step(
        "RESET (back to the startup option)",
        reads_new(&client).await,
    );
    client
        .batch_execute(&format!("BEGIN; SET LOCAL pgshift.key = '{new}'; COMMIT"))
        .await
        .unwrap();
    step("after SET LOCAL's transaction", reads_new(&client).await);
    client
        .batch_execute(&format!("BEGIN; SET pgshift.key = '{new}'; ROLLBACK"))
        .await
        .unwrap();
    step("after a rolled-back SET", reads_new(&client).await);
    client
        .batch_execute(&format!("SET pgshift.key = '{new}'"))
        .await
        .unwrap();
    step("simple SET new", reads_new(&client).await);

    let want = [
        ("startup option", false),
        ("prepared SET new", true),
        ("prepared SET old", false),
        ("prepared SET new", true),
        ("set_config old", false),
        ("set_config new", true),
        ("RESET (back to the startup option)", false),
        ("after SET LOCAL's transaction", false),
        ("after a rolled-back SET", false),
        ("simple SET new", true),
    ]
    .map(|(what, new_route)| (what.to_owned(), new_route));
    assert_eq!(seen, want, "(step, reads went to new)");
    drop(client);
    proxy.stop().await;
}

/// A key SET while no migration applied to the session counts once one does (a reload adds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_before_a_migration_applies_is_seen_after_the_reload() {
    let (db, proxy, _direct) = setup_marked("t_route_key_before", 50.0).await;
    proxy.reload_migrations("");
    // A key routed the other way from the session's default key (user and application_name).
    let default_new = bucket("users_v2", "postgres\0") < 5000;
    let key = (0..100)
        .map(|i| format!("key-{i}"))
        .find(|k| (bucket("users_v2", k) < 5000) != default_new)
        .unwrap();
    let client = connect(&proxy.url(&db)).await;
    client
        .batch_execute(&format!("SET pgshift.key = '{key}'"))
        .await
        .unwrap();
    proxy.reload_migrations(&routing_reads(50.0));
    assert_eq!(
        reads_new(&client).await,
        !default_new,
        "{key} decides the route, not the default key"
    );
    drop(client);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_is_sticky_and_follows_reloads() {
    let (db, proxy, _direct) = setup_marked("t_mig_routing", 25.0).await;

    // 1000 routing keys (SET pgshift.key takes effect at the next transaction), on 4 connections.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&proxy.url(&db)).await);
    }
    let at_25 = key_routes(&clients, 0..1000).await;
    let on_new = at_25.iter().filter(|(_, new)| *new).count();
    assert!(
        (220..=280).contains(&on_new),
        "{on_new} of 1000 keys on new at 25%"
    );
    eprintln!("routing: {on_new} of 1000 keys on new at 25%");
    for (k, new) in &at_25 {
        assert_eq!(
            *new,
            bucket("users_v2", &format!("key-{k}")) < 2500,
            "key-{k}"
        );
    }

    // The same key gets the same route on a new connection (key given in the startup options).
    for (k, new) in at_25.iter().take(20) {
        let url = format!("{}?options=-c%20pgshift.key%3Dkey-{k}", proxy.url(&db));
        let fresh = connect(&url).await;
        assert_eq!(reads_new(&fresh).await, *new, "key-{k} after reconnect");
    }

    // 5% → 25%: every key on new at 5% is still on new at 25%.
    proxy.reload_migrations(&routing_reads(5.0));
    let at_5 = key_routes(&clients, 0..400).await;
    assert!(at_5.iter().any(|(_, new)| *new));
    eprintln!(
        "routing: {} of 400 keys on new at 5%",
        at_5.iter().filter(|(_, n)| *n).count()
    );
    proxy.reload_migrations(&routing_reads(25.0));
    let again = key_routes(&clients, 0..400).await;
    for ((k, before), (_, after)) in at_5.iter().zip(&again) {
        assert!(
            !before || *after,
            "key-{k} left new when the percentage rose"
        );
    }

    // Prepared statements follow the route of the current transaction, however old they are.
    proxy.reload_migrations(&routing_reads(100.0));
    let stmt = clients[0]
        .prepare("SELECT count(*) FROM users WHERE id = -1")
        .await
        .unwrap();
    assert_eq!(
        clients[0]
            .query_one(&stmt, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    proxy.reload_migrations(&routing_reads(0.0));
    assert_eq!(
        clients[0]
            .query_one(&stmt, &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    drop(clients);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_under_load() {
    let (db, proxy, _direct) = setup_marked("t_mig_kill", 100.0).await;
    let reloaded = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = connect(&proxy.url(&db)).await;
        let reloaded = reloaded.clone();
        let reads = reads.clone();
        tasks.push(tokio::spawn(async move {
            // Reads issued after the reload: the first may already have been in flight, no later one may be new.
            let mut after = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                let seen_reload = reloaded.load(Ordering::SeqCst);
                let new = reads_new(&client).await;
                reads.fetch_add(1, Ordering::SeqCst);
                if seen_reload {
                    after.push(new);
                    if after.len() == 20 {
                        break;
                    }
                }
                tokio::task::yield_now().await;
            }
            after
        }));
    }
    // Under load: every session has been reading for a while.
    crate::support::eventually(
        std::time::Duration::from_secs(20),
        "the sessions are reading",
        || async { reads.load(Ordering::SeqCst) >= 40 },
    )
    .await;
    proxy.reload_migrations(&routing_reads(0.0));
    reloaded.store(true, Ordering::SeqCst);
    for task in tasks {
        let after = task.await.unwrap();
        assert!(after.len() >= 2, "the load ended before the reload");
        assert!(
            after[1..].iter().all(|new| !new),
            "a read went to new after the kill switch: {after:?}"
        );
    }
    proxy.stop().await;
}
