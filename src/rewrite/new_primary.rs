//! The `new_primary` phase: the new side is the source of truth. The application still speaks the old schema,
//! so its statement is translated to the new table (old column references become their `down` expressions over
//! new columns, written values go through `up`), and the rows it touched are mirrored back to the old table in
//! the same statement. Conservative on purpose: forms whose translation could change their meaning are refused.

use super::ast::{
    assignment_columns, ident, last_part, parse_expr, repeatable, substitute, take_returning,
    target_alias,
};
use super::builders::{assemble, columns_of, delete_matching, new_key, table_text, upsert_from};
use super::read_route::old_shape_select;
use super::refusal::{RefusalReason, Unrewritable};
use super::shape::{DmlTag, Shape};
use super::sqltext::{fold, quote_ident};
use super::{refuse, splice, Refusal, Schema, Source, Target};
use crate::config::migration::{Migration, MigrationKind};
use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, AssignmentTarget, Expr, Ident, Insert,
    OnConflictAction, OnInsert, SetExpr, Statement, With,
};
use std::collections::HashMap;
use std::ops::ControlFlow;

const NEW_CTE: &str = "__pgshift_new";
const OLD_CTE: &str = "__pgshift_old";

/// For each old column: the expression over new columns that gives its value.
fn old_from_new(m: &Migration, old_cols: &[String]) -> Result<HashMap<String, Expr>, Unrewritable> {
    let mut out = HashMap::new();
    for col in old_cols {
        let expr = match m.columns.iter().find(|c| c.old.eq_ignore_ascii_case(col)) {
            Some(c) => match &c.down {
                Some(down) => Expr::Nested(Box::new(parse_expr(down)?)),
                None => Expr::Identifier(ident(&c.new.to_lowercase())),
            },
            None => Expr::Identifier(ident(col)),
        };
        out.insert(col.clone(), expr);
    }
    Ok(out)
}

