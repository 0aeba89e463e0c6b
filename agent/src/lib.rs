//! bpfarm's agent: resolve the tracer object for this host (`resolve`),
//! trusting only checked folders (`trust`) and its settings (`config`),
//! load it and stream its events (`run`, `events`).

pub mod config;
pub mod events;
pub mod resolve;
pub mod rollback;
pub mod run;
pub mod trust;
pub mod verify;
