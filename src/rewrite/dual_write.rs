//! Dual writes: the client's INSERT/UPDATE/DELETE on the old table also writes the new table or column, in the
//! same statement, so both sides change atomically in the client's own transaction with identical values.
//!
//! Table kind: a data-modifying CTE runs the original statement and feeds exactly the rows it touched (their
//! post-image, with generated ids, defaults and `now()` as stored) to a mirror upsert or delete on the new table.
//! Column kind: the statement gains `new = up(…)` next to every write of `old`.

use super::shape::{DmlTag, Shape};
use super::sqltext::{fold, quote_ident};
use super::{refuse, splice, Refusal, Schema, Source, Target};
use crate::config::migration::{Migration, MigrationKind, TableName};
use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Assignment, AssignmentTarget, ConflictTarget, Expr,
    FromTable, Ident, ObjectName, OnConflictAction, OnInsert, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, With,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashMap;
use std::ops::ControlFlow;

const OLD_CTE: &str = "__pgshift_old";
const NEW_CTE: &str = "__pgshift_new";
/// The never-evaluated column that makes Postgres check the client's RETURNING list in RETURNING context.
const CHECK_COLUMN: &str = "__pgshift_check";

pub fn rewrite(
    statement: Statement,
    with: Option<With>,
    tag: DmlTag,
    target: &Target<'_>,
    schema: &Schema,
    source: &Source<'_>,
) -> Result<(String, Shape), Refusal> {
    let m = target.migration;
    check_key_not_updated(&statement, m).map_err(|r| refuse(target, r))?;
    let new_primary = m.writes == crate::config::migration::WriteMode::NewPrimary;
    match m.kind {
        MigrationKind::Table if new_primary => {
            super::new_primary::rewrite(statement, with, tag, target, schema)
        }
        MigrationKind::Table => table_kind(statement, tag, target, schema, source),
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

pub(super) fn table_text(t: &TableName) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
}

pub(super) fn ident(name: &str) -> Ident {
    if quote_ident(name).starts_with('"') {
        Ident::with_quote('"', name)
    } else {
        Ident::new(name)
    }
}

pub(super) fn last_part(name: &ObjectName) -> Option<Ident> {
    match name.0.last()? {
        sqlparser::ast::ObjectNamePart::Identifier(i) => Some(i.clone()),
        _ => None,
    }
}

pub(super) fn assignment_columns(assignments: &[Assignment]) -> Vec<String> {
    assignments
        .iter()
        .flat_map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n.clone()],
            AssignmentTarget::Tuple(names) => names.clone(),
        })
        .filter_map(|n| last_part(&n).map(|i| fold(&i)))
        .collect()
}

/// Mirroring is keyed on the key columns: changing them would orphan the mirrored row.
fn check_key_not_updated(statement: &Statement, m: &Migration) -> Result<(), String> {
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
        Some(c) => Err(format!(
            "an UPDATE of key column {c} is not supported: the mirrored row is found by its key"
        )),
        None => Ok(()),
    }
}

pub(super) fn columns_of<'s>(
    schema: &'s Schema,
    table: &TableName,
) -> Result<&'s Vec<String>, String> {
    schema.columns.get(table).ok_or_else(|| {
        format!("the columns of {table} are not known in this session (does the table exist?)")
    })
}

/// The old table's columns, each with the new column it is written to and the expression (over old columns)
/// that computes it. Old columns that the new table does not have are left out.
fn mirror_columns(m: &Migration, schema: &Schema) -> Result<Vec<(String, String)>, String> {
    let new_table = m.new_table.as_ref().expect("table kind has new_table");
    let old_cols = columns_of(schema, &m.table)?;
    let new_cols = columns_of(schema, new_table)?;
    let mut out = Vec::new();
    for col in old_cols {
        let mapped = m.columns.iter().find(|c| c.old.eq_ignore_ascii_case(col));
        let (new_name, expr) = match mapped {
            Some(c) => (
                c.new.to_lowercase(),
                c.up.clone().unwrap_or_else(|| quote_ident(col)),
            ),
            None => (col.clone(), quote_ident(col)),
        };
        if new_cols.contains(&new_name) {
            out.push((new_name, expr));
        } else if mapped.is_some() {
            return Err(format!(
                "column {new_name} of the column map does not exist in {new_table}"
            ));
        }
    }
    Ok(out)
}

