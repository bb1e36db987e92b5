//! Session threads: each runs its own single-threaded event loop, and a session stays on the thread it was
//! given (round robin, no work stealing), as in nginx, Envoy and Pingora's no-steal runtime.
//!
//! A proxy's message is a few microseconds of kernel work; with a work-stealing pool, the wakeups between
//! worker threads (a futex per hand-off) cost a sizeable share of that on top. Here a session's sockets are
//! registered with its thread's own epoll, so a message never crosses threads.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the pool: each thread then stops its loop, dropping whatever sessions remain.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` (at least one) threads.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("pgshift-worker-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// Runs `session` on the next thread. It must register its sockets from inside (`from_std`), so their
    /// readiness is delivered by that thread's loop.
    pub fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_spread_over_the_threads() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                tx.send(std::thread::current().name().unwrap().to_owned())
                    .unwrap();
            });
        }
        let mut names: Vec<String> = (0..4).map(|_| rx.recv().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "pgshift-worker-0",
                "pgshift-worker-0",
                "pgshift-worker-1",
                "pgshift-worker-1"
            ]
        );
    }
}
