//! Cancel requests: which session owns a backend key, and forwarding a CancelRequest so that it only ever
//! hits the statement it was sent for.
//!
//! pgshift relays the upstream's own BackendKeyData, so the key a client cancels with is the upstream's key;
//! only keys of live sessions are forwarded, so a stranger cannot make pgshift send arbitrary cancels.
//!
//! A forwarded cancel takes a detour (a new upstream connection) that a direct one does not, so without care it
//! can arrive after its statement ended and cancel the next one. Each session therefore has a [`Gate`]: a cancel
//! is forwarded only if the session has been busy since before the cancel connection arrived (else the
//! statement it meant has completed and Postgres would have ignored it), and while it is being forwarded the
//! session holds its next statement back.

use super::upstream;
use crate::config::Upstream;
use crate::metrics::CANCEL_REQUESTS;
use crate::protocol::startup::{encode_cancel_request, CancelKey, CancelRequest};
use crate::protocol::tls::UpstreamTls;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Where to send a cancel for a key.
#[derive(Clone)]
pub struct Owner {
    pub upstream: Arc<Upstream>,
    pub tls: UpstreamTls,
}

/// One session's side of cancelling: whether a statement is running, and cancels being forwarded for it.
pub struct Gate {
    owner: Owner,
    state: Mutex<GateState>,
    settled: Notify,
    /// Mirrors `busy_since.is_some()`, so the upstream pump's check after every read needs no lock.
    busy: AtomicBool,
}

#[derive(Default)]
struct GateState {
    /// Since when the upstream has owed the session a reply without a break; `None` when it owes nothing.
    busy_since: Option<Instant>,
    /// Cancels on their way upstream; the session sends nothing new until they are handled.
    forwarding: usize,
    /// The upstream's key for this session, once it sent BackendKeyData.
    key: Option<CancelKey>,
}

impl Gate {
    pub fn new(owner: Owner) -> Arc<Gate> {
        Arc::new(Gate {
            owner,
            state: Mutex::new(GateState::default()),
            settled: Notify::new(),
            busy: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called before the session sends anything upstream: waits while a cancel is being forwarded, then
    /// marks the session busy.
    pub async fn before_send(&self) {
        // The common case, no cancel on its way: one uncontended lock.
        if self.try_send() {
            return;
        }
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a cancel settling in between still wakes us.
            settled.as_mut().enable();
            if self.try_send() {
                return;
            }
            settled.await;
        }
    }

    /// Marks the session busy unless a cancel is being forwarded.
    fn try_send(&self) -> bool {
        let mut state = self.lock();
        if state.forwarding > 0 {
            return false;
        }
        if state.busy_since.is_none() {
            state.busy_since = Some(Instant::now());
            self.busy.store(true, Ordering::Release);
        }
        true
    }

    /// Called when the upstream owes the session nothing any more.
    pub fn idle(&self) {
        if self.busy.load(Ordering::Acquire) {
            self.lock().busy_since = None;
            self.busy.store(false, Ordering::Release);
        }
    }

    /// Whether a statement is running upstream.
    pub fn busy(&self) -> bool {
        self.lock().busy_since.is_some()
    }

    fn set_key(&self, key: Option<CancelKey>) {
        self.lock().key = key;
    }

    /// Admits a cancel whose connection arrived at `arrived`: only if what runs now was already running then.
    fn admit(&self, arrived: Instant) -> bool {
        let mut state = self.lock();
        let admitted = state.busy_since.is_some_and(|since| since <= arrived);
        if admitted {
            state.forwarding += 1;
        }
        admitted
    }

    fn forwarded(&self) {
        let mut state = self.lock();
        state.forwarding -= 1;
        if state.forwarding == 0 {
            self.settled.notify_waiters();
        }
    }

    /// The client went away: cancels what is running, so it does not hold its locks until it finishes.
    pub async fn cancel_running(&self, timeout: Duration) {
        let key = {
            let state = self.lock();
            match (&state.key, state.busy_since) {
                (Some(key), Some(_)) => key.clone(),
                _ => return,
            }
        };
        tracing::info!(
            pid = key.pid,
            "the client went away with a statement running: cancelling it"
        );
        let result = send(&self.owner, &encode_cancel_request(&key), timeout).await;
        record(key.pid, "client_gone", result);
    }
}

/// The live sessions' gates, by the key a client cancels with.
#[derive(Default)]
pub struct Registry {
    keys: Mutex<HashMap<CancelKey, Arc<Gate>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Arc<Gate>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, key: CancelKey, gate: Arc<Gate>) {
        gate.set_key(Some(key.clone()));
        self.lock().insert(key, gate);
    }

    pub fn remove(&self, key: &CancelKey) {
        if let Some(gate) = self.lock().remove(key) {
            gate.set_key(None);
        }
    }

    /// Forwards `request`, whose connection was accepted at `arrived`, to the upstream that owns its key, if
    /// the statement it was sent for is still running. Like PostgreSQL, never answers the client.
    pub async fn forward(&self, request: &CancelRequest, arrived: Instant, timeout: Duration) {
        let gate = self.lock().get(&request.key).cloned();
        let Some(gate) = gate else {
            tracing::info!(
                pid = request.key.pid,
                "cancel request for an unknown key ignored"
            );
            metrics::counter!(CANCEL_REQUESTS, "result" => "unknown_key").increment(1);
            return;
        };
        if !gate.admit(arrived) {
            tracing::info!(
                pid = request.key.pid,
                "cancel request dropped: the statement it was sent for has completed"
            );
            metrics::counter!(CANCEL_REQUESTS, "result" => "completed").increment(1);
            return;
        }
        // Released however this ends, so the session is never held by a cancel that went nowhere.
        let held = Held(&gate);
        let result = send(&gate.owner, &request.raw, timeout).await;
        drop(held);
        record(request.key.pid, "forwarded", result);
    }
}

/// A cancel on its way upstream: the session's next statement waits until this is dropped.
struct Held<'a>(&'a Gate);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.forwarded();
    }
}

