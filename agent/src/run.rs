//! Loading the object and streaming its events: capability check, load
//! (from the verified bytes in memory) and attach with libbpf, the ring-buffer loop until SIGINT/SIGTERM (or
//! `--duration`), output, filters, `--capture exec` and the summary.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpfarm_object::program::OPTIONAL_PROGRAMS;
use libbpf_rs::MapCore;

use crate::events::{self, Detail, Event, Record, WallClock};

/// The capabilities loading needs that this process lacks; empty if none.
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0)))
        })
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return vec![];
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing.push("(or CAP_SYS_ADMIN instead of both)");
    missing
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub comm: Vec<String>,
    pub pid: Vec<u32>,
    pub uid: Vec<u32>,
    pub events: Vec<String>,
}

impl Filters {
    fn keep(&self, e: &Event) -> bool {
        (self.comm.is_empty() || self.comm.contains(&e.comm))
            && (self.pid.is_empty() || self.pid.contains(&e.pid))
            && (self.uid.is_empty() || self.uid.contains(&e.uid))
            && (self.events.is_empty() || self.events.iter().any(|n| n == e.name()))
    }
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where the object came from (for messages).
    pub object: PathBuf,
    /// The verified bytes, loaded as they are: the file is not opened again
    /// between the check and the load.
    pub bytes: bytes::Bytes,
    pub output: Output,
    pub filters: Filters,
    pub duration: Option<Duration>,
    /// `--capture exec`: copy executed binaries here.
    pub capture_dir: Option<PathBuf>,
    /// The host name every event carries.
    pub host: String,
}

/// Whether this process shares the host's (initial) PID namespace.
fn in_host_pid_namespace() -> bool {
    // The initial PID namespace's inode is fixed: PROC_PID_INIT_INO.
    std::fs::read_link("/proc/self/ns/pid").map(|l| l.to_string_lossy() == "pid:[4026531836]").unwrap_or(true)
}

/// Copies the executable of an exec event into `dir`, deduplicated by
/// content hash. Returns the copy's path when it is new.
fn capture(dir: &Path, e: &Event) -> Option<PathBuf> {
    let Detail::Exec { filename } = &e.detail else { return None };
    // /proc/<pid>/exe works even when the path was relative or is gone;
    // the process may have exited already, then the path is tried.
    let bytes = std::fs::read(format!("/proc/{}/exe", e.pid)).or_else(|_| std::fs::read(filename)).ok()?;
    let digest = bpfarm_object::Digest::of_bytes(&bytes);
    let base =
        Path::new(filename).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "exe".into());
    let dest = dir.join(format!("{}.{}", &digest.hex()[..16], base));
    if dest.exists() {
        return None;
    }
    let tmp = dir.join(format!(".tmp-{}", digest.hex()));
    std::fs::write(&tmp, &bytes).ok()?;
    std::fs::rename(&tmp, &dest).ok()?;
    Some(dest)
}

