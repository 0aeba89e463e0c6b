//! The coverage page at `/`: which kernel releases have an object for which
//! version and arch — present (with a download link), failed (with the
//! builder's reason) or missing — with a search box over kernel releases.
//! Rendered on the server from the index; the only script filters rows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use bpfarm_object::Arch;

use crate::coverage::{self, Matrix};
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

/// Orders `6.1.0-9` before `6.1.0-10`: digit runs compare as numbers.
fn natural_key(s: &str) -> Vec<(u64, String)> {
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

enum Cell<'a> {
    Present(&'a CoverageObject),
    Failed(&'a CoverageFailure),
}

pub fn render(objects: &[CoverageObject], failures: &[CoverageFailure]) -> String {
    render_against(objects, failures, None)
}

/// The page, counting against a published matrix when one is given (its
/// releases are rows even before anything was built for them).
pub fn render_against(objects: &[CoverageObject], failures: &[CoverageFailure], matrix: Option<&Matrix>) -> String {
    let expected = coverage::expected(objects, failures, matrix);
    let mut releases: Vec<&str> = objects
        .iter()
        .map(|o| o.kernel_release.as_str())
        .chain(failures.iter().map(|f| f.kernel_release.as_str()))
        .chain(expected.iter().map(|(r, _)| r.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    releases.sort_by_key(|r| natural_key(r));
    let mut versions: Vec<&str> = objects
        .iter()
        .map(|o| o.version.as_str())
        .chain(failures.iter().map(|f| f.version.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(natural_key(v)));
    let arches: Vec<&str> = Arch::ALL.iter().map(|a| a.uname()).collect();
    let mut cells: BTreeMap<(&str, &str, &str), Cell<'_>> = BTreeMap::new();
    for f in failures {
        cells.insert((f.kernel_release.as_str(), f.version.as_str(), f.arch.as_str()), Cell::Failed(f));
    }
    for o in objects {
        cells.insert((o.kernel_release.as_str(), o.version.as_str(), o.arch.as_str()), Cell::Present(o));
    }
    let counts = coverage::report(objects, failures, matrix, None).counts;
    let (present, failed, missing) = (counts.present, counts.failed, counts.missing);
    let is_expected = |r: &str, a: &str| Arch::from_any(a).is_some_and(|a| expected.contains(&(r.to_owned(), a)));

    let mut h = String::new();
    h.push_str(HEAD);
    let _ = write!(
        h,
        "<header><h1>bpfarm coverage</h1><p class=\"counts\"><span class=\"chip present\">{present} present</span> <span class=\"chip failed\">{failed} failed</span> <span class=\"chip missing\">{missing} missing</span> across {} kernel releases, {} versions{}</p>\
         <input id=\"search\" type=\"search\" placeholder=\"Search kernel releases, e.g. 6.12 or cloud\" autocomplete=\"off\" aria-label=\"Search kernel releases\"> <span id=\"shown\"></span></header>",
        releases.len(),
        versions.len(),
        matrix.map(|m| format!(", against matrix <code>{}</code>", esc(&m.name))).unwrap_or_default()
    );
    if releases.is_empty() {
        h.push_str("<p class=\"empty\">No objects yet. Publish some with <code>bpfarm-builder build … --publish URL</code>.</p>");
    } else {
        h.push_str("<table id=\"matrix\"><thead><tr><th rowspan=\"2\">kernel release</th>");
        for v in &versions {
            let _ = write!(h, "<th colspan=\"{}\">{}</th>", arches.len(), esc(v));
        }
        h.push_str("</tr><tr>");
        for _ in &versions {
            for a in &arches {
                let _ = write!(h, "<th class=\"arch\">{a}</th>");
            }
        }
        h.push_str("</tr></thead><tbody>");
        for r in &releases {
            let _ = write!(h, "<tr data-release=\"{0}\"><th class=\"release\">{0}</th>", esc(r));
            for v in &versions {
                for a in &arches {
                    match cells.get(&(*r, *v, *a)) {
                        Some(Cell::Present(o)) => {
                            let _ = write!(
                                h,
                                "<td class=\"present\" title=\"{} ({} bytes)\"><a href=\"/v1/blobs/{}\" download=\"{}\">{}</a></td>",
                                esc(&o.digest),
                                o.size,
                                esc(&o.digest),
                                esc(&bpfarm_object::object_file_name(r, v)),
                                // "sha256:" + the first 12 hex digits
                                esc(o.digest.get(7..19).unwrap_or(&o.digest))
                            );
                        }
                        Some(Cell::Failed(f)) => {
                            let first = f
                                .message
                                .lines()
                                .find(|l| l.contains("error"))
                                .or_else(|| f.message.lines().next())
                                .unwrap_or("");
                            let _ = write!(h, "<td class=\"failed\" title=\"{}\">failed</td>", esc(first));
                        }
                        None if !is_expected(r, a) => h.push_str(&not_expected_cell(r, a, matrix)),
                        None => h.push_str("<td class=\"missing\">—</td>"),
                    }
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table>");
    }
    h.push_str(TAIL);
    h
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
</style></head><body>
"#;

const TAIL: &str = r#"
<script>
  const box = document.getElementById('search');
  const rows = Array.from(document.querySelectorAll('#matrix tbody tr'));
  const shown = document.getElementById('shown');
  function apply() {
    const q = box.value.trim().toLowerCase();
    let n = 0;
    for (const r of rows) { const hit = r.dataset.release.toLowerCase().includes(q); r.hidden = !hit; n += hit; }
    shown.textContent = q ? `${n} of ${rows.length} releases` : '';
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