/// Sends a CancelRequest and waits until the server has handled it (it closes the connection then).
async fn send(
    owner: &Owner,
    raw: &Bytes,
    timeout: Duration,
) -> Result<(), upstream::UpstreamError> {
    let mut stream = upstream::connect(&owner.upstream, &owner.tls, timeout).await?;
    stream.write_all(raw).await?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(timeout, stream.read(&mut sink)).await;
    Ok(())
}

fn record(pid: i32, what: &'static str, result: Result<(), upstream::UpstreamError>) {
    match result {
        Ok(()) => {
            tracing::info!(pid, "cancel request forwarded");
            metrics::counter!(CANCEL_REQUESTS, "result" => what).increment(1);
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "cancel request could not be forwarded");
            metrics::counter!(CANCEL_REQUESTS, "result" => "failed").increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn gate() -> Arc<Gate> {
        let overrides = Overrides {
            upstream: Some("localhost:5432".to_owned()),
            ..Default::default()
        };
        let config = Config::from_overrides(&overrides).unwrap();
        Gate::new(Owner {
            tls: UpstreamTls::new(&config.upstream).unwrap(),
            upstream: Arc::new(config.upstream),
        })
    }

    #[tokio::test]
    async fn a_cancel_is_admitted_only_for_the_statement_running_when_it_arrived() {
        let gate = gate();
        let before = Instant::now();
        assert!(!gate.admit(before), "nothing runs: dropped");
        gate.before_send().await;
        assert!(
            !gate.admit(before),
            "arrived before this statement: dropped"
        );
        assert!(
            gate.admit(Instant::now()),
            "arrived while it runs: forwarded"
        );
        gate.forwarded();
        gate.idle();
        assert!(!gate.admit(Instant::now()), "it completed: dropped");
    }

    #[tokio::test]
    async fn a_cancel_dropped_on_its_way_releases_the_session() {
        let gate = gate();
        gate.before_send().await;
        assert!(gate.admit(Instant::now()));
        drop(Held(&gate));
        tokio::time::timeout(Duration::from_secs(5), gate.before_send())
            .await
            .expect("not held");
    }

    #[tokio::test]
    async fn the_next_statement_waits_for_a_cancel_being_forwarded() {
        let gate = gate();
        gate.before_send().await;
        assert!(gate.admit(Instant::now()));
        gate.idle();
        let next = tokio::spawn({
            let gate = gate.clone();
            async move { gate.before_send().await }
        });
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "held while the cancel is on its way");
        gate.forwarded();
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("released once the cancel was handled")
            .unwrap();
        assert!(gate.busy());
    }
}
