//! keyward over HTTP, and in your axum app.
//!
//! [`Keyward`] wraps an [`AuthService`] (and optionally a [`TokenService`]) with the HTTP
//! settings and gives:
//! - [`Keyward::router`]: the whole server (API, OAuth endpoints, pages, health, metrics,
//!   OpenAPI, keyward's answers for unknown routes): what `keyward serve` serves;
//! - for an app that embeds keyward: [`Keyward::layer`], a [`tower::Layer`] for the app's own
//!   routes (extractors, cross-site refusal, security headers, metrics);
//!   [`CurrentSession`], [`Principal`] and [`AuthSession`] (sign-in and sign-out in the app's
//!   own handlers); [`Keyward::api_router`], [`Keyward::oauth_router`] and
//!   [`Keyward::pages_router`], mountable beside the app's routes (no fallback, no global side
//!   effect); and [`Keyward::maintenance`], the background work to spawn.
//!
//! `examples/embed-axum` is an app built this way.
//!
//! This crate is the only one that knows HTTP: status codes are decided in [`error`] alone.
#![deny(missing_docs)]

mod account;
mod auth_session;
mod authorize;
pub mod error;
pub mod extract;
mod guard;
mod layer;
pub mod metrics;
mod mfa;
mod oauth;
mod pages;
mod routes;

