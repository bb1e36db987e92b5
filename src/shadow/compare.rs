//! The statements of one shadow comparison: the client's read on the old schema and its rewrite for the new one
//! evaluated in **one statement** (so one snapshot: concurrent writes cannot make equal queries differ),
//! returning only counts. Pure: SQL text in, SQL text out.
//!
//! Rows are compared by their text (`row::text`), which every type has, in the client's own settings: the
//! routed rewrite already returns the old columns' types, so equal values print alike. Without a top-level
//! ORDER BY the two sides are compared as multisets (symmetric `EXCEPT ALL`); with one, also position by
//! position.

use crate::rewrite::pg::{self, Kind};
use crate::rewrite::Plan;

/// Why a read is not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not exactly one plain query (writes, several statements, `SELECT … INTO`, utility statements).
    NotARead,
    /// `FOR UPDATE` and friends, advisory locks: a comparison would take locks on the client's behalf.
    Locking,
    /// The other route does not rewrite it (it names no migrated table, or cannot be rewritten).
    NotRouted,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::NotARead => "not_a_read",
            Skip::Locking => "locking",
            Skip::NotRouted => "not_routed",
        }
    }

    pub fn explain(self) -> &'static str {
        match self {
            Skip::NotARead => "only single plain queries are compared",
            Skip::Locking => "a comparison would take locks on the client's behalf",
            Skip::NotRouted => "the new route does not rewrite it",
        }
    }
}

/// Which side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Old,
    New,
}

/// One read, ready to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Postgres's fingerprint of the client's statement (constants stripped): how findings are grouped.
    pub fingerprint: String,
    /// The client's statement with its constants replaced by `$n`: what findings show, since constants may be
    /// sensitive.
    pub normalized: String,
    /// The query orders its rows: compared position by position too.
    pub ordered: bool,
    /// Why its rows may differ whatever the mapping (`LIMIT` without ORDER BY, TABLESAMPLE): differences then
    /// count as noise.
    pub nondeterministic: Option<&'static str>,
    /// The client's statement on the old schema, and its rewrite for the new one (no trailing `;`).
    pub old: String,
    pub new: String,
}

/// The comparison of `sql` (the client's read) with `new_plan`, its plan on the new route.
pub fn compare(sql: &str, new_plan: &Plan) -> Result<Comparison, Skip> {
    let statements = pg::parse(sql).map_err(|_| Skip::NotARead)?;
    let [statement] = statements.as_slice() else {
        return Err(Skip::NotARead);
    };
    let pg_query::NodeEnum::SelectStmt(select) = &statement.node else {
        return Err(Skip::NotARead);
    };
    if pg::kind(&statement.node) != Kind::Read {
        return Err(Skip::NotARead);
    }
    let tree = pg::Tree::of(&statement.node);
    let advisory = tree.all("FuncCall").into_iter().any(|f| {
        pg::name_fields(f.get("funcname"))
            .last()
            .and_then(|n| n.as_deref())
            .is_some_and(|n| n.starts_with("pg_advisory") || n.starts_with("pg_try_advisory"))
    });
    if !tree.all("LockingClause").is_empty() || advisory {
        return Err(Skip::Locking);
    }
    let new_sql = match new_plan {
        Plan::Rewrite { sql, .. } => trim(sql),
        _ => return Err(Skip::NotRouted),
    };
    let old_sql = trim(&sql[statement.range.clone()]);
    let fingerprint = pg_query::fingerprint(old_sql, 0, 0)
        .map(|f| f.hex)
        .map_err(|_| Skip::NotARead)?;
    let normalized = pg_query::normalize(old_sql).unwrap_or_else(|_| fingerprint.clone());
    Ok(Comparison {
        fingerprint,
        normalized,
        ordered: !select.sort_clause.is_empty(),
        nondeterministic: nondeterminism(&tree),
        old: old_sql.to_owned(),
        new: new_sql.to_owned(),
    })
}

/// What makes a query's rows depend on the plan rather than the data: a row limit without an order at the same
/// level, `DISTINCT ON` without one, sampling. Two different tables give different plans, and old compared
/// with itself (one plan) would not show it.
fn nondeterminism(tree: &pg::Tree) -> Option<&'static str> {
    let set = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .is_some_and(|x| !x.is_null() && x.as_array().is_none_or(|a| !a.is_empty()))
    };
    for select in tree.all("SelectStmt") {
        if set(select, "sort_clause") {
            continue;
        }
        if set(select, "limit_count") || set(select, "limit_offset") {
            return Some("LIMIT or OFFSET without ORDER BY");
        }
        let distinct_on = select
            .get("distinct_clause")
            .and_then(|d| d.as_array())
            .is_some_and(|d| {
                d.iter()
                    .any(|n| n.get("node").is_some_and(|n| !n.is_null()))
            });
        if distinct_on {
            return Some("DISTINCT ON without ORDER BY");
        }
    }
    (!tree.all("RangeTableSample").is_empty()).then_some("TABLESAMPLE")
}

