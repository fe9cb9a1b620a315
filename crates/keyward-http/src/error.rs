//! The one place where errors become HTTP. Every failure is an [`ApiError`]; it is rendered as
//! RFC 9457 problem+json, or, on the OAuth endpoints, wrapped in [`OAuth`] and rendered in the
//! RFC 6749 shape `{"error","error_description"}`. Status codes are decided here alone.
//!
//! Building a response has no side effects beyond one log line for server-side failures;
//! details of internal errors never reach the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::{AuthError, StoreError};
use keyward_token::TokenError;
use serde::Serialize;
use time::Duration;

/// `WWW-Authenticate` value for requests without valid credentials.
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"keyward\"";

/// A cause kept for the log, never shown to a client.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Malformed request (400; OAuth `invalid_request`).
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
    /// A valid bearer token that does not reach this resource (403 with
    /// `error="insufficient_scope"`, RFC 6750 §3.1).
    #[error("{0}")]
    InsufficientScope(String),
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
    /// Well-formed but invalid input (422; OAuth `invalid_request`, 400).
    #[error("{0}")]
    Unprocessable(String),
    /// Throttled (429 with `Retry-After`).
    #[error("too many failed attempts")]
    TooManyRequests {
        /// When to retry.
        retry_after: Duration,
    },
    /// OAuth `invalid_grant` (400): bad credentials, or an unknown, used, revoked or expired
    /// refresh token.
    #[error("{0}")]
    InvalidGrant(String),
    /// OAuth `unsupported_grant_type` (400).
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// OAuth `invalid_client` (401): the caller's own credential is wrong.
    #[error("{0}")]
    InvalidClient(String),
    /// OAuth `invalid_client` (401, `WWW-Authenticate: Basic`): an OAuth client is unknown or
    /// failed to authenticate.
    #[error("{0}")]
    ClientAuthFailed(String),
    /// OAuth `unauthorized_client` (400): the client may not use this grant.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// A store is unavailable (503 with `Retry-After`).
    #[error("a store is unavailable")]
    Unavailable,
    /// The password was right and the account has TOTP (401, problem type `…mfa-required`,
    /// with the `mfa_token` for `POST /v1/sessions/mfa`).
    #[error(
        "a second factor is required: send a code with this mfa_token to POST /v1/sessions/mfa"
    )]
    MfaRequired(keyward_core::SessionToken),
    /// The second step of a sign-in failed: a wrong or used code (401).
    #[error("{0}")]
    SignInRefused(String),
    /// The second step's token is over: sign in again (401).
    #[error("{0}")]
    MfaTokenInvalid(String),
    /// A feature this server was not set up for (503): email without `--smtp-url`.
    #[error("{0}")]
    NotConfigured(&'static str),
    /// Anything else (500); the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Cause),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    /// The second step's token (`mfa-required` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    mfa_token: Option<&'a str>,
}

/// The problem type of a sign-in that needs its second step.
pub const MFA_REQUIRED_TYPE: &str = "urn:keyward:problem:mfa-required";

impl ApiError {
    /// An internal error with this cause.
    pub fn internal(cause: impl Into<Cause>) -> Self {
        Self::Internal(cause.into())
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_)
            | Self::InvalidGrant(_)
            | Self::UnsupportedGrantType(_)
            | Self::UnauthorizedClient(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized
            | Self::MfaRequired(_)
            | Self::SignInRefused(_)
            | Self::MfaTokenInvalid(_)
            | Self::InvalidCredentials
            | Self::InvalidToken
            | Self::InvalidClient(_)
            | Self::ClientAuthFailed(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable | Self::NotConfigured(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable explanation sent to the client.
    pub fn detail(&self) -> String {
        match self {
            Self::Unauthorized => "a valid session cookie or bearer token is required".into(),
            Self::TooManyRequests { retry_after } => {
                format!(
                    "too many attempts; retry in {} seconds",
                    retry_seconds(*retry_after)
                )
            }
            Self::Unavailable => "a store is temporarily unavailable; retry shortly".into(),
            Self::Internal(_) => "the server failed to handle the request".into(),
            other => other.to_string(),
        }
    }

    /// The RFC 6749 `error` code and the status of the OAuth rendering.
    fn oauth(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            Self::UnsupportedGrantType(_) => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
            Self::InvalidClient(_) | Self::ClientAuthFailed(_) => {
                (StatusCode::UNAUTHORIZED, "invalid_client")
            }
            Self::UnauthorizedClient(_) => (StatusCode::BAD_REQUEST, "unauthorized_client"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            Self::Unprocessable(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            other => (other.status(), "invalid_request"),
        }
    }

    /// Log what the client will not be told.
    fn log(&self) {
        if let Self::Internal(cause) = self {
            tracing::error!(cause = %chain(cause.as_ref()), "request failed");
        }
    }

    /// The headers that go with the status: `WWW-Authenticate`, `Retry-After`.
    fn headers(&self, status: StatusCode, res: &mut Response) {
        let h = res.headers_mut();
        match self {
            Self::InsufficientScope(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"keyward\", error=\"insufficient_scope\"",
                    ),
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
            Self::ClientAuthFailed(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"keyward\""),
                );
            }
            _ if status == StatusCode::UNAUTHORIZED => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(WWW_AUTHENTICATE),
                );
            }
            _ => {}
        }
    }
}

