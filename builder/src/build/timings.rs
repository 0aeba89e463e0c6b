//! Where a build's time goes: one span per stage of the work (inspecting a
//! package, unpacking a tree or waiting for another worker's unpack of it,
//! clang, llc, validation, storing, writing out), each with the worker that
//! ran it, its start and end since the build began, and its CPU time — the
//! worker thread's own for work done in process, the child process's for
//! clang and llc. Envelope spans (`plan`, `job`) cover a phase or a kernel.
//!
//! Always collected (a few spans per kernel); `build --timings FILE` writes
//! them as JSON lines, and `bench/builder.py` turns them into the stage
//! table and the timeline it prints.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::packages::PackageFacts;
use crate::trees::{Tree, TreeCache, TreeError};

/// One stage of one subject (a package or a kernel).
#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub stage: &'static str,
    /// The package or kernel release the stage worked on.
    pub subject: String,
    /// The rayon worker (0-based), or `None` off the pool.
    pub worker: Option<usize>,
    /// Seconds since the build started.
    pub start: f64,
    pub end: f64,
    /// CPU seconds (user + system) the stage used.
    pub cpu: f64,
}

/// The spans of one build, and the process's totals at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub jobs: usize,
    /// Seconds from the build's start to its end.
    pub wall: f64,
    /// CPU seconds of the builder process itself and of its waited-for
    /// children (clang, llc, probes) over the process's life.
    pub cpu_self: f64,
    pub cpu_children: f64,
    pub spans: Vec<Span>,
}

impl Timings {
    /// Writes the totals as the first JSON line, then one line per span.
    pub fn write_to(&self, out: impl Write) -> io::Result<()> {
        let mut out = io::BufWriter::new(out);
        let head = serde_json::json!({ "jobs": self.jobs, "wall": self.wall, "cpu_self": self.cpu_self, "cpu_children": self.cpu_children });
        writeln!(out, "{head}")?;
        for s in &self.spans {
            serde_json::to_writer(&mut out, s)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// A span being measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Started {
    at: Instant,
    cpu: Duration,
}

/// Collects spans from every worker.
#[derive(Debug)]
pub(super) struct Recorder {
    origin: Instant,
    spans: Mutex<Vec<Span>>,
}

impl Recorder {
    pub(super) fn new(origin: Instant) -> Self {
        Self { origin, spans: Mutex::new(Vec::new()) }
    }

    pub(super) fn start(&self) -> Started {
        Started { at: Instant::now(), cpu: thread_cpu() }
    }

    /// Records a stage run on this thread since `s`.
    pub(super) fn end(&self, s: Started, stage: &'static str, subject: &str) {
        let cpu = thread_cpu().saturating_sub(s.cpu);
        self.push(stage, subject, s.at, Instant::now(), cpu);
    }

    /// Records a stage whose times were measured elsewhere (a child process).
    pub(super) fn push(&self, stage: &'static str, subject: &str, from: Instant, to: Instant, cpu: Duration) {
        let secs = |t: Instant| t.saturating_duration_since(self.origin).as_secs_f64();
        let span = Span {
            stage,
            subject: subject.to_owned(),
            worker: rayon::current_thread_index(),
            start: secs(from),
            end: secs(to),
            cpu: cpu.as_secs_f64(),
        };
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).push(span);
    }

    /// Times `f` as one stage on this thread.
    pub(super) fn time<T>(&self, stage: &'static str, subject: &str, f: impl FnOnce() -> T) -> T {
        let s = self.start();
        let out = f();
        self.end(s, stage, subject);
        out
    }

    /// The spans in start order, with the process's CPU totals.
    pub(super) fn finish(self, jobs: usize) -> Timings {
        let mut spans = self.spans.into_inner().unwrap_or_else(|p| p.into_inner());
        spans.sort_by(|a, b| a.start.total_cmp(&b.start));
        Timings {
            jobs,
            wall: self.origin.elapsed().as_secs_f64(),
            cpu_self: rusage(libc::RUSAGE_SELF).as_secs_f64(),
            cpu_children: rusage(libc::RUSAGE_CHILDREN).as_secs_f64(),
            spans,
        }
    }
}

/// `trees.get(pkg)`, recorded as `unpack` when this call unpacked the
/// package and as `tree-wait` when it waited for another worker's unpack of
/// it (a tree already on disk is not recorded).
pub(super) fn tree(timings: &Recorder, trees: &TreeCache, pkg: &PackageFacts) -> Result<Tree, Arc<TreeError>> {
    let s = timings.start();
    let r = trees.get(pkg);
    let stage = match &r {
        Ok(t) if t.unpacked.is_some() => "unpack",
        _ if s.at.elapsed() < Duration::from_millis(2) => return r,
        _ => "tree-wait",
    };
    timings.end(s, stage, &pkg.name);
    r
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec it is given.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// User + system time of `who` (`RUSAGE_SELF`, `RUSAGE_CHILDREN`).
fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    cpu_of(&ru)
}

/// User + system time in a `rusage`.
pub(crate) fn cpu_of(ru: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
