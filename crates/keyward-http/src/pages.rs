//! Server-rendered pages: sign in, register, account. They work without JavaScript; every
//! change is a same-origin form post, refused cross-site like any cookie-authenticated request.

use crate::error::{retry_seconds, ApiError};
use crate::extract::{decode_form, read_body, ClientAddr, CurrentSession, MaybeSession};
use crate::routes::{
    client_info, local_target, logged_out_headers, session_list, set_session_cookie, PasswordChange,
};
use crate::Keyward;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use keyward_core::{Password, SessionId};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub(crate) fn routes() -> Router<Keyward> {
    Router::new()
        .route("/", get(sign_in_page))
        .route("/register", get(register_page))
        .route("/account", get(account_page))
        .route("/account/sessions/{id}/revoke", post(revoke_one))
        .route("/account/sessions/revoke-others", post(revoke_others))
        .route("/account/apps/{client_id}/revoke", post(revoke_app))
        .route("/account/sign-out", post(sign_out))
        .route("/account/password", post(change_password))
        .route("/account/email", post(change_email))
        .route("/account/totp", post(totp_begin))
        .route("/account/totp/confirm", post(totp_confirm))
        .route("/account/totp/disable", post(totp_disable))
        .route("/reset-password", get(reset_password_page))
        .route("/verify-email", get(verify_email_page))
        .route("/assets/keyward.css", get(css))
}

const CSS: &str = include_str!("../assets/keyward.css");

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
}

