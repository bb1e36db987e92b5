//! pgshift started in-process on free ports, in front of the shared cluster, with the options a test needs.

use super::cluster::{certs, cluster};
use pgshift::config::{Config, Overrides};
use pgshift::server::{self, Controller};
use std::net::SocketAddr;
use std::path::Path;
use tokio::task::JoinHandle;

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
            report.result != pgshift::config::reload::ReloadResult::Invalid,
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
