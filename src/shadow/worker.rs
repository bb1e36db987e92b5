//! The comparison workers: each takes sampled reads off the queue and runs their comparison on its own
//! connection to the client's database, in a read-only transaction under the client's role and settings, then
//! rolls it back. Nothing here touches a client's connection.

use super::compare::{self, Comparison, Side};
use super::findings::{Outcome, MAX_EXAMPLES};
use super::{Identity, Job, Params, Shadow};
use crate::admin;
use crate::config::reload::ConfigHandle;
use crate::config::Config;
use bytes::BytesMut;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

pub fn start(
    rx: mpsc::Receiver<Job>,
    shadow: Shadow,
    live: Arc<ConfigHandle>,
    workers: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..workers.max(1))
        .map(|_| tokio::spawn(work(rx.clone(), shadow.clone(), live.clone())))
        .collect()
}

/// Entries kept in each cache below before it is emptied: enough for an application's statements, bounded
/// against one that sends endless distinct texts.
const CACHE_LIMIT: usize = 500;

/// One worker's connection to a database, with what it has prepared there.
struct Connection {
    client: Client,
    /// Parameter types Postgres infers for a client statement, by (text, declared types).
    types: HashMap<(String, Vec<u32>), Vec<Type>>,
    /// Comparison statements prepared on this connection, by (text, parameter types).
    statements: HashMap<(String, Vec<u32>), Statement>,
}

async fn work(rx: Arc<Mutex<mpsc::Receiver<Job>>>, shadow: Shadow, live: Arc<ConfigHandle>) {
    let mut connections: HashMap<String, Connection> = HashMap::new();
    // What each sampled text compares as: parsing and fingerprinting once per statement, not per sample.
    let mut comparisons: HashMap<(String, String), Result<Arc<Comparison>, compare::Skip>> =
        HashMap::new();
    let mut warned: Option<Instant> = None;
    loop {
        let Some(job) = rx.lock().await.recv().await else {
            return;
        };
        let config = live.current();
        let Some(migration) = config.migrations.iter().find(|m| *m.name == *job.migration) else {
            continue;
        };
        // Sampled under a mapping that has changed since: it would only muddle the new findings.
        if super::mapping_hash(migration) != job.mapping {
            continue;
        }
        let new_sql = match &*job.new_plan {
            crate::rewrite::Plan::Rewrite { sql, .. } => sql.clone(),
            _ => String::new(),
        };
        if comparisons.len() >= CACHE_LIMIT {
            comparisons.clear();
        }
        let c = comparisons
            .entry((job.sql.clone(), new_sql))
            .or_insert_with(|| compare::compare(&job.sql, &job.new_plan).map(Arc::new))
            .clone();
        let c = match c {
            Ok(c) => c,
            Err(skip) => {
                shadow.skipped(&job.migration, job.mapping, skip.label());
                continue;
            }
        };
        let conn = match connection(&mut connections, &config, &job.database).await {
            Ok(conn) => conn,
            Err(e) => {
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    warned = Some(Instant::now());
                    tracing::warn!(error = %e, "shadow comparisons cannot connect; samples are counted as errors");
                }
                shadow.findings().record(
                    &job.migration,
                    job.mapping,
                    &c,
                    Outcome::Error(e.to_string()),
                    None,
                    &migration.shadow.thresholds,
                );
                continue;
            }
        };
        let started = Instant::now();
        let keys = Keys {
            columns: &migration.key,
            values: migration.shadow.log_values,
        };
        let timeout = config.control.shadow.statement_timeout;
        let (outcome, noise) = run(conn, &job, &c, timeout, &keys).await;
        ::metrics::histogram!(crate::metrics::SHADOW_DURATION)
            .record(started.elapsed().as_secs_f64());
        if conn.client.is_closed() {
            connections.remove(&job.database);
        }
        shadow.findings().record(
            &job.migration,
            job.mapping,
            &c,
            outcome,
            noise,
            &migration.shadow.thresholds,
        );
    }
}

