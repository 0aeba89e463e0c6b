//! Kernel matrices (`kernels/<name>.toml`): which flavour packages, for
//! which Debian arch, make up a named set of kernels.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub name: String,
    #[serde(default)]
    pub distro: String,
    #[serde(rename = "kernel", default)]
    pub kernels: Vec<MatrixKernel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixKernel {
    /// The flavour package, e.g. `linux-headers-6.1.0-56-amd64`.
    pub package: String,
    /// Its Debian arch (`amd64`, `arm64`).
    pub arch: String,
    /// The kernel release the package must turn out to hold (checked).
    pub release: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: no [[kernel]] entries")]
    Empty { path: PathBuf },
}

impl Matrix {
    pub fn load(path: &Path) -> Result<Self, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Io { path: path.to_owned(), source })?;
        let m: Matrix = toml::from_str(&text).map_err(|source| MatrixError::Parse { path: path.to_owned(), source })?;
        if m.kernels.is_empty() {
            return Err(MatrixError::Empty { path: path.to_owned() });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_matrices_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
        for name in ["default.toml", "debian-bookworm.toml"] {
            let m = Matrix::load(&root.join(name)).unwrap();
            assert!(!m.kernels.is_empty(), "{name}");
            assert!(m.kernels.iter().any(|k| k.arch == "arm64"), "{name} has no arm64 kernel");
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(&p, "name = \"x\"\n[[kernel]]\npackage = \"p\"\narch = \"amd64\"\nflavor = \"typo\"\n").unwrap();
        let e = Matrix::load(&p).unwrap_err().to_string();
        assert!(e.contains("flavor"), "{e}");
    }
}
