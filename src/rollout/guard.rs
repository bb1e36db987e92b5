//! The guards of a ramp: over one window of a replica's own traffic, is the new route as good as the old one?
//! Error rate (server-side errors, some classes ignored, with an absolute margin), p95/p99 latency of the same
//! statements on each route, the shadow-read verdict, and a minimum number of samples before any verdict.
//! Pure: a window of numbers in, a verdict with its numbers out.

use std::collections::HashMap;
use std::time::Duration;

/// `[migration.guard]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// How often the guards are checked; each check looks at the statements since the last one.
    pub interval: Duration,
    /// Statements on new (in a window) before any verdict; per statement and route for latency.
    pub min_samples: u64,
    /// Consecutive failed checks before acting.
    pub failure_limit: u32,
    pub action: Action,
    /// How much higher new's error rate may be than old's (a fraction: 0.01 = one point).
    pub max_error_rate_increase: f64,
    /// SQLSTATE classes that do not count as errors (e.g. "23": constraint violations the application expects).
    pub ignore_error_classes: Vec<String>,
    /// p95 and p99 of a statement on new at most this times its p99 on old…
    pub max_latency_ratio: f64,
    /// …unless they differ by less than this.
    pub latency_floor: Duration,
    /// A clean verification at most this old before the first step and before `promote`.
    pub require_verified_within: Duration,
    /// Replication lag at most this (checked when `[control] replica_dsn` names a replica).
    pub max_replication_lag: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rollback,
    Pause,
}

/// One route's statements in a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    pub statements: u64,
    /// Errors by SQLSTATE class.
    pub errors: HashMap<String, u64>,
    /// Latencies in seconds, per statement (a hash of its text).
    pub latencies: HashMap<u64, Vec<f64>>,
}

/// Latencies kept per statement and route in a window.
pub const LATENCY_SAMPLES: usize = 4096;
/// Latencies a statement needs on each route before they are compared.
pub const LATENCY_MIN_SAMPLES: usize = 50;

impl Route {
    pub fn record(&mut self, statement: u64, seconds: f64, error_class: Option<&str>) {
        self.statements += 1;
        if let Some(class) = error_class {
            *self.errors.entry(class.to_owned()).or_default() += 1;
        }
        let samples = self.latencies.entry(statement).or_default();
        if samples.len() < LATENCY_SAMPLES {
            samples.push(seconds);
        }
    }

