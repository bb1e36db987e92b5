//! Test support, by job: [`cluster`] (one throwaway PostgreSQL per test binary, a fresh database per test),
//! [`proxy`] (pgshift in-process on free ports) and [`wait`] (conditions with deadlines, probes).

#![allow(dead_code)]

pub mod cluster;
pub mod proxy;
pub mod wait;

pub use cluster::*;
pub use proxy::*;
pub use wait::*;
