//! What the comparisons found, per migration and statement fingerprint: tallies, verdicts, example keys, the
//! metrics and a log line per newly mismatching statement. What `/status` shows.

use super::compare::{Comparison, Side};
use super::verdict::{self, Tally, Thresholds, Verdict};
use crate::metrics::{SHADOW_COMPARISONS, SHADOW_MISMATCH_RATIO};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Statements kept per migration; samples of further ones are skipped (`too_many_statements`).
const MAX_STATEMENTS: usize = 1000;
/// Example differences kept per statement.
pub const MAX_EXAMPLES: usize = 3;

/// How one comparison ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Match,
    /// The sides returned different rows, or the same rows in another order.
    Differs {
        only_old: i64,
        only_new: i64,
        order: bool,
        /// Where the rows differ (key columns, or values with `log_values`).
        examples: Vec<String>,
    },
    /// Exactly one side failed (Scientist's rule: a mismatch).
    OneSideFails {
        side: Side,
        error: String,
    },
    /// Both sides failed, or the comparison could not run: says nothing about the mapping.
    Error(String),
}

impl Outcome {
    /// The `result` label: `noise` when the same statement differed from itself too, or cannot be expected
    /// to agree.
    fn label(&self, noisy: bool) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Differs { .. } if noisy => "noise",
            Outcome::Differs { .. } | Outcome::OneSideFails { .. } => "mismatch",
            Outcome::Error(_) => "error",
        }
    }
}

/// Findings of every migration.
#[derive(Default)]
pub struct Findings(Mutex<HashMap<String, Migration>>);

#[derive(Default)]
struct Migration {
    mapping: u64,
    since_unix: u64,
    results: BTreeMap<&'static str, u64>,
    skipped: BTreeMap<&'static str, u64>,
    statements: HashMap<String, Statement>,
}

