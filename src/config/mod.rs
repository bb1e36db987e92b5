//! Configuration: the TOML model, validation into a ready-to-use [`Config`], and loading from disk.

pub mod migration;
pub mod model;
pub mod reload;

use migration::Migration;
pub use model::{BackfillSection, ControlSection, ShadowSection};
use model::{ClientTlsMode, LogSection, RawConfig, TimeoutsSection, UpstreamTlsMode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A validated configuration. Built only through [`Config::load`] or [`Config::parse`], so holding one means
/// every address parsed and every referenced file exists.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub max_connections: usize,
    /// Session threads (at least 1).
    pub workers: usize,
    pub client_tls: Option<ClientTls>,
    pub upstream: Upstream,
    pub metrics_addr: Option<SocketAddr>,
    pub timeouts: TimeoutsSection,
    pub log: LogSection,
    pub control: ControlSection,
    pub migrations: Vec<Migration>,
    /// Content hash of the file this came from, shown in logs so a fleet can be seen to agree.
    pub epoch: String,
}

#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub mode: ClientTlsMode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub target: UpstreamTarget,
    pub tls: model::UpstreamTlsSection,
}

impl Upstream {
    /// How the upstream is named in errors and logs.
    pub fn describe(&self) -> String {
        match &self.target {
            UpstreamTarget::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            UpstreamTarget::Tcp { host, port } => format!("{host}:{port}"),
            UpstreamTarget::Unix(path) => path.display().to_string(),
        }
    }
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub metrics: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, overrides)
    }

    /// Parses and validates config text; `path` is used in messages and to resolve relative file names.
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (raw, mut problems) = deserialize_all(text);
        let Some(mut raw) = raw else {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            });
        };
        if let Some(listen) = &overrides.listen {
            raw.listen.addr = listen.clone();
        }
        if let Some(upstream) = &overrides.upstream {
            raw.upstream.addr = upstream.clone();
        }
        if let Some(metrics) = &overrides.metrics {
            raw.metrics.addr = Some(metrics.clone());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        match validate(raw, base, text) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }),
            Err(more) => {
                problems.extend(more);
                Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    problems,
                })
            }
        }
    }

    /// A config with defaults and only an upstream, for `serve --upstream` without a file.
    pub fn from_overrides(overrides: &Overrides) -> Result<Config, ConfigError> {
        let upstream = overrides.upstream.clone().unwrap_or_default();
        let text = format!("[upstream]\naddr = {}\n", toml_string(&upstream));
        Self::parse(&text, Path::new("<command line>"), overrides)
    }
}

/// Session threads when `listen.workers` is 0: one per four cores, at least one. A proxy needs far less CPU per
/// transaction than the database behind it and the clients in front of it, and usually shares a machine with
/// one of them: on 2 cores, one thread gave 0.95x PgBouncer's TPS where one per core gave 0.78x (BENCHMARKS.md),
/// each extra thread adding wakeups and cache misses but no throughput. One thread carries tens of thousands of
/// transactions per second; set `listen.workers` on a host dedicated to pgshift.
pub fn default_workers(cores: usize) -> usize {
    (cores / 4).max(1)
}

/// Deserializes `text`, reporting every key with a wrong type, an unknown value or an unknown name rather than
/// only the first: each one found is blanked out (its lines replaced by spaces, so later errors keep their line
/// numbers) and the rest read again, with that key at its default. Stops at an error no line explains (a
/// missing key, a bad table header), since reading on would only report its consequences.
fn deserialize_all(text: &str) -> (Option<RawConfig>, Vec<String>) {
    let (raw, mut found) = deserialize_each(text);
    found.sort_by_key(|(line, _)| *line);
    (raw, found.into_iter().map(|(_, problem)| problem).collect())
}

