//! The tracer program's sources as the builder compiles them: the ones
//! embedded in `bpfarm_object::program` (so that a builder or agent
//! anywhere compiles exactly the program it was released with), or read
//! from a folder while developing the program; their digest, and their
//! materialized folder for clang.

use std::fs;
use std::path::{Path, PathBuf};

use bpfarm_object::Digest;
use bpfarm_object::program::{self, EMBEDDED, VERSION_HEADER};
use sha2::{Digest as _, Sha256};

/// The expected programs and maps and the main source's name, where the
/// builder's callers have always found them.
pub use bpfarm_object::program::{MAIN_SOURCE, MAPS, OPTIONAL_PROGRAMS, PROGRAMS};

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no {MAIN_SOURCE} in the program folder")]
    NoMain(PathBuf),
    #[error("tracer.h does not define TRACER_VERSION as a string")]
    NoVersion,
}

/// A set of program source files, by name.
#[derive(Clone, Debug)]
pub struct ProgramSources {
    files: Vec<(String, Vec<u8>)>,
    digest: Digest,
}

impl ProgramSources {
    /// The sources this binary was built with.
    pub fn embedded() -> Self {
        Self::from_files(EMBEDDED.iter().map(|(n, s)| (n.to_string(), s.as_bytes().to_vec())).collect())
    }

    /// Every `.c`/`.h` file of a folder (not recursive).
    pub fn from_dir(dir: &Path) -> Result<Self, ProgramError> {
        let io = |path: &Path, source| ProgramError::Io { path: path.to_owned(), source };
        let mut files = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let p = e.map_err(|e| io(dir, e))?.path();
            // An entry of read_dir always has a file name.
            let Some(name) = p.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            if p.extension().is_some_and(|x| x == "c" || x == "h") {
                files.push((name, fs::read(&p).map_err(|e| io(&p, e))?));
            }
        }
        if !files.iter().any(|(n, _)| n == MAIN_SOURCE) {
            return Err(ProgramError::NoMain(dir.to_owned()));
        }
        Ok(Self::from_files(files))
    }

    fn from_files(mut files: Vec<(String, Vec<u8>)>) -> Self {
        files.sort();
        let mut h = Sha256::new();
        for (name, bytes) in &files {
            // Length-prefixed so no two file sets hash alike.
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        let digest = Digest::from_raw(h.finalize().into());
        Self { files, digest }
    }

    /// Digest over every file name and content.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// `TRACER_VERSION` from tracer.h: the program's own version.
    pub fn version(&self) -> Result<String, ProgramError> {
        let (_, h) = self.files.iter().find(|(n, _)| n == VERSION_HEADER).ok_or(ProgramError::NoVersion)?;
        program::version_in(&String::from_utf8_lossy(h)).map_err(|_| ProgramError::NoVersion)
    }

    /// Writes the sources into `<cache>/program/<digest>/` once and returns
    /// that folder: a stable path for clang, shared by all jobs.
    pub fn materialize(&self, cache_dir: &Path) -> Result<PathBuf, ProgramError> {
        let dir = cache_dir.join("program").join(self.digest.hex());
        if dir.join(MAIN_SOURCE).is_file() {
            return Ok(dir);
        }
        let io = |path: &Path, source| ProgramError::Io { path: path.to_owned(), source };
        fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        // The main source is written last: its presence marks the folder complete.
        for (name, bytes) in self
            .files
            .iter()
            .filter(|(n, _)| n != MAIN_SOURCE)
            .chain(self.files.iter().filter(|(n, _)| n == MAIN_SOURCE))
        {
            let p = dir.join(name);
            crate::fsutil::write_atomic(&p, bytes).map_err(|e| io(&p, e))?;
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_version_and_digest() {
        let p = ProgramSources::embedded();
        let v = p.version().unwrap();
        assert!(v.starts_with('v') && v.contains('.'), "{v}");
        let dir = tempfile::tempdir().unwrap();
        let m = p.materialize(dir.path()).unwrap();
        let again = ProgramSources::from_dir(&m).unwrap();
        assert_eq!(again.digest(), p.digest());
    }

    #[test]
    fn digest_covers_names_and_contents() {
        let a = ProgramSources::from_files(vec![("tracer.bpf.c".into(), b"x".to_vec())]);
        let b = ProgramSources::from_files(vec![("tracer.bpf.c".into(), b"y".to_vec())]);
        let c = ProgramSources::from_files(vec![("other.c".into(), b"x".to_vec())]);
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }
}
