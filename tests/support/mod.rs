//! Test support: one throwaway PostgreSQL cluster per test binary (with TLS and password roles), a fresh
//! database per test, and pgshift started in-process on free ports.

#![allow(dead_code)]

use pgshift::config::{Config, Overrides};
use pgshift::pgcluster::{Cluster, Options};
use pgshift::server::{self, Controller};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Password roles created in the cluster, with the pg_hba method each must use.
pub const MD5_USER: (&str, &str) = ("md5_user", "md5 pass");
pub const SCRAM_USER: (&str, &str) = ("scram_user", "scram pass");
pub const PASSWORD_USER: (&str, &str) = ("pw_user", "clear pass");

pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Removes `dir` when this test process ends, however it ends: statics are never dropped, so a helper shell
/// waits for the end of a pipe the process holds (the kernel closes it at exit) and then removes the directory.
fn remove_when_tests_end(dir: &std::path::Path) {
    static GUARDS: Mutex<Vec<std::process::ChildStdin>> = Mutex::new(Vec::new());
    let child = std::process::Command::new("sh")
        .args(["-c", r#"read -r _ || true; rm -rf "$1""#, "cleanup"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = child {
        if let Some(stdin) = child.stdin.take() {
            GUARDS.lock().unwrap_or_else(|e| e.into_inner()).push(stdin);
        }
    }
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, used by both Postgres and pgshift.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgshift test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("pgshift-certs-")
            .tempdir()
            .unwrap()
            .keep();
        remove_when_tests_end(&dir);
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Certs {
            ca: write("ca.crt", &ca_cert.pem()),
            cert: write("server.crt", &cert.pem()),
            key: write("server.key", &key.serialize_pem()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    })
}

/// The cluster shared by every test in this binary. Panics with install instructions if Postgres is missing.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let certs = certs();
        let options = Options {
            hba: vec![
                format!("host all {} 127.0.0.1/32 md5", MD5_USER.0),
                format!("host all {} 127.0.0.1/32 scram-sha-256", SCRAM_USER.0),
                format!("host all {} 127.0.0.1/32 password", PASSWORD_USER.0),
            ],
            settings: vec![],
            tls: Some((certs.cert_pem.clone(), certs.key_pem.clone())),
        };
        let cluster = Cluster::start(&options)
            .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
        let sql = format!(
            "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN PASSWORD '{}';
             SET password_encryption = 'scram-sha-256'; CREATE ROLE {} LOGIN PASSWORD '{}';
             CREATE ROLE {} LOGIN PASSWORD '{}';",
            MD5_USER.0, MD5_USER.1, SCRAM_USER.0, SCRAM_USER.1, PASSWORD_USER.0, PASSWORD_USER.1
        );
        let out = std::process::Command::new(psql_path())
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &cluster.url("postgres"),
                "-c",
                &sql,
            ])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "creating roles: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster
    })
}

fn tool_path(name: &str) -> PathBuf {
    let candidate = pgshift::pgcluster::find_bin_dir()
        .map(|dir| dir.join(name))
        .unwrap_or_default();
    if candidate.is_file() {
        candidate
    } else {
        PathBuf::from(name)
    }
}

pub fn psql_path() -> PathBuf {
    tool_path("psql")
}

pub fn pgbench_path() -> PathBuf {
    tool_path("pgbench")
}

/// Creates an empty database named after the test and returns its name.
pub async fn fresh_db(name: &str) -> String {
    let admin = connect(&cluster().url("postgres")).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    name.to_owned()
}

/// Connects with tokio-postgres and drives the connection on this test's runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// How to configure the pgshift under test.
#[derive(Clone)]
pub struct ProxyOptions {
    pub upstream: String,
    pub upstream_tls: String,
    /// `listen.tls.mode`, with the test certificate; `None` disables TLS for clients.
    pub client_tls: Option<&'static str>,
    pub max_connections: usize,
    pub drain: &'static str,
    /// `[[migration]]` entries appended to the file.
    pub migrations: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            upstream: cluster().addr(),
            upstream_tls: "mode = \"disable\"".to_owned(),
            client_tls: None,
            max_connections: 1000,
            drain: "30s",
            migrations: String::new(),
        }
    }
}

