//! Coverage, counted: for each expected (kernel release, arch) pair and each
//! program version, is there an object (present), a build failure the
//! builder reported (failed), or neither (missing)?
//!
//! What is expected is either a published matrix (the pairs a builder was
//! asked to cover: `PUT /v1/matrices/<name>`), or, without one, every
//! release seen in an object or failure on each arch it can run on. A pair
//! that cannot exist (an `-amd64` release on aarch64, an `-arm64` one on
//! x86_64) is never expected, so never missing. The page and
//! `GET /v1/coverage` both count here.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bpfarm_object::Arch;
use bpfarm_object::identity::validate_release;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::repo::{CellRows, CoverageFailure, CoverageObject, Repo};

/// Largest matrix body `PUT /v1/matrices/<name>` takes (the full Debian
/// matrix of ~260 kernels is ~20 KB).
pub const MATRIX_LIMIT: u64 = 8 << 20;
/// Most kernels in one matrix: room for every Debian and RPM kernel
/// (hundreds) many times over, while a coverage answer, which holds a
/// state for each of a matrix's kernels × every counted version, stays
/// bounded.
pub const MATRIX_KERNELS: usize = 20_000;

/// A published matrix: its name and expected pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matrix {
    pub name: String,
    pub pairs: BTreeSet<(String, Arch)>,
}

/// The body of `PUT /v1/matrices/<name>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixUpload {
    pub kernels: Vec<MatrixKernel>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MatrixKernel {
    pub release: String,
    pub arch: Arch,
}

/// A matrix name: what a `kernels/<name>.toml` file is called.
pub fn validate_matrix_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "invalid matrix name {name:?}: 1 to 64 of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

impl MatrixUpload {
    /// The pairs, each release checked as an identity's is; a pair that
    /// cannot exist is refused rather than stored.
    pub fn validate(self) -> Result<Vec<(String, Arch)>, Error> {
        if self.kernels.len() > MATRIX_KERNELS {
            return Err(Error::BadRequest(format!(
                "matrix has {} kernels; at most {MATRIX_KERNELS}",
                self.kernels.len()
            )));
        }
        let mut out = Vec::with_capacity(self.kernels.len());
        for k in self.kernels {
            validate_release(&k.release)?;
            if !k.arch.can_run(&k.release) {
                return Err(Error::BadRequest(format!("{} cannot run on {}", k.release, k.arch)));
            }
            out.push((k.release, k.arch));
        }
        Ok(out)
    }
}

/// Set once the request a coverage answer is for has gone (its future was
/// dropped: the client left): the counting and the page's rendering, on a
/// blocking thread, stop at their next check instead of finishing work
/// nobody will read. A fresh one is never set.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// Sets its `Cancel` when dropped: the request's future holds it.
#[derive(Debug)]
pub struct CancelOnDrop(Cancel);

/// What the work answers when its `Cancel` was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client left before the coverage answer was ready")]
pub struct Cancelled;

impl Cancel {
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.0.load(Ordering::Relaxed) { Err(Cancelled) } else { Ok(()) }
    }

    /// A guard that sets this flag when it is dropped.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// Rows counted or rendered between two `Cancel` checks.
pub const CHECK_EVERY: usize = 256;

/// One cell's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Present,
    Failed,
    Missing,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub present: usize,
    pub failed: usize,
    pub missing: usize,
}

/// One expected (release, arch) pair and its state per version.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub release: String,
    pub arch: Arch,
    pub versions: VersionStates,
}

/// A row's state per version: one byte a version, the names shared by
/// every row (a report of 100k pairs × 300 versions is 30 MB of states,
/// not 30M map entries each with its own copy of the version). Answered
/// as `{"<version>": "<state>", ...}` in version order.
#[derive(Debug, Clone)]
pub struct VersionStates {
    names: Arc<[String]>,
    states: Vec<State>,
}

