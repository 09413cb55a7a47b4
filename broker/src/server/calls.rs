//! The calls in flight on one connection, counted as they start and end, so
//! that the connection knows whether its first call has come and when it
//! fell idle.
//!
//! A call starts when its request headers reach the services and ends when
//! its response body is finished or dropped (a call the client cancels
//! included), so an open subscription, whose body is a stream, is a call in
//! flight for as long as it lasts. The count lives in a `watch` channel: the
//! connection's task waits on its changes instead of polling it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tower::Service;

/// What a connection's calls are doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Calls {
    /// Calls started and not yet ended.
    pub(super) in_flight: usize,
    /// Whether any call has started on the connection.
    pub(super) started: bool,
}

/// `services` counting their calls, and a receiver of the count.
pub(super) fn track<S>(services: S) -> (Tracked<S>, watch::Receiver<Calls>) {
    let (calls, receiver) = watch::channel(Calls::default());
    let tracked = Tracked {
        inner: services,
        calls: Arc::new(calls),
    };
    (tracked, receiver)
}

/// Services whose calls are counted on their connection's channel.
#[derive(Debug, Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    calls: Arc<watch::Sender<Calls>>,
}

impl<S, Request, B> Service<Request> for Tracked<S>
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let call = Call::start(Arc::clone(&self.calls));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody { body, _call: call }))
        })
    }
}

/// One call in flight; it ends when dropped.
#[derive(Debug)]
struct Call(Arc<watch::Sender<Calls>>);

impl Call {
    fn start(calls: Arc<watch::Sender<Calls>>) -> Call {
        calls.send_modify(|calls| {
            calls.in_flight += 1;
            calls.started = true;
        });
        Call(calls)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0.send_modify(|calls| calls.in_flight -= 1);
    }
}

/// A response body that holds its call in flight until it is dropped.
#[derive(Debug)]
pub(super) struct CountedBody<B> {
    body: B,
    _call: Call,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
