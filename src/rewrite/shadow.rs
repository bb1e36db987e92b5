//! Shadow comparison of a read: the statements that evaluate it on the old schema and on the new one (and on
//! old twice, for the noise floor) in **one statement**, so one snapshot, returning only counts — and the
//! verdict over many samples. Pure: SQL text in, SQL text and verdicts out.
//!
//! Rows are compared by their text (`t::text`), which every type has, in the session's own settings: the
//! routed rewrite already returns the old columns' types, so equal values print alike. Without a top-level
//! ORDER BY, the two sides are compared as multisets (symmetric `EXCEPT ALL`); with one, as sequences (a hash
//! of the rows in the order they come).

use super::pg::{self, Kind};
use super::Plan;

/// Why a read is not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not exactly one plain query (writes, several statements, `SELECT … INTO`, utility statements).
    NotARead,
    /// `FOR UPDATE` and friends: a comparison would take locks on the client's behalf.
    Locking,
    /// The new route does not rewrite it (it names no migrated table, or cannot be rewritten).
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
}

/// The comparison statements for one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Postgres's fingerprint of the client's statement (constants stripped): how findings are grouped.
    pub fingerprint: String,
    /// Compared as sequences (the query orders its rows).
    pub ordered: bool,
    /// Old against new: one row of (rows only in old, rows only in new, old rows, new rows).
    pub old_vs_new: String,
    /// Old against old: the statement's own nondeterminism, same shape.
    pub old_vs_old: String,
}

/// The comparison of `sql` (the client's read, served from old) with `new_plan`, its plan on the new route.
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
    if !pg::Tree::of(&statement.node)
        .all("LockingClause")
        .is_empty()
    {
        return Err(Skip::Locking);
    }
    let new_sql = match new_plan {
        Plan::Rewrite { sql, .. } => sql.as_str(),
        _ => return Err(Skip::NotRouted),
    };
    let old_sql = &sql[statement.range.clone()];
    let ordered = !select.sort_clause.is_empty();
    let fingerprint = pg_query::fingerprint(old_sql, 0, 0)
        .map(|f| f.hex)
        .map_err(|_| Skip::NotARead)?;
    Ok(Comparison {
        fingerprint,
        ordered,
        old_vs_new: statement_pair(old_sql, trim(new_sql), ordered),
        old_vs_old: statement_pair(old_sql, old_sql, ordered),
    })
}

/// The text of one statement without a trailing `;`.
fn trim(sql: &str) -> &str {
    sql.trim().trim_end_matches(';').trim_end()
}

/// One statement evaluating `a` and `b` and returning (only in a, only in b, rows of a, rows of b); for ordered
/// queries the first two are 0 or 1 (the sequences differ or not).
pub fn statement_pair(a: &str, b: &str, ordered: bool) -> String {
    if ordered {
        // Each side's rows in the order the query gives them, folded into one hash.
        format!(
            "WITH __pgshift_a AS MATERIALIZED (SELECT count(*) AS n, md5(string_agg(md5(__pgshift_r::text), '')) AS h \
             FROM ({a}) AS __pgshift_r), \
             __pgshift_b AS MATERIALIZED (SELECT count(*) AS n, md5(string_agg(md5(__pgshift_r::text), '')) AS h \
             FROM ({b}) AS __pgshift_r) \
             SELECT (__pgshift_a.h IS DISTINCT FROM __pgshift_b.h)::int::int8, (__pgshift_a.h IS DISTINCT FROM __pgshift_b.h)::int::int8, \
             __pgshift_a.n, __pgshift_b.n FROM __pgshift_a, __pgshift_b"
        )
    } else {
        format!(
            "WITH __pgshift_a AS MATERIALIZED (SELECT __pgshift_r::text AS r FROM ({a}) AS __pgshift_r), \
             __pgshift_b AS MATERIALIZED (SELECT __pgshift_r::text AS r FROM ({b}) AS __pgshift_r) \
             SELECT (SELECT count(*) FROM (SELECT r FROM __pgshift_a EXCEPT ALL SELECT r FROM __pgshift_b) AS __pgshift_d), \
             (SELECT count(*) FROM (SELECT r FROM __pgshift_b EXCEPT ALL SELECT r FROM __pgshift_a) AS __pgshift_d), \
             (SELECT count(*) FROM __pgshift_a), (SELECT count(*) FROM __pgshift_b)"
        )
    }
}