impl VersionStates {
    /// The states, in version order.
    pub fn values(&self) -> impl Iterator<Item = &State> {
        self.states.iter()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The state of `version`, if the report counts it.
    pub fn get(&self, version: &str) -> Option<State> {
        self.names.binary_search_by(|n| n.as_str().cmp(version)).ok().and_then(|i| self.states.get(i).copied())
    }
}

impl std::ops::Index<&str> for VersionStates {
    type Output = State;
    fn index(&self, version: &str) -> &State {
        let i = self.names.binary_search_by(|n| n.as_str().cmp(version));
        match i.ok().and_then(|i| self.states.get(i)) {
            Some(s) => s,
            None => &State::Missing,
        }
    }
}

impl Serialize for VersionStates {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(self.states.len()))?;
        for (n, st) in self.names.iter().zip(&self.states) {
            m.serialize_entry(n, st)?;
        }
        m.end()
    }
}

/// `GET /v1/coverage`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The matrix counted against; `None`: the releases seen.
    pub matrix: Option<String>,
    /// The versions counted (name order).
    pub versions: Vec<String>,
    /// How many versions there are; more than `versions` when only the
    /// newest are counted (`report_newest`).
    pub versions_total: usize,
    pub counts: Counts,
    /// Counts per arch (`x86_64`, `aarch64`).
    pub by_arch: BTreeMap<Arch, Counts>,
    /// Counts per version, per arch.
    pub by_version: BTreeMap<String, BTreeMap<Arch, Counts>>,
    /// Counts per kernel series (`6.1`, `5.15`: a release's first two
    /// numbers; `other`), per arch.
    pub by_series: BTreeMap<String, BTreeMap<Arch, Counts>>,
    /// The expected pairs `select` kept (before its page was cut).
    pub total_kernels: usize,
    /// The `offset` of the next page of `kernels`; absent on the last.
    pub next: Option<usize>,
    pub kernels: Vec<KernelRow>,
}

/// Kernel rows per `GET /v1/coverage` page unless `limit` says otherwise.
pub const DEFAULT_KERNELS: usize = 1000;
/// Most kernel rows one page may ask for.
pub const MAX_KERNELS: usize = 10_000;
/// Longest `q` accepted (a substring of a 64-byte release).
pub const MAX_QUERY: usize = 64;

/// Which kernel rows to answer: a substring of the release (ASCII case
/// ignored), rows with a cell in one state, a page of them.
#[derive(Debug, Clone, Default)]
pub struct Select<'a> {
    pub q: Option<&'a str>,
    pub state: Option<State>,
    pub offset: usize,
    pub limit: usize,
}

/// Whether `release` contains `q`, ASCII case ignored.
pub fn matches(release: &str, q: &str) -> bool {
    q.is_empty() || release.to_ascii_lowercase().contains(&q.to_ascii_lowercase())
}

/// A `q` as given: at most `MAX_QUERY` bytes.
pub fn validate_query(q: &str) -> Result<(), Error> {
    if q.len() > MAX_QUERY {
        return Err(Error::BadRequest(format!("q is {} bytes long; at most {MAX_QUERY}", q.len())));
    }
    Ok(())
}

impl Report {
    /// Keeps the kernel rows `s` selects (counts stay those of everything).
    pub fn select(mut self, s: &Select<'_>) -> Report {
        let kernels = std::mem::take(&mut self.kernels);
        let kept: Vec<KernelRow> = kernels
            .into_iter()
            .filter(|k| s.q.is_none_or(|q| matches(&k.release, q)))
            .filter(|k| s.state.is_none_or(|st| k.versions.values().any(|v| *v == st)))
            .collect();
        self.total_kernels = kept.len();
        let end = s.offset.saturating_add(s.limit).min(kept.len());
        self.next = (end < kept.len()).then_some(end);
        self.kernels = kept.into_iter().skip(s.offset).take(s.limit).collect();
        self
    }
}

/// A release's series: its first two dot-separated numbers (`6.1` of
/// `6.1.0-56-amd64`), or `other`.
pub fn series(release: &str) -> String {
    let mut parts = release.splitn(3, '.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else { return "other".into() };
    let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) || minor.is_empty() {
        return "other".into();
    }
    format!("{major}.{minor}")
}

