//! TLS on both legs: clients verify pgshift's certificate, pgshift verifies the upstream's, and the SCRAM
//! channel-binding combination that cannot work through a proxy fails with a clear error.

use crate::support::{
    certs, cluster, fresh_db, psql_path, run, start_proxy, ProxyOptions, SCRAM_USER,
};
use tokio::process::Command;

async fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    run(Command::new(psql_path())
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true))
    .await
}

fn upstream_tls(mode: &str, server_name: Option<&str>) -> String {
    let mut s = format!(
        "mode = {mode:?}\nca_file = {:?}\n",
        certs().ca.display().to_string()
    );
    if let Some(name) = server_name {
        s.push_str(&format!("server_name = {name:?}\n"));
    }
    s
}

const UPSTREAM_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verifies_pgshift_and_pgshift_verifies_upstream() {
    let db = fresh_db("t_tls_full").await;
    let proxy = start_proxy(ProxyOptions {
        client_tls: Some("require"),
        upstream_tls: upstream_tls("verify-full", None),
        ..Default::default()
    })
    .await;
    let conninfo = format!(
        "host=localhost port={} dbname={db} user=postgres sslmode=verify-full sslrootcert={}",
        proxy.port(),
        certs().ca.display()
    );
    let (ok, out, err) = psql(&conninfo, UPSTREAM_SSL).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "t", "the upstream leg is encrypted");
    let (ok, out, err) = run(Command::new(psql_path())
        .args(["-X", "-d", &conninfo, "-c", "\\conninfo"])
        .kill_on_drop(true))
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");

    // listen.tls.mode = require: plaintext clients are refused with 28000.
    let plain = format!(
        "host=127.0.0.1 port={} dbname={db} user=postgres sslmode=disable",
        proxy.port()
    );
    let (ok, _, err) = psql(&plain, "SELECT 1").await;
    assert!(!ok);
    assert!(
        err.contains("pgshift requires TLS for client connections"),
        "{err}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_certificate_checks_follow_sslmode() {
    let db = fresh_db("t_tls_modes").await;
    let direct_like = |proxy: &crate::support::Proxy| {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=postgres sslmode=disable",
            proxy.port()
        )
    };
    // The certificate is for localhost/127.0.0.1: a different expected name fails verify-full…
    let proxy = start_proxy(ProxyOptions {
        upstream_tls: upstream_tls("verify-full", Some("db.example.com")),
        ..Default::default()
    })
    .await;
    let (ok, _, err) = psql(&direct_like(&proxy), "SELECT 1").await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "pgshift could not connect to upstream PostgreSQL at {}",
            cluster().addr()
        )),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    proxy.stop().await;

    // …but verify-ca checks only the chain, and require only encrypts.
    for tls in [
        upstream_tls("verify-ca", Some("db.example.com")),
        "mode = \"require\"".to_owned(),
    ] {
        let proxy = start_proxy(ProxyOptions {
            upstream_tls: tls.clone(),
            ..Default::default()
        })
        .await;
        let (ok, out, err) = psql(&direct_like(&proxy), UPSTREAM_SSL).await;
        assert!(ok, "{tls}: {err}");
        assert_eq!(out.trim(), "t", "{tls}");
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_through_two_tls_legs_fails_clearly() {
    let db = fresh_db("t_tls_scram").await;
    let base = |upstream_tls: String| ProxyOptions {
        client_tls: Some("allow"),
        upstream_tls,
        ..Default::default()
    };
    let (user, password) = SCRAM_USER;
    let conninfo = |port: u16, binding: &str| {
        format!(
            "host=127.0.0.1 port={port} dbname={db} user={user} password='{password}' sslmode=require channel_binding={binding}"
        )
    };

    // Both legs encrypted: libpq picks SCRAM-SHA-256-PLUS, bound to pgshift's certificate.
    let proxy = start_proxy(base("mode = \"require\"".to_owned())).await;
    let (ok, _, err) = psql(&conninfo(proxy.port(), "prefer"), "SELECT 1").await;
    assert!(!ok);
    assert!(
        err.contains("pgshift cannot relay SCRAM-SHA-256-PLUS channel binding"),
        "{err}"
    );
    assert!(err.contains("channel_binding=disable"), "{err}");
    let (ok, out, err) = psql(&conninfo(proxy.port(), "disable"), "SELECT current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), user);
    proxy.stop().await;

    // Plaintext upstream leg: the server offers no -PLUS mechanism and SCRAM works with defaults.
    let proxy = start_proxy(base("mode = \"disable\"".to_owned())).await;
    let (ok, out, err) = psql(&conninfo(proxy.port(), "prefer"), "SELECT current_user").await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), user);
    proxy.stop().await;
}

/// PostgreSQL 17 `sslnegotiation=direct`: the connection opens with a TLS ClientHello (ALPN "postgresql")
/// instead of an SSLRequest. psql 15 cannot do this, so a rustls client plays libpq 17.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_negotiation_with_alpn() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let db = fresh_db("t_tls_direct").await;
    let proxy = start_proxy(ProxyOptions {
        client_tls: Some("require"),
        ..Default::default()
    })
    .await;
    let connector = |alpn: Option<&[u8]>| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&certs().ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.into_iter().map(|a| a.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let name = ServerName::try_from("localhost").unwrap();

    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = connector(Some(b"postgresql"))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let startup =
        pgshift::protocol::startup::encode_startup(&[("user", "postgres"), ("database", &db)]);
    tls.write_all(&startup).await.unwrap();
    tls.write_all(&crate::raw::query("SELECT 'over direct TLS'"))
        .await
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("over direct TLS") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&reply)
        );
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(reply[0], b'R');
    drop(tls);

    // Without ALPN "postgresql" a direct TLS connection is dropped, as PostgreSQL 17 does.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut tls = connector(None).connect(name, tcp).await.unwrap();
    tls.write_all(&startup).await.unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    proxy.stop().await;
}