pub(crate) fn layout(kw: &Keyward, title: &str, signed_in: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyward" }
                link rel="stylesheet" href=(kw.path("/assets/keyward.css"));
            }
            body {
                header.top {
                    a.brand href=(kw.path("/")) { "keyward" }
                    @if let Some(name) = signed_in {
                        nav aria-label="Account" {
                            span.who { "Signed in as " strong { (name) } }
                            a href=(kw.path("/account")) { "Account" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub(crate) fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A `Location` value for a path of ours.
fn location(path: &str) -> HeaderValue {
    HeaderValue::from_str(path).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

pub(crate) fn alert(kind: &str, text: &str) -> Markup {
    html! { p class=(format!("alert {kind}")) role=(if kind == "error" { "alert" } else { "status" }) { (text) } }
}

#[derive(Deserialize, Default)]
struct SignInQuery {
    next: Option<String>,
    /// An authorization request's `login_hint`: the username to fill in.
    login_hint: Option<String>,
    /// Sign in again although signed in (`prompt=login`, `max_age`).
    reauth: Option<String>,
    registered: Option<String>,
    signed_out: Option<String>,
    reset: Option<String>,
}

fn sign_in_form(kw: &Keyward, username: &str, next: &str, message: Option<Markup>) -> Markup {
    html! {
        section.card {
            h1 { "Sign in" }
            @if let Some(m) = message { (m) }
            form method="post" action=(kw.path("/v1/sessions")) {
                input type="hidden" name="next" value=(next);
                label for="username" { "Username" }
                input #username type="text" name="username" value=(username) autocomplete="username" required maxlength="64" autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required maxlength="256";
                button type="submit" { "Sign in" }
            }
            @if kw.auth().mail_enabled() {
                p.aside { a href=(kw.path("/reset-password")) { "Forgot password?" } }
            }
            p.aside { "No account? " a href=(kw.path("/register")) { "Create one" } }
        }
    }
}

async fn sign_in_page(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    Query(q): Query<SignInQuery>,
) -> Response {
    if let Some(cs) = cs.filter(|_| q.reauth.is_none()) {
        let body = html! {
            section.card {
                h1 { "You are signed in" }
                p { "Signed in as " strong { (cs.session.username) } "." }
                p { a.button href=(kw.path("/account")) { "Go to your account" } }
            }
        };
        return page(
            StatusCode::OK,
            layout(&kw, "Signed in", Some(&cs.session.username), body),
        );
    }
    let next = local_target(q.next.as_deref(), &kw.path("/account"));
    let message = if q.registered.is_some() {
        Some(alert(
            "ok",
            "Your account was created. Sign in to continue.",
        ))
    } else if q.signed_out.is_some() {
        Some(alert("ok", "You are signed out."))
    } else if q.reset.is_some() {
        Some(alert(
            "ok",
            "Your password was changed and every session ended. Sign in with the new password.",
        ))
    } else if q.reauth.is_some() {
        Some(alert("ok", "Sign in again to continue."))
    } else {
        None
    };
    let hint = q
        .login_hint
        .as_deref()
        .filter(|h| h.chars().count() <= 64)
        .unwrap_or("");
    let mut res = page(
        StatusCode::OK,
        layout(
            &kw,
            "Sign in",
            None,
            sign_in_form(&kw, hint, &next, message),
        ),
    );
    crate::authorize::allow_continuation(&kw, &mut res, &next);
    res
}

/// The sign-in page again after a failed form login, with the failure's status.
pub(crate) fn sign_in_failed(
    kw: &Keyward,
    username: &str,
    next: Option<&str>,
    err: ApiError,
) -> Response {
    if let ApiError::MfaRequired(token) = &err {
        let next = local_target(next, &kw.path("/account"));
        let mut res = page(
            StatusCode::OK,
            layout(
                kw,
                "Two-step sign-in",
                None,
                code_form(kw, token.expose(), &next, None),
            ),
        );
        crate::authorize::allow_continuation(kw, &mut res, &next);
        return res;
    }
    let status = err.status();
    let text = match &err {
        ApiError::InvalidCredentials => "Invalid username or password.".to_owned(),
        ApiError::TooManyRequests { retry_after } => {
            format!(
                "Too many failed attempts. Try again in {} seconds.",
                retry_seconds(*retry_after)
            )
        }
        other => other.detail(),
    };
    let next = local_target(next, &kw.path("/account"));
    let shown = if username.chars().count() <= 64 {
        username
    } else {
        ""
    };
    let mut res = page(
        status,
        layout(
            kw,
            "Sign in",
            None,
            sign_in_form(kw, shown, &next, Some(alert("error", &text))),
        ),
    );
    crate::authorize::allow_continuation(kw, &mut res, &next);
    if let ApiError::TooManyRequests { retry_after } = err {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_seconds(retry_after)),
        );
    }
    res
}

fn register_form(kw: &Keyward, username: &str, message: Option<Markup>) -> Markup {
    html! {
        section.card {
            h1 { "Create an account" }
            @if let Some(m) = message { (m) }
            @if kw.auth().config().open_registration {
                form method="post" action=(kw.path("/v1/users")) {
                    label for="username" { "Username" }
                    input #username type="text" name="username" value=(username) autocomplete="username" required maxlength="64" pattern="[A-Za-z0-9._@+\\-]{1,64}" aria-describedby="username-help" autofocus;
                    p.help #username-help { "1–64 letters, digits or . _ - @ +" }
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="new-password" required minlength="8" maxlength="256" aria-describedby="password-help";
                    p.help #password-help { "At least 8 characters; not a common password." }
                    @if kw.auth().mail_enabled() {
                        label for="email" { "Email (optional)" }
                        input #email type="email" name="email" autocomplete="email" maxlength="254" aria-describedby="email-help";
                        p.help #email-help { "We send a link to confirm it. A confirmed address lets you reset a forgotten password." }
                    }
                    button type="submit" { "Create account" }
                }
            } @else {
                p { "Registration is closed. Ask an administrator for an account." }
            }
            p.aside { "Have an account? " a href=(kw.path("/")) { "Sign in" } }
        }
    }
}

async fn register_page(State(kw): State<Keyward>) -> Response {
    page(
        StatusCode::OK,
        layout(&kw, "Register", None, register_form(&kw, "", None)),
    )
}

/// The register page again after a failed form registration.
pub(crate) fn register_failed(kw: &Keyward, username: &str, err: ApiError) -> Response {
    let shown = if username.chars().count() <= 64 {
        username
    } else {
        ""
    };
    let mut res = page(
        err.status(),
        layout(
            kw,
            "Register",
            None,
            register_form(kw, shown, Some(alert("error", &err.detail()))),
        ),
    );
    if let ApiError::TooManyRequests { retry_after } = err {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_seconds(retry_after)),
        );
    }
    res
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// `2026-11-23 18:58 UTC`: for people; the `datetime` attribute keeps RFC 3339.
fn human_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&f).unwrap_or_default()
}

#[derive(Deserialize, Default)]
struct AccountQuery {
    email_sent: Option<String>,
}

async fn account_page(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    Query(q): Query<AccountQuery>,
) -> Result<Response, ApiError> {
    let Some(cs) = cs else {
        return Ok(to_sign_in(&kw));
    };
    let message = q.email_sent.is_some().then(|| {
        alert(
            "ok",
            "A link to confirm the new address was sent to it. Until it is used, your account keeps its current address.",
        )
    });
    render_account(&kw, &cs, message, StatusCode::OK).await
}

async fn render_account(
    kw: &Keyward,
    cs: &CurrentSession,
    message: Option<Markup>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let sessions = session_list(kw, cs).await?;
    let user = kw
        .auth()
        .users()
        .user_by_id(cs.session.user_id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let apps = match kw.tokens() {
        Some(svc) => svc.consents(user.id).await?,
        None => Vec::new(),
    };
    let mfa_left = if user.totp {
        kw.auth().mfa_state(user.id).await?.recovery_codes_left
    } else {
        0
    };
    let body = html! {
        section.card.wide {
            h1 { "Your account" }
            @if let Some(m) = message { (m) }
            h2 { "Sessions" }
            p { "Where you are signed in. Revoke any you do not recognise." }
            table {
                caption.visually-hidden { "Your active sessions" }
                thead { tr { th scope="col" { "Device" } th scope="col" { "Address" } th scope="col" { "Signed in" } th scope="col" { "Last active" } th scope="col" { span.visually-hidden { "Action" } } } }
                tbody {
                    @for s in &sessions {
                        tr.current[s.current] {
                            td { (s.user_agent.as_deref().unwrap_or("Unknown device")) @if s.current { " " span.badge { "this device" } } }
                            td { (s.ip.as_deref().unwrap_or("—")) }
                            td { time datetime=(fmt_time(s.created_at)) { (human_time(s.created_at)) } }
                            td { time datetime=(fmt_time(s.last_seen_at)) { (human_time(s.last_seen_at)) } }
                            td {
                                @if s.current {
                                    form method="post" action=(kw.path("/account/sign-out")) { button.secondary type="submit" { "Sign out" } }
                                } @else {
                                    form method="post" action=(kw.path(&format!("/account/sessions/{}/revoke", s.id))) {
                                        button.danger type="submit" aria-label=(format!("Revoke session started {}", human_time(s.created_at))) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            div.actions {
                form method="post" action=(kw.path("/account/sessions/revoke-others")) { button.danger type="submit" { "Sign out everywhere else" } }
                form method="post" action=(kw.path("/account/sign-out")) { button.secondary type="submit" { "Sign out" } }
            }
            h2 { "Apps with access" }
            @if apps.is_empty() {
                p #apps-none { "No other application has access to your account." }
            } @else {
                p { "Applications you allowed to use your account. Revoking one also signs it out." }
                table #apps {
                    caption.visually-hidden { "Applications with access" }
                    thead { tr { th scope="col" { "Application" } th scope="col" { "Access" } th scope="col" { "Allowed" } th scope="col" { span.visually-hidden { "Action" } } } }
                    tbody {
                        @for (consent, name) in &apps {
                            tr data-client-id=(consent.client_id) {
                                td { (name) }
                                td { (consent.scope.to_string()) }
                                td { time datetime=(fmt_time(consent.granted_at)) { (human_time(consent.granted_at)) } }
                                td {
                                    form method="post" action=(kw.path(&format!("/account/apps/{}/revoke", consent.client_id))) {
                                        button.danger type="submit" aria-label=(format!("Revoke access of {name}")) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Email" }
            @match &user.email {
                Some(email) => p #email-state {
                    (email) " "
                    @if user.email_verified { span.badge { "verified" } } @else { span.badge.warn { "not verified" } }
                },
                None => p #email-state { "No email address. With a confirmed address you can reset a forgotten password." },
            }
            @if kw.auth().mail_enabled() {
                form method="post" action=(kw.path("/account/email")) {
                    label for="new_email" { "New email address" }
                    input #new_email type="email" name="email" autocomplete="email" required maxlength="254";
                    label for="email_current_password" { "Current password" }
                    input #email_current_password type="password" name="current_password" autocomplete="current-password" required maxlength="256";
                    @if user.totp {
                        label for="email_code" { "Code from your app" }
                        input #email_code type="text" name="code" autocomplete="one-time-code" required maxlength="64";
                    }
                    button type="submit" { "Send a confirmation link" }
                }
            }
            h2 { "Two-step sign-in" }
            @if user.totp {
                p #totp-state { "On: signing in asks for a code from your authenticator app. " (mfa_left) " recovery codes left." }
                form method="post" action=(kw.path("/account/totp/disable")) {
                    label for="totp_off_password" { "Current password" }
                    input #totp_off_password type="password" name="current_password" autocomplete="current-password" required maxlength="256";
                    label for="totp_off_code" { "Code from your app, or a recovery code" }
                    input #totp_off_code type="text" name="code" autocomplete="one-time-code" required maxlength="64";
                    button.danger type="submit" { "Turn off two-step sign-in" }
                }
            } @else {
                p #totp-state { "Off. With an authenticator app, a stolen password alone no longer signs anyone in." }
                form method="post" action=(kw.path("/account/totp")) {
                    label for="totp_password" { "Current password" }
                    input #totp_password type="password" name="current_password" autocomplete="current-password" required maxlength="256";
                    button type="submit" { "Set up two-step sign-in" }
                }
            }
            h2 { "Change password" }
            form method="post" action=(kw.path("/account/password")) {
                label for="current_password" { "Current password" }
                input #current_password type="password" name="current_password" autocomplete="current-password" required maxlength="256";
                label for="new_password" { "New password" }
                input #new_password type="password" name="new_password" autocomplete="new-password" required minlength="8" maxlength="256";
                @if user.totp {
                    label for="password_code" { "Code from your app" }
                    input #password_code type="text" name="code" autocomplete="one-time-code" required maxlength="64";
                }
                button type="submit" { "Change password" }
            }
        }
    };
    Ok(page(
        status,
        layout(kw, "Account", Some(&cs.session.username), body),
    ))
}

/// A form posted from the account page by a signed-in browser: the session, the form and who
/// sent it. Without a session the browser is sent to sign in instead.
struct AccountForm<T> {
    cs: CurrentSession,
    form: T,
    client: keyward_core::ClientInfo,
}

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Keyward> for AccountForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, kw: &Keyward) -> Result<Self, Response> {
        use axum::extract::FromRequestParts;
        let (mut parts, body) = req.into_parts();
        let MaybeSession(cs) = MaybeSession::from_request_parts(&mut parts, kw)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(cs) = cs else {
            return Err(to_sign_in(kw));
        };
        let addr = ClientAddr::from_request_parts(&mut parts, kw)
            .await
            .map_err(IntoResponse::into_response)?;
        let client = client_info(kw, addr, &parts.headers);
        let bytes = read_body(Request::from_parts(parts, body))
            .await
            .map_err(IntoResponse::into_response)?;
        let form = decode_form(&bytes).map_err(IntoResponse::into_response)?;
        Ok(Self { cs, form, client })
    }
}

/// The account page again after a refused form, with the error; failures of the server's own
/// are answered as errors.
async fn account_failed(
    kw: &Keyward,
    cs: &CurrentSession,
    e: keyward_core::AuthError,
) -> Result<Response, ApiError> {
    let e = ApiError::from(e);
    if matches!(
        e,
        ApiError::Unavailable | ApiError::Internal(_) | ApiError::Unauthorized
    ) {
        return Err(e);
    }
    render_account(kw, cs, Some(alert("error", &e.detail())), e.status()).await
}

/// Pages answer a missing session by sending the browser to sign in.
fn to_sign_in(kw: &Keyward) -> Response {
    Redirect::to(&kw.path(&format!("/?next={}", kw.path("/account")))).into_response()
}

async fn revoke_one(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    MaybeSession(cs): MaybeSession,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(cs) = cs else {
        return Ok(to_sign_in(&kw));
    };
    if let Some(id) = SessionId::parse(&id) {
        kw.auth()
            .revoke_session(id, Some(cs.session.user_id), ip)
            .await?;
        if id == cs.session.id {
            return Ok((
                StatusCode::SEE_OTHER,
                logged_out_headers(&kw),
                [(header::LOCATION, kw.path("/?signed_out=1"))],
            )
                .into_response());
        }
    }
    Ok(Redirect::to(&kw.path("/account")).into_response())
}

/// Withdraw a consent from the account page; the app's tokens for this user go with it.
async fn revoke_app(
    State(kw): State<Keyward>,
    MaybeSession(cs): MaybeSession,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(cs) = cs else {
        return Ok(to_sign_in(&kw));
    };
    if let (Some(svc), false) = (kw.tokens(), client_id.chars().any(char::is_control)) {
        svc.revoke_consent(cs.session.user_id, &client_id).await?;
    }
    Ok(Redirect::to(&kw.path("/account")).into_response())
}

async fn revoke_others(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    MaybeSession(cs): MaybeSession,
) -> Result<Response, ApiError> {
    let Some(cs) = cs else {
        return Ok(to_sign_in(&kw));
    };
    kw.auth()
        .revoke_user_sessions(cs.session.user_id, Some(cs.session.id), ip)
        .await?;
    Ok(Redirect::to(&kw.path("/account")).into_response())
}

async fn sign_out(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    MaybeSession(cs): MaybeSession,
) -> Result<Response, ApiError> {
    if let Some(cs) = cs {
        kw.auth().logout(&cs.session.token_hash, ip).await?;
    }
    Ok((
        StatusCode::SEE_OTHER,
        logged_out_headers(&kw),
        [(header::LOCATION, kw.path("/?signed_out=1"))],
    )
        .into_response())
}

async fn change_password(
    State(kw): State<Keyward>,
    AccountForm { cs, form, client }: AccountForm<PasswordChange>,
) -> Result<Response, ApiError> {
    match kw
        .auth()
        .change_password(
            cs.session.user_id,
            Some(&cs.session),
            &Password::new(form.current_password),
            &Password::new(form.new_password),
            form.code.as_deref(),
            &client,
        )
        .await
    {
        Ok(None) => Err(ApiError::Unauthorized),
        Ok(Some(new)) => Ok((
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, set_session_cookie(&kw, &new.token)),
                (header::LOCATION, location(&kw.path("/account"))),
            ],
        )
            .into_response()),
        Err(e) => account_failed(&kw, &cs, e).await,
    }
}

async fn change_email(
    State(kw): State<Keyward>,
    AccountForm { cs, form, client }: AccountForm<crate::account::EmailChange>,
) -> Result<Response, ApiError> {
    match kw
        .auth()
        .change_email(
            cs.session.user_id,
            &form.email,
            &Password::new(form.current_password),
            form.code.as_deref(),
            &client,
        )
        .await
    {
        Ok(()) => Ok(Redirect::to(&kw.path("/account?email_sent=1")).into_response()),
        Err(e) => account_failed(&kw, &cs, e).await,
    }
}

/// A page whose URL may carry a mailed secret: no referrer, ever.
fn link_page(status: StatusCode, markup: Markup) -> Response {
    let mut res = page(status, markup);
    res.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn mail_off(kw: &Keyward, title: &str) -> Response {
    let body = html! {
        section.card {
            h1 { (title) }
            (alert("error", "Email is not configured on this server. Ask an administrator."))
        }
    };
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        layout(kw, title, None, body),
    )
}

#[derive(Deserialize, Default)]
struct LinkQuery {
    token: Option<String>,
    sent: Option<String>,
    verified: Option<String>,
}

fn reset_request_form(kw: &Keyward, message: Option<Markup>) -> Markup {
    html! {
        section.card {
            h1 { "Reset your password" }
            @if let Some(m) = message { (m) }
            p { "Give your username or the confirmed email address of your account. If it has one, we mail it a link to choose a new password." }
            form method="post" action=(kw.path("/v1/password-reset")) {
                label for="username" { "Username" }
                input #username type="text" name="username" autocomplete="username" maxlength="64";
                p.help { "or" }
                label for="email" { "Email address" }
                input #email type="email" name="email" autocomplete="email" maxlength="254";
                button type="submit" { "Send a reset link" }
            }
            p.aside { a href=(kw.path("/")) { "Back to sign in" } }
        }
    }
}

fn reset_confirm_form(kw: &Keyward, token: &str, message: Option<Markup>) -> Markup {
    html! {
        section.card {
            h1 { "Choose a new password" }
            @if let Some(m) = message { (m) }
            form method="post" action=(kw.path("/v1/password-reset/confirm")) {
                input type="hidden" name="token" value=(token);
                label for="new_password" { "New password" }
                input #new_password type="password" name="new_password" autocomplete="new-password" required minlength="8" maxlength="256" autofocus;
                p.help { "At least 8 characters; not a common password. Every session of the account ends." }
                button type="submit" { "Set the new password" }
            }
        }
    }
}

/// `/reset-password`: without a token, the form that asks for a link; with one (the mailed
/// link), the form that sets the new password. Opening the link uses up nothing.
async fn reset_password_page(State(kw): State<Keyward>, Query(q): Query<LinkQuery>) -> Response {
    let title = "Reset password";
    if !kw.auth().mail_enabled() {
        return mail_off(&kw, title);
    }
    let body = match q.token.as_deref() {
        Some(token) => reset_confirm_form(&kw, token, None),
        None => reset_request_form(
            &kw,
            q.sent.is_some().then(|| {
                let lasting = keyward_core::TicketKind::ResetPassword.lasting();
                alert(
                    "ok",
                    &format!("If an account matches and has a confirmed email address, a link was sent to it. It works for {lasting}."),
                )
            }),
        ),
    };
    link_page(StatusCode::OK, layout(&kw, title, None, body))
}

fn with_retry(mut res: Response, err: &ApiError) -> Response {
    if let ApiError::TooManyRequests { retry_after } = err {
        res.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_seconds(*retry_after)),
        );
    }
    res
}

/// The reset request form again, after a refused form post.
pub(crate) fn reset_request_failed(kw: &Keyward, err: ApiError) -> Response {
    if matches!(err, ApiError::NotConfigured(_)) {
        return mail_off(kw, "Reset password");
    }
    let body = reset_request_form(kw, Some(alert("error", &err.detail())));
    let res = page(err.status(), layout(kw, "Reset password", None, body));
    with_retry(res, &err)
}

/// The new-password form again (or a dead link's page), after a refused form post.
pub(crate) fn reset_confirm_failed(kw: &Keyward, token: &str, err: ApiError) -> Response {
    if matches!(err, ApiError::NotConfigured(_)) {
        return mail_off(kw, "Reset password");
    }
    let body = if matches!(err, ApiError::BadRequest(_)) {
        html! {
            section.card {
                h1 { "This link no longer works" }
                (alert("error", &err.detail()))
                p { a.button href=(kw.path("/reset-password")) { "Ask for a new link" } }
            }
        }
    } else {
        reset_confirm_form(kw, token, Some(alert("error", &err.detail())))
    };
    let res = link_page(err.status(), layout(kw, "Reset password", None, body));
    with_retry(res, &err)
}

/// `/verify-email`: the mailed link opens a page whose button confirms the address (a mail
/// scanner fetching the link confirms nothing).
async fn verify_email_page(State(kw): State<Keyward>, Query(q): Query<LinkQuery>) -> Response {
    let title = "Confirm email";
    if q.verified.is_some() {
        let body = html! {
            section.card {
                h1 { "Email address confirmed" }
                (alert("ok", "Your email address is confirmed. Password-reset links can now be sent to it."))
                p { a.button href=(kw.path("/account")) { "Go to your account" } }
            }
        };
        return page(StatusCode::OK, layout(&kw, title, None, body));
    }
    if !kw.auth().mail_enabled() {
        return mail_off(&kw, title);
    }
    let body = html! {
        section.card {
            h1 { "Confirm your email address" }
            @match q.token.as_deref() {
                Some(token) => {
                    p { "Press the button to confirm that this address is yours." }
                    form method="post" action=(kw.path("/v1/email/verify")) {
                        input type="hidden" name="token" value=(token);
                        button type="submit" { "Confirm this address" }
                    }
                },
                None => { (alert("error", "This page needs the link from the mail we sent.")) },
            }
        }
    };
    link_page(StatusCode::OK, layout(&kw, title, None, body))
}

/// The confirmation page again, after a refused form post.
pub(crate) fn verify_email_failed(kw: &Keyward, _token: &str, err: ApiError) -> Response {
    if matches!(err, ApiError::NotConfigured(_)) {
        return mail_off(kw, "Confirm email");
    }
    let body = html! {
        section.card {
            h1 { "The address could not be confirmed" }
            (alert("error", &err.detail()))
            p { "Sign in and ask for a new link from your account page." }
            p { a.button href=(kw.path("/account")) { "Go to your account" } }
        }
    };
    let res = link_page(err.status(), layout(kw, "Confirm email", None, body));
    with_retry(res, &err)
}

// ------------------------------------------------------------------ second factor

fn code_form(kw: &Keyward, mfa_token: &str, next: &str, message: Option<Markup>) -> Markup {
    html! {
        section.card {
            h1 { "Two-step sign-in" }
            @if let Some(m) = message { (m) }
            p { "Enter the 6-digit code from your authenticator app, or one of your recovery codes." }
            form method="post" action=(kw.path("/v1/sessions/mfa")) {
                input type="hidden" name="mfa_token" value=(mfa_token);
                input type="hidden" name="next" value=(next);
                label for="code" { "Code" }
                input #code type="text" name="code" autocomplete="one-time-code" inputmode="numeric" required maxlength="64" autofocus;
                button type="submit" { "Sign in" }
            }
            p.aside { a href=(kw.path("/")) { "Start again" } }
        }
    }
}

/// The code page again after a refused code (or the sign-in page when the token is over).
pub(crate) fn code_failed(
    kw: &Keyward,
    mfa_token: &str,
    next: Option<&str>,
    err: ApiError,
) -> Response {
    if matches!(err, ApiError::MfaTokenInvalid(_)) {
        return sign_in_failed(kw, "", next, err);
    }
    let next = local_target(next, &kw.path("/account"));
    let mut res = page(
        err.status(),
        layout(
            kw,
            "Two-step sign-in",
            None,
            code_form(kw, mfa_token, &next, Some(alert("error", &err.detail()))),
        ),
    );
    crate::authorize::allow_continuation(kw, &mut res, &next);
    with_retry(res, &err)
}

/// An `otpauth://` URI as an SVG QR code, drawn on the server (no script, no image request).
fn qr_svg(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .quiet_zone(true)
        .build();
    // Inline in HTML: drop the XML declaration.
    Some(match svg.find("<svg") {
        Some(i) => svg.get(i..).unwrap_or_default().to_owned(),
        None => svg,
    })
}

async fn totp_begin(
    State(kw): State<Keyward>,
    AccountForm { cs, form, client }: AccountForm<crate::mfa::CurrentPassword>,
) -> Result<Response, ApiError> {
    let enrolment = match kw
        .auth()
        .begin_totp(
            cs.session.user_id,
            &Password::new(form.current_password),
            &client,
        )
        .await
    {
        Ok(e) => e,
        Err(e) => return account_failed(&kw, &cs, e).await,
    };
    let body = html! {
        section.card {
            h1 { "Set up two-step sign-in" }
            p { "Scan this code with your authenticator app (or type the key below), then enter the 6-digit code it shows." }
            figure #totp-qr aria-label="QR code of the authenticator key" {
                (maud::PreEscaped(qr_svg(&enrolment.otpauth_uri).unwrap_or_default()))
            }
            p { "Key: " code #totp-secret { (enrolment.secret) } }
            p.help { "Or open: " code #totp-uri { (enrolment.otpauth_uri) } }
            form method="post" action=(kw.path("/account/totp/confirm")) {
                label for="code" { "Code from your app" }
                input #code type="text" name="code" autocomplete="one-time-code" inputmode="numeric" required maxlength="6" autofocus;
                button type="submit" { "Turn on two-step sign-in" }
            }
        }
    };
    Ok(page(
        StatusCode::OK,
        layout(&kw, "Two-step sign-in", Some(&cs.session.username), body),
    ))
}

async fn totp_confirm(
    State(kw): State<Keyward>,
    AccountForm { cs, form, client }: AccountForm<crate::mfa::Code>,
) -> Result<Response, ApiError> {
    let codes = match kw
        .auth()
        .confirm_totp(cs.session.user_id, &form.code, &client)
        .await
    {
        Ok(c) => c,
        Err(e) => return account_failed(&kw, &cs, e).await,
    };
    let body = html! {
        section.card {
            h1 { "Two-step sign-in is on" }
            (alert("ok", "From now on, signing in asks for a code from your app."))
            p { "Keep these recovery codes somewhere safe. Each signs you in once if you lose your phone; they are shown only now." }
            ul #recovery-codes { @for c in &codes { li { code { (c) } } } }
            p { a.button href=(kw.path("/account")) { "Back to your account" } }
        }
    };
    Ok(page(
        StatusCode::OK,
        layout(&kw, "Two-step sign-in", Some(&cs.session.username), body),
    ))
}

async fn totp_disable(
    State(kw): State<Keyward>,
    AccountForm { cs, form, client }: AccountForm<crate::mfa::Disable>,
) -> Result<Response, ApiError> {
    match kw
        .auth()
        .disable_totp(
            cs.session.user_id,
            &Password::new(form.current_password),
            form.code.as_deref(),
            &client,
        )
        .await
    {
        Ok(()) => Ok(Redirect::to(&kw.path("/account")).into_response()),
        Err(e) => account_failed(&kw, &cs, e).await,
    }
}
