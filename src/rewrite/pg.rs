//! Postgres's own grammar (libpg_query) as the authority over what a client's text means.
//!
//! The rewriter decides with sqlparser's AST, which is multi-dialect and misreads some Postgres statements
//! (`note ISNULL` as an alias, `FOR NO KEY UPDATE` as an error, `- -1` printed as a comment). Three uses of the
//! real grammar keep those misreadings from ever reaching the database, all on the cold path (plans are cached):
//! - **statement boundaries and tokens**: the client's text is cut into statements, and rewrites are spliced at
//!   token positions, exactly as the server's lexer sees them;
//! - **faithfulness**: before pgshift acts on sqlparser's reading of a statement, that reading printed back must
//!   parse, under Postgres's grammar, to the same tree as the client's text (locations aside). Where it does not,
//!   the statement is refused (a write) or left on the old schema (a read), never sent half-understood;
//! - **classification** of what sqlparser cannot parse at all: a statement Postgres reads as a plain query is a
//!   read, whatever sqlparser thinks of it.

use pg_query::protobuf::{self, Token};
use pg_query::NodeEnum;
use std::ops::Range;

/// One statement of a client's text, as Postgres splits it.
#[derive(Debug)]
pub struct Statement {
    /// Byte range of the statement in the client's text: first token to last token, without the `;` and without
    /// the whitespace and comments around it.
    pub range: Range<usize>,
    pub node: NodeEnum,
}

/// A lexical token, with its byte range in the text it was scanned from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tok {
    pub start: usize,
    pub end: usize,
    pub kind: Token,
}

/// Postgres's tokens of `sql`, comments left out.
pub fn tokens(sql: &str) -> Result<Vec<Tok>, String> {
    let scanned = pg_query::scan(sql).map_err(|e| e.to_string())?;
    Ok(scanned
        .tokens
        .iter()
        .filter_map(|t| {
            let kind = Token::try_from(t.token).ok()?;
            if matches!(kind, Token::SqlComment | Token::CComment) {
                return None;
            }
            Some(Tok {
                start: usize::try_from(t.start).ok()?,
                end: usize::try_from(t.end).ok()?,
                kind,
            })
        })
        .collect())
}

/// The statements of `sql` as Postgres parses them, or Postgres's syntax error.
pub fn parse(sql: &str) -> Result<Vec<Statement>, String> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| e.to_string())?;
    let toks = tokens(sql)?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.clone()) else {
            continue;
        };
        let start = usize::try_from(raw.stmt_location).map_err(|e| e.to_string())?;
        let end = match usize::try_from(raw.stmt_len).map_err(|e| e.to_string())? {
            0 => sql.len(),
            len => start + len,
        };
        let inside: Vec<&Tok> = toks
            .iter()
            .filter(|t| t.start >= start && t.end <= end && t.kind != Token::Ascii59)
            .collect();
        let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
            continue;
        };
        out.push(Statement {
            range: first.start..last.end,
            node,
        });
    }
    Ok(out)
}

/// Whether `printed` (a statement as sqlparser prints it back) means what `original` means to Postgres: both
/// parse, and to the same trees once source positions are left aside.
pub fn same_reading(original: &str, printed: &str) -> bool {
    match (normalized(original), normalized(printed)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn normalized(sql: &str) -> Option<serde_json::Value> {
    let parsed = pg_query::parse(sql, 0).ok()?;
    let stmts: Vec<_> = parsed.protobuf.stmts.iter().map(|s| &s.stmt).collect();
    let mut value = serde_json::to_value(stmts).ok()?;
    strip_positions(&mut value);
    Some(value)
}

/// Source positions differ between two spellings of one statement and say nothing about its meaning.
fn strip_positions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| {
                !matches!(
                    k.as_str(),
                    "location"
                        | "stmt_location"
                        | "stmt_len"
                        | "rexpr_list_start"
                        | "rexpr_list_end"
                )
            });
            map.values_mut().for_each(strip_positions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_positions),
        _ => {}
    }
}

/// Postgres's system columns: a derived table or a CTE over a statement's rows does not have them, and the
/// new table's would mean something else.
pub const SYSTEM_COLUMNS: &[&str] = &["xmin", "xmax", "cmin", "cmax", "ctid", "tableoid"];

/// Whether a column reference's name (its last part) is a system column.
pub fn names_system_column(fields: &[Option<&str>]) -> bool {
    fields
        .iter()
        .flatten()
        .last()
        .is_some_and(|l| SYSTEM_COLUMNS.contains(l))
}

/// A statement's tree as a value, so it can be searched completely: pg_query's own walker (`nodes()`) covers
/// the node kinds it needs for its purposes, not every place a table, function or column can appear.
pub struct Tree(serde_json::Value);

impl Tree {
    pub fn of<T: serde::Serialize + ?Sized>(node: &T) -> Tree {
        Tree(serde_json::to_value(node).unwrap_or(serde_json::Value::Null))
    }

