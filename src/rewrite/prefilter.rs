//! The fast path: one pass over the statement's bytes decides whether it names any migrated table at all.
//! Statements that do not are forwarded without being parsed. ASCII case-insensitive, because unquoted names
//! fold to lower case; a false positive only costs a parse, a false negative is impossible for plain names.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

#[derive(Debug, Clone)]
pub struct Prefilter {
    automaton: Option<AhoCorasick>,
}

impl Prefilter {
    /// Built once per config for the table names it migrates.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Prefilter {
        let names: Vec<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
        if names.is_empty() {
            return Prefilter { automaton: None };
        }
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&names)
            .expect("table names are short literals");
        Prefilter {
            automaton: Some(automaton),
        }
    }

    /// For the migrated tables (in target order) and, after them, the objects that write them out of sight
    /// ([`super::Dependent`]): statements naming those are planned too, so writes through them can be refused.
    pub fn for_targets<'a>(
        tables: impl IntoIterator<Item = &'a str>,
        schema: &'a super::Schema,
    ) -> Prefilter {
        Prefilter::new(
            tables.into_iter().chain(
                schema
                    .dependents
                    .iter()
                    .filter(|d| d.writes())
                    .map(|d| d.name.as_str()),
            ),
        )
    }

    /// Whether `sql` may mention a migrated table.
    pub fn matches(&self, sql: &str) -> bool {
        self.automaton.as_ref().is_some_and(|a| a.is_match(sql))
    }

    /// Indices (into the names given to `new`) of every name `sql` mentions.
    pub fn mentioned(&self, sql: &str) -> Vec<usize> {
        let Some(a) = &self.automaton else {
            return Vec::new();
        };
        let mut found: Vec<usize> = a
            .find_overlapping_iter(sql)
            .map(|m| m.pattern().as_usize())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_names_in_any_case() {
        let p = Prefilter::new(["users", "orders", "pgbench_accounts"]);
        assert!(p.matches("select * from USERS"));
        assert!(p.matches("UPDATE Pgbench_Accounts SET abalance = 1"));
        assert!(!p.matches("SELECT 1 FROM accounts"));
        assert_eq!(
            p.mentioned("SELECT * FROM orders JOIN users USING (id) WHERE users.id = 1"),
            vec![0, 1]
        );
        assert!(!Prefilter::new([]).matches("users"));
    }
}
