//! Column-kind writes planned from Postgres's own parse tree and spliced: next to every write of an old column,
//! the statement gains `new = up(value)` — the value as the old column stores it (cast to its type; its default
//! where the statement leaves it out or writes DEFAULT) — and under `new_primary` the old column then stores
//! `down` of the new value. The client's text is otherwise kept.
//!
//! Forms this does not cover (INSERT … SELECT, an INSERT without a column list, DEFAULT VALUES, multi-column
//! or subscripted assignment of a mapped column) return `None`, and the older sqlparser-driven transform takes
//! them.

use super::ast::REPEATABLE_FUNCTIONS;
use super::mirror::{self, Planned};
use super::primary::substitute;
use super::shape::{DmlTag, Shape};
use super::sqltext::quote_ident;
use super::{pg, refuse, splice, Context, RefusalReason, Schema, Source, Target, Unrewritable};
use crate::config::migration::{Migration, MigrationKind, WriteMode};
use pg_query::protobuf::{self, Token};
use pg_query::NodeEnum;
use std::ops::Range;

/// `Some` for an INSERT or UPDATE this planner handles: its rewrite or refusal.
pub(super) fn plan<'c, 'a>(
    source: &Source<'_>,
    ctx: &'c Context<'a>,
) -> Option<(&'c Target<'a>, Planned)> {
    let d = mirror::dml(source.node)?;
    let target = mirror::resolve(ctx, d.relation)?;
    let m = target.migration;
    if m.kind != MigrationKind::Column || m.writes == WriteMode::Off || d.tag == DmlTag::Delete {
        return None;
    }
    if let Err(reason) = mirror::cte_writes(&d, ctx) {
        return Some((target, Err(refuse(target, reason))));
    }
    match build(source, ctx.schema, m) {
        Ok(Some(sql)) => Some((target, Ok((sql, Shape::Same)))),
        Ok(None) => None,
        Err(reason) => Some((target, Err(refuse(target, reason)))),
    }
}

/// Whether a value gives the same result when written twice (once for old, once inside `up` for new).
fn repeatable(value: &protobuf::Node) -> bool {
    let tree = pg::Tree::of(value);
    tree.all("SubLink").is_empty()
        && tree.all("FuncCall").iter().all(|f| {
            pg::name_fields(f.get("funcname"))
                .last()
                .cloned()
                .flatten()
                .is_some_and(|n| REPEATABLE_FUNCTIONS.contains(&n.as_str()))
        })
}

struct Mapping<'m> {
    old: String,
    new: String,
    up: Option<&'m str>,
    down: Option<&'m str>,
}

fn mappings(m: &Migration) -> Vec<Mapping<'_>> {
    m.columns
        .iter()
        .map(|c| Mapping {
            old: c.old.to_lowercase(),
            new: c.new.to_lowercase(),
            up: c.up.as_deref(),
            down: c.down.as_deref(),
        })
        .collect()
}

/// What the new column gets, and (new_primary) what the old one then stores, for `values` written to old
/// columns (text, already as stored: cast, or a default).
fn computed(
    map: &Mapping<'_>,
    values: &[(String, String)],
    schema: &Schema,
    m: &Migration,
) -> Result<(String, Option<String>), Unrewritable> {
    let value_of = |name: &str| {
        values
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, v)| v.clone())
    };
    let new_value = match map.up {
        Some(up) => substitute(up, |name| Ok(value_of(name)))?,
        None => value_of(&map.old).ok_or_else(|| RefusalReason::other("no value"))?,
    };
    let derived = if m.writes == WriteMode::NewPrimary {
        let ty = schema.type_of(&m.table, &map.new).unwrap_or("text");
        let typed = format!("CAST(({new_value}) AS {ty})");
        Some(match map.down {
            Some(down) => substitute(down, |name| Ok((name == map.new).then(|| typed.clone())))?,
            None => typed,
        })
    } else {
        None
    };
    Ok((new_value, derived))
}

