//! `pgshift rewrite`: what pgshift would send upstream for one statement, on each read route, or why it refuses
//! it or sends it unchanged.

use super::CliError;
use crate::admin;
use crate::config::{Config, Overrides};
use crate::rewrite::{DmlTag, Plan, Schema, Shape};
use crate::routing::Route;
use crate::shadow::compare::{self, Side};
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
    match compare::compare(sql, &new_plan) {
        Ok(c) => {
            let how = if c.ordered {
                "position by position too (the query orders its rows)"
            } else {
                "as multisets"
            };
            println!("-- fingerprint {}; compared {how}", c.fingerprint);
            if let Some(why) = c.nondeterministic {
                println!("-- its rows depend on the plan ({why}): differences count as noise");
            }
            println!(
                "-- columns: rows only in old, rows only in new, old rows, new rows, order differs"
            );
            println!("-- old against new:\n{};", c.old_vs_new());
            println!(
                "-- old against old (the statement's own nondeterminism):\n{};",
                c.against_itself(Side::Old)
            );
        }
        Err(skip) => {
            let hint = if skip == compare::Skip::NotRouted && dsn.is_none() {
                " (give --dsn so the catalog is known)"
            } else {
                ""
            };
            println!(
                "-- not compared ({}): {}{hint}",
                skip.label(),
                skip.explain()
            );
        }
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
