//! Dual writes: the client's INSERT/UPDATE/DELETE on the old table also writes the new table or column, in the
//! same statement, so both sides change atomically in the client's own transaction with identical values.
//!
//! Table kind: a data-modifying CTE runs the original statement and feeds exactly the rows it touched (their
//! post-image, with generated ids, defaults and `now()` as stored) to a mirror upsert or delete on the new table.
//! Column kind: the statement gains `new = up(…)` next to every write of `old`.

use super::ast::{assignment_columns, ident, last_part, parse_expr, repeatable, substitute};
use super::builders::columns_of;
use super::refusal::{RefusalReason, Unrewritable};
use super::shape::Shape;
use super::sqltext::{fold, quote_ident};
use super::{refuse, Refusal, Schema, Target};
use crate::config::migration::{Migration, MigrationKind, TableName};
use sqlparser::ast::{
    visit_expressions, Assignment, AssignmentTarget, ConflictTarget, Expr, Ident, ObjectName,
    OnConflictAction, OnInsert, SelectItem, SetExpr, Statement, With,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashMap;
use std::ops::ControlFlow;

/// The sqlparser fallback for writes in the `dual_write` phase (and column-kind writes in `new_primary`); the
/// planner sends table-kind `new_primary` writes to [`super::new_primary`].
pub fn rewrite(
    statement: Statement,
    with: Option<With>,
    target: &Target<'_>,
    schema: &Schema,
) -> Result<(String, Shape), Refusal> {
    let m = target.migration;
    let new_primary = m.writes == crate::config::migration::WriteMode::NewPrimary;
    match m.kind {
        // Planned from Postgres's parse tree before sqlparser's reading is consulted ([`super::mirror`]).
        MigrationKind::Table => Err(refuse(
            target,
            RefusalReason::other("this statement form is not supported while writes are mirrored"),
        )),
        MigrationKind::Column => {
            let stmt =
                column_kind(statement, m, schema, new_primary).map_err(|r| refuse(target, r))?;
            let text = match with {
                Some(with) => format!("{with} {stmt}"),
                None => stmt.to_string(),
            };
            Ok((text, Shape::Same))
        }
    }
}

/// Mirroring is keyed on the key columns: changing them would orphan the mirrored row.
pub(super) fn check_key_not_updated(
    statement: &Statement,
    m: &Migration,
) -> Result<(), Unrewritable> {
    let mut assigned = Vec::new();
    match statement {
        Statement::Update(u) => assigned.extend(assignment_columns(&u.assignments)),
        Statement::Insert(i) => {
            if let Some(OnInsert::OnConflict(oc)) = &i.on {
                if let OnConflictAction::DoUpdate(du) = &oc.action {
                    let conflict: Vec<String> = match &oc.conflict_target {
                        Some(ConflictTarget::Columns(cols)) => cols.iter().map(fold).collect(),
                        _ => Vec::new(),
                    };
                    // `SET k = EXCLUDED.k` where the conflict is on k changes nothing (ORMs' upserts send it).
                    let no_op = |a: &Assignment| {
                        let [col] = &assignment_columns(std::slice::from_ref(a))[..] else {
                            return false;
                        };
                        conflict.contains(col)
                            && matches!(&a.value, Expr::CompoundIdentifier(p)
                                if p.len() == 2 && fold(&p[0]) == "excluded" && &fold(&p[1]) == col)
                    };
                    let changing: Vec<Assignment> = du
                        .assignments
                        .iter()
                        .filter(|a| !no_op(a))
                        .cloned()
                        .collect();
                    assigned.extend(assignment_columns(&changing));
                }
            }
        }
        _ => {}
    }
    match assigned.iter().find(|c| m.key.contains(c)) {
        Some(c) => Err(RefusalReason::KeyUpdate.because(format!(
            "an UPDATE of key column {c} is not supported: the mirrored row is found by its key"
        ))),
        None => Ok(()),
    }
}

/// The `up` expression of each mapping, parsed (identity when absent).
fn ups(m: &Migration) -> Result<Vec<(String, String, Expr)>, Unrewritable> {
    m.columns
        .iter()
        .map(|c| {
            let up = match &c.up {
                Some(up) => parse_expr(up)?,
                None => Expr::Identifier(ident(&c.old.to_lowercase())),
            };
            Ok((c.old.to_lowercase(), c.new.to_lowercase(), up))
        })
        .collect()
}

/// For `new_primary`: each old column's value derived back from the new one, `down` over the new column.
fn downs(m: &Migration) -> Result<HashMap<String, (String, Expr)>, Unrewritable> {
    m.columns
        .iter()
        .map(|c| {
            let down = match &c.down {
                Some(down) => parse_expr(down)?,
                None => Expr::Identifier(ident(&c.new.to_lowercase())),
            };
            Ok((c.old.to_lowercase(), (c.new.to_lowercase(), down)))
        })
        .collect()
}

/// The value stored in `old` when new is primary: `down(up(value))`.
fn derived_old(downs: &HashMap<String, (String, Expr)>, old: &str, new_value: &Expr) -> Expr {
    let (new, down) = &downs[old];
    substitute(down, &HashMap::from([(new.clone(), new_value.clone())]))
}

/// What a column-kind rewrite needs to compute new values: the mapping, and the table's catalog.
struct ColumnMapping<'a> {
    ups: Vec<(String, String, Expr)>,
    /// `Some` in `new_primary`: old then stores `down` of the new value.
    downs: Option<HashMap<String, (String, Expr)>>,
    schema: &'a Schema,
    table: &'a TableName,
}

