//! The verdict over many samples of one statement: does old against new differ more than old against itself?
//! Diffy's rule — a mismatch rate counts only above the statement's own noise floor by a relative and an
//! absolute margin — so `random()` and `LIMIT` without ORDER BY do not raise alarms.

/// Samples of one fingerprint: old against new, and the served side against itself (the noise floor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Comparisons that gave an answer (match or not); errors are not samples.
    pub samples: u64,
    pub mismatches: u64,
    pub noise_samples: u64,
    pub noise_mismatches: u64,
    /// Comparisons that failed on both sides (or could not run): they say nothing about the mapping.
    pub errors: u64,
}

/// When a mismatch rate counts as more than noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Fraction (0.2 = 20 %) by which the mismatch rate must exceed the noise rate.
    pub relative: f64,
    /// Fraction of samples (0.0003 = 0.03 %) by which it must exceed it absolutely.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Too few samples to say.
    Insufficient,
    Match,
    /// Differences, but no more than the statement differs from itself.
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

/// A fingerprint mismatches when its old-vs-new mismatch rate exceeds its noise rate by more than the absolute
/// margin and by more than the relative one.
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
        // Four in 10,000: over it.
        assert_eq!(verdict(&t(10_000, 4, 10_000, 0), &th), Verdict::Mismatch);
        let strict = Thresholds {
            min_samples: 1,
            ..th
        };
        assert_eq!(verdict(&t(1, 1, 1, 0), &strict), Verdict::Mismatch);
    }
}
