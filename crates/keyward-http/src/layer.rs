//! The one layer every keyward request passes, and an embedding app's routes too.

use crate::error::ApiError;
use crate::Keyward;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A [`tower::Layer`] that puts keyward in front of the routes it wraps: it makes the
/// extractors ([`crate::CurrentSession`], [`crate::Principal`], [`crate::AuthSession`]…) work,
/// refuses cross-site unsafe requests that carry the session cookie (or post a form) before
/// any handler runs, puts the security headers on every response, and counts and times
/// requests by route in the `metrics` facade.
///
/// Applied twice (an app's layer around routers that carry their own), the inner one sees
/// the request already judged and only passes it on.
#[derive(Clone, Debug)]
pub struct KeywardLayer {
    kw: Keyward,
}

impl KeywardLayer {
    pub(crate) fn new(kw: Keyward) -> Self {
        Self { kw }
    }
}

impl<S> tower::Layer<S> for KeywardLayer {
    type Service = KeywardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeywardService {
            kw: self.kw.clone(),
            inner,
        }
    }
}

/// The service of a [`KeywardLayer`].
#[derive(Clone, Debug)]
pub struct KeywardService<S> {
    kw: Keyward,
    inner: S,
}

/// Put on a request by the [`KeywardService`] that judged it: the services for the
/// extractors, and the mark that an inner layer (an app's layer around keyward's routers)
/// passes the request on unjudged. Private, so that nothing else can claim it was judged.
#[derive(Clone)]
pub(crate) struct Judged(pub(crate) Keyward);

impl<S> tower::Service<Request> for KeywardService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The service that was made ready answers this request; a fresh clone waits for the
        // next (tower's rule for services called from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.extensions().get::<Judged>().is_some() {
            return ResponseFuture {
                state: State::Inner {
                    future: inner.call(req),
                },
                edge: None,
            };
        }
        let kw = &self.kw;
        // Everything the guard needs is in the head: a refusal is answered without running
        // the route at all.
        let timing = crate::metrics::start(&req);
        let refusal =
            crate::guard::cross_site_refusal(kw, req.method(), req.uri().path(), req.headers());
        let state = match refusal {
            Some(why) => {
                let peer = req
                    .extensions()
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| kw.resolve_client(c.0.ip(), req.headers()));
                tracing::info!(target: keyward_core::AUDIT, event = "cross_site_refused", method = %req.method(), path = %req.uri().path(), ip = %keyward_core::auth::show_ip(peer));
                State::Refused {
                    response: Some(ApiError::Forbidden(why).into_response()),
                }
            }
            None => {
                req.extensions_mut().insert(Judged(kw.clone()));
                State::Inner {
                    future: inner.call(req),
                }
            }
        };
        ResponseFuture {
            state,
            edge: Some(timing),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`KeywardService`]: the route's (or the guard's refusal), with the
    /// security headers on and the request counted and timed.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        // `None` when an outer layer judged the request and does the edge's work.
        edge: Option<crate::metrics::Timing>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.state.project() {
            StateProj::Inner { future } => match std::task::ready!(future.poll(cx)) {
                Ok(res) => res,
                Err(never) => match never {},
            },
            StateProj::Refused { response } => response
                .take()
                .unwrap_or_else(|| ApiError::internal("response polled twice").into_response()),
        };
        if let Some(timing) = this.edge.take() {
            crate::guard::security_headers(&mut res);
            crate::metrics::finish(timing, &res);
        }
        Poll::Ready(Ok(res))
    }
}