    /// Every node of `kind` (`"FuncCall"`, `"RangeVar"`, …) anywhere in the tree (in no meaningful order:
    /// use their locations).
    pub fn all(&self, kind: &str) -> Vec<&serde_json::Value> {
        fn walk<'v>(v: &'v serde_json::Value, kind: &str, out: &mut Vec<&'v serde_json::Value>) {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, child) in map {
                        if k == kind {
                            out.push(child);
                        }
                        walk(child, kind, out);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, kind, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.0, kind, &mut out);
        out
    }

    /// The relations written by INSERT, UPDATE, DELETE and MERGE anywhere in the tree.
    pub fn written(&self) -> Vec<Relation> {
        ["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"]
            .iter()
            .flat_map(|k| self.all(k))
            .filter_map(|s| Relation::of(s.get("relation")?))
            .collect()
    }
}

/// A table reference (a `RangeVar`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub catalog: String,
    pub schema: String,
    pub name: String,
    pub alias: Option<String>,
    /// False for `ONLY name`.
    pub inh: bool,
    pub location: i32,
}

impl Relation {
    pub fn of(v: &serde_json::Value) -> Option<Relation> {
        let s = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        Some(Relation {
            catalog: s("catalogname"),
            schema: s("schemaname"),
            name: v.get("relname")?.as_str()?.to_owned(),
            alias: v
                .get("alias")
                .and_then(|a| a.get("aliasname"))
                .and_then(|a| a.as_str())
                .map(str::to_owned),
            inh: v.get("inh").and_then(|i| i.as_bool()).unwrap_or(true),
            location: v.get("location").and_then(|l| l.as_i64()).unwrap_or(-1) as i32,
        })
    }

    /// The name's parts, schema first when given.
    pub fn parts(&self) -> Vec<String> {
        let mut parts = Vec::new();
        if !self.schema.is_empty() {
            parts.push(self.schema.clone());
        }
        parts.push(self.name.clone());
        parts
    }
}

/// The string parts of a list of `String` nodes (`ColumnRef.fields`, `FuncCall.funcname`); `None` for `*`.
pub fn name_fields(v: Option<&serde_json::Value>) -> Vec<Option<String>> {
    v.and_then(|f| f.as_array())
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    i.get("node")
                        .and_then(|n| n.get("String"))
                        .and_then(|s| s.get("sval"))
                        .and_then(|s| s.as_str())
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A value's `location`.
pub fn location(v: &serde_json::Value) -> i32 {
    v.get("location").and_then(|l| l.as_i64()).unwrap_or(-1) as i32
}

/// How a statement Postgres parsed relates to writing tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A query, `EXPLAIN` of one, `SHOW`, … : nothing in it can write a table.
    Read,
    /// Something that writes, or runs code pgshift cannot see into (functions, `DO`, `CALL`, DDL).
    Other,
}

/// Whether the statement can only read. Conservative: anything but a plain query tree is [`Kind::Other`].
pub fn kind(node: &NodeEnum) -> Kind {
    let top_is_query = match node {
        NodeEnum::SelectStmt(s) => s.into_clause.is_none(),
        NodeEnum::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| {
                matches!(&o.node, Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze"))
            });
            !analyze
                && matches!(
                    e.query.as_ref().and_then(|q| q.node.as_ref()),
                    Some(NodeEnum::SelectStmt(_))
                )
        }
        _ => false,
    };
    if !top_is_query {
        return Kind::Other;
    }
    let tree = Tree::of(node);
    let writes = ["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"]
        .iter()
        .any(|k| !tree.all(k).is_empty())
        || tree.all("into_clause").iter().any(|i| !i.is_null());
    if writes {
        Kind::Other
    } else {
        Kind::Read
    }
}

