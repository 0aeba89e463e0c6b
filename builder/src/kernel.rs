//! Facts about a kernel read from its header tree: release, `uname -v`,
//! `.config` digest, arch (the running kernel's are
//! `bpfarm_object::host::running_kernel`).

use std::path::Path;

use bpfarm_object::{Arch, Digest, KernelFacts};

use crate::treefs::{self, Roots};

/// What a configured build tree says about its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFacts {
    pub release: String,
    pub arch: Option<Arch>,
    pub facts: KernelFacts,
}

#[derive(Debug, thiserror::Error)]
#[error("{tree}: {reason}")]
pub struct TreeFactsError {
    pub tree: String,
    pub reason: String,
}

/// `#define NAME "value"` in a header.
fn define(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("#define")?.trim_start().strip_prefix(name)?;
        let v = rest.trim();
        Some(v.strip_prefix('"')?.strip_suffix('"')?.to_owned())
    })
}

/// Caps on the files `tree_facts` reads (real ones are a few hundred bytes,
/// and a `.config` a few hundred KB).
const SMALL_FILE_CAP: u64 = 1 << 20;
const CONFIG_CAP: u64 = 16 << 20;

/// Reads release, arch, `uname -v` and config digest from a build tree
/// (Debian flavour package root, `/lib/modules/<r>/build`, RPM kernel-devel).
/// Only regular files inside the tree are read (see `treefs`): a `.config`
/// that is a FIFO or a link to `/dev/zero` is an error, not a hang.
pub fn tree_facts(build: &Path) -> Result<TreeFacts, TreeFactsError> {
    let err = |reason: String| TreeFactsError { tree: build.display().to_string(), reason };
    let roots = Roots::new([build]).map_err(|e| err(e.to_string()))?;
    let read = |rel: &str, cap| -> Result<Option<String>, TreeFactsError> {
        Ok(treefs::read_file(&roots, &build.join(rel), cap)
            .map_err(|e| err(e.to_string()))?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    // UTS_RELEASE is what the kernel answers to `uname -r`; Debian's 6.1
    // packages put the upstream version ("6.1.192") in kernel.release.
    let release = match read("include/generated/utsrelease.h", SMALL_FILE_CAP)?.and_then(|t| define(&t, "UTS_RELEASE"))
    {
        Some(r) => Some(r),
        None => read("include/config/kernel.release", SMALL_FILE_CAP)?.map(|s| s.trim().to_owned()),
    }
    .filter(|s| !s.is_empty())
    .ok_or_else(|| {
        err("no include/config/kernel.release or include/generated/utsrelease.h: not a configured kernel build tree"
            .into())
    })?;
    bpfarm_object::identity::validate_release(&release).map_err(|e| err(e.to_string()))?;
    let mut uname_version = None;
    for f in ["include/generated/utsversion.h", "include/generated/compile.h"] {
        if let Some(v) = read(f, SMALL_FILE_CAP)?.and_then(|t| define(&t, "UTS_VERSION")) {
            uname_version = Some(v);
            break;
        }
    }
    let config_digest = treefs::read_file(&roots, &build.join(".config"), CONFIG_CAP)
        .map_err(|e| err(e.to_string()))?
        .map(|b| Digest::of_bytes(&b));
    let arch = read("include/generated/autoconf.h", SMALL_FILE_CAP)?.and_then(|t| {
        if t.contains("#define CONFIG_X86_64 1") {
            Some(Arch::X86_64)
        } else if t.contains("#define CONFIG_ARM64 1") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    });
    Ok(TreeFacts { release, arch, facts: KernelFacts { uname_version, config_digest } })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn reads_a_tree() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("include/config")).unwrap();
        fs::create_dir_all(d.path().join("include/generated")).unwrap();
        fs::write(d.path().join("include/config/kernel.release"), "6.1.192\n").unwrap();
        fs::write(d.path().join("include/generated/utsrelease.h"), "#define UTS_RELEASE \"6.1.0-56-arm64\"\n").unwrap();
        fs::write(d.path().join("include/generated/utsversion.h"), "#define UTS_VERSION \"#1 SMP Debian\"\n").unwrap();
        fs::write(d.path().join("include/generated/autoconf.h"), "#define CONFIG_ARM64 1\n").unwrap();
        fs::write(d.path().join(".config"), "CONFIG_ARM64=y\n").unwrap();
        let f = tree_facts(d.path()).unwrap();
        assert_eq!(f.release, "6.1.0-56-arm64");
        assert_eq!(f.arch, Some(Arch::Aarch64));
        assert_eq!(f.facts.uname_version.as_deref(), Some("#1 SMP Debian"));
        assert_eq!(f.facts.config_digest, Some(Digest::of_bytes(b"CONFIG_ARM64=y\n")));
    }

    #[test]
    fn refuses_a_folder_that_is_no_tree() {
        let d = tempfile::tempdir().unwrap();
        let e = tree_facts(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a configured kernel build tree"), "{e}");
    }

    #[test]
    fn a_config_that_is_no_regular_file_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("include/generated")).unwrap();
        fs::write(d.path().join("include/generated/utsrelease.h"), "#define UTS_RELEASE \"6.1.0-56-amd64\"\n").unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join(".config")).unwrap();
        let e = tree_facts(d.path()).unwrap_err().to_string();
        assert!(e.contains(".config") && e.contains("/dev/zero"), "{e}");
    }
}
