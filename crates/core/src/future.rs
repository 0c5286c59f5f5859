//! The response future shared by the layers that hold capacity per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::BoxError;
use crate::error::polled_after_completion;

pin_project! {
    /// The inner service's response future plus the guard that holds the
    /// call's capacity, or a refusal made before the inner service was called,
    /// or (`D`, the rate limit's) a call that waits before it is made.
    ///
    /// The guard is dropped as soon as the inner future completes, and with
    /// the future if the caller drops it first: capacity never leaks.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F, G, D = Never> {
        #[pin]
        kind: Kind<F, G, D>,
    }
}

/// A call made later, by the response future: it waits, then calls the
/// inner service, giving its response future and guard.
pub(crate) trait Deferred<F, G> {
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<Result<(F, G), BoxError>>;
}

/// The [`Deferred`] of layers that never defer a call: no value exists, so
/// the variant holding it takes no room.
#[derive(Debug)]
pub enum Never {}

impl<F, G> Deferred<F, G> for Never {
    fn poll_call(&mut self, _: &mut Context<'_>) -> Poll<Result<(F, G), BoxError>> {
        match *self {}
    }
}

pin_project! {
    // `Called` holds the guard itself, not an `Option`: finishing replaces the
    // whole variant with `Done`, which drops the guard just as early. With no
    // flag of its own, a zero-sized guard (the rate limit's) adds no byte, and
    // `Refused` keeps its error behind one thin pointer, so the enum can
    // usually hide its tag in a niche of the inner future. A separate tag
    // byte cost about 8 ns a call in the benches (a narrow store read back
    // wide when the caller moves the future).
    //
    // A deferred call shares the refusal's box (`Cold`): a second variant
    // with a pointer of its own cost the rate limit its niche (a tag byte,
    // +14 ns a call in the benches).
    #[project = KindProj]
    #[project_replace = KindReplace]
    #[derive(Debug)]
    enum Kind<F, G, D> {
        Called { #[pin] future: F, guard: G },
        Cold { cold: Box<Cold<D>> },
        Done,
    }
}

/// The rare states of a [`ResponseFuture`], behind one thin pointer.
#[derive(Debug)]
pub(crate) enum Cold<D> {
    /// Refused before the inner service was called.
    Refused(BoxError),
    /// A call made later, by the response future (only the rate limit
    /// defers calls).
    #[cfg_attr(not(feature = "rate"), allow(dead_code))]
    Deferred(D),
}

impl<F, G, D> ResponseFuture<F, G, D> {
    #[inline]
    pub(crate) fn called(future: F, guard: G) -> Self {
        Self {
            kind: Kind::Called { future, guard },
        }
    }

    /// A refusal or a deferred call boxed by the caller (typically in a cold
    /// path that returns just the thin pointer), so building the future
    /// inlines to two stores.
    #[inline]
    pub(crate) fn cold(cold: Box<Cold<D>>) -> Self {
        Self {
            kind: Kind::Cold { cold },
        }
    }
}

impl<F, G, D, T, E> Future for ResponseFuture<F, G, D>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    D: Deferred<F, G>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        match kind.as_mut().project() {
            KindProj::Called { .. } => poll_called(kind, cx),
            KindProj::Cold { .. } => poll_cold(kind, cx),
            KindProj::Done => Poll::Ready(Err(polled_after_completion())),
        }
    }
}

/// Polls the inner future of a `Called` future.
#[inline(always)]
fn poll_called<F, G, D, T, E>(
    mut kind: Pin<&mut Kind<F, G, D>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let KindProj::Called { future, .. } = kind.as_mut().project() else {
        return Poll::Ready(Err(polled_after_completion()));
    };
    let output = ready!(future.poll(cx));
    // Free the capacity as soon as the answer is in, not when the caller
    // gets round to dropping this future. Moving the guard out (rather than
    // `set`, which calls the whole enum's drop glue) lets its drop inline.
    if let KindReplace::Called { guard, .. } = kind.project_replace(Kind::Done) {
        drop(guard);
    }
    Poll::Ready(output.map_err(Into::into))
}

/// A refusal's answer, or a deferred call started and polled; out of line,
/// so that the common path of `poll` stays small enough to inline.
#[cold]
#[inline(never)]
fn poll_cold<F, G, D, T, E>(
    mut kind: Pin<&mut Kind<F, G, D>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    D: Deferred<F, G>,
{
    if let KindProj::Cold { cold } = kind.as_mut().project()
        && let Cold::Deferred(call) = &mut **cold
    {
        return match ready!(call.poll_call(cx)) {
            Ok((future, guard)) => {
                kind.set(Kind::Called { future, guard });
                poll_called(kind, cx)
            }
            Err(error) => {
                kind.set(Kind::Done);
                Poll::Ready(Err(error))
            }
        };
    }
    match kind.project_replace(Kind::Done) {
        KindReplace::Cold { cold } => match *cold {
            Cold::Refused(error) => Poll::Ready(Err(error)),
            Cold::Deferred(_) => Poll::Ready(Err(polled_after_completion())),
        },
        _ => Poll::Ready(Err(polled_after_completion())),
    }
}
