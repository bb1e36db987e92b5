//! Reads routed to the new schema, planned from Postgres's own parse tree and spliced into the client's text:
//! each reference to a routed old table is replaced, at its position, by a derived table with exactly the old
//! table's columns, in order and in their types, under the same name. Everything else of the client's text —
//! comments, operators, locking clauses Postgres has and sqlparser lacks — stays as sent.

use super::read_route::derived_select;
use super::sqltext::quote_ident;
use super::{action, pg, Action, Context, Source, Target};
use crate::rewrite::ActionKind;
use crate::routing::Route;
use pg_query::protobuf::Token;
use std::ops::Range;

/// What became of a plain query that names a migrated table.
pub(super) struct Routed {
    /// The rewritten text, or `None` to forward the client's text as is.
    pub text: Option<String>,
    pub actions: Vec<Action>,
}

/// `Some` for a statement Postgres reads as a plain query ([`pg::Kind::Read`]).
pub(super) fn plan(source: &Source<'_>, ctx: &Context<'_>) -> Option<Routed> {
    if pg::kind(source.node) != pg::Kind::Read {
        return None;
    }
    let tree = pg::Tree::of(source.node);
    // Names that are CTEs somewhere in the statement are not tables there (conservatively: anywhere).
    let ctes: Vec<&str> = tree
        .all("CommonTableExpr")
        .iter()
        .filter_map(|c| c.get("ctename")?.as_str())
        .collect();
    // `FOR UPDATE OF t` names a table too, but by the name the query gives it: not a reference to replace.
    let locked: Vec<i32> = tree
        .all("LockingClause")
        .iter()
        .flat_map(|l| {
            pg::Tree::of(*l)
                .all("RangeVar")
                .into_iter()
                .map(pg::location)
                .collect::<Vec<_>>()
        })
        .collect();
    let sampled: Vec<i32> = tree
        .all("RangeTableSample")
        .iter()
        .flat_map(|s| {
            pg::Tree::of(*s)
                .all("RangeVar")
                .into_iter()
                .map(pg::location)
                .collect::<Vec<_>>()
        })
        .collect();

    let mut actions = Vec::new();
    let mut routed: Vec<(pg::Relation, &Target<'_>)> = Vec::new();
    let mut unrewritable = false;
    for r in tree
        .all("RangeVar")
        .into_iter()
        .filter_map(pg::Relation::of)
    {
        if locked.contains(&r.location) {
            continue;
        }
        if r.schema.is_empty() && ctes.contains(&r.name.as_str()) {
            continue;
        }
        let Some(target) = ctx.resolve_parts(&r.parts(), &[]) else {
            continue;
        };
        if target.route == Route::Old {
            actions.push(action(target, ActionKind::ReadOld));
            continue;
        }
        if !r.inh || !r.catalog.is_empty() || sampled.contains(&r.location) {
            unrewritable = true;
        }
        routed.push((r, target));
    }
    if routed.is_empty() {
        return Some(Routed {
            text: None,
            actions,
        });
    }
    let result = if unrewritable {
        Err(())
    } else {
        splice(source, ctx, &tree, &routed)
    };
    match result {
        Ok(text) => {
            actions.extend(routed.iter().map(|(_, t)| action(t, ActionKind::ReadNew)));
            Some(Routed {
                text: Some(text),
                actions,
            })
        }
        Err(()) => {
            actions.extend(
                routed
                    .iter()
                    .map(|(_, t)| action(t, ActionKind::ReadUnrewritable)),
            );
            Some(Routed {
                text: None,
                actions,
            })
        }
    }
}

/// The client's text with each routed reference replaced by its derived table, and three-part column names
/// shortened to the name the derived table answers to. `Err` where the statement reads something only the old
/// table has (system columns, the row itself with its type) or a position cannot be trusted.
fn splice(
    source: &Source<'_>,
    ctx: &Context<'_>,
    tree: &pg::Tree,
    routed: &[(pg::Relation, &Target<'_>)],
) -> Result<String, ()> {
    let toks = pg::tokens(source.text).map_err(|_| ())?;
    let at = |location: i32| -> Result<usize, ()> {
        let start = usize::try_from(location)
            .ok()
            .and_then(|l| l.checked_sub(source.offset))
            .ok_or(())?;
        toks.iter().position(|t| t.start == start).ok_or(())
    };
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut names: Vec<Name<'_>> = Vec::new();
    for (r, target) in routed {
        let first = at(r.location)?;
        let count = if r.schema.is_empty() { 1 } else { 3 };
        let last = first + count - 1;
        let dotted = (first..=last).all(|i| {
            toks.get(i)
                .is_some_and(|t| ((i - first) % 2 == 1) == (t.kind == Token::Ascii46))
        });
        if !dotted {
            return Err(());
        }
        let derived = derived_select(target.migration, ctx.schema).map_err(|_| ())?;
        let alias = match &r.alias {
            Some(a) => {
                names.push((a.clone(), None, columns(ctx, target)));
                String::new()
            }
            None => {
                names.push((
                    r.name.clone(),
                    Some((target.migration.table.schema.clone(), r.name.clone())),
                    columns(ctx, target),
                ));
                format!(" AS {}", quote_ident(&r.name))
            }
        };
        edits.push((
            toks[first].start..toks[last].end,
            format!("({derived}){alias}"),
        ));
    }
    for c in tree.all("ColumnRef") {
        let fields = pg::name_fields(c.get("fields"));
        let fields: Vec<Option<&str>> = fields.iter().map(|f| f.as_deref()).collect();
        if pg::names_system_column(&fields) {
            return Err(());
        }
        match fields.as_slice() {
            [Some(name)] => {
                let whole_row = names
                    .iter()
                    .any(|(alias, _, cols)| alias == name && !cols.iter().any(|c| c == name));
                if whole_row {
                    return Err(());
                }
            }
            [Some(schema), Some(table), _] => {
                let qualified = names.iter().any(|(_, q, _)| {
                    q.as_ref()
                        .is_some_and(|(s, t)| s.as_str() == *schema && t.as_str() == *table)
                });
                if qualified {
                    let first = at(pg::location(c))?;
                    edits.push((toks[first].start..toks[first + 2].start, String::new()));
                }
            }
            [_, _, _, _] => return Err(()),
            _ => {}
        }
    }
    super::splice::apply(source.text, 0..source.text.len(), edits).map_err(|_| ())
}

/// A routed reference as the rest of the statement may name it: its alias (or bare table name), its
/// (schema, table) when `schema.table.column` may qualify it, and its old columns.
type Name<'s> = (String, Option<(String, String)>, &'s [String]);

fn columns<'s>(ctx: &'s Context<'_>, target: &Target<'_>) -> &'s [String] {
    ctx.schema
        .columns
        .get(&target.migration.table)
        .map_or(&[], Vec::as_slice)
}