pub(super) fn new_key(m: &Migration) -> Vec<String> {
    m.key
        .iter()
        .map(|k| {
            m.columns
                .iter()
                .find(|c| c.old.eq_ignore_ascii_case(k))
                .map(|c| c.new.to_lowercase())
                .unwrap_or_else(|| k.clone())
        })
        .collect()
}

/// The alias the statement gives the target table, or its bare name.
pub(super) fn target_alias(statement: &Statement) -> Option<Ident> {
    match statement {
        Statement::Insert(i) => match (&i.table_alias, &i.table) {
            (Some(a), _) => Some(a.alias.clone()),
            (None, sqlparser::ast::TableObject::TableName(n)) => last_part(n),
            _ => None,
        },
        Statement::Update(u) => match &u.table.relation {
            TableFactor::Table { alias: Some(a), .. } => Some(a.name.clone()),
            TableFactor::Table { name, .. } => last_part(name),
            _ => None,
        },
        Statement::Delete(d) => {
            let tables = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            match tables.first().map(|t| &t.relation) {
                Some(TableFactor::Table { alias: Some(a), .. }) => Some(a.name.clone()),
                Some(TableFactor::Table { name, .. }) => last_part(name),
                _ => None,
            }
        }
        _ => None,
    }
}

pub(super) fn take_returning(statement: &mut Statement) -> Option<Vec<SelectItem>> {
    match statement {
        Statement::Insert(i) => i.returning.take(),
        Statement::Update(u) => u.returning.take(),
        Statement::Delete(d) => d.returning.take(),
        _ => None,
    }
}

/// With `UPDATE … FROM` or `DELETE … USING`, RETURNING may name the other tables, which the outer SELECT over
/// the CTE cannot see: only the target's own columns are allowed there.
fn check_returning(
    items: &[SelectItem],
    alias: &Ident,
    columns: &[String],
    has_other_tables: bool,
) -> Result<(), String> {
    if !has_other_tables {
        return Ok(());
    }
    let alias = fold(alias);
    let bad = || {
        Err("RETURNING may only name the updated table's own columns when the statement has FROM or USING".to_owned())
    };
    for item in items {
        match item {
            SelectItem::Wildcard(_) => return bad(),
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _) => {
                if last_part(n).map(|i| fold(&i)) != Some(alias.clone()) {
                    return bad();
                }
            }
            SelectItem::QualifiedWildcard(..) => return bad(),
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                let mut ok = true;
                let _ = visit_expressions(e, |e| {
                    match e {
                        Expr::Identifier(i) if !columns.contains(&fold(i)) => ok = false,
                        Expr::CompoundIdentifier(parts)
                            if parts.len() >= 2 && fold(&parts[parts.len() - 2]) != alias =>
                        {
                            ok = false
                        }
                        _ => {}
                    }
                    ControlFlow::<()>::Continue(())
                });
                if !ok {
                    return bad();
                }
            }
            _ => return bad(),
        }
    }
    Ok(())
}

