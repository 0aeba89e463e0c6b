//! Serving a stored blob, the one way for every face: `/v1/blobs/…`, the
//! static layout's object files and `/v2/<name>/blobs/…` all answer with
//! `Content-Length`, the digest (`X-Bpfarm-Digest`, `Docker-Content-Digest`),
//! the digest as a strong `ETag`, `If-None-Match` (304) and one byte
//! `Range` (206, or 416 with the size), streaming from the file.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bpfarm_object::Digest;
use http_range_header::parse_range_header;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::blobs::{BlobStore, Source};
use crate::error::Error;
use crate::metrics::Metrics;

/// Whether the body is sent (`GET`) or only its headers (`HEAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    Body,
    HeadersOnly,
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
    let etag = format!("\"{digest}\"");
    let common = |b: axum::http::response::Builder| {
        b.header(header::ETAG, &etag)
            .header("x-bpfarm-digest", digest.as_str())
            .header("docker-content-digest", digest.as_str())
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, "application/octet-stream")
    };
    let build = |b: axum::http::response::Builder, body: Body| {
        b.body(body).map_err(|e| Error::Store(std::io::Error::other(format!("building a response: {e}"))))
    };
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return build(common(Response::builder()).status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    let (status, start, len) = match headers.get(header::RANGE) {
        None => (StatusCode::OK, 0, size),
        Some(r) => match r.to_str().ok().and_then(|r| one_range(r, size)) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                return build(
                    common(Response::builder())
                        .status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .header(header::CONTENT_RANGE, format!("bytes */{size}")),
                    Body::empty(),
                );
            }
        },
    };
    let mut b = common(Response::builder()).status(status).header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    if send == Send::HeadersOnly {
        return build(b, Body::empty());
    }
    metrics.served(len);
    match source {
        Source::Memory(bytes) => build(b, Body::from(bytes.slice(start as usize..(start + len) as usize))),
        Source::File(mut file) => {
            file.seek(std::io::SeekFrom::Start(start)).await.map_err(Error::Store)?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 << 10);
            build(b, Body::from_stream(stream))
        }
    }
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
