//! `new_primary` table writes planned from Postgres's own parse tree: the client's statement is spliced onto
//! the new table — its text kept, the table name replaced, old column references replaced by their new-side
//! terms (`down`, renamed columns), values written to mapped columns passed through `up` after the cast the old
//! column would apply — and the rows it returns are mirrored back to old ([`new_primary::finish`]).
//!
//! Forms this does not cover return `None`, and the older sqlparser-driven translation (which refuses what it
//! cannot translate) takes them.

use super::builders::{columns_of, table_text};
use super::mirror::{self, Dml, Planned};
use super::new_primary::finish;
use super::refusal::{RefusalReason, Unrewritable};
use super::shape::DmlTag;
use super::sqltext::quote_ident;
use super::{pg, refuse, splice, Context, Schema, Source, Target};
use crate::config::migration::{Migration, MigrationKind, WriteMode};
use pg_query::protobuf::Token;
use pg_query::NodeEnum;
use std::ops::Range;

/// `Some` for a write this planner handles: its rewrite or refusal.
pub(super) fn plan<'c, 'a>(
    source: &Source<'_>,
    ctx: &'c Context<'a>,
) -> Option<(&'c Target<'a>, Planned)> {
    let d = mirror::dml(source.node)?;
    let target = mirror::resolve(ctx, d.relation)?;
    let m = target.migration;
    if m.kind != MigrationKind::Table || m.writes != WriteMode::NewPrimary {
        return None;
    }
    if let Err(reason) = mirror::check(&d, source, ctx, target) {
        return Some((target, Err(refuse(target, reason))));
    }
    let primary = match build(&d, source, ctx.schema, m) {
        Ok(Some(primary)) => primary,
        Ok(None) => return None,
        Err(reason) => return Some((target, Err(refuse(target, reason)))),
    };
    let planned = finish(
        &primary.sql,
        primary.ctes,
        d.returning,
        d.tag,
        target,
        ctx.schema,
        source,
    )
    .map_err(|reason| refuse(target, reason));
    Some((target, planned))
}

struct Primary {
    /// The write to the new table, returning its rows.
    sql: String,
    /// The client's own CTEs, as written.
    ctes: Option<(bool, Vec<String>)>,
}

/// How one old column is written and read on the new side.
struct Column<'m> {
    new: String,
    up: Option<&'m str>,
    down: Option<&'m str>,
}

fn column<'m>(m: &'m Migration, old: &str) -> Column<'m> {
    match m.columns.iter().find(|c| c.old.eq_ignore_ascii_case(old)) {
        Some(c) => Column {
            new: c.new.to_lowercase(),
            up: c.up.as_deref(),
            down: c.down.as_deref(),
        },
        None => Column {
            new: old.to_owned(),
            up: None,
            down: None,
        },
    }
}

/// An expression of the config (`up`, `down`) with each column reference replaced by `replace(name)`.
pub(super) fn substitute(
    expr: &str,
    mut replace: impl FnMut(&str) -> Result<Option<String>, Unrewritable>,
) -> Result<String, Unrewritable> {
    let sql = format!("SELECT {expr}");
    let stmts = pg::parse(&sql).map_err(RefusalReason::other)?;
    let node = &stmts
        .first()
        .ok_or_else(|| RefusalReason::Other.because("empty expression"))?
        .node;
    let toks = pg::tokens(&sql).map_err(RefusalReason::other)?;
    let mut edits = Vec::new();
    for c in pg::Tree::of(node).all("ColumnRef") {
        let fields = pg::name_fields(c.get("fields"));
        let [Some(name)] = fields.as_slice() else {
            return Err(RefusalReason::Other.because(format!(
                "expression {expr:?} has a qualified column reference"
            )));
        };
        let Some(replacement) = replace(name)? else {
            continue;
        };
        let start = usize::try_from(pg::location(c)).map_err(RefusalReason::other)?;
        let tok = toks.iter().find(|t| t.start == start).ok_or_else(|| {
            RefusalReason::Other.because("a column of the expression could not be located")
        })?;
        edits.push((tok.start..tok.end, replacement));
    }
    let out = apply(&sql, 0..sql.len(), &mut edits)?;
    Ok(out["SELECT ".len()..].to_owned())
}

