//! OAuth endpoints (RFC 6749 token, RFC 7009 revocation, RFC 7662 introspection, RFC 8414
//! metadata) and the JWKS. Errors here use the RFC 6749 shape `{"error","error_description"}`.

use crate::error::{ApiError, OAuth};
use crate::extract::{
    bearer_token, body_kind, decode_form, decode_json, read_body, BodyKind, ClientAddr,
};
use crate::Keyward;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward_core::Password;
use keyward_token::TokenService;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) fn routes() -> Router<Keyward> {
    Router::new()
        .route("/v1/token", post(token))
        .route("/v1/token/revoke", post(revoke))
        .route("/v1/token/introspect", post(introspect))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
}

/// The parameters of the OAuth endpoints, from a form or JSON. Every field is optional here so
/// that a missing one gets `invalid_request` naming it, not a generic decoding error.
#[derive(Default, Deserialize)]
struct Params {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    token: Option<String>,
    #[allow(dead_code)] // accepted and ignored: tokens carry their own type
    token_type_hint: Option<String>,
}

async fn params(req: Request) -> Result<Params, OAuth> {
    let Some(kind) = body_kind(req.headers()) else {
        return Err(OAuth(ApiError::UnsupportedMediaType(
            "send application/x-www-form-urlencoded or application/json".into(),
        )));
    };
    let bytes = read_body(req).await?;
    Ok(match kind {
        BodyKind::Json => decode_json(&bytes)?,
        BodyKind::Form => decode_form(&bytes)?,
    })
}

fn service(kw: &Keyward) -> Result<&Arc<TokenService>, OAuth> {
    kw.tokens().ok_or(OAuth(ApiError::NotFound))
}

fn required(v: Option<String>, name: &str) -> Result<String, OAuth> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| OAuth(ApiError::BadRequest(format!("missing parameter {name}"))))
}

async fn token(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    req: Request,
) -> Result<Response, OAuth> {
    let svc = service(&kw)?;
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
            svc.refresh_grant(&required(p.refresh_token, "refresh_token")?, ip)
                .await?
        }
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(OAuth(ApiError::UnsupportedGrantType(format!(
                "grant_type {shown:?} is not supported ({})",
                grant_types(svc).join(", ")
            ))));
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

/// The grants the token endpoint offers.
fn grant_types(svc: &TokenService) -> Vec<&'static str> {
    let mut grants = Vec::new();
    if svc.config().password_grant {
        grants.push("password");
    }
    grants.push("refresh_token");
    grants
}

async fn revoke(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    req: Request,
) -> Result<StatusCode, OAuth> {
    let svc = service(&kw)?;
    let token = required(params(req).await?.token, "token")?;
    svc.revoke(&token, ip).await?;
    Ok(StatusCode::OK)
}

async fn introspect(
    State(kw): State<Keyward>,
    ClientAddr(ip): ClientAddr,
    req: Request,
) -> Result<Response, OAuth> {
    let svc = service(&kw)?;
    svc.introspection_client(bearer_token(req.headers()), ip)
        .await?;
    let token = required(params(req).await?.token, "token")?;
    Ok(match svc.introspect(&token).await? {
        Some(info) => Json(info).into_response(),
        None => Json(json!({"active": false})).into_response(),
    })
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
        "grant_types_supported": grant_types(svc),
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "service_documentation": format!("{base}/openapi.json"),
    }))
    .into_response()
}