fn table_kind(
    mut statement: Statement,
    tag: DmlTag,
    target: &Target<'_>,
    schema: &Schema,
    source: &Source<'_>,
) -> Result<(String, Shape), Refusal> {
    let m = target.migration;
    let fail = |reason: String| refuse(target, reason);
    let new_table = table_text(m.new_table.as_ref().expect("table kind has new_table"));
    let alias = target_alias(&statement)
        .ok_or_else(|| fail("the target table could not be identified".into()))?;
    let old_cols = columns_of(schema, &m.table).map_err(fail)?;
    let returning = take_returning(&mut statement);
    let has_other_tables = match &statement {
        Statement::Update(u) => u.from.is_some(),
        Statement::Delete(d) => d.using.is_some(),
        _ => false,
    };
    if let Some(items) = &returning {
        check_returning(items, &alias, old_cols, has_other_tables).map_err(fail)?;
    }
    let parts = splice::dml_parts(source.text, source.offset, source.node).map_err(fail)?;
    let text = source.text;
    // The client's RETURNING expressions stay in the statement's own RETURNING, where Postgres rejects what it
    // rejects there (aggregates, window and set-returning functions), but in a branch that is never evaluated:
    // the values come from the outer SELECT, once per row.
    let check = if parts.returning_exprs.is_empty() {
        String::new()
    } else {
        let exprs: Vec<&str> = parts
            .returning_exprs
            .iter()
            .map(|r| &text[r.clone()])
            .collect();
        format!(
            ", CASE WHEN false THEN ROW({}) END AS {CHECK_COLUMN}",
            exprs.join(", ")
        )
    };
    let inner = format!("{} RETURNING {alias}.*{check}", &text[parts.body.clone()]);

    let key = new_key(m);
    let mirror = match tag {
        DmlTag::Insert | DmlTag::Update => {
            let cols = mirror_columns(m, schema).map_err(fail)?;
            upsert_from(&new_table, &cols, OLD_CTE, &key)
        }
        DmlTag::Delete => {
            let pairs: Vec<(String, String)> =
                key.iter().cloned().zip(m.key.iter().cloned()).collect();
            delete_matching(&new_table, OLD_CTE, &pairs)
        }
    };
    // Without the check column, the CTE has exactly the old table's columns; with it, a derived table hides it.
    let from = if check.is_empty() {
        format!("{OLD_CTE} AS {alias}")
    } else {
        let cols: Vec<String> = old_cols.iter().map(|c| quote_ident(c)).collect();
        format!("(SELECT {} FROM {OLD_CTE}) AS {alias}", cols.join(", "))
    };
    let client_ctes = parts
        .ctes
        .map(|r| format!("{}, ", &text[r]))
        .unwrap_or_default();
    let list = parts.returning.map(|r| &text[r]).unwrap_or("");
    let sql = format!(
        "WITH {}{client_ctes}{OLD_CTE} AS ({inner}), {NEW_CTE} AS ({mirror}) SELECT {list}{}FROM {from}",
        if parts.recursive { "RECURSIVE " } else { "" },
        if list.is_empty() { "" } else { " " },
    );
    let shape = Shape::Dml {
        tag,
        returning: returning.is_some(),
    };
    Ok((sql, shape))
}

/// `INSERT INTO table (cols) SELECT exprs FROM source ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, …`:
/// the mirror that makes the other side hold exactly the rows in `source`.
pub(super) fn upsert_from(
    table: &str,
    cols: &[(String, String)],
    source: &str,
    key: &[String],
) -> String {
    let names: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
    let exprs: Vec<&str> = cols.iter().map(|(_, e)| e.as_str()).collect();
    let updates: Vec<String> = cols
        .iter()
        .filter(|(n, _)| !key.contains(n))
        .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
        .collect();
    let conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    let key_list: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {source} ON CONFLICT ({}) {conflict}",
        names.join(", "),
        exprs.join(", "),
        key_list.join(", ")
    )
}

/// `DELETE FROM table AS __pgshift_t USING source WHERE __pgshift_t.k = source.k …`, over (table key, source key).
pub(super) fn delete_matching(table: &str, source: &str, key_pairs: &[(String, String)]) -> String {
    let matches: Vec<String> = key_pairs
        .iter()
        .map(|(t, s)| {
            format!(
                "__pgshift_t.{} = {source}.{}",
                quote_ident(t),
                quote_ident(s)
            )
        })
        .collect();
    format!(
        "DELETE FROM {table} AS __pgshift_t USING {source} WHERE {}",
        matches.join(" AND ")
    )
}

