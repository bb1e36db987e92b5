//! Upstream failures, connection limits, metrics and graceful shutdown on SIGTERM.

use crate::raw::{message, query, sqlstate, Raw};
use crate::support::{cluster, connect, fresh_db, http_get, proxy, start_proxy, ProxyOptions};
use pgshift::cli::demo::cluster::free_port;
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_connection_failure_naming_it() {
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = start_proxy(ProxyOptions {
        upstream: dead.clone(),
        ..Default::default()
    })
    .await;
    let err = tokio_postgres::connect(&proxy.url("postgres"), NoTls)
        .await
        .err()
        .expect("connect fails");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    let db = err.as_db_error().unwrap();
    assert!(
        db.message().starts_with(&format!(
            "pgshift could not connect to upstream PostgreSQL at {dead}: "
        )),
        "{}",
        db.message()
    );
    let (_, metrics) = http_get(proxy.metrics_addr, "/metrics").await;
    assert!(
        metrics.contains("pgshift_upstream_connect_failures_total{reason=\"io\"}"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_with_53300() {
    let db = fresh_db("t_limit").await;
    let proxy = start_proxy(ProxyOptions {
        max_connections: 2,
        ..Default::default()
    })
    .await;
    let a = connect(&proxy.url(&db)).await;
    let b = connect(&proxy.url(&db)).await;
    let err = tokio_postgres::connect(&proxy.url(&db), NoTls)
        .await
        .err()
        .expect("third is refused");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    drop(a);
    // The slot frees once the first session has ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_postgres::connect(&proxy.url(&db), NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                assert_eq!(
                    c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
                    1
                );
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
    drop(b);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let db = fresh_db("t_metrics").await;
    let proxy = proxy().await;
    let client = connect(&proxy.url(&db)).await;
    client.query("SELECT $1::int", &[&1i32]).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let (status, body) = http_get(proxy.metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "pgshift_client_connections_total",
        "pgshift_client_connections_active",
        "pgshift_bytes_total{direction=\"client_to_upstream\"}",
        "pgshift_bytes_total{direction=\"upstream_to_client\"}",
        "pgshift_client_messages_total{message=\"parse\"}",
        "pgshift_client_messages_total{message=\"query\"}",
        "pgshift_config_info{epoch=",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert_eq!(
        http_get(proxy.metrics_addr, "/healthz").await,
        (200, "ok\n".to_owned())
    );
    assert_eq!(http_get(proxy.metrics_addr, "/nope").await.0, 404);
    // While a transaction keeps the drain going, the health check tells load balancers to stop sending.
    client.batch_execute("BEGIN").await.unwrap();
    proxy.control.drain();
    assert_eq!(
        http_get(proxy.metrics_addr, "/healthz").await,
        (503, "draining\n".to_owned())
    );
    drop(client);
    proxy.stop().await;
}

/// pgshift as a child process, so SIGTERM is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_then_closes_the_rest() {
    let db = fresh_db("t_sigterm").await;
    let direct = connect(&cluster().url(&db)).await;
    direct
        .batch_execute("CREATE TABLE done (id int)")
        .await
        .unwrap();

    let (mut child, addr, _dir) = spawn_pgshift("[timeouts]\ndrain = \"3s\"\n", None).await;

    let mut idle = Raw::login(addr, &db).await;
    let mut finishing = Raw::login(addr, &db).await;
    let mut stuck = Raw::login(addr, &db).await;
    finishing
        .send(&query("BEGIN; INSERT INTO done VALUES (1)"))
        .await;
    assert_eq!(finishing.read_until_ready().await.last().unwrap().1, b"T");
    stuck.send(&query("BEGIN")).await;
    assert_eq!(stuck.read_until_ready().await.last().unwrap().1, b"T");

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // The idle session is closed at once with 57P01.
    let replies = idle.read_to_end().await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(sqlstate(&replies[0].1), "57P01");
    assert_eq!(
        message(&replies[0].1),
        "terminating connection because pgshift is shutting down"
    );
    // New connections are no longer accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A session inside a transaction may finish it; it is closed once idle.
    finishing
        .send(&query("INSERT INTO done VALUES (2); COMMIT"))
        .await;
    let replies = finishing.read_until_ready().await;
    assert_eq!(replies.last().unwrap().1, b"I");
    let replies = finishing.read_to_end().await;
    assert_eq!(sqlstate(&replies[0].1), "57P01");
    // A session that never finishes is closed at the drain timeout.
    let replies = stuck.read_to_end().await;
    assert_eq!(sqlstate(&replies[0].1), "57P01");
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "closed after {waited:?}, before the drain timeout"
    );

    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "pgshift exited with {status}");
    let ids: Vec<i32> = direct
        .query("SELECT id FROM done ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2]);
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Starts the pgshift binary on a free port, with its stderr in `stderr.log` of the returned directory, and
/// optionally a hard descriptor limit; returns the child and its address.
async fn spawn_pgshift(
    extra: &str,
    descriptor_limit: Option<libc::rlim_t>,
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    tempfile::TempDir,
) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgshift.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n[upstream]\naddr = \"{}\"\n[upstream.tls]\nmode = \"disable\"\n{extra}",
            cluster().addr()
        ),
    )
    .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgshift"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .kill_on_drop(true)
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
    if let Some(fds) = descriptor_limit {
        // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: fds,
                    rlim_max: fds,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let child = command.spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    crate::support::wait_listening(addr).await;
    (child, addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_backpressure_not_buffering() {
    let db = fresh_db("t_slow_reader").await;
    let (mut child, addr, _dir) = spawn_pgshift("", None).await;
    let pid = child.id().unwrap();
    let mut raw = Raw::login(addr, &db).await;
    let before = rss_kib(pid);
    // About 200 MB of rows; the client reads nothing until the server is blocked writing to pgshift.
    raw.send(&query(
        "SELECT g, repeat('x', 1000) FROM generate_series(1, 200000) g -- t_slow_reader",
    ))
    .await;
    let direct = connect(&cluster().url(&db)).await;
    crate::support::eventually(
        Duration::from_secs(20),
        "the server is blocked writing the result",
        || async {
            direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'ClientWrite' \
                     AND query LIKE '%t_slow_reader%' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
    let stalled = rss_kib(pid);
    assert!(
        stalled < before + 16 * 1024,
        "pgshift grew from {before} KiB to {stalled} KiB while the client was not reading"
    );
    // Then everything arrives intact.
    let mut total = 0usize;
    let mut rows = 0usize;
    loop {
        let (tag, body) = raw.read().await.unwrap();
        total += body.len() + 5;
        match tag {
            b'D' => rows += 1,
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(rows, 200_000);
    assert!(total > 200_000_000);
    child.kill().await.unwrap();
}

/// At the descriptor limit, clients past it are refused at once with 53300 instead of hanging in the accept
/// queue; the sessions already open keep working, and pgshift serves again once they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_descriptor_limit_get_53300_within_a_second() {
    let db = fresh_db("t_fd_limit").await;
    let (mut child, addr, dir) = spawn_pgshift("", Some(64)).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
        addr.port()
    );
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(
        log.contains("the file-descriptor limit allows fewer sessions than listen.max_connections"),
        "no warning at startup:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );

    let mut open = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..40 {
        match tokio::time::timeout(Duration::from_secs(1), tokio_postgres::connect(&url, NoTls))
            .await
        {
            Ok(Ok((client, connection))) => {
                tokio::spawn(connection);
                open.push(client);
            }
            Ok(Err(e)) => refused.push((
                e.code().cloned(),
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_owned()),
            )),
            Err(_) => panic!(
                "a client hung at the descriptor limit ({} open, {} refused)",
                open.len(),
                refused.len()
            ),
        }
    }
    assert!(open.len() >= 5, "only {} sessions opened", open.len());
    assert!(!refused.is_empty(), "40 sessions fit in 64 descriptors?");
    for (code, message) in &refused {
        assert_eq!(
            code.as_ref(),
            Some(&SqlState::TOO_MANY_CONNECTIONS),
            "{message}"
        );
        assert!(message.contains("file-descriptor limit (64)"), "{message}");
    }
    for client in &open {
        assert_eq!(
            client
                .query_one("SELECT 1", &[])
                .await
                .unwrap()
                .get::<_, i32>(0),
            1
        );
    }
    eprintln!(
        "descriptor limit 64: {} sessions served, {} refused with 53300",
        open.len(),
        refused.len()
    );
    drop(open);
    crate::support::eventually(
        Duration::from_secs(10),
        "a session after the others closed",
        || async { tokio_postgres::connect(&url, NoTls).await.is_ok() },
    )
    .await;
    child.kill().await.unwrap();
}

/// Connections that hold a descriptor without becoming sessions (clients stuck before their startup packet)
/// can still exhaust the process: then `accept()` fails with EMFILE, and the clients waiting behind them must
/// hear 53300 at once rather than wait in the kernel's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_waiting_when_accept_runs_out_of_descriptors_get_53300() {
    let db = fresh_db("t_fd_emfile").await;
    let (mut child, addr, _dir) = spawn_pgshift("[timeouts]\nstartup = \"30s\"\n", Some(64)).await;
    let mut silent = Vec::new();
    for _ in 0..80 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
        addr.port()
    );
    let err = tokio::time::timeout(Duration::from_secs(1), tokio_postgres::connect(&url, NoTls))
        .await
        .expect("refused within a second, not left waiting")
        .err()
        .expect("no descriptor left for this client");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("file-descriptor limit (64)"), "{message}");
    drop(silent);
    crate::support::eventually(
        Duration::from_secs(10),
        "a session once the silent connections are gone",
        || async { tokio_postgres::connect(&url, NoTls).await.is_ok() },
    )
    .await;
    child.kill().await.unwrap();
}
