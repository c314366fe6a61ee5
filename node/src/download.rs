//! A blob's bytes as an HTTP answer, for every route that serves them (the owner API,
//! a view's blobs, the dashboard's downloads): streamed chunk by chunk, typed from the
//! blob's listing, and never runnable as a page of the node's origin.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hearth_protocol::BlobId;
use hearth_protocol::api::ErrorCode;
use std::sync::Arc;

use crate::Vault;
use crate::blobs::BlobError;
use crate::owner::{Error, blocking};
/// `Content-Disposition` of a blob answer: shown in place (the API, with the blob's
/// name if it has one) or always a download (the dashboard: never a page of its origin).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Inline,
    Attachment,
}

/// What part of a blob a request asks for (RFC 9110 §14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// `start..=end`, within the blob.
    Range(u64, u64),
    /// A range that starts past the end: 416.
    Unsatisfiable,
}

/// The strong ETag of a blob's bytes: 128 bits of its id (as for DAV objects), short
/// enough for clients that keep an `If` header in a small buffer (litmus: 200 bytes).
pub fn etag_of(blob_id: &str) -> String {
    format!("\"{}\"", blob_id.get(..32).unwrap_or(blob_id))
}

/// The part `headers` ask of a blob of `size` bytes whose ETag is `etag`. One range
/// (`bytes=A-B`, `bytes=A-`, `bytes=-N`) is served; a request for several, a Range
/// that cannot be read, or an `If-Range` that names another version gets the whole
/// blob (RFC 9110 lets a server ignore a Range).
pub fn part_of(headers: &HeaderMap, size: u64, etag: &str) -> Part {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Part::Whole;
    };
    if let Some(condition) = headers.get(header::IF_RANGE)
        && condition.to_str().ok().map(str::trim) != Some(etag)
    {
        return Part::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Part::Whole;
    };
    if spec.contains(',') {
        return Part::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Part::Whole;
    };
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) if n > 0 => {
            if size == 0 {
                Part::Unsatisfiable
            } else {
                Part::Range(size.saturating_sub(n), size - 1)
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|end| end < start) {
                return Part::Whole;
            }
            if start >= size {
                return Part::Unsatisfiable;
            }
            Part::Range(start, end.map_or(size - 1, |end| end.min(size - 1)))
        }
        (true, _, Some(_)) => Part::Unsatisfiable,
        _ => Part::Whole,
    }
}

/// A blob's bytes as a streamed answer (also the dashboard's downloads), or the part
/// the request's `Range` asks for (206). Its strong ETag is [`etag_of`] its id: a blob's
/// bytes never change.
pub async fn blob_response(
    vault: &Arc<Vault>,
    id: &str,
    disposition: Disposition,
    request: &HeaderMap,
) -> Result<Response, Error> {
    bytes_response(vault, id, disposition, request, None).await
}

/// The name and type a file gives its bytes (a blob's own listing names it else).
#[derive(Debug, Clone, Default)]
pub struct Shown {
    pub name: Option<String>,
    pub content_type: Option<String>,
}

