//! What a failure may say in public. Failure reports go to a registry whose
//! coverage page anyone can read, so they carry only the compiler's
//! diagnostic lines located in the kernel's header tree or the program (not
//! in some other file a header managed to pull in, not clang's echo of
//! source lines), with the builder's folders replaced by the fixed names the
//! objects' debug info uses, and a length cap. Other failures keep their
//! first line with host folders cut down to file names.

use std::path::Path;

/// At most this many lines and bytes are published per failure.
pub const MAX_LINES: usize = 20;
pub const MAX_BYTES: usize = 2048;

/// Fixed names for the folders a compile reads (the debug-info names).
pub const PUBLIC_ROOTS: [&str; 4] = ["/bpfarm/kernel/", "/bpfarm/tracer/", "/bpfarm/work/", "/bpfarm/kernel/btf/"];

/// Host folder → public name, for one compile.
#[derive(Debug, Clone, Default)]
pub struct PathMap(Vec<(String, String)>);

impl PathMap {
    /// Adds a folder (as given and as resolved) under a public name.
    pub fn add(&mut self, host: &Path, public: &str) {
        let mut forms = vec![host.to_string_lossy().into_owned()];
        if let Ok(real) = host.canonicalize() {
            forms.push(real.to_string_lossy().into_owned());
        }
        for f in forms {
            let f = f.trim_end_matches('/').to_owned();
            if !f.is_empty() && !self.0.iter().any(|(h, _)| *h == f) {
                self.0.push((f, public.trim_end_matches('/').to_owned()));
            }
        }
        // Longest first, so a folder inside another maps to its own name.
        self.0.sort_by_key(|(h, _)| std::cmp::Reverse(h.len()));
    }

    fn apply(&self, line: &str) -> String {
        let mut s = line.to_owned();
        for (host, public) in &self.0 {
            s = s.replace(host.as_str(), public);
        }
        s
    }
}

/// The location part of a clang diagnostic line, if it is one we publish:
/// `<file>:<line>:<col>: error: …` or `… fatal error: …`.
fn located_error(line: &str) -> Option<&str> {
    let (loc, _) = line.split_once(": error: ").or_else(|| line.split_once(": fatal error: "))?;
    let mut parts = loc.rsplitn(3, ':');
    let col = parts.next()?;
    let row = parts.next()?;
    let file = parts.next()?;
    (col.bytes().all(|b| b.is_ascii_digit()) && row.bytes().all(|b| b.is_ascii_digit())).then_some(file)
}

/// Whether a diagnostic's file is the kernel's tree or the program: a
/// public name, or a plain relative name in the program folder.
fn about_the_tree(file: &str) -> bool {
    if file.starts_with('/') {
        PUBLIC_ROOTS.iter().any(|r| file.starts_with(r))
    } else {
        !file.split('/').any(|c| c == "..")
    }
}

fn cap(lines: Vec<String>) -> String {
    let mut out = String::new();
    for l in lines.into_iter().take(MAX_LINES) {
        if out.len() + l.len() + 1 > MAX_BYTES {
            let room = MAX_BYTES.saturating_sub(out.len() + 4);
            let cut = l.char_indices().map(|(i, _)| i).take_while(|i| *i <= room).last().unwrap_or(0);
            out.push_str(&l[..cut]);
            out.push_str("...\n");
            break;
        }
        out.push_str(&l);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// The publishable part of a compiler's stderr.
pub fn compiler_errors(stderr: &str, map: &PathMap) -> String {
    let mut lines = Vec::new();
    for raw in stderr.lines() {
        let line = map.apply(raw);
        if let Some(file) = located_error(&line)
            && about_the_tree(file)
        {
            lines.push(line);
        } else if line.trim_end().ends_with(" generated.")
            && line.split_whitespace().next().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return "compile failed (no compiler errors located in the kernel's headers or the program)".into();
    }
    cap(lines)
}

/// Any other failure: its first line, every absolute path cut to its file
/// name (`…/name`), capped.
pub fn message(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut out = String::new();
    let mut rest = first;
    while let Some(i) = rest.find('/') {
        let starts_token = i == 0 || rest[..i].ends_with([' ', '(', '\'', '"', '`', '=', '[']);
        if !starts_token {
            out.push_str(&rest[..=i]);
            rest = &rest[i + 1..];
            continue;
        }
        out.push_str(&rest[..i]);
        let end = rest[i..].find([' ', ':', '\'', '"', ')', ',', '`', ']']).map(|e| i + e).unwrap_or(rest.len());
        let path = &rest[i..end];
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        out.push_str("…/");
        out.push_str(name);
        rest = &rest[end..];
    }
    out.push_str(rest);
    cap(vec![out])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PathMap {
        let mut m = PathMap::default();
        m.add(
            Path::new("/home/ci/.cache/bpfarm/trees/ab.f1/usr/src/linux-headers-6.1.0-56-common"),
            "/bpfarm/kernel/source",
        );
        m.add(Path::new("/home/ci/.cache/bpfarm/program/cd"), "/bpfarm/tracer");
        m
    }

    #[test]
    fn keeps_only_errors_located_in_the_tree() {
        let stderr = "\
In file included from <built-in>:1:
/home/ci/.cache/bpfarm/trees/ab.f1/usr/src/linux-headers-6.1.0-56-common/include/linux/kconfig.h:5:10: fatal error: cannot open file '/tmp/secret/token': Permission denied
#include \"/tmp/secret/token\"
         ^~~~~~~~~~~~~~~~~~~
/tmp/secret/token:1:1: error: unknown type name 'MARKER_SECRET'
MARKER_SECRET here
^
tracer.bpf.c:12:3: error: use of undeclared identifier 'x'
../../etc/x.h:1:1: error: unknown type name 'ALSO_SECRET'
2 errors generated.
";
        let p = compiler_errors(stderr, &map());
        assert!(!p.contains("MARKER_SECRET") && !p.contains("ALSO_SECRET") && !p.contains("/home/ci"), "{p}");
        assert!(p.contains("/bpfarm/kernel/source/include/linux/kconfig.h:5:10: fatal error"), "{p}");
        assert!(p.contains("tracer.bpf.c:12:3: error"), "{p}");
        assert!(p.ends_with("2 errors generated."), "{p}");
    }

    #[test]
    fn is_capped() {
        let stderr: String = (0..100).map(|i| format!("tracer.bpf.c:{i}:1: error: {}\n", "x".repeat(300))).collect();
        let p = compiler_errors(&stderr, &map());
        assert!(p.len() <= MAX_BYTES && p.lines().count() <= MAX_LINES, "{} bytes", p.len());
        assert_eq!(message(&"y".repeat(10_000)).len(), MAX_BYTES - 1);
    }

    #[test]
    fn other_failures_lose_host_folders() {
        let m = message(
            "/srv/mirror/debs/linux-headers-6.1.0-99-amd64_1_amd64.deb: data.tar.xz: exceeds --max-tree-bytes (1 GiB)\nmore",
        );
        assert_eq!(m, "…/linux-headers-6.1.0-99-amd64_1_amd64.deb: data.tar.xz: exceeds --max-tree-bytes (1 GiB)");
        assert_eq!(message("a/b: x (see /etc/y)"), "a/b: x (see …/y)");
    }
}
