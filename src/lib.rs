//! pgshift: a transparent PostgreSQL wire-protocol proxy for zero-downtime schema migrations.
//!
//! Data flows one way: client bytes → [`protocol::frame`] → (later: rewrite) → upstream, and back.

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod pgcluster;
pub mod protocol;
pub mod proxy;
pub mod rewrite;
pub mod routing;
pub mod server;
