//! Where a DML statement's clauses stand in the client's text, by Postgres's tokens and parse tree, so rewrites
//! can keep the client's bytes and splice pgshift's additions around them instead of printing an AST.

use super::pg::SYSTEM_COLUMNS;
use super::pg::{self, Tok};
use super::refusal::{RefusalReason, Unrewritable};
use pg_query::protobuf::{self, Token};
use pg_query::NodeEnum;
use std::ops::Range;

/// The parts of `[WITH …] INSERT|UPDATE|DELETE … [RETURNING …]` a dual write rearranges. Ranges index the
/// statement's own text.
#[derive(Debug, PartialEq, Eq)]
pub struct DmlParts {
    /// The client's CTE list, without `WITH [RECURSIVE]`.
    pub ctes: Option<Range<usize>>,
    pub recursive: bool,
    /// From the INSERT/UPDATE/DELETE keyword to the end of the clause before RETURNING.
    pub body: Range<usize>,
    /// The RETURNING list, as written.
    pub returning: Option<Range<usize>>,
    /// Each RETURNING item's expression without its alias; column references (`*` and `t.*` included),
    /// constants and parameters left out.
    pub returning_exprs: Vec<Range<usize>>,
}

/// The parts of a DML statement. `text` is the statement, `offset` where it starts in the text Postgres parsed
/// (node locations count from there).
pub fn dml_parts(text: &str, offset: usize, node: &NodeEnum) -> Result<DmlParts, Unrewritable> {
    let (relation, with, returning) = match node {
        NodeEnum::InsertStmt(s) => (&s.relation, &s.with_clause, &s.returning_clause),
        NodeEnum::UpdateStmt(s) => (&s.relation, &s.with_clause, &s.returning_clause),
        NodeEnum::DeleteStmt(s) => (&s.relation, &s.with_clause, &s.returning_clause),
        _ => return Err(RefusalReason::Other.because("not an INSERT, UPDATE or DELETE")),
    };
    let unknown = || RefusalReason::other("the statement's clauses could not be located");
    let relation_at = relation
        .as_ref()
        .and_then(|r| usize::try_from(r.location).ok())
        .and_then(|l| l.checked_sub(offset))
        .ok_or_else(unknown)?;
    let toks = pg::tokens(text).map_err(RefusalReason::other)?;
    let depth = pg::depths(&toks);
    let top = |i: usize| depth[i] == 0;
    let dml = (0..toks.len())
        .rev()
        .find(|&i| {
            top(i)
                && toks[i].start < relation_at
                && matches!(toks[i].kind, Token::Insert | Token::Update | Token::DeleteP)
        })
        .ok_or_else(unknown)?;
    let ret = (dml..toks.len()).find(|&i| top(i) && toks[i].kind == Token::Returning);
    if ret.is_some() != returning.is_some() {
        return Err(unknown());
    }
    if returning.as_ref().is_some_and(|r| !r.options.is_empty()) {
        return Err(RefusalReason::Returning.because("RETURNING WITH (…) is not supported"));
    }
    let ctes = match with {
        Some(w) => {
            let first = 1 + usize::from(w.recursive);
            if dml <= first || toks[0].kind != Token::With {
                return Err(unknown());
            }
            Some(toks[first].start..toks[dml - 1].end)
        }
        None if dml == 0 => None,
        None => return Err(unknown()),
    };
    let body_end = match ret {
        Some(r) if r > dml => toks[r - 1].end,
        Some(_) => return Err(unknown()),
        None => text.len(),
    };
    let returning_range = match ret {
        Some(r) if r + 1 < toks.len() => Some(toks[r + 1].start..text.len()),
        Some(_) => return Err(unknown()),
        None => None,
    };
    let items = returning.as_ref().map_or(&[][..], |r| &r.exprs[..]);
    let returning_exprs = match ret {
        Some(r) => item_exprs(&toks[r + 1..], &depth[r + 1..], items, offset)?,
        None => Vec::new(),
    };
    Ok(DmlParts {
        ctes,
        recursive: with.as_ref().is_some_and(|w| w.recursive),
        body: toks[dml].start..body_end,
        returning: returning_range,
        returning_exprs,
    })
}