pub use auth_session::{AuthSession, SignedIn, SignedOut};
use axum::http::HeaderMap;
pub use error::ApiError;
pub use extract::{ClientAddr, CurrentSession, MaybeSession, Principal};
use ipnet::IpNet;
use keyward_core::AuthService;
pub use keyward_core::Password;
use keyward_token::TokenService;
pub use layer::{KeywardLayer, KeywardService, ResponseFuture};
use std::net::IpAddr;
use std::sync::Arc;
pub use url::Url;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The URL users reach keyward at; its scheme decides `Secure` cookies and its origin is
    /// accepted for cross-site checks.
    pub public_url: Url,
    /// Further origins allowed to make cookie-authenticated unsafe requests.
    pub allowed_origins: Vec<Url>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl HttpConfig {
    /// Settings for this public URL, with no other allowed origin and no trusted proxy.
    pub fn new(public_url: Url) -> Self {
        Self {
            public_url,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

struct Inner {
    auth: Arc<AuthService>,
    tokens: Option<Arc<TokenService>>,
    config: HttpConfig,
    origins: Vec<String>,
    cookie_name: &'static str,
}

/// The address of one `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, and, as some
/// proxies write them, with a port (`1.2.3.4:5678`, `[2001:db8::1]:80`) or in brackets.
fn forwarded_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// keyward's HTTP face. Cheap to clone.
#[derive(Clone)]
pub struct Keyward {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Keyward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyward")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Cookie name over plain HTTP.
pub const COOKIE_NAME: &str = "keyward";
/// Cookie name over HTTPS: the `__Host-` prefix binds it to this host, path `/`, `Secure`.
pub const SECURE_COOKIE_NAME: &str = "__Host-keyward";

impl Keyward {
    /// Put the services behind HTTP. Without a token service, bearer tokens are refused and
    /// the token endpoints answer 404.
    pub fn new(
        auth: Arc<AuthService>,
        tokens: Option<Arc<TokenService>>,
        config: HttpConfig,
    ) -> Self {
        let origins = std::iter::once(&config.public_url)
            .chain(config.allowed_origins.iter())
            .map(|u| u.origin().ascii_serialization())
            .collect();
        let cookie_name = if config.public_url.scheme() == "https" {
            SECURE_COOKIE_NAME
        } else {
            COOKIE_NAME
        };
        Self {
            inner: Arc::new(Inner {
                auth,
                tokens,
                config,
                origins,
                cookie_name,
            }),
        }
    }

    /// The service.
    pub fn auth(&self) -> &AuthService {
        &self.inner.auth
    }

    /// The token service, when tokens are enabled.
    pub fn tokens(&self) -> Option<&Arc<TokenService>> {
        self.inner.tokens.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// `path` (absolute, from keyward's root) under the public URL's path: what the pages
    /// link, post and redirect to, so they work where an app mounts them (`nest("/auth", …)`
    /// with the public URL `https://app.example/auth`).
    ///
    /// The root is the base itself (`/auth`, `/auth?next=…`): where axum's `nest` puts a
    /// router's `/`.
    pub fn path(&self, path: &str) -> String {
        let base = self.inner.config.public_url.path().trim_end_matches('/');
        match path.strip_prefix('/') {
            Some(rest) if !base.is_empty() && (rest.is_empty() || rest.starts_with('?')) => {
                format!("{base}{rest}")
            }
            _ => format!("{base}{path}"),
        }
    }

    /// Whether cookies are `Secure` (an `https` public URL).
    pub fn secure(&self) -> bool {
        self.inner.config.public_url.scheme() == "https"
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &'static str {
        self.inner.cookie_name
    }

    /// Whether `origin` (an `Origin` header value) may send cookie-authenticated unsafe requests.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.inner
            .origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Whether `origin` is the public URL's own origin.
    pub fn origin_is_public(&self, origin: &str) -> bool {
        self.inner
            .origins
            .first()
            .is_some_and(|o| o.eq_ignore_ascii_case(origin))
    }

    /// The client address given the TCP peer and the request headers.
    pub fn resolve_client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| {
            self.inner
                .config
                .trusted_proxies
                .iter()
                .any(|n| n.contains(ip))
        };
        if !trusted(&peer) {
            return peer;
        }
        // Walk X-Forwarded-For from the nearest hop back; the first untrusted address is the
        // client. Unparseable entries stop the walk: nothing before them can be trusted.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = forwarded_address(hop) else {
                break;
            };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        client
    }

    /// The layer for an app's own routes (see [`KeywardLayer`]): put it on the router that
    /// holds them, `Router::new().route(…).layer(kw.layer())`.
    pub fn layer(&self) -> KeywardLayer {
        KeywardLayer::new(self.clone())
    }

    /// The whole keyward server, as `keyward serve` runs it.
    pub fn router(&self) -> axum::Router {
        routes::router(self)
    }

    /// The JSON API (`/v1/users`, `/v1/sessions…`, `/v1/me`, `/v1/verify`) with `/healthz`,
    /// `/readyz` and `/openapi.json`, behind its own layer, to merge into an app.
    pub fn api_router(&self) -> axum::Router {
        routes::mountable(self, routes::api())
    }

    /// The token endpoints (`/v1/token…`) and their metadata (`/.well-known/…`).
    pub fn oauth_router(&self) -> axum::Router {
        routes::mountable(self, oauth::routes())
    }

    /// The pages (`/`, `/register`, `/account…`, `/assets/keyward.css`). Their forms post to
    /// the JSON API's routes: merge [`Keyward::api_router`] beside them.
    pub fn pages_router(&self) -> axum::Router {
        routes::mountable(self, pages::routes())
    }

    /// The background work a node does, every 30 s until the returned future is dropped:
    /// drop expired sessions and tokens (from a session cache's memory too; Redis expires keys
    /// by itself and prunes its indexes at most hourly), make a signing key when one is due
    /// (one node of a fleet does), and pick up keys rotated elsewhere (within 30 s; the
    /// contract promises a minute).
    /// Spawn it once per process: `tokio::spawn(kw.maintenance())`.
    pub fn maintenance(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let kw = self.clone();
        async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                kw.maintain().await;
            }
        }
    }

    /// One round of [`Keyward::maintenance`].
    pub async fn maintain(&self) {
        match self.auth().purge_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
        }
        if let Err(e) = self.auth().purge_tickets().await {
            tracing::warn!(error = %e, "purging ended mail links failed");
        }
        let Some(t) = self.tokens() else { return };
        if let Err(e) = t.purge().await {
            tracing::warn!(error = %e, "purging expired tokens failed");
        }
        // A new key on schedule (made by one node; the others pick it up below).
        match t.rotate_if_due().await {
            Ok(Some(kid)) => tracing::info!(%kid, "signing key rotated on schedule"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "rotating the signing key failed"),
        }
        if let Err(e) = t.reload_keys().await {
            tracing::warn!(error = %e, "reloading signing keys failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_entries_with_ports_and_brackets() {
        for (hop, want) in [
            ("192.0.2.1", "192.0.2.1"),
            ("192.0.2.1:5678", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:80", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[::1]:80", "::1"),
        ] {
            assert_eq!(forwarded_address(hop), want.parse().ok(), "{hop}");
        }
        for bad in ["unknown", "", "192.0.2.1:x", "[2001:db8::1", "_hidden"] {
            assert_eq!(forwarded_address(bad), None, "{bad}");
        }
    }
}
