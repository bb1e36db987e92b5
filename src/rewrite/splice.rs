//! Where a DML statement's clauses stand in the client's text, by Postgres's tokens and parse tree, so rewrites
//! can keep the client's bytes and splice pgshift's additions around them instead of printing an AST.

use super::pg::{self, Tok};
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
    /// Each RETURNING item's expression without its alias; `*` and `t.*` left out.
    pub returning_exprs: Vec<Range<usize>>,
}

/// The parts of a DML statement. `text` is the statement, `offset` where it starts in the text Postgres parsed
/// (node locations count from there).
pub fn dml_parts(text: &str, offset: usize, node: &NodeEnum) -> Result<DmlParts, String> {
    let (relation, with, returning) = match node {
        NodeEnum::InsertStmt(s) => (&s.relation, &s.with_clause, &s.returning_clause),
        NodeEnum::UpdateStmt(s) => (&s.relation, &s.with_clause, &s.returning_clause),
        NodeEnum::DeleteStmt(s) => (&s.relation, &s.with_clause, &s.returning_clause),
        _ => return Err("not an INSERT, UPDATE or DELETE".into()),
    };
    let unknown = || "the statement's clauses could not be located".to_owned();
    let relation_at = relation
        .as_ref()
        .and_then(|r| usize::try_from(r.location).ok())
        .and_then(|l| l.checked_sub(offset))
        .ok_or_else(unknown)?;
    let toks = pg::tokens(text)?;
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
        return Err("RETURNING WITH (…) is not supported".into());
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
) -> Result<Vec<Range<usize>>, String> {
    let base = depth.first().copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut at = 0;
    for item in items {
        let Some(NodeEnum::ResTarget(target)) = &item.node else {
            return Err("a RETURNING item is not a target".into());
        };
        let start = usize::try_from(target.location)
            .ok()
            .and_then(|l| l.checked_sub(offset))
            .ok_or("a RETURNING item could not be located")?;
        let first = (at..toks.len())
            .find(|&i| toks[i].start == start)
            .ok_or("a RETURNING item could not be located")?;
        let end = (first..toks.len())
            .find(|&i| depth[i] == base && toks[i].kind == Token::Ascii44)
            .unwrap_or(toks.len());
        at = end + 1;
        let mut last = end
            .checked_sub(1)
            .filter(|&l| l >= first)
            .ok_or("empty RETURNING item")?;
        if !target.name.is_empty() {
            // `expr AS label` or `expr label`: the alias is one token.
            last = last
                .checked_sub(1)
                .filter(|&l| l >= first)
                .ok_or("bad alias")?;
            if toks[last].kind == Token::As {
                last = last
                    .checked_sub(1)
                    .filter(|&l| l >= first)
                    .ok_or("bad alias")?;
            }
        }
        let star = matches!(
            target.val.as_ref().and_then(|v| v.node.as_ref()),
            Some(NodeEnum::ColumnRef(c)) if matches!(c.fields.last().and_then(|f| f.node.as_ref()), Some(NodeEnum::AStar(_)))
        );
        if !star {
            out.push(toks[first].start..toks[last].end);
        }
    }
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
        assert_eq!(exprs, ["u.id", "count(*)", "'a'\n'b'", "- -1"]);
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
}
