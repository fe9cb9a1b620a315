//! The JSON API and operations routes, and the router that puts everything together.

use crate::error::ApiError;
use crate::extract::{
    device_cookie, presented_session, user_agent, BodyKind, ClientAddr, CurrentSession, Input,
    JsonBody, Principal, DEVICE_COOKIE_NAME,
};
use crate::{metrics as kw_metrics, pages, Keyward};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use cookie::{Cookie, SameSite};
use keyward_core::{ClientInfo, NewSession, Password, SessionId, SessionRecord, UserRecord};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The JSON API and the health and OpenAPI routes, in keyward's state.
pub(crate) fn api() -> Router<Keyward> {
    Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/users/me/password", put(change_password))
        .route(
            "/v1/sessions",
            post(login).get(list_sessions).delete(revoke_others),
        )
        .route("/v1/sessions/current", get(current).delete(logout))
        .route("/v1/sessions/{id}", axum::routing::delete(revoke_one))
        .route("/v1/me", get(me))
        .route("/v1/verify", any(verify))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .merge(crate::account::routes())
        .merge(crate::mfa::routes())
}

/// Routes made mountable: keyward's state and the layer, no fallback. (Bodies are read
/// within [`BODY_LIMIT`] by keyward's own extractors.)
pub(crate) fn mountable(kw: &Keyward, routes: Router<Keyward>) -> Router {
    routes.layer(kw.layer()).with_state(kw.clone())
}

/// The whole server: every route, `/metrics` (the recorder the binary installed, if any),
/// and keyward's answers for unknown routes and methods, all behind the layer.
pub(crate) fn router(kw: &Keyward) -> Router {
    let routes = api()
        .route(
            "/metrics",
            get(|| async {
                let body = kw_metrics::render().unwrap_or_default();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }),
        )
        .merge(crate::oauth::routes())
        .merge(pages::routes())
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    mountable(kw, routes)
}

// ------------------------------------------------------------------ wire types

/// `{"id","username","created_at"}`
#[derive(Serialize)]
pub(crate) struct UserView {
    id: String,
    username: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: u.id.to_string(),
            username: u.username.clone(),
            created_at: u.created_at,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct UserRef {
    id: String,
    username: String,
}

#[derive(Serialize)]
pub(crate) struct SessionView {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    /// When the owner authenticated (a session is made only by an authentication).
    #[serde(with = "time::serde::rfc3339")]
    auth_time: OffsetDateTime,
    /// How (RFC 8176): `["pwd"]` or `["pwd","otp"]`.
    amr: &'static [&'static str],
}

#[derive(Serialize)]
pub(crate) struct SessionEnvelope {
    user: UserRef,
    session: SessionView,
}

impl SessionEnvelope {
    fn new(kw: &Keyward, s: &SessionRecord) -> Self {
        Self {
            user: UserRef {
                id: s.user_id.to_string(),
                username: s.username.clone(),
            },
            session: SessionView {
                id: s.id.to_string(),
                created_at: s.created_at,
                expires_at: kw.auth().valid_until(s),
                auth_time: s.created_at,
                amr: s.amr.methods(),
            },
        }
    }
}

#[derive(Serialize)]
pub(crate) struct SessionListItem {
    pub(crate) id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) current: bool,
}

/// Username and password, from JSON or a form.
#[derive(Deserialize)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
    /// Forms only: where to go after signing in.
    #[serde(default)]
    pub(crate) next: Option<String>,
}

