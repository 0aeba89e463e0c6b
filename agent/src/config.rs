//! The agent's settings file: fleets configure agents from files, not long
//! command lines. `--config FILE` (or `BPFARM_AGENT_CONFIG`), else
//! `/etc/bpfarm/agent.toml` when it exists. Flags win over environment
//! variables, which win over the file, which wins over the defaults.
//!
//! The file decides where the agent fetches code it loads into the kernel,
//! so it is read like everything else the agent trusts: through a checked
//! folder, never through a symlink, and only when root or the agent's user
//! owns it and no one else can write it. Unknown keys are an error (a
//! misspelt `registries` must not silently mean "none", a misspelt
//! `verify_keys` must not silently mean "unsigned is fine").

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::resolve::BuildPolicy;
use crate::trust::{TrustError, TrustedDir};

/// Used when `--config` is not given and the file exists.
pub const DEFAULT_PATH: &str = "/etc/bpfarm/agent.toml";
const MAX_CONFIG: u64 = 1 << 20;

/// Everything the file may set; every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Registries to fetch from, in order (as `--registry`).
    pub registries: Option<Vec<String>>,
    /// Extra headers for registry requests, `"K: V"` (as `--registry-header`).
    pub registry_headers: Option<Vec<String>>,
    /// Read token (as `--registry-token`).
    pub registry_token: Option<String>,
    pub install_path: Option<PathBuf>,
    pub build_policy: Option<BuildPolicy>,
    /// Seconds per registry attempt (as `--timeout`).
    pub timeout: Option<u64>,
    /// A PEM file of extra CAs (as `--ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http to hosts other than loopback (as `--insecure`).
    pub insecure: Option<bool>,
    /// Largest object read, in bytes (as `--max-object-size`).
    pub max_object_size: Option<u64>,
    /// #11: public keys every object must be signed by, one of them (as `--verify-key`).
    pub verify_keys: Option<Vec<PathBuf>>,
    /// #11: where the rollback record is kept (as `--state-dir`).
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: TrustError,
    },
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Reads the settings file: `explicit` must exist; without it the default
/// path is used only if it exists. Returns the settings and the file read.
pub fn load(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>), ConfigError> {
    let path = explicit.map(Path::to_owned).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let trust = |source| ConfigError::Trust { path: path.clone(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ConfigError::Missing { path: path.clone() })?;
    let text = match TrustedDir::open(dir) {
        Ok(d) => d.read_file(&name, MAX_CONFIG).map_err(trust)?,
        Err(TrustError::Missing { .. }) => None,
        Err(e) => return Err(trust(e)),
    };
    let Some(text) = text else {
        return match explicit {
            Some(_) => Err(ConfigError::Missing { path }),
            None => Ok((FileConfig::default(), None)),
        };
    };
    let text =
        String::from_utf8(text).map_err(|_| ConfigError::Parse { path: path.clone(), message: "not UTF-8".into() })?;
    let cfg = toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.clone(), message: e.to_string() })?;
    Ok((cfg, Some(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_keys_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "registries = [\"https://a.example\", \"oci://b.example/ns\"]\nbuild_policy = \"never\"\ntimeout = 5\n",
        )
        .unwrap();
        let (c, used) = load(Some(&p)).unwrap();
        assert_eq!(used.as_deref(), Some(p.as_path()));
        assert_eq!(c.registries.unwrap().len(), 2);
        assert_eq!(c.build_policy, Some(BuildPolicy::Never));
        std::fs::write(&p, "registires = [\"https://a.example\"]\n").unwrap();
        let e = load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("registires"), "{e}");
        assert!(matches!(load(Some(&dir.path().join("none.toml"))), Err(ConfigError::Missing { .. })));
    }
}
