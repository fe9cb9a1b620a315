//! An example resource service that trusts keyward the way a third-party service would: it
//! knows keyward only by its JWKS URL, its issuer and the audience of its tokens. It has no
//! access to keyward's database and links no keyward code.
//!
//! ```text
//! resource-service --bind 127.0.0.1:8081 \
//!     --jwks-url http://127.0.0.1:8080/.well-known/jwks.json \
//!     --issuer http://127.0.0.1:8080 --audience keyward
//! ```
//!
//! `GET /hello` wants `Authorization: Bearer <access token>` and answers 200
//! `{"hello": <preferred_username>, "sub": <sub>}`; any other token gets 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` (a request without credentials gets a bare
//! `Bearer` challenge, as RFC 6750 §3.1 asks).
//!
//! Verification follows RFC 9068 and RFC 8725:
//! - the header `typ` must be `at+jwt` (or its long form `application/at+jwt`), in any case;
//! - the header `kid` must name a key of the fetched JWKS. `jku`, `jwk`, `x5u` and `x5c` in a
//!   token header are never used, and a token with a `crit` header is refused;
//! - the algorithm is the one the JWK declares in its `alg`, never the token's choice: a header
//!   `alg` that differs is refused, and a JWK without `alg`, a symmetric (HMAC) JWK or one not
//!   meant for signatures is not used at all;
//! - the signature, `exp`, `nbf`, `iss` and `aud` are checked, and `exp`, `nbf`, `iss`, `aud`
//!   and `sub` must be present.
//!
//! The JWKS is fetched at start and fetched again when a token names a `kid` that is not in it
//! (keyward rotated its signing key), at most once every 10 seconds: a stream of made-up `kid`s
//! cannot turn this service into an amplifier against keyward.
//!
//! # Revocation: what this service cannot see
//!
//! It cannot see keyward's deny list. An access token revoked at keyward (sign-out, RFC 7009
//! revocation, a locked or deleted user, a reused refresh token revoking its family) **stays
//! valid here until it expires**: up to keyward's access-token lifetime (`--access-token-ttl`,
//! 15 minutes by default). That is the trade-off of stateless verification: no call to keyward
//! per request, at the price of revocation that is not instant. A service that needs revocation
//! to take effect at once asks keyward per request instead, through its introspection endpoint
//! (`POST /v1/token/introspect`, RFC 7662) or `/v1/verify`.
//!
//! This build fetches the JWKS over plain HTTP (the workspace's `reqwest` has no TLS feature);
//! a real deployment fetches it over https.

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{decode, decode_header, Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// Least time between two JWKS fetches triggered by unknown `kid`s.
const REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// Longest token looked at.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew allowed on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// Verify keyward access tokens through keyward's JWKS endpoint only.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    bind: SocketAddr,
    /// keyward's JWKS endpoint, e.g. http://127.0.0.1:8080/.well-known/jwks.json.
    #[arg(long, value_name = "URL")]
    jwks_url: reqwest::Url,
    /// The `iss` keyward puts in its tokens, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    issuer: String,
    /// The `aud` keyward puts in its tokens.
    #[arg(long, value_name = "STR", default_value = "keyward")]
    audience: String,
}

/// A verification key from the JWKS, with the one algorithm it may be used with.
struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys by `kid`.
type KeyMap = HashMap<String, Arc<VerifyKey>>;

/// keyward's published keys, fetched at start and on unknown `kid`s.
struct Jwks {
    http: reqwest::Client,
    url: reqwest::Url,
    keys: RwLock<Arc<KeyMap>>,
    /// Serialises refreshes and remembers when the last one started.
    refresh: Mutex<Cooldown>,
}

/// Allows one refresh per `every`.
#[derive(Debug)]
struct Cooldown {
    every: Duration,
    last: Option<Instant>,
}

impl Cooldown {
    fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether a refresh may start at `now`; if so, it counts from `now`.
    fn try_start(&mut self, now: Instant) -> bool {
        let allowed = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if allowed {
            self.last = Some(now);
        }
        allowed
    }
}

impl Jwks {
    /// Fetch the key set once; fails when keyward cannot be reached or answers nonsense.
    async fn fetch_at_start(url: reqwest::Url) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        let keys = fetch(&http, &url)
            .await
            .with_context(|| format!("fetching the JWKS from {url}"))?;
        if keys.is_empty() {
            tracing::warn!(%url, "the JWKS has no usable signing key yet");
        }
        Ok(Self {
            http,
            url,
            keys: RwLock::new(Arc::new(keys)),
            refresh: Mutex::new(Cooldown::new(REFRESH_COOLDOWN)),
        })
    }

    /// The key named `kid`, refreshing the set once (cooldown permitting) when it is unknown.
    async fn key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Some(k.clone());
        }
        let mut cooldown = self.refresh.lock().await;
        // Another request may have refreshed while this one waited for the lock.
        if let Some(k) = self.keys.read().await.get(kid) {
            return Some(k.clone());
        }
        if !cooldown.try_start(Instant::now()) {
            tracing::debug!("unknown kid; the JWKS was fetched less than 10 s ago, not fetching");
            return None;
        }
        match fetch(&self.http, &self.url).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS refreshed");
                let keys = Arc::new(keys);
                *self.keys.write().await = keys.clone();
                keys.get(kid).cloned()
            }
            Err(e) => {
                // Keep the keys we have: a keyward outage must not lock out valid tokens.
                tracing::warn!(error = format!("{e:#}"), "refreshing the JWKS failed");
                None
            }
        }
    }
}