/// [`blob_response`], named and typed as `shown` says (a file of the `files`
/// collection) rather than as the blob's listing.
pub async fn bytes_response(
    vault: &Arc<Vault>,
    id: &str,
    disposition: Disposition,
    request: &HeaderMap,
    shown: Option<Shown>,
) -> Result<Response, Error> {
    let id = BlobId::parse(id).map_err(|e| Error::new(ErrorCode::InvalidBlobId, e.to_string()))?;
    let mut reader = match vault.blobs.open_blob(id) {
        Ok(reader) => reader,
        Err(BlobError::NotFound(_)) => {
            let listed = blocking(vault, move |v| {
                Ok(v.blobs.arriving_one(&v.collections, id)?)
            })
            .await?;
            return Err(match listed {
                Some(a) => Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "blob {id} is still arriving from another device of the vault ({} of {} bytes here)",
                        a.received, a.size
                    ),
                ),
                None => BlobError::NotFound(id).into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let size = reader.size();
    let etag = etag_of(&id.to_string());
    let part = part_of(request, size, &etag);
    if part == Part::Unsatisfiable {
        let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        return Ok(response);
    }
    let none_match = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "*" || v.split(',').any(|t| t.trim() == etag));
    if none_match {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        return Ok(response);
    }
    if let Part::Range(start, end) = part {
        reader.seek(start, end - start + 1);
    }
    let shown = match shown {
        Some(shown) => shown,
        None => {
            let listing = blocking(vault, move |v| {
                Ok(crate::blobs::listing(&v.collections, &id)?)
            })
            .await?;
            Shown {
                name: listing.as_ref().and_then(|l| l.name.clone()),
                content_type: listing.and_then(|l| l.content_type),
            }
        }
    };
    // The first chunk is read before answering, so a corrupt blob gets an error
    // status, not a 200 that breaks off. A later bad chunk aborts the transfer.
    let first = match reader.next_chunk().await {
        Some(chunk) => Some(chunk?),
        None => None,
    };
    let rest = reader.into_stream().map(|chunk| {
        chunk.map_err(|e| {
            tracing::error!(error = %e, "blob read failed mid-transfer; aborting it");
            std::io::Error::other(e.to_string())
        })
    });
    let stream = futures::stream::iter(first.map(Ok::<Bytes, std::io::Error>)).chain(rest);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    let content_type = shown
        .content_type
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    match part {
        Part::Range(start, end) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                headers.insert(header::CONTENT_RANGE, value);
            }
        }
        _ => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    // Whatever the type, a browser must not run it as a page of this origin.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    let name = shown.name;
    let value = match (disposition, name) {
        (Disposition::Inline, Some(name)) => Some(content_disposition("inline", &name)),
        (Disposition::Inline, None) => None,
        (Disposition::Attachment, name) => Some(content_disposition(
            "attachment",
            &name.unwrap_or_else(|| id.to_string()),
        )),
    };
    if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if matches!(part, Part::Range(..)) {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// `inline; filename*=UTF-8''…` (RFC 6266, 8187): any name, safely quoted.
pub fn content_disposition(kind: &str, name: &str) -> String {
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    format!(
        "{kind}; filename*=UTF-8''{}",
        percent_encoding::utf8_percent_encode(name, ATTR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(range: &str, if_range: Option<&str>, size: u64) -> Part {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        if let Some(tag) = if_range {
            headers.insert(header::IF_RANGE, HeaderValue::from_str(tag).unwrap());
        }
        part_of(&headers, size, "\"tag\"")
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(part_of(&HeaderMap::new(), 10, "\"tag\""), Part::Whole);
        assert_eq!(part("bytes=0-0", None, 10), Part::Range(0, 0));
        assert_eq!(part("bytes=2-5", None, 10), Part::Range(2, 5));
        assert_eq!(part("bytes=2-", None, 10), Part::Range(2, 9));
        assert_eq!(part("bytes=2-500", None, 10), Part::Range(2, 9));
        assert_eq!(part("bytes=-3", None, 10), Part::Range(7, 9));
        assert_eq!(part("bytes=-30", None, 10), Part::Range(0, 9));
        assert_eq!(part("bytes=10-", None, 10), Part::Unsatisfiable);
        assert_eq!(part("bytes=-5", None, 0), Part::Unsatisfiable);
        assert_eq!(part("bytes=-0", None, 10), Part::Unsatisfiable);
        // Ignored: several ranges, other units, nonsense, a reversed range.
        for ignored in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(part(ignored, None, 10), Part::Whole, "{ignored}");
        }
        // If-Range: the part only of the version named.
        assert_eq!(part("bytes=2-5", Some("\"tag\""), 10), Part::Range(2, 5));
        assert_eq!(part("bytes=2-5", Some("\"other\""), 10), Part::Whole);
    }
}