/// `WITH [client CTEs,] <primary>, <mirror> SELECT <client RETURNING list> FROM <from>`, and its reply shape.
pub(super) fn assemble(
    with: Option<With>,
    ours: [String; 2],
    returning: Option<Vec<SelectItem>>,
    from: &str,
    tag: DmlTag,
) -> (String, Shape) {
    let mut ctes = Vec::new();
    let mut recursive = false;
    if let Some(with) = with {
        recursive = with.recursive;
        ctes.extend(with.cte_tables.iter().map(|c| c.to_string()));
    }
    ctes.extend(ours);
    let list = returning
        .as_ref()
        .map(|items| {
            items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let text = format!(
        "WITH {}{} SELECT {list} FROM {from}",
        if recursive { "RECURSIVE " } else { "" },
        ctes.join(", ")
    );
    let shape = Shape::Dml {
        tag,
        returning: returning.is_some(),
    };
    (text, shape)
}

pub(super) fn parse_expr(sql: &str) -> Result<Expr, String> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("expression {sql:?} does not parse: {e}"))
}

/// Functions that give the same result when evaluated twice in one statement.
const REPEATABLE_FUNCTIONS: &[&str] = &[
    "lower",
    "upper",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "coalesce",
    "nullif",
    "concat",
    "concat_ws",
    "length",
    "substr",
    "substring",
    "replace",
    "abs",
    "round",
    "greatest",
    "least",
    "now",
    "current_timestamp",
    "localtimestamp",
    "current_date",
    "initcap",
    "left",
    "right",
    "lpad",
    "rpad",
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
];

