//! The config file's shape: serde structs mirroring `config/pgshift.example.toml`, with defaults.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt key must not silently fall back to a default.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listen: ListenSection,
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default, rename = "migration")]
    pub migrations: Vec<super::migration::RawMigration>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// Address clients connect to. Not reloadable.
    #[serde(default = "default_listen_addr")]
    pub addr: String,
    /// Client connections over this are refused with SQLSTATE 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Threads that run sessions; 0 (the default) means one per four CPUs, at least one.
    #[serde(default)]
    pub workers: usize,
    pub tls: Option<ClientTlsSection>,
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection {
            addr: default_listen_addr(),
            max_connections: default_max_connections(),
            workers: 0,
            tls: None,
        }
    }
}

/// TLS offered to clients (answer `S` to SSLRequest).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsSection {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `allow`: TLS when the client asks; `require`: plaintext sessions are refused (28000).
    #[serde(default)]
    pub mode: ClientTlsMode,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    #[default]
    Allow,
    Require,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `host:port`, or a unix socket: the socket file, or its directory (then `.s.PGSQL.<port>` is appended).
    pub addr: String,
    /// Port for a unix socket directory.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: UpstreamTlsSection,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// PEM bundle of CAs trusted for verify-ca / verify-full. Without it the webpki roots are used.
    pub ca_file: Option<PathBuf>,
    /// Name checked against the certificate in verify-full; defaults to the host of `upstream.addr`.
    pub server_name: Option<String>,
    /// Client certificate presented to the upstream (for `cert` authentication).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The libpq sslmode values that make sense for a proxy's upstream leg.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// HTTP address for `/metrics` and `/healthz`; absent disables the endpoint.
    pub addr: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    /// TCP connect plus TLS handshake to the upstream.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect: Duration,
    /// A client must finish SSL negotiation and send its StartupMessage within this.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup: Duration,
    /// On SIGTERM/SIGINT, sessions may finish their transactions for this long before they are closed.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            connect: default_connect_timeout(),
            startup: default_startup_timeout(),
            drain: default_drain_timeout(),
        }
    }
}

/// pgshift's own connection for operator work (backfill, verify, their progress on `/status`). Never on the
/// data path. The password comes from `PGPASSWORD` or `password_file`, never from the config text.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    pub dsn: Option<String>,
    /// A file holding the password (e.g. a mounted secret); its trailing newline is ignored.
    pub password_file: Option<PathBuf>,
    /// A replica whose replay lag throttles the backfill; without it, `pg_stat_replication` of the primary.
    pub replica_dsn: Option<String>,
    /// Without `dsn`: where one pgshift keeps its rollout state (default `pgshift-rollout.json` beside the
    /// config file).
    pub state_file: Option<PathBuf>,
    #[serde(default)]
    pub backfill: BackfillSection,
    #[serde(default)]
    pub shadow: ShadowSection,
}

/// How shadow comparisons run on pgshift's own connections (`[control.shadow]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    /// Comparisons running at once (each on its own connection per database).
    #[serde(default = "default_shadow_connections")]
    pub connections: usize,
    /// Sampled reads waiting for a connection; past this, samples are skipped (`queue_full`).
    #[serde(default = "default_shadow_queue")]
    pub queue: usize,
    /// `statement_timeout` of each comparison statement.
    #[serde(default = "default_shadow_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for ShadowSection {
    fn default() -> Self {
        ShadowSection {
            connections: default_shadow_connections(),
            queue: default_shadow_queue(),
            statement_timeout: default_shadow_timeout(),
        }
    }
}

fn default_shadow_connections() -> usize {
    2
}
fn default_shadow_queue() -> usize {
    1000
}
fn default_shadow_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Backfill limits; re-read on SIGHUP while a backfill runs. Command-line flags override them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackfillSection {
    /// Target duration of one batch; the row count adapts to it within `min_rows`..`max_rows`.
    #[serde(default = "default_batch_time", with = "humantime_serde")]
    pub batch_time: Duration,
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Pause while replication lag exceeds this.
    #[serde(default = "default_max_lag", with = "humantime_serde")]
    pub max_lag: Duration,
    /// Rows per second at most (0: unlimited).
    #[serde(default)]
    pub max_rate: u64,
    /// `lock_timeout` of each batch; a batch that times out is retried with backoff.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// `statement_timeout` of each batch.
    #[serde(default = "default_statement_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for BackfillSection {
    fn default() -> Self {
        BackfillSection {
            batch_time: default_batch_time(),
            min_rows: default_min_rows(),
            max_rows: default_max_rows(),
            max_lag: default_max_lag(),
            max_rate: 0,
            lock_timeout: default_lock_timeout(),
            statement_timeout: default_statement_timeout(),
        }
    }
}

fn default_batch_time() -> Duration {
    Duration::from_millis(200)
}
fn default_min_rows() -> u64 {
    100
}
fn default_max_rows() -> u64 {
    50_000
}
fn default_max_lag() -> Duration {
    Duration::from_secs(10)
}
fn default_lock_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `pgshift=debug`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_listen_addr() -> String {
    "127.0.0.1:6432".to_owned()
}
fn default_max_connections() -> usize {
    10_000
}
fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_log_level() -> String {
    "info".to_owned()
}