/// Samples of one fingerprint: old against new, and old against old (the noise floor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub samples: u64,
    pub mismatches: u64,
    pub noise_samples: u64,
    pub noise_mismatches: u64,
    pub errors: u64,
}

/// When a mismatch rate counts as more than noise (Diffy's defaults: 20 % relative, 0.03 % absolute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub relative: f64,
    pub absolute: f64,
    /// No verdict on fewer samples than this.
    pub min_samples: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            relative: 0.20,
            absolute: 0.0003,
            min_samples: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Too few samples to say.
    Insufficient,
    Match,
    /// Differences, but no more than old differs from itself.
    Noise,
    Mismatch,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Insufficient => "insufficient",
            Verdict::Match => "match",
            Verdict::Noise => "noise",
            Verdict::Mismatch => "mismatch",
        }
    }
}

/// A fingerprint mismatches when its old-vs-new mismatch rate exceeds its old-vs-old rate by more than the
/// absolute margin and by more than the relative one.
pub fn verdict(t: &Tally, th: &Thresholds) -> Verdict {
    if t.samples < th.min_samples {
        return Verdict::Insufficient;
    }
    if t.mismatches == 0 {
        return Verdict::Match;
    }
    let rate = t.mismatches as f64 / t.samples as f64;
    let noise = if t.noise_samples == 0 {
        0.0
    } else {
        t.noise_mismatches as f64 / t.noise_samples as f64
    };
    if rate - noise > th.absolute && rate > noise * (1.0 + th.relative) {
        Verdict::Mismatch
    } else {
        Verdict::Noise
    }
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
    fn reads_get_both_statements_and_a_shared_fingerprint() {
        let new = routed("SELECT id FROM (SELECT id FROM v2.users) AS users WHERE id = 1;");
        let c = compare("SELECT id FROM users WHERE id = 1", &new).unwrap();
        assert!(!c.ordered);
        assert!(c
            .old_vs_new
            .contains("FROM (SELECT id FROM users WHERE id = 1) AS __pgshift_r"));
        assert!(c.old_vs_new.contains(
            "FROM (SELECT id FROM (SELECT id FROM v2.users) AS users WHERE id = 1) AS __pgshift_r"
        ));
        assert!(c.old_vs_new.contains("EXCEPT ALL"));
        assert_eq!(
            c.old_vs_old
                .matches("FROM (SELECT id FROM users WHERE id = 1) AS __pgshift_r")
                .count(),
            2
        );
        let other = compare("select id from users where id = 2", &new).unwrap();
        assert_eq!(
            c.fingerprint, other.fingerprint,
            "constants do not split findings"
        );
        let ordered = compare("SELECT id FROM users ORDER BY id LIMIT 5", &new).unwrap();
        assert!(ordered.ordered && ordered.old_vs_new.contains("string_agg"));
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
        ] {
            assert_eq!(compare(sql, &new), Err(why), "{sql}");
        }
        assert_eq!(
            compare("SELECT 1", &Plan::Forward { actions: vec![] }),
            Err(Skip::NotRouted)
        );
    }

    #[test]
    fn verdicts_weigh_mismatches_against_noise() {
        let th = Thresholds::default();
        let t = |samples, mismatches, noise_samples, noise_mismatches| Tally {
            samples,
            mismatches,
            noise_samples,
            noise_mismatches,
            errors: 0,
        };
        assert_eq!(verdict(&t(5, 5, 5, 0), &th), Verdict::Insufficient);
        assert_eq!(verdict(&t(300, 0, 300, 0), &th), Verdict::Match);
        assert_eq!(verdict(&t(300, 120, 300, 0), &th), Verdict::Mismatch);
        // As noisy as old against itself (random(), LIMIT without ORDER BY).
        assert_eq!(verdict(&t(300, 150, 300, 140), &th), Verdict::Noise);
        // Clearly above the noise.
        assert_eq!(verdict(&t(300, 150, 300, 30), &th), Verdict::Mismatch);
        // One in 10,000 against none: under the 0.03 % absolute margin.
        assert_eq!(verdict(&t(10_000, 1, 10_000, 0), &th), Verdict::Noise);
    }
}
