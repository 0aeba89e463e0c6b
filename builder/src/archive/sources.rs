//! The machine's apt sources: deb822 `*.sources` files and one-line
//! `sources.list` / `*.list` files, read for the archive URIs they name.
//! Nothing here names a mirror: the URIs come from the machine or the
//! command line.

use std::fs;
use std::path::{Path, PathBuf};

/// One `deb` entry (one URI of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `Signed-By` / `[signed-by=…]`: a keyring path (or an inline key).
    pub signed_by: Option<String>,
    /// The file it came from.
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SourcesError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Every enabled `deb` entry under `apt_dir` (normally `/etc/apt`):
/// `sources.list`, then `sources.list.d/*.list` and `*.sources` by file name.
pub fn read(apt_dir: &Path) -> Result<Vec<AptSource>, SourcesError> {
    let mut files = Vec::new();
    let main = apt_dir.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let d = apt_dir.join("sources.list.d");
    if d.is_dir() {
        let rd = fs::read_dir(&d).map_err(|source| SourcesError { path: d.clone(), source })?;
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).map_err(|source| SourcesError { path: f.clone(), source })?;
        if f.extension().is_some_and(|x| x == "sources") {
            out.extend(parse_deb822(&text, &f));
        } else {
            out.extend(parse_one_line(&text, &f));
        }
    }
    Ok(out)
}

/// deb822 stanzas: `Types`, `URIs`, `Suites`, `Components`, `Signed-By`,
/// `Enabled`. Comment lines are dropped; a multi-line `Signed-By` (an
/// inline key) is kept as one value.
pub fn parse_deb822(text: &str, file: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut flush = |fields: &mut Vec<(String, String)>| {
        let get = |k: &str| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.trim().to_owned());
        let words = |k: &str| get(k).map(|v| v.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
        let types: Vec<String> = words("Types");
        let enabled = get("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        if enabled && types.iter().any(|t| t == "deb") {
            for uri in words("URIs") {
                out.push(AptSource {
                    uri: uri.trim_end_matches('/').to_owned(),
                    suites: words("Suites"),
                    components: words("Components"),
                    signed_by: get("Signed-By").filter(|s| !s.is_empty()),
                    file: file.to_owned(),
                });
            }
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields);
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    flush(&mut fields);
    out
}

/// `deb [opt=val …] URI SUITE [COMPONENT …]`, `#` comments.
pub fn parse_one_line(text: &str, file: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb").filter(|r| r.starts_with([' ', '\t', '['])) else {
            continue;
        };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((o, r)) => (o, r),
                None => continue,
            },
            None => ("", rest),
        };
        let signed_by = options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by=").or_else(|| o.strip_prefix("Signed-By=")))
            .map(str::to_owned);
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.trim_end_matches('/').to_owned(),
            suites: vec![suite.to_owned()],
            components: words.map(str::to_owned).collect(),
            signed_by,
            file: file.to_owned(),
        });
    }
    out
}

/// The archive roots to use, in file order, once each: entries signed by
/// `keyring` or not naming a keyring at all (their indices are then checked
/// against `keyring`). Entries pinned to another keyring are other vendors'
/// repositories and are left out; they are returned second, for messages.
pub fn debian_roots(sources: &[AptSource], keyring: &Path) -> (Vec<AptSource>, Vec<AptSource>) {
    let same = |s: &str| {
        let a = Path::new(s);
        a == keyring || (a.canonicalize().ok().is_some() && a.canonicalize().ok() == keyring.canonicalize().ok())
    };
    let mut used: Vec<AptSource> = Vec::new();
    let mut skipped = Vec::new();
    for s in sources {
        let ours = s.signed_by.as_deref().is_none_or(same);
        if !ours {
            skipped.push(s.clone());
        } else if let Some(u) = used.iter_mut().find(|u| u.uri == s.uri) {
            for suite in &s.suites {
                if !u.suites.contains(suite) {
                    u.suites.push(suite.clone());
                }
            }
        } else {
            used.push(s.clone());
        }
    }
    (used, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_with_comments_and_disabled_stanzas() {
        let text = "Types: deb deb-src\n# a comment\nURIs: http://a.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://b.invalid/x\nSuites: s\nEnabled: no\n\nTypes: deb-src\nURIs: http://c.invalid/src\nSuites: s\n";
        let s = parse_deb822(text, Path::new("f.sources"));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uri, "http://a.invalid/debian");
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/usr/share/keyrings/debian-archive-keyring.gpg"));
    }

    #[test]
    fn one_line_with_options() {
        let text = "# deb http://old.invalid/ x main\ndeb [arch=amd64 signed-by=/k.gpg] http://a.invalid/debian bookworm main contrib\ndeb-src http://a.invalid/debian bookworm main\ndeb http://b.invalid/debian-security bookworm-security main # trailing\n";
        let s = parse_one_line(text, Path::new("f.list"));
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[1].uri, "http://b.invalid/debian-security");
        assert_eq!(s[1].signed_by, None);
    }

    #[test]
    fn other_vendors_keyrings_are_left_out() {
        let k = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
        let mk = |uri: &str, signed_by: Option<&str>, suite: &str| AptSource {
            uri: uri.into(),
            suites: vec![suite.into()],
            components: vec!["main".into()],
            signed_by: signed_by.map(str::to_owned),
            file: "f".into(),
        };
        let (used, skipped) = debian_roots(
            &[
                mk("http://a.invalid/debian", Some(k.to_str().unwrap()), "bookworm"),
                mk("http://v.invalid/repo", Some("/etc/apt/keyrings/vendor.asc"), "stable"),
                mk("http://a.invalid/debian", None, "bookworm-updates"),
                mk("http://s.invalid/debian-security", None, "bookworm-security"),
            ],
            k,
        );
        assert_eq!(
            used.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(),
            ["http://a.invalid/debian", "http://s.invalid/debian-security"]
        );
        assert_eq!(used[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(skipped.len(), 1);
    }
}
