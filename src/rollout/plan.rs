//! Where a rollout stands and what it means for routing: the state every replica shares, what it makes of a
//! migration's config, and when a ramp moves on. Pure: no clock but the one passed in.

use crate::config::migration::{BasisPoints, WriteMode};
use std::time::Duration;

/// A migration's ramp (`[migration.reads.ramp]`): the percentages of reads routed to new, in order, and how long
/// each holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp {
    pub steps: Vec<BasisPoints>,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Declared, not started: reads stay on old.
    Pending,
    Ramping,
    /// Held at its step until resumed.
    Paused,
    /// Every read on old; `new_primary` writes back to `dual_write`.
    RolledBack,
    /// At the last step.
    Complete,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Ramping => "ramping",
            Status::Paused => "paused",
            Status::RolledBack => "rolled_back",
            Status::Complete => "complete",
        }
    }
}

/// Where one migration's rollout stands: shared by every replica (the `pgshift.rollouts` row).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub status: Status,
    /// Index into the ramp's steps (meaningful while ramping, paused or complete).
    pub step: usize,
    /// When the current step (or status) began, in Unix milliseconds.
    pub since_ms: i64,
    /// Why it is where it is (the command, the guard that tripped, with its numbers).
    pub reason: String,
    /// Writes moved to `new_primary` by `promote`.
    pub promoted: bool,
    /// Bumped by every change: changes are conditional on it, so exactly one replica advances a step.
    pub version: i64,
}

impl State {
    pub fn pending() -> State {
        State {
            status: Status::Pending,
            step: 0,
            since_ms: 0,
            reason: String::new(),
            promoted: false,
            version: 0,
        }
    }
}

/// What the rollout makes of a migration: the share of reads routed to new and the write phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// Replaces `reads.new_percent`.
    pub new_bp: BasisPoints,
    /// Rolled back: every targeting rule's share is 0 too (the kill switch).
    pub kill: bool,
    pub writes: WriteMode,
}

/// The routing a state gives a migration whose config says `writes`.
pub fn effect(ramp: &Ramp, state: &State, writes: WriteMode) -> Effect {
    let at = |step: usize| {
        ramp.steps
            .get(step)
            .or(ramp.steps.last())
            .copied()
            .unwrap_or(0)
    };
    let new_bp = match state.status {
        Status::Pending | Status::RolledBack => 0,
        Status::Ramping | Status::Paused => at(state.step),
        Status::Complete => at(ramp.steps.len().saturating_sub(1)),
    };
    let writes = match (state.status, writes, state.promoted) {
        // The kill switch: the old table is the source of truth again.
        (Status::RolledBack, WriteMode::NewPrimary, _) => WriteMode::DualWrite,
        (Status::RolledBack, w, _) => w,
        (_, WriteMode::DualWrite, true) => WriteMode::NewPrimary,
        (_, w, _) => w,
    };
    Effect {
        new_bp,
        kill: state.status == Status::RolledBack,
        writes,
    }
}

/// What a replica should do with a ramp now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    Hold,
    /// To this step index.
    Advance(usize),
    /// The last step has held its interval.
    Complete,
}

/// A ramp moves on when its step has held for the interval and the guards' last check passed.
pub fn next(ramp: &Ramp, state: &State, now_ms: i64, guards_pass: bool) -> Move {
    if state.status != Status::Ramping || !guards_pass {
        return Move::Hold;
    }
    if now_ms - state.since_ms < ramp.interval.as_millis() as i64 {
        return Move::Hold;
    }
    if state.step + 1 < ramp.steps.len() {
        Move::Advance(state.step + 1)
    } else {
        Move::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Ramp {
        Ramp {
            steps: vec![100, 500, 2500, 5000, 10000],
            interval: Duration::from_secs(900),
        }
    }

    fn at(status: Status, step: usize, since_ms: i64) -> State {
        State {
            status,
            step,
            since_ms,
            ..State::pending()
        }
    }

    #[test]
    fn steps_hold_for_their_interval_then_advance_while_guards_pass() {
        let r = ramp();
        let s = at(Status::Ramping, 0, 1_000);
        assert_eq!(next(&r, &s, 1_000 + 899_999, true), Move::Hold);
        assert_eq!(next(&r, &s, 1_000 + 900_000, true), Move::Advance(1));
        assert_eq!(
            next(&r, &s, 1_000 + 900_000, false),
            Move::Hold,
            "guards first"
        );
        let last = at(Status::Ramping, 4, 0);
        assert_eq!(next(&r, &last, 900_000, true), Move::Complete);
        for status in [
            Status::Paused,
            Status::Pending,
            Status::RolledBack,
            Status::Complete,
        ] {
            assert_eq!(next(&r, &at(status, 1, 0), i64::MAX, true), Move::Hold);
        }
    }

    #[test]
    fn what_each_state_routes() {
        let r = ramp();
        let e = |s: &State, w| effect(&r, s, w);
        assert_eq!(e(&State::pending(), WriteMode::DualWrite).new_bp, 0);
        assert_eq!(
            e(&at(Status::Ramping, 2, 0), WriteMode::DualWrite).new_bp,
            2500
        );
        assert_eq!(
            e(&at(Status::Paused, 1, 0), WriteMode::DualWrite).new_bp,
            500
        );
        assert_eq!(
            e(&at(Status::Complete, 1, 0), WriteMode::DualWrite).new_bp,
            10000
        );
        let back = e(&at(Status::RolledBack, 3, 0), WriteMode::NewPrimary);
        assert_eq!((back.new_bp, back.writes), (0, WriteMode::DualWrite));
        let promoted = State {
            promoted: true,
            ..at(Status::Complete, 4, 0)
        };
        assert_eq!(
            e(&promoted, WriteMode::DualWrite).writes,
            WriteMode::NewPrimary
        );
        let rolled_back = State {
            status: Status::RolledBack,
            ..promoted
        };
        assert_eq!(
            e(&rolled_back, WriteMode::DualWrite).writes,
            WriteMode::DualWrite
        );
    }
}