    fn error_rate(&self, ignore: &[String]) -> f64 {
        let errors: u64 = self
            .errors
            .iter()
            .filter(|(class, _)| !ignore.contains(class))
            .map(|(_, n)| n)
            .sum();
        errors as f64 / self.statements.max(1) as f64
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub old: Route,
    pub new: Route,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Check {
    /// Too few statements on new to judge: nothing advances, nothing trips.
    Insufficient {
        detail: String,
    },
    Pass {
        detail: String,
    },
    Fail {
        reasons: Vec<String>,
    },
}

impl Check {
    pub fn label(&self) -> &'static str {
        match self {
            Check::Insufficient { .. } => "insufficient",
            Check::Pass { .. } => "pass",
            Check::Fail { .. } => "fail",
        }
    }
}

/// Judges one window. `shadow_mismatch` names a statement the shadow reads found mismatching, if any; `lag` is
/// the replica's replication lag when one is configured (an error if it could not be read).
pub fn check(
    w: &Window,
    g: &Guard,
    shadow_mismatch: Option<&str>,
    lag: Option<&Result<Duration, String>>,
) -> Check {
    let mut reasons = Vec::new();
    match lag {
        Some(Ok(lag)) if *lag > g.max_replication_lag => reasons.push(format!(
            "replication lag {:.1} s (at most {:.1} s)",
            lag.as_secs_f64(),
            g.max_replication_lag.as_secs_f64()
        )),
        Some(Err(e)) => reasons.push(format!("replication lag unreadable: {e}")),
        _ => {}
    }
    if let Some(statement) = shadow_mismatch {
        reasons.push(format!(
            "shadow reads: the new schema answers differently to {statement}"
        ));
    }
    if w.new.statements < g.min_samples {
        if reasons.is_empty() {
            return Check::Insufficient {
                detail: format!(
                    "{} statements on new, {} needed",
                    w.new.statements, g.min_samples
                ),
            };
        }
        return Check::Fail { reasons };
    }
    let new_rate = w.new.error_rate(&g.ignore_error_classes);
    // Without enough traffic on old (late in a ramp), new is judged against none.
    let old_rate = if w.old.statements >= g.min_samples {
        w.old.error_rate(&g.ignore_error_classes)
    } else {
        0.0
    };
    if new_rate - old_rate > g.max_error_rate_increase {
        reasons.push(format!(
            "error rate {:.2}% on new against {:.2}% on old (at most {:.2} points more)",
            new_rate * 100.0,
            old_rate * 100.0,
            g.max_error_rate_increase * 100.0
        ));
    }
    let mut compared = 0;
    for (statement, new) in &w.new.latencies {
        let Some(old) = w.old.latencies.get(statement) else {
            continue;
        };
        // Percentiles of a handful of samples are noise, whatever min_samples says.
        let enough = (g.min_samples as usize).clamp(LATENCY_MIN_SAMPLES, LATENCY_SAMPLES);
        if new.len() < enough || old.len() < enough {
            continue;
        }
        compared += 1;
        for p in [95.0, 99.0] {
            let (n, o) = (percentile(new, p), percentile(old, p));
            if n > o * g.max_latency_ratio && n - o > g.latency_floor.as_secs_f64() {
                reasons.push(format!(
                    "p{p} of statement {statement:016x}: {:.2} ms on new against {:.2} ms on old (at most {:.2}x)",
                    n * 1000.0,
                    o * 1000.0,
                    g.max_latency_ratio
                ));
            }
        }
    }
    if reasons.is_empty() {
        Check::Pass {
            detail: format!(
                "{} statements on new, error rate {:.2}% (old {:.2}%), latency compared for {compared} statements",
                w.new.statements,
                new_rate * 100.0,
                old_rate * 100.0
            ),
        }
    } else {
        Check::Fail { reasons }
    }
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Consecutive failures, and whether to act now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures(pub u32);

impl Failures {
    /// Counts a check; true when the failure limit is reached.
    pub fn after(&mut self, check: &Check, limit: u32) -> bool {
        match check {
            Check::Fail { .. } => self.0 += 1,
            Check::Pass { .. } => self.0 = 0,
            Check::Insufficient { .. } => {}
        }
        self.0 >= limit.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            interval: Duration::from_secs(60),
            min_samples: 100,
            failure_limit: 2,
            action: Action::Rollback,
            max_error_rate_increase: 0.01,
            ignore_error_classes: vec!["23".into()],
            max_latency_ratio: 1.15,
            latency_floor: Duration::from_millis(1),
            require_verified_within: Duration::from_secs(86400),
            max_replication_lag: Duration::from_secs(10),
        }
    }

    fn route(statements: u64, errors: &[(&str, u64)], latency_ms: f64) -> Route {
        let mut r = Route::default();
        for i in 0..statements {
            r.record(7, (latency_ms + (i % 10) as f64 * 0.01) / 1000.0, None);
        }
        for (class, n) in errors {
            r.errors.insert((*class).into(), *n);
        }
        r
    }

    #[test]
    fn no_verdict_on_a_handful_of_statements() {
        let w = Window {
            old: route(1000, &[], 1.0),
            new: route(99, &[("42", 99)], 50.0),
        };
        assert!(matches!(
            check(&w, &guard(), None, None),
            Check::Insufficient { .. }
        ));
        // A shadow mismatch needs no sample count.
        assert!(matches!(
            check(&w, &guard(), Some("SELECT …"), None),
            Check::Fail { .. }
        ));
    }

    #[test]
    fn error_rates_are_compared_with_a_margin_and_ignored_classes() {
        let g = guard();
        let ok = Window {
            old: route(1000, &[("40", 10)], 1.0),
            new: route(1000, &[("40", 19), ("23", 500)], 1.0),
        };
        assert!(
            matches!(check(&ok, &g, None, None), Check::Pass { .. }),
            "{:?}",
            check(&ok, &g, None, None)
        );
        let bad = Window {
            old: route(1000, &[("40", 10)], 1.0),
            new: route(1000, &[("42", 30)], 1.0),
        };
        let Check::Fail { reasons } = check(&bad, &g, None, None) else {
            panic!("{:?}", check(&bad, &g, None, None));
        };
        assert_eq!(
            reasons,
            ["error rate 3.00% on new against 1.00% on old (at most 1.00 points more)"]
        );
        // At 100 % nothing is left on old: new is judged against no errors.
        let alone = Window {
            old: route(3, &[], 1.0),
            new: route(1000, &[("42", 20)], 1.0),
        };
        assert!(matches!(check(&alone, &g, None, None), Check::Fail { .. }));
    }

    #[test]
    fn latency_of_the_same_statement_is_compared_above_a_floor() {
        let g = guard();
        let slow = Window {
            old: route(500, &[], 2.0),
            new: route(500, &[], 5.0),
        };
        let Check::Fail { reasons } = check(&slow, &g, None, None) else {
            panic!();
        };
        assert_eq!(reasons.len(), 2, "p95 and p99: {reasons:?}");
        assert!(reasons[1]
            .starts_with("p99 of statement 0000000000000007: 5.09 ms on new against 2.09 ms"));
        // 20 % slower but only 0.1 ms: under the floor.
        let fast = Window {
            old: route(500, &[], 0.5),
            new: route(500, &[], 0.6),
        };
        assert!(matches!(check(&fast, &g, None, None), Check::Pass { .. }));
    }

    #[test]
    fn replication_lag_fails_when_too_high_or_unreadable() {
        let w = Window::default();
        let g = guard();
        let high = Ok(Duration::from_secs(30));
        let Check::Fail { reasons } = check(&w, &g, None, Some(&high)) else {
            panic!();
        };
        assert_eq!(reasons, ["replication lag 30.0 s (at most 10.0 s)"]);
        let unreadable = Err("the replica DSN points at a primary".to_owned());
        assert!(matches!(
            check(&w, &g, None, Some(&unreadable)),
            Check::Fail { .. }
        ));
        let fine = Ok(Duration::from_secs(1));
        assert!(matches!(
            check(&w, &g, None, Some(&fine)),
            Check::Insufficient { .. }
        ));
    }

    #[test]
    fn act_after_the_failure_limit_of_consecutive_failures() {
        let fail = Check::Fail { reasons: vec![] };
        let pass = Check::Pass {
            detail: String::new(),
        };
        let wait = Check::Insufficient {
            detail: String::new(),
        };
        let mut f = Failures::default();
        assert!(!f.after(&fail, 2));
        assert!(!f.after(&pass, 2), "a pass resets the count");
        assert!(!f.after(&fail, 2));
        assert!(!f.after(&wait, 2), "no verdict neither counts nor resets");
        assert!(f.after(&fail, 2));
    }
}
