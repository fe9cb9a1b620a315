//! The OAuth 2.1 / OpenID Connect endpoints a browser visits: `/oauth/authorize` (through the
//! cookie session, the sign-in page and the consent page), `/oauth/logout` (RP-initiated
//! logout 1.0, with a confirmation page), and `/oauth/userinfo`.
//!
//! An authorization request is judged in this order: the client and its `redirect_uri` first
//! (failures are a 400 page, never a redirect: keyward is no open redirector), then the rest
//! (failures go back to the client as `error`, `error_description`, `state` and RFC 9207
//! `iss`), then the session (sign-in, `prompt`, `max_age`), then consent.

use crate::error::ApiError;
use crate::extract::{bearer_token, read_body, ClientAddr, MaybeSession};
use crate::pages::{alert, layout, page};
use crate::routes::logged_out_headers;
use crate::Keyward;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward_core::oauth::is_pkce_text;
use keyward_core::{ClientRecord, Scopes};
use keyward_token::code::CodeRequest;
use keyward_token::TokenService;
use maud::{html, Markup};
use std::collections::BTreeMap;

pub(crate) fn routes() -> Router<Keyward> {
    Router::new()
        .route("/oauth/authorize", get(authorize).post(authorize_post))
        .route("/oauth/consent", post(decide))
        .route("/oauth/logout", get(logout_page).post(logout))
}

/// Userinfo, which single-page apps call from their own origin (`oauth.rs` adds CORS).
pub(crate) fn userinfo_routes() -> Router<Keyward> {
    Router::new().route(
        "/oauth/userinfo",
        get(userinfo)
            .post(userinfo)
            .options(|| async { StatusCode::NO_CONTENT }),
    )
}

/// The longest value any authorization or logout parameter may have.
const MAX_PARAM: usize = 2048;
/// The continuation's own parameter: the session must have been made at or after this Unix
/// second (set when `prompt=login` or `max_age` sent the browser to sign in again).
const AUTH_AFTER: &str = "kw_auth_after";

type Params = BTreeMap<String, String>;

/// The parameters whose fault makes a request one that cannot go back to its client.
const ADDRESSING: [&str; 2] = ["client_id", "redirect_uri"];

