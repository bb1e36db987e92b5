//! Where a routed read's output columns come from. A read served from the new schema returns rows in the old
//! shape, but Postgres describes its fields as columns of the new table or as expressions; drivers build
//! result-set metadata from that (pgjdbc's table name, nullability, auto-increment). For each output field
//! that is a plain reference to an old column, this finds that column, so the RowDescription can name it.

use super::shape::Origin;
use super::{Context, Schema, Target};
use crate::routing::Route;
use pg_query::protobuf::{self, SetOperation};
use pg_query::NodeEnum;
use std::sync::Arc;

/// A FROM item: the name it goes by, and the routed migration it reads, if that is what it is.
struct FromItem<'c, 'a> {
    alias: String,
    target: Option<&'c Target<'a>>,
}

fn from_items<'c, 'a>(
    node: &protobuf::Node,
    ctx: &'c Context<'a>,
    out: &mut Vec<FromItem<'c, 'a>>,
) {
    match &node.node {
        Some(NodeEnum::RangeVar(r)) => {
            let mut parts = Vec::new();
            if !r.schemaname.is_empty() {
                parts.push(r.schemaname.clone());
            }
            parts.push(r.relname.clone());
            let target = ctx
                .resolve_parts(&parts, &[])
                .filter(|t| t.route == Route::New);
            out.push(FromItem {
                alias: r
                    .alias
                    .as_ref()
                    .map_or(r.relname.clone(), |a| a.aliasname.clone()),
                target,
            });
        }
        Some(NodeEnum::JoinExpr(j)) if j.alias.is_none() => {
            for side in [&j.larg, &j.rarg].into_iter().flatten() {
                from_items(side, ctx, out);
            }
        }
        _ => out.push(FromItem {
            alias: String::new(),
            target: None,
        }),
    }
}

/// Origins of the output fields of a routed SELECT, in order; `None` when nothing can be said.
pub(super) fn of_read(node: &NodeEnum, ctx: &Context<'_>) -> Option<Arc<[Option<Origin>]>> {
    let NodeEnum::SelectStmt(s) = node else {
        return None;
    };
    if s.op() != SetOperation::SetopNone || s.with_clause.is_some() || !s.values_lists.is_empty() {
        return None;
    }
    let mut from = Vec::new();
    for item in &s.from_clause {
        from_items(item, ctx, &mut from);
    }
    fields(&s.target_list, &from, ctx.schema)
}

/// Origins of the RETURNING fields of a write whose rows come from elsewhere (`new_primary` reads them from
/// the new table): plain references to the target's columns are described as those old columns.
pub(super) fn of_returning(
    node: &NodeEnum,
    target: &Target<'_>,
    schema: &Schema,
) -> Option<Arc<[Option<Origin>]>> {
    let (returning, relation) = match node {
        NodeEnum::InsertStmt(s) => (&s.returning_clause, &s.relation),
        NodeEnum::UpdateStmt(s) => (&s.returning_clause, &s.relation),
        NodeEnum::DeleteStmt(s) => (&s.returning_clause, &s.relation),
        _ => return None,
    };
    let r = relation.as_ref()?;
    let from = [FromItem {
        alias: r
            .alias
            .as_ref()
            .map_or(r.relname.clone(), |a| a.aliasname.clone()),
        target: Some(target),
    }];
    fields(&returning.as_ref()?.exprs, &from, schema)
}

fn fields(
    target_list: &[protobuf::Node],
    from: &[FromItem<'_, '_>],
    schema: &Schema,
) -> Option<Arc<[Option<Origin>]>> {
    let origins_of = |t: &Target<'_>| schema.origins.get(&t.migration.table);
    let column_origin = |t: &Target<'_>, col: &str| -> Option<Origin> {
        let i = schema
            .columns
            .get(&t.migration.table)?
            .iter()
            .position(|c| c == col)?;
        origins_of(t)?.get(i).copied().flatten()
    };
    let mut out: Vec<Option<Origin>> = Vec::new();
    for item in target_list {
        let Some(NodeEnum::ResTarget(res)) = &item.node else {
            return None;
        };
        let Some(NodeEnum::ColumnRef(c)) = res.val.as_ref().and_then(|v| v.node.as_ref()) else {
            out.push(None);
            continue;
        };
        let fields: Vec<Option<&str>> = c
            .fields
            .iter()
            .map(|f| match &f.node {
                Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                _ => None,
            })
            .collect();
        // A star over FROM items of unknown width: later fields' positions are unknown, so stop here.
        let expand = |items: Vec<&FromItem<'_, '_>>, out: &mut Vec<Option<Origin>>| -> bool {
            if items.is_empty() {
                return false;
            }
            for f in items {
                let Some(t) = f.target else { return false };
                match origins_of(t) {
                    Some(origins) => out.extend(origins.iter().copied()),
                    None => return false,
                }
            }
            true
        };
        let done = match fields.as_slice() {
            [None] => expand(from.iter().collect(), &mut out),
            [Some(a), None] => expand(from.iter().filter(|f| f.alias == *a).collect(), &mut out),
            [Some(col)] => {
                let mut owners = from
                    .iter()
                    .filter_map(|f| f.target.and_then(|t| column_origin(t, col)));
                out.push(owners.next().filter(|_| owners.next().is_none()));
                true
            }
            [Some(a), Some(col)] => {
                out.push(
                    from.iter()
                        .find(|f| f.alias == *a)
                        .and_then(|f| f.target)
                        .and_then(|t| column_origin(t, col)),
                );
                true
            }
            [Some(schema), Some(table), Some(col)] => {
                out.push(
                    from.iter()
                        .filter_map(|f| f.target)
                        .find(|t| {
                            t.migration.table.schema == *schema && t.migration.table.name == *table
                        })
                        .and_then(|t| column_origin(t, col)),
                );
                true
            }
            _ => false,
        };
        if !done {
            break;
        }
    }
    out.iter().any(Option::is_some).then(|| Arc::from(out))
}

/// For every routed table migration: each new column's origin paired with the old column it stands for.
pub(super) fn remap(ctx: &Context<'_>) -> Vec<(Origin, Origin)> {
    let mut out = Vec::new();
    for t in ctx.targets.iter().filter(|t| t.route == Route::New) {
        let m = t.migration;
        let Some(new_table) = m.new_table.as_ref() else {
            continue;
        };
        let (Some(old_cols), Some(old_origins)) = (
            ctx.schema.columns.get(&m.table),
            ctx.schema.origins.get(&m.table),
        ) else {
            continue;
        };
        let (Some(new_cols), Some(new_origins)) = (
            ctx.schema.columns.get(new_table),
            ctx.schema.origins.get(new_table),
        ) else {
            continue;
        };
        for (old, old_origin) in old_cols.iter().zip(old_origins) {
            let new = m
                .columns
                .iter()
                .find(|c| c.old.eq_ignore_ascii_case(old))
                .map_or_else(|| old.clone(), |c| c.new.to_lowercase());
            let new_origin = new_cols
                .iter()
                .position(|c| *c == new)
                .and_then(|i| new_origins.get(i).copied().flatten());
            if let (Some(new_origin), Some(old_origin)) = (new_origin, old_origin) {
                out.push((new_origin, *old_origin));
            }
        }
    }
    out
}
