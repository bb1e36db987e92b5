//! How big the next batch is and how long to wait before it: pure functions of what the last batch took and
//! the limits in force (which may change while a backfill runs).

use crate::config::BackfillSection;
use std::time::Duration;

/// The row count that should take `batch_time`, judged by the last batch: shrinks at once when a batch ran
/// long, grows at most twofold per batch, always within `min_rows..=max_rows`.
pub fn next_size(current: u64, took: Duration, limits: &BackfillSection) -> u64 {
    let took = took.as_secs_f64().max(0.000_5);
    let ideal = (current as f64 * limits.batch_time.as_secs_f64() / took) as u64;
    ideal
        .min(current.saturating_mul(2))
        .clamp(limits.min_rows, limits.max_rows)
}

/// After a timeout (lock or statement), the batch is retried smaller.
pub fn after_timeout(current: u64, limits: &BackfillSection) -> u64 {
    (current / 4).clamp(limits.min_rows, limits.max_rows)
}

/// How long to wait so that `rows` copied over `elapsed` stay within `max_rate` rows/s (0: no limit).
pub fn rate_pause(rows: u64, elapsed: Duration, max_rate: u64) -> Duration {
    if max_rate == 0 {
        return Duration::ZERO;
    }
    let due = Duration::from_secs_f64(rows as f64 / max_rate as f64);
    due.saturating_sub(elapsed)
}

/// Backoff before retry `attempt` (1, 2, …): 100 ms doubling, at most 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BackfillSection {
        BackfillSection {
            batch_time: Duration::from_millis(200),
            min_rows: 100,
            max_rows: 10_000,
            ..BackfillSection::default()
        }
    }

    #[test]
    fn batches_size_themselves_to_the_target_time() {
        let l = limits();
        // Fast batches grow, but at most twofold.
        assert_eq!(next_size(1000, Duration::from_millis(10), &l), 2000);
        // On target: unchanged.
        assert_eq!(next_size(1000, Duration::from_millis(200), &l), 1000);
        // Slow: shrinks at once to what fits.
        assert_eq!(next_size(1000, Duration::from_millis(800), &l), 250);
        // Bounds hold.
        assert_eq!(next_size(8000, Duration::from_millis(1), &l), 10_000);
        assert_eq!(next_size(150, Duration::from_secs(10), &l), 100);
        assert_eq!(after_timeout(1000, &l), 250);
        assert_eq!(after_timeout(200, &l), 100);
    }

    #[test]
    fn rate_and_backoff() {
        assert_eq!(
            rate_pause(1000, Duration::from_millis(200), 0),
            Duration::ZERO
        );
        assert_eq!(
            rate_pause(1000, Duration::from_millis(200), 1000),
            Duration::from_millis(800)
        );
        assert_eq!(
            rate_pause(100, Duration::from_secs(1), 1000),
            Duration::ZERO
        );
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }
}
