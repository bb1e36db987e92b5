//! Helpers over sqlparser's AST, for the fallback transforms that still work on it (column-kind INSERT …
//! SELECT, `new_primary` forms that need type conversion, DEFAULT VALUES).

use super::sqltext::{fold, quote_ident};
use super::{RefusalReason, Unrewritable};
use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Assignment, AssignmentTarget, Expr, FromTable, Ident,
    ObjectName, SelectItem, Statement, TableFactor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::HashMap;
use std::ops::ControlFlow;

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

pub(super) fn parse_expr(sql: &str) -> Result<Expr, Unrewritable> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| {
            RefusalReason::Other.because(format!("expression {sql:?} does not parse: {e}"))
        })
}

/// Functions that give the same result when evaluated twice in one statement.
pub(super) const REPEATABLE_FUNCTIONS: &[&str] = &[
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
