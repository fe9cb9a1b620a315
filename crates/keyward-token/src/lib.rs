//! keyward's token side: signing keys sealed at rest ([`keys`]), RFC 9068 access tokens
//! ([`jwt`]), and the [`TokenService`] that runs the password and refresh-token grants with
//! rotation and reuse detection (RFC 9700 §4.14.2), the deny list, revocation and
//! introspection. No HTTP here.
#![deny(missing_docs)]

pub mod code;
pub mod id;
pub mod jwt;
pub mod keys;

pub use jwt::AccessClaims;
pub use keys::{Kek, KeyError, Keyring, SigningAlg, SigningKey};

use keyward_core::auth::show_ip;
use keyward_core::throttle::Refused;
use keyward_core::{
    AuthError, AuthService, ClientInfo, DynClientStore, DynGrantStore, DynKeyStore, DynTokenStore,
    Password, RefreshFamily, RotateOutcome, SessionId, SessionToken, StoreError, AUDIT,
};
use secrecy::{ExposeSecret, SecretString};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// Settings of the token side.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Absolute lifetime of a refresh-token family.
    pub refresh_ttl: Duration,
    /// Algorithm of newly generated keys.
    pub algorithm: SigningAlg,
    /// How long after a refresh the used token may be presented again and receive the same
    /// successor (a client that lost the answer); zero: never, any replay is reuse.
    pub refresh_reuse_grace: Duration,
    /// Whether `grant_type=password` is offered.
    pub password_grant: bool,
    /// A new signing key is made once the newest is this old (by one node of a fleet).
    pub key_rotation_interval: Duration,
    /// The bearer secret resource servers present to introspect tokens (`None`: refused).
    pub introspection_token: Option<SecretString>,
}

impl TokenConfig {
    /// Settings with keyward's defaults for this issuer.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: "keyward".into(),
            access_ttl: Duration::minutes(15),
            refresh_ttl: Duration::days(30),
            algorithm: SigningAlg::EdDSA,
            refresh_reuse_grace: Duration::ZERO,
            password_grant: true,
            key_rotation_interval: Duration::days(30),
            introspection_token: None,
        }
    }
}

/// What the token side can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Bad credentials, or an unknown, used, revoked or expired refresh token (RFC 6749
    /// `invalid_grant`). Deliberately one error.
    #[error("the grant is invalid")]
    InvalidGrant,
    /// Throttled like cookie logins.
    #[error("too many failed attempts")]
    Throttled {
        /// When to retry.
        retry_after: Duration,
    },
    /// A field is longer than anything valid.
    #[error("{0} is too long")]
    TooLong(&'static str),
    /// The password grant is turned off (`--password-grant false`).
    #[error("the password grant is not offered")]
    PasswordGrantDisabled,
    /// The caller's credential (the introspection secret) is missing or wrong.
    #[error("client authentication failed")]
    InvalidClient,
    /// An OAuth client is unknown, or its authentication is missing or wrong (RFC 6749
    /// `invalid_client`).
    #[error("{0}")]
    ClientAuthentication(&'static str),
    /// The client may not use this grant (RFC 6749 `unauthorized_client`).
    #[error("{0}")]
    UnauthorizedClient(&'static str),
    /// An authorization code, or what it is bound to, does not hold (`invalid_grant`).
    #[error("{0}")]
    InvalidCode(&'static str),
    /// A required parameter is missing or malformed (`invalid_request`).
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Signing failed.
    #[error("signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// There is no key to sign with.
    #[error("no signing key")]
    NoSigningKey,
    /// The account has a second factor, which the password grant cannot ask for.
    #[error("this account signs in with a second factor, which the password grant cannot ask for; use the authorization code flow (/oauth/authorize) or sign in with POST /v1/sessions")]
    SecondFactorRequired,
    /// Anything else from the auth service.
    #[error(transparent)]
    Auth(AuthError),
}

impl From<AuthError> for TokenError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => Self::InvalidGrant,
            AuthError::Throttled { retry_after } => Self::Throttled { retry_after },
            AuthError::TooLong(f) => Self::TooLong(f),
            AuthError::Store(s) => Self::Store(s),
            other => Self::Auth(other),
        }
    }
}