impl ProxyOptions {
    pub fn toml(&self) -> String {
        let certs = certs();
        let client_tls = match self.client_tls {
            Some(mode) => format!(
                "[listen.tls]\ncert_file = {:?}\nkey_file = {:?}\nmode = {mode:?}\n",
                certs.cert.display().to_string(),
                certs.key.display().to_string()
            ),
            None => String::new(),
        };
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\nmax_connections = {}\n{client_tls}\
             [upstream]\naddr = {:?}\n[upstream.tls]\n{}\n\
             [metrics]\naddr = \"127.0.0.1:0\"\n[timeouts]\ndrain = {:?}\nconnect = \"2s\"\n{}",
            self.max_connections, self.upstream, self.upstream_tls, self.drain, self.migrations
        )
    }

    pub fn config(&self) -> Config {
        Config::parse(
            &self.toml(),
            Path::new("/tmp/pgshift-test.toml"),
            &Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("test config: {e}"))
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub control: Controller,
    pub config: std::sync::Arc<pgshift::config::reload::ConfigHandle>,
    options: ProxyOptions,
    dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Proxy {
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Rewrites the config file with other migrations and reloads it (as SIGHUP does); panics if refused.
    pub fn reload_migrations(&self, migrations: &str) {
        let options = ProxyOptions {
            migrations: migrations.to_owned(),
            ..self.options.clone()
        };
        std::fs::write(self.dir.path().join("pgshift.toml"), options.toml()).unwrap();
        let report = self.config.reload(pgshift::config::reload::Trigger::Sighup);
        assert!(
            report.result != "invalid",
            "reload refused: {:?}",
            report.error
        );
    }

    /// Drains and requires every session to reach an idle point at once. pgshift closes a draining session
    /// only when its response FIFO is empty outside a transaction, so a FIFO that lost track of a response
    /// (a protocol desync) would hold the drain until its 30 s timeout: this turns every test into a check
    /// that request/response matching stayed exact.
    pub async fn stop(self) {
        self.control.drain();
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            self.control.close();
            let _ = task.await;
            panic!("sessions did not reach an idle point while draining: response matching is out of sync");
        }
    }
}

/// Starts pgshift in-process from a config file in a temp dir (so tests can edit and reload it).
pub async fn start_proxy(options: ProxyOptions) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgshift.toml");
    std::fs::write(&path, options.toml()).unwrap();
    let config =
        Config::load(&path, &Overrides::default()).unwrap_or_else(|e| panic!("test config: {e}"));
    let handle =
        pgshift::config::reload::ConfigHandle::new(config, Some((path, Overrides::default())));
    let running = server::start_with(handle).await.expect("pgshift starts");
    let (addr, metrics_addr, control) = (
        running.addr,
        running.metrics_addr.unwrap(),
        running.controller(),
    );
    let config = running.config.clone();
    let task = tokio::spawn(async move {
        running.wait().await.unwrap();
    });
    Proxy {
        addr,
        metrics_addr,
        control,
        config,
        options,
        dir,
        task,
    }
}

/// A proxy in front of the shared cluster with default options.
pub async fn proxy() -> Proxy {
    start_proxy(ProxyOptions::default()).await
}

/// Runs a command and returns (status success, stdout, stderr).
pub async fn run(cmd: &mut tokio::process::Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fetches a path from the metrics endpoint with a bare HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until something accepts TCP connections on `addr` (a pgshift child process starting up).
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr} after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Polls `condition` (every 20 ms) until it holds; fails naming `what` if it does not within `within`.
pub async fn eventually<F, Fut>(within: std::time::Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How many sessions other than `client`'s own are running a statement that contains `marker`.
pub async fn running(client: &Client, marker: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() \
             AND query LIKE '%' || $1 || '%'",
            &[&marker],
        )
        .await
        .unwrap()
        .get(0)
}
