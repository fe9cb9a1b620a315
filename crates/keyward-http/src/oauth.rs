//! OAuth endpoints (RFC 6749 token, RFC 7009 revocation, RFC 7662 introspection, RFC 8414
//! metadata) and the JWKS. Errors here use the RFC 6749 shape `{"error","error_description"}`.

use crate::error::{ApiError, OAuth};
use crate::extract::{
    bearer_token, body_kind, decode_form, decode_json, read_body, BodyKind, ClientAddr,
};
use crate::Keyward;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use keyward_core::Password;
use keyward_token::code::{ClientCredentials, CodeExchange};
use keyward_token::TokenService;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) fn routes() -> Router<Keyward> {
    // What a single-page app on another origin calls: none of it reads a cookie (the
    // token endpoint authenticates the client and the code, userinfo the bearer token), so
    // any origin may, without credentials.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600));
    // A preflight needs an OPTIONS route for the CORS layer to answer it on (axum's own
    // "method not allowed" is not layered).
    let preflight = || async { StatusCode::NO_CONTENT };
    let public = Router::new()
        .route("/v1/token", post(token).options(preflight))
        .route("/v1/token/revoke", post(revoke).options(preflight))
        .route("/.well-known/jwks.json", get(jwks).options(preflight))
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata).options(preflight),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata).options(preflight),
        )
        .merge(crate::authorize::userinfo_routes())
        .layer(cors);
    Router::new()
        .route("/v1/token/introspect", post(introspect))
        .merge(public)
        .merge(crate::authorize::routes())
}

/// The parameters of the OAuth endpoints, from a form or JSON. Every field is optional here so
/// that a missing one gets `invalid_request` naming it, not a generic decoding error.
#[derive(Default, Deserialize)]
struct Params {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    #[allow(dead_code)] // accepted: a refresh keeps the scopes of its grant
    scope: Option<String>,
    token: Option<String>,
    #[allow(dead_code)] // accepted and ignored: tokens carry their own type
    token_type_hint: Option<String>,
}

/// The client credentials of a token request (RFC 6749 §2.3.1): HTTP Basic with the
/// form-encoded id and secret, or `client_id` and `client_secret` in the body, never both.
fn client_credentials(
    authorization: Option<&HeaderValue>,
    p: &mut Params,
) -> Result<ClientCredentials, OAuth> {
    let basic = match authorization {
        Some(v) => {
            let bad = || {
                OAuth(ApiError::ClientAuthFailed(
                    "malformed Basic credentials".into(),
                ))
            };
            let text = v.to_str().map_err(|_| bad())?;
            match text.split_once(' ') {
                Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|_| bad())?;
                    let raw = String::from_utf8(raw).map_err(|_| bad())?;
                    let (id, secret) = raw.split_once(':').ok_or_else(bad)?;
                    Some((
                        form_decoded(id).ok_or_else(bad)?,
                        form_decoded(secret).ok_or_else(bad)?,
                    ))
                }
                _ => None,
            }
        }
        None => None,
    };
    let form_id = p.client_id.take().filter(|s| !s.is_empty());
    let form_secret = p.client_secret.take().filter(|s| !s.is_empty());
    match basic {
        Some((id, secret)) => {
            if form_secret.is_some() {
                return Err(OAuth(ApiError::BadRequest(
                    "use one client authentication method, not Basic and client_secret both".into(),
                )));
            }
            if form_id.as_ref().is_some_and(|f| *f != id) {
                return Err(OAuth(ApiError::BadRequest(
                    "client_id differs from the Basic credentials".into(),
                )));
            }
            // A public client may send Basic with an empty password (RFC 6749 §2.3.1).
            Ok(ClientCredentials {
                id: Some(id),
                secret: (!secret.is_empty()).then(|| SecretString::from(secret)),
            })
        }
        None => Ok(ClientCredentials {
            id: form_id,
            secret: form_secret.map(SecretString::from),
        }),
    }
}

/// One component of Basic credentials, form-decoded (`+` is a space, `%XX` a byte).
fn form_decoded(raw: &str) -> Option<String> {
    if raw.contains(['&', '=']) {
        return None;
    }
    url::form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .or_else(|| raw.is_empty().then(String::new))
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
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let mut p = params(req).await?;
    let grant = required(p.grant_type.take(), "grant_type")?;
    let known = ["password", "refresh_token", "authorization_code"];
    if grant == "password" && !svc.config().password_grant {
        return Err(OAuth(
            keyward_token::TokenError::PasswordGrantDisabled.into(),
        ));
    }
    let caller = if known.contains(&grant.as_str()) {
        let creds = client_credentials(authorization.as_ref(), &mut p)?;
        let registered_only = grant == "authorization_code";
        Some(svc.authenticate_client(creds, registered_only, ip).await?)
    } else {
        None
    };
    let pair = match (grant.as_str(), caller) {
        ("password", Some(caller)) => {
            if caller.registered().is_some() {
                return Err(OAuth(ApiError::UnauthorizedClient(
                    "the password grant is only for keyward's own client; use the authorization code flow".into(),
                )));
            }
            let username = required(p.username, "username")?;
            let password = required(p.password, "password")?;
            svc.password_grant(&username, &Password::new(password), ip)
                .await?
        }
        ("refresh_token", Some(caller)) => {
            svc.refresh_grant(
                &required(p.refresh_token, "refresh_token")?,
                caller.registered(),
                ip,
            )
            .await?
        }
        ("authorization_code", Some(caller)) => {
            let code = required(p.code, "code")?;
            let exchange = CodeExchange {
                code: &code,
                redirect_uri: p.redirect_uri.as_deref(),
                code_verifier: p.code_verifier.as_deref(),
            };
            svc.code_grant(&caller, exchange, ip).await?
        }
        other => {
            let shown: String = other.0.chars().take(40).collect();
            return Err(OAuth(ApiError::UnsupportedGrantType(format!(
                "grant_type {shown:?} is not supported ({})",
                grant_types(svc).join(", ")
            ))));
        }
    };
    let mut body = serde_json::Map::new();
    body.insert("access_token".into(), pair.access_token.into());
    body.insert("token_type".into(), "Bearer".into());
    body.insert("expires_in".into(), pair.expires_in.into());
    if let Some(refresh) = &pair.refresh_token {
        body.insert("refresh_token".into(), refresh.expose().into());
    }
    if let Some(scope) = pair.scope {
        body.insert("scope".into(), scope.into());
    }
    if let Some(id_token) = pair.id_token {
        body.insert("id_token".into(), id_token.into());
    }
    Ok((
        [
            (header::PRAGMA, "no-cache"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Json(body),
    )
        .into_response())
}

/// The grants the token endpoint offers.
fn grant_types(svc: &TokenService) -> Vec<&'static str> {
    let mut grants = vec!["authorization_code", "refresh_token"];
    if svc.config().password_grant {
        grants.push("password");
    }
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
    // One document for RFC 8414 and OpenID Connect Discovery 1.0.
    Json(json!({
        "issuer": svc.config().issuer,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/v1/token"),
        "userinfo_endpoint": format!("{base}/oauth/userinfo"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "end_session_endpoint": format!("{base}/oauth/logout"),
        "revocation_endpoint": format!("{base}/v1/token/revoke"),
        "introspection_endpoint": format!("{base}/v1/token/introspect"),
        "scopes_supported": keyward_core::oauth::SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grant_types(svc),
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "amr", "sid", "azp", "preferred_username", "email", "email_verified"],
        "prompt_values_supported": ["none", "login", "consent"],
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "claims_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "service_documentation": format!("{base}/openapi.json"),
    }))
    .into_response()
}
