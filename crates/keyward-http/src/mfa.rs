//! The second factor on the JSON API: TOTP enrolment, confirmation and removal, and the
//! second step of a TOTP account's sign-in (`POST /v1/sessions/mfa`; the pages' code form
//! posts here too).

use crate::error::ApiError;
use crate::extract::{BodyKind, ClientAddr, Input, JsonBody, Principal};
use crate::routes::{client_info, local_target, session_created, signed_in_redirect};
use crate::{pages, Keyward};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use keyward_core::Password;
use serde::Deserialize;
use serde_json::json;

pub(crate) fn routes() -> Router<Keyward> {
    Router::new()
        .route("/v1/users/me/totp", post(begin_totp).delete(disable_totp))
        .route("/v1/users/me/totp/confirm", post(confirm_totp))
        .route("/v1/sessions/mfa", post(sign_in_code))
}

#[derive(Deserialize)]
pub(crate) struct CurrentPassword {
    pub(crate) current_password: String,
}

/// `200 {"secret","otpauth_uri"}`: pending until a code of it is confirmed.
async fn begin_totp(
    State(kw): State<Keyward>,
    principal: Principal,
    addr: ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CurrentPassword>,
) -> Result<Response, ApiError> {
    let client = client_info(&kw, addr, &headers);
    let user = principal.user().ok_or(ApiError::InvalidToken)?;
    let e = kw
        .auth()
        .begin_totp(user, &Password::new(body.current_password), &client)
        .await?;
    Ok(Json(json!({"secret": e.secret, "otpauth_uri": e.otpauth_uri})).into_response())
}

#[derive(Deserialize)]
pub(crate) struct Code {
    pub(crate) code: String,
}

/// `200 {"recovery_codes":[…10]}`: TOTP is on.
async fn confirm_totp(
    State(kw): State<Keyward>,
    principal: Principal,
    addr: ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Code>,
) -> Result<Response, ApiError> {
    let client = client_info(&kw, addr, &headers);
    let user = principal.user().ok_or(ApiError::InvalidToken)?;
    let codes = kw.auth().confirm_totp(user, &body.code, &client).await?;
    Ok(Json(json!({ "recovery_codes": codes })).into_response())
}

#[derive(Deserialize)]
pub(crate) struct Disable {
    pub(crate) current_password: String,
    #[serde(default)]
    pub(crate) code: Option<String>,
}

/// `204`: TOTP is off, its recovery codes gone.
async fn disable_totp(
    State(kw): State<Keyward>,
    principal: Principal,
    addr: ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Disable>,
) -> Result<StatusCode, ApiError> {
    let client = client_info(&kw, addr, &headers);
    let user = principal.user().ok_or(ApiError::InvalidToken)?;
    kw.auth()
        .disable_totp(
            user,
            &Password::new(body.current_password),
            body.code.as_deref(),
            &client,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct SignInCode {
    pub(crate) mfa_token: String,
    pub(crate) code: String,
    /// Forms only: where to go after signing in.
    #[serde(default)]
    pub(crate) next: Option<String>,
}

/// `201` as a sign-in (a form: `303` on to the page it was going to).
async fn sign_in_code(
    State(kw): State<Keyward>,
    addr: ClientAddr,
    headers: HeaderMap,
    Input { value, kind }: Input<SignInCode>,
) -> Response {
    let client = client_info(&kw, addr, &headers);
    let result = kw
        .auth()
        .complete_mfa(&value.mfa_token, &value.code, &client)
        .await;
    match (result, kind) {
        (Ok(new), BodyKind::Json) => session_created(&kw, &new, StatusCode::CREATED),
        (Ok(new), BodyKind::Form) => {
            // The code page carries on the sign-in's own target.
            let to = local_target(value.next.as_deref(), &kw.path("/account"));
            signed_in_redirect(&kw, &new, &to)
        }
        (Err(e), BodyKind::Json) => ApiError::from(e).into_response(),
        (Err(e), BodyKind::Form) => pages::code_failed(
            &kw,
            &value.mfa_token,
            value.next.as_deref(),
            ApiError::from(e),
        ),
    }
}
