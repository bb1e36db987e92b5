//! Raw wire-protocol cases: pipelining, malformed frames, startup negotiation and cancel, byte for byte.

use crate::support::{
    cluster, connect, eventually, fresh_db, proxy, running, start_proxy, ProxyOptions,
};
use pgshift::protocol::startup::{
    encode_ssl_request, encode_startup, CANCEL_REQUEST, GSSENC_REQUEST,
};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    pub stream: TcpStream,
    /// Backend key from BackendKeyData.
    pub key: Option<(i32, Vec<u8>)>,
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', format!("{sql}\0").as_bytes())
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    frame(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    frame(
        b'B',
        format!("{portal}\0{statement}\0\0\0\0\0\0\0").as_bytes(),
    )
}

pub fn describe_portal(portal: &str) -> Vec<u8> {
    frame(b'D', format!("P{portal}\0").as_bytes())
}

pub fn execute(portal: &str) -> Vec<u8> {
    frame(b'E', format!("{portal}\0\0\0\0\0").as_bytes())
}

pub fn sync() -> Vec<u8> {
    frame(b'S', b"")
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            key: None,
        }
    }

    /// Connects and logs in as postgres; reads up to the first ReadyForQuery.
    pub async fn login(addr: SocketAddr, db: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(&encode_startup(&[("user", "postgres"), ("database", db)]))
            .await;
        for (tag, body) in raw.read_until_ready().await {
            if tag == b'K' {
                let pid = i32::from_be_bytes(body[..4].try_into().unwrap());
                raw.key = Some((pid, body[4..].to_vec()));
            }
            assert_ne!(
                tag,
                b'E',
                "login failed: {}",
                String::from_utf8_lossy(&body)
            );
        }
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// One message, or `None` at end of stream.
    pub async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_exact(&mut header))
            .await
            .expect("a reply within 20s")
            .ok()?;
        let len = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
        let mut body = vec![0; len - 4];
        self.stream.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    }

    pub async fn read_until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((tag, body)) = self.read().await {
            out.push((tag, body));
            if tag == b'Z' {
                break;
            }
        }
        out
    }

    /// Reads until the server closes the connection.
    pub async fn read_to_end(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(message) = self.read().await {
            out.push(message);
        }
        out
    }
}

/// The SQLSTATE field of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    fields(body)
        .into_iter()
        .find(|(f, _)| *f == b'C')
        .map(|(_, v)| v)
        .unwrap_or_default()
}

