//! The coverage page at `/`: which kernel releases have an object for which
//! version and arch — present (with a download link), failed (with the
//! builder's reason) or missing — with a search box over kernel releases.
//! Rendered on the server from the index; the only script filters rows.
//! It counts what `GET /v1/coverage` counts (the newest
//! `MAX_REPORT_VERSIONS` versions, or `?version=`), and reads the cells it
//! shows (digests, failures' first lines) for the rows of one page only.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use bpfarm_object::Arch;

use crate::coverage::{self, Cancel, Cancelled, MAX_REPORT_VERSIONS, Matrix, State, Tally, natural_key};
use crate::repo::{CoverageFailure, CoverageObject};

/// `&`, `<`, `>`, `"`, `'` escaped for HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

enum Cell<'a> {
    Present(&'a CoverageObject),
    Failed(&'a CoverageFailure),
}

/// The page is never larger than this, whatever the registry holds.
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// Rows of each summary table (the newest versions, the series in order).
const MAX_SUMMARY_ROWS: usize = 50;
/// Kernel rows on one page of the detail table.
const MAX_ROWS: usize = 1000;
/// Missing (release, arch) pairs listed by name above the table.
const MAX_MISSING_LISTED: usize = 100;
/// Characters of a failure's message a failed cell shows (its first line).
pub const FAILURE_TITLE_CHARS: usize = 240;
/// Room kept for the navigation lines around the table.
const NAV_RESERVE: usize = 4096;

/// What one request of the page asks for: `?matrix=`, `?version=`, `?q=`
/// (a substring of the release), `?state=` (rows with a cell in that
/// state), `?from=` (the first row of the page).
#[derive(Debug, Clone, Default)]
pub struct View<'a> {
    pub matrix: Option<&'a Matrix>,
    pub version: Option<&'a str>,
    pub q: Option<&'a str>,
    pub state: Option<State>,
    pub from: usize,
    /// Set when the request has gone: rendering stops.
    pub cancel: Cancel,
}

impl View<'_> {
    /// `/` with this view's parameters, `from` replaced (and `state`/`q`
    /// when given).
    fn href(&self, from: usize, state: Option<Option<State>>, q: Option<Option<&str>>) -> String {
        let state = state.unwrap_or(self.state);
        let q = q.unwrap_or(self.q);
        let mut parts = Vec::new();
        if let Some(m) = self.matrix {
            parts.push(format!("matrix={}", pct(&m.name)));
        }
        if let Some(v) = self.version {
            parts.push(format!("version={}", pct(v)));
        }
        if let Some(q) = q.filter(|q| !q.is_empty()) {
            parts.push(format!("q={}", pct(q)));
        }
        if let Some(s) = state {
            parts.push(format!("state={}", state_name(s)));
        }
        if from > 0 {
            parts.push(format!("from={from}"));
        }
        if parts.is_empty() { "/".to_owned() } else { format!("/?{}", parts.join("&")) }
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Present => "present",
        State::Failed => "failed",
        State::Missing => "missing",
    }
}

/// Percent-encodes everything but unreserved characters (for a query value).
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What the detail rows of one page show of their cells (`Repo::coverage_detail`):
/// the current objects (digest, size) and failures (first line) of the
/// page's releases × the counted versions, read for that page only.
pub type Detail = (Vec<CoverageObject>, Vec<CoverageFailure>);

/// Reads the `Detail` of some releases × the counted versions.
pub type ReadDetail<'a> = dyn FnMut(&[&str], &[String]) -> Result<Detail, sqlx::Error> + 'a;

/// Why the page was not rendered.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("index: {0}")]
    Index(#[from] sqlx::Error),
}

/// Versions older than the counted ones the page links by name (each
/// opens `?version=<name>`).
pub const OLDER_LINKED: usize = 24;

pub fn render(objects: &[CoverageObject], failures: &[CoverageFailure]) -> String {
    render_against(objects, failures, None)
}

/// The page, counting against a published matrix when one is given (its
/// releases are rows even before anything was built for them).
pub fn render_against(objects: &[CoverageObject], failures: &[CoverageFailure], matrix: Option<&Matrix>) -> String {
    // A fresh `Cancel` is never set, and rows in memory never fail.
    render_in_memory(objects, failures, &View { matrix, ..View::default() }).unwrap_or_default()
}