/// Whether an expression may be written twice (once for old, once inside `up` for new) and still give the
/// same value: literals, parameters, column references, casts and operators over those, and a few pure
/// functions. `random()` or `nextval()` would give the two columns different values.
pub(super) fn repeatable(expr: &Expr) -> bool {
    let mut ok = true;
    let _ = visit_expressions(expr, |e| {
        match e {
            Expr::Function(f) => {
                let name = f.name.to_string().to_lowercase();
                if !REPEATABLE_FUNCTIONS.contains(&name.as_str()) {
                    ok = false;
                }
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ok = false,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    ok
}

/// `up` with every column it names replaced by the value this statement writes to that column.
pub(super) fn substitute(up: &Expr, values: &HashMap<String, Expr>) -> Expr {
    let mut out = up.clone();
    let _ = visit_expressions_mut(&mut out, |e| {
        let name = match e {
            Expr::Identifier(i) => Some(fold(i)),
            Expr::CompoundIdentifier(parts) => parts.last().map(fold),
            _ => None,
        };
        if let Some(value) = name.and_then(|n| values.get(&n)) {
            *e = Expr::Nested(Box::new(value.clone()));
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// The `up` expression of each mapping, parsed (identity when absent).
fn ups(m: &Migration) -> Result<Vec<(String, String, Expr)>, String> {
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
fn downs(m: &Migration) -> Result<HashMap<String, (String, Expr)>, String> {
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

/// Adds `new = up(…)` to assignments that write old columns; the values assigned stand in for the columns.
/// With `downs` (new_primary), the old column then stores `down` of the new value.
fn extend_assignments(
    assignments: &mut Vec<Assignment>,
    ups: &[(String, String, Expr)],
    downs: Option<&HashMap<String, (String, Expr)>>,
) -> Result<(), String> {
    let assigned = assignment_columns(assignments);
    if assignments
        .iter()
        .any(|a| matches!(a.target, AssignmentTarget::Tuple(_)))
        && ups.iter().any(|(old, _, _)| assigned.contains(old))
    {
        return Err(
            "a multiple-column assignment (SET (a, b) = …) of a migrated column is not supported"
                .into(),
        );
    }
    let values: HashMap<String, Expr> = assignments
        .iter()
        .filter_map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) => last_part(n).map(|i| (fold(&i), a.value.clone())),
            _ => None,
        })
        .collect();
    for (old, new, up) in ups {
        if !assigned.contains(old) || assigned.contains(new) {
            continue;
        }
        let value = &values[old];
        if !repeatable(value) {
            return Err(format!(
                "the value assigned to {old} ({value}) may change if evaluated twice, so {new} cannot be computed from it"
            ));
        }
        let new_value = substitute(up, &values);
        if let Some(downs) = downs {
            let derived = derived_old(downs, old, &new_value);
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
) -> Result<Statement, String> {
    let ups = ups(m)?;
    let downs = if new_primary { Some(downs(m)?) } else { None };
    match &mut statement {
        Statement::Update(u) => extend_assignments(&mut u.assignments, &ups, downs.as_ref())?,
        Statement::Delete(_) => {}
        Statement::Insert(insert) => {
            let mut columns: Vec<String> = insert
                .columns
                .iter()
                .filter_map(|n| last_part(n).map(|i| fold(&i)))
                .collect();
            if let Some(OnInsert::OnConflict(oc)) = &mut insert.on {
                if let OnConflictAction::DoUpdate(du) = &mut oc.action {
                    extend_assignments(&mut du.assignments, &ups, downs.as_ref())?;
                }
            }
            let Some(source) = insert.source.as_mut() else {
                return Ok(statement); // DEFAULT VALUES: both columns take their defaults
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
            let wanted: Vec<&(String, String, Expr)> = ups
                .iter()
                .filter(|(old, new, _)| columns.contains(old) && !columns.contains(new))
                .collect();
            if wanted.is_empty() {
                return Ok(statement);
            }
            match source.body.as_mut() {
                SetExpr::Values(v) => {
                    for (old, new, up) in &wanted {
                        let index = columns
                            .iter()
                            .position(|c| c == old)
                            .expect("filtered above");
                        for row in v.rows.iter_mut() {
                            let row = &mut row.content;
                            let value = row
                                .get(index)
                                .ok_or_else(|| format!("a VALUES row has no value for {old}"))?;
                            if is_default(value) {
                                return Err(format!("DEFAULT for {old} is not supported: {new} cannot be computed from it"));
                            }
                            if !repeatable(value) {
                                return Err(format!(
                                    "the value inserted into {old} ({value}) may change if evaluated twice, so {new} cannot be computed from it"
                                ));
                            }
                            let values: HashMap<String, Expr> =
                                columns.iter().cloned().zip(row.iter().cloned()).collect();
                            let new_value = substitute(up, &values);
                            if let Some(downs) = &downs {
                                row[index] = derived_old(downs, old, &new_value);
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
                            _ => return Err("INSERT … SELECT * into a migrated column is not supported; list the columns".into()),
                        }
                    }
                    let values: HashMap<String, Expr> =
                        columns.iter().cloned().zip(exprs.iter().cloned()).collect();
                    for (old, new, up) in &wanted {
                        let index = columns
                            .iter()
                            .position(|c| c == old)
                            .expect("filtered above");
                        if !repeatable(&exprs[index]) {
                            return Err(format!(
                                "the value inserted into {old} ({}) may change if evaluated twice, so {new} cannot be computed from it",
                                exprs[index]
                            ));
                        }
                        let new_value = substitute(up, &values);
                        if let Some(downs) = &downs {
                            select.projection[index] =
                                SelectItem::UnnamedExpr(derived_old(downs, old, &new_value));
                        }
                        select.projection.push(SelectItem::UnnamedExpr(new_value));
                    }
                }
                _ => {
                    return Err(
                        "INSERT … from a set operation into a migrated column is not supported"
                            .into(),
                    )
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

/// In VALUES, a bare identifier can only be the DEFAULT keyword.
fn is_default(value: &Expr) -> bool {
    matches!(value, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{orders_migration, plan_with, rewritten, users_migration};
    use super::super::{Plan, Shape};
    use super::*;
    use crate::config::migration::WriteMode;
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
                returning: false
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
             CASE WHEN false THEN ROW(u.id, upper(fullname)) END AS __pgshift_check), __pgshift_new AS ("
        ), "{sql}");
        assert!(
            sql.ends_with(
                ") SELECT u.id, upper(fullname) AS f \
                 FROM (SELECT id, fullname, email, created_at FROM __pgshift_old) AS u"
            ),
            "{sql}"
        );
        assert_eq!(
            shapes,
            vec![Shape::Dml {
                tag: DmlTag::Insert,
                returning: true
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
                 __pgshift_new AS ({UPSERT}) SELECT * FROM __pgshift_old AS users"
            )
        );
        assert_eq!(
            shapes,
            vec![Shape::Dml {
                tag: DmlTag::Update,
                returning: true
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
            assert!(r.reason.contains("key column id"), "{}", r.reason);
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
            assert!(r.reason.contains("RETURNING may only name"), "{}", r.reason);
        }
        let (sql, _) = users("UPDATE users SET email = b.email FROM banned b WHERE users.id = b.id RETURNING users.id, email");
        assert!(
            sql.ends_with("SELECT users.id, email FROM (SELECT id, fullname, email, created_at FROM __pgshift_old) AS users"),
            "{sql}"
        );
    }

    #[test]
    fn column_insert_adds_the_new_column() {
        assert_eq!(
            orders("INSERT INTO orders (customer, legacy_status) VALUES ($1, $2), ('b', 'paid') RETURNING id"),
            "INSERT INTO orders (customer, legacy_status, new_status) VALUES ($1, $2, upper(($2))), \
             ('b', 'paid', upper(('paid'))) RETURNING id"
        );
        assert_eq!(
            orders("INSERT INTO orders VALUES (1, 'c', 'new')"),
            "INSERT INTO orders (id, customer, legacy_status, new_status) VALUES (1, 'c', 'new', upper(('new')))"
        );
        assert_eq!(
            orders("INSERT INTO orders (customer, legacy_status) SELECT name, status FROM imports"),
            "INSERT INTO orders (customer, legacy_status, new_status) SELECT name, status, upper((status)) FROM imports"
        );
    }

    #[test]
    fn column_update_and_upsert() {
        assert_eq!(
            orders("UPDATE orders SET legacy_status = $1 WHERE id = $2"),
            "UPDATE orders SET legacy_status = $1, new_status = upper(($1)) WHERE id = $2"
        );
        assert_eq!(
            orders(
                "INSERT INTO orders (id, legacy_status) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET legacy_status = EXCLUDED.legacy_status"
            ),
            "INSERT INTO orders (id, legacy_status, new_status) VALUES (1, 'x', upper(('x'))) ON CONFLICT(id) \
             DO UPDATE SET legacy_status = EXCLUDED.legacy_status, new_status = upper((EXCLUDED.legacy_status))"
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
            "UPDATE orders SET legacy_status = lower((upper(($1)))), new_status = upper(($1)) WHERE id = $2"
        );
        let sql = rewritten(plan_with(
            "INSERT INTO orders (legacy_status) VALUES ('Paid')",
            &m,
            Route::New,
        ))
        .0;
        assert_eq!(
            sql,
            "INSERT INTO orders (legacy_status, new_status) VALUES (lower((upper(('Paid')))), upper(('Paid')))"
        );
    }

    #[test]
    fn column_values_that_change_when_repeated_are_refused() {
        let m = [orders_migration(WriteMode::DualWrite)];
        for sql in [
            "UPDATE orders SET legacy_status = random()::text",
            "INSERT INTO orders (legacy_status) VALUES (DEFAULT)",
            "INSERT INTO orders (legacy_status) VALUES ((SELECT s FROM t LIMIT 1))",
            "UPDATE orders SET id = 5",
        ] {
            assert!(
                matches!(plan_with(sql, &m, Route::Old), Plan::Refuse(_)),
                "{sql}"
            );
        }
    }
}