/// The text of one statement without a trailing `;`.
fn trim(sql: &str) -> &str {
    sql.trim().trim_end_matches(';').trim_end()
}

/// `sql` as a subquery; the line breaks end a trailing `--` comment.
fn sub(sql: &str) -> String {
    format!("(\n{sql}\n) AS __pgshift_r")
}

impl Comparison {
    fn side(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }

    /// Old against new: one row of (rows only in old, rows only in new, old rows, new rows, order differs).
    pub fn old_vs_new(&self) -> String {
        pair(&self.old, &self.new, self.ordered)
    }

    /// The served side against itself, same shape: the statement's own nondeterminism.
    pub fn against_itself(&self, side: Side) -> String {
        let sql = self.side(side);
        pair(sql, sql, self.ordered)
    }

    /// Old against new and the served side against itself, in one statement (one snapshot, one round trip):
    /// (only in old, only in new, old rows, new rows, order differs, then the same first two and the order for
    /// the served side against itself).
    pub fn with_noise(&self, served: Side) -> String {
        let (old, new, again) = (sub(&self.old), sub(&self.new), sub(self.side(served)));
        let served = match served {
            Side::Old => "__pgshift_a",
            Side::New => "__pgshift_b",
        };
        format!(
            "WITH __pgshift_a AS MATERIALIZED (SELECT row_number() OVER () AS i, __pgshift_r::text AS t FROM {old}), \
             __pgshift_b AS MATERIALIZED (SELECT row_number() OVER () AS i, __pgshift_r::text AS t FROM {new}), \
             __pgshift_c AS MATERIALIZED (SELECT row_number() OVER () AS i, __pgshift_r::text AS t FROM {again}) \
             SELECT {}, {}",
            counts("__pgshift_a", "__pgshift_b", self.ordered, true),
            counts(served, "__pgshift_c", self.ordered, false),
        )
    }

    /// One side alone (its row count): which side fails when the comparison does.
    pub fn alone(&self, side: Side) -> String {
        format!("SELECT count(*) FROM {}", sub(self.side(side)))
    }

    /// Up to `limit` rows only in old and only in new, as (`old` | `new`, the row as JSON).
    pub fn examples(&self, limit: u32) -> String {
        let (a, b) = (sub(&self.old), sub(&self.new));
        format!(
            "WITH __pgshift_a AS MATERIALIZED (SELECT __pgshift_r::text AS t, to_json(__pgshift_r)::text AS j FROM {a}), \
             __pgshift_b AS MATERIALIZED (SELECT __pgshift_r::text AS t, to_json(__pgshift_r)::text AS j FROM {b}) \
             (SELECT 'old', j FROM __pgshift_a WHERE t IN (SELECT t FROM __pgshift_a EXCEPT ALL SELECT t FROM __pgshift_b) LIMIT {limit}) \
             UNION ALL \
             (SELECT 'new', j FROM __pgshift_b WHERE t IN (SELECT t FROM __pgshift_b EXCEPT ALL SELECT t FROM __pgshift_a) LIMIT {limit})"
        )
    }
}

/// One statement evaluating `a` and `b` and returning (rows only in a, rows only in b, rows of a, rows of b,
/// whether the sequences differ). The order is compared only for `ordered` queries (position by position, the
/// positions numbered as the rows come out of the subquery).
pub fn pair(a: &str, b: &str, ordered: bool) -> String {
    let (sa, sb) = (sub(a), sub(b));
    format!(
        "WITH __pgshift_a AS MATERIALIZED (SELECT row_number() OVER () AS i, __pgshift_r::text AS t FROM {sa}), \
         __pgshift_b AS MATERIALIZED (SELECT row_number() OVER () AS i, __pgshift_r::text AS t FROM {sb}) \
         SELECT {}",
        counts("__pgshift_a", "__pgshift_b", ordered, true)
    )
}

