//! Bounded body collection: the cap on response bodies, and the bound on
//! request bodies kept for replay.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::BoxError;

/// The response body was larger than the cap; reading stopped at the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    limit: usize,
    status: Option<http::StatusCode>,
}

impl BodyTooLarge {
    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The status of the response whose body passed the cap (the head
    /// arrived; only its body was refused), when the client's attempt
    /// read it.
    pub fn status(&self) -> Option<http::StatusCode> {
        self.status
    }

    /// The same error, for a response with `status`.
    pub(crate) fn with_status(mut self, status: http::StatusCode) -> Self {
        self.status = Some(status);
        self
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
            Cap::Response(limit) => BodyTooLarge {
                limit,
                status: None,
            }
            .into(),
            Cap::Request(limit) => RequestBodyTooLarge { limit }.into(),
        }
    }
}

/// Reads `body` into one buffer, failing as soon as it passes the cap
/// (before reading at all when the size hint already says so).
pub(crate) fn collect<B>(body: B, cap: Cap) -> Collect<B> {
    Collect {
        body,
        cap,
        checked: false,
        first: None,
        buf: BytesMut::new(),
    }
}

pin_project! {
    /// The future of [`collect`].
    pub(crate) struct Collect<B> {
        #[pin]
        body: B,
        cap: Cap,
        checked: bool,
        first: Option<Bytes>,
        buf: BytesMut,
    }
}

impl<B> Future for Collect<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Bytes, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let cap = *this.cap;
        let limit = cap.limit();
        if !*this.checked {
            *this.checked = true;
            let hint = this.body.size_hint();
            if usize::try_from(hint.lower()).map_or(true, |n| n > limit) {
                return Poll::Ready(Err(cap.exceeded()));
            }
        }
        while let Some(frame) = ready!(this.body.as_mut().poll_frame(cx)) {
            let frame = frame.map_err(|e| BoxError::from(ReadBody(e.into())))?;
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers
            };
            let have = this.first.as_ref().map_or(0, |b| b.len()) + this.buf.len();
            if have.saturating_add(bytes::Buf::remaining(&data)) > limit {
                return Poll::Ready(Err(cap.exceeded()));
            }
            let len = bytes::Buf::remaining(&data);
            let chunk = bytes::Buf::copy_to_bytes(&mut data, len);
            // One chunk (the common case for small bodies) is passed on without a copy.
            match this.first.take() {
                None if this.buf.is_empty() => *this.first = Some(chunk),
                Some(prev) => {
                    this.buf.extend_from_slice(&prev);
                    this.buf.extend_from_slice(&chunk);
                }
                None => this.buf.extend_from_slice(&chunk),
            }
        }
        Poll::Ready(Ok(this
            .first
            .take()
            .unwrap_or_else(|| std::mem::take(this.buf).freeze())))
    }
}