/// GET the JWKS and keep the keys that can verify signatures.
async fn fetch(http: &reqwest::Client, url: &reqwest::Url) -> anyhow::Result<KeyMap> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = http
        .get(url.clone())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
        .context("not a JWK set")?;
    let mut keys = KeyMap::new();
    for raw in set.keys {
        // Each key on its own: one key of a kind this service does not know spoils nothing.
        match serde_json::from_value::<Jwk>(raw)
            .map_err(anyhow::Error::from)
            .and_then(|jwk| usable(&jwk))
        {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "skipping a JWK"),
        }
    }
    Ok(keys)
}

/// A JWK's `kid` and verification key, when it is a public signing key with a declared `alg`.
fn usable(jwk: &Jwk) -> anyhow::Result<(String, VerifyKey)> {
    let kid = jwk.common.key_id.clone().context("no kid")?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        anyhow::bail!("{kid}: not a signing key");
    }
    let alg = jwk
        .common
        .key_algorithm
        .with_context(|| format!("{kid}: no alg"))?;
    let alg = Algorithm::try_from(alg).with_context(|| format!("{kid}: unsupported alg"))?;
    if alg.family() == AlgorithmFamily::Hmac {
        // A "public" shared secret would let anyone mint tokens.
        anyhow::bail!("{kid}: symmetric key in a JWKS");
    }
    let key = DecodingKey::from_jwk(jwk).with_context(|| format!("{kid}: bad key"))?;
    if key.family() != alg.family() {
        anyhow::bail!("{kid}: key type does not fit alg {alg:?}");
    }
    Ok((kid, VerifyKey { alg, key }))
}

/// The claims this service reads (the rest are checked by `Validation` or ignored).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    preferred_username: Option<String>,
}

/// Why a token was refused (logged at debug level; every case answers the same 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Malformed,
    WrongType,
    CriticalHeader,
    UnknownKey,
    AlgorithmMismatch,
    Invalid,
}

struct AppState {
    jwks: Jwks,
    issuer: String,
    audience: String,
}

impl AppState {
    async fn verify(&self, token: &str) -> Result<Claims, Refused> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refused::Malformed);
        }
        let header = decode_header(token).map_err(|_| Refused::Malformed)?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(Refused::WrongType);
        }
        if header.crit.is_some() {
            // No extension is understood here, so none may be critical (RFC 7515 §4.1.11).
            return Err(Refused::CriticalHeader);
        }
        // Only `kid` picks the key; `jku`, `jwk`, `x5u` and `x5c` are never looked at.
        let kid = header.kid.as_deref().ok_or(Refused::UnknownKey)?;
        let key = self.jwks.key(kid).await.ok_or(Refused::UnknownKey)?;
        if header.alg != key.alg {
            return Err(Refused::AlgorithmMismatch);
        }
        let mut v = Validation::new(key.alg);
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        decode::<Claims>(token, &key.key, &v)
            .map(|data| data.claims)
            .map_err(|_| Refused::Invalid)
    }
}

/// The token of an `Authorization: Bearer` header (`None`: no credentials at all).
fn bearer(headers: &HeaderMap) -> Option<Result<&str, Refused>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(value) = value.to_str() else {
        return Some(Err(Refused::Malformed));
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return Some(Err(Refused::Malformed));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme is not a bearer credential: treat it as none.
        return None;
    }
    let token = token.trim();
    if token.is_empty() {
        return Some(Err(Refused::Malformed));
    }
    Some(Ok(token))
}

fn unauthorized(challenge: &'static str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )],
        Json(json!({"error": "unauthorized"})),
    )
        .into_response()
}

async fn hello(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let token = match bearer(&headers) {
        None => return unauthorized("Bearer"),
        Some(Err(why)) => {
            tracing::debug!(?why, "token refused");
            return unauthorized(r#"Bearer error="invalid_token""#);
        }
        Some(Ok(token)) => token,
    };
    match state.verify(token).await {
        Ok(claims) => Json(json!({
            "hello": claims.preferred_username,
            "sub": claims.sub,
        }))
        .into_response(),
        Err(why) => {
            tracing::debug!(?why, "token refused");
            unauthorized(r#"Bearer error="invalid_token""#)
        }
    }
}

fn app(state: Arc<AppState>) -> Router {
    Router::new().route("/hello", get(hello)).with_state(state)
}

async fn shutdown_signal() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let jwks = Jwks::fetch_at_start(args.jwks_url).await?;
    let state = Arc::new(AppState {
        jwks,
        issuer: args.issuer,
        audience: args.audience,
    });
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("--bind {}: cannot listen", args.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    eprintln!("resource-service listening on http://{addr}");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_allows_one_refresh_per_period() {
        let t0 = Instant::now();
        let mut c = Cooldown::new(Duration::from_secs(10));
        assert!(c.try_start(t0), "the first refresh is allowed");
        assert!(!c.try_start(t0 + Duration::from_secs(1)));
        assert!(!c.try_start(t0 + Duration::from_millis(9_999)));
        assert!(c.try_start(t0 + Duration::from_secs(10)));
        assert!(!c.try_start(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(bearer(&h).is_none());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Some(Ok("abc")));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&h).is_none());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), Some(Err(Refused::Malformed)));
    }

    #[test]
    fn symmetric_and_alg_less_jwks_are_not_used() {
        let hmac: Jwk = serde_json::from_value(json!({
            "kty": "oct", "kid": "s", "alg": "HS256", "k": "c2VjcmV0"
        }))
        .unwrap();
        assert!(usable(&hmac).is_err());
        let no_alg: Jwk = serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "kid": "e",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))
        .unwrap();
        assert!(usable(&no_alg).is_err());
        let mut ok = no_alg.clone();
        ok.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA);
        assert_eq!(usable(&ok).unwrap().1.alg, Algorithm::EdDSA);
        let mut wrong = ok.clone();
        wrong.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
        assert!(usable(&wrong).is_err(), "an Ed25519 key is not an RSA key");
    }
}
