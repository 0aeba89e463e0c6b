//! bpfarm's agent: resolve the tracer object for this host (`resolve`),
//! trusting only checked folders (`trust`) and its settings (`config`,
//! `cli`), load it and stream its events (`run`, `events`); `commands`
//! ties them to the command line.
//!
//! The `local-build` feature (default) brings the builder's compile path;
//! without it the agent finds, fetches and verifies only.

// No panics and no early exits in the agent's own code: every failure is an
// error with its exit code (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable, clippy::exit)
)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod events;
pub mod resolve;
pub mod rollback;
pub mod run;
pub mod trust;
pub mod verify;