struct Statement {
    normalized: String,
    tally: Tally,
    nondeterministic: Option<&'static str>,
    examples: Vec<String>,
    last_difference: Option<String>,
    last_error: Option<String>,
    reported: bool,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Findings {
    /// The findings of `name` under `mapping`, restarted if they were made under another one.
    fn with<R>(&self, name: &str, mapping: u64, f: impl FnOnce(&mut Migration) -> R) -> R {
        let mut all = self.0.lock().expect("findings lock");
        let m = all.entry(name.to_owned()).or_default();
        if m.mapping != mapping || m.since_unix == 0 {
            if m.since_unix != 0 {
                tracing::info!(
                    migration = name,
                    "the mapping changed: shadow findings start over"
                );
            }
            *m = Migration {
                mapping,
                since_unix: now_unix(),
                ..Migration::default()
            };
        }
        f(m)
    }

    pub fn skipped(&self, name: &str, mapping: u64, reason: &'static str) {
        crate::metrics::migration_counter(SHADOW_COMPARISONS, name, "result", "skipped")
            .increment(1);
        self.with(name, mapping, |m| {
            *m.results.entry("skipped").or_default() += 1;
            *m.skipped.entry(reason).or_default() += 1;
        });
    }

    /// Records one comparison of `c`; `noise` says whether the served side differed from itself (None: that
    /// check did not run).
    pub fn record(
        &self,
        name: &str,
        mapping: u64,
        c: &Comparison,
        outcome: Outcome,
        noise: Option<bool>,
        thresholds: &Thresholds,
    ) {
        let differs = matches!(outcome, Outcome::Differs { .. });
        // Same rows in another order: rows that tie under a partial ORDER BY come in each table's physical
        // order, so this says nothing certain about the mapping.
        let order_only = matches!(
            outcome,
            Outcome::Differs {
                only_old: 0,
                only_new: 0,
                ..
            }
        );
        let noisy = c.nondeterministic.is_some() || order_only || noise == Some(true);
        let label = outcome.label(noisy);
        crate::metrics::migration_counter(SHADOW_COMPARISONS, name, "result", label).increment(1);
        let ratio = self.with(name, mapping, |m| {
            if !m.statements.contains_key(&c.fingerprint) && m.statements.len() >= MAX_STATEMENTS {
                *m.results.entry("skipped").or_default() += 1;
                *m.skipped.entry("too_many_statements").or_default() += 1;
                return None;
            }
            *m.results.entry(label).or_default() += 1;
            let s = m
                .statements
                .entry(c.fingerprint.clone())
                .or_insert_with(|| Statement {
                    normalized: c.normalized.clone(),
                    tally: Tally::default(),
                    nondeterministic: c.nondeterministic,
                    examples: Vec::new(),
                    last_difference: None,
                    last_error: None,
                    reported: false,
                });
            match outcome {
                Outcome::Error(e) => {
                    if s.last_error.is_none() {
                        tracing::warn!(migration = name, fingerprint = %c.fingerprint, query = %c.normalized,
                            error = %e, "shadow comparison failed");
                    }
                    s.tally.errors += 1;
                    s.last_error = Some(e);
                }
                outcome => {
                    s.tally.samples += 1;
                    if outcome != Outcome::Match {
                        s.tally.mismatches += 1;
                    }
                    // A statement whose rows depend on the plan is its own noise floor.
                    let noise = if c.nondeterministic.is_some() || order_only {
                        Some(differs)
                    } else {
                        noise
                    };
                    if let Some(n) = noise {
                        s.tally.noise_samples += 1;
                        s.tally.noise_mismatches += u64::from(n);
                    }
                    match outcome {
                        Outcome::Differs {
                            only_old,
                            only_new,
                            order,
                            examples,
                        } => {
                            s.last_difference = Some(if only_old == 0 && only_new == 0 && order {
                                "same rows in another order (ties under ORDER BY?)".to_owned()
                            } else {
                                format!("{only_old} rows only in old, {only_new} only in new")
                            });
                            for e in examples {
                                if s.examples.len() < MAX_EXAMPLES && !s.examples.contains(&e) {
                                    s.examples.push(e);
                                }
                            }
                        }
                        Outcome::OneSideFails { side, error } => {
                            let which = if side == Side::Old { "old" } else { "new" };
                            let text = format!("only the {which} side fails: {error}");
                            if s.examples.len() < MAX_EXAMPLES && !s.examples.contains(&text) {
                                s.examples.push(text.clone());
                            }
                            s.last_difference = Some(text);
                        }
                        _ => {}
                    }
                }
            }
            if !s.reported && verdict::verdict(&s.tally, thresholds) == Verdict::Mismatch {
                s.reported = true;
                let noise_rate = rate(s.tally.noise_mismatches, s.tally.noise_samples);
                tracing::warn!(
                    migration = name,
                    fingerprint = %c.fingerprint,
                    query = %s.normalized,
                    samples = s.tally.samples,
                    mismatches = s.tally.mismatches,
                    noise_rate,
                    difference = s.last_difference.as_deref().unwrap_or_default(),
                    examples = ?s.examples,
                    "shadow reads: the new schema answers this statement differently"
                );
            }
            let (samples, mismatches) = m.statements.values().fold((0, 0), |(a, b), s| {
                (a + s.tally.samples, b + s.tally.mismatches)
            });
            Some(rate(mismatches, samples))
        });
        if let Some(ratio) = ratio {
            ::metrics::gauge!(SHADOW_MISMATCH_RATIO, "migration" => name.to_owned()).set(ratio);
        }
    }

    /// A migration's findings for `/status`: counts, verdict, and the statements that mismatch most.
    pub fn status(&self, name: &str, thresholds: &Thresholds) -> serde_json::Value {
        let all = self.0.lock().expect("findings lock");
        let Some(m) = all.get(name) else {
            return serde_json::json!({ "verdict": Verdict::Insufficient.label(), "comparisons": {} });
        };
        let mut statements: Vec<_> = m
            .statements
            .iter()
            .map(|(fp, s)| (verdict::verdict(&s.tally, thresholds), fp, s))
            .collect();
        statements.sort_by(|a, b| {
            (b.0, b.2.tally.mismatches, b.2.tally.samples).cmp(&(
                a.0,
                a.2.tally.mismatches,
                a.2.tally.samples,
            ))
        });
        serde_json::json!({
            "verdict": m.verdict(thresholds).label(),
            "since_unix": m.since_unix,
            "comparisons": m.results,
            "skipped": m.skipped,
            "statements": statements.iter().take(10).map(|(v, fp, s)| serde_json::json!({
                "fingerprint": fp,
                "query": s.normalized,
                "verdict": v.label(),
                "samples": s.tally.samples,
                "mismatches": s.tally.mismatches,
                "mismatch_rate": rate(s.tally.mismatches, s.tally.samples),
                "noise_rate": rate(s.tally.noise_mismatches, s.tally.noise_samples),
                "errors": s.tally.errors,
                "nondeterministic": s.nondeterministic,
                "difference": s.last_difference,
                "examples": s.examples,
                "last_error": s.last_error,
            })).collect::<Vec<_>>(),
        })
    }

    /// The normalized text of `name`'s most mismatching statement, if one mismatches (for the rollout guards).
    pub fn worst(&self, name: &str, thresholds: &Thresholds) -> Option<String> {
        let all = self.0.lock().expect("findings lock");
        all.get(name)?
            .statements
            .values()
            .filter(|s| verdict::verdict(&s.tally, thresholds) == Verdict::Mismatch)
            .max_by_key(|s| s.tally.mismatches)
            .map(|s| s.normalized.clone())
    }

    /// The verdict of `name` (for the rollout guards).
    pub fn verdict(&self, name: &str, thresholds: &Thresholds) -> Verdict {
        let all = self.0.lock().expect("findings lock");
        all.get(name)
            .map_or(Verdict::Insufficient, |m| m.verdict(thresholds))
    }
}

impl Migration {
    /// A migration mismatches when any of its statements does; before `min_samples` comparisons in all, no
    /// verdict.
    fn verdict(&self, thresholds: &Thresholds) -> Verdict {
        let worst = self
            .statements
            .values()
            .map(|s| verdict::verdict(&s.tally, thresholds))
            .max();
        let samples: u64 = self.statements.values().map(|s| s.tally.samples).sum();
        match worst {
            Some(Verdict::Mismatch) => Verdict::Mismatch,
            _ if samples < thresholds.min_samples => Verdict::Insufficient,
            _ => Verdict::Match,
        }
    }
}

fn rate(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(fp: &str, nondeterministic: Option<&'static str>) -> Comparison {
        Comparison {
            fingerprint: fp.into(),
            normalized: format!("SELECT {fp}"),
            ordered: false,
            nondeterministic,
            old: String::new(),
            new: String::new(),
        }
    }

    fn differs(key: &str) -> Outcome {
        Outcome::Differs {
            only_old: 1,
            only_new: 1,
            order: false,
            examples: vec![format!("only in old: {key}")],
        }
    }

    #[test]
    fn findings_group_by_fingerprint_and_restart_with_the_mapping() {
        let f = Findings::default();
        let th = Thresholds::default();
        let wrong = comparison("a", None);
        let fine = comparison("b", None);
        for i in 0..20 {
            f.record(
                "m",
                1,
                &wrong,
                differs(&format!("id={i}")),
                Some(false),
                &th,
            );
            f.record("m", 1, &fine, Outcome::Match, Some(false), &th);
        }
        f.record(
            "m",
            1,
            &fine,
            Outcome::Error("permission denied".into()),
            None,
            &th,
        );
        assert_eq!(f.verdict("m", &th), Verdict::Mismatch);
        let status = f.status("m", &th);
        assert_eq!(status["verdict"], "mismatch");
        assert_eq!(status["comparisons"]["mismatch"], 20);
        assert_eq!(status["comparisons"]["match"], 20);
        assert_eq!(status["comparisons"]["error"], 1);
        let top = &status["statements"][0];
        assert_eq!(top["fingerprint"], "a");
        assert_eq!(top["examples"].as_array().unwrap().len(), MAX_EXAMPLES);
        assert_eq!(top["examples"][0], "only in old: id=0");
        assert_eq!(status["statements"][1]["last_error"], "permission denied");

        // A new mapping: what was found under the old one no longer counts.
        for _ in 0..10 {
            f.record("m", 2, &wrong, Outcome::Match, Some(false), &th);
        }
        assert_eq!(f.verdict("m", &th), Verdict::Match);
        assert_eq!(
            f.status("m", &th)["comparisons"]["mismatch"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn noise_is_not_a_mismatch() {
        let f = Findings::default();
        let th = Thresholds::default();
        let random = comparison("r", None);
        let limit = comparison("l", Some("LIMIT or OFFSET without ORDER BY"));
        for i in 0..40 {
            // random(): old differs from itself as often as from new.
            f.record("m", 1, &random, differs("x"), Some(true), &th);
            f.record(
                "m",
                1,
                &limit,
                if i % 3 == 0 {
                    differs("y")
                } else {
                    Outcome::Match
                },
                Some(false),
                &th,
            );
        }
        let status = f.status("m", &th);
        assert_eq!(f.verdict("m", &th), Verdict::Match, "{status:#}");
        for s in status["statements"].as_array().unwrap() {
            assert_eq!(s["verdict"], "noise", "{status:#}");
        }
        // Same rows in another order: ties, noise.
        let ties = comparison("t", None);
        for _ in 0..20 {
            let reordered = Outcome::Differs {
                only_old: 0,
                only_new: 0,
                order: true,
                examples: vec![],
            };
            f.record("m", 1, &ties, reordered, Some(false), &th);
        }
        assert_eq!(f.verdict("m", &th), Verdict::Match);
        // One side failing is a mismatch however noisy the statement is.
        let fails = comparison("f", None);
        for _ in 0..10 {
            let error = "permission denied for table users_v2".to_owned();
            f.record(
                "m",
                1,
                &fails,
                Outcome::OneSideFails {
                    side: Side::New,
                    error,
                },
                Some(false),
                &th,
            );
        }
        assert_eq!(f.verdict("m", &th), Verdict::Mismatch);
    }
}
