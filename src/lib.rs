//! pgshift: a transparent PostgreSQL wire-protocol proxy for zero-downtime schema migrations.
//!
//! Data flows one way: client bytes → [`protocol`] → [`proxy`] (a session plans each message with
//! [`rewrite::planner`], routes reads by [`routing`]) → upstream, and replies back through the same session.
//! [`config`] holds the reloadable migrations; [`metrics`] and [`http`] expose what happened; [`cli`] holds
//! the operator commands (`serve`, `check`, `rewrite`, `demo` with its throwaway cluster).

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod rewrite;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod shadow;