/// A column's default as stored, for `up`: `None` when it may change if evaluated twice.
fn default_value(
    schema: &Schema,
    m: &Migration,
    column: &str,
) -> Result<Option<String>, Unrewritable> {
    let ty = schema.type_of(&m.table, column).unwrap_or("text");
    match schema.default_of(&m.table, column)? {
        None => Ok(Some(format!("CAST(NULL AS {ty})"))),
        Some(text) => {
            let stmts = pg::parse(&format!("SELECT {text}")).map_err(RefusalReason::other)?;
            let node = &stmts
                .first()
                .ok_or_else(|| RefusalReason::other("empty default"))?
                .node;
            let wrapped = protobuf::Node {
                node: Some(node.clone()),
            };
            Ok(repeatable(&wrapped).then(|| format!("CAST(({text}) AS {ty})")))
        }
    }
}

/// An assigned column, its value's tokens (`None` for DEFAULT) and its value as parsed.
type Assigned<'n> = (String, Option<Range<usize>>, Option<&'n protobuf::Node>);

fn build(
    source: &Source<'_>,
    schema: &Schema,
    m: &Migration,
) -> Result<Option<String>, Unrewritable> {
    let text = source.text;
    let node = source.node;
    let toks = pg::tokens(text).map_err(RefusalReason::other)?;
    let depth = pg::depths(&toks);
    let at = |location: i32| -> Option<usize> {
        let start = usize::try_from(location).ok()?.checked_sub(source.offset)?;
        toks.iter().position(|t| t.start == start)
    };
    let maps = mappings(m);
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let unrepeatable = |old: &str, new: &str| {
        RefusalReason::UnrepeatableValue.because(format!("the value written to {old} may change if evaluated twice, so {new} cannot be computed from it"))
    };

    // Assignments: UPDATE SET, ON CONFLICT DO UPDATE SET.
    let assignments: &[protobuf::Node] = match node {
        NodeEnum::UpdateStmt(s) => &s.target_list,
        NodeEnum::InsertStmt(s) => s
            .on_conflict_clause
            .as_ref()
            .map_or(&[][..], |oc| &oc.target_list[..]),
        _ => return Ok(None),
    };
    if !assignments.is_empty() {
        // Each assigned column with its value's token range (or DEFAULT).
        let mut assigned: Vec<Assigned<'_>> = Vec::new();
        for item in assignments {
            let Some(NodeEnum::ResTarget(res)) = &item.node else {
                return Ok(None);
            };
            let Some(first) = at(res.location) else {
                return Ok(None);
            };
            let value = res.val.as_deref();
            let mapped = maps.iter().any(|x| x.old == res.name || x.new == res.name);
            if mapped
                && (!res.indirection.is_empty()
                    || matches!(
                        value.and_then(|v| v.node.as_ref()),
                        Some(NodeEnum::MultiAssignRef(_))
                    ))
            {
                return Ok(None);
            }
            let range = splice::assignment_value(&toks, &depth, first);
            let is_default = matches!(
                value.and_then(|v| v.node.as_ref()),
                Some(NodeEnum::SetToDefault(_))
            );
            assigned.push((
                res.name.clone(),
                if is_default { None } else { range },
                value,
            ));
        }
        let Some(last_end) = assigned
            .iter()
            .filter_map(|(_, r, _)| r.as_ref().map(|r| toks[r.end - 1].end))
            .max()
        else {
            return Ok(None);
        };
        // Every old column's value as stored, for the `up`s that read it.
        let mut values: Vec<(String, String)> = Vec::new();
        for (name, range, _) in &assigned {
            let ty = schema.type_of(&m.table, name).unwrap_or("text");
            let value = match range {
                Some(r) => format!(
                    "CAST(({}) AS {ty})",
                    &text[toks[r.start].start..toks[r.end - 1].end]
                ),
                None => match default_value(schema, m, name)? {
                    Some(d) => d,
                    None => return Err(unrepeatable(name, "the new column")),
                },
            };
            values.push((name.clone(), value));
        }
        let mut added = String::new();
        for map in &maps {
            let Some((_, range, value)) = assigned.iter().find(|(n, _, _)| *n == map.old) else {
                continue;
            };
            if assigned.iter().any(|(n, _, _)| *n == map.new) {
                continue;
            }
            if let Some(v) = value {
                if range.is_some() && !repeatable(v) {
                    return Err(unrepeatable(&map.old, &map.new));
                }
            }
            let (new_value, derived) = computed(map, &values, schema, m)?;
            added.push_str(&format!(", {} = {new_value}", quote_ident(&map.new)));
            if let (Some(derived), Some(r)) = (derived, range) {
                edits.push((toks[r.start].start..toks[r.end - 1].end, derived));
            }
        }
        if !added.is_empty() {
            edits.push((last_end..last_end, added));
        }
        if matches!(node, NodeEnum::UpdateStmt(_)) {
            return finish(text, edits).map(Some);
        }
    }

    // INSERT: the new columns appended to the column list and to every VALUES row.
    let NodeEnum::InsertStmt(s) = node else {
        return Ok(None);
    };
    let Some(NodeEnum::SelectStmt(sel)) = s.select_stmt.as_ref().and_then(|n| n.node.as_ref())
    else {
        return Ok(None);
    };
    if s.cols.is_empty() || sel.values_lists.is_empty() {
        return Ok(None);
    }
    let mut cols = Vec::new();
    for item in &s.cols {
        let Some(NodeEnum::ResTarget(res)) = &item.node else {
            return Ok(None);
        };
        if !res.indirection.is_empty() {
            return Ok(None);
        }
        cols.push(res.name.clone());
    }
    let wanted: Vec<&Mapping<'_>> = maps.iter().filter(|x| !cols.contains(&x.new)).collect();
    if wanted.is_empty() {
        return finish(text, edits).map(Some);
    }
    let Some(relation) = at(s.relation.as_ref().map_or(-1, |r| r.location)) else {
        return Ok(None);
    };
    // The column list's closing parenthesis.
    let Some(open) =
        (relation..toks.len()).find(|&i| depth[i] == 0 && toks[i].kind == Token::Ascii40)
    else {
        return Ok(None);
    };
    let Some(close) =
        (open + 1..toks.len()).find(|&i| depth[i] == 0 && toks[i].kind == Token::Ascii41)
    else {
        return Ok(None);
    };
    let names: String = wanted
        .iter()
        .map(|x| format!(", {}", quote_ident(&x.new)))
        .collect();
    edits.push((toks[close].start..toks[close].start, names));
    let Some(rows) = splice::values_rows(&toks, &depth, close) else {
        return Ok(None);
    };
    let row_nodes: Vec<&protobuf::Node> = sel.values_lists.iter().collect();
    if rows.len() != row_nodes.len() {
        return Ok(None);
    }
    for (items, row_node) in rows.iter().zip(row_nodes) {
        if items.len() != cols.len() {
            return Ok(None);
        }
        let Some(NodeEnum::List(row_list)) = &row_node.node else {
            return Ok(None);
        };
        let mut values: Vec<(String, String)> = Vec::new();
        for (col, item) in cols.iter().zip(items) {
            let ty = schema.type_of(&m.table, col).unwrap_or("text");
            let raw = &text[toks[item.start].start..toks[item.end - 1].end];
            let value = if item.len() == 1 && toks[item.start].kind == Token::Default {
                match default_value(schema, m, col)? {
                    Some(d) => d,
                    None if wanted.iter().any(|x| x.old == *col) => {
                        return Err(unrepeatable(col, "the new column"))
                    }
                    None => continue,
                }
            } else {
                format!("CAST(({raw}) AS {ty})")
            };
            values.push((col.clone(), value));
        }
        let mut added = String::new();
        for map in &wanted {
            match cols.iter().position(|c| *c == map.old) {
                Some(i) => {
                    if !row_list.items.get(i).is_some_and(repeatable) {
                        return Err(unrepeatable(&map.old, &map.new));
                    }
                }
                None => match default_value(schema, m, &map.old)? {
                    Some(d) => values.push((map.old.clone(), d)),
                    None => return Err(unrepeatable(&map.old, &map.new)),
                },
            }
            let (new_value, derived) = computed(map, &values, schema, m)?;
            added.push_str(&format!(", {new_value}"));
            if let (Some(derived), Some(i)) = (derived, cols.iter().position(|c| *c == map.old)) {
                let item = &items[i];
                edits.push((toks[item.start].start..toks[item.end - 1].end, derived));
            }
        }
        let row_end = toks[items.last().expect("a row has items").end].start;
        edits.push((row_end..row_end, added));
    }
    finish(text, edits).map(Some)
}

fn finish(text: &str, edits: Vec<(Range<usize>, String)>) -> Result<String, Unrewritable> {
    splice::apply(text, 0..text.len(), edits)
}
