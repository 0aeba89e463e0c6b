//! The order the build's work runs in, on `jobs` workers taking tasks from
//! one list in order: first every `-common` package the kernels need that
//! is not unpacked yet (the long tasks: about a second of xz each), then the
//! kernels (a compile of about half a second each), those whose `-common`
//! was unpacked first at the front.
//!
//! So no worker waits for another's unpack (only the last unpacks can still
//! be running when the first kernels start, and those kernels come last), a
//! kernel that shares its `-common` with others never unpacks it twice, and
//! the run ends on short tasks: the idle tail is at most about one compile.
//! Flavour packages were unpacked while planning (each says its kernel).
//! An unpack that fails is not remembered by the tree cache, so the kernels
//! needing it try once more and report the error in their rows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bpfarm_object::Digest;

use super::Ctx;
use super::job;
use super::plan::{KernelInput, Source};
use super::report::KernelResult;
use crate::packages::PackageFacts;

enum Task<'k> {
    Unpack(&'k PackageFacts),
    Build(&'k KernelInput),
}

/// The tasks in the order the workers take them (see the module's doc).
fn tasks<'k>(ctx: &Ctx<'_>, inputs: &'k [KernelInput]) -> Vec<Task<'k>> {
    let mut position: HashMap<&Digest, usize> = HashMap::new();
    let mut unpacks = Vec::new();
    for k in inputs {
        if let Source::Deb(d) = &k.source
            && !position.contains_key(&d.common.digest)
        {
            position.insert(&d.common.digest, unpacks.len());
            if !ctx.trees.contains(&d.common) {
                unpacks.push(Task::Unpack(&d.common));
            }
        }
    }
    let mut builds: Vec<&KernelInput> = inputs.iter().collect();
    // Stable: kernels without a -common keep their planned order, first.
    builds.sort_by_key(|k| match &k.source {
        Source::Deb(d) => position.get(&d.common.digest).map_or(0, |p| p + 1),
        _ => 0,
    });
    unpacks.extend(builds.into_iter().map(Task::Build));
    unpacks
}

/// Builds every kernel on the pool's `jobs` workers; the results in no
/// particular order.
pub(super) fn build_all(
    ctx: &Ctx<'_>,
    pool: &rayon::ThreadPool,
    jobs: usize,
    inputs: &[KernelInput],
) -> Vec<KernelResult> {
    let tasks = tasks(ctx, inputs);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(inputs.len()));
    pool.scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|_| {
                while let Some(task) = tasks.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match task {
                        Task::Unpack(pkg) => {
                            // Its error, if any, is the kernels' to report.
                            let _ = super::timings::tree(ctx.timings, ctx.trees, pkg);
                        }
                        Task::Build(k) => {
                            let r = ctx.timings.time("job", &k.release, || job::build_one(ctx, k));
                            ctx.progress.done(&r);
                            results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                        }
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}