/// The select list comparing CTEs `a` and `b` (columns `i`, `t`): rows only in a, only in b, (with `sizes`)
/// the row count of each, and whether the sequences differ.
fn counts(a: &str, b: &str, ordered: bool, sizes: bool) -> String {
    let order = if ordered {
        format!(
            "EXISTS (SELECT FROM {a} FULL JOIN {b} USING (i) WHERE {a}.t IS DISTINCT FROM {b}.t)"
        )
    } else {
        "false".to_owned()
    };
    let sizes = if sizes {
        format!("(SELECT count(*) FROM {a}), (SELECT count(*) FROM {b}), ")
    } else {
        String::new()
    };
    format!(
        "(SELECT count(*) FROM (SELECT t FROM {a} EXCEPT ALL SELECT t FROM {b}) AS __pgshift_d), \
         (SELECT count(*) FROM (SELECT t FROM {b} EXCEPT ALL SELECT t FROM {a}) AS __pgshift_d), \
         {sizes}{order}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(sql: &str) -> Plan {
        Plan::Rewrite {
            sql: sql.to_owned(),
            shapes: vec![],
            actions: vec![],
        }
    }

    #[test]
    fn reads_get_both_sides_and_a_shared_fingerprint() {
        let new = routed("SELECT id FROM (SELECT id FROM v2.users) AS users WHERE id = 1;");
        let c = compare("SELECT id FROM users /* a */ WHERE id = 1 -- note", &new).unwrap();
        assert!(!c.ordered && c.nondeterministic.is_none());
        assert_eq!(c.old, "SELECT id FROM users /* a */ WHERE id = 1");
        assert_eq!(
            c.new,
            "SELECT id FROM (SELECT id FROM v2.users) AS users WHERE id = 1"
        );
        assert_eq!(c.normalized, "SELECT id FROM users /* a */ WHERE id = $1");
        let sql = c.old_vs_new();
        assert!(sql.contains("FROM (\nSELECT id FROM users /* a */ WHERE id = 1\n) AS __pgshift_r"));
        assert!(sql.contains("EXCEPT ALL") && sql.ends_with(", false"));
        assert_eq!(
            c.against_itself(Side::Old)
                .matches("SELECT id FROM users /* a */ WHERE id = 1")
                .count(),
            2
        );
        let other = compare("select id from users where id = 2", &new).unwrap();
        assert_eq!(
            c.fingerprint, other.fingerprint,
            "constants do not split findings"
        );
        let both = c.with_noise(Side::Old);
        assert_eq!(both.matches("EXCEPT ALL").count(), 4);
        assert!(both.contains("SELECT t FROM __pgshift_a EXCEPT ALL SELECT t FROM __pgshift_c"));
        assert!(c
            .with_noise(Side::New)
            .contains("SELECT t FROM __pgshift_b EXCEPT ALL SELECT t FROM __pgshift_c"));
        let ordered = compare("SELECT id FROM users ORDER BY id LIMIT 5", &new).unwrap();
        assert!(ordered.ordered && ordered.nondeterministic.is_none());
        assert!(ordered
            .old_vs_new()
            .contains("FULL JOIN __pgshift_b USING (i)"));
    }

    #[test]
    fn what_is_not_compared() {
        let new = routed("SELECT 1");
        for (sql, why) in [
            ("UPDATE users SET email = 'x'", Skip::NotARead),
            ("SELECT 1; SELECT 2", Skip::NotARead),
            ("SELECT * INTO t2 FROM users", Skip::NotARead),
            ("SELECT * FROM users FOR UPDATE", Skip::Locking),
            (
                "SELECT * FROM (SELECT * FROM users FOR SHARE) u",
                Skip::Locking,
            ),
            ("SELECT pg_advisory_xact_lock(id) FROM users", Skip::Locking),
        ] {
            assert_eq!(compare(sql, &new), Err(why), "{sql}");
        }
        assert_eq!(
            compare("SELECT 1", &Plan::Forward { actions: vec![] }),
            Err(Skip::NotRouted)
        );
    }

    #[test]
    fn rows_that_depend_on_the_plan_are_noise() {
        let new = routed("SELECT 1");
        for (sql, why) in [
            (
                "SELECT * FROM users LIMIT 5",
                Some("LIMIT or OFFSET without ORDER BY"),
            ),
            (
                "SELECT * FROM users OFFSET 5",
                Some("LIMIT or OFFSET without ORDER BY"),
            ),
            (
                "SELECT * FROM (SELECT id FROM users LIMIT 3) s ORDER BY id",
                Some("LIMIT or OFFSET without ORDER BY"),
            ),
            (
                "SELECT DISTINCT ON (status) id FROM users",
                Some("DISTINCT ON without ORDER BY"),
            ),
            (
                "SELECT * FROM users TABLESAMPLE SYSTEM (10)",
                Some("TABLESAMPLE"),
            ),
            ("SELECT * FROM users ORDER BY id LIMIT 5", None),
            ("SELECT DISTINCT status FROM users", None),
            (
                "SELECT DISTINCT ON (status) id FROM users ORDER BY status, id",
                None,
            ),
        ] {
            assert_eq!(compare(sql, &new).unwrap().nondeterministic, why, "{sql}");
        }
    }
}
