//! `pgshift rewrite`: what pgshift would send upstream for one statement, on each read route, or why it refuses
//! it or sends it unchanged.

use super::CliError;
use crate::admin;
use crate::config::{Config, Overrides};
use crate::rewrite::{shadow, DmlTag, Plan, Schema, Shape};
use crate::routing::Route;
use std::path::Path;

async fn load(path: &Path, dsn: Option<&str>) -> Result<(Config, Schema), CliError> {
    let config = Config::load(path, &Overrides::default())?;
    let schema = match dsn {
        Some(dsn) => {
            let client = admin::connect(dsn).await?;
            let migrations: Vec<_> = config.migrations.iter().collect();
            admin::schema(&client, &migrations).await?
        }
        None => Default::default(),
    };
    Ok((config, schema))
}

/// `pgshift rewrite --shadow`: the comparison statements of a read, or why it is not compared.
pub async fn shadow(path: &Path, dsn: Option<&str>, sql: &str) -> Result<(), CliError> {
    let (config, schema) = load(path, dsn).await?;
    let new_plan = admin::rewrite(sql, &config, &schema, Route::New);
    match shadow::compare(sql, &new_plan) {
        Ok(c) => {
            let how = if c.ordered {
                "as sequences (the query orders its rows): the first two columns are 1 when they differ"
            } else {
                "as multisets: rows only in old, rows only in new"
            };
            println!(
                "-- fingerprint {}; compared {how}, then each side's row count",
                c.fingerprint
            );
            println!("-- old against new:\n{};", c.old_vs_new);
            println!(
                "-- old against old (the statement's own nondeterminism):\n{};",
                c.old_vs_old
            );
        }
        Err(skip) => println!(
            "-- not compared ({}): {}",
            skip.label(),
            match skip {
                shadow::Skip::NotARead => "only single plain queries are compared",
                shadow::Skip::Locking => "a comparison would take locks on the client's behalf",
                shadow::Skip::NotRouted =>
                    "the new route does not rewrite it (give --dsn so the catalog is known)",
            }
        ),
    }
    Ok(())
}

pub async fn run(
    path: &Path,
    route: Option<&str>,
    dsn: Option<&str>,
    sql: &str,
) -> Result<(), CliError> {
    let (config, schema) = load(path, dsn).await?;
    let routes = match route {
        Some("new") => vec![Route::New],
        Some(_) => vec![Route::Old],
        None => vec![Route::Old, Route::New],
    };
    for route in routes {
        println!(
            "-- reads routed to {}:",
            if route == Route::New { "new" } else { "old" }
        );
        match admin::rewrite(sql, &config, &schema, route) {
            Plan::Forward { actions } => println!(
                "{sql}\n-- sent unchanged: {}",
                admin::why_unchanged(sql, &config, &actions, dsn.is_some())
            ),
            Plan::Rewrite { sql, shapes, .. } => {
                println!("{sql}");
                for (i, shape) in shapes.iter().enumerate() {
                    if let Shape::Dml { tag, returning, .. } = shape {
                        let rows = if *returning {
                            "its RETURNING rows are the client's"
                        } else {
                            "its zero-column rows are dropped"
                        };
                        let tag = match tag {
                            DmlTag::Insert => "INSERT 0 n",
                            DmlTag::Update => "UPDATE n",
                            DmlTag::Delete => "DELETE n",
                        };
                        println!(
                            "-- statement {}: the client sees the command tag {tag}; {rows}",
                            i + 1
                        );
                    }
                }
            }
            Plan::Refuse(r) => println!("-- refused with SQLSTATE 0A000: {}", r.message()),
        }
    }
    Ok(())
}