/// Why loading or streaming stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("loading eBPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN; this process lacks: {}", .0.join(", "))]
    Capabilities(Vec<&'static str>),
    #[error("opening {}: {source}", .object.display())]
    Open {
        object: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("the kernel refused to load {}: {source}", .object.display())]
    Load {
        object: PathBuf,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("no program attached: {}", .0.join("; "))]
    NothingAttached(Vec<String>),
    #[error("creating {}: {source}", .path.display())]
    CaptureDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the object has no events map")]
    NoEventsMap,
    #[error("{what}: {source}")]
    RingBuffer {
        what: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
}

/// Loads, attaches, streams until stopped; prints the summary on stderr.
pub fn run(cfg: &RunConfig) -> Result<(), RunError> {
    let missing = missing_capabilities();
    if !missing.is_empty() {
        return Err(RunError::Capabilities(missing));
    }
    // Before loading: a SIGINT/SIGTERM from here on ends the run cleanly
    // (links detached, a background install finished), even one that
    // arrives while the programs are still being attached.
    let stop = Arc::new(AtomicBool::new(false));
    for (signal, number) in [("SIGINT", signal_hook::consts::SIGINT), ("SIGTERM", signal_hook::consts::SIGTERM)] {
        signal_hook::flag::register(number, stop.clone()).map_err(|source| RunError::Signal { signal, source })?;
    }
    bpfarm_object::libbpf::route_logs();
    // Everything before this line is the agent's own work; after it, the
    // kernel's (bench/agent.py times both).
    eprintln!("bpfarm-agent: loading {} ({} bytes)", cfg.object.display(), cfg.bytes.len());
    let open = libbpf_rs::ObjectBuilder::default()
        .name("tracee")
        .and_then(|b| b.open_memory(&cfg.bytes))
        .map_err(|source| RunError::Open { object: cfg.object.clone(), source })?;
    let obj = open.load().map_err(|source| RunError::Load { object: cfg.object.clone(), source })?;
    let mut links = Vec::new();
    let mut skipped = Vec::new();
    for prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        match prog.attach() {
            Ok(link) => links.push((name, link)),
            Err(e) if OPTIONAL_PROGRAMS.contains(&name.as_str()) => skipped
                .push(format!("{name}: optional kprobe program, this kernel cannot attach it (no kprobes?): {e}")),
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    if links.is_empty() {
        return Err(RunError::NothingAttached(skipped));
    }
    let names: Vec<&str> = links.iter().map(|(n, _)| n.as_str()).collect();
    // Tests and scripts wait for this line.
    eprintln!("bpfarm-agent: attached {} programs on {}: {}", links.len(), cfg.host, names.join(", "));
    for s in &skipped {
        eprintln!("bpfarm-agent: skipped {s}");
    }
    if let Some(dir) = &cfg.capture_dir {
        std::fs::create_dir_all(dir).map_err(|source| RunError::CaptureDir { path: dir.clone(), source })?;
        if !in_host_pid_namespace() {
            eprintln!(
                "bpfarm-agent: warning: not in the host PID namespace; --capture exec cannot read host processes' executables"
            );
        }
    }

    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    if cfg.output == Output::Table {
        let _ = writeln!(
            out,
            "{:<15} {:<8} {:>7} {:>7} {:>6} {:<16} DETAILS",
            "TIME", "EVENT", "PID", "PPID", "UID", "COMM"
        );
    }
    let counts: std::cell::RefCell<BTreeMap<&'static str, u64>> = Default::default();
    let captured: std::cell::RefCell<HashSet<PathBuf>> = Default::default();
    let sink = std::cell::RefCell::new(out);
    // Re-sampled on every poll: a suspend or a clock step moves it.
    let clock = std::cell::Cell::new(WallClock::sample());
    let events_map = obj.maps().find(|m| m.name() == "events").ok_or(RunError::NoEventsMap)?;
    let rb_err = |what| move |source| RunError::RingBuffer { what, source };
    let mut rb = libbpf_rs::RingBufferBuilder::new();
    rb.add(&events_map, |data: &[u8]| {
        let Some(e) = events::decode(data) else { return 0 };
        if !cfg.filters.keep(&e) {
            return 0;
        }
        *counts.borrow_mut().entry(e.name()).or_default() += 1;
        let mut out = sink.borrow_mut();
        let record = Record::new(&e, &clock.get(), &cfg.host);
        let _ = match cfg.output {
            Output::Json => match serde_json::to_string(&record) {
                Ok(line) => writeln!(out, "{line}"),
                Err(err) => writeln!(out, "{{\"error\":\"unserializable event: {err}\"}}"),
            },
            Output::Table => writeln!(
                out,
                "{:<15} {:<8} {:>7} {:>7} {:>6} {:<16} {}",
                record.local_time(),
                e.name(),
                e.pid,
                e.ppid,
                e.uid,
                e.comm,
                e.details()
            ),
        };
        if let Some(dir) = &cfg.capture_dir
            && let Some(p) = capture(dir, &e)
        {
            captured.borrow_mut().insert(p);
        }
        0
    })
    .map_err(rb_err("adding the events ring buffer"))?;
    let rb = rb.build().map_err(rb_err("building the ring buffer"))?;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && cfg.duration.is_none_or(|d| started.elapsed() < d) {
        clock.set(WallClock::sample());
        match rb.poll(Duration::from_millis(100)) {
            Ok(()) => {}
            // A signal interrupting the poll is how we are asked to stop.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            Err(e) => return Err(rb_err("polling the ring buffer")(e)),
        }
    }
    rb.consume().map_err(rb_err("draining the ring buffer"))?;
    drop(rb);
    let lost = lost_events(&obj);
    let counts = counts.into_inner();
    let seen: u64 = counts.values().sum();
    let by_kind: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "bpfarm-agent: {seen} events ({}), {lost} lost, in {:.1}s{}",
        if by_kind.is_empty() { "none".into() } else { by_kind.join(", ") },
        started.elapsed().as_secs_f64(),
        if cfg.capture_dir.is_some() {
            format!("; {} executables captured", captured.borrow().len())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Sum over CPUs of the events the ring buffer had no room for.
fn lost_events(obj: &libbpf_rs::Object) -> u64 {
    let Some(map) = obj.maps().find(|m| m.name() == "lost_events") else { return 0 };
    map.lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .ok()
        .flatten()
        .map(|cpus| {
            cpus.iter().filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)).sum()
        })
        .unwrap_or(0)
}