/// What a grant issues.
#[derive(Debug)]
pub struct TokenPair {
    /// The signed access token.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The opaque refresh token (only its hash is stored); the code grant gives one only
    /// with `offline_access`.
    pub refresh_token: Option<SessionToken>,
    /// The granted scopes (grants of registered clients).
    pub scope: Option<String>,
    /// The OpenID Connect ID token (the code grant, with `openid`).
    pub id_token: Option<String>,
}

/// What introspection says of an active token (RFC 7662).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Introspection {
    /// Always true (inactive tokens answer `{"active": false}` alone).
    pub active: bool,
    /// `access_token` or `refresh_token`.
    pub token_type: &'static str,
    /// User id.
    pub sub: String,
    /// Username.
    pub username: String,
    /// Expiry (Unix s).
    pub exp: i64,
    /// Issued at (Unix s).
    pub iat: i64,
    /// Token id (access tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Family (`sid`).
    pub sid: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Client.
    pub client_id: String,
    /// Granted scopes (tokens of registered clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The token service.
pub struct TokenService {
    auth: Arc<AuthService>,
    tokens: DynTokenStore,
    key_store: DynKeyStore,
    kek: Kek,
    /// Derives each refresh token's successor, so a retry within the grace gets the same one.
    successor_key: [u8; 32],
    /// Tokens whose signature and claims were verified, by the SHA-256 of their exact bytes:
    /// a signature check costs tens of microseconds (docs/benchmarks.md), a hit well under
    /// one. Time, key retirement and the deny list are checked again on every use.
    verified: moka::sync::Cache<[u8; 32], Arc<(AccessClaims, String)>>,
    keyring: RwLock<Arc<Keyring>>,
    /// Whether a registered client is first-party, by id (clients cannot change that; a
    /// deleted client's tokens are revoked with its families).
    first_party: moka::sync::Cache<String, bool>,
    /// Binds a consent form to the session and the request it was shown for.
    consent_key: [u8; 32],
    /// When an unknown `kid` last made us read the keys again (Unix ms): at most once per
    /// five seconds, so garbage `kid`s cannot turn into store load.
    last_reload_ms: std::sync::atomic::AtomicI64,
    clients: DynClientStore,
    grants: DynGrantStore,
    config: TokenConfig,
}

/// Where the authorization code flow keeps its state (the database).
#[derive(Clone)]
pub struct OAuthStores {
    /// Registered clients.
    pub clients: DynClientStore,
    /// Codes, grants and consents.
    pub grants: DynGrantStore,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How many verified access tokens are remembered.
const VERIFIED_CACHE_ENTRIES: u64 = 10_000;

/// The client id in tokens: keyward has one public first-party client.
pub const CLIENT_ID: &str = "keyward";

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

impl TokenService {
    /// Load the keys (generating the first one when there is none) and start.
    pub async fn new(
        auth: Arc<AuthService>,
        tokens: DynTokenStore,
        key_store: DynKeyStore,
        kek: Kek,
        oauth: OAuthStores,
        config: TokenConfig,
    ) -> Result<Self, TokenError> {
        let successor_key = kek.derive(b"keyward refresh-token successor v1");
        let consent_key = kek.derive(b"keyward consent form v1");
        let svc = Self {
            auth,
            tokens,
            key_store,
            kek,
            successor_key,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE_ENTRIES)
                .time_to_live(
                    std::time::Duration::try_from(config.access_ttl)
                        .unwrap_or(std::time::Duration::from_secs(900)),
                )
                .build(),
            keyring: RwLock::new(Arc::new(Keyring::default())),
            first_party: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            consent_key,
            last_reload_ms: std::sync::atomic::AtomicI64::new(0),
            clients: oauth.clients,
            grants: oauth.grants,
            config,
        };
        svc.ensure_keys().await?;
        svc.reload_keys().await?;
        Ok(svc)
    }

    /// Make the keys that are missing: one of the access-token algorithm (at first start, or
    /// after `--token-algorithm` changed) and an RS256 key for ID tokens. Nodes starting at
    /// once may each add one; the newest signs, and the others retire in time.
    async fn ensure_keys(&self) -> Result<(), TokenError> {
        let stored = self.key_store.list_keys().await?;
        let now = self.now();
        for alg in [self.config.algorithm, keys::ID_TOKEN_ALG] {
            if !stored.iter().any(|k| k.alg == alg.name()) {
                let key = keys::generate(alg, &self.kek, now)?;
                self.key_store.insert_key(&key).await?;
                tracing::info!(target: AUDIT, event = "signing_key_created", kid = %key.kid, alg = %key.alg, reason = "missing");
            }
        }
        Ok(())
    }