/// `text[range]` with the edits that lie inside it applied (and taken out of `edits`).
pub(super) fn apply(
    text: &str,
    range: Range<usize>,
    edits: &mut Vec<(Range<usize>, String)>,
) -> Result<String, Unrewritable> {
    let (inside, outside): (Vec<_>, Vec<_>) = edits
        .drain(..)
        .partition(|(r, _)| r.start >= range.start && r.end <= range.end);
    *edits = outside;
    splice::apply(text, range, inside)
}

/// The write to the new table, or `None` for forms left to the older translation.
fn build(
    d: &Dml<'_>,
    source: &Source<'_>,
    schema: &Schema,
    m: &Migration,
) -> Result<Option<Primary>, Unrewritable> {
    let text = source.text;
    let node = source.node;
    let toks = pg::tokens(text).map_err(RefusalReason::other)?;
    let depth = pg::depths(&toks);
    let at = |location: i32| -> Option<usize> {
        let start = usize::try_from(location).ok()?.checked_sub(source.offset)?;
        toks.iter().position(|t| t.start == start)
    };
    let parts = splice::dml_parts(text, source.offset, node)?;
    let body = parts.body.clone();
    let old_cols = columns_of(schema, &m.table)?;
    let new_table_name = m.new_table.as_ref().expect("table kind has new_table");
    let new_cols = columns_of(schema, new_table_name)?;
    let alias = splice::target_alias(node)?;
    let qualifier = quote_ident(&alias);
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();

    // The table.
    if !d.relation.catalogname.is_empty() {
        return Ok(None);
    }
    let Some(first) = at(d.relation.location) else {
        return Ok(None);
    };
    let last = first
        + if d.relation.schemaname.is_empty() {
            0
        } else {
            2
        };
    let table = table_text(new_table_name);
    edits.push((
        toks[first].start..toks[last].end,
        match d.relation.alias {
            Some(_) => table,
            None => format!("{table} AS {qualifier}"),
        },
    ));

    // An old column read on the new side, qualified with `qual` where given.
    let translate = |col: &str, qual: Option<&str>| -> Result<String, Unrewritable> {
        let c = column(m, col);
        let q = |name: &str| match qual {
            Some(q) => format!("{q}.{}", quote_ident(name)),
            None => quote_ident(name),
        };
        match c.down {
            Some(down) => Ok(format!("({})", substitute(down, |name| Ok(Some(q(name))))?)),
            None if new_cols.contains(&c.new) => Ok(q(&c.new)),
            None => Err(RefusalReason::Other
                .because(format!("column {col} has no counterpart in the new table"))),
        }
    };

    // Column references: only where they name the target's row (not in the client's CTEs, an INSERT's
    // source, or RETURNING, which is read from the rows afterwards).
    let tree = pg::Tree::of(node);
    let in_subquery: Vec<i32> = tree
        .all("SubLink")
        .into_iter()
        .flat_map(|s| {
            pg::Tree::of(s)
                .all("ColumnRef")
                .into_iter()
                .map(pg::location)
                .collect::<Vec<_>>()
        })
        .collect();
    let scope: Vec<i32> = match node {
        NodeEnum::InsertStmt(s) => match &s.on_conflict_clause {
            Some(oc) => pg::Tree::of(oc)
                .all("ColumnRef")
                .into_iter()
                .map(pg::location)
                .collect(),
            None => Vec::new(),
        },
        _ => tree
            .all("ColumnRef")
            .into_iter()
            .map(pg::location)
            .collect(),
    };
    let ctes = parts.ctes.clone().unwrap_or(0..0);
    for c in tree.all("ColumnRef") {
        let location = pg::location(c);
        let Some(first) = at(location) else {
            return Ok(None);
        };
        let start = toks[first].start;
        if !scope.contains(&location) || ctes.contains(&start) || start >= body.end {
            continue;
        }
        let fields = pg::name_fields(c.get("fields"));
        let fields: Vec<Option<&str>> = fields.iter().map(|f| f.as_deref()).collect();
        if pg::names_system_column(&fields) {
            return Ok(None);
        }
        let three_part = fields.len() == 3
            && fields[0] == Some(m.table.schema.as_str())
            && fields[1] == Some(m.table.name.as_str())
            && alias == m.table.name;
        let replacement = match fields.as_slice() {
            [Some(col)] if old_cols.iter().any(|o| o == col) => {
                if in_subquery.contains(&location) || d.other_tables {
                    return Ok(None);
                }
                translate(col, None)?
            }
            [Some(a)] if *a == alias => return Ok(None),
            [Some(a), Some(col)] if *a == alias => translate(col, Some(&qualifier))?,
            [Some("excluded"), Some(col)] if matches!(node, NodeEnum::InsertStmt(_)) => {
                translate(col, Some("excluded"))?
            }
            [_, _, Some(col)] if three_part => translate(col, Some(&qualifier))?,
            [Some(a), None] if *a == alias => return Ok(None),
            [None] => return Ok(None),
            _ => continue,
        };
        let end = first + 2 * fields.len() - 2;
        edits.push((toks[first].start..toks[end].end, replacement));
    }

    // Assignments (UPDATE SET, ON CONFLICT DO UPDATE SET): the new column, and `up` of the value.
    let assignments: &[pg_query::protobuf::Node] = match node {
        NodeEnum::UpdateStmt(s) => &s.target_list,
        NodeEnum::InsertStmt(s) => s
            .on_conflict_clause
            .as_ref()
            .map_or(&[][..], |oc| &oc.target_list[..]),
        _ => &[],
    };
    for item in assignments {
        let Some(NodeEnum::ResTarget(res)) = &item.node else {
            return Ok(None);
        };
        if !old_cols.contains(&res.name) {
            return Ok(None);
        }
        let c = column(m, &res.name);
        let Some(first) = at(res.location) else {
            return Ok(None);
        };
        edits.push((toks[first].start..toks[first].end, quote_ident(&c.new)));
        let Some(up) = c.up else { continue };
        let value = res.val.as_ref().and_then(|v| v.node.as_ref());
        if !res.indirection.is_empty()
            || matches!(
                value,
                None | Some(NodeEnum::MultiAssignRef(_) | NodeEnum::SetToDefault(_))
            )
        {
            return Ok(None);
        }
        let Some(value) = splice::assignment_value(&toks, &depth, first) else {
            return Ok(None);
        };
        let value_range = toks[value.start].start..toks[value.end - 1].end;
        let rendered = apply(text, value_range.clone(), &mut edits)?;
        let ty = schema.type_of(&m.table, &res.name).unwrap_or("text");
        let mut uses = 0;
        let computed = substitute(up, |name| {
            if name == res.name {
                uses += 1;
                Ok(Some(format!("CAST(({rendered}) AS {ty})")))
            } else if old_cols.iter().any(|o| o == name) {
                translate(name, Some(&qualifier)).map(Some)
            } else {
                Ok(None)
            }
        })?;
        if uses > 1 {
            return Ok(None);
        }
        edits.push((value_range, computed));
    }

    // INSERT: the column list renamed, and values for mapped or retyped columns converted.
    if let NodeEnum::InsertStmt(s) = node {
        let mut cols = Vec::new();
        for item in &s.cols {
            let Some(NodeEnum::ResTarget(res)) = &item.node else {
                return Ok(None);
            };
            if !res.indirection.is_empty() || !old_cols.contains(&res.name) {
                return Ok(None);
            }
            let Some(i) = at(res.location) else {
                return Ok(None);
            };
            let c = column(m, &res.name);
            edits.push((toks[i].start..toks[i].end, quote_ident(&c.new)));
            cols.push((res.name.clone(), c));
        }
        let convert = |old: &str, c: &Column<'_>| {
            c.up.is_some()
                || schema.type_of(&m.table, old) != schema.type_of(new_table_name, &c.new)
        };
        if let Some(sel) = s.select_stmt.as_ref().and_then(|n| n.node.as_ref()) {
            let NodeEnum::SelectStmt(sel) = sel else {
                return Ok(None);
            };
            if cols.is_empty() {
                return Ok(None);
            }
            if sel.values_lists.is_empty() {
                // INSERT … SELECT: converting needs the query as a derived table (the older translation).
                if cols.iter().any(|(old, c)| convert(old, c)) {
                    return Ok(None);
                }
            } else {
                let Some(rows) = splice::values_rows(&toks, &depth, first) else {
                    return Ok(None);
                };
                for items in rows {
                    if items.len() != cols.len() {
                        return Ok(None);
                    }
                    for ((old, c), item) in cols.iter().zip(&items) {
                        if !convert(old, c) {
                            continue;
                        }
                        let range = toks[item.start].start..toks[item.end - 1].end;
                        let raw = &text[range.clone()];
                        if item.len() == 1 && toks[item.start].kind == Token::Default {
                            if c.up.is_some() {
                                return Ok(None);
                            }
                            continue;
                        }
                        let ty = schema.type_of(&m.table, old).unwrap_or("text");
                        let cast = format!("CAST(({raw}) AS {ty})");
                        let value = match c.up {
                            Some(up) => {
                                let mut uses = 0;
                                let v = substitute(up, |name| {
                                    if name == old {
                                        uses += 1;
                                        Ok(Some(cast.clone()))
                                    } else if old_cols.iter().any(|o| o == name) {
                                        Err(RefusalReason::Other
                                            .because(format!("up of {old} reads {name}")))
                                    } else {
                                        Ok(None)
                                    }
                                })?;
                                if uses > 1 {
                                    return Ok(None);
                                }
                                v
                            }
                            None => cast,
                        };
                        edits.push((range, value));
                    }
                }
            }
        } else if !cols.is_empty() {
            return Ok(None);
        }
        // ON CONFLICT (cols): the new names.
        if let Some(oc) = &s.on_conflict_clause {
            match &oc.infer {
                Some(infer) if !infer.conname.is_empty() => return Ok(None),
                Some(_) => {}
                None if oc.action() == pg_query::protobuf::OnConflictAction::OnconflictUpdate => {
                    return Ok(None)
                }
                None => {
                    return finish_primary(text, body, &mut edits, &parts, &qualifier).map(Some)
                }
            }
            let conflict = (0..toks.len())
                .find(|&i| depth[i] == 0 && toks[i].kind == Token::Conflict)
                .ok_or_else(|| RefusalReason::Other.because("ON CONFLICT not found"))?;
            let open = conflict + 1;
            if toks.get(open).map(|t| t.kind) != Some(Token::Ascii40) {
                return Ok(None);
            }
            let close = (open + 1..toks.len())
                .find(|&j| depth[j] == depth[open] && toks[j].kind == Token::Ascii41)
                .ok_or_else(|| RefusalReason::Other.because("unbalanced ON CONFLICT"))?;
            for j in open + 1..close {
                if depth[j] != depth[open] + 1 || toks[j].kind == Token::Ascii44 {
                    continue;
                }
                let word = text[toks[j].start..toks[j].end]
                    .trim_matches('"')
                    .to_lowercase();
                if !old_cols.contains(&word) {
                    return Ok(None);
                }
                edits.push((
                    toks[j].start..toks[j].end,
                    quote_ident(&column(m, &word).new),
                ));
            }
        }
    }
    if d.tag == DmlTag::Insert && matches!(node, NodeEnum::InsertStmt(s) if s.cols.is_empty()) {
        return Ok(None);
    }
    finish_primary(text, body, &mut edits, &parts, &qualifier).map(Some)
}

/// The spliced statement, returning the new table's rows (only its own: FROM and USING add other tables).
fn finish_primary(
    text: &str,
    body: Range<usize>,
    edits: &mut Vec<(Range<usize>, String)>,
    parts: &splice::DmlParts,
    qualifier: &str,
) -> Result<Primary, Unrewritable> {
    let sql = format!("{} RETURNING {qualifier}.*", apply(text, body, edits)?);
    let ctes = parts
        .ctes
        .clone()
        .map(|r| (parts.recursive, vec![text[r].to_owned()]));
    Ok(Primary { sql, ctes })
}
