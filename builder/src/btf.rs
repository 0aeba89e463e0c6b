//! BTF mode's header: a `vmlinux.h` generated from a BTF blob with bpftool,
//! cached under `btf/<blob digest>/` so each blob is dumped once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpfarm_object::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("bpftool not found on PATH or in /usr/sbin; install it (ci/install-deps) to build in BTF mode")]
    NoBpftool,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Dump { command: String, stderr: String },
}

/// bpftool, found once, and its version for cache keys.
#[derive(Debug, Clone)]
pub struct Bpftool {
    path: PathBuf,
    pub version: String,
}

impl Bpftool {
    pub fn discover() -> Result<Self, BtfError> {
        let path_env = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path_env).chain(["/usr/sbin".into(), "/sbin".into()]);
        let search = std::env::join_paths(dirs).map_err(|_| BtfError::NoBpftool)?;
        let path = which::which_in("bpftool", Some(search), "/").map_err(|_| BtfError::NoBpftool)?;
        let out = Command::new(&path)
            .arg("version")
            .output()
            .map_err(|source| BtfError::Io { path: path.clone(), source })?;
        let version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("bpftool").trim().to_owned();
        Ok(Self { path, version })
    }

    /// The folder holding `vmlinux.h` for this blob, generating it if needed.
    pub fn vmlinux_h(&self, blob: &Path, blob_digest: &Digest, cache_dir: &Path) -> Result<PathBuf, BtfError> {
        let dir = cache_dir.join("btf").join(blob_digest.hex());
        let header = dir.join("vmlinux.h");
        if header.is_file() {
            return Ok(dir);
        }
        let io = |path: &Path, source| BtfError::Io { path: path.to_owned(), source };
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let out = Command::new(&self.path)
            .args(["btf", "dump", "file"])
            .arg(blob)
            .args(["format", "c"])
            .env_clear()
            .output()
            .map_err(|e| io(&self.path, e))?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(BtfError::Dump {
                command: format!("{} btf dump file {} format c", self.path.display(), blob.display()),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        crate::fsutil::write_atomic(&header, &out.stdout).map_err(|e| io(&header, e))?;
        Ok(dir)
    }
}
