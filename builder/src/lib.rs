//! bpfarm's builder: turns kernel header packages into validated, cached,
//! reproducible eBPF objects. `build::run` is the entry point; `compile` is
//! the one compile implementation the agent reuses for local builds.

pub mod unpack;