/// Each target-list item's expression (alias left out), from its tokens; star items are skipped.
fn item_exprs(
    toks: &[Tok],
    depth: &[i32],
    items: &[protobuf::Node],
    offset: usize,
) -> Result<Vec<Range<usize>>, Unrewritable> {
    let base = depth.first().copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut at = 0;
    for item in items {
        let Some(NodeEnum::ResTarget(target)) = &item.node else {
            return Err(RefusalReason::Returning.because("a RETURNING item is not a target"));
        };
        let start = usize::try_from(target.location)
            .ok()
            .and_then(|l| l.checked_sub(offset))
            .ok_or_else(|| {
                RefusalReason::Returning.because("a RETURNING item could not be located")
            })?;
        let first = (at..toks.len())
            .find(|&i| toks[i].start == start)
            .ok_or_else(|| {
                RefusalReason::Returning.because("a RETURNING item could not be located")
            })?;
        let end = (first..toks.len())
            .find(|&i| depth[i] == base && toks[i].kind == Token::Ascii44)
            .unwrap_or(toks.len());
        at = end + 1;
        let mut last = end
            .checked_sub(1)
            .filter(|&l| l >= first)
            .ok_or_else(|| RefusalReason::Returning.because("empty RETURNING item"))?;
        if !target.name.is_empty() {
            // `expr AS label` or `expr label`: the alias is one token.
            last = last
                .checked_sub(1)
                .filter(|&l| l >= first)
                .ok_or_else(|| RefusalReason::Other.because("bad alias"))?;
            if toks[last].kind == Token::As {
                last = last
                    .checked_sub(1)
                    .filter(|&l| l >= first)
                    .ok_or_else(|| RefusalReason::Other.because("bad alias"))?;
            }
        }
        // Column references, constants and parameters cannot be aggregates or set-returning: nothing to check.
        let plain = matches!(
            target.val.as_ref().and_then(|v| v.node.as_ref()),
            Some(NodeEnum::ColumnRef(_) | NodeEnum::AConst(_) | NodeEnum::ParamRef(_))
        );
        if !plain {
            out.push(toks[first].start..toks[last].end);
        }
    }
    Ok(out)
}

/// The name the statement gives its target table: its alias, or its bare name.
pub fn target_alias(node: &NodeEnum) -> Result<String, Unrewritable> {
    let relation = match node {
        NodeEnum::InsertStmt(s) => &s.relation,
        NodeEnum::UpdateStmt(s) => &s.relation,
        NodeEnum::DeleteStmt(s) => &s.relation,
        _ => &None,
    };
    let relation = relation
        .as_ref()
        .ok_or_else(|| RefusalReason::Other.because("the target table could not be identified"))?;
    Ok(match &relation.alias {
        Some(a) => a.aliasname.clone(),
        None => relation.relname.clone(),
    })
}

/// The client's RETURNING list, ready to be the select list of the outer SELECT over the statement's rows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OuterReturning {
    /// The list as written, except: `*` and `t.*` expanded to the old table's columns (so the rows may carry
    /// extra columns), three-part names shortened to `table.column`, system columns and whole-row references
    /// read from the extra columns.
    pub list: String,
    /// Extra items for the statement's own RETURNING (`t.xmin AS __pgshift_xmin`, `t AS __pgshift_row`).
    pub extras: Vec<String>,
}

/// What the target table is called in the statement, and what it has.
pub struct TargetNames<'a> {
    /// The alias, or the table's bare name.
    pub alias: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub columns: &'a [String],
}

