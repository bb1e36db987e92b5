//! Constants lifted out of SQL text, so statements that differ only in their literal values share one plan.
//!
//! Simple-protocol clients (`pgbench -M simple`, ORMs that inline values) send a new text for every row; planning
//! each one costs microseconds, a lookup under the lifted text a fraction of that. The plan is made for the text
//! with `$1…$n` where the constants were, and the constants' own source text is put back into the rewritten SQL,
//! so Postgres receives exactly what planning the original text gives (a unit test holds the two equal).
//!
//! The lexer is deliberately narrow: anything it is not sure about (parameters, dollar quotes, escape strings,
//! backslashes, numbers glued to names) makes [`lift`] return `None`, and the caller plans the text as it is.

use std::fmt::Write;
use std::ops::Range;

/// A statement with its constants replaced by `$1…$n`.
#[derive(Debug, PartialEq, Eq)]
pub struct Lifted<'a> {
    pub text: String,
    /// The constants' source text, `values[k - 1]` for `$k`.
    pub values: Vec<&'a str>,
}

/// What came before a token, which decides whether a constant there may become a parameter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Before {
    /// An operator, `(`, `,`, or a keyword after which an expression starts.
    Operator,
    /// A string constant: another one right after it would be SQL's string continuation.
    String,
    /// Anything else: a name (`interval '1 day'`, `numeric(10, 2)` keep their constants), `)`, `::`, `.`.
    Other,
}

/// Keywords after which a constant is an ordinary expression value.
const EXPRESSION_KEYWORDS: &[&str] = &[
    "and", "between", "else", "ilike", "like", "limit", "not", "offset", "or", "select", "then",
    "when",
];

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// End of a name (keyword or identifier) starting at `start`.
fn ident_end(sql: &[u8], start: usize) -> usize {
    start
        + sql[start..]
            .iter()
            .position(|&b| !is_ident_byte(b))
            .unwrap_or(sql.len() - start)
}

/// End of a `'…'` constant starting at `start` (the quote), or `None` if unterminated or holding a backslash
/// (whose meaning depends on `standard_conforming_strings`).
fn string_end(sql: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match sql.get(i)? {
            b'\'' if sql.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            b'\\' => return None,
            _ => i += 1,
        }
    }
}

/// End of a `"…"` identifier starting at `start`.
fn quoted_ident_end(sql: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match sql.get(i)? {
            b'"' if sql.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// End of a comment starting at `start`, if one starts there (`--` to end of line, nested `/* */`).
/// `Some(None)`: an unterminated block comment.
fn comment_end(sql: &[u8], start: usize) -> Option<Option<usize>> {
    match (sql[start], sql.get(start + 1)) {
        (b'-', Some(b'-')) => Some(Some(
            sql[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(sql.len(), |p| start + p + 1),
        )),
        (b'/', Some(b'*')) => {
            let (mut depth, mut i) = (1, start + 2);
            while i + 1 < sql.len() {
                match (sql[i], sql[i + 1]) {
                    (b'/', b'*') => (depth, i) = (depth + 1, i + 2),
                    (b'*', b'/') => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            return Some(Some(i));
                        }
                    }
                    _ => i += 1,
                }
            }
            Some(None)
        }
        _ => None,
    }
}

/// End of a numeric constant starting at `start` (`12`, `1.5`, `.5`, `1e-3`), or `None` if something that is
/// not a separator follows it (`1_000`, `0x1F`, `12abc`).
fn number_end(sql: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while sql.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    if sql.get(i) == Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(sql.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(sql.get(i + 1), Some(b'+' | b'-')));
        if !sql.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        i = digits(i + 1 + sign);
    }
    match sql.get(i) {
        Some(&b) if is_ident_byte(b) || b == b'.' => None,
        _ => Some(i),
    }
}