/// Orders `6.1.0-9` before `6.1.0-10`: digit runs compare as numbers.
pub fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut digits = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                key.push((u64::MAX, std::mem::take(&mut text)));
            }
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((digits.parse().unwrap_or(u64::MAX), String::new()));
                digits.clear();
            }
            text.push(c);
        }
    }
    if !digits.is_empty() {
        key.push((digits.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !text.is_empty() {
        key.push((u64::MAX, text));
    }
    key
}

/// Versions a coverage answer (the page and `GET /v1/coverage`) counts
/// without `?version=`: the newest (natural order), so its work is
/// pairs × 12 however many versions pushers publish.
pub const MAX_REPORT_VERSIONS: usize = 12;

/// How a version ranks: newer first (natural order: `v0.10` after
/// `v0.9`), equal keys in name order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Ranked(Vec<(u64, String)>, Reverse<String>);

/// Picks the versions a count covers as every version seen streams by:
/// the `keep` best ranked, in a bounded heap, and how many there were.
#[derive(Debug)]
pub struct Newest {
    keep: usize,
    heap: BinaryHeap<Reverse<Ranked>>,
    seen: usize,
}

impl Newest {
    pub fn new(keep: usize) -> Self {
        Self { keep, heap: BinaryHeap::with_capacity(keep.saturating_add(1).min(1024)), seen: 0 }
    }

    /// One version seen; each is offered once.
    pub fn offer(&mut self, version: String) {
        self.seen += 1;
        self.heap.push(Reverse(Ranked(natural_key(&version), Reverse(version))));
        if self.heap.len() > self.keep {
            self.heap.pop();
        }
    }

    /// The `max` newest are counted; the others kept are `older`.
    pub fn split(self, max: usize) -> Chosen {
        // Ascending `Reverse<Ranked>`: the best ranked first.
        let mut counted: Vec<String> =
            self.heap.into_sorted_vec().into_iter().map(|Reverse(Ranked(_, Reverse(v)))| v).collect();
        let older = counted.split_off(max.min(counted.len()));
        counted.sort();
        Chosen { counted, total: self.seen, older }
    }
}

/// The versions a count covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chosen {
    /// Counted, in name order.
    pub counted: Vec<String>,
    /// How many versions there are (1 for a `?version=`).
    pub total: usize,
    /// Versions not counted, newest first: some of them (the page links
    /// them), not all.
    pub older: Vec<String>,
}

impl Chosen {
    /// `?version=`: that one alone, however old, existing or not.
    pub fn one(version: &str) -> Self {
        Chosen { counted: vec![version.to_owned()], total: 1, older: Vec::new() }
    }
}

/// Every version seen, in name order.
fn versions_seen(objects: &[CoverageObject], failures: &[CoverageFailure]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o.version.as_str())
        .chain(failures.iter().map(|f| f.version.as_str()))
        .map(str::to_owned)
        .collect()
}

/// A count being gathered a (release, arch) pair at a time: for each pair
/// with rows, one state per counted version (a byte each). Its memory is
/// pairs × counted versions whatever the index holds: it never holds an
/// object's row. Once gathered it is only read (`finish`, `releases`), so
/// a clone shares the states: the memo keeps counts so.
#[derive(Debug, Clone)]
pub struct Tally {
    chosen: Chosen,
    position: HashMap<String, usize>,
    /// Per release with rows: per arch they are on (`None`: an arch no
    /// `Arch` names, written into the index by hand), the counted states.
    seen: Arc<BTreeMap<String, Vec<ArchStates>>>,
    /// `seen`'s releases in natural order, once asked for (`releases`).
    sorted: Arc<OnceLock<Vec<String>>>,
}

/// An arch a release has rows on and its states per counted version.
type ArchStates = (Option<Arch>, Vec<State>);

