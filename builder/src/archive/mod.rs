//! A Debian archive reached over HTTP(S): where the machine's apt sources
//! point (`sources`), its signed `InRelease` files (`release`), its package
//! indices (`index`), and [`Archive`], its files over the shared transport.
//! `crate::discover` turns these into a matrix; `crate::fetch` downloads a
//! matrix's packages.

use std::io::{self, Read};

use bpfarm_object::http::{BlockingBody, Transport, TransportError};

pub mod index;
pub mod release;
pub mod sources;

/// The keyring Debian's archive is signed with (from `debian-archive-keyring`).
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{url}: the body is larger than the {limit} bytes expected")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: reading the body: {source}")]
    Body {
        url: String,
        #[source]
        source: io::Error,
    },
}

/// An archive's files through the shared transport, with plain `http://`
/// allowed to any host ([`Transport::for_signed_content`]): what crosses it
/// is checked, indices against the gpgv-verified `InRelease`, packages
/// against the matrix's sha256. 404 and 410 are "absent", not errors.
#[derive(Debug, Clone)]
pub struct Archive {
    transport: Transport,
}

impl Archive {
    pub fn new(transport: &Transport) -> Self {
        Self { transport: transport.for_signed_content() }
    }

    /// GETs `url` for reading as it arrives, from byte `offset` when it is
    /// not 0 (`BlockingBody::resumed` says whether the server honoured the
    /// range). `Ok(None)` when the file is not there.
    pub fn open(&self, url: &str, offset: u64) -> Result<Option<BlockingBody>, TransportError> {
        self.transport.open_blocking(url, offset)
    }

    /// The whole body of `url`, refused when it is larger than `limit`;
    /// `Ok(None)` when the file is not there.
    pub fn get_bytes(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(body) = self.open(url, 0)? else {
            return Ok(None);
        };
        if body.length.is_some_and(|n| n > limit) {
            return Err(HttpError::TooLarge { url: url.to_owned(), limit });
        }
        let mut bytes = Vec::new();
        body.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| HttpError::Body { url: url.to_owned(), source })?;
        if bytes.len() as u64 > limit {
            return Err(HttpError::TooLarge { url: url.to_owned(), limit });
        }
        Ok(Some(bytes))
    }
}

/// `root` + `/` + `path`, whatever slashes either brings.
pub fn join(root: &str, path: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), path.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_handles_slashes() {
        assert_eq!(join("http://m/debian/", "/dists/x"), "http://m/debian/dists/x");
        assert_eq!(join("http://m/debian", "dists/x"), "http://m/debian/dists/x");
    }
}
