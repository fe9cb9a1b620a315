//! Email and account recovery on the JSON API (and the forms of the pages, which post here):
//! the address of an account and its verification, and password reset by mail.

use crate::error::ApiError;
use crate::extract::{BodyKind, ClientAddr, Input, JsonBody, Principal};
use crate::routes::client_info;
use crate::{pages, Keyward};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use keyward_core::{Password, ResetFor};
use serde::Deserialize;
use serde_json::json;

pub(crate) fn routes() -> Router<Keyward> {
    Router::new()
        .route("/v1/users/me/email", put(change_email))
        .route("/v1/email/verify", post(verify_email))
        .route("/v1/password-reset", post(request_reset))
        .route("/v1/password-reset/confirm", post(confirm_reset))
}

/// A form's empty field is no value.
pub(crate) fn given(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

#[derive(Deserialize)]
pub(crate) struct EmailChange {
    pub(crate) email: String,
    pub(crate) current_password: String,
    /// With TOTP on: a current code (step-up).
    #[serde(default)]
    pub(crate) code: Option<String>,
}

/// `202`: a link went to the new address; the account keeps the old one until it is used.
async fn change_email(
    State(kw): State<Keyward>,
    principal: Principal,
    addr: ClientAddr,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EmailChange>,
) -> Result<Response, ApiError> {
    let client = client_info(&kw, addr, &headers);
    let user = principal.user().ok_or(ApiError::InvalidToken)?;
    kw.auth()
        .change_email(
            user,
            &body.email,
            &Password::new(body.current_password),
            body.code.as_deref(),
            &client,
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "detail": "a link to confirm the address was sent to it; until it is used the account keeps its current address"
        })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct LinkToken {
    pub(crate) token: String,
}

async fn verify_email(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    Input { value, kind }: Input<LinkToken>,
) -> Response {
    match (kw.auth().verify_email(&value.token, ip).await, kind) {
        (Ok(_), BodyKind::Json) => StatusCode::NO_CONTENT.into_response(),
        (Ok(_), BodyKind::Form) => {
            Redirect::to(&kw.path("/verify-email?verified=1")).into_response()
        }
        (Err(e), BodyKind::Json) => ApiError::from(e).into_response(),
        (Err(e), BodyKind::Form) => {
            pages::verify_email_failed(&kw, &value.token, ApiError::from(e))
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ResetRequest {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// What every reset request is answered, whether or not the account exists.
const RESET_ACCEPTED: &str = "if an account matches and has a verified email address, a link to reset its password was sent to that address";

async fn request_reset(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    Input { value, kind }: Input<ResetRequest>,
) -> Response {
    let who = match (given(value.username), given(value.email)) {
        (Some(name), None) => Ok(ResetFor::Username(name)),
        (None, Some(email)) => Ok(ResetFor::Email(email)),
        _ => Err(ApiError::Unprocessable(
            "give either \"username\" or \"email\"".into(),
        )),
    };
    let result = match who {
        Ok(who) => kw
            .auth()
            .request_password_reset(who, ip)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match (result, kind) {
        (Ok(()), BodyKind::Json) => (
            StatusCode::ACCEPTED,
            Json(json!({ "detail": RESET_ACCEPTED })),
        )
            .into_response(),
        (Ok(()), BodyKind::Form) => {
            Redirect::to(&kw.path("/reset-password?sent=1")).into_response()
        }
        (Err(e), BodyKind::Json) => e.into_response(),
        (Err(e), BodyKind::Form) => pages::reset_request_failed(&kw, e),
    }
}

#[derive(Deserialize)]
pub(crate) struct ResetConfirm {
    token: String,
    new_password: String,
}

async fn confirm_reset(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    Input { value, kind }: Input<ResetConfirm>,
) -> Response {
    let result = kw
        .auth()
        .confirm_password_reset(&value.token, &Password::new(value.new_password), ip)
        .await;
    match (result, kind) {
        (Ok(_), BodyKind::Json) => StatusCode::NO_CONTENT.into_response(),
        (Ok(_), BodyKind::Form) => Redirect::to(&kw.path("/?reset=1")).into_response(),
        (Err(e), BodyKind::Json) => ApiError::from(e).into_response(),
        (Err(e), BodyKind::Form) => {
            pages::reset_confirm_failed(&kw, &value.token, ApiError::from(e))
        }
    }
}