pub fn message(body: &[u8]) -> String {
    fields(body)
        .into_iter()
        .find(|(f, _)| *f == b'M')
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

fn tags(messages: &[(u8, Vec<u8>)]) -> String {
    messages.iter().map(|(t, _)| *t as char).collect()
}

/// Sends `bytes` after login and collects replies until `readies` ReadyForQuery messages.
async fn exchange(addr: SocketAddr, db: &str, bytes: &[u8], readies: usize) -> Vec<(u8, Vec<u8>)> {
    let mut raw = Raw::login(addr, db).await;
    raw.send(bytes).await;
    let mut out = Vec::new();
    for _ in 0..readies {
        out.extend(raw.read_until_ready().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_protocol_with_error_until_sync() {
    let db = fresh_db("t_raw_pipeline").await;
    let proxy = proxy().await;
    let mut bytes = Vec::new();
    // Batch 1 fails at Parse: Bind/Describe/Execute are skipped by the server until Sync.
    bytes.extend(parse("", "SELEC 1"));
    bytes.extend(bind("", ""));
    bytes.extend(describe_portal(""));
    bytes.extend(execute(""));
    bytes.extend(sync());
    // Batch 2 succeeds; batch 3 is a simple query in the same write.
    bytes.extend(parse("s1", "SELECT generate_series(1, 3) AS n"));
    bytes.extend(bind("", "s1"));
    bytes.extend(describe_portal(""));
    bytes.extend(execute(""));
    bytes.extend(sync());
    bytes.extend(query("SELECT 1; SELECT 2"));
    // A truncated Parse (no statement text) is forwarded; the server rejects it with 08P01.
    bytes.extend(frame(b'P', b"x\0"));
    bytes.extend(sync());

    let through = exchange(proxy.addr, &db, &bytes, 4).await;
    let direct = exchange(cluster().addr().parse().unwrap(), &db, &bytes, 4).await;
    assert_eq!(tags(&through), "EZ12TDDDCZTDCTDCZEZ");
    assert_eq!(tags(&through), tags(&direct));
    assert_eq!(sqlstate(&through[0].1), "42601");
    assert_eq!(sqlstate(&through[17].1), "08P01");
    let rows: Vec<&Vec<u8>> = through
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| b)
        .collect();
    let direct_rows: Vec<&Vec<u8>> = direct
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| b)
        .collect();
    assert_eq!(rows, direct_rows);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_lengths_end_only_that_connection() {
    let db = fresh_db("t_raw_badlen").await;
    let proxy = proxy().await;
    let mut healthy = Raw::login(proxy.addr, &db).await;

    for bad in [&b"Q\0\0\0\x02"[..], &b"Q\x7f\xff\xff\xff"[..]] {
        let mut raw = Raw::login(proxy.addr, &db).await;
        raw.send(bad).await;
        let replies = raw.read_to_end().await;
        assert_eq!(tags(&replies), "E", "{replies:?}");
        assert_eq!(sqlstate(&replies[0].1), "08P01");
        assert!(
            message(&replies[0].1).contains("invalid length"),
            "{}",
            message(&replies[0].1)
        );
    }

    // Garbage instead of a startup packet.
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let replies = raw.read_to_end().await;
    assert_eq!(tags(&replies), "E");
    assert_eq!(sqlstate(&replies[0].1), "08P01");

    // A Terminate cut off mid-frame, then a hang-up.
    let mut raw = Raw::login(proxy.addr, &db).await;
    raw.send(b"X\0\0").await;
    drop(raw);

    healthy.send(&query("SELECT 'still here'")).await;
    let replies = healthy.read_until_ready().await;
    assert_eq!(tags(&replies), "TDCZ");
    assert!(String::from_utf8_lossy(&replies[1].1).contains("still here"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_are_refused_without_tls() {
    let db = fresh_db("t_raw_sslno").await;
    let proxy = proxy().await;
    let mut raw = Raw::connect(proxy.addr).await;
    let mut gss = [0u8; 8];
    gss[..4].copy_from_slice(&8u32.to_be_bytes());
    gss[4..].copy_from_slice(&GSSENC_REQUEST.to_be_bytes());
    raw.send(&gss).await;
    let mut answer = [0u8; 1];
    raw.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    raw.send(&encode_ssl_request()).await;
    raw.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    raw.send(&encode_startup(&[("user", "postgres"), ("database", &db)]))
        .await;
    let replies = raw.read_until_ready().await;
    assert_eq!(replies.first().map(|r| r.0), Some(b'R'));
    assert_eq!(replies.last().map(|r| r.1.clone()), Some(b"I".to_vec()));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_refused_ssl_request_is_forwarded() {
    let db = fresh_db("t_raw_cancel").await;
    let proxy = proxy().await;
    let mut session = Raw::login(proxy.addr, &db).await;
    let (pid, secret) = session.key.clone().expect("BackendKeyData relayed");
    session
        .send(&query("SELECT pg_sleep(30) -- t_raw_cancel"))
        .await;
    let direct = connect(&cluster().url(&db)).await;
    eventually(Duration::from_secs(10), "the statement runs", || async {
        running(&direct, "t_raw_cancel").await == 1
    })
    .await;

    // libpq 17 and asyncpg: SSLRequest, 'N', then the CancelRequest on the same connection.
    let mut canceller = Raw::connect(proxy.addr).await;
    canceller.send(&encode_ssl_request()).await;
    let mut answer = [0u8; 1];
    canceller.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    let cancel = cancel_request(pid, &secret);
    canceller.send(&cancel).await;
    assert!(
        canceller.read_to_end().await.is_empty(),
        "cancel gets no reply"
    );

    let replies = session.read_until_ready().await;
    assert_eq!(tags(&replies), "TEZ");
    assert_eq!(sqlstate(&replies[1].1), "57014");

    // A cancel with a key pgshift never handed out is dropped, not forwarded.
    let mut stranger = Raw::connect(proxy.addr).await;
    let mut bogus = cancel.clone();
    bogus[8..12].copy_from_slice(&(pid ^ 0x5555).to_be_bytes());
    stranger.send(&bogus).await;
    assert!(stranger.read_to_end().await.is_empty());
    session.send(&query("SELECT 1")).await;
    assert_eq!(tags(&session.read_until_ready().await), "TDCZ");
    proxy.stop().await;
}

fn cancel_request(pid: i32, secret: &[u8]) -> Vec<u8> {
    let mut cancel = Vec::new();
    cancel.extend_from_slice(&((12 + secret.len()) as u32).to_be_bytes());
    cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    cancel.extend_from_slice(&pid.to_be_bytes());
    cancel.extend_from_slice(secret);
    cancel
}

/// A cancel whose statement completed before pgshift could forward it must not hit the next statement.
/// Clients open the cancel connection and send the request in one go; here its connection opens while the
/// first statement runs and its packet comes after the second started, as when pgshift's detour to the server
/// is slower than the session itself (asyncpg cancelling a COPY whose source raised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_lands_on_the_next_statement() {
    let db = fresh_db("t_raw_cancel_next").await;
    let proxy = proxy().await;
    let mut session = Raw::login(proxy.addr, &db).await;
    let (pid, secret) = session.key.clone().expect("BackendKeyData relayed");
    session.send(&query("SELECT pg_sleep(0.2)")).await;
    let mut canceller = Raw::connect(proxy.addr).await;
    canceller.send(&encode_ssl_request()).await;
    let mut answer = [0u8; 1];
    canceller.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(tags(&session.read_until_ready().await), "TDCZ");

    session.send(&query("SELECT pg_sleep(0.5)")).await;
    canceller.send(&cancel_request(pid, &secret)).await;
    assert!(canceller.read_to_end().await.is_empty());
    let replies = session.read_until_ready().await;
    assert_eq!(
        tags(&replies),
        "TDCZ",
        "the second statement was cancelled: {:?}",
        replies.iter().find(|r| r.0 == b'E').map(|r| message(&r.1))
    );
    proxy.stop().await;
}

/// A client that goes away mid-query: pgshift cancels its statement upstream instead of letting it run on
/// with its locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_clients_query_is_cancelled_upstream() {
    let db = fresh_db("t_raw_vanish").await;
    let proxy = proxy().await;
    let direct = connect(&cluster().url(&db)).await;
    let mut session = Raw::login(proxy.addr, &db).await;
    session
        .send(&query("SELECT pg_sleep(60) -- t_raw_vanish"))
        .await;
    eventually(Duration::from_secs(10), "the statement runs", || async {
        running(&direct, "t_raw_vanish").await == 1
    })
    .await;
    drop(session);
    eventually(
        Duration::from_secs(1),
        "the vanished client's statement is cancelled",
        || async { running(&direct, "t_raw_vanish").await == 0 },
    )
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_ssl_request_is_refused() {
    let proxy = start_proxy(ProxyOptions {
        client_tls: Some("allow"),
        ..Default::default()
    })
    .await;
    let mut raw = Raw::connect(proxy.addr).await;
    // SSLRequest and a plaintext StartupMessage in one write: the startup must not be read as if encrypted.
    let mut bytes = encode_ssl_request().to_vec();
    bytes.extend_from_slice(&encode_startup(&[("user", "INJECTED_PLAINTEXT")]));
    raw.send(&bytes).await;
    let mut rest = Vec::new();
    raw.stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        rest[0],
        b'E',
        "expected an ErrorResponse, got {:?}",
        &rest[..rest.len().min(20)]
    );
    let body = &rest[5..];
    assert_eq!(sqlstate(body), "08P01");
    assert_eq!(message(body), "received unencrypted data after SSL request");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_protocol_version_is_relayed() {
    let db = fresh_db("t_raw_negotiate").await;
    let proxy = proxy().await;
    // Protocol 3.9 with an unknown protocol option: the server answers NegotiateProtocolVersion and goes on.
    let mut packet = Vec::new();
    packet.extend_from_slice(&0x0003_0009u32.to_be_bytes());
    for (k, v) in [
        ("user", "postgres"),
        ("database", db.as_str()),
        ("_pq_.pgshift_test", "1"),
    ] {
        packet.extend_from_slice(k.as_bytes());
        packet.push(0);
        packet.extend_from_slice(v.as_bytes());
        packet.push(0);
    }
    packet.push(0);
    let mut startup = ((packet.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(packet);
    let login = |addr: SocketAddr| {
        let startup = startup.clone();
        async move {
            let mut raw = Raw::connect(addr).await;
            raw.send(&startup).await;
            raw.read_until_ready().await
        }
    };
    let through = login(proxy.addr).await;
    let direct = login(cluster().addr().parse().unwrap()).await;
    assert_eq!(through[0].0, b'v', "{:?}", tags(&through));
    assert_eq!(through[0].1, direct[0].1);
    assert!(String::from_utf8_lossy(&through[0].1).contains("_pq_.pgshift_test"));
    assert_eq!(
        tags(&through).replace('S', ""),
        tags(&direct).replace('S', "")
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_upstream() {
    let db = fresh_db("t_raw_unix").await;
    let proxy = start_proxy(ProxyOptions {
        upstream: cluster().dir.display().to_string(),
        ..Default::default()
    })
    .await;
    // `port` defaults to 5432; the cluster listens elsewhere, so name the socket file itself.
    proxy.stop().await;
    let socket = cluster().dir.join(format!(".s.PGSQL.{}", cluster().port));
    let proxy = start_proxy(ProxyOptions {
        upstream: socket.display().to_string(),
        ..Default::default()
    })
    .await;
    let mut raw = Raw::login(proxy.addr, &db).await;
    raw.send(&query(
        "SELECT inet_client_addr() IS NULL AS over_unix_socket",
    ))
    .await;
    let replies = raw.read_until_ready().await;
    assert_eq!(tags(&replies), "TDCZ");
    assert_eq!(&replies[1].1[6..], b"t");
    proxy.stop().await;
}
