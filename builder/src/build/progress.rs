//! Progress on stderr: a bar on a terminal, one line per kernel otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::report::{KernelResult, Status};

/// A bar on a terminal, one line per kernel otherwise.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: AtomicUsize,
}

impl Progress {
    pub(super) fn new(total: usize, bar: bool) -> Self {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self { bar, total, done: AtomicUsize::new(0) }
    }

    pub(super) fn done(&self, r: &KernelResult) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let status = match r.status() {
            Status::Built => "built",
            Status::Cached => "cached",
            Status::Failed => "FAILED",
        };
        let arch = r.arch.map(|a| a.uname()).unwrap_or("?");
        let line =
            format!("[{n}/{}] {status:<6} {} {arch} ({:.2}s)", self.total, r.kernel, r.duration_ms as f64 / 1000.0);
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(format!("{} {arch}", r.kernel));
                if r.status() == Status::Failed {
                    b.println(line);
                }
            }
            None => eprintln!("{line}"),
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
