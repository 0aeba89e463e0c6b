//! What the agent does after its own checks, and nothing else: read the
//! object, open it from memory, load it, attach every program (those the
//! kernel cannot attach are skipped, as the agent skips them), and print
//! `attached N` on stderr, the line bench/agent.py times to.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: bpfarm-reference-loader OBJECT");
        return ExitCode::from(2);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("reading {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    let open = match libbpf_rs::ObjectBuilder::default().open_memory(&bytes) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("opening: {e}");
            return ExitCode::FAILURE;
        }
    };
    let obj = match open.load() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loading: {e}");
            return ExitCode::FAILURE;
        }
    };
    let links: Vec<_> = obj.progs_mut().filter_map(|p| p.attach().ok()).collect();
    if links.is_empty() {
        eprintln!("no program attached");
        return ExitCode::FAILURE;
    }
    eprintln!("attached {}", links.len());
    // The links stay until the bench stops the process at that line.
    loop {
        std::thread::park();
    }
}
