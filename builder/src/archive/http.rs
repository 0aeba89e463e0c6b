//! The blocking HTTP client `discover` and `fetch` share: reqwest with
//! rustls (the stack `oci-client` already brings), bounded bodies, and
//! 404/410 answered as "absent" rather than as an error. Plain `http://`
//! is accepted because what crosses it is checked: indices against the
//! signed `InRelease`, packages against the matrix's sha256.

use std::io::{self, Read};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_RANGE, RANGE};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {source}")]
    Client {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the body is larger than the {limit} bytes expected")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: reading the body: {source}")]
    Body {
        url: String,
        #[source]
        source: io::Error,
    },
}

/// The shared client (cheap to clone, safe to use from many threads).
#[derive(Debug, Clone)]
pub struct Http {
    client: Client,
}

/// An open response body.
#[derive(Debug)]
pub struct Body {
    /// The server answered a range request with the range (206): the body
    /// continues from the requested offset.
    pub resumed: bool,
    /// `Content-Length`, when sent.
    pub length: Option<u64>,
    response: Response,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.response.read(buf)
    }
}

/// `root` + `/` + `path`, whatever slashes either brings.
pub fn join(root: &str, path: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), path.trim_start_matches('/'))
}

impl Http {
    pub fn new() -> Result<Self, HttpError> {
        let client = Client::builder()
            .user_agent(concat!("bpfarm-builder/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Per read/write operation, so a large download is not cut off.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| HttpError::Client { url: String::new(), source })?;
        Ok(Self { client })
    }

    /// GETs `url`, from byte `offset` when it is not 0 (a `Range` request;
    /// `Body::resumed` says whether the server honoured it). `Ok(None)` when
    /// the server says the file is not there (404, 410).
    pub fn open(&self, url: &str, offset: u64) -> Result<Option<Body>, HttpError> {
        let mut req = self.client.get(url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let response = req.send().map_err(|source| HttpError::Client { url: url.to_owned(), source })?;
        let status = response.status();
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(HttpError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let resumed = offset > 0
            && status == StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {offset}-")));
        if offset > 0 && status == StatusCode::PARTIAL_CONTENT && !resumed {
            // A range we did not ask for: refuse rather than splice bytes.
            return Err(HttpError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let length = response.content_length();
        Ok(Some(Body { resumed, length, response }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_handles_slashes() {
        assert_eq!(join("http://m/debian/", "/dists/x"), "http://m/debian/dists/x");
        assert_eq!(join("http://m/debian", "dists/x"), "http://m/debian/dists/x");
    }
}