/// The bodies of code the statement defines or runs inline: `DO` blocks and function or procedure definitions.
/// pgshift cannot see the writes inside them.
pub fn code_bodies(node: &NodeEnum) -> Vec<String> {
    fn strings(node: Option<&protobuf::Node>, out: &mut Vec<String>) {
        match node.and_then(|n| n.node.as_ref()) {
            Some(NodeEnum::String(s)) => out.push(s.sval.clone()),
            Some(NodeEnum::List(l)) => l.items.iter().for_each(|i| strings(Some(i), out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let options = match node {
        NodeEnum::DoStmt(d) => &d.args,
        NodeEnum::CreateFunctionStmt(f) => {
            if let Some(body) = &f.sql_body {
                // BEGIN ATOMIC … END: a parsed body; its text is what counts.
                if let Ok(json) = serde_json::to_string(body) {
                    out.push(json);
                }
            }
            &f.options
        }
        _ => return out,
    };
    for option in options {
        if let Some(NodeEnum::DefElem(d)) = &option.node {
            if d.defname == "as" {
                strings(d.arg.as_deref(), &mut out);
            }
        }
    }
    out
}

/// Parenthesis depth at each token (before it is applied), so clause keywords can be found at the top level.
pub fn depths(toks: &[Tok]) -> Vec<i32> {
    let mut depth = 0;
    toks.iter()
        .map(|t| {
            let here = depth;
            match t.kind {
                Token::Ascii40 | Token::Ascii91 => depth += 1,
                Token::Ascii41 | Token::Ascii93 => depth -= 1,
                _ => {}
            }
            if matches!(t.kind, Token::Ascii41 | Token::Ascii93) {
                depth
            } else {
                here
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_cut_where_postgres_cuts_them() {
        let sql = "/* lead */ SELECT 'a;b' ; -- x\n INSERT INTO t VALUES ($$;$$);";
        let stmts = parse(sql).unwrap();
        let texts: Vec<&str> = stmts.iter().map(|s| &sql[s.range.clone()]).collect();
        assert_eq!(texts, ["SELECT 'a;b'", "INSERT INTO t VALUES ($$;$$)"]);
    }

    #[test]
    fn misprints_are_different_readings() {
        // What sqlparser prints for these (issue: re-printed statements changed meaning).
        assert!(!same_reading("SELECT - -1", "SELECT --1"));
        assert!(!same_reading(
            "SELECT note ISNULL FROM t",
            "SELECT note AS ISNULL FROM t"
        ));
        assert!(!same_reading("SELECT @ -5", "SELECT @-5"));
        assert!(!same_reading(
            "SELECT 'con'\n'catenated'",
            "SELECT 'con' AS 'catenated'"
        ));
        // Spelling differences that mean the same.
        assert!(same_reading(
            "/* c */ insert into T (a) values ($1) on conflict(a) do nothing",
            "INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING"
        ));
        assert!(same_reading(
            "SELECT x::jsonb FROM t;",
            "SELECT x::JSONB FROM t"
        ));
        assert!(!same_reading("SELECT 1", "SELEC 1"));
    }

    #[test]
    fn reads_are_told_from_everything_else() {
        let k = |sql: &str| kind(&parse(sql).unwrap()[0].node);
        assert_eq!(k("SELECT * FROM users FOR NO KEY UPDATE"), Kind::Read);
        assert_eq!(k("SELECT * FROM users FOR KEY SHARE"), Kind::Read);
        assert_eq!(k("EXPLAIN SELECT 1"), Kind::Read);
        assert_eq!(k("EXPLAIN ANALYZE SELECT 1"), Kind::Other);
        assert_eq!(
            k("WITH d AS (DELETE FROM users RETURNING id) SELECT * FROM d"),
            Kind::Other
        );
        assert_eq!(k("SELECT * INTO t2 FROM users"), Kind::Other);
        assert_eq!(k("UPDATE users SET a = 1"), Kind::Other);
        assert_eq!(k("DO $$BEGIN END$$"), Kind::Other);
    }

    #[test]
    fn code_bodies_are_found() {
        let b = |sql: &str| code_bodies(&parse(sql).unwrap()[0].node);
        assert_eq!(
            b("DO $$BEGIN UPDATE users SET a = 1; END$$"),
            ["BEGIN UPDATE users SET a = 1; END"]
        );
        assert_eq!(
            b("CREATE OR REPLACE FUNCTION pg_temp.f() RETURNS void AS $f$ INSERT INTO users VALUES (1) $f$ LANGUAGE sql"),
            [" INSERT INTO users VALUES (1) "]
        );
        let atomic = b("CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC INSERT INTO users VALUES (1); END");
        assert!(atomic.iter().any(|s| s.contains("users")), "{atomic:?}");
        assert!(b("SELECT 1").is_empty());
    }

    #[test]
    fn the_tree_walk_finds_what_pg_querys_own_walker_misses() {
        let sql =
            "SELECT CASE WHEN true THEN touch(1) END, xmin FROM users TABLESAMPLE SYSTEM (1) \
                   WHERE id IN (SELECT user_id FROM orders) FOR UPDATE OF users";
        let node = &parse(sql).unwrap()[0].node;
        let tree = Tree::of(node);
        let calls: Vec<Vec<Option<String>>> = tree
            .all("FuncCall")
            .into_iter()
            .map(|f| name_fields(f.get("funcname")))
            .collect();
        assert_eq!(calls, [vec![Some("touch".to_owned())]]);
        let mut tables: Vec<(i32, String)> = tree
            .all("RangeVar")
            .into_iter()
            .filter_map(Relation::of)
            .map(|r| (r.location, r.name))
            .collect();
        tables.sort();
        let names: Vec<&str> = tables.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["users", "orders", "users"]);
        let node = &parse("WITH d AS (DELETE FROM public.users RETURNING id) SELECT * FROM d")
            .unwrap()[0]
            .node;
        let written = Tree::of(node).written();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].parts(), ["public", "users"]);
    }

    #[test]
    fn depth_of_tokens() {
        let sql = "INSERT INTO t (a) VALUES ((1)) RETURNING a";
        let toks = tokens(sql).unwrap();
        let d = depths(&toks);
        let returning = toks
            .iter()
            .position(|t| t.kind == Token::Returning)
            .unwrap();
        assert_eq!(d[returning], 0);
        let one = toks.iter().position(|t| t.kind == Token::Iconst).unwrap();
        assert_eq!(d[one], 2);
        assert_eq!(d.last(), Some(&0));
    }
}