impl ColumnMapping<'_> {
    /// `value` as Postgres stores it in `column`: cast to the column's type first, so `up` and `down` see the
    /// stored value (an integer parameter for a text column becomes text, as it does directly).
    fn as_stored(&self, column: &str, value: Expr) -> Result<Expr, Unrewritable> {
        let Some(ty) = self.schema.type_of(self.table, column) else {
            return Ok(value);
        };
        let data_type = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(ty)
            .and_then(|mut p| p.parse_data_type())
            .map_err(|e| {
                RefusalReason::Other.because(format!("type {ty} of {column} does not parse: {e}"))
            })?;
        Ok(Expr::Cast {
            kind: sqlparser::ast::CastKind::Cast,
            expr: Box::new(Expr::Nested(Box::new(value))),
            data_type,
            format: None,
        })
    }

    /// What `column` holds when the statement leaves it out or writes DEFAULT: its default, or NULL.
    fn default_value(&self, column: &str) -> Result<Expr, Unrewritable> {
        match self.schema.default_of(self.table, column)? {
            None => Ok(Expr::Value(sqlparser::ast::Value::Null.into())),
            Some(text) => {
                let expr = parse_expr(text)?;
                if !repeatable(&expr) {
                    return Err(RefusalReason::UnrepeatableValue.because(format!(
                        "the default of {column} ({text}) may change if evaluated twice, so the new column cannot be computed from it"
                    )));
                }
                Ok(expr)
            }
        }
    }

    /// The values a row gets for the columns `up` reads, typed, for substitution into `up`: DEFAULT stands
    /// for the column's default.
    fn typed(
        &self,
        written: &[(String, Expr)],
        up: &Expr,
    ) -> Result<HashMap<String, Expr>, Unrewritable> {
        let mut read = Vec::new();
        let _ = visit_expressions(up, |e| {
            match e {
                Expr::Identifier(i) => read.push(fold(i)),
                Expr::CompoundIdentifier(parts) => read.extend(parts.last().map(fold)),
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        written
            .iter()
            .filter(|(col, _)| read.contains(col))
            .map(|(col, value)| {
                let value = if is_default(value) {
                    self.default_value(col)?
                } else {
                    value.clone()
                };
                Ok((col.clone(), self.as_stored(col, value)?))
            })
            .collect()
    }

    /// `up` over the written values, and (new_primary) what old then stores.
    fn new_value(
        &self,
        old: &str,
        new: &str,
        up: &Expr,
        values: &HashMap<String, Expr>,
    ) -> Result<(Expr, Option<Expr>), Unrewritable> {
        let new_value = substitute(up, values);
        let derived = match &self.downs {
            Some(downs) => Some(derived_old(
                downs,
                old,
                &self.as_stored(new, new_value.clone())?,
            )),
            None => None,
        };
        Ok((new_value, derived))
    }
}

/// Adds `new = up(…)` to assignments that write old columns; the values assigned stand in for the columns.
/// With `downs` (new_primary), the old column then stores `down` of the new value.
fn extend_assignments(
    assignments: &mut Vec<Assignment>,
    mapping: &ColumnMapping<'_>,
) -> Result<(), Unrewritable> {
    let assigned = assignment_columns(assignments);
    if assignments
        .iter()
        .any(|a| matches!(a.target, AssignmentTarget::Tuple(_)))
        && mapping.ups.iter().any(|(old, _, _)| assigned.contains(old))
    {
        return Err(RefusalReason::other(
            "a multiple-column assignment (SET (a, b) = …) of a migrated column is not supported",
        ));
    }
    let written: Vec<(String, Expr)> = assignments
        .iter()
        .filter_map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) => last_part(n).map(|i| (fold(&i), a.value.clone())),
            _ => None,
        })
        .collect();
    for (old, new, up) in &mapping.ups {
        if !assigned.contains(old) || assigned.contains(new) {
            continue;
        }
        let value = &written.iter().find(|(c, _)| c == old).expect("assigned").1;
        if !repeatable(value) {
            return Err(RefusalReason::UnrepeatableValue.because(format!(
                "the value assigned to {old} ({value}) may change if evaluated twice, so {new} cannot be computed from it"
            )));
        }
        let values = mapping.typed(&written, up)?;
        let (new_value, derived) = mapping.new_value(old, new, up, &values)?;
        if let Some(derived) = derived {
            for a in assignments.iter_mut() {
                if let AssignmentTarget::ColumnName(n) = &a.target {
                    if last_part(n).map(|i| fold(&i)).as_deref() == Some(old.as_str()) {
                        a.value = derived.clone();
                    }
                }
            }
        }
        assignments.push(Assignment {
            target: AssignmentTarget::ColumnName(ObjectName::from(vec![ident(new)])),
            value: new_value,
        });
    }
    Ok(())
}