/// A request's parameters. Each may come once (RFC 6749 §3.1), be at most `MAX_PARAM` bytes
/// and hold no control character; the first fault is returned beside them, to be answered
/// once the client and redirect URI are known. A faulty `client_id` or `redirect_uri` is
/// left out, so that the request is answered with a page.
fn parse_params(raw: &[u8]) -> (Params, Option<String>) {
    let mut out = Params::new();
    let mut dropped = std::collections::BTreeSet::new();
    let mut fault = None;
    for (k, v) in url::form_urlencoded::parse(raw) {
        let problem = if v.len() > MAX_PARAM || k.len() > 64 {
            Some("is too long")
        } else if v.chars().any(char::is_control) || k.chars().any(char::is_control) {
            Some("holds a control character")
        } else if out.contains_key(k.as_ref()) || dropped.contains(k.as_ref()) {
            Some("is repeated")
        } else {
            None
        };
        match problem {
            Some(problem) => {
                let shown: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
                fault.get_or_insert_with(|| format!("parameter {shown} {problem}"));
                if ADDRESSING.contains(&k.as_ref()) {
                    out.remove(k.as_ref());
                    dropped.insert(k.into_owned());
                }
            }
            None => {
                out.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    (out, fault)
}

/// A CSP source for where a redirect URI sends the browser: its origin for http(s), its
/// scheme for a private-use scheme.
fn csp_source(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    let source = match url.scheme() {
        "http" | "https" => url.origin().ascii_serialization(),
        scheme => format!("{scheme}:"),
    };
    let clean = source
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'\'' | b'"'));
    clean.then_some(source)
}

/// Let the page's forms lead on to `redirect_uri` (see `page_policy_with_form_target`).
pub(crate) fn allow_form_target(res: &mut Response, redirect_uri: &str) {
    if let Some(policy) =
        csp_source(redirect_uri).and_then(|s| crate::guard::page_policy_with_form_target(&s))
    {
        res.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
}

/// For a sign-in or code page whose `next` continues an authorization request: let its form
/// lead on to the request's redirect URI.
pub(crate) fn allow_continuation(kw: &Keyward, res: &mut Response, next: &str) {
    let prefix = format!("{}?", kw.path("/oauth/authorize"));
    let Some(query) = next.strip_prefix(&prefix) else {
        return;
    };
    if let Some((_, uri)) =
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "redirect_uri")
    {
        allow_form_target(res, &uri);
    }
}

/// A 400 (or other) page for a request that cannot go back to its client.
fn error_page(kw: &Keyward, status: StatusCode, title: &str, text: &str) -> Response {
    let body = html! {
        section.card {
            h1 { (title) }
            (alert("error", text))
            p.aside { "Go back to the application and try again, or contact its developer." }
        }
    };
    page(status, layout(kw, title, None, body))
}

fn failure_page(kw: &Keyward, e: ApiError) -> Response {
    let status = e.status();
    let mut res = error_page(kw, status, "Something went wrong", &e.detail());
    if matches!(e, ApiError::Unavailable) {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    res
}

/// `uri` with `pairs` added to its query.
fn with_query(uri: &str, pairs: &[(&str, &str)]) -> Option<String> {
    let mut url = url::Url::parse(uri).ok()?;
    url.query_pairs_mut().extend_pairs(pairs);
    Some(url.into())
}

fn found(to: &str, status: StatusCode) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (status, [(header::LOCATION, v)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// Where answers to a request go, once its client and redirect URI hold.
struct Target {
    redirect_uri: String,
    state: Option<String>,
}

impl Target {
    /// Send `pairs` (plus `state` and `iss`) to the client's redirect URI.
    fn respond(&self, svc: &TokenService, pairs: &[(&str, &str)]) -> Response {
        let mut all: Vec<(&str, &str)> = pairs.to_vec();
        if let Some(state) = &self.state {
            all.push(("state", state));
        }
        all.push(("iss", &svc.config().issuer));
        match with_query(&self.redirect_uri, &all) {
            Some(to) => found(&to, StatusCode::FOUND),
            None => StatusCode::BAD_REQUEST.into_response(),
        }
    }

    fn error(&self, svc: &TokenService, error: &str, description: &str) -> Response {
        self.respond(svc, &[("error", error), ("error_description", description)])
    }
}

/// A checked authorization request.
struct Authorization {
    client: ClientRecord,
    target: Target,
    scope: Scopes,
    code_challenge: String,
    nonce: Option<String>,
    prompt: Vec<String>,
    max_age: Option<i64>,
    auth_after: Option<i64>,
    login_hint: Option<String>,
    /// Everything as sent, for the continuation after sign-in and the consent form.
    params: Params,
}

/// Why a request is refused.
enum Refusal {
    /// Before the redirect URI could be trusted: a page.
    Page(Response),
    /// Back to the client with an RFC 6749 §4.1.2.1 error.
    Redirect(Target, &'static str, String),
}

impl Authorization {
    /// This request again, as a path of ours, with `prompt=login` and `max_age` replaced by a
    /// demand for a session made from now on.
    fn continuation(&self, kw: &Keyward, auth_after: Option<i64>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.params {
            match k.as_str() {
                "prompt" if auth_after.is_some() => {
                    let rest: Vec<&str> = v.split(' ').filter(|p| *p != "login").collect();
                    if !rest.join("").is_empty() {
                        q.append_pair(k, &rest.join(" "));
                    }
                }
                "max_age" | AUTH_AFTER if auth_after.is_some() => {}
                _ => {
                    q.append_pair(k, v);
                }
            }
        }
        if let Some(t) = auth_after {
            q.append_pair(AUTH_AFTER, &t.to_string());
        }
        format!("{}?{}", kw.path("/oauth/authorize"), q.finish())
    }
}

async fn check(
    svc: &TokenService,
    kw: &Keyward,
    params: Params,
    fault: Option<String>,
) -> Result<Authorization, Refusal> {
    let page400 = |text: &str| {
        Refusal::Page(error_page(
            kw,
            StatusCode::BAD_REQUEST,
            "Invalid sign-in request",
            text,
        ))
    };
    let Some(client_id) = params.get("client_id").filter(|s| !s.is_empty()) else {
        return Err(page400(
            "The request names no client (client_id is missing).",
        ));
    };
    let client = match svc.clients().client(client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(page400(
                "The application is not registered here (unknown client_id).",
            ))
        }
        Err(e) => return Err(Refusal::Page(failure_page(kw, e.into()))),
    };
    let Some(redirect_uri) = params.get("redirect_uri").filter(|s| !s.is_empty()) else {
        return Err(page400("The request has no redirect_uri."));
    };
    if !client.accepts_redirect(redirect_uri) {
        return Err(page400(
            "The redirect_uri is not one registered for this application.",
        ));
    }
    let target = || Target {
        redirect_uri: redirect_uri.clone(),
        state: params.get("state").cloned(),
    };
    let bad = |error: &'static str, text: &str| Refusal::Redirect(target(), error, text.to_owned());
    if let Some(fault) = fault {
        return Err(bad("invalid_request", &fault));
    }
    match params.get("response_type").map(String::as_str) {
        Some("code") => {}
        None => return Err(bad("invalid_request", "response_type is required")),
        Some(_) => {
            return Err(bad(
                "unsupported_response_type",
                "only response_type=code is supported",
            ))
        }
    }
    if params.contains_key("request") {
        return Err(bad(
            "request_not_supported",
            "request objects are not supported",
        ));
    }
    if params.contains_key("request_uri") {
        return Err(bad(
            "request_uri_not_supported",
            "request_uri is not supported",
        ));
    }
    if params.get("response_mode").is_some_and(|m| m != "query") {
        return Err(bad(
            "invalid_request",
            "only response_mode=query is supported",
        ));
    }
    // Scopes keyward does not offer are ignored (OpenID Connect Core §3.1.2.1: `address`,
    // `phone` and the like); a request left with none is refused.
    let scope = match params.get("scope") {
        None => Scopes::parse_known("openid"),
        Some(raw) => Scopes::parse_known(raw),
    };
    if scope.is_empty() {
        return Err(bad(
            "invalid_scope",
            "scope names none of openid, profile, email, offline_access",
        ));
    }
    let Some(challenge) = params.get("code_challenge") else {
        return Err(bad(
            "invalid_request",
            "code_challenge is required (PKCE with S256)",
        ));
    };
    match params.get("code_challenge_method").map(String::as_str) {
        Some("S256") => {}
        Some("plain") | None => {
            return Err(bad(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)",
            ))
        }
        Some(_) => return Err(bad("invalid_request", "code_challenge_method must be S256")),
    }
    if challenge.len() != 43 || !is_pkce_text(challenge) {
        return Err(bad(
            "invalid_request",
            "code_challenge must be 43 characters of base64url (S256)",
        ));
    }
    let prompt: Vec<String> = params
        .get("prompt")
        .map(|p| {
            p.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(unknown) = prompt
        .iter()
        .find(|p| !["none", "login", "consent", "select_account"].contains(&p.as_str()))
    {
        let shown: String = unknown.chars().take(40).collect();
        return Err(bad(
            "invalid_request",
            &format!("unknown prompt value {shown:?}"),
        ));
    }
    if prompt.iter().any(|p| p == "none") && prompt.len() > 1 {
        return Err(bad(
            "invalid_request",
            "prompt=none cannot be combined with other values",
        ));
    }
    let max_age = match params.get("max_age") {
        None => None,
        Some(raw) => Some(
            raw.parse::<u32>()
                .map(i64::from)
                .map_err(|_| bad("invalid_request", "max_age must be a number of seconds"))?,
        ),
    };
    let auth_after = match params.get(AUTH_AFTER) {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| bad("invalid_request", "malformed continuation"))?,
        ),
    };
    Ok(Authorization {
        client,
        target: target(),
        scope,
        code_challenge: challenge.clone(),
        nonce: params.get("nonce").cloned(),
        prompt,
        max_age,
        auth_after,
        login_hint: params.get("login_hint").cloned(),
        params,
    })
}

/// Whether the session is good enough for this request: not older than `max_age` (not
/// judged again when the consent page is answered, which may take the user a while), made
/// after a demanded re-authentication (with a few seconds for the clocks of other nodes),
/// and `prompt=login` not asked.
fn session_will_do(
    a: &Authorization,
    created: time::OffsetDateTime,
    now: time::OffsetDateTime,
    answering: bool,
) -> bool {
    let created_s = created.unix_timestamp();
    let now_s = now.unix_timestamp();
    !a.prompt.iter().any(|p| p == "login")
        && (answering || a.max_age.is_none_or(|m| now_s - created_s <= m))
        && a.auth_after.is_none_or(|t| created_s + 5 >= t)
}

/// Send the browser to sign in, then back to this request.
fn to_sign_in(kw: &Keyward, a: &Authorization, signed_in: bool, now: i64) -> Response {
    let renew = signed_in || a.max_age.is_some() || a.prompt.iter().any(|p| p == "login");
    let next = a.continuation(kw, renew.then_some(now));
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("next", &next);
    if let Some(hint) = &a.login_hint {
        q.append_pair("login_hint", hint);
    }
    if signed_in {
        q.append_pair("reauth", "1");
    }
    found(
        &format!("{}?{}", kw.path("/"), q.finish()),
        StatusCode::SEE_OTHER,
    )
}

/// What the scopes let a client do, in words.
fn scope_text(scope: &str) -> &'static str {
    match scope {
        "openid" => "Know who you are on this site (an identifier for your account)",
        "profile" => "See your username",
        "email" => "See your email address and whether it is confirmed",
        "offline_access" => "Stay connected when you are away, until you revoke its access",
        _ => "",
    }
}

fn consent_page(
    kw: &Keyward,
    svc: &TokenService,
    a: &Authorization,
    session: &keyward_core::SessionRecord,
) -> Response {
    let username = session.username.as_str();
    let token = svc.consent_token(session.id, &a.client.id, &a.target.redirect_uri, &a.scope);
    let host = url::Url::parse(&a.target.redirect_uri)
        .ok()
        .map(|u| match u.host_str() {
            Some(h) => h.to_owned(),
            None => u.scheme().to_owned(),
        })
        .unwrap_or_default();
    let body = html! {
        section.card {
            h1 { "Allow " (a.client.name) " to use your account?" }
            p { "Signed in as " strong { (username) } ". " (a.client.name) " asks to:" }
            ul #scopes {
                @for s in a.scope.iter() {
                    li data-scope=(s) { (scope_text(s)) }
                }
            }
            p.aside { "You will be sent back to " strong { (host) } ". You can revoke this access at any time on your account page." }
            form method="post" action=(kw.path("/oauth/consent")) {
                @for (k, v) in &a.params {
                    input type="hidden" name=(k) value=(v);
                }
                input type="hidden" name="consent_token" value=(token);
                div.actions {
                    button #allow type="submit" name="decision" value="allow" { "Allow" }
                    button.secondary #deny type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        }
    };
    let mut res = page(
        StatusCode::OK,
        layout(
            kw,
            &format!("Allow {}", a.client.name),
            Some(username),
            body,
        ),
    );
    allow_form_target(&mut res, &a.target.redirect_uri);
    res
}

/// The consent form's answer and the token that binds it to its page.
struct Answer {
    decision: String,
    token: String,
}

/// Judge a request: `answer` is the consent form's, when this is its post.
async fn run(
    kw: &Keyward,
    session: Option<crate::extract::CurrentSession>,
    (params, fault): (Params, Option<String>),
    answer: Option<Answer>,
) -> Response {
    let Some(svc) = kw.tokens() else {
        return error_page(
            kw,
            StatusCode::NOT_FOUND,
            "Not found",
            "OAuth is not enabled here.",
        );
    };
    let a = match check(svc, kw, params, fault).await {
        Ok(a) => a,
        Err(Refusal::Page(res)) => return res,
        Err(Refusal::Redirect(target, error, text)) => return target.error(svc, error, &text),
    };
    let now = keyward_core::Clock::now(&**kw.auth().clock());
    // A continuation demands a sign-in from its own time on; one from the future is forged
    // (and would send the browser round the sign-in page for ever).
    if a.auth_after.is_some_and(|t| t > now.unix_timestamp() + 60) {
        return a
            .target
            .error(svc, "invalid_request", "malformed continuation");
    }
    let none = a.prompt.iter().any(|p| p == "none");
    let answering = answer.is_some();
    let usable = session
        .as_ref()
        .filter(|cs| session_will_do(&a, cs.session.created_at, now, answering));
    let Some(cs) = usable else {
        if none {
            return a
                .target
                .error(svc, "login_required", "the user is not signed in");
        }
        return to_sign_in(kw, &a, session.is_some(), now.unix_timestamp());
    };
    let user = cs.session.user_id;
    if let Some(answer) = &answer {
        let bound = svc.consent_token_ok(
            &answer.token,
            cs.session.id,
            &a.client.id,
            &a.target.redirect_uri,
            &a.scope,
        );
        if !bound {
            return error_page(
                kw,
                StatusCode::BAD_REQUEST,
                "This page has expired",
                "The consent form was not shown to this session for this request. Start again from the application.",
            );
        }
    }
    match answer.as_ref().map(|a| a.decision.as_str()) {
        Some("deny") => {
            tracing::info!(target: keyward_core::AUDIT, event = "consent_denied", user_id = %user, client_id = %a.client.id);
            return a
                .target
                .error(svc, "access_denied", "the user denied the request");
        }
        Some("allow") => {
            if let Err(e) = svc.remember_consent(&a.client, user, &a.scope).await {
                return failure_page(kw, e.into());
            }
        }
        Some(_) => {
            return error_page(
                kw,
                StatusCode::BAD_REQUEST,
                "Invalid answer",
                "The consent form's answer is neither allow nor deny.",
            )
        }
        None => {
            let asked = a.prompt.iter().any(|p| p == "consent");
            let needed = match svc.needs_consent(&a.client, user, &a.scope).await {
                Ok(n) => n || asked,
                Err(e) => return failure_page(kw, e.into()),
            };
            if needed {
                if none {
                    return a.target.error(
                        svc,
                        "consent_required",
                        "the user has not consented to this client",
                    );
                }
                return consent_page(kw, svc, &a, &cs.session);
            }
        }
    }
    let req = CodeRequest {
        redirect_uri: a.target.redirect_uri.clone(),
        code_challenge: a.code_challenge.clone(),
        nonce: a.nonce.clone(),
        scope: a.scope.clone(),
    };
    match svc.issue_code(&a.client, &req, &cs.session).await {
        Ok(code) => a.target.respond(svc, &[("code", code.expose())]),
        Err(e) => {
            let e = ApiError::from(e);
            let error = if matches!(e, ApiError::Unavailable) {
                "temporarily_unavailable"
            } else {
                "server_error"
            };
            a.target.error(svc, error, &e.detail())
        }
    }
}

async fn authorize(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    RawQuery(query): RawQuery,
) -> Response {
    let params = parse_params(query.unwrap_or_default().as_bytes());
    run(&kw, cs, params, None).await
}

/// An authorization request sent as a form post (OpenID Connect Core §3.1.2.1): judged as
/// the same request sent with `GET`.
async fn authorize_post(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    req: Request,
) -> Response {
    match read_body(req).await {
        Ok(bytes) => run(&kw, cs, parse_params(&bytes), None).await,
        Err(e) => e.into_response(),
    }
}

/// The consent form's post (`/oauth/consent`): the request again, the answer, and the
/// token that binds them to the session the page was shown to.
async fn decide(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    req: Request,
) -> Response {
    let bytes = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let (mut params, fault) = parse_params(&bytes);
    let (Some(decision), Some(token)) = (params.remove("decision"), params.remove("consent_token"))
    else {
        return error_page(
            &kw,
            StatusCode::BAD_REQUEST,
            "Invalid answer",
            "The consent form's answer is missing.",
        );
    };
    run(&kw, cs, (params, fault), Some(Answer { decision, token })).await
}

/// OpenID Connect Core §5.3: the claims the access token's scopes allow. Tokens of the
/// built-in client (no `scope` claim) are first-party and get them all.
async fn userinfo(State(kw): State<Keyward>, req: Request) -> Result<Response, ApiError> {
    let svc = kw.tokens().ok_or(ApiError::NotFound)?;
    let token = bearer_token(req.headers()).ok_or(ApiError::Unauthorized)?;
    let claims = svc
        .authenticate(token)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let scope = match claims.scope.as_deref() {
        Some(s) => Scopes::parse_known(s),
        None => Scopes::parse_known("openid profile email"),
    };
    if !scope.has("openid") {
        return Err(ApiError::InsufficientScope(
            "userinfo needs an access token granted the openid scope".into(),
        ));
    }
    let user = keyward_core::UserId::parse(&claims.sub).ok_or(ApiError::InvalidToken)?;
    let user = kw
        .auth()
        .users()
        .user_by_id(user)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let mut body = serde_json::Map::new();
    body.insert("sub".into(), user.id.to_string().into());
    if scope.has("profile") {
        body.insert("preferred_username".into(), user.username.clone().into());
    }
    if scope.has("email") {
        if let Some(email) = &user.email {
            body.insert("email".into(), email.clone().into());
            body.insert("email_verified".into(), user.email_verified.into());
        }
    }
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// A checked logout request: the client it came from and where to go afterwards.
struct Logout {
    client: Option<ClientRecord>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

async fn check_logout(
    svc: &TokenService,
    kw: &Keyward,
    params: &Params,
) -> Result<Logout, Response> {
    let page400 = |text: &str| {
        error_page(
            kw,
            StatusCode::BAD_REQUEST,
            "Invalid sign-out request",
            text,
        )
    };
    let hint = match params.get("id_token_hint").filter(|s| !s.is_empty()) {
        Some(t) => Some(
            svc.id_token_hint(t)
                .ok_or_else(|| page400("The id_token_hint is not an ID token issued here."))?,
        ),
        None => None,
    };
    let client_id = match (params.get("client_id").filter(|s| !s.is_empty()), &hint) {
        (Some(id), Some(h)) if *id != h.client_id => {
            return Err(page400(
                "client_id is not the audience of the id_token_hint.",
            ))
        }
        (Some(id), _) => Some(id.clone()),
        (None, Some(h)) => Some(h.client_id.clone()),
        (None, None) => None,
    };
    let client = match client_id {
        Some(id) => match svc.clients().client(&id).await {
            Ok(Some(c)) => Some(c),
            Ok(None) => return Err(page400("The application is not registered here.")),
            Err(e) => return Err(failure_page(kw, e.into())),
        },
        None => None,
    };
    let uri = params
        .get("post_logout_redirect_uri")
        .filter(|s| !s.is_empty())
        .cloned();
    if let Some(uri) = &uri {
        match &client {
            None => {
                return Err(page400(
                    "post_logout_redirect_uri needs client_id or id_token_hint to say whose it is.",
                ))
            }
            Some(c) if !c.accepts_post_logout(uri) => {
                return Err(page400(
                    "The post_logout_redirect_uri is not one registered for this application.",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(Logout {
        client,
        post_logout_redirect_uri: uri,
        state: params.get("state").cloned(),
    })
}

/// A logout request's parameters (the query, or the confirmation's form), checked.
async fn logout_request(kw: &Keyward, raw: &[u8]) -> Result<Logout, Response> {
    let Some(svc) = kw.tokens() else {
        return Err(error_page(
            kw,
            StatusCode::NOT_FOUND,
            "Not found",
            "OAuth is not enabled here.",
        ));
    };
    let (params, fault) = parse_params(raw);
    if let Some(text) = fault {
        return Err(error_page(
            kw,
            StatusCode::BAD_REQUEST,
            "Invalid sign-out request",
            &text,
        ));
    }
    check_logout(svc, kw, &params).await
}

/// RP-initiated logout 1.0: a confirmation page whose form posts the checked request.
async fn logout_page(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    RawQuery(query): RawQuery,
) -> Response {
    let l = match logout_request(&kw, query.unwrap_or_default().as_bytes()).await {
        Ok(l) => l,
        Err(res) => return res,
    };
    let username = cs.as_ref().map(|c| c.session.username.clone());
    let body: Markup = html! {
        section.card {
            @if let Some(name) = &username {
                h1 { "Sign out?" }
                p {
                    @if let Some(c) = &l.client { (c.name) " asks to sign you out. " }
                    "You are signed in as " strong { (name) } "."
                }
            } @else {
                h1 { "You are signed out" }
                p { "There is no session to end in this browser." }
            }
            form method="post" action=(kw.path("/oauth/logout")) {
                @if let Some(c) = &l.client { input type="hidden" name="client_id" value=(c.id); }
                @if let Some(u) = &l.post_logout_redirect_uri { input type="hidden" name="post_logout_redirect_uri" value=(u); }
                @if let Some(s) = &l.state { input type="hidden" name="state" value=(s); }
                div.actions {
                    @if username.is_some() {
                        button #sign-out type="submit" { "Sign out" }
                        a.button.secondary href=(kw.path("/account")) { "Stay signed in" }
                    } @else {
                        button #sign-out type="submit" { "Continue" }
                    }
                }
            }
        }
    };
    let mut res = page(
        StatusCode::OK,
        layout(&kw, "Sign out", username.as_deref(), body),
    );
    if let Some(uri) = &l.post_logout_redirect_uri {
        allow_form_target(&mut res, uri);
    }
    res
}

/// The confirmation's post: end the session as `DELETE /v1/sessions/current` does, then go
/// to the registered post-logout URI with `state`, or to the sign-in page.
async fn logout(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    MaybeSession(cs): MaybeSession,
    req: Request,
) -> Response {
    let bytes = match read_body(req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let l = match logout_request(&kw, &bytes).await {
        Ok(l) => l,
        Err(res) => return res,
    };
    if let Some(cs) = cs {
        if let Err(e) = kw.auth().logout(&cs.session.token_hash, ip).await {
            return failure_page(&kw, e.into());
        }
    }
    let to = match &l.post_logout_redirect_uri {
        Some(uri) => {
            let pairs: Vec<(&str, &str)> = l.state.iter().map(|s| ("state", s.as_str())).collect();
            with_query(uri, &pairs).unwrap_or_else(|| kw.path("/?signed_out=1"))
        }
        None => kw.path("/?signed_out=1"),
    };
    match HeaderValue::from_str(&to) {
        Ok(v) => (
            StatusCode::SEE_OTHER,
            logged_out_headers(&kw),
            [(header::LOCATION, v)],
        )
            .into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}
