//! The registry's layering, checked from its source (`registry/src`): no
//! import circle between its modules, each module importing only from its
//! own layer or the ones below, the services and the vocabulary free of
//! HTTP, and blob files touched by `blobs` alone. The module comment of
//! `lib.rs` states these layers; this test is what holds them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module may import from its own layer or any below it.
const LAYERS: &[(&str, &[&str])] = &[
    ("storage and plumbing", &["repo", "memo", "blobs", "hot", "tokens", "manifest", "metrics", "tls"]),
    ("vocabulary", &["state", "error"]),
    (
        "services",
        &[
            "faces",
            "publish",
            "signatures",
            "distribution",
            "fsck",
            "export",
            "coverage",
            "bundle",
            "import",
            "mirror",
            "oci_mirror",
            "gc",
        ],
    ),
    ("HTTP faces", &["face", "auth", "body", "download", "page", "routes", "oci"]),
    ("connections", &["server"]),
];

/// What a module below the HTTP faces must never name.
const HTTP: &[&str] = &["axum", "hyper", "tower", "http::", "http_body", "StatusCode", "HeaderMap", "IntoResponse"];

/// Modules below the faces that may still name HTTP, and why.
const HTTP_BELOW_FACES: &[(&str, &str)] = &[
    ("metrics", "its middleware counts requests by route and status"),
    ("mirror", "a client of upstream registries, through bpfarm_object::http's transport"),
    ("oci_mirror", "a client of OCI registries, through bpfarm_object::http's transport"),
];

/// Modules that may use the file system, and why (everything else reaches
/// files through `blobs` or `repo`).
const FILE_USERS: &[(&str, &str)] = &[
    ("blobs", "the blob store itself"),
    ("memo", "stats the index files to tell that they are unchanged"),
    ("export", "writes the exported tree (reading blobs through `blobs`)"),
    ("tls", "reads the certificate and key files"),
    ("bundle", "writes the bundle tar (reading blobs through `blobs`)"),
    ("import", "reads the bundle tar (staging blobs through `blobs`)"),
];

/// The source of a module without comments and without its `#[cfg(test)]`
/// module (which every file keeps at its end).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.trim_start().starts_with("//") {
            true => "",
            false => l.split(" // ").next().unwrap_or(l),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of every `crate::` path in `code`, including each
/// item of a `crate::{a, b::c}` group.
fn crate_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(item);
        } else {
            out.push(rest.to_owned());
        }
    }
    out.iter()
        .map(|s| s.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

#[test]
fn the_checker_finds_circles_and_group_imports() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).into()).or_default().insert((*b).into());
            g.entry((*b).into()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(
        find_cycle(&g(&[("routes", "publish"), ("publish", "oci"), ("oci", "routes")])),
        Some(vec!["oci".into(), "routes".into(), "publish".into(), "oci".into()])
    );
    let refs =
        crate_refs("use crate::repo::{A, B};\nuse crate::{faces::{self, Held}, state};\nlet x = crate::oci::f();");
    assert_eq!(refs, ["repo", "faces", "state", "oci"]);
    assert_eq!(code("use crate::a; // crate::b\n//! crate::c\n#[cfg(test)]\nuse crate::d;"), "use crate::a;\n");
}

#[test]
fn registry_modules_form_layers_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_some_and(|e| e == "rs") && name != "main" && name != "lib" {
            modules.insert(name, code(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let mut problems = Vec::new();
    for m in modules.keys() {
        if layer_of(m).is_none() {
            problems.push(format!("{m}: in no layer; add it to LAYERS (and to lib.rs's map of them)"));
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &modules {
        let edges = graph.entry(m.clone()).or_default();
        for r in crate_refs(text) {
            if !modules.contains_key(&r) {
                problems.push(format!("{m}: names crate::{r}, not a module; import from the module that defines it"));
            } else if r != *m {
                edges.insert(r);
            }
        }
        if text.contains("super::") {
            problems.push(format!("{m}: uses super:: outside its tests"));
        }
    }
    for (m, deps) in &graph {
        let (Some(lm), name) = (layer_of(m), m) else { continue };
        for d in deps {
            if let Some(ld) = layer_of(d)
                && ld > lm
            {
                problems.push(format!("{name} ({}) imports {d} ({}), a layer above it", LAYERS[lm].0, LAYERS[ld].0));
            }
        }
        let faces = layer_of("routes").unwrap_or(usize::MAX);
        if lm < faces && !HTTP_BELOW_FACES.iter().any(|(u, _)| u == m) {
            for word in HTTP {
                if modules[m].contains(word) {
                    problems.push(format!("{name} ({}) names {word}: HTTP belongs to the faces", LAYERS[lm].0));
                }
            }
        }
        let uses_files = ["std::fs", "tokio::fs", "File::open", "File::create"].iter().any(|w| modules[m].contains(w));
        if uses_files && !FILE_USERS.iter().any(|(u, _)| u == m) {
            problems.push(format!("{name} touches files directly; blob files go through blobs"));
        }
        if name != "blobs" && modules[m].contains(".path(&") {
            problems.push(format!("{name} takes a blob's path; read and write it through BlobStore instead"));
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("import circle: {}", cycle.join(" → ")));
    }
    assert!(problems.is_empty(), "registry layering:\n  {}", problems.join("\n  "));
}