fn column_kind(
    mut statement: Statement,
    m: &Migration,
    schema: &Schema,
    new_primary: bool,
) -> Result<Statement, Unrewritable> {
    let mapping = ColumnMapping {
        ups: ups(m)?,
        downs: if new_primary { Some(downs(m)?) } else { None },
        schema,
        table: &m.table,
    };
    match &mut statement {
        Statement::Update(u) => extend_assignments(&mut u.assignments, &mapping)?,
        Statement::Delete(_) => {}
        Statement::Insert(insert) => {
            let mut columns: Vec<String> = insert
                .columns
                .iter()
                .filter_map(|n| last_part(n).map(|i| fold(&i)))
                .collect();
            if let Some(OnInsert::OnConflict(oc)) = &mut insert.on {
                if let OnConflictAction::DoUpdate(du) = &mut oc.action {
                    extend_assignments(&mut du.assignments, &mapping)?;
                }
            }
            let source = match insert.source.as_mut() {
                Some(source) => source,
                None => {
                    // DEFAULT VALUES: old takes its default, so new takes up(default).
                    let mut values = Vec::new();
                    for (old, _, up) in &mapping.ups {
                        let written = [(old.clone(), default_keyword())];
                        values.push(substitute(up, &mapping.typed(&written, up)?).to_string());
                    }
                    let names: Vec<String> =
                        mapping.ups.iter().map(|(_, n, _)| quote_ident(n)).collect();
                    let sql = format!(
                        "INSERT INTO t ({}) VALUES ({})",
                        names.join(", "),
                        values.join(", ")
                    );
                    let Ok(Some(Statement::Insert(parsed))) =
                        Parser::parse_sql(&PostgreSqlDialect {}, &sql).map(|mut s| s.pop())
                    else {
                        return Err(RefusalReason::DefaultValue
                            .because("DEFAULT VALUES could not be extended"));
                    };
                    insert.columns = parsed.columns;
                    insert.source = parsed.source;
                    return Ok(statement);
                }
            };
            if columns.is_empty() {
                let width = match source.body.as_ref() {
                    SetExpr::Values(v) => v.rows.first().map_or(0, |r| r.content.len()),
                    SetExpr::Select(s) => s.projection.len(),
                    _ => 0,
                };
                columns = columns_of(schema, &m.table)?
                    .iter()
                    .take(width)
                    .cloned()
                    .collect();
                insert.columns = columns
                    .iter()
                    .map(|c| ObjectName::from(vec![ident(c)]))
                    .collect();
            }
            // Every new column the statement does not write itself: computed from the old value written, or
            // from old's default when the statement leaves old out.
            let wanted: Vec<&(String, String, Expr)> = mapping
                .ups
                .iter()
                .filter(|(_, new, _)| !columns.contains(new))
                .collect();
            if wanted.is_empty() {
                return Ok(statement);
            }
            // `SELECT * FROM UNNEST(…)` (Django's bulk_create), set operations: the query becomes a derived
            // table whose columns are the inserted ones, so each value can be named.
            let opaque = match source.body.as_ref() {
                SetExpr::Select(s) => s.projection.iter().any(|i| {
                    !matches!(
                        i,
                        SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
                    )
                }),
                SetExpr::Values(_) => false,
                _ => true,
            };
            if opaque {
                if columns.is_empty() {
                    return Err(RefusalReason::Other.because("INSERT … SELECT * into a migrated column is not supported without a column list"));
                }
                let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                let items: Vec<String> = names.iter().map(|n| format!("__pgshift_s.{n}")).collect();
                let sql = format!(
                    "SELECT {} FROM ({source}) AS __pgshift_s({})",
                    items.join(", "),
                    names.join(", ")
                );
                match Parser::parse_sql(&PostgreSqlDialect {}, &sql).map(|mut s| s.pop()) {
                    Ok(Some(Statement::Query(q))) => **source = *q,
                    _ => {
                        return Err(
                            RefusalReason::Other.because("the INSERT's query could not be wrapped")
                        )
                    }
                }
            }
            match source.body.as_mut() {
                SetExpr::Values(v) => {
                    for (old, new, up) in &wanted {
                        let index = columns.iter().position(|c| c == old);
                        for row in v.rows.iter_mut() {
                            let row = &mut row.content;
                            let mut written: Vec<(String, Expr)> =
                                columns.iter().cloned().zip(row.iter().cloned()).collect();
                            if let Some(index) = index {
                                let value = row.get(index).ok_or_else(|| {
                                    RefusalReason::other(format!(
                                        "a VALUES row has no value for {old}"
                                    ))
                                })?;
                                if !is_default(value) && !repeatable(value) {
                                    return Err(RefusalReason::UnrepeatableValue.because(format!(
                                        "the value inserted into {old} ({value}) may change if evaluated twice, so {new} cannot be computed from it"
                                    )));
                                }
                            } else {
                                written.push((old.clone(), default_keyword()));
                            }
                            let values = mapping.typed(&written, up)?;
                            let (new_value, derived) = mapping.new_value(old, new, up, &values)?;
                            if let (Some(index), Some(derived)) = (index, derived) {
                                row[index] = derived;
                            }
                            row.push(new_value);
                        }
                    }
                }
                SetExpr::Select(select) => {
                    let mut exprs = Vec::new();
                    for item in &select.projection {
                        match item {
                            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => exprs.push(e.clone()),
                            _ => return Err(RefusalReason::Other.because("INSERT … SELECT * into a migrated column is not supported; list the columns")),
                        }
                    }
                    let mut written: Vec<(String, Expr)> =
                        columns.iter().cloned().zip(exprs.iter().cloned()).collect();
                    for (old, new, up) in &wanted {
                        let index = columns.iter().position(|c| c == old);
                        match index {
                            Some(index) if !repeatable(&exprs[index]) => {
                                return Err(RefusalReason::UnrepeatableValue.because(format!(
                                    "the value inserted into {old} ({}) may change if evaluated twice, so {new} cannot be computed from it",
                                    exprs[index]
                                )));
                            }
                            Some(_) => {}
                            None => written.push((old.clone(), default_keyword())),
                        }
                        let values = mapping.typed(&written, up)?;
                        let (new_value, derived) = mapping.new_value(old, new, up, &values)?;
                        if let (Some(index), Some(derived)) = (index, derived) {
                            select.projection[index] = SelectItem::UnnamedExpr(derived);
                        }
                        select.projection.push(SelectItem::UnnamedExpr(new_value));
                    }
                }
                _ => {
                    return Err(RefusalReason::other(
                        "INSERT … from a set operation into a migrated column is not supported",
                    ))
                }
            }
            for (_, new, _) in &wanted {
                insert.columns.push(ObjectName::from(vec![ident(new)]));
            }
        }
        _ => {}
    }
    Ok(statement)
}

