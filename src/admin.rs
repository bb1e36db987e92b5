//! pgshift's own connection to the database, for the operator tools: `check --dsn` verifies migrations against
//! the live catalog, `rewrite --dsn` shows what pgshift would send. Never used on the data path.

use crate::config::migration::{Migration, MigrationKind};
use crate::config::Config;
use crate::rewrite::prefilter::Prefilter;
use crate::rewrite::{self, catalog, read_route, Context, DependentKind, Plan, Schema, Target};
use crate::routing::Route;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub async fn connect(dsn: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {dsn}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The same catalog lookup a session does, over the admin connection.
pub async fn schema(client: &Client, migrations: &[&Migration]) -> Result<Schema, String> {
    let Some(sql) = catalog::query(migrations) else {
        return Ok(Schema::default());
    };
    let rows = client.simple_query(&sql).await.map_err(|e| e.to_string())?;
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

/// Checks every migration against the live catalog; returns the problems found (empty: all good).
pub async fn check(client: &Client, config: &Config) -> Result<Vec<String>, String> {
    let migrations: Vec<&Migration> = config.migrations.iter().collect();
    let schema = schema(client, &migrations).await?;
    let mut problems = Vec::new();
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
                DependentKind::View => println!(
                    "  migration {:?}: {} reads {}; writes through it are refused while writes are mirrored",
                    m.name, d.description, m.table
                ),
                DependentKind::Function { writes: false } => println!(
                    "  migration {:?}: {} reads {} (by its code)",
                    m.name, d.description, m.table
                ),
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
    Ok(problems)
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// What pgshift would send for `sql` when every migration routes reads to `route`.
pub fn rewrite(sql: &str, config: &Config, schema: &Schema, route: Route) -> Plan {
    let targets: Vec<Target<'_>> = config
        .migrations
        .iter()
        .map(|m| Target {
            migration: m,
            route,
        })
        .collect();
    let prefilter = Prefilter::for_targets(
        config.migrations.iter().map(|m| m.table.name.as_str()),
        schema,
    );
    rewrite::plan(
        sql,
        &Context {
            targets: &targets,
            schema,
            prefilter: &prefilter,
        },
    )
}
