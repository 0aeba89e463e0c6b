//! libbpf's own messages, routed to `tracing` (debug and trace) instead of
//! straight to stderr, for every part that opens objects with libbpf (the
//! builder's validation, the agent's load). Behind the `libbpf` feature.

/// Installs the routing for this process (libbpf's print hook is global).
pub fn route_logs() {
    fn print(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::debug!(target: "libbpf", "{msg}"),
            _ => tracing::trace!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
}
