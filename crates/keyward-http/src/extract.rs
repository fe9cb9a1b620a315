//! Extractors: the session cookie, the current session, the client address, and request
//! bodies that may be JSON or an HTML form.

use crate::error::ApiError;
use crate::Keyward;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use cookie::Cookie;
use keyward_core::{SessionRecord, SessionToken};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};

/// What the `Cookie` headers say about the session cookie.
#[derive(Debug)]
pub enum CookieToken {
    /// Not sent.
    Absent,
    /// Sent once with this value (which may not even have the shape of a token).
    Present(String),
    /// Sent more than once: refused rather than guessed at.
    Duplicated,
}

/// Find the session cookie among the request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap, name: &str) -> CookieToken {
    let mut found: Option<String> = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for cookie in Cookie::split_parse(text).flatten() {
            if cookie.name() == name {
                if found.is_some() {
                    return CookieToken::Duplicated;
                }
                found = Some(cookie.value().to_owned());
            }
        }
    }
    found.map_or(CookieToken::Absent, CookieToken::Present)
}

pub(crate) fn keyward_from(parts: &Parts) -> Result<Keyward, ApiError> {
    parts
        .extensions
        .get::<crate::layer::Judged>()
        .map(|judged| judged.0.clone())
        .ok_or_else(|| ApiError::internal("the keyward layer is not installed"))
}

/// The device cookie the request carries, if it has the shape of one. Sent twice, it is
/// ignored: it only ever spares a known device from the account's lockout.
pub fn device_cookie(headers: &HeaderMap) -> Option<keyward_core::DeviceCookie> {
    match session_cookie(headers, DEVICE_COOKIE_NAME) {
        CookieToken::Present(raw) => keyward_core::DeviceCookie::parse(&raw),
        CookieToken::Absent | CookieToken::Duplicated => None,
    }
}

/// The hash of the session token the request carries, whether or not it is a live session.
pub fn presented_session(
    headers: &HeaderMap,
    cookie_name: &str,
) -> Option<keyward_core::TokenHash> {
    match session_cookie(headers, cookie_name) {
        CookieToken::Present(raw) => SessionToken::parse(&raw).map(|t| t.hash()),
        CookieToken::Absent | CookieToken::Duplicated => None,
    }
}

/// The device cookie's name.
pub const DEVICE_COOKIE_NAME: &str = "keyward_device";

/// The validated session of the request's cookie, with the token it was found by.
/// Rejects with 401 (no or invalid cookie), 400 (cookie sent twice) or 503 (store down).
#[derive(Debug, Clone)]
pub struct CurrentSession {
    /// The session.
    pub session: SessionRecord,
    /// The token it was presented with.
    pub token: SessionToken,
}

impl CurrentSession {
    pub(crate) async fn resolve(parts: &Parts) -> Result<Option<Self>, ApiError> {
        let kw = keyward_from(parts)?;
        let raw = match session_cookie(&parts.headers, kw.cookie_name()) {
            CookieToken::Absent => return Ok(None),
            CookieToken::Duplicated => {
                return Err(ApiError::BadRequest(format!(
                    "the {} cookie was sent more than once",
                    kw.cookie_name()
                )))
            }
            CookieToken::Present(raw) => raw,
        };
        let Some(token) = SessionToken::parse(&raw) else {
            return Ok(None);
        };
        let session = kw.auth().authenticate(&token).await?;
        Ok(session.map(|session| Self { session, token }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::resolve(parts).await?.ok_or(ApiError::Unauthorized)
    }
}

/// Like [`CurrentSession`] but `None` instead of 401 (pages use it). Still 400 or 503.
#[derive(Debug, Clone)]
pub struct MaybeSession(pub Option<CurrentSession>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(CurrentSession::resolve(parts).await?))
    }
}

/// Who is calling: a user signed in with the session cookie, or holding a bearer access token.
/// A request with `Authorization: Bearer` is judged by the token alone (401 with
/// `error="invalid_token"` when it is not valid); otherwise by the cookie.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Cookie session.
    Session(CurrentSession),
    /// Bearer access token.
    Bearer(keyward_token::AccessClaims),
}