/// The problems of [`deserialize_all`] with their line numbers, in the order serde meets them.
fn deserialize_each(text: &str) -> (Option<RawConfig>, Vec<(usize, String)>) {
    let mut text = text.to_owned();
    let mut problems = Vec::new();
    loop {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => return (Some(raw), problems),
            Err(e) => e,
        };
        let message = e.message().trim().to_owned();
        let Some(span) = e.span().filter(|span| span.start < text.len()) else {
            problems.push((usize::MAX, message));
            return (None, problems);
        };
        let first = text[..span.start].matches('\n').count();
        let last = first
            + text[span.start..span.end.max(span.start)]
                .trim_end()
                .matches('\n')
                .count();
        let line = text
            .lines()
            .nth(first)
            .unwrap_or_default()
            .trim()
            .to_owned();
        problems.push((first, format!("line {} ({line}): {message}", first + 1)));
        let removable = !line.starts_with('[') && !message.starts_with("missing field");
        if !removable || problems.len() > 100 {
            return (None, problems);
        }
        let mut out = String::with_capacity(text.len());
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if (first..=last).contains(&i) {
                out.extend(l.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
            } else {
                out.push_str(l);
            }
        }
        text = out;
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Validates the whole file at once, so the operator sees every problem in one go. Each message names its key.
fn validate(mut raw: RawConfig, base: &Path, text: &str) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let migrations = validate_migrations(raw.migrations, text, &mut problems);

    let listen_addr = parse_socket_addr("listen.addr", &raw.listen.addr, &mut problems);
    if raw.listen.max_connections == 0 {
        problems.push("listen.max_connections must be at least 1".to_owned());
    }
    let client_tls = raw.listen.tls.map(|tls| ClientTls {
        cert_file: existing_file("listen.tls.cert_file", base, &tls.cert_file, &mut problems),
        key_file: existing_file("listen.tls.key_file", base, &tls.key_file, &mut problems),
        mode: tls.mode,
    });

    let target = match parse_upstream(&raw.upstream.addr, raw.upstream.port) {
        Ok(target) => Some(target),
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    let mut tls = raw.upstream.tls;
    for (key, file) in [
        ("upstream.tls.ca_file", &mut tls.ca_file),
        ("upstream.tls.cert_file", &mut tls.cert_file),
        ("upstream.tls.key_file", &mut tls.key_file),
    ] {
        if let Some(path) = file.as_mut() {
            *path = existing_file(key, base, path, &mut problems);
        }
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        problems.push(
            "upstream.tls.cert_file and upstream.tls.key_file must be given together".to_owned(),
        );
    }
    if matches!(target, Some(UpstreamTarget::Unix(_)))
        && tls.mode != UpstreamTlsMode::Disable
        && tls.mode != UpstreamTlsMode::Prefer
    {
        problems.push(format!(
            "upstream.tls.mode = {:?} needs a TCP upstream: PostgreSQL does not offer TLS on unix sockets",
            tls.mode
        ));
    }

    let metrics_addr = raw
        .metrics
        .addr
        .as_deref()
        .and_then(|addr| parse_socket_addr("metrics.addr", addr, &mut problems));

    for (key, value) in [
        ("timeouts.connect", raw.timeouts.connect),
        ("timeouts.startup", raw.timeouts.startup),
    ] {
        if value.is_zero() {
            problems.push(format!("{key} must be greater than zero"));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        problems.push(format!(
            "log.level = {:?} is not a valid filter: {e}",
            raw.log.level
        ));
    }

    validate_control(&mut raw.control, base, &mut problems);
    if raw.control.dsn.is_none() {
        let file = raw
            .control
            .state_file
            .get_or_insert_with(|| PathBuf::from("pgshift-rollout.json"));
        if file.is_relative() {
            *file = base.join(&*file);
        }
        for m in migrations.iter().filter(|m| m.shadow.sample_ppm > 0) {
            problems.push(format!(
                "migration {:?}: shadow.sample_percent needs [control] dsn (comparisons run on pgshift's own connections)",
                m.name
            ));
        }
    }

    match (listen_addr, target) {
        (Some(listen_addr), Some(target)) if problems.is_empty() => Ok(Config {
            listen_addr,
            max_connections: raw.listen.max_connections,
            workers: match raw.listen.workers {
                0 => default_workers(std::thread::available_parallelism().map_or(1, |n| n.get())),
                n => n,
            },
            client_tls,
            upstream: Upstream { target, tls },
            metrics_addr,
            timeouts: raw.timeouts,
            log: raw.log,
            control: raw.control,
            migrations,
            epoch: epoch_of(text),
        }),
        _ => Err(problems),
    }
}

/// `[control]`: no password in the config text; an existing password file; sane backfill limits.
fn validate_control(control: &mut ControlSection, base: &Path, problems: &mut Vec<String>) {
    for (key, dsn) in [
        ("control.dsn", &control.dsn),
        ("control.replica_dsn", &control.replica_dsn),
    ] {
        if dsn.as_deref().is_some_and(|d| crate::admin::redact(d) != d) {
            problems.push(format!(
                "{key} must not hold a password: give it in PGPASSWORD or control.password_file"
            ));
        }
    }
    if let Some(path) = control.password_file.as_mut() {
        *path = existing_file("control.password_file", base, path, problems);
    }
    let b = &control.backfill;
    if b.min_rows == 0 || b.min_rows > b.max_rows {
        problems.push(format!(
            "control.backfill.min_rows ({}) must be at least 1 and at most max_rows ({})",
            b.min_rows, b.max_rows
        ));
    }
    if b.batch_time.is_zero() {
        problems.push("control.backfill.batch_time must be greater than zero".to_owned());
    }
    let s = &control.shadow;
    if s.connections == 0 || s.queue == 0 || s.statement_timeout.is_zero() {
        problems.push(
            "control.shadow.connections, queue and statement_timeout must be greater than zero"
                .to_owned(),
        );
    }
}

/// Validates each `[[migration]]`, then the rules across them: unique names, one migration per table.
fn validate_migrations(
    raw: Vec<migration::RawMigration>,
    text: &str,
    problems: &mut Vec<String>,
) -> Vec<Migration> {
    // Line of each `[[migration]]` header, so messages point into the file.
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[migration]]"))
        .map(|(i, _)| i + 1)
        .collect();
    let mut migrations = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let at = match lines.get(i) {
            Some(line) => format!("migration {:?} (line {line})", raw.name),
            None => format!("migration {:?}", raw.name),
        };
        if let Some(m) = migration::validate(raw, &at, problems) {
            migrations.push(m);
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut tables: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for m in &migrations {
        if !names.insert(m.name.clone()) {
            problems.push(format!("migration {:?}: the name is used twice", m.name));
        }
        for table in std::iter::once(&m.table).chain(m.new_table.as_ref()) {
            if let Some(other) = tables.insert(table.to_string(), m.name.clone()) {
                if other != m.name {
                    problems.push(format!(
                        "migrations {other:?} and {:?} both claim table {table}: one migration per table",
                        m.name
                    ));
                }
            }
        }
    }
    migrations
}

fn parse_socket_addr(key: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!(
                "{key} = {value:?} is not an IP address with a port, like \"127.0.0.1:6432\""
            ));
            None
        }
    }
}

