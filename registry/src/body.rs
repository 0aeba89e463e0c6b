//! Request bodies: every body has a limit that fits its route, checked
//! against `Content-Length` before anything is read and again while
//! streaming, so nothing past the limit is ever buffered.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;

use crate::error::{BodyKind, Error};

/// The declared `Content-Length`, if any.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// Refuses a body whose declared length is over `limit`, before it is read.
pub fn check_declared(headers: &HeaderMap, what: BodyKind, limit: u64) -> Result<(), Error> {
    match content_length(headers) {
        Some(n) if n > limit => Err(Error::TooLarge { what, limit }),
        _ => Ok(()),
    }
}

/// A whole small body, refused with `TooLarge` as soon as its declared or
/// received length passes `limit`.
pub async fn read_limited(body: Body, headers: &HeaderMap, what: BodyKind, limit: u64) -> Result<bytes::Bytes, Error> {
    check_declared(headers, what, limit)?;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Body(e.to_string()))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(Error::TooLarge { what, limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
