//! Routed reads: each reference to the old table becomes a derived table over the new schema with exactly the
//! old table's columns, in order, under the old name. Postgres flattens the subquery, so indexes on the new
//! table are used, and `SELECT *`, qualified column references and `FOR UPDATE` keep working.

use super::pg::SYSTEM_COLUMNS;
use super::refusal::{RefusalReason, Unrewritable};
use super::sqltext::fold;
use super::sqltext::quote_ident;
use super::{action, Action, Context, Planned, Refusal, Schema};
use crate::config::migration::{Migration, MigrationKind};
use crate::rewrite::ActionKind;
use crate::routing::Route;
use sqlparser::ast::{
    visit_expressions_mut, Expr, Query, Statement, TableAlias, TableFactor, VisitMut, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// The SELECT that presents the new schema in the old table's shape.
pub fn derived_select(m: &Migration, schema: &Schema) -> Result<String, Unrewritable> {
    old_shape_select(m, schema, None)
}

/// The old table's columns computed from new-side rows, read from `from` (default: the new table).
pub fn old_shape_select(
    m: &Migration,
    schema: &Schema,
    from_override: Option<&str>,
) -> Result<String, Unrewritable> {
    let items: Vec<String> = old_shape_columns(m, schema)?
        .into_iter()
        .map(|(col, expr)| {
            if expr == quote_ident(&col) {
                expr
            } else {
                format!("{expr} AS {}", quote_ident(&col))
            }
        })
        .collect();
    let from = match m.kind {
        MigrationKind::Table => {
            let new = m.new_table.as_ref().expect("table kind has new_table");
            format!("{}.{}", quote_ident(&new.schema), quote_ident(&new.name))
        }
        MigrationKind::Column => format!(
            "{}.{}",
            quote_ident(&m.table.schema),
            quote_ident(&m.table.name)
        ),
    };
    Ok(format!(
        "SELECT {} FROM {}",
        items.join(", "),
        from_override.unwrap_or(&from)
    ))
}

/// Each old column with the expression over new-side columns that gives its value, in the old column's type:
/// the `down` direction of the mapping, shared by routed reads, `new_primary` writes, backfill and verify.
pub fn old_shape_columns(
    m: &Migration,
    schema: &Schema,
) -> Result<Vec<(String, String)>, Unrewritable> {
    let old_cols = schema.columns.get(&m.table).ok_or_else(|| {
        RefusalReason::ColumnsUnknown.because(format!(
            "the columns of {} are not known in this session",
            m.table
        ))
    })?;
    let new_cols = match m.kind {
        MigrationKind::Table => {
            let new = m.new_table.as_ref().expect("table kind has new_table");
            schema.columns.get(new).ok_or_else(|| {
                RefusalReason::ColumnsUnknown.because(format!(
                    "the columns of {new} are not known in this session"
                ))
            })?
        }
        MigrationKind::Column => old_cols,
    };
    let new_table = match m.kind {
        MigrationKind::Table => m.new_table.as_ref().expect("table kind has new_table"),
        MigrationKind::Column => &m.table,
    };
    let mut items = Vec::with_capacity(old_cols.len());
    for col in old_cols {
        let mapped = m.columns.iter().find(|c| c.old.eq_ignore_ascii_case(col));
        let (expr, source_type) = match mapped {
            Some(c) => match &c.down {
                Some(down) => (format!("({down})"), None),
                None => {
                    let new = c.new.to_lowercase();
                    (quote_ident(&new), schema.type_of(new_table, &new))
                }
            },
            None if new_cols.contains(col) => (quote_ident(col), schema.type_of(new_table, col)),
            None => {
                return Err(RefusalReason::Other
                    .because(format!("column {col} has no counterpart in the new schema")))
            }
        };
        // The client sees the old column's type (and typmod), whatever the new side stores.
        let expr = match schema.type_of(&m.table, col) {
            Some(old_type) if source_type != Some(old_type) => {
                format!("CAST({expr} AS {old_type})")
            }
            _ => expr,
        };
        items.push((col.clone(), expr));
    }
    Ok(items)
}

fn parse_query(sql: &str) -> Result<Query, Unrewritable> {
    match Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .map_err(RefusalReason::other)?
        .pop()
    {
        Some(Statement::Query(q)) => Ok(*q),
        _ => Err(RefusalReason::Other.because("not a query")),
    }
}

struct Router<'c, 'a> {
    ctx: &'c Context<'a>,
    ctes: &'c [String],
    actions: Vec<Action>,
    changed: bool,
    routed: Vec<Routed>,
}

/// A reference to the old table that now reads the derived table.
struct Routed {
    /// The name it is known by in the statement.
    alias: String,
    /// (schema, table) when the statement names it without an alias, so `schema.table.column` may appear.
    qualified: Option<(String, String)>,
    columns: Vec<String>,
}

/// What the rest of a routed statement needs: three-part names shortened to `table.column`, which the derived
/// table answers to. `Err` when it reads something only the old table has: system columns, or the row itself
/// (its type is the old table's row type; a derived table's is an anonymous record).
fn adapt_references(statement: &mut Statement, routed: &[Routed]) -> Result<(), ()> {
    let mut ok = true;
    let _ = visit_expressions_mut(statement, |e| {
        match e {
            Expr::Identifier(i) => {
                let name = fold(i);
                let whole_row = routed
                    .iter()
                    .any(|r| r.alias == name && !r.columns.contains(&name));
                if SYSTEM_COLUMNS.contains(&name.as_str()) || whole_row {
                    ok = false;
                }
            }
            Expr::CompoundIdentifier(parts) => {
                let folded: Vec<String> = parts.iter().map(fold).collect();
                if folded
                    .last()
                    .is_some_and(|l| SYSTEM_COLUMNS.contains(&l.as_str()))
                {
                    ok = false;
                }
                if let [schema, table, _] = folded.as_slice() {
                    if routed
                        .iter()
                        .any(|r| r.qualified.as_ref() == Some(&(schema.clone(), table.clone())))
                    {
                        parts.remove(0);
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

impl VisitorMut for Router<'_, '_> {
    type Break = ();

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let Some(target) = self.ctx.resolve(name, self.ctes) else {
            return ControlFlow::Continue(());
        };
        if target.route == Route::Old {
            self.actions.push(action(target, ActionKind::ReadOld));
            return ControlFlow::Continue(());
        }
        let derived =
            derived_select(target.migration, self.ctx.schema).and_then(|sql| parse_query(&sql));
        let subquery = match derived {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(migration = %target.migration.name, error = %e, "read served from the old schema");
                self.actions
                    .push(action(target, ActionKind::ReadUnrewritable));
                return ControlFlow::Continue(());
            }
        };
        let alias_given = alias.is_some();
        let alias = alias.clone().or_else(|| {
            name.0.last().and_then(|part| match part {
                sqlparser::ast::ObjectNamePart::Identifier(ident) => Some(TableAlias {
                    explicit: true,
                    name: ident.clone(),
                    columns: vec![],
                    at: None,
                }),
                _ => None,
            })
        });
        self.actions.push(action(target, ActionKind::ReadNew));
        if let Some(a) = &alias {
            self.routed.push(Routed {
                alias: fold(&a.name),
                qualified: (!alias_given).then(|| {
                    (
                        target.migration.table.schema.clone(),
                        target.migration.table.name.clone(),
                    )
                }),
                columns: self
                    .ctx
                    .schema
                    .columns
                    .get(&target.migration.table)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        *factor = TableFactor::Derived {
            lateral: false,
            subquery: Box::new(subquery),
            alias,
            sample: None,
        };
        self.changed = true;
        ControlFlow::Continue(())
    }
}

pub(super) fn route(
    mut statement: Statement,
    ctx: &Context<'_>,
    ctes: &[String],
    actions: &mut Vec<Action>,
) -> Result<Planned, Refusal> {
    let mut router = Router {
        ctx,
        ctes,
        actions: Vec::new(),
        changed: false,
        routed: Vec::new(),
    };
    let _ = statement.visit(&mut router);
    let Router {
        actions: mut mine,
        changed,
        routed,
        ..
    } = router;
    if changed && adapt_references(&mut statement, &routed).is_err() {
        // Served from the old table, as written.
        for a in mine.iter_mut().filter(|a| a.what == ActionKind::ReadNew) {
            a.what = ActionKind::ReadUnrewritable;
        }
        actions.extend(mine);
        return Ok(Planned::Unchanged);
    }
    actions.extend(mine);
    if changed {
        Ok(Planned::Changed(statement.to_string(), super::Shape::Same))
    } else {
        Ok(Planned::Unchanged)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{orders_migration, plan_with, rewritten, users_migration};
    use super::super::Plan;
    use crate::config::migration::WriteMode;
    use crate::rewrite::ActionKind;
    use crate::routing::Route;

    fn users(sql: &str) -> String {
        rewritten(plan_with(
            sql,
            &[users_migration(WriteMode::DualWrite)],
            Route::New,
        ))
        .0
    }

    const USERS_NEW: &str =
        "(SELECT id, display_name AS fullname, email, created_at FROM v2.users)";

    #[test]
    fn table_reads_get_a_derived_table_with_the_old_shape() {
        assert_eq!(
            users("SELECT * FROM users WHERE id = $1"),
            format!("SELECT * FROM {USERS_NEW} AS users WHERE id = $1")
        );
        assert_eq!(
            users("SELECT u.fullname FROM public.users u JOIN orders o ON o.user_id = u.id FOR UPDATE OF u"),
            format!("SELECT u.fullname FROM {USERS_NEW} u JOIN orders o ON o.user_id = u.id FOR UPDATE OF u")
        );
        assert_eq!(
            users("SELECT count(*) FROM orders WHERE user_id IN (SELECT id FROM users WHERE email LIKE $1)"),
            format!("SELECT count(*) FROM orders WHERE user_id IN (SELECT id FROM {USERS_NEW} AS users WHERE email LIKE $1)")
        );
        assert_eq!(
            users("WITH recent AS (SELECT * FROM users ORDER BY created_at DESC LIMIT 5) SELECT fullname FROM recent"),
            format!("WITH recent AS (SELECT * FROM {USERS_NEW} AS users ORDER BY created_at DESC LIMIT 5) SELECT fullname FROM recent")
        );
    }

    #[test]
    fn column_reads_compute_the_old_column_from_the_new() {
        let sql = rewritten(plan_with(
            "SELECT legacy_status, count(*) FROM Orders GROUP BY 1",
            &[orders_migration(WriteMode::DualWrite)],
            Route::New,
        ))
        .0;
        assert_eq!(
            sql,
            "SELECT legacy_status, count(*) FROM (SELECT id, customer, CAST((lower(new_status)) AS text) AS legacy_status, new_status \
             FROM public.orders) AS orders GROUP BY 1"
        );
    }

    #[test]
    fn old_route_and_reads_inside_writes_of_other_tables() {
        let m = [users_migration(WriteMode::DualWrite)];
        let plan = plan_with("SELECT * FROM users", &m, Route::Old);
        assert!(matches!(plan, Plan::Forward { .. }));
        assert_eq!(plan.actions()[0].what, ActionKind::ReadOld);
        assert_eq!(
            users("INSERT INTO audit (name) SELECT fullname FROM users WHERE id = 1"),
            format!(
                "INSERT INTO audit (name) SELECT fullname FROM {USERS_NEW} AS users WHERE id = 1"
            )
        );
    }
}