/// Rewrites references to the target's old columns (bare, or qualified with its alias) into new-side terms.
fn translate(expr: &Expr, alias: &str, old: &HashMap<String, Expr>) -> Expr {
    let mut out = expr.clone();
    let _ = visit_expressions_mut(&mut out, |e| {
        let column = match e {
            Expr::Identifier(i) => Some(fold(i)),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 && fold(&parts[0]) == alias => {
                Some(fold(&parts[1]))
            }
            _ => None,
        };
        if let Some(replacement) = column.and_then(|c| old.get(&c)) {
            *e = replacement.clone();
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

fn has_subquery(expr: &Expr) -> bool {
    let mut found = false;
    let _ = visit_expressions(expr, |e| {
        if matches!(
            e,
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
        ) {
            found = true;
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// The new column a written old column lands in, and its value: `up` over the written values (and, for
/// columns the statement does not write, their current values).
fn new_value(
    m: &Migration,
    col: &str,
    written: &HashMap<String, Expr>,
) -> Result<(String, Expr), Unrewritable> {
    match m.columns.iter().find(|c| c.old.eq_ignore_ascii_case(col)) {
        Some(c) => {
            let value = match &c.up {
                Some(up) => substitute(&parse_expr(up)?, written),
                None => written[col].clone(),
            };
            Ok((c.new.to_lowercase(), value))
        }
        None => Ok((col.to_owned(), written[col].clone())),
    }
}

const PHASE: &str = "with writes = \"new_primary\"";

pub fn rewrite(
    mut statement: Statement,
    with: Option<With>,
    tag: DmlTag,
    target: &Target<'_>,
    schema: &Schema,
    source: &Source<'_>,
) -> Result<(String, Shape), Refusal> {
    let m = target.migration;
    let fail = |reason: Unrewritable| refuse(target, reason);
    if m.kind == MigrationKind::Column {
        unreachable!("column kind new_primary is handled with the dual-write transform");
    }
    let t = Translation::new(m, schema, &statement).map_err(fail)?;
    let returning = take_returning(&mut statement);
    let primary = match &statement {
        Statement::Insert(insert) => t.insert(insert),
        Statement::Update(update) => t.update(update),
        Statement::Delete(delete) => t.delete(delete),
        _ => Err(RefusalReason::Other.because("not a DML statement")),
    }
    .map_err(fail)?;
    let client_ctes = with.map(|w| {
        (
            w.recursive,
            w.cte_tables.iter().map(|c| c.to_string()).collect(),
        )
    });
    finish(
        &primary,
        client_ctes,
        returning.is_some(),
        tag,
        target,
        schema,
        source,
    )
    .map_err(fail)
}

/// What every translation of a client's write to the new table needs: the mapping, both tables' columns, the
/// old columns as expressions over new ones, and the name the statement gives its target.
struct Translation<'a> {
    m: &'a Migration,
    schema: &'a Schema,
    new_table: String,
    old_cols: Vec<String>,
    new_cols: Vec<String>,
    /// Each old column as its `down` expression over the new columns.
    old: HashMap<String, Expr>,
    alias_ident: Ident,
    alias: String,
}

impl<'a> Translation<'a> {
    fn new(
        m: &'a Migration,
        schema: &'a Schema,
        statement: &Statement,
    ) -> Result<Self, Unrewritable> {
        let new = m.new_table.as_ref().expect("table kind has new_table");
        let old_cols = columns_of(schema, &m.table)?.clone();
        let new_cols = columns_of(schema, new)?.clone();
        let old = old_from_new(m, &old_cols)?;
        let alias_ident = target_alias(statement)
            .ok_or_else(|| RefusalReason::other("the target table could not be identified"))?;
        Ok(Translation {
            m,
            schema,
            new_table: table_text(new),
            old_cols,
            new_cols,
            old,
            alias: fold(&alias_ident),
            alias_ident,
        })
    }

    /// The INSERT on the new table, `RETURNING *`.
    fn insert(&self, insert: &Insert) -> Result<String, Unrewritable> {
        let columns: Vec<String> = insert
            .columns
            .iter()
            .filter_map(|n| last_part(n).map(|i| fold(&i)))
            .collect();
        match insert.source.as_deref() {
            Some(q) => match q.body.as_ref() {
                SetExpr::Values(v) if q.with.is_none() && q.order_by.is_none() => {
                    let rows = v.rows.iter().map(|r| r.content.clone()).collect();
                    self.insert_values(insert, columns, rows)
                }
                _ => self.insert_select(insert, columns, q),
            },
            None => self.insert_values(insert, columns, Vec::new()),
        }
    }

    /// INSERT … SELECT (SQLAlchemy's multi-row insert from VALUES, Django's UNNEST): the client's query becomes
    /// a derived table whose columns are the inserted old columns, read through `up` into new.
    fn insert_select(
        &self,
        insert: &Insert,
        columns: Vec<String>,
        query: &sqlparser::ast::Query,
    ) -> Result<String, Unrewritable> {
        if columns.is_empty() {
            return Err(RefusalReason::NewPrimary.because(format!(
                "INSERT … SELECT without a column list is not supported {PHASE}"
            )));
        }
        if untyped_parameter_selected(query) {
            return Err(RefusalReason::NewPrimary.because(format!(
                "INSERT … SELECT of a bare parameter is not supported {PHASE}: its type would be inferred differently; cast it (e.g. $1::text)"
            )));
        }
        let mut written: HashMap<String, Expr> = HashMap::new();
        for col in &columns {
            if !self.old_cols.contains(col) {
                return Err(RefusalReason::UnknownColumn
                    .because(format!("column {col} is not a column of {}", self.m.table)));
            }
            let column = Expr::CompoundIdentifier(vec![ident(SOURCE), ident(col)]);
            let typed = match self.schema.type_of(&self.m.table, col) {
                Some(ty) => parse_expr(&format!("CAST({column} AS {ty})"))?,
                None => column,
            };
            written.insert(col.clone(), typed);
        }
        let mut names = Vec::new();
        let mut values = Vec::new();
        for col in &columns {
            let (name, value) = new_value(self.m, col, &written)?;
            if !self.new_cols.contains(&name) {
                return Err(RefusalReason::Other
                    .because(format!("column {name} does not exist in the new table")));
            }
            names.push(quote_ident(&name));
            values.push(value.to_string());
        }
        let aliases: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let conflict = conflict_clause(self.m, insert, PHASE)?;
        Ok(format!(
            "INSERT INTO {new_table} ({}) SELECT {} FROM ({query}) AS {SOURCE}({}){conflict} RETURNING *",
            names.join(", "),
            values.join(", "),
            aliases.join(", "),
            new_table = self.new_table
        ))
    }

    fn insert_values(
        &self,
        insert: &Insert,
        mut columns: Vec<String>,
        rows: Vec<Vec<Expr>>,
    ) -> Result<String, Unrewritable> {
        if columns.is_empty() {
            let width = rows.first().map_or(0, Vec::len);
            columns = self.old_cols.iter().take(width).cloned().collect();
        }
        let mut new_names = Vec::new();
        let mut new_rows: Vec<Vec<String>> = vec![Vec::new(); rows.len()];
        for col in &columns {
            if !self.old_cols.contains(col) {
                return Err(RefusalReason::UnknownColumn
                    .because(format!("column {col} is not a column of {}", self.m.table)));
            }
        }
        for col in &columns {
            let mut name = None;
            for (i, row) in rows.iter().enumerate() {
                let written: HashMap<String, Expr> =
                    columns.iter().cloned().zip(row.iter().cloned()).collect();
                if !row.iter().all(repeatable) {
                    return Err(RefusalReason::UnrepeatableValue.because(format!(
                        "VALUES that may change if evaluated twice are not supported {PHASE}"
                    )));
                }
                let (n, value) = new_value(self.m, col, &written)?;
                name = Some(n);
                new_rows[i].push(value.to_string());
            }
            let name = name.unwrap_or_else(|| {
                new_value(
                    self.m,
                    col,
                    &HashMap::from([(
                        col.clone(),
                        Expr::Value(sqlparser::ast::Value::Null.into()),
                    )]),
                )
                .map(|(n, _)| n)
                .unwrap_or_default()
            });
            if !self.new_cols.contains(&name) {
                return Err(RefusalReason::Other
                    .because(format!("column {name} does not exist in the new table")));
            }
            new_names.push(quote_ident(&name));
        }
        let values = if rows.is_empty() {
            "DEFAULT VALUES".to_owned()
        } else {
            format!(
                "VALUES {}",
                new_rows
                    .iter()
                    .map(|r| format!("({})", r.join(", ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let conflict = conflict_clause(self.m, insert, PHASE)?;
        let cols = if new_names.is_empty() {
            String::new()
        } else {
            format!(" ({})", new_names.join(", "))
        };
        Ok(format!(
            "INSERT INTO {new_table}{cols} {values}{conflict} RETURNING *",
            new_table = self.new_table
        ))
    }

    /// The UPDATE on the new table, `RETURNING` its rows.
    fn update(&self, update: &sqlparser::ast::Update) -> Result<String, Unrewritable> {
        if update.from.is_some() {
            return Err(RefusalReason::NewPrimary
                .because(format!("UPDATE … FROM is not supported {PHASE}")));
        }
        let assigned = assignment_columns(&update.assignments);
        let mut written: HashMap<String, Expr> = self.old.clone();
        for a in &update.assignments {
            let AssignmentTarget::ColumnName(name) = &a.target else {
                return Err(RefusalReason::NewPrimary.because(format!(
                    "multiple-column assignments are not supported {PHASE}"
                )));
            };
            if has_subquery(&a.value) || !repeatable(&a.value) {
                return Err(RefusalReason::UnrepeatableValue.because(format!(
                    "a value that may change if evaluated twice is not supported {PHASE}"
                )));
            }
            let col = last_part(name).map(|i| fold(&i)).unwrap_or_default();
            written.insert(
                col,
                Expr::Nested(Box::new(translate(&a.value, &self.alias, &self.old))),
            );
        }
        let mut sets = Vec::new();
        for col in &assigned {
            if !self.old_cols.contains(col) {
                return Err(RefusalReason::UnknownColumn
                    .because(format!("column {col} is not a column of {}", self.m.table)));
            }
            let (name, value) = new_value(self.m, col, &written)?;
            sets.push(format!("{} = {value}", quote_ident(&name)));
        }
        let condition = self.condition(update.selection.as_ref())?;
        Ok(format!(
            "UPDATE {new_table} AS {alias} SET {}{condition} RETURNING {alias}.*",
            sets.join(", "),
            new_table = self.new_table,
            alias = self.alias_ident
        ))
    }

    /// ` WHERE …` over the new table's columns (old columns read through `down`), or nothing.
    fn condition(&self, selection: Option<&Expr>) -> Result<String, Unrewritable> {
        match selection {
            Some(cond) if has_subquery(cond) => Err(RefusalReason::NewPrimary.because(format!(
                "a WHERE clause with a subquery is not supported {PHASE}"
            ))),
            Some(cond) => Ok(format!(
                " WHERE {}",
                translate(cond, &self.alias, &self.old)
            )),
            None => Ok(String::new()),
        }
    }

    /// The DELETE on the new table, `RETURNING` its rows.
    fn delete(&self, delete: &sqlparser::ast::Delete) -> Result<String, Unrewritable> {
        if delete.using.is_some() {
            return Err(RefusalReason::NewPrimary
                .because(format!("DELETE … USING is not supported {PHASE}")));
        }
        let condition = self.condition(delete.selection.as_ref())?;
        Ok(format!(
            "DELETE FROM {new_table} AS {alias}{condition} RETURNING {alias}.*",
            new_table = self.new_table,
            alias = self.alias_ident
        ))
    }
}

/// The statement around the write to the new table (`primary`, which returns the new rows): the rows mirrored
/// back to old in old's shape, and the client's RETURNING read from them in old's shape and types.
pub(super) fn finish(
    primary: &str,
    client_ctes: Option<(bool, Vec<String>)>,
    returning: bool,
    tag: DmlTag,
    target: &Target<'_>,
    schema: &Schema,
    source: &Source<'_>,
) -> Result<(String, Shape), Unrewritable> {
    let m = target.migration;
    let old_table = table_text(&m.table);
    let old_cols = columns_of(schema, &m.table)?.clone();
    let new_cols = columns_of(
        schema,
        m.new_table.as_ref().expect("table kind has new_table"),
    )?
    .clone();
    let old = old_from_new(m, &old_cols)?;
    // Mirror the touched rows back to old, in old's shape.
    let key = new_key(m);
    let mirror = match tag {
        DmlTag::Insert | DmlTag::Update => {
            let cols: Vec<(String, String)> = old_cols
                .iter()
                .filter(|c| {
                    m.columns.iter().any(|mc| mc.old.eq_ignore_ascii_case(c))
                        || new_cols.contains(c)
                })
                .map(|c| (c.clone(), old[c].to_string()))
                .collect();
            upsert_from(&old_table, &cols, NEW_CTE, &m.key)
        }
        DmlTag::Delete => {
            let pairs: Vec<(String, String)> =
                m.key.iter().cloned().zip(key.iter().cloned()).collect();
            delete_matching(&old_table, NEW_CTE, &pairs)
        }
    };
    let shaped = old_shape_select(m, schema, Some(NEW_CTE))?;
    // The rows come from the new table: system columns and whole-row references of old have no value here.
    let pg_alias = splice::target_alias(source.node)?;
    let outer = splice::returning_for(source, m, &old_cols, false).map_err(|e| e.and(PHASE))?;
    let mut from = format!("({shaped}) AS {}", quote_ident(&pg_alias));
    // Postgres rejects aggregates, window and set-returning functions in RETURNING; the outer SELECT would
    // accept them. A WHERE clause rejects them as well (same SQLSTATEs), and `false AND …` never evaluates.
    let parts = splice::dml_parts(source.text, source.offset, source.node)?;
    if !parts.returning_exprs.is_empty() {
        let exprs: Vec<&str> = parts
            .returning_exprs
            .iter()
            .map(|r| &source.text[r.clone()])
            .collect();
        from.push_str(&format!(
            " LEFT JOIN LATERAL (SELECT WHERE false AND ROW({}) IS NULL) AS __pgshift_check ON true",
            exprs.join(", ")
        ));
    }
    let (sql, mut shape) = assemble(
        client_ctes,
        [
            format!("{NEW_CTE} AS ({primary})"),
            format!("{OLD_CTE} AS ({mirror})"),
        ],
        returning.then_some(outer.list),
        &from,
        tag,
    );
    // The rows come from the new table: describe RETURNING fields as the old columns they stand for.
    if let Shape::Dml { origins, .. } = &mut shape {
        *origins = super::origins::of_returning(source.node, target, schema);
    }
    Ok((sql, shape))
}

/// The ON CONFLICT clause for the new table: inference columns renamed, `col = EXCLUDED.col` assignments only.
fn conflict_clause(
    m: &Migration,
    insert: &sqlparser::ast::Insert,
    phase: &str,
) -> Result<String, Unrewritable> {
    Ok(match &insert.on {
        None => String::new(),
        Some(OnInsert::OnConflict(oc)) => {
            let target_cols = match &oc.conflict_target {
                Some(sqlparser::ast::ConflictTarget::Columns(cols)) => {
                    cols.iter().map(fold).collect::<Vec<_>>()
                }
                None => Vec::new(),
                _ => {
                    return Err(RefusalReason::NewPrimary.because(format!(
                        "ON CONFLICT ON CONSTRAINT is not supported {phase}"
                    )))
                }
            };
            let renamed: Vec<String> = target_cols
                .iter()
                .map(|c| {
                    new_value(
                        m,
                        c,
                        &HashMap::from([(c.clone(), Expr::Identifier(ident(c)))]),
                    )
                    .map(|(n, _)| quote_ident(&n))
                })
                .collect::<Result<_, _>>()?;
            let target_text = if renamed.is_empty() {
                String::new()
            } else {
                format!(" ({})", renamed.join(", "))
            };
            match &oc.action {
                OnConflictAction::DoNothing => {
                    format!(" ON CONFLICT{target_text} DO NOTHING")
                }
                OnConflictAction::DoUpdate(du) => {
                    if du.selection.is_some() {
                        return Err(RefusalReason::NewPrimary.because(format!(
                            "ON CONFLICT … DO UPDATE … WHERE is not supported {phase}"
                        )));
                    }
                    let mut sets = Vec::new();
                    for a in &du.assignments {
                        let AssignmentTarget::ColumnName(name) = &a.target else {
                            return Err(RefusalReason::NewPrimary.because(format!(
                                "multiple-column assignments are not supported {phase}"
                            )));
                        };
                        let col = last_part(name).map(|i| fold(&i)).unwrap_or_default();
                        let plain_excluded = matches!(&a.value, Expr::CompoundIdentifier(p)
                            if p.len() == 2 && fold(&p[0]) == "excluded" && fold(&p[1]) == col);
                        if !plain_excluded {
                            return Err(RefusalReason::NewPrimary.because(format!(
                                "ON CONFLICT DO UPDATE supports only `col = EXCLUDED.col` {phase}"
                            )));
                        }
                        let (new_name, _) = new_value(
                            m,
                            &col,
                            &HashMap::from([(col.clone(), Expr::Identifier(ident(&col)))]),
                        )?;
                        sets.push(format!("{0} = EXCLUDED.{0}", quote_ident(&new_name)));
                    }
                    format!(
                        " ON CONFLICT{target_text} DO UPDATE SET {}",
                        sets.join(", ")
                    )
                }
            }
        }
        Some(_) => return Err(RefusalReason::Other.because("unsupported ON clause")),
    })
}

/// The derived table the client's INSERT … SELECT becomes.
const SOURCE: &str = "__pgshift_s";

/// A bare `$n` in the select list takes its type from the insert's target column; inside a derived table it
/// would become text.
fn untyped_parameter_selected(query: &sqlparser::ast::Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    select.projection.iter().any(|item| {
        matches!(
            item,
            sqlparser::ast::SelectItem::UnnamedExpr(Expr::Value(v))
                | sqlparser::ast::SelectItem::ExprWithAlias { expr: Expr::Value(v), .. }
                if matches!(v.value, sqlparser::ast::Value::Placeholder(_))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{plan_with, rewritten, users_migration};
    use super::super::{Plan, Shape};
    use crate::config::migration::WriteMode;
    use crate::rewrite::DmlTag;
    use crate::routing::Route;

    fn users(sql: &str) -> (String, Vec<Shape>) {
        rewritten(plan_with(
            sql,
            &[users_migration(WriteMode::NewPrimary)],
            Route::New,
        ))
    }

    const MIRROR: &str = "__pgshift_old AS (INSERT INTO public.users (id, fullname, email, created_at) \
        SELECT id, display_name, email, created_at FROM __pgshift_new ON CONFLICT (id) \
        DO UPDATE SET fullname = EXCLUDED.fullname, email = EXCLUDED.email, created_at = EXCLUDED.created_at)";
    const SHAPE: &str =
        "(SELECT id, display_name AS fullname, email, created_at FROM __pgshift_new)";

    #[test]
    fn insert_writes_new_first_and_mirrors_to_old() {
        let (sql, shapes) =
            users("INSERT INTO users (fullname, email) VALUES ($1, $2) RETURNING id, fullname");
        assert_eq!(
            sql,
            format!(
                "WITH __pgshift_new AS (INSERT INTO v2.users AS users (display_name, email) VALUES ($1, $2) RETURNING users.*), \
                 {MIRROR} SELECT id, fullname FROM {SHAPE} AS users"
            )
        );
        assert_eq!(
            shapes,
            vec![Shape::Dml {
                tag: DmlTag::Insert,
                returning: true,
                origins: None,
            }]
        );
    }

    #[test]
    fn update_and_delete_translate_old_columns() {
        let (sql, _) = users(
            "UPDATE users u SET fullname = upper(u.fullname), email = $1 WHERE fullname = $2",
        );
        assert_eq!(
            sql,
            format!(
                "WITH __pgshift_new AS (UPDATE v2.users u SET display_name = upper(u.display_name), email = $1 \
                 WHERE display_name = $2 RETURNING u.*), {MIRROR} SELECT FROM {SHAPE} AS u"
            )
        );
        let (sql, _) = users("DELETE FROM users WHERE fullname LIKE 'x%'");
        assert_eq!(
            sql,
            format!(
                "WITH __pgshift_new AS (DELETE FROM v2.users AS users WHERE display_name LIKE 'x%' RETURNING users.*), \
                 __pgshift_old AS (DELETE FROM public.users AS __pgshift_t USING __pgshift_new \
                 WHERE __pgshift_t.id = __pgshift_new.id) SELECT FROM {SHAPE} AS users"
            )
        );
    }

    #[test]
    fn risky_forms_are_refused() {
        let m = [users_migration(WriteMode::NewPrimary)];
        for sql in [
            "UPDATE users SET email = b.email FROM banned b WHERE id = b.id",
            "DELETE FROM users WHERE id IN (SELECT id FROM banned)",
            "INSERT INTO users SELECT * FROM imports",
            "INSERT INTO users (id, fullname) VALUES (1, 'a') ON CONFLICT ON CONSTRAINT users_pkey DO NOTHING",
        ] {
            assert!(matches!(plan_with(sql, &m, Route::New), Plan::Refuse(_)), "{sql}");
        }
    }

    #[test]
    fn statements_are_spliced_onto_the_new_table() {
        // Correlated subqueries, FROM, upserts: qualified references are translated, the rest kept as sent.
        let (sql, _) = users(
            "UPDATE users SET fullname = (SELECT count(*) FROM orders WHERE orders.user_id = users.id)::text \
             /* c */ WHERE users.email ISNULL",
        );
        assert!(
            sql.starts_with(
                "WITH __pgshift_new AS (UPDATE v2.users AS users SET display_name = (SELECT count(*) FROM orders \
                 WHERE orders.user_id = users.id)::text /* c */ WHERE users.email ISNULL RETURNING users.*)"
            ),
            "{sql}"
        );
        let (sql, _) = users(
            "INSERT INTO users (id, fullname) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname || users.fullname",
        );
        assert!(
            sql.starts_with(
                "WITH __pgshift_new AS (INSERT INTO v2.users AS users (id, display_name) VALUES (1, 'a') ON CONFLICT (id) \
                 DO UPDATE SET display_name = excluded.display_name || users.display_name RETURNING users.*)"
            ),
            "{sql}"
        );
    }

    #[test]
    fn insert_select_reads_the_query_as_a_derived_table() {
        // SQLAlchemy's multi-row insert: nothing to convert, so it is spliced onto the new table as it is.
        let (sql, _) = users(
            "INSERT INTO users (fullname, email) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES ($1, $2, 0), ($3, $4, 1)) \
             AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING users.id, users.id AS id__1",
        );
        assert!(
            sql.starts_with(
                "WITH __pgshift_new AS (INSERT INTO v2.users AS users (display_name, email) SELECT p0::VARCHAR, p1::VARCHAR \
                 FROM (VALUES ($1, $2, 0), ($3, $4, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING users.*)"
            ),
            "{sql}"
        );
    }
}
