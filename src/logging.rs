//! Log output: text or JSON, filtered by `log.level` unless `RUST_LOG` is set.

use crate::config::model::{LogFormat, LogSection};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call (tests, demo after serve) is a no-op.
pub fn init(log: &LogSection) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in files, journald or a log shipper.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
