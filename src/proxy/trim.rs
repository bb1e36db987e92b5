//! Returning memory to the operating system after bursts of sessions.
//!
//! glibc's malloc keeps what ended sessions freed inside its per-thread arenas and gives back only the top of
//! each heap, so after a flood of connections RSS stays near its peak, and creeps up flood after flood as new
//! peaks land on fragmented heaps (measured: 55 → 106 MiB over nine floods of 2,000 sessions, while one
//! `malloc_trim` brought 85 MiB back to 11 MiB: free memory, not a leak). So once at least as many sessions
//! have ended as are still open, pgshift trims: every free page of every arena goes back.

use super::Shared;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Fewer ended sessions than this never free enough to be worth a trim.
const MIN_ENDED: u64 = 64;

/// Whether enough sessions ended since the last trim, relative to those still open, to be worth one.
pub fn due(ended_since: u64, active: usize) -> bool {
    ended_since >= MIN_ENDED && ended_since >= active as u64
}

/// Checks every second for as long as pgshift serves.
pub async fn run(shared: Arc<Shared>) {
    let mut last = shared.ended.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let ended = shared.ended.load(Ordering::Relaxed);
        if due(ended - last, shared.active.load(Ordering::Relaxed)) {
            last = ended;
            // A few milliseconds at most; off the session threads.
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}

fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn a_trim_is_due_after_a_flood_not_after_a_trickle() {
        assert!(due(2000, 0), "a flood ended");
        assert!(due(500, 500), "half of those open ended");
        assert!(!due(10, 0), "a trickle");
        assert!(!due(100, 1000), "steady churn under many open sessions");
    }
}
