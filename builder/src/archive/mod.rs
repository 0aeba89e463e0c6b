//! A Debian archive reached over HTTP(S): where the machine's apt sources
//! point (`sources`), its signed `InRelease` files (`release`), its package
//! indices (`index`), and the small blocking client they share (`http`).
//! `crate::discover` turns these into a matrix; `crate::fetch` downloads a
//! matrix's packages.

pub mod http;
pub mod index;
pub mod release;
pub mod sources;

/// The keyring Debian's archive is signed with (from `debian-archive-keyring`).
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