impl Principal {
    /// The user's id.
    pub fn user_id(&self) -> String {
        match self {
            Self::Session(s) => s.session.user_id.to_string(),
            Self::Bearer(c) => c.sub.clone(),
        }
    }

    /// The user's id, typed; `None` only for a bearer token whose `sub` is not one of ours.
    pub fn user(&self) -> Option<keyward_core::UserId> {
        match self {
            Self::Session(s) => Some(s.session.user_id),
            Self::Bearer(c) => keyward_core::UserId::parse(&c.sub),
        }
    }

    /// The user's name.
    pub fn username(&self) -> &str {
        match self {
            Self::Session(s) => &s.session.username,
            Self::Bearer(c) => &c.preferred_username,
        }
    }
}

/// The token of an `Authorization: Bearer` header, if the request has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer_token(&parts.headers) {
            let kw = keyward_from(parts)?;
            let Some(tokens) = kw.tokens() else {
                return Err(ApiError::InvalidToken);
            };
            return match tokens.authenticate(token).await? {
                // A third-party client's token is for userinfo, not for the account.
                Some(claims) if !tokens.grants_account_access(&claims).await? => {
                    Err(ApiError::InsufficientScope(
                        "this access token was issued to a third-party client: it is good for /oauth/userinfo, not for the account".into(),
                    ))
                }
                Some(claims) => Ok(Self::Bearer(claims)),
                None => Err(ApiError::InvalidToken),
            };
        }
        Ok(Self::Session(
            CurrentSession::from_request_parts(parts, state).await?,
        ))
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let kw = keyward_from(parts)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Self(peer.map(|p| kw.resolve_client(p, &parts.headers))))
    }
}

/// The `User-Agent` header, if it is text.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// How a body arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded` (an HTML form).
    Form,
}

/// A body that may be JSON or an HTML form, decoded into `T`. Bad input answers 400 (not
/// parseable), 413 (over 64 KiB), 415 (other content types) or 422 (wrong shape).
#[derive(Debug)]
pub struct Input<T> {
    /// The decoded body.
    pub value: T,
    /// Its encoding.
    pub kind: BodyKind,
}

pub(crate) fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let ct = headers.get(header::CONTENT_TYPE)?.as_bytes();
    if is_json_type(ct) {
        Some(BodyKind::Json)
    } else if essence(ct).eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Some(BodyKind::Form)
    } else {
        None
    }
}

/// A media type without its parameters (`text/html; charset=utf-8` → `text/html`).
fn essence(content_type: &[u8]) -> &[u8] {
    content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// `application/json`, `application/problem+json` and other `application/…+json` types, in
/// any case: how request bodies are told apart and which answers get the REST headers.
pub(crate) fn is_json_type(content_type: &[u8]) -> bool {
    let essence = essence(content_type);
    let suffix = essence
        .len()
        .checked_sub(5)
        .and_then(|at| essence.get(at..));
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 17
            && essence
                .get(..12)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"application/"))
            && suffix.is_some_and(|s| s.eq_ignore_ascii_case(b"+json")))
}

/// Read a whole body of at most [`BODY_LIMIT`](crate::routes::BODY_LIMIT) bytes: one that
/// says or turns out to be longer is refused (413) without being read further.
pub(crate) async fn read_body(req: Request) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limit = crate::routes::BODY_LIMIT;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    match http_body_util::Limited::new(req.into_body(), limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::BadRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// Decode a JSON object, describing errors without echoing the values sent (they may be
/// secrets). Anything but an object (an array, a string, a number, null) is refused before
/// decoding: serde would otherwise read a struct positionally from an array.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::Unprocessable("the body must be a JSON object".into()),
                Err(e) => ApiError::BadRequest(format!(
                    "the body is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )),
            },
        );
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let at = format!("line {}, column {}", e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => {
                let msg = e.to_string();
                if msg.starts_with("missing field") || msg.starts_with("unknown field") {
                    let what = msg.split(" at line").next().unwrap_or("invalid field");
                    ApiError::Unprocessable(format!("{what} ({at})"))
                } else {
                    ApiError::Unprocessable(format!(
                        "a field has the wrong type or value ({at}); see /openapi.json"
                    ))
                }
            }
            _ => ApiError::BadRequest(format!("the body is not valid JSON ({at})")),
        }
    })
}

