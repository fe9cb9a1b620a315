//! Middleware: the cross-site refusal and the security headers every response carries.

use crate::extract::{bearer_token, session_cookie, CookieToken};
use crate::Keyward;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;

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
    if !is_unsafe(method) {
        return None;
    }
    let cookie = !matches!(
        session_cookie(headers, kw.cookie_name()),
        CookieToken::Absent
    );
    // Bearer requests carry no ambient credential, but a bearer header exempts only requests
    // without a session cookie (a cookie-only route must not skip the check because a header
    // was added); the token endpoints take no cookie; verify only reports who the caller is.
    // An authorization request may come as a form post from the client's site (OpenID
    // Connect Core §3.1.2.1); like the same request sent with GET, it changes nothing but
    // sends a code to the client's registered redirect URI. The consent answer
    // (`/oauth/consent`) is judged like any form.
    if (bearer_token(headers).is_some() && !cookie)
        || path == "/v1/verify"
        || path.starts_with("/v1/token")
        || path == "/oauth/authorize"
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

/// The policy of pages and anything else a browser may render: only keyward's own
/// stylesheet and images, forms posted back to keyward, never framed.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The policy of JSON responses, which are never rendered (OWASP's REST headers).
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// Headers on every response: nothing is cached (responses carry sessions and user data), no
/// sniffing, no framing. JSON answers get OWASP's REST set; everything else (pages,
/// redirects, an app's own responses) also a full policy and no referrer leaks.
pub(crate) fn security_headers(res: &mut Response) {
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| crate::extract::is_json_type(ct.as_bytes()));
    let h = res.headers_mut();
    h.reserve(5);
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if json {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_POLICY),
        );
    } else {
        // A page whose URL carries a secret (a mailed link) sets `no-referrer` itself.
        h.entry(header::REFERRER_POLICY)
            .or_insert(HeaderValue::from_static("same-origin"));
        // A page whose form leads on to an OAuth client sets a wider `form-action` itself
        // (`page_policy_with_form_target`).
        h.entry(header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(PAGE_POLICY));
    }
}

/// The page policy, with `form-action` also allowing `source`: browsers hold a form's whole
/// redirect chain to `form-action`, so a sign-in, consent or sign-out form that ends at an
/// OAuth client's redirect URI must name the client's origin.
pub(crate) fn page_policy_with_form_target(source: &str) -> Option<HeaderValue> {
    let policy = PAGE_POLICY.replace(
        "form-action 'self'",
        &format!("form-action 'self' {source}"),
    );
    HeaderValue::from_str(&policy).ok()
}
