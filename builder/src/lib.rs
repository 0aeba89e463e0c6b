//! bpfarm's builder: turns kernel header packages into validated, cached,
//! reproducible eBPF objects. `build::run` is the entry point; `compile` is
//! the one compile implementation the agent reuses for local builds.

pub mod archive;
pub mod btf;
pub mod build;
pub mod cache;
pub mod compile;
pub mod diagnostics;
pub mod discover;
pub mod fetch;
pub mod fsutil;
pub mod kernel;
pub mod layout;
pub mod limits;
pub mod matrix;
pub mod packages;
pub mod program;
pub mod publish;
pub mod rpms;
pub mod sandbox;
pub mod signing;
pub mod treefs;
pub mod trees;
pub mod unpack;
pub mod validate;
pub mod yum;