/// See [`OuterReturning`]. `extras_allowed`: whether system columns and whole-row references may be carried
/// (they may not where the rows come from another table).
pub fn outer_returning(
    text: &str,
    offset: usize,
    node: &NodeEnum,
    target: &TargetNames<'_>,
    extras_allowed: bool,
) -> Result<OuterReturning, Unrewritable> {
    let parts = dml_parts(text, offset, node)?;
    let Some(list_range) = parts.returning.clone() else {
        return Ok(OuterReturning::default());
    };
    let returning = match node {
        NodeEnum::InsertStmt(s) => &s.returning_clause,
        NodeEnum::UpdateStmt(s) => &s.returning_clause,
        NodeEnum::DeleteStmt(s) => &s.returning_clause,
        _ => return Err(RefusalReason::Other.because("not an INSERT, UPDATE or DELETE")),
    };
    let items = returning.as_ref().map_or(&[][..], |r| &r.exprs[..]);
    let toks = pg::tokens(text).map_err(RefusalReason::other)?;
    let quoted = |s: &str| super::sqltext::quote_ident(s);
    let alias = quoted(target.alias);
    let expand = || {
        target
            .columns
            .iter()
            .map(|c| format!("{alias}.{}", quoted(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut extras: Vec<String> = Vec::new();
    for item in items {
        let Some(NodeEnum::ResTarget(res)) = &item.node else {
            return Err(RefusalReason::Returning.because("a RETURNING item is not a target"));
        };
        let Some(val) = res.val.as_ref().and_then(|v| v.node.as_ref()) else {
            continue;
        };
        // Every column reference in the item, found by a complete walk of Postgres's tree.
        let tree = pg::Tree::of(val);
        let has_subquery = !tree.all("SubLink").is_empty();
        let item_location = match val {
            NodeEnum::ColumnRef(v) => Some(v.location),
            _ => None,
        };
        let refs: Vec<(Vec<Option<String>>, i32)> = tree
            .all("ColumnRef")
            .into_iter()
            .map(|c| (pg::name_fields(c.get("fields")), pg::location(c)))
            .collect();
        for (fields, location) in &refs {
            let top_level = item_location == Some(*location) && res.name.is_empty();
            let fields: Vec<Option<&str>> = fields.iter().map(|f| f.as_deref()).collect();
            let three_part = fields.len() == 3
                && fields[0] == Some(target.schema)
                && fields[1] == Some(target.table)
                && target.alias == target.table;
            let replacement = match fields.as_slice() {
                [None] => Some(expand()),
                [Some(a), None] if *a == target.alias => Some(expand()),
                [_, _, None] if three_part => Some(expand()),
                [_, _, Some(col)] if three_part => Some(format!("{alias}.{}", quoted(col))),
                [Some(sys)] | [Some(_), Some(sys)]
                    if SYSTEM_COLUMNS.contains(sys)
                        && (fields.len() == 1 || fields[0] == Some(target.alias)) =>
                {
                    if !extras_allowed {
                        return Err(RefusalReason::Returning
                            .because(format!("RETURNING {sys} is not supported here")));
                    }
                    let carried = format!("__pgshift_{sys}");
                    let extra = format!("{alias}.{sys} AS {carried}");
                    if !extras.contains(&extra) {
                        extras.push(extra);
                    }
                    let name = if top_level {
                        format!(" AS {sys}")
                    } else {
                        String::new()
                    };
                    Some(format!("{alias}.{carried}{name}"))
                }
                [Some(a)] if *a == target.alias && !target.columns.iter().any(|col| col == a) => {
                    if !extras_allowed {
                        return Err(RefusalReason::Returning
                            .because("a whole-row reference in RETURNING is not supported here"));
                    }
                    let extra = format!("{alias} AS __pgshift_row");
                    if !extras.contains(&extra) {
                        extras.push(extra);
                    }
                    let name = if top_level {
                        format!(" AS {alias}")
                    } else {
                        String::new()
                    };
                    Some(format!("{alias}.__pgshift_row{name}"))
                }
                _ => None,
            };
            let Some(replacement) = replacement else {
                continue;
            };
            if has_subquery && !matches!(val, NodeEnum::ColumnRef(_)) {
                return Err(RefusalReason::Returning.because("RETURNING with a subquery next to `*`, a system column, a whole-row reference or a three-part name is not supported"));
            }
            let start = usize::try_from(*location)
                .ok()
                .and_then(|l| l.checked_sub(offset))
                .ok_or_else(|| {
                    RefusalReason::Returning.because("a RETURNING column could not be located")
                })?;
            let first = toks.iter().position(|t| t.start == start).ok_or_else(|| {
                RefusalReason::Returning.because("a RETURNING column could not be located")
            })?;
            let last = first + 2 * fields.len() - 2;
            let dots_ok = (first..=last).all(|i| {
                toks.get(i)
                    .is_some_and(|t| ((i - first) % 2 == 1) == (t.kind == Token::Ascii46))
            });
            if !dots_ok {
                return Err(
                    RefusalReason::Returning.because("a RETURNING column could not be located")
                );
            }
            edits.push((toks[first].start..toks[last].end, replacement));
        }
    }
    let list = apply(text, list_range, edits)?;
    Ok(OuterReturning { list, extras })
}

/// The tokens of an assignment's value (`col = value`, the target's name at token `target`): from after `=` to
/// the next comma at the assignment's depth, or the end of its clause. `None` if there is none.
pub fn assignment_value(toks: &[Tok], depth: &[i32], target: usize) -> Option<Range<usize>> {
    let eq = (target + 1..toks.len()).find(|&i| toks[i].kind == Token::Ascii61)?;
    let end = (eq + 1..toks.len())
        .find(|&i| {
            depth[i] < depth[target]
                || (depth[i] == depth[target]
                    && matches!(
                        toks[i].kind,
                        Token::Ascii44 | Token::From | Token::Where | Token::Returning
                    ))
        })
        .unwrap_or(toks.len());
    (eq + 1 < end).then_some(eq + 1..end)
}

/// The rows of the top-level VALUES after token `after`: for each row, the token ranges of its items.
pub fn values_rows(toks: &[Tok], depth: &[i32], after: usize) -> Option<Vec<Vec<Range<usize>>>> {
    let values = (after..toks.len()).find(|&i| depth[i] == 0 && toks[i].kind == Token::Values)?;
    let mut rows = Vec::new();
    let mut i = values + 1;
    loop {
        if toks.get(i).map(|t| t.kind) != Some(Token::Ascii40) || depth[i] != 0 {
            return None;
        }
        let close =
            (i + 1..toks.len()).find(|&j| depth[j] == 0 && toks[j].kind == Token::Ascii41)?;
        let mut items = Vec::new();
        let mut from = i + 1;
        for j in i + 1..=close {
            if j == close || (depth[j] == 1 && toks[j].kind == Token::Ascii44) {
                if from >= j {
                    return None;
                }
                items.push(from..j);
                from = j + 1;
            }
        }
        rows.push(items);
        i = close + 1;
        match toks.get(i).map(|t| t.kind) {
            Some(Token::Ascii44) if depth[i] == 0 => i += 1,
            _ => return Some(rows),
        }
    }
}

/// `outer_returning` for the target of a migration, named as the statement names it.
pub fn returning_for(
    source: &super::Source<'_>,
    m: &crate::config::migration::Migration,
    old_cols: &[String],
    extras_allowed: bool,
) -> Result<OuterReturning, Unrewritable> {
    let alias = target_alias(source.node)?;
    outer_returning(
        source.text,
        source.offset,
        source.node,
        &TargetNames {
            alias: &alias,
            schema: &m.table.schema,
            table: &m.table.name,
            columns: old_cols,
        },
        extras_allowed,
    )
}

/// `text[range]` with each edit's range replaced by its text. Edits must lie inside `range` and not overlap.
pub fn apply(
    text: &str,
    range: Range<usize>,
    mut edits: Vec<(Range<usize>, String)>,
) -> Result<String, Unrewritable> {
    edits.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(range.len() + 64);
    let mut at = range.start;
    for (r, replacement) in edits {
        if r.start < at || r.end > range.end {
            return Err(RefusalReason::Other.because("overlapping edits"));
        }
        out.push_str(&text[at..r.start]);
        out.push_str(&replacement);
        at = r.end;
    }
    out.push_str(&text[at..range.end]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(sql: &str) -> (DmlParts, String) {
        let stmts = pg::parse(sql).unwrap();
        let s = &stmts[0];
        let text = &sql[s.range.clone()];
        (
            dml_parts(text, s.range.start, &s.node).unwrap(),
            text.to_owned(),
        )
    }

    #[test]
    fn clauses_are_found_by_postgres_tokens() {
        let (p, t) = parts(
            "  WITH RECURSIVE a AS (SELECT 1 AS returning), b AS (UPDATE x SET y = 1 RETURNING y) \
             UPDATE users u SET note = note ISNULL /* c */ RETURNING u.id, count(*) AS n, u.*, 'a'\n'b' x, - -1",
        );
        assert_eq!(
            &t[p.ctes.unwrap()],
            "a AS (SELECT 1 AS returning), b AS (UPDATE x SET y = 1 RETURNING y)"
        );
        assert!(p.recursive);
        // Comments between the body and RETURNING are left out: a `--` one would swallow what pgshift appends.
        assert_eq!(&t[p.body], "UPDATE users u SET note = note ISNULL");
        assert_eq!(
            &t[p.returning.unwrap()],
            "u.id, count(*) AS n, u.*, 'a'\n'b' x, - -1"
        );
        let exprs: Vec<&str> = p.returning_exprs.iter().map(|r| &t[r.clone()]).collect();
        // Constants and column references need no check.
        assert_eq!(exprs, ["count(*)"]);
    }

    #[test]
    fn statements_without_with_or_returning() {
        let (p, t) = parts("INSERT INTO users (a) VALUES (1);");
        assert_eq!(p.ctes, None);
        assert_eq!(&t[p.body], "INSERT INTO users (a) VALUES (1)");
        assert_eq!(p.returning, None);
        let (p, t) = parts("DELETE FROM ONLY users WHERE id = $1 RETURNING *");
        assert_eq!(&t[p.body], "DELETE FROM ONLY users WHERE id = $1");
        assert!(p.returning_exprs.is_empty());
    }

    fn outer(sql: &str, alias: &str) -> Result<OuterReturning, Unrewritable> {
        let stmts = pg::parse(sql).unwrap();
        let s = &stmts[0];
        let cols = ["id".to_owned(), "fullname".to_owned()];
        outer_returning(
            &sql[s.range.clone()],
            s.range.start,
            &s.node,
            &TargetNames {
                alias,
                schema: "public",
                table: "users",
                columns: &cols,
            },
            true,
        )
    }

    #[test]
    fn returning_lists_read_from_the_statements_rows() {
        let o = outer("UPDATE users SET a = 1 RETURNING *, public.users.id, xmin, users AS r, upper(fullname) x", "users").unwrap();
        assert_eq!(
            o.list,
            "users.id, users.fullname, users.id, users.__pgshift_xmin AS xmin, users.__pgshift_row AS r, upper(fullname) x"
        );
        assert_eq!(
            o.extras,
            ["users.xmin AS __pgshift_xmin", "users AS __pgshift_row"]
        );
        let o = outer(
            "INSERT INTO users AS u (a) VALUES (1) RETURNING u.*, row_to_json(u), u.xmin = 1",
            "u",
        )
        .unwrap();
        assert_eq!(
            o.list,
            "u.id, u.fullname, row_to_json(u.__pgshift_row), u.__pgshift_xmin = 1"
        );
        let o = outer("DELETE FROM users WHERE id = 1 RETURNING id, (SELECT count(*) FROM orders o WHERE o.user_id = users.id)", "users").unwrap();
        assert_eq!(
            o.list,
            "id, (SELECT count(*) FROM orders o WHERE o.user_id = users.id)"
        );
        assert!(o.extras.is_empty());
        assert!(outer(
            "DELETE FROM users RETURNING (SELECT xmin FROM orders LIMIT 1) = xmin",
            "users"
        )
        .is_err());
        assert_eq!(
            outer("DELETE FROM users", "users").unwrap(),
            OuterReturning::default()
        );
    }
}
