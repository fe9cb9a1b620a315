//! The one place where errors become HTTP: RFC 9457 problem+json for every failure.
//!
//! Building a response has no side effects beyond one log line for server-side failures;
//! details of internal errors never reach the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::{AuthError, StoreError};
use serde::Serialize;
use time::Duration;

/// `WWW-Authenticate` value for requests without valid credentials.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"keyward\"";

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid credentials (401 with `WWW-Authenticate`).
    #[error("authentication required")]
    Unauthorized,
    /// A bearer token that is not valid (401 with `error="invalid_token"`).
    #[error("the access token is invalid, expired or revoked")]
    InvalidToken,
    /// A login failed: unknown user, wrong password or locked account alike (401).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Refused (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource (404).
    #[error("not found")]
    NotFound,
    /// Method not allowed on this route (405).
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// Conflict (409).
    #[error("{0}")]
    Conflict(String),
    /// Body too large (413).
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    /// Unsupported content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed but invalid input (422).
    #[error("{0}")]
    Unprocessable(String),
    /// Throttled (429 with `Retry-After`).
    #[error("too many failed attempts")]
    TooManyRequests {
        /// When to retry.
        retry_after: Duration,
    },
    /// A store is unavailable (503 with `Retry-After`).
    #[error("a store is unavailable")]
    Unavailable,
    /// Anything else (500); the cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidCredentials | Self::InvalidToken => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable explanation sent to the client.
    pub fn detail(&self) -> String {
        match self {
            Self::Unauthorized => "a valid session cookie or bearer token is required".into(),
            Self::TooManyRequests { retry_after } => {
                format!(
                    "too many failed attempts; retry in {} seconds",
                    retry_seconds(*retry_after)
                )
            }
            Self::Unavailable => "a store is temporarily unavailable; retry shortly".into(),
            Self::Internal(_) => "the server failed to handle the request".into(),
            other => other.to_string(),
        }
    }
}

/// Whole seconds to wait, rounded up, at least one.
pub fn retry_seconds(d: Duration) -> i64 {
    let ms = d.whole_milliseconds();
    i64::try_from((ms + 999) / 1000).unwrap_or(i64::MAX).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(cause = %cause, "request failed");
        }
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            Self::Unauthorized | Self::InvalidCredentials => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(WWW_AUTHENTICATE),
                );
            }
            Self::InvalidToken => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"keyward\", error=\"invalid_token\", error_description=\"the access token is invalid, expired or revoked\"",
                    ),
                );
            }
            Self::TooManyRequests { retry_after } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_seconds(*retry_after)),
                );
            }
            Self::Unavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "store unavailable");
                Self::Unavailable
            }
            StoreError::Conflict(what) => Self::Conflict(format!("conflict: {what}")),
            StoreError::Corrupt(what) => {
                Self::Internal(format!("store holds invalid data: {what}"))
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => Self::InvalidCredentials,
            AuthError::Throttled { retry_after } => Self::TooManyRequests { retry_after },
            AuthError::TooLong(field) => Self::Unprocessable(format!("{field} is too long")),
            AuthError::UsernameTaken => Self::Conflict("username is already taken".into()),
            AuthError::InvalidUsername(e) => Self::Unprocessable(e.to_string()),
            AuthError::WeakPassword(e) => Self::Unprocessable(e.to_string()),
            AuthError::RegistrationClosed => Self::Forbidden("registration is closed".into()),
            AuthError::WrongCurrentPassword => {
                Self::Forbidden("current password is incorrect".into())
            }
            AuthError::NoSuchUser => Self::NotFound,
            AuthError::SessionGone => Self::Unauthorized,
            AuthError::Store(e) => e.into(),
            AuthError::Hash(e) => Self::Internal(e.to_string()),
            AuthError::Random(e) => Self::Internal(e.to_string()),
        }
    }
}