    /// The grant of a family; `None` for the built-in client's (read only for families
    /// marked as the code flow's, `keyward_core::oauth::may_have_grant`).
    async fn grant_of(&self, family: SessionId) -> Result<Option<keyward_core::Grant>, StoreError> {
        if keyward_core::oauth::may_have_grant(family) {
            self.grants.grant(family).await
        } else {
            Ok(None)
        }
    }

    /// The registered OAuth clients.
    pub fn clients(&self) -> &DynClientStore {
        &self.clients
    }

    /// Codes, grants and consents.
    pub fn grants(&self) -> &DynGrantStore {
        &self.grants
    }

    /// The settings.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    fn now(&self) -> OffsetDateTime {
        self.auth.clock().now()
    }

    /// The current keyring.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-read the keys from the store (a rotation made by another node or the CLI), and
    /// delete keys past every token's lifetime.
    pub async fn reload_keys(&self) -> Result<(), TokenError> {
        let mut stored = self.key_store.list_keys().await?;
        let wanted = [self.config.algorithm, keys::ID_TOKEN_ALG];
        if wanted
            .iter()
            .any(|alg| !stored.iter().any(|k| k.alg == alg.name()))
        {
            // A key this node signs with is gone (deleted by a node of another version, or by
            // hand): make it again rather than stop issuing.
            self.ensure_keys().await?;
            stored = self.key_store.list_keys().await?;
        }
        let now = self.now();
        let ages = keys::ages(&stored);
        let mut loaded = Vec::new();
        for (i, s) in stored.iter().enumerate() {
            if keys::is_retired(&ages, i, now, self.config.access_ttl, self.config.algorithm) {
                self.key_store.delete_key(&s.kid).await?;
                tracing::info!(target: AUDIT, event = "signing_key_retired", kid = %s.kid);
                continue;
            }
            loaded.push(SigningKey::load(s, &self.kek)?);
        }
        let ring = Keyring::new(loaded, now, self.config.access_ttl, self.config.algorithm);
        *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(())
    }

    /// Make a new signing key when the newest is older than the rotation interval. Of several
    /// nodes running this at once one adds the key (the store checks and inserts
    /// atomically); the others pick it up when they reload. Returns the new key's id.
    pub async fn rotate_if_due(&self) -> Result<Option<String>, TokenError> {
        let now = self.now();
        let newest = self
            .key_store
            .list_keys()
            .await?
            .last()
            .map(|k| k.created_at);
        let due_since = now - self.config.key_rotation_interval;
        if newest.is_some_and(|t| t > due_since) {
            return Ok(None);
        }
        let mut set = keys::generate_set(self.config.algorithm, &self.kek, now)?.into_iter();
        let Some(stored) = set.next() else {
            return Ok(None);
        };
        if !self
            .key_store
            .insert_key_unless_newer(&stored, due_since)
            .await?
        {
            self.reload_keys().await?;
            return Ok(None);
        }
        tracing::info!(target: AUDIT, event = "signing_key_created", kid = %stored.kid, alg = %stored.alg, reason = "schedule");
        // The winner of the schedule adds the ID-token key of the same rotation.
        for companion in set {
            self.key_store.insert_key(&companion).await?;
            tracing::info!(target: AUDIT, event = "signing_key_created", kid = %companion.kid, alg = %companion.alg, reason = "schedule");
        }
        self.reload_keys().await?;
        Ok(Some(stored.kid))
    }

    /// Generate and store new signing keys (the configured algorithm's, and an RS256 one for
    /// ID tokens when that is another), then use them. Returns the access-token key's id.
    pub async fn rotate_key(&self) -> Result<String, TokenError> {
        let set = keys::generate_set(self.config.algorithm, &self.kek, self.now())?;
        for stored in &set {
            self.key_store.insert_key(stored).await?;
            tracing::info!(target: AUDIT, event = "signing_key_created", kid = %stored.kid, alg = %stored.alg);
        }
        self.reload_keys().await?;
        set.into_iter()
            .next()
            .map(|k| k.kid)
            .ok_or(TokenError::NoSigningKey)
    }

    /// Sign an access token of `family` for the built-in client.
    fn issue(&self, family: &RefreshFamily) -> Result<(String, i64), TokenError> {
        self.issue_for(family, None, None)
    }

    /// Sign an access token of `family` for `client` (`None`: the built-in one), with `scope`
    /// when it has one. A third-party client learns the username only with `profile`.
    fn issue_for(
        &self,
        family: &RefreshFamily,
        client: Option<&keyward_core::ClientRecord>,
        scope: Option<&keyward_core::Scopes>,
    ) -> Result<(String, i64), TokenError> {
        let client_id = client.map_or(CLIENT_ID, |c| c.id.as_str());
        let named = client.is_none_or(|c| c.first_party) || scope.is_some_and(|s| s.has("profile"));
        let ring = self.keyring();
        let key = ring
            .current(self.config.algorithm)
            .ok_or(TokenError::NoSigningKey)?;
        let now = self.now();
        // Never past the family's end: a revoked family must deny every token it issued, and
        // stores keep a family's record only so long after its end.
        let exp = (now + self.config.access_ttl).min(family.expires_at);
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            sub: family.user_id.to_string(),
            aud: self.config.audience.clone(),
            exp: unix(exp),
            iat: unix(now),
            nbf: unix(now),
            jti: uuid::Uuid::new_v4().to_string(),
            sid: family.id.to_string(),
            client_id: client_id.to_owned(),
            preferred_username: if named {
                family.username.clone()
            } else {
                String::new()
            },
            scope: scope.map(ToString::to_string),
        };
        let token = jwt::sign(key, &claims).map_err(TokenError::Sign)?;
        Ok((token, (exp - now).whole_seconds().max(0)))
    }

    /// `grant_type=password`: the same throttling and equal failures as cookie logins.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &Password,
        ip: Option<IpAddr>,
    ) -> Result<TokenPair, TokenError> {
        if !self.config.password_grant {
            return Err(TokenError::PasswordGrantDisabled);
        }
        let user = self
            .auth
            .check_credentials(username, password, &ClientInfo::at(ip))
            .await?;
        if user.totp {
            return Err(TokenError::SecondFactorRequired);
        }
        let now = self.now();
        let family = RefreshFamily {
            id: keyward_core::oauth::family_id(user.id.shard(), false),
            user_id: user.id,
            username: user.username.clone(),
            created_at: now,
            expires_at: now + self.config.refresh_ttl,
        };
        let refresh = SessionToken::generate_in(user.id.shard())
            .map_err(|_| TokenError::Key(KeyError::Random))?;
        self.tokens.create_family(&family, &refresh.hash()).await?;
        // A password change, lock or delete that ran while the password was being checked
        // must not leave a family behind: look again now that it exists, and undo it.
        let current = self.auth.users().user_by_id(user.id).await?;
        if !current.is_some_and(|c| !c.locked && c.password_hash == user.password_hash) {
            self.tokens.revoke_family(family.id, now).await?;
            return Err(TokenError::InvalidGrant);
        }
        let (access_token, expires_in) = self.issue(&family)?;
        metrics::counter!("keyward_logins_total", "result" => "ok").increment(1);
        metrics::counter!("keyward_tokens_issued_total", "grant" => "password").increment(1);
        tracing::info!(target: AUDIT, event = "token_granted", grant = "password", user_id = %user.id, sid = %family.id, ip = %show_ip(ip));
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token: Some(refresh),
            scope: None,
            id_token: None,
        })
    }

    /// Whether a token request from `ip` may go ahead: refused while the address is over its
    /// limit of failed token requests (answered from memory).
    fn admitted(&self, ip: Option<IpAddr>) -> Result<(), TokenError> {
        match self.auth.throttle().token_request(ip) {
            Ok(()) => Ok(()),
            Err(Refused::Throttled(retry_after)) => Err(TokenError::Throttled { retry_after }),
            Err(Refused::Store(e)) => Err(e.into()),
        }
    }

    /// `grant_type=refresh_token`: rotate; a reused token revokes its whole family. Invalid
    /// tokens count against the caller's address.
    ///
    /// A refresh token is bound to the client it was issued to: `client` is the caller
    /// (already authenticated; `None` for the built-in client). Presented by another client,
    /// the token is refused and its family revoked, since it has leaked.
    pub async fn refresh_grant(
        &self,
        presented: &str,
        client: Option<&keyward_core::ClientRecord>,
        ip: Option<IpAddr>,
    ) -> Result<TokenPair, TokenError> {
        self.admitted(ip)?;
        let outcome = self.rotate(presented, client, ip).await;
        if matches!(outcome, Err(TokenError::InvalidGrant)) {
            self.auth.throttle().token_failed(ip).await;
        }
        outcome
    }

    async fn rotate(
        &self,
        presented: &str,
        client: Option<&keyward_core::ClientRecord>,
        ip: Option<IpAddr>,
    ) -> Result<TokenPair, TokenError> {
        let Some(presented) = SessionToken::parse(presented) else {
            return Err(TokenError::InvalidGrant);
        };
        // The successor is a function of the presented token under a server secret: 256 bits no
        // one else can compute, and the same on a retry, so a retry within the grace receives
        // the successor already stored, never a second one.
        let shard = presented.hash().shard();
        let next = SessionToken::derive_in(&self.successor_key, presented.expose(), shard);
        let grace = self.config.refresh_reuse_grace;
        match self
            .tokens
            .rotate(&presented.hash(), &next.hash(), self.now(), grace)
            .await?
        {
            RotateOutcome::Rotated(family) => {
                let grant = self.grant_of(family.id).await?;
                let bound_to = grant.as_ref().map_or(CLIENT_ID, |g| g.client_id.as_str());
                let caller = client.map_or(CLIENT_ID, |c| c.id.as_str());
                if bound_to != caller {
                    self.tokens.revoke_family(family.id, self.now()).await?;
                    tracing::warn!(target: AUDIT, event = "refresh_token_wrong_client", user_id = %family.user_id, sid = %family.id, client_id = %caller, bound_to = %bound_to, ip = %show_ip(ip));
                    return Err(TokenError::InvalidGrant);
                }
                let granted = grant.map(|g| g.scope);
                let (access_token, expires_in) =
                    self.issue_for(&family, client, granted.as_ref())?;
                let scope = granted.map(|s| s.to_string());
                metrics::counter!("keyward_tokens_issued_total", "grant" => "refresh_token")
                    .increment(1);
                tracing::info!(target: AUDIT, event = "token_refreshed", user_id = %family.user_id, sid = %family.id, client_id = %caller, ip = %show_ip(ip));
                Ok(TokenPair {
                    access_token,
                    expires_in,
                    refresh_token: Some(next),
                    scope,
                    id_token: None,
                })
            }
            RotateOutcome::Reused(family) => {
                metrics::counter!("keyward_refresh_reuse_total").increment(1);
                tracing::warn!(target: AUDIT, event = "refresh_token_reused", user_id = %family.user_id, sid = %family.id, ip = %show_ip(ip));
                Err(TokenError::InvalidGrant)
            }
            RotateOutcome::Invalid => Err(TokenError::InvalidGrant),
        }
    }

    /// Verify a bearer access token and check the deny list: `None` when it is not valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<AccessClaims>, StoreError> {
        let now = self.now();
        let claims = match self.verified_claims(token, now) {
            Ok(c) => c,
            // Another node (or `keyward keys rotate`) may have added a key since we last
            // looked: read the keys again, at most every few seconds, and try once more.
            Err(jwt::Rejected::UnknownKey) if self.may_reload(now) => {
                if let Err(e) = self.reload_keys().await {
                    tracing::warn!(error = %e, "reloading signing keys for an unknown kid failed");
                }
                match self.verified_claims(token, now) {
                    Ok(c) => c,
                    Err(_) => return Ok(None),
                }
            }
            Err(_) => return Ok(None),
        };
        let Some(sid) = SessionId::parse(&claims.sid) else {
            return Ok(None);
        };
        if self.tokens.is_denied(&claims.jti, sid, now).await? {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    fn may_reload(&self, now: OffsetDateTime) -> bool {
        use std::sync::atomic::Ordering;
        let now_ms = keyward_core::clock::to_unix_ms(now);
        let last = self.last_reload_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= 5_000
            && self
                .last_reload_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Signature and claims, from the cache of verified tokens or by verifying now.
    fn verified_claims(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<AccessClaims, jwt::Rejected> {
        use sha2::{Digest, Sha256};
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let ring = self.keyring();
        let now_s = unix(now);
        if let Some(hit) = self.verified.get(&key) {
            let (c, kid) = &*hit;
            // The key may have retired, and time has moved since it was verified.
            let live = ring.get(kid).is_some() && now_s < c.exp && c.nbf <= now_s + 5;
            return if live {
                Ok(c.clone())
            } else {
                Err(jwt::Rejected::Invalid)
            };
        }
        let claims = jwt::verify(
            &ring,
            token,
            &self.config.issuer,
            &self.config.audience,
            now_s,
        )?;
        let kid = jwt::kid_of(token).ok_or(jwt::Rejected::UnknownKey)?;
        self.verified.insert(key, Arc::new((claims.clone(), kid)));
        Ok(claims)
    }

    /// RFC 7009: revoke a refresh token (its family, and so every access token issued from it;
    /// any token of the family, also one already rotated away) or an access token (its `jti`,
    /// until it expires). Unknown tokens are ignored, but count against the caller's address.
    pub async fn revoke(&self, token: &str, ip: Option<IpAddr>) -> Result<(), TokenError> {
        self.admitted(ip)?;
        let now = self.now();
        if let Some(refresh) = SessionToken::parse(token) {
            match self.tokens.revoke_by_token(&refresh.hash(), now).await? {
                Some(family) => {
                    tracing::info!(target: AUDIT, event = "token_revoked", kind = "refresh_token", user_id = %family.user_id, sid = %family.id, ip = %show_ip(ip));
                }
                None => self.auth.throttle().token_failed(ip).await,
            }
            return Ok(());
        }
        let ring = self.keyring();
        match jwt::verify(
            &ring,
            token,
            &self.config.issuer,
            &self.config.audience,
            unix(now),
        ) {
            Ok(claims) => {
                let until = OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(now);
                self.tokens.deny(&claims.jti, until).await?;
                tracing::info!(target: AUDIT, event = "token_revoked", kind = "access_token", user_id = %claims.sub, sid = %claims.sid, jti = %claims.jti, ip = %show_ip(ip));
            }
            Err(_) => self.auth.throttle().token_failed(ip).await,
        }
        Ok(())
    }

    /// Whether `credential` is the introspection secret (compared in constant time).
    fn introspection_allowed(&self, credential: Option<&str>) -> bool {
        match (&self.config.introspection_token, credential) {
            (Some(expected), Some(given)) => expected
                .expose_secret()
                .as_bytes()
                .ct_eq(given.as_bytes())
                .into(),
            _ => false,
        }
    }

    /// Admit an introspection caller: it must hold the introspection secret. A wrong or
    /// missing secret counts against the caller's address.
    pub async fn introspection_client(
        &self,
        credential: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), TokenError> {
        self.admitted(ip)?;
        if self.introspection_allowed(credential) {
            return Ok(());
        }
        self.auth.throttle().token_failed(ip).await;
        Err(TokenError::InvalidClient)
    }

    /// RFC 7662: what keyward knows of a token, `None` when it is not active. For callers
    /// admitted by [`TokenService::introspection_client`].
    pub async fn introspect(&self, token: &str) -> Result<Option<Introspection>, StoreError> {
        let now = self.now();
        if let Some(refresh) = SessionToken::parse(token) {
            let Some(family) = self.tokens.family_of(&refresh.hash(), now).await? else {
                return Ok(None);
            };
            let grant = self.grant_of(family.id).await?;
            return Ok(Some(Introspection {
                active: true,
                token_type: "refresh_token",
                sub: family.user_id.to_string(),
                username: family.username.clone(),
                exp: unix(family.expires_at),
                iat: unix(family.created_at),
                jti: None,
                sid: family.id.to_string(),
                iss: self.config.issuer.clone(),
                aud: self.config.audience.clone(),
                client_id: grant
                    .as_ref()
                    .map_or_else(|| CLIENT_ID.to_owned(), |g| g.client_id.clone()),
                scope: grant.map(|g| g.scope.to_string()),
            }));
        }
        Ok(self.authenticate(token).await?.map(|c| Introspection {
            active: true,
            token_type: "access_token",
            sub: c.sub,
            username: c.preferred_username,
            exp: c.exp,
            iat: c.iat,
            jti: Some(c.jti),
            sid: c.sid,
            iss: c.iss,
            aud: c.aud,
            client_id: c.client_id,
            scope: c.scope,
        }))
    }

    /// Remove expired families, tokens and deny-list entries.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.now();
        Ok(self.tokens.purge_tokens(now).await? + self.grants.purge_grants(now).await?)
    }
}