/// The DEFAULT keyword, standing for a column's default in [`ColumnMapping::typed`].
fn default_keyword() -> Expr {
    Expr::Identifier(Ident::new("DEFAULT"))
}

/// In VALUES, a bare identifier can only be the DEFAULT keyword.
fn is_default(value: &Expr) -> bool {
    matches!(value, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{orders_migration, plan_with, rewritten, users_migration};
    use super::super::{Plan, Shape};
    use crate::config::migration::WriteMode;
    use crate::rewrite::ActionKind;
    use crate::rewrite::DmlTag;
    use crate::routing::Route;

    fn users(sql: &str) -> (String, Vec<Shape>) {
        rewritten(plan_with(
            sql,
            &[users_migration(WriteMode::DualWrite)],
            Route::Old,
        ))
    }

    fn orders(sql: &str) -> String {
        rewritten(plan_with(
            sql,
            &[orders_migration(WriteMode::DualWrite)],
            Route::Old,
        ))
        .0
    }

    const UPSERT: &str = "INSERT INTO v2.users (id, display_name, email, created_at) \
        SELECT id, fullname, email, created_at FROM __pgshift_old ON CONFLICT (id) \
        DO UPDATE SET display_name = EXCLUDED.display_name, email = EXCLUDED.email, created_at = EXCLUDED.created_at";

    #[test]
    fn table_insert_mirrors_the_post_image() {
        let (sql, shapes) = users("INSERT INTO users (fullname, email) VALUES ($1, $2)");
        assert_eq!(
            sql,
            format!(
                "WITH __pgshift_old AS (INSERT INTO users (fullname, email) VALUES ($1, $2) RETURNING users.*), \
                 __pgshift_new AS ({UPSERT}) SELECT FROM __pgshift_old AS users"
            )
        );
        assert_eq!(
            shapes,
            vec![Shape::Dml {
                tag: DmlTag::Insert,
                returning: false,
                origins: None,
            }]
        );
    }

    #[test]
    fn table_insert_keeps_returning_on_conflict_and_alias() {
        let (sql, shapes) = users(
            "INSERT INTO public.users AS u (id, fullname) VALUES (1, 'a'), (2, 'b') \
             ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname RETURNING u.id, upper(fullname) AS f",
        );
        assert!(sql.starts_with(
            "WITH __pgshift_old AS (INSERT INTO public.users AS u (id, fullname) VALUES (1, 'a'), (2, 'b') \
             ON CONFLICT (id) DO UPDATE SET fullname = EXCLUDED.fullname RETURNING u.*, \
             CASE WHEN false THEN ROW(upper(fullname)) END AS __pgshift_check), __pgshift_new AS ("
        ), "{sql}");
        assert!(
            sql.ends_with(") SELECT u.id, upper(fullname) AS f FROM __pgshift_old AS u"),
            "{sql}"
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
    fn table_update_and_delete() {
        let (sql, shapes) =
            users("UPDATE users SET email = lower(email) WHERE id = $1 RETURNING *");
        assert_eq!(
            sql,
            format!(
                "WITH __pgshift_old AS (UPDATE users SET email = lower(email) WHERE id = $1 RETURNING users.*), \
                 __pgshift_new AS ({UPSERT}) SELECT users.id, users.fullname, users.email, users.created_at FROM __pgshift_old AS users"
            )
        );
        assert_eq!(
            shapes,
            vec![Shape::Dml {
                tag: DmlTag::Update,
                returning: true,
                origins: None,
            }]
        );
        let (sql, _) = users("DELETE FROM users u USING banned b WHERE u.email = b.email");
        assert_eq!(
            sql,
            "WITH __pgshift_old AS (DELETE FROM users u USING banned b WHERE u.email = b.email RETURNING u.*), \
             __pgshift_new AS (DELETE FROM v2.users AS __pgshift_t USING __pgshift_old \
             WHERE __pgshift_t.id = __pgshift_old.id) SELECT FROM __pgshift_old AS u"
        );
    }

    #[test]
    fn upserts_may_assign_the_conflict_key_to_itself() {
        // Sequelize's Model.upsert().
        let (sql, _) = users(
            "INSERT INTO \"users\" (\"id\",\"fullname\") VALUES ($1,$2) ON CONFLICT (\"id\") \
             DO UPDATE SET \"id\"=EXCLUDED.\"id\",\"fullname\"=EXCLUDED.\"fullname\" RETURNING \"id\",\"fullname\"",
        );
        assert!(
            sql.contains("DO UPDATE SET \"id\"=EXCLUDED.\"id\""),
            "{sql}"
        );
        let m = [users_migration(WriteMode::DualWrite)];
        for sql in [
            "INSERT INTO users (id, email) VALUES (1, 'a') ON CONFLICT (email) DO UPDATE SET id = EXCLUDED.id",
            "INSERT INTO users (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id + 1",
            "INSERT INTO users (id, email) VALUES (1, 'a') ON CONFLICT ON CONSTRAINT users_pkey DO UPDATE SET id = EXCLUDED.id",
        ] {
            let Plan::Refuse(r) = plan_with(sql, &m, Route::Old) else { panic!("{sql}") };
            assert!(r.detail.contains("key column id"), "{}", r.detail);
        }
    }

    #[test]
    fn client_ctes_come_first() {
        let (sql, _) =
            users("WITH src AS (SELECT 'x' AS n) INSERT INTO users (fullname) SELECT n FROM src");
        assert!(sql.starts_with(
            "WITH src AS (SELECT 'x' AS n), __pgshift_old AS (INSERT INTO users (fullname) SELECT n FROM src RETURNING users.*)"
        ), "{sql}");
    }

    #[test]
    fn returning_other_tables_is_refused() {
        let m = [users_migration(WriteMode::DualWrite)];
        for sql in [
            "UPDATE users SET email = b.email FROM banned b WHERE users.id = b.id RETURNING b.reason",
            "UPDATE users SET email = b.email FROM banned b WHERE users.id = b.id RETURNING *",
            "DELETE FROM users USING banned b WHERE users.id = b.id RETURNING reason",
        ] {
            let Plan::Refuse(r) = plan_with(sql, &m, Route::Old) else { panic!("{sql}") };
            assert!(r.detail.contains("RETURNING may only name"), "{}", r.detail);
        }
        let (sql, _) = users("UPDATE users SET email = b.email FROM banned b WHERE users.id = b.id RETURNING users.id, email");
        assert!(
            sql.ends_with("SELECT users.id, email FROM __pgshift_old AS users"),
            "{sql}"
        );
    }

    #[test]
    fn column_insert_adds_the_new_column() {
        assert_eq!(
            orders("INSERT INTO orders (customer, legacy_status) VALUES ($1, $2), ('b', 'paid') RETURNING id"),
            "INSERT INTO orders (customer, legacy_status, new_status) VALUES ($1, $2, upper(CAST(($2) AS text))), \
             ('b', 'paid', upper(CAST(('paid') AS text))) RETURNING id"
        );
        assert_eq!(
            orders("INSERT INTO orders VALUES (1, 'c', 'new')"),
            "INSERT INTO orders (id, customer, legacy_status, new_status) VALUES (1, 'c', 'new', upper((CAST(('new') AS TEXT))))"
        );
        assert_eq!(
            orders("INSERT INTO orders (customer, legacy_status) SELECT name, status FROM imports"),
            "INSERT INTO orders (customer, legacy_status, new_status) SELECT name, status, upper((CAST((status) AS TEXT))) FROM imports"
        );
        // Old left out or DEFAULT: new is computed from old's default (or NULL), cast to old's type.
        assert_eq!(
            orders("INSERT INTO orders (customer) VALUES ('c')"),
            "INSERT INTO orders (customer, new_status) VALUES ('c', upper(CAST(('open'::text) AS text)))"
        );
        assert_eq!(
            orders("INSERT INTO orders (customer, legacy_status) VALUES ('c', DEFAULT)"),
            "INSERT INTO orders (customer, legacy_status, new_status) VALUES ('c', DEFAULT, upper(CAST(('open'::text) AS text)))"
        );
        assert_eq!(
            orders("INSERT INTO orders DEFAULT VALUES"),
            "INSERT INTO orders (new_status) VALUES (upper((CAST(('open'::TEXT) AS TEXT))))"
        );
        assert_eq!(
            orders("UPDATE orders SET legacy_status = DEFAULT WHERE id = 1"),
            "UPDATE orders SET legacy_status = DEFAULT, new_status = upper((CAST(('open'::TEXT) AS TEXT))) WHERE id = 1"
        );
    }

    #[test]
    fn column_insert_from_an_opaque_query() {
        // Django's bulk_create.
        assert_eq!(
            orders(
                "INSERT INTO orders (customer, legacy_status) SELECT * FROM UNNEST($1::text[], $2::text[]) RETURNING id"
            ),
            "INSERT INTO orders (customer, legacy_status, new_status) SELECT __pgshift_s.customer, __pgshift_s.legacy_status, \
             upper((CAST((__pgshift_s.legacy_status) AS TEXT))) FROM (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
             AS __pgshift_s (customer, legacy_status) RETURNING id"
        );
    }

    #[test]
    fn column_update_and_upsert() {
        assert_eq!(
            orders("UPDATE orders SET legacy_status = $1 WHERE id = $2"),
            "UPDATE orders SET legacy_status = $1, new_status = upper(CAST(($1) AS text)) WHERE id = $2"
        );
        assert_eq!(
            orders(
                "INSERT INTO orders (id, legacy_status) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET legacy_status = EXCLUDED.legacy_status"
            ),
            "INSERT INTO orders (id, legacy_status, new_status) VALUES (1, 'x', upper(CAST(('x') AS text))) ON CONFLICT (id) \
             DO UPDATE SET legacy_status = EXCLUDED.legacy_status, new_status = upper(CAST((EXCLUDED.legacy_status) AS text))"
        );
        // Statements that already write the new column are left alone.
        let m = [orders_migration(WriteMode::DualWrite)];
        let plan = plan_with(
            "UPDATE orders SET legacy_status = 'a', new_status = 'A'",
            &m,
            Route::Old,
        );
        assert!(matches!(plan, Plan::Rewrite { .. }), "{plan:?}");
    }

    #[test]
    fn column_new_primary_derives_old_from_new() {
        let m = [orders_migration(WriteMode::NewPrimary)];
        let sql = rewritten(plan_with(
            "UPDATE orders SET legacy_status = $1 WHERE id = $2",
            &m,
            Route::New,
        ))
        .0;
        assert_eq!(
            sql,
            "UPDATE orders SET legacy_status = lower(CAST((upper(CAST(($1) AS text))) AS text)), \
             new_status = upper(CAST(($1) AS text)) WHERE id = $2"
        );
        let sql = rewritten(plan_with(
            "INSERT INTO orders (legacy_status) VALUES ('Paid')",
            &m,
            Route::New,
        ))
        .0;
        assert_eq!(
            sql,
            "INSERT INTO orders (legacy_status, new_status) VALUES (lower(CAST((upper(CAST(('Paid') AS text))) AS text)), \
             upper(CAST(('Paid') AS text)))"
        );
    }

    #[test]
    fn column_values_that_change_when_repeated_are_refused() {
        let m = [orders_migration(WriteMode::DualWrite)];
        for sql in [
            "UPDATE orders SET legacy_status = random()::text",
            "INSERT INTO orders (legacy_status) VALUES (nextval('s')::text)",
            "INSERT INTO orders (legacy_status) VALUES ((SELECT s FROM t LIMIT 1))",
        ] {
            assert!(
                matches!(plan_with(sql, &m, Route::Old), Plan::Refuse(_)),
                "{sql}"
            );
        }
        // Deletes and updates of other columns (keys included: old and new share the row) go as sent.
        for sql in [
            "UPDATE orders SET id = 5",
            "DELETE FROM orders WHERE legacy_status ISNULL",
            "UPDATE ONLY orders SET customer = 'c' WHERE legacy_status ISNULL",
        ] {
            let plan = plan_with(sql, &m, Route::Old);
            assert!(matches!(plan, Plan::Forward { .. }), "{sql}: {plan:?}");
            assert_eq!(plan.actions()[0].what, ActionKind::DualWrite);
        }
    }
}