/// Decode an HTML form body.
pub fn decode_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest(
            "the form body is not valid UTF-8".into(),
        ));
    }
    serde_urlencoded::from_bytes(bytes).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("missing field") {
            ApiError::Unprocessable(msg)
        } else {
            ApiError::Unprocessable("a form field is invalid".into())
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Input<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(kind) = body_kind(req.headers()) else {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json or application/x-www-form-urlencoded".into(),
            ));
        };
        let bytes = read_body(req).await?;
        let value = match kind {
            BodyKind::Json => decode_json(&bytes)?,
            BodyKind::Form => decode_form(&bytes)?,
        };
        Ok(Self { value, kind })
    }
}

/// A JSON-only body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if body_kind(req.headers()) != Some(BodyKind::Json) {
            return Err(ApiError::UnsupportedMediaType(
                "send application/json".into(),
            ));
        }
        let bytes = read_body(req).await?;
        Ok(Self(decode_json(&bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_types_are_told_from_the_others() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/jwk-set+json",
        ] {
            assert!(is_json_type(json.as_bytes()), "{json}");
        }
        for other in [
            "text/html; charset=utf-8",
            "text/json",
            "application/+json",
            "application/jsonx",
            "",
            "text/plain",
        ] {
            assert!(!is_json_type(other.as_bytes()), "{other}");
        }
    }

    fn streamed(total: usize) -> Request {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..total.div_ceil(4096))
            .map(|i| Ok(vec![b'x'; 4096.min(total - i * 4096)]))
            .collect();
        Request::new(axum::body::Body::from_stream(futures_util::stream::iter(
            chunks,
        )))
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_limit_with_or_without_a_length() {
        let limit = crate::routes::BODY_LIMIT;
        let read = read_body(streamed(limit)).await.unwrap();
        assert_eq!(read.len(), limit);
        assert!(matches!(
            read_body(streamed(limit + 1)).await,
            Err(ApiError::PayloadTooLarge)
        ));
        let mut declared = Request::new(axum::body::Body::from("{}"));
        declared
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(limit + 1));
        assert!(matches!(
            read_body(declared).await,
            Err(ApiError::PayloadTooLarge)
        ));
    }

    #[test]
    fn finds_duplicated_cookies_across_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; keyward=x"));
        assert!(matches!(session_cookie(&h, "keyward"), CookieToken::Present(v) if v == "x"));
        h.append(header::COOKIE, HeaderValue::from_static("keyward=y"));
        assert!(matches!(
            session_cookie(&h, "keyward"),
            CookieToken::Duplicated
        ));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("keyward=x; keyward=x"),
        );
        assert!(matches!(
            session_cookie(&h, "keyward"),
            CookieToken::Duplicated
        ));
        assert!(matches!(
            session_cookie(&HeaderMap::new(), "keyward"),
            CookieToken::Absent
        ));
    }

    #[test]
    fn json_errors_never_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            password: String,
        }
        let e = decode_json::<P>(br#"{"password": 98765432}"#).unwrap_err();
        assert!(!e.detail().contains("98765432"), "{}", e.detail());
        assert!(matches!(e, ApiError::Unprocessable(_)));
        assert!(matches!(
            decode_json::<P>(b"{"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(
            matches!(decode_json::<P>(b"{}"), Err(ApiError::Unprocessable(d)) if d.contains("missing field `password`"))
        );
    }

    #[test]
    fn only_objects_are_json_bodies() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            a: String,
            b: String,
        }
        for body in [
            &br#"["x","y"]"#[..],
            b" \n[\"x\",\"y\"]",
            b"\"x\"",
            b"42",
            b"null",
            b"true",
        ] {
            assert!(
                matches!(decode_json::<P>(body), Err(ApiError::Unprocessable(d)) if d == "the body must be a JSON object"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            decode_json::<P>(b"[1,"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            decode_json::<P>(b""),
            Err(ApiError::BadRequest(_))
        ));
        assert!(decode_json::<P>(br#" {"a":"x","b":"y"}"#).is_ok());
    }
}