impl Tally {
    pub fn new(chosen: Chosen) -> Self {
        let position = chosen.counted.iter().enumerate().map(|(i, v)| (v.clone(), i)).collect();
        Self { chosen, position, seen: Arc::new(BTreeMap::new()), sorted: Arc::default() }
    }

    /// About what it holds on the heap, counted from its lengths (what
    /// the memo weighs it at), its releases' sorted copy included.
    pub fn held_bytes(&self) -> usize {
        use std::mem::size_of;
        // A B-tree entry (its key and value, and a share of its node) and
        // the release's sorted copy.
        const ENTRY: usize = 2 * size_of::<String>() + size_of::<Vec<ArchStates>>() + 2 * size_of::<usize>();
        let seen: usize = self
            .seen
            .iter()
            .map(|(release, arches)| {
                let cells: usize = arches.iter().map(|(_, s)| s.capacity() * size_of::<State>()).sum();
                ENTRY + 2 * release.len() + arches.capacity() * size_of::<ArchStates>() + cells
            })
            .sum();
        // Each counted name twice (the list and `position`), the older once.
        let names: usize = self
            .chosen
            .counted
            .iter()
            .map(|v| 2 * (size_of::<String>() + v.capacity()) + size_of::<usize>())
            .sum::<usize>()
            + self.chosen.older.iter().map(|v| size_of::<String>() + v.capacity()).sum::<usize>();
        size_of::<Self>() + seen + names
    }

    pub fn chosen(&self) -> &Chosen {
        &self.chosen
    }

