//! bpfarm's agent: resolve the tracer object for this host (`resolve`),
//! load it and stream its events (`run`, `events`).

pub mod events;
pub mod resolve;
pub mod run;