/// This worker's connection to `database`, opened when first needed.
async fn connection<'a>(
    connections: &'a mut HashMap<String, Connection>,
    config: &Config,
    database: &str,
) -> Result<&'a mut Connection, admin::AdminError> {
    if !connections.contains_key(database) {
        let dsn = config.control.dsn.as_deref().unwrap_or_default();
        let mut settings = admin::control_config(dsn, config.control.password_file.as_deref())?;
        settings.dbname(database);
        settings.application_name("pgshift shadow reads");
        let client = admin::open(&settings, dsn).await?;
        connections.insert(
            database.to_owned(),
            Connection {
                client,
                types: HashMap::new(),
                statements: HashMap::new(),
            },
        );
    }
    Ok(connections.get_mut(database).expect("inserted above"))
}

/// What a difference's examples show: the migration's key columns, and the whole row with `log_values`.
struct Keys<'a> {
    columns: &'a [String],
    values: bool,
}

/// Runs one comparison in its own transaction: (outcome, whether the served side differed from itself).
async fn run(
    conn: &mut Connection,
    job: &Job,
    c: &Comparison,
    timeout: Duration,
    keys: &Keys<'_>,
) -> (Outcome, Option<bool>) {
    let setup = setup_sql(&job.identity, timeout);
    let sql = c.with_noise(job.served);
    let declared: Vec<u32> = job.params.as_ref().map_or(Vec::new(), |p| p.types.clone());
    let prepared = conn
        .types
        .get(&(c.old.clone(), declared.clone()))
        .and_then(|types| {
            let oids = types.iter().map(Type::oid).collect();
            let statement = conn.statements.get(&(sql.clone(), oids)).cloned()?;
            Some((types.clone(), statement))
        });
    let result = match prepared {
        // The usual case: setup and comparison sent together, one round trip.
        Some((types, statement)) => {
            let values = raw_values(job.params.as_ref());
            let args = args(&values);
            let (setup, rows) = tokio::join!(
                conn.client.batch_execute(&setup),
                conn.client.query(&statement, &args)
            );
            match setup {
                Err(e) => Err(role_error(job, &e)),
                Ok(()) => Ok(finish(&conn.client, c, rows, (&args, &types), keys).await),
            }
        }
        None => match conn.client.batch_execute(&setup).await {
            Err(e) => Err(role_error(job, &e)),
            Ok(()) => Ok(prepare_and_compare(conn, job, c, &sql, declared, keys).await),
        },
    };
    let _ = conn.client.batch_execute("ROLLBACK").await;
    result.unwrap_or_else(|e| (Outcome::Error(e), None))
}

fn role_error(job: &Job, e: &tokio_postgres::Error) -> String {
    format!(
        "cannot act as role {:?} with the client's settings: {}",
        job.identity.role,
        admin::cause(e)
    )
}

/// The first comparison of a statement on this connection: the client statement's parameter types, then the
/// comparison prepared with them (inside the transaction, so under the client's search_path).
async fn prepare_and_compare(
    conn: &mut Connection,
    job: &Job,
    c: &Comparison,
    sql: &str,
    declared: Vec<u32>,
    keys: &Keys<'_>,
) -> (Outcome, Option<bool>) {
    let values = raw_values(job.params.as_ref());
    let key = (c.old.clone(), declared);
    let types = match conn.types.get(&key) {
        Some(types) => types.clone(),
        None => {
            let declared: Vec<Type> = key.1.iter().map(|&oid| type_of(oid)).collect();
            match conn.client.prepare_typed(&c.old, &declared).await {
                Ok(statement) => {
                    let types = statement.params().to_vec();
                    if conn.types.len() >= CACHE_LIMIT {
                        conn.types.clear();
                    }
                    conn.types.insert(key, types.clone());
                    types
                }
                Err(e) => return (Outcome::Error(admin::cause(&e)), None),
            }
        }
    };
    if types.len() != values.len() {
        return (
            Outcome::Error(format!(
                "the statement takes {} parameters, the client bound {}",
                types.len(),
                values.len()
            )),
            None,
        );
    }
    let args = args(&values);
    let statement = match conn.client.prepare_typed(sql, &types).await {
        Ok(statement) => statement,
        Err(e) => {
            return (
                which_side_fails(&conn.client, c, &args, &types, &e).await,
                None,
            )
        }
    };
    if conn.statements.len() >= CACHE_LIMIT {
        conn.statements.clear();
    }
    conn.statements.insert(
        (sql.to_owned(), types.iter().map(Type::oid).collect()),
        statement.clone(),
    );
    let rows = conn.client.query(&statement, &args).await;
    finish(&conn.client, c, rows, (&args, &types), keys).await
}

