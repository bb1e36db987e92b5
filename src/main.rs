//! The `pgshift` binary: parses the command line and runs it; the commands live in [`pgshift::cli`].

use clap::Parser;
use pgshift::cli::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Accepting, signals, reloads and /metrics; sessions run on `listen.workers` threads of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(pgshift::cli::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgshift: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