    /// `release` has rows on `arch` (of any version); those of `versions`
    /// that are counted are in `state`. An object wins over a failure of
    /// the same version, whichever comes first.
    pub fn add<'v>(&mut self, release: &str, arch: &str, state: State, versions: impl IntoIterator<Item = &'v str>) {
        let arch = Arch::from_any(arch);
        let counted = self.chosen.counted.len();
        // Not shared while it is gathered: no copy.
        let seen = Arc::make_mut(&mut self.seen);
        if self.sorted.get().is_some() {
            self.sorted = Arc::default();
        }
        if !seen.contains_key(release) {
            seen.insert(release.to_owned(), Vec::new());
        }
        let Some(arches) = seen.get_mut(release) else { return };
        let at = match arches.iter().position(|(a, _)| *a == arch) {
            Some(i) => i,
            None => {
                let cells = if arch.is_some() { vec![State::Missing; counted] } else { Vec::new() };
                arches.push((arch, cells));
                arches.len() - 1
            }
        };
        let Some((_, states)) = arches.get_mut(at) else { return };
        for v in versions {
            let Some(cell) = self.position.get(v).and_then(|&i| states.get_mut(i)) else { continue };
            if state == State::Present || *cell == State::Missing {
                *cell = state;
            }
        }
    }

    /// The pairs expected: the matrix's, or every release with rows on
    /// each arch it can run on (and any arch it has rows on).
    fn expected(&self, matrix: Option<&Matrix>) -> BTreeSet<(String, Arch)> {
        if let Some(m) = matrix {
            return m.pairs.clone();
        }
        let mut out = BTreeSet::new();
        for (release, arches) in self.seen.iter() {
            for a in Arch::ALL {
                if a.can_run(release) {
                    out.insert((release.clone(), a));
                }
            }
            for a in arches.iter().filter_map(|(a, _)| *a) {
                out.insert((release.clone(), a));
            }
        }
        out
    }

    /// Every release with rows or expected, in natural order (the page's
    /// rows). Without a matrix, sorted once per count (a memoised count is
    /// shown again and again).
    pub fn releases<'a>(&'a self, matrix: Option<&'a Matrix>) -> Vec<&'a str> {
        let Some(m) = matrix else {
            let sorted = self.sorted.get_or_init(|| {
                let mut out: Vec<String> = self.seen.keys().cloned().collect();
                out.sort_by_cached_key(|r| natural_key(r));
                out
            });
            return sorted.iter().map(String::as_str).collect();
        };
        let mut out: BTreeSet<&str> = self.seen.keys().map(String::as_str).collect();
        out.extend(m.pairs.iter().map(|(r, _)| r.as_str()));
        let mut out: Vec<&str> = out.into_iter().collect();
        out.sort_by_cached_key(|r| natural_key(r));
        out
    }

    /// The report: every expected pair × counted version, in time and
    /// memory linear in that at one byte a cell.
    pub fn finish(&self, matrix: Option<&Matrix>, cancel: &Cancel) -> Result<Report, Cancelled> {
        let expected = self.expected(matrix);
        let Tally { chosen, seen, .. } = self;
        let Chosen { counted: versions, total: versions_total, .. } = chosen;
        let names: Arc<[String]> = versions.clone().into();
        let arch_index = |a: Arch| Arch::ALL.iter().position(|x| *x == a).unwrap_or(0);
        let mut per_version = vec![[Counts::default(); Arch::ALL.len()]; versions.len()];
        let mut counts = Counts::default();
        let mut by_arch: BTreeMap<Arch, Counts> = BTreeMap::new();
        let mut by_series: BTreeMap<String, BTreeMap<Arch, Counts>> = BTreeMap::new();
        let mut kernels = Vec::with_capacity(expected.len());
        for (n, (release, arch)) in expected.into_iter().enumerate() {
            if n % CHECK_EVERY == 0 {
                cancel.check()?;
            }
            let states = seen
                .get(&release)
                .and_then(|arches| arches.iter().find(|(a, _)| *a == Some(arch)))
                .map(|(_, states)| states.clone())
                .unwrap_or_else(|| vec![State::Missing; versions.len()]);
            let mut row = Counts::default();
            let ai = arch_index(arch);
            for (i, state) in states.iter().enumerate() {
                row.add(*state);
                if let Some(v) = per_version.get_mut(i) {
                    v[ai].add(*state);
                }
            }
            let series = by_series.entry(series(&release)).or_default().entry(arch).or_default();
            series.merge(&row);
            if !versions.is_empty() {
                by_arch.entry(arch).or_default().merge(&row);
            }
            counts.merge(&row);
            kernels.push(KernelRow { release, arch, versions: VersionStates { names: names.clone(), states } });
        }
        let mut by_version: BTreeMap<String, BTreeMap<Arch, Counts>> = BTreeMap::new();
        for (v, per_arch) in versions.iter().zip(&per_version) {
            for (a, c) in Arch::ALL.iter().zip(per_arch) {
                if c.total() > 0 {
                    by_version.entry(v.clone()).or_default().insert(*a, *c);
                }
            }
        }
        Ok(Report {
            matrix: matrix.map(|m| m.name.clone()),
            versions_total: *versions_total,
            versions: versions.clone(),
            counts,
            by_arch,
            by_version,
            by_series,
            total_kernels: kernels.len(),
            next: None,
            kernels,
        })
    }
}

/// The versions to count: `version` alone, else the `max` newest of
/// `all` (each once), `older` more kept for links.
fn choose(version: Option<&str>, all: impl IntoIterator<Item = String>, max: usize, older: usize) -> Chosen {
    match version {
        Some(v) => Chosen::one(v),
        None => {
            let mut newest = Newest::new(max.saturating_add(older));
            all.into_iter().for_each(|v| newest.offer(v));
            newest.split(max)
        }
    }
}

/// A tally of rows held in memory (tests, tools), counted as `count`
/// counts the index's.
pub fn tally_rows(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    version: Option<&str>,
    max: usize,
    older: usize,
) -> Tally {
    let all = if version.is_some() { BTreeSet::new() } else { versions_seen(objects, failures) };
    let mut tally = Tally::new(choose(version, all, max, older));
    for f in failures {
        tally.add(&f.kernel_release, &f.arch, State::Failed, [f.version.as_str()]);
    }
    for o in objects {
        tally.add(&o.kernel_release, &o.arch, State::Present, [o.version.as_str()]);
    }
    tally
}

