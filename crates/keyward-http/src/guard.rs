//! Middleware: the cross-site refusal and the security headers every response carries.

use crate::error::ApiError;
use crate::extract::{bearer_token, session_cookie, CookieToken};
use crate::Keyward;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/x-www-form-urlencoded")
                || v.starts_with("multipart/form-data")
                || v.starts_with("text/plain")
        })
}

/// Why a request is refused as cross-site, if it is.
pub(crate) fn cross_site_refusal(
    kw: &Keyward,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<String> {
    let cookie = !matches!(
        session_cookie(headers, kw.cookie_name()),
        CookieToken::Absent
    );
    // Bearer requests carry no ambient credential, but a bearer header exempts only requests
    // without a session cookie (a cookie-only route must not skip the check because a header
    // was added); the token endpoints take no cookie; verify only reports who the caller is.
    if !is_unsafe(method)
        || (bearer_token(headers).is_some() && !cookie)
        || path == "/v1/verify"
        || path.starts_with("/v1/token")
    {
        return None;
    }
    // Cookie-authenticated requests, and form posts (which browsers send cross-site without
    // asking: login CSRF), are the ones a browser can be tricked into sending.
    if !cookie && !is_form(headers) {
        return None;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Some("cross-site request refused (Sec-Fetch-Site: cross-site)".into());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| kw.origin_allowed(o));
        if !allowed {
            return Some("cross-site request refused: Origin is not allowed".into());
        }
    }
    None
}

/// The one middleware every request passes (one layer, not three: each `from_fn` layer clones
/// the inner service and boxes a future per request): time and count it by route, refuse
/// cross-site unsafe requests before any handler runs (so they change nothing), and put the
/// security headers on whatever answers.
pub(crate) async fn edge(State(kw): State<Keyward>, req: Request, next: Next) -> Response {
    let timing = crate::metrics::start(&req);
    let mut res = match cross_site_refusal(&kw, req.method(), req.uri().path(), req.headers()) {
        Some(why) => {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| kw.resolve_client(c.0.ip(), req.headers()));
            tracing::info!(target: keyward_core::AUDIT, event = "cross_site_refused", method = %req.method(), path = %req.uri().path(), ip = %keyward_core::auth::show_ip(peer));
            ApiError::Forbidden(why).into_response()
        }
        None => next.run(req).await,
    };
    security_headers(&mut res);
    crate::metrics::finish(timing, &res);
    res
}

/// Headers on every response: nothing is cached (responses carry sessions and user data), no
/// sniffing, no framing, no referrer leaks.
fn security_headers(res: &mut Response) {
    let h = res.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}
