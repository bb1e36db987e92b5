//! The throwaway PostgreSQL cluster shared by every test in the binary (TLS, password roles), a fresh database
//! per test, and the server's client tools.

use pgshift::cli::demo::cluster::{Cluster, Options};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
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
        if let Err(e) = cluster.psql("postgres", &sql) {
            panic!("creating roles: {e}");
        }
        cluster
    })
}

fn tool_path(name: &str) -> PathBuf {
    let candidate = pgshift::cli::demo::cluster::find_bin_dir()
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