/// The report of rows held in memory: `version` alone, else the `max`
/// newest versions seen (natural order: `v0.10` after `v0.9`);
/// `versions_total` says how many there are.
pub fn report_newest(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    matrix: Option<&Matrix>,
    version: Option<&str>,
    max: usize,
    cancel: &Cancel,
) -> Result<Report, Cancelled> {
    tally_rows(objects, failures, version, max, 0).finish(matrix, cancel)
}

/// Counts from the index: `version` alone, else the `max` newest versions
/// (their names stream by; `older` more are kept for links), then one row
/// per (release, arch) pair of failures and of objects naming the counted
/// versions it has — never an object's row — so what is held is the
/// tally. From the memo while the index is unchanged (any commit by any
/// process drops it), so repeated views read nothing. Dropping the
/// future stops the reading (and keeps nothing).
pub async fn count(repo: &Repo, version: Option<&str>, max: usize, older: usize) -> Result<Tally, sqlx::Error> {
    let key = (version.map(str::to_owned), max, older);
    repo.coverage_memoised(key, Tally::held_bytes, || read(repo, version, max, older)).await
}

/// `count`, read from the index.
async fn read(repo: &Repo, version: Option<&str>, max: usize, older: usize) -> Result<Tally, sqlx::Error> {
    let chosen = match version {
        Some(v) => Chosen::one(v),
        None => {
            let mut newest = Newest::new(max.saturating_add(older));
            repo.coverage_versions(|v| newest.offer(v)).await?;
            newest.split(max)
        }
    };
    let counted = chosen.counted.clone();
    let mut tally = Tally::new(chosen);
    for (rows, state) in [(CellRows::Failures, State::Failed), (CellRows::Objects, State::Present)] {
        repo.coverage_pairs(rows, &counted, |p| {
            let versions = p.versions.as_deref().unwrap_or("");
            tally.add(&p.kernel_release, &p.arch, state, versions.split('\n').filter(|v| !v.is_empty()));
        })
        .await?;
    }
    Ok(tally)
}

impl Counts {
    pub fn add(&mut self, state: State) {
        match state {
            State::Present => self.present += 1,
            State::Failed => self.failed += 1,
            State::Missing => self.missing += 1,
        }
    }

    pub fn merge(&mut self, other: &Counts) {
        self.present += other.present;
        self.failed += other.failed;
        self.missing += other.missing;
    }

