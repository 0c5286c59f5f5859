//! Bounded body collection: the cap on response bodies, and the bound on
//! request bodies kept for replay.

use std::fmt;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

use crate::BoxError;

/// The response body was larger than the cap; reading stopped at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    limit: usize,
}

impl BodyTooLarge {
    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "response body exceeds the cap of {} bytes; raise `max_response_body` if this is expected",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// The request body was larger than the bound for bodies kept for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBodyTooLarge {
    limit: usize,
}

impl RequestBodyTooLarge {
    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for RequestBodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request body exceeds {} bytes, the bound for bodies kept for retries and redirects; raise `max_request_body`",
            self.limit
        )
    }
}

impl std::error::Error for RequestBodyTooLarge {}

/// Reading a body failed part-way (a reset, a truncated or corrupt encoding).
#[derive(Debug)]
pub(crate) struct ReadBody(pub(crate) BoxError);

impl fmt::Display for ReadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading the body failed: {}", self.0)
    }
}

impl std::error::Error for ReadBody {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Which cap a collection is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cap {
    Response(usize),
    Request(usize),
}

impl Cap {
    fn limit(self) -> usize {
        match self {
            Cap::Response(n) | Cap::Request(n) => n,
        }
    }

    fn exceeded(self) -> BoxError {
        match self {
            Cap::Response(limit) => BodyTooLarge { limit }.into(),
            Cap::Request(limit) => RequestBodyTooLarge { limit }.into(),
        }
    }
}

/// Reads `body` into one buffer, failing as soon as it passes the cap
/// (before reading at all when the size hint already says so).
pub(crate) async fn collect<B>(body: B, cap: Cap) -> Result<Bytes, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let limit = cap.limit();
    let hint = body.size_hint();
    if usize::try_from(hint.lower()).map_or(true, |n| n > limit) {
        return Err(cap.exceeded());
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BoxError::from(ReadBody(e.into())))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        let have = first.as_ref().map_or(0, |b| b.len()) + buf.len();
        if have.saturating_add(bytes::Buf::remaining(&data)) > limit {
            return Err(cap.exceeded());
        }
        let len = bytes::Buf::remaining(&data);
        let chunk = bytes::Buf::copy_to_bytes(&mut data, len);
        // One chunk (the common case for small bodies) is passed on without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            Some(prev) => {
                buf.extend_from_slice(&prev);
                buf.extend_from_slice(&chunk);
            }
            None => buf.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
