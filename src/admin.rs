//! pgshift's own connection to the database, for the operator tools: `check --dsn` verifies migrations against
//! the live catalog, `rewrite --dsn` shows what pgshift would send. Never used on the data path.

use crate::config::migration::{Migration, MigrationKind};
use crate::config::Config;
use crate::rewrite::planner::Planner;
use crate::rewrite::ActionKind;
use crate::rewrite::{self, catalog, read_route, DependentKind, Plan, Schema};
use crate::routing::Route;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Why an operator command could not talk to the database.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `dsn` is already redacted.
    #[error("cannot connect to {dsn}: {cause}")]
    Connect { dsn: String, cause: String },
    #[error("the catalog lookup failed: {0}")]
    Lookup(String),
}

pub async fn connect(dsn: &str) -> Result<Client, AdminError> {
    let config = dsn.parse().map_err(|e| AdminError::Connect {
        dsn: redact(dsn),
        cause: cause(&e),
    })?;
    open(&config, dsn).await
}

/// Connects with `config` (which `dsn` names in errors, redacted) and drives the connection in the background.
pub async fn open(config: &tokio_postgres::Config, dsn: &str) -> Result<Client, AdminError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| AdminError::Connect {
            dsn: redact(dsn),
            cause: cause(&e),
        })?;
    tokio::spawn(connection);
    Ok(client)
}

/// pgshift's control connection: `dsn` without a password, which comes from `PGPASSWORD` or `password_file`
/// (a mounted secret), never from the config text. The user defaults to `PGUSER`, then the OS user, as psql's.
pub async fn connect_control(
    dsn: &str,
    password_file: Option<&std::path::Path>,
) -> Result<Client, AdminError> {
    open(&control_config(dsn, password_file)?, dsn).await
}

/// The connection settings of [`connect_control`], for callers that change the database.
pub fn control_config(
    dsn: &str,
    password_file: Option<&std::path::Path>,
) -> Result<tokio_postgres::Config, AdminError> {
    let fail = |cause: String| AdminError::Connect {
        dsn: redact(dsn),
        cause,
    };
    let mut config: tokio_postgres::Config = dsn.parse().map_err(|e| fail(cause(&e)))?;
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        } else if let Some(file) = password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
            config.password(text.trim_end_matches(['\n', '\r']));
        }
    }
    if config.get_user().is_none() {
        if let Ok(user) = std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
            config.user(user);
        }
    }
    Ok(config)
}

/// What went wrong, down to the root: the server's own message (`database "nodb" does not exist`) or the OS
/// error, not only tokio-postgres's summary (`db error`, `error connecting to server`).
pub fn cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

/// A connection string with its password replaced by `***`, in URL (`postgres://u:pw@h`) or key=value form.
pub fn redact(dsn: &str) -> String {
    if let Some(scheme_end) = dsn.find("://") {
        let rest = &dsn[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                let end = scheme_end + 3 + at;
                return format!("{}***{}", &dsn[..start], &dsn[end..]).replace_password_param();
            }
        }
        return dsn.replace_password_param();
    }
    dsn.replace_password_param()
}

trait ReplacePassword {
    fn replace_password_param(&self) -> String;
}