/// Replaces the constants of `sql` that stand where an expression value goes with `$1…$n`. `None` if there
/// is none, or the text has anything the lexer does not handle with certainty.
pub fn lift(sql: &str) -> Option<Lifted<'_>> {
    let bytes = sql.as_bytes();
    let mut text = String::with_capacity(sql.len() + 8);
    let mut values = Vec::new();
    let mut before = Before::Other;
    // Type modifiers (`::numeric(10, 2)`, `AS varchar(20)`) keep their constants: after `::` or AS (1), a
    // type name (2), then `(` opens a modifier list whose depth is `typmod`.
    let mut cast = 0u8;
    let mut typmod = 0usize;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if let Some(end) = comment_end(bytes, i) {
            i = end?;
            continue;
        }
        let (end, constant) = match b {
            b'\'' => {
                // E'', B'', X'', U&'' and friends: prefixed constants with their own rules.
                if i > 0 && (is_ident_byte(bytes[i - 1]) || bytes[i - 1] == b'&') {
                    return None;
                }
                if before == Before::String {
                    return None;
                }
                (string_end(bytes, i)?, true)
            }
            b'0'..=b'9' => (number_end(bytes, i)?, true),
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                (number_end(bytes, i)?, true)
            }
            b'$' => return None,
            b'"' => (quoted_ident_end(bytes, i)?, false),
            _ if is_ident_byte(b) => (ident_end(bytes, i), false),
            _ => (i + 1, false),
        };
        let token = &sql[i..end];
        let name = !constant && (b == b'"' || is_ident_byte(b));
        let after_type_name = cast == 2;
        cast = match b {
            b':' if bytes.get(i + 1) == Some(&b':') => 1,
            _ if name && token.eq_ignore_ascii_case("as") => 1,
            _ if name && cast > 0 => 2,
            b':' if cast == 1 => 1,
            _ => 0,
        };
        if typmod > 0 || (b == b'(' && after_type_name) {
            typmod = match b {
                b'(' => typmod + 1,
                b')' => typmod - 1,
                _ => typmod,
            };
            before = Before::Other;
            i = end;
            continue;
        }
        if constant && before == Before::Operator {
            text.push_str(&sql[copied..i]);
            values.push(token);
            let _ = write!(text, "${}", values.len());
            copied = end;
        }
        before = match b {
            b'\'' => Before::String,
            b'(' | b',' | b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'|'
            | b'[' | b'!' | b'~' | b'@' | b'#' | b'&' => Before::Operator,
            _ if !constant
                && b != b'"'
                && EXPRESSION_KEYWORDS
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(token)) =>
            {
                Before::Operator
            }
            _ => Before::Other,
        };
        i = end;
    }
    if values.is_empty() {
        return None;
    }
    text.push_str(&sql[copied..]);
    Some(Lifted { text, values })
}

/// A rewritten statement with `$k` references to lifted constants: text pieces and parameter numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    sql: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Range<usize>),
    /// Zero-based index into the lifted values.
    Value(usize),
}