/// A registration, from JSON or a form: credentials and an optional email address.
#[derive(Deserialize)]
pub(crate) struct Registration {
    pub(crate) username: String,
    pub(crate) password: String,
    #[serde(default)]
    pub(crate) email: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct PasswordChange {
    pub(crate) current_password: String,
    pub(crate) new_password: String,
    /// With TOTP on: a current code (step-up).
    #[serde(default)]
    pub(crate) code: Option<String>,
}

// ------------------------------------------------------------------ cookies

/// `Set-Cookie` for one of keyward's cookies: `HttpOnly; SameSite=Lax; Path=/`, and `Secure`
/// over https.
fn cookie(kw: &Keyward, name: &str, value: &str, max_age: time::Duration) -> HeaderValue {
    let c = Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(kw.secure())
        .max_age(cookie::time::Duration::seconds(max_age.whole_seconds()))
        .build();
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` for a new session token.
pub(crate) fn set_session_cookie(kw: &Keyward, token: &keyward_core::SessionToken) -> HeaderValue {
    let max_age = kw.auth().config().absolute_timeout;
    cookie(kw, kw.cookie_name(), token.expose(), max_age)
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_session_cookie(kw: &Keyward) -> HeaderValue {
    cookie(kw, kw.cookie_name(), "", time::Duration::ZERO)
}

/// The `Set-Cookie` headers of a sign-in: the session, and the device cookie.
pub(crate) fn signed_in_cookies(
    kw: &Keyward,
    new: &NewSession,
) -> AppendHeaders<Vec<(HeaderName, HeaderValue)>> {
    let mut cookies = vec![(header::SET_COOKIE, set_session_cookie(kw, &new.token))];
    if let Some(device) = &new.device {
        let max_age = keyward_core::device::DEVICE_COOKIE_TTL;
        cookies.push((
            header::SET_COOKIE,
            cookie(kw, DEVICE_COOKIE_NAME, device.expose(), max_age),
        ));
    }
    AppendHeaders(cookies)
}

const CLEAR_SITE_DATA: HeaderName = HeaderName::from_static("clear-site-data");

/// Headers of a logout response.
pub(crate) fn logged_out_headers(kw: &Keyward) -> [(HeaderName, HeaderValue); 2] {
    [
        (header::SET_COOKIE, clear_session_cookie(kw)),
        (CLEAR_SITE_DATA, HeaderValue::from_static("\"cookies\"")),
    ]
}

/// Who is calling: the address, the user agent, and the device and session cookies presented.
pub(crate) fn client_info(
    kw: &Keyward,
    ClientAddr(ip): ClientAddr,
    headers: &HeaderMap,
) -> ClientInfo {
    ClientInfo {
        ip,
        user_agent: user_agent(headers),
        device: device_cookie(headers),
        session: presented_session(headers, kw.cookie_name()),
    }
}

/// A local path to go to after a form post: the `next` field when it is a path on this site,
/// else `fallback`.
pub(crate) fn local_target(next: Option<&str>, fallback: &str) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => fallback.to_owned(),
    }
}

/// The page a form was posted from: the `Referer`'s path and query when it is on this site.
pub(crate) fn came_from(kw: &Keyward, headers: &HeaderMap) -> Option<String> {
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let url = url::Url::parse(referer).ok()?;
    if !kw.origin_is_public(&url.origin().ascii_serialization()) {
        return None;
    }
    Some(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    })
}

// ------------------------------------------------------------------ handlers

async fn create_user(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    Input { value, kind }: Input<Registration>,
) -> Response {
    let email = crate::account::given(value.email);
    let result = kw
        .auth()
        .register_with_email(
            &value.username,
            &Password::new(value.password),
            email.as_deref(),
            ip,
        )
        .await;
    match (result, kind) {
        (Ok(user), BodyKind::Json) => {
            (StatusCode::CREATED, Json(UserView::from(&user))).into_response()
        }
        (Ok(_), BodyKind::Form) => Redirect::to(&kw.path("/?registered=1")).into_response(),
        (Err(e), BodyKind::Json) => ApiError::from(e).into_response(),
        (Err(e), BodyKind::Form) => pages::register_failed(&kw, &value.username, ApiError::from(e)),
    }
}

pub(crate) fn session_created(kw: &Keyward, new: &NewSession, status: StatusCode) -> Response {
    (
        status,
        signed_in_cookies(kw, new),
        Json(SessionEnvelope::new(kw, &new.session)),
    )
        .into_response()
}

async fn login(
    State(kw): State<Keyward>,
    addr: ClientAddr,
    headers: HeaderMap,
    Input { value, kind }: Input<Credentials>,
) -> Response {
    let client = client_info(&kw, addr, &headers);
    let result = kw
        .auth()
        .login(&value.username, &Password::new(value.password), &client)
        .await;
    match (result, kind) {
        (Ok(new), BodyKind::Json) => session_created(&kw, &new, StatusCode::CREATED),
        (Ok(new), BodyKind::Form) => {
            let from = came_from(&kw, &headers);
            let to = local_target(
                value.next.as_deref().or(from.as_deref()),
                &kw.path("/account"),
            );
            signed_in_redirect(&kw, &new, &to)
        }
        (Err(e), BodyKind::Json) => ApiError::from(e).into_response(),
        (Err(e), BodyKind::Form) => pages::sign_in_failed(
            &kw,
            &value.username,
            value.next.as_deref(),
            ApiError::from(e),
        ),
    }
}

/// A form sign-in's answer: the cookies, and `303` to `to`.
pub(crate) fn signed_in_redirect(kw: &Keyward, new: &NewSession, to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        signed_in_cookies(kw, new),
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/account")),
        )],
    )
        .into_response()
}

async fn current(State(kw): State<Keyward>, cs: CurrentSession) -> Json<SessionEnvelope> {
    Json(SessionEnvelope::new(&kw, &cs.session))
}

async fn logout(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    cs: CurrentSession,
) -> Result<Response, ApiError> {
    kw.auth().logout(&cs.session.token_hash, ip).await?;
    Ok((StatusCode::NO_CONTENT, logged_out_headers(&kw)).into_response())
}

pub(crate) async fn session_list(
    kw: &Keyward,
    cs: &CurrentSession,
) -> Result<Vec<SessionListItem>, ApiError> {
    let list = kw.auth().list_sessions(cs.session.user_id).await?;
    Ok(list
        .iter()
        .map(|s| SessionListItem {
            id: s.id.to_string(),
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            expires_at: kw.auth().valid_until(s),
            ip: s.ip.clone(),
            user_agent: s.user_agent.clone(),
            current: s.id == cs.session.id,
        })
        .collect())
}

async fn list_sessions(
    State(kw): State<Keyward>,
    cs: CurrentSession,
) -> Result<Json<Vec<SessionListItem>>, ApiError> {
    Ok(Json(session_list(&kw, &cs).await?))
}

async fn revoke_one(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    cs: CurrentSession,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    if !kw
        .auth()
        .revoke_session(id, Some(cs.session.user_id), ip)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    if id == cs.session.id {
        return Ok((StatusCode::NO_CONTENT, logged_out_headers(&kw)).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn revoke_others(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    cs: CurrentSession,
) -> Result<StatusCode, ApiError> {
    kw.auth()
        .revoke_user_sessions(cs.session.user_id, Some(cs.session.id), ip)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// With the session cookie, the session gets a new token (a new cookie) and every other
/// session and refresh token of the user ends; with a bearer token every one of them ends,
/// the caller's own included.
async fn change_password(
    State(kw): State<Keyward>,
    principal: Principal,
    addr: ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<Response, ApiError> {
    let client = client_info(&kw, addr, &headers);
    let user = principal.user().ok_or(ApiError::InvalidToken)?;
    let keep = match &principal {
        Principal::Session(cs) => Some(&cs.session),
        Principal::Bearer(_) => None,
    };
    let renewed = kw
        .auth()
        .change_password(
            user,
            keep,
            &Password::new(body.current_password),
            &Password::new(body.new_password),
            body.code.as_deref(),
            &client,
        )
        .await?;
    Ok(match renewed {
        Some(new) => (
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, set_session_cookie(&kw, &new.token))],
        )
            .into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Serialize)]
struct Me {
    id: String,
    username: String,
}

/// `GET /v1/me`: who the caller is, with the account's address and its state. While the
/// database cannot be reached (a replicated node rides out an outage), the answer comes from
/// the session or token alone and leaves the account's fields out rather than guess them.
#[derive(Serialize)]
struct Account {
    id: String,
    username: String,
    #[serde(flatten)]
    details: Option<AccountDetails>,
}

#[derive(Serialize)]
struct AccountDetails {
    email: Option<String>,
    email_verified: bool,
    mfa: MfaView,
}

/// `{"totp","recovery_codes_left"}`
#[derive(Serialize)]
pub(crate) struct MfaView {
    pub(crate) totp: bool,
    pub(crate) recovery_codes_left: u32,
}

async fn me(State(kw): State<Keyward>, p: Principal) -> Result<Json<Account>, ApiError> {
    let id = p.user().ok_or(ApiError::InvalidToken)?;
    let from_session = || {
        Json(Account {
            id: p.user_id(),
            username: p.username().to_owned(),
            details: None,
        })
    };
    if kw.auth().sessions().degraded() {
        return Ok(from_session());
    }
    let user = match kw.auth().users().user_by_id(id).await {
        Ok(Some(user)) => user,
        Ok(None) => return Err(ApiError::Unauthorized),
        Err(keyward_core::StoreError::Unavailable(cause)) => {
            tracing::warn!(error = %cause, "GET /v1/me answered from the session: the database is unavailable");
            return Ok(from_session());
        }
        Err(e) => return Err(e.into()),
    };
    let mfa = if user.totp {
        kw.auth().mfa_state(user.id).await?.recovery_codes_left
    } else {
        0
    };
    Ok(Json(Account {
        id: user.id.to_string(),
        username: user.username,
        details: Some(AccountDetails {
            email: user.email,
            email_verified: user.email_verified,
            mfa: MfaView {
                totp: user.totp,
                recovery_codes_left: mfa,
            },
        }),
    }))
}

async fn verify(p: Principal) -> Response {
    let id = p.user_id();
    let name = p.username().to_owned();
    let mut res = Json(Me {
        id: id.clone(),
        username: name.clone(),
    })
    .into_response();
    let h = res.headers_mut();
    if let (Ok(id), Ok(name)) = (HeaderValue::from_str(&id), HeaderValue::from_str(&name)) {
        h.insert("x-keyward-user-id", id);
        h.insert("x-keyward-username", name);
    }
    res
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

async fn readyz(State(kw): State<Keyward>) -> Response {
    match kw.auth().ready().await {
        keyward_core::Readiness::Ready => {
            Json(serde_json::json!({"status": "ready"})).into_response()
        }
        // Serving: sessions are validated from memory while the store is away.
        keyward_core::Readiness::Degraded => {
            Json(serde_json::json!({"status": "degraded"})).into_response()
        }
        keyward_core::Readiness::Unavailable(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
