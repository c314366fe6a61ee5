//! A blob's bytes as an HTTP answer, for every route that serves them (the owner API,
//! a view's blobs, the dashboard's downloads): streamed chunk by chunk, typed from the
//! blob's listing, and never runnable as a page of the node's origin.

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hearth_protocol::BlobId;
use hearth_protocol::api::ErrorCode;
use std::sync::Arc;

use crate::Vault;
use crate::blobs::BlobError;
use crate::owner::{Error, blocking};
/// A blob's bytes as a streamed answer (also the dashboard's downloads).
/// `Content-Disposition` of a blob answer: shown in place (the API, with the blob's
/// name if it has one) or always a download (the dashboard: never a page of its origin).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Inline,
    Attachment,
}

pub async fn blob_response(
    vault: &Arc<Vault>,
    id: &str,
    disposition: Disposition,
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
    let listing = blocking(vault, move |v| {
        Ok(crate::blobs::listing(&v.collections, &id)?)
    })
    .await?;
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
    let content_type = listing
        .as_ref()
        .and_then(|l| l.content_type.as_deref())
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    // Whatever the type, a browser must not run it as a page of this origin.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    let name = listing.as_ref().and_then(|l| l.name.clone());
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
