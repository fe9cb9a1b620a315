//! OAuth endpoints (RFC 6749 token, RFC 7009 revocation, RFC 7662 introspection, RFC 8414
//! metadata) and the JWKS. Errors here use the RFC 6749 shape `{"error","error_description"}`.

use crate::error::retry_seconds;
use crate::extract::{bearer_token, body_kind, read_body, BodyKind, ClientAddr};
use crate::Keyward;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward_core::{Password, StoreError};
use keyward_token::{TokenError, TokenService};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub(crate) fn routes() -> Router<Keyward> {
    Router::new()
        .route("/v1/token", post(token))
        .route("/v1/token/revoke", post(revoke))
        .route("/v1/token/introspect", post(introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
}

/// An RFC 6749 error response.
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<i64>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "a store is temporarily unavailable; retry shortly",
        );
        e.retry_after = Some(5);
        e
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward\""),
            );
        }
        res
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %cause, "store unavailable");
                Self::unavailable()
            }
            other => {
                tracing::error!(cause = %other, "token request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the server failed to handle the request",
                )
            }
        }
    }
}

impl From<TokenError> for OAuthError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::InvalidGrant => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the credentials or the refresh token are invalid, expired or revoked",
            ),
            TokenError::Throttled { retry_after } => {
                let mut e = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "slow_down",
                    format!(
                        "too many failed attempts; retry in {} seconds",
                        retry_seconds(retry_after)
                    ),
                );
                e.retry_after = Some(retry_seconds(retry_after));
                e
            }
            TokenError::TooLong(field) => Self::invalid_request(format!("{field} is too long")),
            TokenError::Store(s) => s.into(),
            other => {
                tracing::error!(cause = %other, "token request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the server failed to handle the request",
                )
            }
        }
    }
}

/// The parameters of the OAuth endpoints, from a form or JSON. Every field is optional here so
/// that a missing one gets `invalid_request` naming it, not a generic decoding error.
#[derive(Debug, Default, Deserialize)]
struct Params {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    token: Option<String>,
    #[allow(dead_code)] // accepted and ignored: tokens carry their own type
    token_type_hint: Option<String>,
}

async fn params(req: Request) -> Result<Params, OAuthError> {
    let Some(kind) = body_kind(req.headers()) else {
        return Err(OAuthError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send application/x-www-form-urlencoded or application/json",
        ));
    };
    let bytes = read_body(req)
        .await
        .map_err(|e| OAuthError::new(e.status(), "invalid_request", e.detail()))?;
    if kind == BodyKind::Json {
        serde_json::from_slice(&bytes).map_err(|e| {
            OAuthError::invalid_request(format!(
                "the body is not a JSON object of string parameters (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    } else {
        if std::str::from_utf8(&bytes).is_err() {
            return Err(OAuthError::invalid_request(
                "the form body is not valid UTF-8",
            ));
        }
        serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| OAuthError::invalid_request("the form body is malformed"))
    }
}

fn service(kw: &Keyward) -> Result<&Arc<TokenService>, OAuthError> {
    kw.tokens().ok_or_else(|| {
        OAuthError::new(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "token authentication is not enabled",
        )
    })
}

fn required(v: Option<String>, name: &str) -> Result<String, OAuthError> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| OAuthError::invalid_request(format!("missing parameter {name}")))
}

async fn token(State(kw): State<Keyward>, ClientAddr(ip): ClientAddr, req: Request) -> Response {
    match token_inner(&kw, ip, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn token_inner(
    kw: &Keyward,
    ip: Option<std::net::IpAddr>,
    req: Request,
) -> Result<Response, OAuthError> {
    let svc = service(kw)?;
    let p = params(req).await?;
    let grant = required(p.grant_type, "grant_type")?;
    let pair = match grant.as_str() {
        "password" => {
            let username = required(p.username, "username")?;
            let password = required(p.password, "password")?;
            svc.password_grant(&username, &Password::new(password), ip)
                .await?
        }
        "refresh_token" => {
            svc.refresh_grant(&required(p.refresh_token, "refresh_token")?)
                .await?
        }
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {shown:?} is not supported (password, refresh_token)"),
            ));
        }
    };
    let body = json!({
        "access_token": pair.access_token,
        "token_type": "Bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token.expose(),
    });
    Ok(([(header::PRAGMA, "no-cache")], Json(body)).into_response())
}

async fn revoke(State(kw): State<Keyward>, req: Request) -> Response {
    let result: Result<(), OAuthError> = async {
        let svc = service(&kw)?;
        let token = required(params(req).await?.token, "token")?;
        svc.revoke(&token).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

fn introspection_allowed(kw: &Keyward, headers: &HeaderMap) -> bool {
    match (&kw.config().introspection_token, bearer_token(headers)) {
        (Some(expected), Some(given)) => expected.as_bytes().ct_eq(given.as_bytes()).into(),
        _ => false,
    }
}

async fn introspect(State(kw): State<Keyward>, req: Request) -> Response {
    let result: Result<Response, OAuthError> = async {
        let svc = service(&kw)?;
        if !introspection_allowed(&kw, req.headers()) {
            return Err(OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "introspection needs Authorization: Bearer <introspection token>",
            ));
        }
        let token = required(params(req).await?.token, "token")?;
        Ok(match svc.introspect(&token).await? {
            Some(info) => Json(info).into_response(),
            None => Json(json!({"active": false})).into_response(),
        })
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn jwks(State(kw): State<Keyward>) -> Response {
    match kw.tokens() {
        Some(svc) => (
            [(header::CACHE_CONTROL, "public, max-age=60")],
            Json(svc.keyring().jwks()),
        )
            .into_response(),
        None => crate::ApiError::NotFound.into_response(),
    }
}

async fn metadata(State(kw): State<Keyward>) -> Response {
    let Some(svc) = kw.tokens() else {
        return crate::ApiError::NotFound.into_response();
    };
    let base = kw
        .config()
        .public_url
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    Json(json!({
        "issuer": svc.config().issuer,
        "token_endpoint": format!("{base}/v1/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{base}/v1/token/revoke"),
        "introspection_endpoint": format!("{base}/v1/token/introspect"),
        "grant_types_supported": ["password", "refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "service_documentation": format!("{base}/openapi.json"),
    }))
    .into_response()
}
