//! `bpfarm-agent`: parse the command line, run it (`commands`), print the
//! error chain and end with its exit code (0 success, 1 failure, 2 usage).

// No panics and no early exits in the agent's own code: every failure is an
// error with its exit code (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::exit)
)]

use std::error::Error;
use std::process::ExitCode;

use bpfarm_agent::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BPFARM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match bpfarm_agent::commands::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfarm-agent: error: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// The error and its causes, each cause added unless the message above it
/// already quotes it.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}