/// An error and its causes on one line, for logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whole seconds to wait, rounded up, at least one.
pub fn retry_seconds(d: Duration) -> i64 {
    let ms = d.whole_milliseconds();
    i64::try_from((ms + 999) / 1000).unwrap_or(i64::MAX).max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let (kind, mfa_token) = match &self {
            Self::MfaRequired(token) => (MFA_REQUIRED_TYPE, Some(token.expose())),
            _ => ("about:blank", None),
        };
        let problem = Problem {
            kind,
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            mfa_token,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        self.headers(status, &mut res);
        res
    }
}

/// An [`ApiError`] answered in the RFC 6749 shape, as the OAuth endpoints do.
#[derive(Debug)]
pub struct OAuth(pub ApiError);

impl<E: Into<ApiError>> From<E> for OAuth {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

#[derive(Serialize)]
struct OAuthBody<'a> {
    error: &'a str,
    error_description: String,
}

impl IntoResponse for OAuth {
    fn into_response(self) -> Response {
        let e = self.0;
        e.log();
        let (status, error) = e.oauth();
        let body = OAuthBody {
            error,
            error_description: e.detail(),
        };
        let mut res = (status, axum::Json(body)).into_response();
        e.headers(status, &mut res);
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %chain(cause.as_ref()), "store unavailable");
                Self::Unavailable
            }
            StoreError::Conflict(what) => Self::Conflict(format!("conflict: {what}")),
            // Corrupt data, and any kind a later version adds: the server's fault.
            other => Self::internal(other),
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
            AuthError::MailNotConfigured => {
                Self::NotConfigured("email is not configured on this server (no --smtp-url)")
            }
            AuthError::InvalidLink => Self::BadRequest(
                "the link is invalid, has expired or was already used; ask for a new one".into(),
            ),
            AuthError::EmailTaken => {
                Self::Conflict("this email address belongs to another account".into())
            }
            AuthError::InvalidEmail(e) => Self::Unprocessable(e.to_string()),
            AuthError::MfaRequired(token) => Self::MfaRequired(token),
            e @ AuthError::InvalidMfaToken => Self::MfaTokenInvalid(e.to_string()),
            e @ AuthError::WrongSignInCode => Self::SignInRefused(e.to_string()),
            e @ (AuthError::WrongCode | AuthError::CodeRequired) => Self::Forbidden(e.to_string()),
            e @ (AuthError::TotpAlreadyOn | AuthError::TotpNotPending | AuthError::TotpNotOn) => {
                Self::Conflict(e.to_string())
            }
            AuthError::MfaUnavailable => {
                Self::NotConfigured("the second factor is not available on this server")
            }
            // Hashing and randomness failures, and any kind a later version adds.
            other => Self::internal(other),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::InvalidGrant => Self::InvalidGrant(
                "the credentials or the refresh token are invalid, expired or revoked".into(),
            ),
            TokenError::Throttled { retry_after } => Self::TooManyRequests { retry_after },
            TokenError::TooLong(field) => Self::Unprocessable(format!("{field} is too long")),
            TokenError::PasswordGrantDisabled => Self::UnsupportedGrantType(
                "grant_type password is turned off on this server".into(),
            ),
            TokenError::InvalidClient => Self::InvalidClient(
                "introspection needs Authorization: Bearer <introspection token>".into(),
            ),
            e @ TokenError::SecondFactorRequired => Self::InvalidGrant(e.to_string()),
            TokenError::ClientAuthentication(why) => Self::ClientAuthFailed(why.into()),
            TokenError::UnauthorizedClient(why) => Self::UnauthorizedClient(why.into()),
            TokenError::InvalidCode(why) => Self::InvalidGrant(why.into()),
            TokenError::InvalidRequest(why) => Self::BadRequest(why.into()),
            TokenError::Store(s) => s.into(),
            TokenError::Auth(a) => a.into(),
            other => Self::internal(other),
        }
    }
}