/// Reads the comparison's row; on a difference, fetches examples (same transaction, same snapshot).
async fn finish(
    client: &Client,
    c: &Comparison,
    rows: Result<Vec<Row>, tokio_postgres::Error>,
    (args, types): (&[&(dyn ToSql + Sync)], &[Type]),
    keys: &Keys<'_>,
) -> (Outcome, Option<bool>) {
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return (which_side_fails(client, c, args, types, &e).await, None),
    };
    let Some(counts) = rows.first().and_then(counts) else {
        return (
            Outcome::Error("the comparison returned no row".into()),
            None,
        );
    };
    let noise = Some(counts.noise);
    if counts.only_old == 0 && counts.only_new == 0 && !counts.order {
        return (Outcome::Match, noise);
    }
    let found = match client
        .prepare_typed(&c.examples(MAX_EXAMPLES as u32), types)
        .await
    {
        Ok(statement) => client.query(&statement, args).await,
        Err(e) => Err(e),
    };
    let examples = match found {
        Ok(rows) => examples(
            rows.iter()
                .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?))),
            keys,
        ),
        Err(e) => vec![format!("(examples unavailable: {})", admin::cause(&e))],
    };
    (
        Outcome::Differs {
            only_old: counts.only_old,
            only_new: counts.only_new,
            order: counts.order,
            examples,
        },
        noise,
    )
}

/// The comparison's row.
struct Counts {
    only_old: i64,
    only_new: i64,
    order: bool,
    /// The served side differed from itself.
    noise: bool,
}

fn counts(row: &Row) -> Option<Counts> {
    let again: (i64, i64, bool) = (
        row.try_get(5).ok()?,
        row.try_get(6).ok()?,
        row.try_get(7).ok()?,
    );
    Some(Counts {
        only_old: row.try_get(0).ok()?,
        only_new: row.try_get(1).ok()?,
        order: row.try_get(4).ok()?,
        noise: again.0 != 0 || again.1 != 0 || again.2,
    })
}

