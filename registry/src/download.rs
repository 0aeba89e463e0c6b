//! Serving a stored blob, the one way for every face: `/v1/blobs/…`, the
//! static layout's object files and `/v2/<name>/blobs/…` all answer with
//! `Content-Length`, the digest (`X-Bpfarm-Digest`, `Docker-Content-Digest`),
//! the digest as a strong `ETag`, `If-None-Match` (304) and one byte
//! `Range` (206, or 416 with the size), streaming from the file.

use axum::body::Body;
use axum::http::header::InvalidHeaderValue;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bpfarm_object::Digest;
use http_range_header::parse_range_header;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::blobs::{BlobStore, Source};
use crate::error::Error;
use crate::hot::HotBlob;
use crate::metrics::Metrics;

/// Whether the body is sent (`GET`) or only its headers (`HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    Body,
    HeadersOnly,
}

// Built at compile time: a response clones them without allocating.
static X_BPFARM_DIGEST: HeaderName = HeaderName::from_static("x-bpfarm-digest");
static DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
static BYTES: HeaderValue = HeaderValue::from_static("bytes");
static OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// What a download's headers say about its blob.
struct Described {
    /// The digest as a strong entity tag.
    etag: HeaderValue,
    digest: HeaderValue,
    /// The whole blob's length.
    length: HeaderValue,
}

fn bad_header(e: InvalidHeaderValue) -> Error {
    Error::Store(std::io::Error::other(format!("building a response: {e}")))
}

impl Described {
    /// From the text the hot cache holds beside the blob: shared, not
    /// formatted or copied per download.
    fn cached(blob: &HotBlob) -> Result<Self, Error> {
        let value = |b: &bytes::Bytes| HeaderValue::from_maybe_shared(b.clone()).map_err(bad_header);
        Ok(Self { etag: value(blob.etag())?, digest: value(blob.digest())?, length: value(blob.length())? })
    }

    /// Formatted for a blob streamed from its file.
    fn formatted(digest: &Digest, size: u64) -> Result<Self, Error> {
        Ok(Self {
            etag: HeaderValue::try_from(format!("\"{digest}\"")).map_err(bad_header)?,
            digest: HeaderValue::from_str(digest.as_str()).map_err(bad_header)?,
            length: HeaderValue::from(size),
        })
    }

    /// A response carrying what every answer about the blob carries.
    fn respond(&self, status: StatusCode, body: Body) -> Response {
        let mut r = Response::new(body);
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.reserve(8);
        h.insert(header::ETAG, self.etag.clone());
        h.insert(&X_BPFARM_DIGEST, self.digest.clone());
        h.insert(&DOCKER_CONTENT_DIGEST, self.digest.clone());
        h.insert(header::ACCEPT_RANGES, BYTES.clone());
        h.insert(header::CONTENT_TYPE, OCTET_STREAM.clone());
        r
    }
}

/// Answers a request for blob `digest`. `Error::BlobMissing` when it is not
/// stored; `Error::Store` (a 500 on either face) when the store fails.
pub async fn serve(
    blobs: &BlobStore,
    metrics: &Metrics,
    digest: &Digest,
    headers: &HeaderMap,
    send: Send,
) -> Result<Response, Error> {
    let (source, size) = blobs.open_for_download(digest).await?;
    let described = match &source {
        Source::Memory(blob) => Described::cached(blob)?,
        Source::File(_) => Described::formatted(digest, size)?,
    };
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| t.trim().as_bytes() == described.etag.as_bytes() || t.trim() == "*")
    {
        return Ok(described.respond(StatusCode::NOT_MODIFIED, Body::empty()));
    }
    let (status, start, len) = match headers.get(header::RANGE) {
        None => (StatusCode::OK, 0, size),
        Some(r) => match r.to_str().ok().and_then(|r| one_range(r, size)) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                let mut resp = described.respond(StatusCode::RANGE_NOT_SATISFIABLE, Body::empty());
                let range = HeaderValue::try_from(format!("bytes */{size}")).map_err(bad_header)?;
                resp.headers_mut().insert(header::CONTENT_RANGE, range);
                return Ok(resp);
            }
        },
    };
    let mut resp = described.respond(status, Body::empty());
    let length = if status == StatusCode::OK { described.length } else { HeaderValue::from(len) };
    resp.headers_mut().insert(header::CONTENT_LENGTH, length);
    if status == StatusCode::PARTIAL_CONTENT {
        let range = HeaderValue::try_from(format!("bytes {start}-{}/{size}", start + len - 1)).map_err(bad_header)?;
        resp.headers_mut().insert(header::CONTENT_RANGE, range);
    }
    if send == Send::HeadersOnly {
        return Ok(resp);
    }
    metrics.served(len);
    *resp.body_mut() = match source {
        Source::Memory(blob) => Body::from(blob.bytes().slice(start as usize..(start + len) as usize)),
        Source::File(mut file) => {
            file.seek(std::io::SeekFrom::Start(start)).await.map_err(Error::Store)?;
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 << 10))
        }
    };
    Ok(resp)
}

/// The one byte range a `Range` header asks for within `size` bytes, as
/// first and last offsets (`bytes=a-b`, `bytes=a-`, `bytes=-n`; an end past
/// the blob is cut to it). `None` (a 416) for anything else: a malformed
/// header, another unit, several ranges, an empty blob.
pub fn one_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let ranges = parse_range_header(header).ok()?.validate(size).ok()?;
    match ranges.as_slice() {
        [r] => Some((*r.start(), *r.end())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::one_range as parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn edges_of_the_blob() {
        // A suffix longer than the blob selects all of it (RFC 9110 14.1.2).
        assert_eq!(parse_range("bytes=-500", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=99-99", 100), Some((99, 99)));
        assert_eq!(parse_range("bytes=-0", 100), None);
        // An empty blob has no byte to send.
        assert_eq!(parse_range("bytes=0-", 0), None);
        assert_eq!(parse_range("bytes=-5", 0), None);
        assert_eq!(parse_range("bytes=x-y", 100), None);
    }
}
