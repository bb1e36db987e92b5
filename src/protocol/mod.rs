//! The PostgreSQL wire protocol as pgshift needs it: framing, startup packets, the few messages it reads,
//! and TLS. No I/O here except the TLS handshake types.

pub mod frame;
pub mod messages;
pub mod startup;
pub mod tls;