/// The page of rows held in memory (tests, tools), counted and looked up
/// as the index's rows are.
pub fn render_in_memory(
    objects: &[CoverageObject],
    failures: &[CoverageFailure],
    view: &View<'_>,
) -> Result<String, PageError> {
    let tally = coverage::tally_rows(objects, failures, view.version, MAX_REPORT_VERSIONS, OLDER_LINKED);
    let mut detail = |releases: &[&str], versions: &[String]| -> Result<Detail, sqlx::Error> {
        let releases: HashSet<&str> = releases.iter().copied().collect();
        let wanted = |r: &str, v: &str| releases.contains(r) && versions.iter().any(|x| x == v);
        Ok((
            objects.iter().filter(|o| wanted(&o.kernel_release, &o.version)).cloned().collect(),
            failures.iter().filter(|f| wanted(&f.kernel_release, &f.version)).cloned().collect(),
        ))
    };
    render_view(tally, &mut detail, view)
}

/// The page for one request, from a count (`coverage::count`: the newest
/// `MAX_REPORT_VERSIONS` versions, or `?version=`): its counts (totals,
/// per version, per kernel series), which versions are not counted (and
/// links to them), the missing pairs by name (the first
/// `MAX_MISSING_LISTED`, then a link to all of them), and the detail table
/// a page at a time, whose cells `detail` reads for that page's rows only.
/// At most `MAX_PAGE_BYTES` whatever the registry holds: when every row
/// fits, they are all there and the search filters them in the browser;
/// when not, the table is cut into pages (`from`) and `q` narrows it on
/// the server. `Cancelled` once `view.cancel` is set.
pub fn render_view(tally: Tally, detail: &mut ReadDetail<'_>, view: &View<'_>) -> Result<String, PageError> {
    let matrix = view.matrix;
    let mut releases: Vec<&str> = tally.releases(matrix);
    let older = &tally.chosen().older;
    let report = tally.finish(matrix, &view.cancel)?;
    view.cancel.check()?;
    let expected: HashSet<(&str, Arch)> = report.kernels.iter().map(|k| (k.release.as_str(), k.arch)).collect();
    let all_releases = releases.len();
    // Newest first.
    let mut columns: Vec<String> = report.versions.clone();
    columns.sort_by_cached_key(|v| std::cmp::Reverse(natural_key(v)));
    let arches: Vec<&str> = Arch::ALL.iter().map(|a| a.uname()).collect();
    if let Some(state) = view.state {
        let with: HashSet<&str> = report
            .kernels
            .iter()
            .filter(|k| k.versions.values().any(|s| *s == state))
            .map(|k| k.release.as_str())
            .collect();
        releases.retain(|r| with.contains(r));
    }
    let counts = report.counts;
    let (present, failed, missing) = (counts.present, counts.failed, counts.missing);
    let is_expected = |r: &str, a: &str| Arch::from_any(a).is_some_and(|a| expected.contains(&(r, a)));

    let mut top = String::new();
    top.push_str(HEAD);
    let chip = |h: &mut String, n: usize, s: State| {
        let _ = write!(
            h,
            "<a class=\"chip {0}\" href=\"{1}\">{n} {0}</a>",
            state_name(s),
            esc(&view.href(0, Some(Some(s)), Some(None)))
        );
    };
    top.push_str("<header><h1>bpfarm coverage</h1><p class=\"counts\">");
    chip(&mut top, present, State::Present);
    top.push(' ');
    chip(&mut top, failed, State::Failed);
    top.push(' ');
    chip(&mut top, missing, State::Missing);
    let versions_said = if report.versions_total > columns.len() {
        format!("the {} newest of {} versions", columns.len(), report.versions_total)
    } else {
        format!("{} versions", columns.len())
    };
    let _ = write!(
        top,
        " across {all_releases} kernel releases, {versions_said}{}{}</p>",
        matrix.map(|m| format!(", against matrix <code>{}</code>", esc(&m.name))).unwrap_or_default(),
        view.version.map(|v| format!(", version <code>{}</code> only", esc(v))).unwrap_or_default(),
    );
    older_versions(&mut top, &report, older, view);
    top.push_str("<form method=\"get\" action=\"/\">");
    for (name, value) in [("matrix", matrix.map(|m| m.name.as_str())), ("version", view.version)] {
        if let Some(v) = value {
            let _ = write!(top, "<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(v));
        }
    }
    if let Some(s) = view.state {
        let _ = write!(top, "<input type=\"hidden\" name=\"state\" value=\"{}\">", state_name(s));
    }
    let _ = write!(
        top,
        "<input id=\"search\" name=\"q\" type=\"search\" value=\"{}\" placeholder=\"Search kernel releases, e.g. 6.12 or cloud\" autocomplete=\"off\" aria-label=\"Search kernel releases\"> <span id=\"shown\"></span></form></header>",
        esc(view.q.unwrap_or(""))
    );
    summaries(&mut top, &report, view);
    missing_list(&mut top, &report, view);

    // The detail: every row if they all fit (the browser filters them),
    // else the page of rows `from` starts, narrowed by `q` on the server.
    // Its cells are read for the rows of the page only.
    let budget = MAX_PAGE_BYTES.saturating_sub(top.len() + TAIL.len() + NAV_RESERVE);
    let mut render_rows = |rows: &[&str], from: usize| -> Result<(String, usize), PageError> {
        let window: Vec<&str> = rows.iter().skip(from).take(MAX_ROWS).copied().collect();
        let (objects, failures) =
            if window.is_empty() || columns.is_empty() { Detail::default() } else { detail(&window, &columns)? };
        let mut cells: HashMap<(&str, &str, &str), Cell<'_>> = HashMap::with_capacity(objects.len() + failures.len());
        for f in &failures {
            cells.insert((f.kernel_release.as_str(), f.version.as_str(), f.arch.as_str()), Cell::Failed(f));
        }
        for o in &objects {
            cells.insert((o.kernel_release.as_str(), o.version.as_str(), o.arch.as_str()), Cell::Present(o));
        }
        let mut body = String::new();
        let mut row = String::new();
        let mut end = from.min(rows.len());
        for (n, r) in window.iter().enumerate() {
            if n % coverage::CHECK_EVERY == 0 {
                view.cancel.check()?;
            }
            row.clear();
            let _ = write!(row, "<tr data-release=\"{0}\"><th class=\"release\">{0}</th>", esc(r));
            for v in &columns {
                for a in &arches {
                    match cells.get(&(*r, v.as_str(), *a)) {
                        Some(Cell::Present(o)) => present_cell(&mut row, o, r, v),
                        Some(Cell::Failed(f)) => failed_cell(&mut row, f),
                        None if !is_expected(r, a) => row.push_str(&not_expected_cell(r, a, matrix)),
                        None => row.push_str("<td class=\"missing\">—</td>"),
                    }
                }
            }
            row.push_str("</tr>");
            if body.len() + row.len() > budget {
                break;
            }
            body.push_str(&row);
            end += 1;
        }
        Ok((body, end))
    };
    // A page past the first is server-side anyway: its first render
    // would only be thrown away.
    let (mut body, mut end) = if view.from > 0 { (String::new(), 0) } else { render_rows(&releases, 0)? };
    let mut server_side = false;
    let mut shown = releases.clone();
    if end < releases.len() || view.from > 0 {
        server_side = true;
        let q = view.q.filter(|q| !q.is_empty());
        if let Some(q) = q {
            shown.retain(|r| coverage::matches(r, q));
        }
        // The first page of everything is what was just rendered.
        if q.is_some() || view.from > 0 {
            (body, end) = render_rows(&shown, view.from)?;
        }
    }
    let from = view.from.min(shown.len());

    let mut h = top;
    if all_releases == 0 {
        h.push_str("<p class=\"empty\">No objects yet. Publish some with <code>bpfarm-builder build … --publish URL</code>.</p>");
    } else {
        let mut nav = String::from("<p class=\"nav\">");
        if server_side {
            let what = match (view.q.filter(|q| !q.is_empty()), view.state) {
                (Some(q), _) => format!(" matching <code>{}</code>", esc(q)),
                (None, Some(s)) => format!(" with a {} cell", state_name(s)),
                (None, None) => String::new(),
            };
            let _ = write!(nav, "Releases {}–{end} of {}{what}.", (from + 1).min(end), shown.len());
            if from > 0 {
                let _ = write!(nav, " <a href=\"{}\">First page</a>", esc(&view.href(0, None, None)));
            }
            if end < shown.len() {
                let _ = write!(nav, " <a rel=\"next\" href=\"{}\">Next page</a>", esc(&view.href(end, None, None)));
            }
        } else if view.state.is_some() {
            let _ = write!(nav, "{} releases.", shown.len());
        }
        nav.push_str("</p>");
        h.push_str(&nav);
        let _ = write!(
            h,
            "<table id=\"matrix\" data-server=\"{server_side}\"><thead><tr><th rowspan=\"2\">kernel release</th>"
        );
        for v in &columns {
            let _ = write!(h, "<th colspan=\"{}\">{}</th>", arches.len(), esc(v));
        }
        h.push_str("</tr><tr>");
        for _ in &columns {
            for a in &arches {
                let _ = write!(h, "<th class=\"arch\">{a}</th>");
            }
        }
        h.push_str("</tr></thead><tbody>");
        h.push_str(&body);
        h.push_str("</tbody></table>");
        if server_side && end < shown.len() {
            h.push_str(&nav);
        }
    }
    h.push_str(TAIL);
    Ok(h)
}

/// When only the newest versions are counted: says so, and links the
/// older ones by name (`OLDER_LINKED` of them), each to its own count.
fn older_versions(h: &mut String, report: &coverage::Report, older: &[String], view: &View<'_>) {
    let hidden = report.versions_total.saturating_sub(report.versions.len());
    if hidden == 0 || view.version.is_some() {
        return;
    }
    let _ = write!(
        h,
        "<p class=\"older\">Counted and shown: the {} newest versions. The {hidden} older versions are not; \
         open one with <code>?version=&lt;name&gt;</code>",
        report.versions.len()
    );
    for (i, v) in older.iter().enumerate() {
        let href = View { version: Some(v.as_str()), from: 0, ..view.clone() }.href(0, None, None);
        let _ = write!(h, "{}<a href=\"{}\">{}</a>", if i == 0 { ": " } else { ", " }, esc(&href), esc(v));
    }
    if hidden > older.len() {
        let _ = write!(h, " and {} more", hidden - older.len());
    }
    h.push_str(" (<code>GET /v1/objects?version=&lt;name&gt;</code> lists a version&#39;s objects).</p>");
}

fn present_cell(h: &mut String, o: &CoverageObject, release: &str, version: &str) {
    let _ = write!(
        h,
        "<td class=\"present\" title=\"{} ({} bytes)\"><a href=\"/v1/blobs/{}\" download=\"{}\">{}</a></td>",
        esc(&o.digest),
        o.size,
        esc(&o.digest),
        esc(&bpfarm_object::object_file_name(release, version)),
        // "sha256:" + the first 12 hex digits
        esc(o.digest.get(7..19).unwrap_or(&o.digest))
    );
}

fn failed_cell(h: &mut String, f: &CoverageFailure) {
    // The message's first line, cut (`Repo::coverage_detail` reads no more): a
    // title, not a log.
    let first: String = f.message.lines().next().unwrap_or("").chars().take(FAILURE_TITLE_CHARS).collect();
    let _ = write!(h, "<td class=\"failed\" title=\"{}\">failed</td>", esc(&first));
}

/// Counts per version (the newest `MAX_SUMMARY_ROWS`) and per kernel
/// series, each per arch, linking to the rows they count.
fn summaries(h: &mut String, report: &coverage::Report, view: &View<'_>) {
    let cell = |c: Option<&coverage::Counts>| match c {
        Some(c) if c.total() > 0 => format!(
            "<td class=\"sum\"><span class=\"p\">{}</span> / <span class=\"f\">{}</span> / <span class=\"m\">{}</span></td>",
            c.present, c.failed, c.missing
        ),
        _ => "<td class=\"sum none\"></td>".to_owned(),
    };
    let head = |h: &mut String, what: &str| {
        let _ = write!(h, "<table class=\"summary\"><thead><tr><th>{what}</th>");
        for a in Arch::ALL {
            let _ = write!(h, "<th>{a} <small>present / failed / missing</small></th>");
        }
        h.push_str("</tr></thead><tbody>");
    };
    h.push_str("<section class=\"summaries\"><div>");
    let mut versions: Vec<&String> = report.by_version.keys().collect();
    versions.sort_by_cached_key(|v| std::cmp::Reverse(natural_key(v)));
    head(h, "version");
    for v in versions.iter().take(MAX_SUMMARY_ROWS) {
        let href = View { version: Some(v.as_str()), from: 0, ..view.clone() }.href(0, None, None);
        let _ = write!(h, "<tr><th><a href=\"{}\">{}</a></th>", esc(&href), esc(v));
        for a in Arch::ALL {
            h.push_str(&cell(report.by_version[*v].get(&a)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    if versions.len() > MAX_SUMMARY_ROWS {
        let _ = write!(h, "<p class=\"more\">and {} older versions</p>", versions.len() - MAX_SUMMARY_ROWS);
    }
    h.push_str("</div><div>");
    let mut series: Vec<&String> = report.by_series.keys().collect();
    series.sort_by_cached_key(|s| natural_key(s));
    head(h, "kernel series");
    for s in series.iter().take(MAX_SUMMARY_ROWS) {
        let q = if s.as_str() == "other" { None } else { Some(format!("{s}.")) };
        let href = view.href(0, None, Some(q.as_deref()));
        let _ = write!(h, "<tr><th><a href=\"{}\">{}</a></th>", esc(&href), esc(s));
        for a in Arch::ALL {
            h.push_str(&cell(report.by_series[*s].get(&a)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    if series.len() > MAX_SUMMARY_ROWS {
        let _ = write!(h, "<p class=\"more\">and {} more series</p>", series.len() - MAX_SUMMARY_ROWS);
    }
    h.push_str("</div></section>");
}

/// The missing (release, arch) pairs by name, the first
/// `MAX_MISSING_LISTED`, and a link to the rows of all of them.
fn missing_list(h: &mut String, report: &coverage::Report, view: &View<'_>) {
    let missing: Vec<&coverage::KernelRow> =
        report.kernels.iter().filter(|k| k.versions.values().any(|s| *s == State::Missing)).collect();
    if missing.is_empty() {
        return;
    }
    let _ = write!(h, "<section class=\"missing-list\"><h2>{} kernels missing an object</h2><ul>", missing.len());
    for k in missing.iter().take(MAX_MISSING_LISTED) {
        let n = k.versions.values().filter(|s| **s == State::Missing).count();
        let _ = write!(
            h,
            "<li data-missing=\"{} {}\"><code>{}</code> {} <small>({n} of {} versions)</small></li>",
            esc(&k.release),
            k.arch,
            esc(&k.release),
            k.arch,
            k.versions.len()
        );
    }
    h.push_str("</ul>");
    let all = esc(&view.href(0, Some(Some(State::Missing)), Some(None)));
    if missing.len() > MAX_MISSING_LISTED {
        let _ = write!(
            h,
            "<p class=\"more\">and {} more: <a class=\"all-missing\" href=\"{all}\">every kernel with a missing cell</a></p>",
            missing.len() - MAX_MISSING_LISTED
        );
    } else {
        let _ = write!(h, "<p class=\"more\"><a class=\"all-missing\" href=\"{all}\">Their rows</a></p>");
    }
    h.push_str("</section>");
}

/// A cell for a (release, arch) pair nothing expects: one that cannot
/// exist, or one the matrix does not list. Neither missing nor a link.
fn not_expected_cell(release: &str, arch: &str, matrix: Option<&Matrix>) -> String {
    let why = match matrix {
        Some(m) if Arch::from_any(arch).is_some_and(|a| a.can_run(release)) => {
            format!("{} on {} is not in matrix {}", esc(release), esc(arch), esc(&m.name))
        }
        _ => format!("{} does not run on {}", esc(release), esc(arch)),
    };
    format!("<td class=\"none\" title=\"{why}\"></td>")
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>bpfarm coverage</title>
<style>
  :root { font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; color: #1d2433; background: #f6f7f9; }
  body { margin: 0 1.5rem 2rem; }
  header { position: sticky; top: 0; background: #f6f7f9; padding: 1rem 0 .75rem; z-index: 1; }
  h1 { margin: 0 0 .25rem; font-size: 1.4rem; }
  .counts { margin: 0 0 .75rem; color: #4a5468; }
  .chip { display: inline-block; padding: .1rem .5rem; border-radius: 1rem; font-size: .85rem; }
  #search { font: inherit; padding: .45rem .7rem; width: min(32rem, 100%); border: 1px solid #b8c0cc; border-radius: .4rem; }
  #shown { color: #4a5468; margin-left: .5rem; font-size: .9rem; }
  table { border-collapse: collapse; background: white; box-shadow: 0 1px 3px #0002; }
  th, td { padding: .3rem .6rem; border: 1px solid #e1e5eb; text-align: center; font-size: .9rem; }
  thead th { background: #eef1f5; }
  th.release { text-align: left; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-weight: normal; white-space: nowrap; }
  th.arch { font-weight: normal; color: #4a5468; }
  td.present, .chip.present { background: #d9f2e1; color: #14532d; }
  td.failed, .chip.failed { background: #fbdcdc; color: #7f1d1d; }
  td.missing, .chip.missing { background: #eef0f3; color: #8a93a3; }
  td.none { background: repeating-linear-gradient(135deg, #fff 0 4px, #f1f3f6 4px 8px); }
  td.present a { color: inherit; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
  tr[hidden] { display: none; }
  .chip { text-decoration: none; }
  .summaries { display: flex; flex-wrap: wrap; gap: 1.5rem; margin: 0 0 1rem; align-items: flex-start; }
  table.summary td.sum { font-variant-numeric: tabular-nums; }
  table.summary th small { font-weight: normal; color: #4a5468; }
  .p { color: #14532d; } .f { color: #7f1d1d; } .m { color: #8a93a3; }
  .missing-list ul { columns: 3 18rem; margin: .25rem 0; }
  .missing-list h2 { font-size: 1rem; margin: .5rem 0 .25rem; }
  .nav, .more, .older { color: #4a5468; }
</style></head><body>
"#;

const TAIL: &str = r#"
<script>
  const box = document.getElementById('search');
  const rows = Array.from(document.querySelectorAll('#matrix tbody tr'));
  const table = document.getElementById('matrix');
  const paged = table && table.dataset.server === 'true';
  const shown = document.getElementById('shown');
  function apply() {
    const q = box.value.trim().toLowerCase();
    let n = 0;
    for (const r of rows) { const hit = r.dataset.release.toLowerCase().includes(q); r.hidden = !hit; n += hit; }
    shown.textContent = q ? `${n} of ${rows.length} releases${paged ? ' on this page (Enter searches them all)' : ''}` : '';
    const url = new URL(location); if (q) url.searchParams.set('q', q); else url.searchParams.delete('q');
    history.replaceState(null, '', url);
  }
  box.value = new URL(location).searchParams.get('q') || '';
  box.addEventListener('input', apply);
  apply();
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_and_escaping() {
        let mut v = vec!["6.1.0-10-amd64", "6.1.0-9-amd64", "6.12.1", "6.2"];
        v.sort_by_key(|r| natural_key(r));
        assert_eq!(v, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.2", "6.12.1"]);
        assert_eq!(esc("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }
}

#[cfg(test)]
mod counting {
    use super::*;

    fn object(release: &str, arch: &str) -> CoverageObject {
        CoverageObject {
            kernel_release: release.into(),
            arch: arch.into(),
            version: "v0.1.0".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
        }
    }

    /// Five `-amd64` releases, each present on x86_64: nothing is missing
    /// (their aarch64 cells cannot exist), where the page once said "5 missing".
    #[test]
    fn pairs_that_cannot_exist_are_never_missing() {
        let objects: Vec<CoverageObject> = (52..57).map(|n| object(&format!("6.1.0-{n}-amd64"), "x86_64")).collect();
        let html = render(&objects, &[]);
        assert!(html.contains("5 present") && html.contains("0 missing"), "{html}");
        assert_eq!(html.matches("class=\"missing\"").count(), 0);
        assert_eq!(html.matches("class=\"none\"").count(), 5);
        assert!(html.contains("title=\"6.1.0-52-amd64 does not run on aarch64\""));

        // A release built for both arches (Ubuntu's -generic) and an arm64
        // one present on neither count where they can exist: 2 + 1.
        let objects = vec![object("6.1.0-56-amd64", "x86_64")];
        let failures = vec![CoverageFailure {
            kernel_release: "6.1.0-56-arm64".into(),
            arch: "aarch64".into(),
            version: "v0.1.0".into(),
            message: "error: x".into(),
        }];
        let mut html = render(&objects, &failures);
        assert!(html.contains("1 present") && html.contains("1 failed") && html.contains("0 missing"), "{html}");
        let objects = vec![object("6.1.0-56-amd64", "x86_64"), object("5.15.0-91-generic", "x86_64")];
        html = render(&objects, &failures);
        assert!(html.contains("1 missing"), "{html}");
    }
}