/// Opens the comparison's transaction: read-only (a "read" calling a function that writes fails rather than
/// writes twice), one snapshot for every statement in it, the client's role and settings, pgshift's timeouts.
fn setup_sql(identity: &Identity, timeout: Duration) -> String {
    let mut sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL ROLE {}; ",
        quote_ident(&identity.role)
    );
    if !identity.settings.is_empty() {
        let calls: Vec<String> = identity
            .settings
            .iter()
            .map(|(name, value)| format!("set_config({}, {}, true)", literal(name), literal(value)))
            .collect();
        sql.push_str(&format!("SELECT {}; ", calls.join(", ")));
    }
    let ms = timeout.as_millis().max(1);
    sql.push_str(&format!(
        "SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; SAVEPOINT pgshift_compare"
    ));
    sql
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal whatever `standard_conforming_strings` says.
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The comparison failed: each side alone says whether exactly one of them fails (a mismatch: the new schema
/// refuses what the old one answers, or the reverse) or both do (an error that says nothing of the mapping).
async fn which_side_fails(
    client: &Client,
    c: &Comparison,
    args: &[&(dyn ToSql + Sync)],
    types: &[Type],
    error: &tokio_postgres::Error,
) -> Outcome {
    let mut fails = Vec::new();
    for side in [Side::Old, Side::New] {
        if client
            .batch_execute("ROLLBACK TO SAVEPOINT pgshift_compare")
            .await
            .is_err()
        {
            return Outcome::Error(admin::cause(error));
        }
        let alone = match client.prepare_typed(&c.alone(side), types).await {
            Ok(statement) => client.query(&statement, args).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = alone {
            fails.push((side, admin::cause(&e)));
        }
    }
    match fails.as_slice() {
        [(side, e)] => Outcome::OneSideFails {
            side: *side,
            error: e.clone(),
        },
        _ => Outcome::Error(admin::cause(error)),
    }
}

/// Example differences: `only in old: id=7`, with the row's values when `log_values` is on. `rows` are
/// (side, the row as JSON) as [`Comparison::examples`] returns them.
fn examples<'r>(
    rows: impl IntoIterator<Item = (&'r str, &'r str)>,
    keys: &Keys<'_>,
) -> Vec<String> {
    rows.into_iter()
        .filter_map(|(side, json)| {
            let value: serde_json::Value = serde_json::from_str(json).ok()?;
            let key: Vec<String> = keys
                .columns
                .iter()
                .filter_map(|k| value.get(k).map(|v| format!("{k}={v}")))
                .collect();
            let mut text = format!("only in {side}: ");
            if key.is_empty() {
                text.push_str("(no key column in the result)");
            } else {
                text.push_str(&key.join(", "));
            }
            if keys.values {
                text.push_str(&format!(" {json}"));
            }
            Some(text)
        })
        .collect()
}

/// The client's parameter values, each in the format it was sent in.
fn raw_values(params: Option<&Params>) -> Vec<Raw> {
    let Some(p) = params else {
        return Vec::new();
    };
    p.values
        .iter()
        .enumerate()
        .map(|(i, v)| Raw {
            value: v.clone(),
            binary: match p.formats.as_slice() {
                [] => false,
                [one] => *one == 1,
                all => all.get(i) == Some(&1),
            },
        })
        .collect()
}

fn args(values: &[Raw]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// A declared parameter type; 0 (unspecified) and types Postgres defines at run time go by their OID alone.
fn type_of(oid: u32) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| {
        if oid == 0 {
            Type::UNKNOWN
        } else {
            Type::new(
                format!("oid{oid}"),
                oid,
                tokio_postgres::types::Kind::Simple,
                String::new(),
            )
        }
    })
}

/// A parameter value exactly as the client sent it, in its format.
#[derive(Debug)]
struct Raw {
    value: Option<bytes::Bytes>,
    binary: bool,
}

impl ToSql for Raw {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.value {
            Some(v) => {
                out.extend_from_slice(v);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        if self.binary {
            Format::Binary
        } else {
            Format::Text
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_show_keys_and_values_only_when_asked() {
        let rows = [
            ("old", r#"{"id":7,"tenant":"a","email":"x@example.com"}"#),
            ("new", r#"{"email":"y@example.com"}"#),
        ];
        let columns = ["tenant".to_owned(), "id".to_owned()];
        let keys = Keys {
            columns: &columns,
            values: false,
        };
        assert_eq!(
            examples(rows, &keys),
            [
                "only in old: tenant=\"a\", id=7",
                "only in new: (no key column in the result)"
            ]
        );
        let keys = Keys {
            values: true,
            ..keys
        };
        assert_eq!(
            examples(rows, &keys)[1],
            "only in new: (no key column in the result) {\"email\":\"y@example.com\"}"
        );
    }

    #[test]
    fn the_transaction_takes_the_clients_role_and_settings() {
        let identity = Identity {
            role: "app\"x".into(),
            settings: vec![
                ("search_path".into(), "\"$user\", public".into()),
                ("TimeZone".into(), "it's\\odd".into()),
            ],
        };
        assert_eq!(
            setup_sql(&identity, Duration::from_secs(2)),
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL ROLE \"app\"\"x\"; \
             SELECT set_config(E'search_path', E'\"$user\", public', true), set_config(E'TimeZone', E'it''s\\\\odd', true); \
             SET LOCAL statement_timeout = 2000; SET LOCAL lock_timeout = 2000; SAVEPOINT pgshift_compare"
        );
    }
}
