//! Post-build validation: libbpf opens the object (ELF, BTF and `.maps`
//! parse) and the programs and maps the agent expects are all there.

use std::path::Path;

use crate::program::{MAPS, PROGRAMS};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("libbpf could not open the object: {0}")]
    Open(String),
    #[error("object lacks {kind} {name:?} (has: {has})")]
    Missing { kind: &'static str, name: &'static str, has: String },
}

/// What libbpf saw in an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub programs: Vec<String>,
    pub maps: Vec<String>,
}

pub fn validate(object: &Path) -> Result<Contents, ValidateError> {
    let obj =
        libbpf_rs::ObjectBuilder::default().open_file(object).map_err(|e| ValidateError::Open(format!("{e:#}")))?;
    let programs: Vec<String> = obj.progs().map(|p| p.name().to_string_lossy().into_owned()).collect();
    let maps: Vec<String> = obj.maps().map(|m| m.name().to_string_lossy().into_owned()).collect();
    for name in PROGRAMS {
        if !programs.iter().any(|p| p == name) {
            return Err(ValidateError::Missing { kind: "program", name, has: programs.join(", ") });
        }
    }
    for name in MAPS {
        if !maps.iter().any(|m| m == name) {
            return Err(ValidateError::Missing { kind: "map", name, has: maps.join(", ") });
        }
    }
    Ok(Contents { programs, maps })
}
