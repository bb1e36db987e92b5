//! Cancel requests: which upstream owns a backend key, and forwarding a CancelRequest to it.
//!
//! pgshift relays the upstream's own BackendKeyData, so the key a client cancels with is the upstream's key;
//! only keys of live sessions are forwarded, so a stranger cannot make pgshift send arbitrary cancels.

use super::upstream;
use crate::config::Upstream;
use crate::metrics::CANCEL_REQUESTS;
use crate::protocol::startup::{CancelKey, CancelRequest};
use crate::protocol::tls::UpstreamTls;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where to send a cancel for a key.
#[derive(Clone)]
pub struct Owner {
    pub upstream: Arc<Upstream>,
    pub tls: UpstreamTls,
}

#[derive(Default)]
pub struct Registry {
    keys: Mutex<HashMap<CancelKey, Owner>>,
}

impl Registry {
    pub fn register(&self, key: CancelKey, owner: Owner) {
        self.keys
            .lock()
            .expect("cancel registry poisoned")
            .insert(key, owner);
    }

    pub fn remove(&self, key: &CancelKey) {
        self.keys
            .lock()
            .expect("cancel registry poisoned")
            .remove(key);
    }

    fn owner(&self, key: &CancelKey) -> Option<Owner> {
        self.keys
            .lock()
            .expect("cancel registry poisoned")
            .get(key)
            .cloned()
    }

    /// Forwards `request` to the upstream that owns its key. Like PostgreSQL, never answers the client.
    pub async fn forward(&self, request: &CancelRequest, timeout: Duration) {
        let Some(owner) = self.owner(&request.key) else {
            tracing::info!(
                pid = request.key.pid,
                "cancel request for an unknown key ignored"
            );
            metrics::counter!(CANCEL_REQUESTS, "result" => "unknown_key").increment(1);
            return;
        };
        let result = async {
            let mut stream = upstream::connect(&owner.upstream, &owner.tls, timeout).await?;
            stream.write_all(&request.raw).await?;
            // The server closes the connection once it has handled the request.
            let mut sink = [0u8; 64];
            let _ = tokio::time::timeout(timeout, stream.read(&mut sink)).await;
            Ok::<_, upstream::UpstreamError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(pid = request.key.pid, "cancel request forwarded");
                metrics::counter!(CANCEL_REQUESTS, "result" => "forwarded").increment(1);
            }
            Err(e) => {
                tracing::warn!(pid = request.key.pid, error = %e, "cancel request could not be forwarded");
                metrics::counter!(CANCEL_REQUESTS, "result" => "failed").increment(1);
            }
        }
    }
}
