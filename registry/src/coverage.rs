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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bpfarm_object::Arch;
use bpfarm_object::identity::validate_release;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::repo::{CoverageFailure, CoverageObject};

/// Largest matrix body `PUT /v1/matrices/<name>` takes (the full Debian
/// matrix of ~260 kernels is ~20 KB).
pub const MATRIX_LIMIT: u64 = 8 << 20;
/// Most kernels in one matrix: room for every Debian and RPM kernel
/// (hundreds) many times over, while a coverage answer, which holds a
/// state for each of a matrix's kernels × every version, stays bounded.
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

/// The pairs expected: the matrix's, or every seen release on each arch it
/// can run on (and any pair an object or failure exists for).
pub fn expected(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    matrix: Option<&Matrix>,
) -> BTreeSet<(String, Arch)> {
    if let Some(m) = matrix {
        return m.pairs.clone();
    }
    let seen = objects
        .iter()
        .map(|o| (o.kernel_release.as_str(), o.arch.as_str()))
        .chain(failures.iter().map(|f| (f.kernel_release.as_str(), f.arch.as_str())));
    let mut out = BTreeSet::new();
    for (release, arch) in seen {
        for a in Arch::ALL {
            if a.can_run(release) {
                out.insert((release.to_owned(), a));
            }
        }
        if let Some(a) = Arch::from_any(arch) {
            out.insert((release.to_owned(), a));
        }
    }
    out
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

/// Versions a `GET /v1/coverage` without `?version=` counts: the newest
/// (as the page's detail table shows), so its work is kernels × 12.
pub const MAX_REPORT_VERSIONS: usize = 12;

/// Every version seen, in name order.
fn versions_seen(objects: &[CoverageObject], failures: &[CoverageFailure]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o.version.as_str())
        .chain(failures.iter().map(|f| f.version.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Counts every expected pair × version (`version`, or every version
/// seen); see `report_of`.
pub fn report(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    matrix: Option<&Matrix>,
    version: Option<&str>,
    cancel: &Cancel,
) -> Result<Report, Cancelled> {
    let versions = match version {
        Some(v) => vec![v.to_owned()],
        None => versions_seen(objects, failures),
    };
    report_of(objects, failures, matrix, versions, cancel)
}

/// As `report`, but without `version` only the `max` newest versions
/// seen (natural order: `v0.10` after `v0.9`) are counted;
/// `versions_total` says how many there are.
pub fn report_newest(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    matrix: Option<&Matrix>,
    version: Option<&str>,
    max: usize,
    cancel: &Cancel,
) -> Result<Report, Cancelled> {
    if version.is_some() {
        return report(objects, failures, matrix, version, cancel);
    }
    let mut versions = versions_seen(objects, failures);
    let total = versions.len();
    if total > max {
        versions.sort_by_cached_key(|v| std::cmp::Reverse(natural_key(v)));
        versions.truncate(max);
        versions.sort();
    }
    let mut r = report_of(objects, failures, matrix, versions, cancel)?;
    r.versions_total = total;
    Ok(r)
}

/// Counts every expected pair × one of `versions`, in time and memory
/// linear in pairs × versions at one byte a cell: the cells are looked up
/// once per object and failure, not once per pair and version.
fn report_of(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    matrix: Option<&Matrix>,
    versions: Vec<String>,
    cancel: &Cancel,
) -> Result<Report, Cancelled> {
    let names: Arc<[String]> = versions.clone().into();
    let position: HashMap<&str, usize> = versions.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
    // Per pair, the versions it has a cell for; an object wins over a
    // failure of the same version (objects come last).
    let mut cells: HashMap<(&str, &str), Vec<(usize, State)>> = HashMap::new();
    let failed =
        failures.iter().map(|f| (f.kernel_release.as_str(), f.arch.as_str(), f.version.as_str(), State::Failed));
    let present =
        objects.iter().map(|o| (o.kernel_release.as_str(), o.arch.as_str(), o.version.as_str(), State::Present));
    for (n, (release, arch, v, state)) in failed.chain(present).enumerate() {
        if n % CHECK_EVERY == 0 {
            cancel.check()?;
        }
        if let Some(&i) = position.get(v) {
            cells.entry((release, arch)).or_default().push((i, state));
        }
    }
    let arch_index = |a: Arch| Arch::ALL.iter().position(|x| *x == a).unwrap_or(0);
    let mut per_version = vec![[Counts::default(); Arch::ALL.len()]; versions.len()];
    let mut counts = Counts::default();
    let mut by_arch: BTreeMap<Arch, Counts> = BTreeMap::new();
    let mut by_series: BTreeMap<String, BTreeMap<Arch, Counts>> = BTreeMap::new();
    let mut kernels = Vec::new();
    for (n, (release, arch)) in expected(objects, failures, matrix).into_iter().enumerate() {
        if n % CHECK_EVERY == 0 {
            cancel.check()?;
        }
        let mut states = vec![State::Missing; versions.len()];
        for &(i, state) in cells.get(&(release.as_str(), arch.uname())).into_iter().flatten() {
            states[i] = state;
        }
        let mut row = Counts::default();
        let ai = arch_index(arch);
        for (i, state) in states.iter().enumerate() {
            row.add(*state);
            per_version[i][ai].add(*state);
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
        versions_total: versions.len(),
        versions,
        counts,
        by_arch,
        by_version,
        by_series,
        total_kernels: kernels.len(),
        next: None,
        kernels,
    })
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
        let r = report(&objects, &[], None, None, &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 5, failed: 0, missing: 0 });
        assert_eq!(r.kernels.len(), 5);
        let objects = vec![object("5.15.0-91-generic", "x86_64", "v1")];
        let r = report(&objects, &[], None, None, &Cancel::default()).unwrap();
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
        let r = report(&objects, &failures, Some(&m), None, &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 1, failed: 1, missing: 1 });
        assert_eq!(
            r.kernels.iter().find(|k| k.release == "6.12.57+deb13-amd64").unwrap().versions["v1"],
            State::Missing
        );
        assert_eq!(r.matrix.as_deref(), Some("debian"));
        // Against a version nothing was built for: all three missing.
        let r = report(&objects, &failures, Some(&m), Some("v2"), &Cancel::default()).unwrap();
        assert_eq!(r.counts, Counts { present: 0, failed: 0, missing: 3 });
    }

    #[test]
    fn a_set_cancel_stops_the_count() {
        let objects: Vec<_> = (0..1000).map(|n| object(&format!("6.1.0-{n}-amd64"), "x86_64", "v1")).collect();
        let cancel = Cancel::default();
        assert!(report(&objects, &[], None, None, &cancel).is_ok());
        drop(cancel.on_drop());
        assert_eq!(report(&objects, &[], None, None, &cancel).unwrap_err(), Cancelled);
        assert_eq!(report_newest(&objects, &[], None, None, 12, &cancel).unwrap_err(), Cancelled);
        let view = crate::page::View { cancel, ..Default::default() };
        assert_eq!(crate::page::render_view(&objects, &[], &view).unwrap_err(), Cancelled);
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