/// `host:port`, `[v6]:port`, or an absolute unix socket path (file or directory).
fn parse_upstream(addr: &str, port: u16) -> Result<UpstreamTarget, String> {
    if addr.starts_with('/') {
        let path = PathBuf::from(addr);
        return Ok(if path.is_dir() {
            UpstreamTarget::Unix(path.join(format!(".s.PGSQL.{port}")))
        } else {
            UpstreamTarget::Unix(path)
        });
    }
    let problem = || {
        format!("upstream.addr = {addr:?} is neither host:port nor an absolute unix socket path")
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(problem)?;
    let port: u16 = port.parse().map_err(|_| problem())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(problem());
    }
    Ok(UpstreamTarget::Tcp {
        host: host.to_owned(),
        port,
    })
}

fn existing_file(key: &str, base: &Path, path: &Path, problems: &mut Vec<String>) -> PathBuf {
    let full = base.join(path);
    if !full.is_file() {
        problems.push(format!(
            "{key} = {:?}: no such file",
            full.display().to_string()
        ));
    }
    full
}

/// FNV-1a of the file text: stable across builds and machines, unlike `DefaultHasher`.
fn epoch_of(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::default_workers;

    #[test]
    fn default_workers_leave_most_cores_to_the_database_and_clients() {
        let by_cores: Vec<usize> = [1, 2, 4, 8, 16, 64].map(default_workers).to_vec();
        assert_eq!(by_cores, [1, 1, 1, 2, 4, 16]);
    }

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/tmp/test.toml"), &Overrides::default())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse("[upstream]\naddr = \"127.0.0.1:5432\"\n").unwrap();
        assert_eq!(config.listen_addr, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(
            config.upstream.target,
            UpstreamTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 5432
            }
        );
        assert_eq!(config.upstream.tls.mode, UpstreamTlsMode::Prefer);
        assert_eq!(config.timeouts.drain, std::time::Duration::from_secs(30));
        assert_eq!(config.metrics_addr, None);
    }

    #[test]
    fn control_section_keeps_passwords_out_of_the_file() {
        let ok = parse(
            "[upstream]\naddr = \"127.0.0.1:5432\"\n[control]\ndsn = \"postgres://m@db/app\"\n\
             [control.backfill]\nbatch_time = \"50ms\"\nmax_rate = 500\n",
        )
        .unwrap();
        assert_eq!(ok.control.dsn.as_deref(), Some("postgres://m@db/app"));
        assert_eq!(
            ok.control.backfill.batch_time,
            std::time::Duration::from_millis(50)
        );
        assert_eq!(ok.control.backfill.max_rate, 500);
        assert_eq!(ok.control.backfill.max_rows, 50_000);
        let err = parse(
            "[upstream]\naddr = \"127.0.0.1:5432\"\n[control]\ndsn = \"postgres://m:secret@db/app\"\n\
             replica_dsn = \"host=r password=x\"\n[control.backfill]\nmin_rows = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("control.dsn must not hold a password: give it in PGPASSWORD or control.password_file"), "{err}");
        assert!(
            err.contains("control.replica_dsn must not hold a password"),
            "{err}"
        );
        assert!(
            err.contains("control.backfill.min_rows (0) must be at least 1"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("[upstream]\naddr = \"127.0.0.1:5432\"\nadress = \"x\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `adress`"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn type_value_and_name_errors_are_all_reported_with_the_rest() {
        let err = parse(
            "[upstream]\naddr = \"127.0.0.1:5432\"\n[upstream.tls]\nmode = \"preferr\"\n\
             [[migration]]\nname = \"m\"\nkind = \"column\"\ntable = \"t\"\nkey = [\"id\"]\n\
             columns = [{ old = \"a\", new = \"b\" }]\nwrites = \"dual\"\nspeed = 3\n\
             [migration.reads]\nnew_percent = 150\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("line 4 (mode = \"preferr\"): unknown variant `preferr`"),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("line 11 (writes = \"dual\"): unknown variant `dual`"),
            "{problems:#?}"
        );
        assert!(
            problems[2].starts_with("line 12 (speed = 3): unknown field `speed`"),
            "{problems:#?}"
        );
        assert!(problems[3].contains("new_percent"), "{problems:#?}");
    }

    #[test]
    fn all_problems_are_reported_with_their_keys() {
        let err = parse(
            "[listen]\naddr = \"nope\"\n[upstream]\naddr = \"db\"\n[upstream.tls]\nmode = \"verify-full\"\nca_file = \"missing.pem\"\n",
        )
        .unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("listen.addr = \"nope\""));
        assert!(problems[1].starts_with("upstream.addr = \"db\""));
        assert!(problems[2].starts_with("upstream.tls.ca_file"));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:7000".into()),
            upstream: Some("[::1]:5433".into()),
            metrics: None,
        };
        let config = Config::parse(
            "[upstream]\naddr = \"db:5432\"\n",
            Path::new("x.toml"),
            &overrides,
        )
        .unwrap();
        assert_eq!(config.listen_addr.port(), 7000);
        assert_eq!(config.upstream.describe(), "[::1]:5433");
    }

    #[test]
    fn unix_socket_directory_gets_socket_file_name() {
        let dir = std::env::temp_dir();
        let text = format!(
            "[upstream]\naddr = {:?}\nport = 5999\n",
            dir.display().to_string()
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.upstream.target,
            UpstreamTarget::Unix(dir.join(".s.PGSQL.5999"))
        );
    }

    #[test]
    fn example_config_is_valid_and_documents_every_section() {
        let text = include_str!("../../config/pgshift.example.toml");
        let config = Config::parse(
            text,
            Path::new("config/pgshift.example.toml"),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.listen_addr, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9187".parse().unwrap()));
        for key in [
            "[listen.tls]",
            "cert_file",
            "key_file",
            "server_name",
            "ca_file",
            "max_connections",
            "workers",
            "drain",
        ] {
            assert!(text.contains(key), "example config does not mention {key}");
        }
    }

    const TWO_MIGRATIONS: &str = r#"[upstream]
addr = "127.0.0.1:5432"

[[migration]]
name = "orders_status"
kind = "column"
table = "public.orders"
key = ["id"]
columns = [{ old = "legacy_status", new = "new_status", up = "upper(legacy_status)", down = "lower(new_status)" }]
[migration.reads]
key = "application_name"
rules = [{ application_name = "batch_processor", new_percent = 0 }]

[[migration]]
name = "users_v2"
kind = "table"
table = "Users"
new_table = "v2.users"
key = ["id"]
columns = [{ old = "fullname", new = "display_name" }]
"#;

    #[test]
    fn migrations_parse_and_fold_names() {
        let config = parse(TWO_MIGRATIONS).unwrap();
        assert_eq!(config.migrations.len(), 2);
        let users = &config.migrations[1];
        assert_eq!(users.table.to_string(), "public.users");
        assert_eq!(users.new_table.as_ref().unwrap().to_string(), "v2.users");
        assert_eq!(users.salt, "users_v2");
        assert_eq!(config.migrations[0].reads.rules.len(), 1);
    }

    #[test]
    fn migration_problems_name_the_entry_and_line() {
        let text = TWO_MIGRATIONS.replace("upper(legacy_status)", "upper(legacy_status");
        let ConfigError::Invalid { problems, .. } = parse(&text).unwrap_err() else {
            panic!()
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("migration \"orders_status\" (line 4): columns[0].up = \"upper(legacy_status\" is not a valid SQL expression"), "{}", problems[0]);
        let text = TWO_MIGRATIONS.replace("new_table = \"v2.users\"", "new_table = \"orders\"");
        let ConfigError::Invalid { problems, .. } = parse(&text).unwrap_err() else {
            panic!()
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("both claim table public.orders"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn every_write_phase_is_accepted() {
        for phase in ["off", "dual_write", "new_primary"] {
            let text = TWO_MIGRATIONS.replace(
                "key = [\"id\"]\ncolumns = [{ old = \"fullname\"",
                &format!("key = [\"id\"]\nwrites = \"{phase}\"\ncolumns = [{{ old = \"fullname\""),
            );
            parse(&text).unwrap_or_else(|e| panic!("{phase}: {e}"));
        }
        let bad = TWO_MIGRATIONS.replace(
            "key = [\"id\"]\ncolumns = [{ old = \"fullname\"",
            "key = [\"id\"]\nwrites = \"both\"\ncolumns = [{ old = \"fullname\"",
        );
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown variant `both`"), "{err}");
    }

    #[test]
    fn bad_percentages_rules_and_kinds() {
        let text = "[upstream]\naddr = \"h:1\"\n[[migration]]\nname = \"Bad-Name\"\nkind = \"table\"\ntable = \"t\"\n\
                    [migration.reads]\nnew_percent = 101.0\nrules = [{ new_percent = 5 }, { client_cidr = \"10/8\", new_percent = 0 }]\n";
        let ConfigError::Invalid { problems, .. } = parse(text).unwrap_err() else {
            panic!()
        };
        let all = problems.join("\n");
        for want in [
            "name = \"Bad-Name\" must be",
            "kind = \"table\" needs new_table",
            "key must name the primary-key column(s)",
            "reads.new_percent = 101 must be between 0 and 100",
            "reads.rules[0] matches nothing",
            "reads.rules[1].client_cidr = \"10/8\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
    }

    #[test]
    fn epoch_changes_with_content() {
        let a = parse("[upstream]\naddr = \"h:1\"\n").unwrap();
        let b = parse("[upstream]\naddr = \"h:2\"\n").unwrap();
        assert_ne!(a.epoch, b.epoch);
        assert_eq!(a.epoch.len(), 16);
    }
}