impl ReplacePassword for str {
    /// `password=…` in key=value strings and URL query parameters, quoted values included.
    fn replace_password_param(&self) -> String {
        let mut out = String::with_capacity(self.len());
        let mut rest = self;
        while let Some(i) = rest.to_ascii_lowercase().find("password=") {
            let boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b' ' | b'?' | b'&');
            out.push_str(&rest[..i + 9]);
            rest = &rest[i + 9..];
            if !boundary {
                continue;
            }
            let end = if let Some(quoted) = rest.strip_prefix('\'') {
                quoted.find('\'').map_or(rest.len(), |q| q + 2)
            } else {
                rest.find([' ', '&']).unwrap_or(rest.len())
            };
            out.push_str("***");
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

/// Why `rewrite` sends a statement unchanged, in the operator's terms.
pub fn why_unchanged(
    sql: &str,
    config: &Config,
    actions: &[rewrite::Action],
    schema_known: bool,
) -> String {
    let lower = sql.to_lowercase();
    let named: Vec<&Migration> = config
        .migrations
        .iter()
        .filter(|m| lower.contains(&m.table.name.to_lowercase()))
        .collect();
    if let Some(action) = actions.iter().find(|a| a.what == ActionKind::ReadOld) {
        return format!(
            "its reads stay on the old schema on this route (migration \"{}\")",
            action.migration
        );
    }
    if named.is_empty() {
        return "it names no migrated table".to_owned();
    }
    let off: Vec<String> = named
        .iter()
        .filter(|m| m.writes == crate::config::migration::WriteMode::Off)
        .map(|m| format!("\"{}\"", m.name))
        .collect();
    if !off.is_empty() {
        return format!(
            "writes = \"off\" for migration {}, and its reads (if any) are not routed",
            off.join(", ")
        );
    }
    if !schema_known {
        return "without --dsn pgshift does not know the tables' columns, which most rewrites need"
            .to_owned();
    }
    "nothing in it reads or writes a migrated table".to_owned()
}

/// The same catalog lookup a session does, over the admin connection.
pub async fn schema(client: &Client, migrations: &[&Migration]) -> Result<Schema, AdminError> {
    let Some(sql) = catalog::query(migrations) else {
        return Ok(Schema::default());
    };
    let rows = client
        .simple_query(&sql)
        .await
        .map_err(|e| AdminError::Lookup(cause(&e)))?;
    let rows: Vec<Vec<Option<String>>> = rows
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect();
    Ok(catalog::parse(&rows))
}

/// What `check --dsn` found: problems fail the check; notes (objects that only read an old table) do not.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Checks every migration against the live catalog.
pub async fn check(client: &Client, config: &Config) -> Result<Findings, AdminError> {
    let migrations: Vec<&Migration> = config.migrations.iter().collect();
    let schema = schema(client, &migrations).await?;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for m in &migrations {
        let mut mine: Vec<String> = Vec::new();
        let about = |p: String| format!("migration {:?}: {p}", m.name);
        let Some(old_cols) = schema.columns.get(&m.table) else {
            mine.push(about(format!("table {} does not exist", m.table)));
            problems.append(&mut mine);
            continue;
        };
        let new_cols = match (&m.kind, &m.new_table) {
            (MigrationKind::Table, Some(t)) => match schema.columns.get(t) {
                Some(cols) => cols,
                None => {
                    mine.push(about(format!("new table {t} does not exist")));
                    problems.append(&mut mine);
                    continue;
                }
            },
            _ => old_cols,
        };
        for key in &m.key {
            if !old_cols.contains(key) {
                mine.push(about(format!(
                    "key column {key} does not exist in {}",
                    m.table
                )));
            }
        }
        for c in &m.columns {
            if !old_cols.contains(&c.old.to_lowercase()) {
                mine.push(about(format!(
                    "column {} does not exist in {}",
                    c.old, m.table
                )));
            }
            if !new_cols.contains(&c.new.to_lowercase()) {
                mine.push(about(format!(
                    "column {} does not exist in the new schema",
                    c.new
                )));
            }
        }
        // The expressions must be valid for the column types: let Postgres plan them, reading no rows.
        let old_table = format!(
            "{}.{}",
            rewrite::sqltext::quote_ident(&m.table.schema),
            rewrite::sqltext::quote_ident(&m.table.name)
        );
        for c in &m.columns {
            if let Some(up) = &c.up {
                let sql = format!("EXPLAIN SELECT {up} FROM {old_table}");
                if let Err(e) = client.simple_query(&sql).await {
                    mine.push(about(format!(
                        "up = {up:?} is not valid over {}: {}",
                        m.table,
                        db_message(&e)
                    )));
                }
            }
        }
        if mine.is_empty() {
            match read_route::derived_select(m, &schema) {
                Ok(select) => {
                    if let Err(e) = client.simple_query(&format!("EXPLAIN {select}")).await {
                        mine.push(about(format!(
                            "reads from the new schema would fail: {}",
                            db_message(&e)
                        )));
                    }
                }
                Err(e) => mine.push(about(format!("reads cannot be routed to new: {e}"))),
            }
        }
        // What writes the old table out of pgshift's sight: those writes would reach one side only.
        for d in schema.dependents.iter().filter(|d| d.table == m.table) {
            match d.kind {
                DependentKind::View => notes.push(format!(
                    "migration {:?}: {} reads {}; writes through it are refused while writes are mirrored",
                    m.name, d.description, m.table
                )),
                DependentKind::Function { writes: false } => notes.push(format!(
                    "migration {:?}: {} reads {} (by its code)",
                    m.name, d.description, m.table
                )),
                DependentKind::Function { writes: true } => mine.push(about(format!(
                    "{} writes {} (by its code): calls through pgshift are refused while writes are mirrored, \
                     and calls from elsewhere are not mirrored; change it to write both tables, or stop calling it \
                     until the migration is done, and run `pgshift verify` afterwards",
                    d.description, m.table
                ))),
                DependentKind::Rule | DependentKind::Trigger => mine.push(about(format!(
                    "{} writes {}: writes to that table through pgshift are refused while writes are mirrored; \
                     make it write both tables, or drop it for the migration",
                    d.description, m.table
                ))),
            }
        }
        problems.append(&mut mine);
    }
    Ok(Findings { problems, notes })
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// What pgshift would send for `sql` when every migration routes reads to `route`.
pub fn rewrite(sql: &str, config: &Config, schema: &Schema, route: Route) -> Plan {
    Planner::for_every_migration(std::sync::Arc::new(config.clone()), route, schema.clone())
        .plan_uncached(sql)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_in_every_dsn_form() {
        for (dsn, want) in [
            (
                "postgres://app:s3cret@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "postgresql://app:p%40ss@db/app?sslmode=require",
                "postgresql://app:***@db/app?sslmode=require",
            ),
            (
                "postgres://app@db/app?password=s3cret&sslmode=disable",
                "postgres://app@db/app?password=***&sslmode=disable",
            ),
            (
                "host=db user=app password=s3cret dbname=app",
                "host=db user=app password=*** dbname=app",
            ),
            (
                "host=db password='with space' dbname=app",
                "host=db password=*** dbname=app",
            ),
            ("postgres://app@db/app", "postgres://app@db/app"),
        ] {
            assert_eq!(redact(dsn), want, "{dsn}");
        }
    }
}
