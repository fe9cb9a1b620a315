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

/// Marks a request that a [`KeywardService`] has already judged.
#[derive(Clone, Copy)]
struct Judged;

impl<S> tower::Service<Request> for KeywardService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The service that was made ready answers this request; a fresh clone waits for the
        // next (tower's rule for services called from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.extensions().get::<Judged>().is_some() {
            return Box::pin(inner.call(req));
        }
        let kw = self.kw.clone();
        req.extensions_mut().insert(Judged);
        req.extensions_mut().insert(kw.clone());
        Box::pin(async move {
            let timing = crate::metrics::start(&req);
            let refusal = crate::guard::cross_site_refusal(
                &kw,
                req.method(),
                req.uri().path(),
                req.headers(),
            );
            let mut res = match refusal {
                Some(why) => {
                    let peer = req
                        .extensions()
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                        .map(|c| kw.resolve_client(c.0.ip(), req.headers()));
                    tracing::info!(target: keyward_core::AUDIT, event = "cross_site_refused", method = %req.method(), path = %req.uri().path(), ip = %keyward_core::auth::show_ip(peer));
                    ApiError::Forbidden(why).into_response()
                }
                None => match inner.call(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                },
            };
            crate::guard::security_headers(&mut res);
            crate::metrics::finish(timing, &res);
            Ok(res)
        })
    }
}