    pub fn total(&self) -> usize {
        self.present + self.failed + self.missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(release: &str, arch: &str, version: &str) -> CoverageObject {
        CoverageObject {
            kernel_release: release.into(),
            arch: arch.into(),
            version: version.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
        }
    }

    #[test]
    fn seen_releases_count_only_where_they_can_run() {
        let objects: Vec<_> = (52..57).map(|n| object(&format!("6.1.0-{n}-amd64"), "x86_64", "v1")).collect();
        let r = report_newest(&objects, &[], None, None, MAX_REPORT_VERSIONS, &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 5, failed: 0, missing: 0 });
        assert_eq!(r.kernels.len(), 5);
        let objects = vec![object("5.15.0-91-generic", "x86_64", "v1")];
        let r = report_newest(&objects, &[], None, None, MAX_REPORT_VERSIONS, &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 1, failed: 0, missing: 1 });
        assert_eq!(r.by_arch[&Arch::Aarch64].missing, 1);
    }

    #[test]
    fn without_a_version_only_the_newest_are_counted_and_every_kernel_is_a_row() {
        // v0.1 .. v0.15, and a kernel only the oldest version has.
        let mut objects: Vec<_> = (1..=15).map(|n| object("6.1.0-56-amd64", "x86_64", &format!("v0.{n}"))).collect();
        objects.push(object("6.1.0-9-amd64", "x86_64", "v0.1"));
        let r = report_newest(&objects, &[], None, None, 12, &Cancel::default()).unwrap();
        let mut want: Vec<String> = (4..=15).map(|n| format!("v0.{n}")).collect();
        want.sort();
        assert_eq!(r.versions, want);
        assert_eq!(r.versions_total, 15);
        assert_eq!(r.kernels.len(), 2, "a kernel of an older version is still a row");
        assert_eq!(r.counts, Counts { present: 12, failed: 0, missing: 12 });
        assert!(r.kernels.iter().all(|k| k.versions.states.len() == 12));
        // ?version= names any version, however old.
        let r = report_newest(&objects, &[], None, Some("v0.1"), 12, &Cancel::default()).unwrap();
        assert_eq!((r.versions.as_slice(), r.versions_total), (["v0.1".to_owned()].as_slice(), 1));
        assert_eq!(r.counts, Counts { present: 2, failed: 0, missing: 0 });
        // Fewer than the cap: all of them, as `report`.
        let r = report_newest(&objects[..3], &[], None, None, 12, &Cancel::default()).unwrap();
        assert_eq!((r.versions.len(), r.versions_total), (3, 3));
    }

    #[test]
    fn a_matrix_counts_what_exists_but_was_never_built() {
        let m = Matrix {
            name: "debian".into(),
            pairs: [
                ("6.1.0-56-amd64", Arch::X86_64),
                ("6.1.0-56-arm64", Arch::Aarch64),
                ("6.12.57+deb13-amd64", Arch::X86_64),
            ]
            .into_iter()
            .map(|(r, a)| (r.to_owned(), a))
            .collect(),
        };
        let objects = vec![object("6.1.0-56-amd64", "x86_64", "v1"), object("9.9.9-outside", "x86_64", "v1")];
        let failures = vec![CoverageFailure {
            kernel_release: "6.1.0-56-arm64".into(),
            arch: "aarch64".into(),
            version: "v1".into(),
            message: "x".into(),
        }];
        let r = report_newest(&objects, &failures, Some(&m), None, MAX_REPORT_VERSIONS, &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 1, failed: 1, missing: 1 });
        assert_eq!(
            r.kernels.iter().find(|k| k.release == "6.12.57+deb13-amd64").unwrap().versions["v1"],
            State::Missing
        );
        assert_eq!(r.matrix.as_deref(), Some("debian"));
        // Against a version nothing was built for: all three missing.
        let r =
            report_newest(&objects, &failures, Some(&m), Some("v2"), MAX_REPORT_VERSIONS, &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 0, failed: 0, missing: 3 });
    }

    #[test]
    fn a_set_cancel_stops_the_count() {
        let objects: Vec<_> = (0..1000).map(|n| object(&format!("6.1.0-{n}-amd64"), "x86_64", "v1")).collect();
        let cancel = Cancel::default();
        assert!(report_newest(&objects, &[], None, None, 12, &cancel).is_ok());
        drop(cancel.on_drop());
        assert_eq!(report_newest(&objects, &[], None, None, 12, &cancel).unwrap_err(), Cancelled);
        let view = crate::page::View { cancel, ..Default::default() };
        assert!(matches!(
            crate::page::render_in_memory(&objects, &[], &view),
            Err(crate::page::PageError::Cancelled(Cancelled))
        ));
    }

    /// The bounded heap picks what sorting every version newest first and
    /// cutting would: natural order, equal keys (`v01`, `v1`) in name
    /// order; it counts every version and keeps the next ones as `older`.
    #[test]
    fn the_newest_are_picked_as_a_full_sort_would() {
        let all: Vec<String> =
            ["v1", "v01", "v2", "v10", "v9", "v1.10.0", "v1.9.0", "v1.10", "b", "a", "v001", "v0.10", "v0.9"]
                .iter()
                .map(|v| v.to_string())
                .collect();
        for max in 0..=all.len() + 1 {
            for older in [0, 1, 3] {
                let mut sorted = all.clone();
                sorted.sort();
                sorted.sort_by_cached_key(|v| Reverse(natural_key(v)));
                let mut want = sorted.clone();
                want.truncate(max);
                let want_older: Vec<String> = sorted.iter().skip(max).take(older).cloned().collect();
                want.sort();
                let mut n = Newest::new(max + older);
                // Offered in an order unrelated to the answer.
                for v in all.iter().rev() {
                    n.offer(v.clone());
                }
                let c = n.split(max);
                assert_eq!((c.counted, c.total, c.older), (want, all.len(), want_older), "max {max} older {older}");
            }
        }
        assert_eq!(Newest::new(12).split(12), Chosen::default());
    }

    /// A failure and an object of the same identity: present, whichever
    /// the tally sees first; rows of an uncounted version only make the
    /// pair a row.
    #[test]
    fn an_object_wins_over_a_failure_in_any_order() {
        let chosen = Chosen { counted: vec!["v1".into(), "v2".into()], total: 3, older: vec!["v0".into()] };
        for object_first in [true, false] {
            let mut t = Tally::new(chosen.clone());
            let (o, f) = (("6.1.0-1-amd64", "x86_64", State::Present), ("6.1.0-1-amd64", "x86_64", State::Failed));
            let order = if object_first { [o, f] } else { [f, o] };
            for (r, a, st) in order {
                t.add(r, a, st, ["v1", "v0"]);
            }
            t.add("6.1.0-1-amd64", "x86_64", State::Failed, ["v2"]);
            t.add("6.1.0-2-amd64", "x86_64", State::Present, ["v0"]);
            let r = t.finish(None, &Cancel::default()).unwrap();
            assert_eq!(r.versions_total, 3);
            assert_eq!(r.kernels.len(), 2);
            assert_eq!(r.kernels[0].versions["v1"], State::Present);
            assert_eq!(r.kernels[0].versions["v2"], State::Failed);
            assert_eq!(r.counts, Counts { present: 1, failed: 1, missing: 2 });
        }
    }

    /// A gathered tally is read again and again (the memo keeps it): its
    /// clones share the states, every reading answers the same, and its
    /// weight grows with the releases it holds.
    #[test]
    fn a_kept_tally_answers_the_same_every_time() {
        let objects: Vec<_> = (0..100).map(|n| object(&format!("6.1.0-{n}-amd64"), "x86_64", "v1")).collect();
        let t = tally_rows(&objects, &[], None, 12, 0);
        let c = t.clone();
        assert!(Arc::ptr_eq(&t.seen, &c.seen), "a clone copied the states");
        let json = |t: &Tally| serde_json::to_string(&t.finish(None, &Cancel::default()).unwrap()).unwrap();
        assert_eq!(json(&t), json(&c));
        assert_eq!(json(&t), json(&t));
        assert_eq!(t.releases(None)[..3], ["6.1.0-0-amd64", "6.1.0-1-amd64", "6.1.0-2-amd64"]);
        assert_eq!(t.releases(None), c.releases(None));
        let small = tally_rows(&objects[..10], &[], None, 12, 0).held_bytes();
        let per_release = (t.held_bytes() - small) / 90;
        assert!((50..1000).contains(&per_release), "{per_release} bytes a release");
    }

    #[test]
    fn uploads_are_validated() {
        let up = |kernels: &[(&str, Arch)]| MatrixUpload {
            kernels: kernels.iter().map(|(r, a)| MatrixKernel { release: (*r).into(), arch: *a }).collect(),
        };
        assert!(up(&[("6.1.0-56-amd64", Arch::X86_64)]).validate().is_ok());
        let e = up(&[("6.1.0-56-amd64", Arch::Aarch64)]).validate().unwrap_err().to_string();
        assert!(e.contains("cannot run on aarch64"), "{e}");
        assert!(up(&[("../etc", Arch::X86_64)]).validate().is_err());
        assert!(validate_matrix_name("debian-bookworm.1").is_ok());
        for bad in ["", ".hidden", "a/b", &"x".repeat(65)] {
            assert!(validate_matrix_name(bad).is_err(), "{bad}");
        }
    }
}