impl Template {
    /// Splits `sql` (printed by the rewriter) at its `$k` references, `1 <= k <= count`. `None` if it has any
    /// other `$` or a backslash, which lifting never produces but a migration's own expressions might.
    pub fn new(sql: String, count: usize) -> Option<Template> {
        let bytes = sql.as_bytes();
        if bytes.contains(&b'\\') {
            return None;
        }
        let mut pieces = Vec::new();
        let (mut i, mut copied) = (0, 0);
        while i < bytes.len() {
            if let Some(end) = comment_end(bytes, i) {
                i = end?;
                continue;
            }
            i = match bytes[i] {
                b'\'' => string_end(bytes, i)?,
                b'"' => quoted_ident_end(bytes, i)?,
                b'$' => {
                    let digits = bytes[i + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    let k: usize = sql.get(i + 1..i + 1 + digits)?.parse().ok()?;
                    if k == 0 || k > count {
                        return None;
                    }
                    if copied < i {
                        pieces.push(Piece::Text(copied..i));
                    }
                    pieces.push(Piece::Value(k - 1));
                    copied = i + 1 + digits;
                    copied
                }
                b if is_ident_byte(b) => ident_end(bytes, i),
                _ => i + 1,
            };
        }
        if copied < bytes.len() {
            pieces.push(Piece::Text(copied..bytes.len()));
        }
        Some(Template { sql, pieces })
    }

    /// The statement with the constants in place.
    pub fn render(&self, values: &[&str]) -> String {
        let mut out =
            String::with_capacity(self.sql.len() + values.iter().map(|v| v.len()).sum::<usize>());
        for piece in &self.pieces {
            match piece {
                Piece::Text(range) => out.push_str(&self.sql[range.clone()]),
                Piece::Value(k) => out.push_str(values[*k]),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifted(sql: &str) -> Option<(String, Vec<&str>)> {
        lift(sql).map(|l| (l.text, l.values))
    }

    #[test]
    fn lifts_values_where_expressions_go() {
        assert_eq!(
            lifted("UPDATE pgbench_accounts SET abalance = abalance + -4211 WHERE aid = 7;"),
            Some((
                "UPDATE pgbench_accounts SET abalance = abalance + -$1 WHERE aid = $2;".into(),
                vec!["4211", "7"]
            ))
        );
        assert_eq!(
            lifted("insert into users (id, fullname) values (1, 'O''Hara'), (2.5, 'b') -- 3\n"),
            Some((
                "insert into users (id, fullname) values ($1, $2), ($3, $4) -- 3\n".into(),
                vec!["1", "'O''Hara'", "2.5", "'b'"]
            ))
        );
        assert_eq!(
            lifted("SELECT 1e-3, .5 FROM t WHERE a BETWEEN 1 AND 2 LIMIT 10"),
            Some((
                "SELECT $1, $2 FROM t WHERE a BETWEEN $3 AND $4 LIMIT $5".into(),
                vec!["1e-3", ".5", "1", "2", "10"]
            ))
        );
    }

    #[test]
    fn keeps_constants_that_belong_to_names_and_types() {
        assert_eq!(
            lifted("SELECT interval '1 day', x::numeric(10,2), t2.c FROM t2 /* 5 */ ORDER BY 1"),
            None
        );
        assert_eq!(
            lifted("SELECT CAST(a AS character varying(20)), f(3), b::int FROM t WHERE c = 4"),
            Some((
                "SELECT CAST(a AS character varying(20)), f($1), b::int FROM t WHERE c = $2".into(),
                vec!["3", "4"]
            ))
        );
        assert_eq!(
            lifted("SELECT \"a,1\" FROM t WHERE \"x\" = 'y'"),
            Some(("SELECT \"a,1\" FROM t WHERE \"x\" = $1".into(), vec!["'y'"]))
        );
    }

    #[test]
    fn gives_up_on_what_it_cannot_read_for_certain() {
        for sql in [
            "SELECT $1 FROM t WHERE a = 1",
            "SELECT $$x$$, 1",
            "SELECT E'a\\'b' WHERE a = 1",
            "SELECT U&'d\\0061t' WHERE a = 1",
            "SELECT 'a\\b' WHERE a = 1",
            "SELECT 'a'\n'b' WHERE a = 1",
            "SELECT 1_000",
            "SELECT 0x1F",
            "SELECT 'unterminated",
            "SELECT 1 /* open",
            "SELECT a FROM t",
        ] {
            assert_eq!(lifted(sql), None, "{sql}");
        }
    }

    #[test]
    fn templates_put_values_back() {
        let t = Template::new(
            "WITH a AS (UPDATE t SET x = $1 WHERE id = $2 RETURNING '$3', \"$4\") SELECT $2 -- $9\n".into(),
            2,
        )
        .unwrap();
        assert_eq!(
            t.render(&["'v'", "42"]),
            "WITH a AS (UPDATE t SET x = 'v' WHERE id = 42 RETURNING '$3', \"$4\") SELECT 42 -- $9\n"
        );
        assert_eq!(Template::new("SELECT $3".into(), 2), None);
        assert_eq!(Template::new("SELECT $0".into(), 2), None);
        assert_eq!(Template::new("SELECT $$a$$".into(), 2), None);
        assert_eq!(Template::new("SELECT E'\\n'".into(), 2), None);
    }
}
