//! Integration tests: real PostgreSQL, pgshift in front of it, real clients. One binary, one cluster.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod backfill;
mod cli;
mod clients;
mod demo;
mod differential;
mod drivers;
mod lifecycle;
mod migrations;
mod orms;
mod raw;
mod reload;
mod rollout;
mod routing;
mod shadow;
mod tls;
mod tokio_pg;
