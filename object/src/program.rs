//! The tracer program every bpfarm part agrees on: its sources (`bpf/`,
//! embedded so that a builder or agent anywhere compiles exactly the
//! program it was released with), its version, and the programs and maps a
//! built object must contain. The builder compiles and validates against
//! this; the agent names the version it looks for and which programs it may
//! leave unattached.

/// The file clang compiles; the others are headers it includes.
pub const MAIN_SOURCE: &str = "tracer.bpf.c";

/// The header that defines `TRACER_VERSION`.
pub const VERSION_HEADER: &str = "tracer.h";

/// The programs every built object must contain (the builder's `validate`
/// checks them).
pub const PROGRAMS: [&str; 7] = [
    "bpfarm_exec",
    "bpfarm_exit",
    "bpfarm_fork",
    "bpfarm_openat",
    "bpfarm_openat2",
    "bpfarm_connect",
    "bpfarm_commit_creds",
];

/// The programs a loader may leave unattached where the kernel lacks their
/// attach type (kprobes).
pub const OPTIONAL_PROGRAMS: [&str; 1] = ["bpfarm_commit_creds"];

/// The maps every built object must contain.
pub const MAPS: [&str; 2] = ["events", "lost_events"];

/// The program's sources as this binary was built with them, by file name.
pub const EMBEDDED: [(&str, &str); 3] = [
    (MAIN_SOURCE, include_str!("../../bpf/tracer.bpf.c")),
    (VERSION_HEADER, include_str!("../../bpf/tracer.h")),
    ("bpfarm_helpers.h", include_str!("../../bpf/bpfarm_helpers.h")),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracer.h does not define TRACER_VERSION as a string")]
pub struct NoVersion;

/// `TRACER_VERSION` as `tracer.h`'s text defines it.
pub fn version_in(tracer_h: &str) -> Result<String, NoVersion> {
    tracer_h
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("#define")?.trim_start().strip_prefix("TRACER_VERSION")?;
            Some(rest.trim().strip_prefix('"')?.strip_suffix('"')?.to_owned())
        })
        .ok_or(NoVersion)
}

/// The version of the embedded program: what an agent looks for unless
/// told otherwise.
pub fn embedded_version() -> Result<String, NoVersion> {
    let (_, h) = EMBEDDED.iter().find(|(n, _)| *n == VERSION_HEADER).ok_or(NoVersion)?;
    version_in(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_program_has_a_version() {
        let v = embedded_version().unwrap();
        assert!(v.starts_with('v') && v.contains('.'), "{v}");
    }

    #[test]
    fn a_version_must_be_a_quoted_define() {
        assert_eq!(version_in("#define TRACER_VERSION \"v1.2.3\"\n").unwrap(), "v1.2.3");
        assert_eq!(version_in("#define TRACER_VERSION v1\n"), Err(NoVersion));
        assert_eq!(version_in("// TRACER_VERSION \"v1\"\n"), Err(NoVersion));
    }

    #[test]
    fn optional_programs_are_programs() {
        assert!(OPTIONAL_PROGRAMS.iter().all(|p| PROGRAMS.contains(p)));
    }
}
