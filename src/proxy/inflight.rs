//! One request in flight, from when the client's message is planned until its reply completes: how its reply
//! is shaped, and for a statement on a migrated table, its migration and route, its latency and its outcome.
//! Its [`InFlight::on_reply`] sees every reply message; its [`Timing::finish`] records once per statement —
//! the seam where shadow comparisons and rollout guards take their numbers.

use super::pending::Request;
use super::respond::{self, Output, Respond};
use crate::metrics::{self, READS, STATEMENTS_REWRITTEN, STATEMENT_ERRORS};
use crate::protocol::messages;
use crate::rewrite::{Action, ActionKind};
use std::sync::Arc;

/// One FIFO entry: a request, how to answer it, and (for statements on migrated tables) what to time.
pub struct Entry {
    pub request: Request,
    pub respond: Respond,
    pub timing: Option<Timing>,
}

impl Entry {
    pub fn forward(request: Request) -> Entry {
        Entry {
            request,
            respond: Respond::Forward,
            timing: None,
        }
    }

    /// What the upstream pump keeps once the request is sent.
    pub fn into_parts(self) -> (Request, InFlight) {
        (
            self.request,
            InFlight {
                respond: self.respond,
                timing: self.timing,
            },
        )
    }
}

/// What the upstream pump keeps for each request it is owed a reply to.
#[derive(Debug)]
pub struct InFlight {
    pub respond: Respond,
    pub timing: Option<Timing>,
}

impl InFlight {
    /// Shapes one reply message for the client; when it completes the request, records the statement's
    /// latency and outcome.
    pub fn on_reply(&mut self, request: Request, tag: u8, frame: &[u8]) -> Output {
        let output = respond::shape(&mut self.respond, request, tag, frame);
        if let Some(timing) = self.timing.as_mut().filter(|_| tag == b'E') {
            timing.failed(frame);
        }
        let completes = match request {
            Request::Query => tag == b'Z',
            Request::Parse => matches!(tag, b'1' | b'E'),
            Request::Bind => matches!(tag, b'2' | b'E'),
            Request::Execute => matches!(tag, b'C' | b'I' | b's' | b'E'),
            _ => false,
        };
        if let Some(timing) = self.timing.take_if(|_| completes) {
            timing.finish();
        }
        output
    }
}

/// Which migration and route a statement's latency is recorded under, and everything its plan did.
#[derive(Debug, Clone)]
pub struct Label {
    pub migration: Arc<str>,
    /// `new`, `old` (reads), `dual_write` or `new_primary` (writes, by phase).
    pub route: &'static str,
    /// Counted each time the statement runs, not each time it is planned (a prepared statement is planned once).
    pub actions: Arc<[Action]>,
}

/// A statement on a migrated table, from when it is planned until its reply completes.
#[derive(Debug)]
pub struct Timing {
    pub label: Label,
    pub started: std::time::Instant,
    /// The SQLSTATE class of the server's error, if it failed.
    failed: Option<[u8; 2]>,
    /// A shadow comparison of this read, handed over if it succeeds.
    pub sample: Option<crate::shadow::Sample>,
    /// Where a rollout's guards take this statement's latency and outcome, and its text hash.
    pub measure: Option<(Arc<crate::rollout::Rollouts>, u64)>,
    /// The Parse or Bind of a statement: recorded only if the server refuses it (its executions are timed).
    pub failure_only: bool,
}

impl Timing {
    pub fn start(label: Option<Label>) -> Option<Timing> {
        label.map(|label| Timing {
            label,
            started: std::time::Instant::now(),
            failed: None,
            sample: None,
            measure: None,
            failure_only: false,
        })
    }

    /// The server answered with this ErrorResponse.
    pub fn failed(&mut self, error: &[u8]) {
        if let Ok((code, _)) = messages::error_fields(error) {
            if let [a, b, ..] = code.as_bytes() {
                self.failed = Some([*a, *b]);
            }
        }
    }

    /// The reply is complete: its latency, and whether it failed (by SQLSTATE class), per migration and route —
    /// the numbers a rollout's guards compare between routes.
    pub fn finish(self) {
        if self.failure_only && self.failed.is_none() {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        metrics::statement_duration(&self.label.migration, self.label.route).record(seconds);
        if let Some((rollouts, hash)) = &self.measure {
            let class = self
                .failed
                .map(|c| String::from_utf8_lossy(&c).into_owned());
            rollouts.measurements.record(
                &self.label.migration,
                self.label.route,
                *hash,
                seconds,
                class.as_deref(),
            );
        }
        for action in self.label.actions.iter() {
            let (metric, label, value) = match action.what {
                ActionKind::ReadNew => (READS, "route", "new"),
                ActionKind::ReadOld => (READS, "route", "old"),
                ActionKind::ReadUnrewritable => (READS, "route", "old_unrewritable"),
                write @ (ActionKind::DualWrite | ActionKind::NewPrimary) => {
                    (STATEMENTS_REWRITTEN, "kind", write.label())
                }
            };
            metrics::migration_counter(metric, &action.migration, label, value).increment(1);
        }
        if let (None, Some(sample)) = (self.failed, self.sample) {
            sample.submit();
        }
        if let Some(class) = self.failed {
            ::metrics::counter!(
                STATEMENT_ERRORS,
                "migration" => self.label.migration.to_string(),
                "route" => self.label.route,
                "class" => String::from_utf8_lossy(&class).into_owned()
            )
            .increment(1);
        }
    }
}
