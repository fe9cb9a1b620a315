//! The store abstractions every backend implements, and the records they keep.
//!
//! Stores never read the clock: every time they need comes in as an argument, so the same
//! conformance suite drives every backend through expiry without sleeping.

use crate::ids::{SessionId, UserId};
use crate::secret::TokenHash;
use async_trait::async_trait;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time: retry later (HTTP 503).
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A uniqueness rule was broken (a username taken).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The store holds something this version cannot read.
    #[error("store holds invalid data: {0}")]
    Corrupt(String),
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// How a session's owner authenticated (RFC 8176 `amr` values): the password, and a
/// one-time code (TOTP or a recovery code) when the account has a second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amr(u8);

impl Amr {
    /// The password alone.
    pub const PWD: Amr = Amr(1);
    /// The password and a one-time code.
    pub const PWD_OTP: Amr = Amr(3);

    /// The stored form.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// From the stored form; what this version does not know reads as the password alone.
    pub fn from_bits(bits: u8) -> Self {
        if bits & 2 != 0 {
            Self::PWD_OTP
        } else {
            Self::PWD
        }
    }

    /// The RFC 8176 method names: `["pwd"]` or `["pwd", "otp"]`.
    pub fn methods(self) -> &'static [&'static str] {
        if self.0 & 2 != 0 {
            &["pwd", "otp"]
        } else {
            &["pwd"]
        }
    }
}

impl Default for Amr {
    fn default() -> Self {
        Self::PWD
    }
}

/// A session as stored: everything needed to answer a validated request in one look-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Public id.
    pub id: SessionId,
    /// SHA-256 of the token: the look-up key.
    pub token_hash: TokenHash,
    /// Owner.
    pub user_id: UserId,
    /// Owner's username, kept with the session so a validated request needs no second look-up.
    pub username: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last time the session was used (updated at most once per touch interval).
    pub last_seen_at: OffsetDateTime,
    /// Absolute expiry: creation + absolute timeout.
    pub expires_at: OffsetDateTime,
    /// Client address at login.
    pub ip: Option<String>,
    /// Client user agent at login (truncated).
    pub user_agent: Option<String>,
    /// How the owner authenticated. A session is made only by an authentication, so its
    /// `created_at` is the `auth_time`.
    pub amr: Amr,
}

impl SessionRecord {
    /// When the session stops being valid, given the idle timeout.
    pub fn valid_until(&self, idle_timeout: Duration) -> OffsetDateTime {
        (self.last_seen_at + idle_timeout).min(self.expires_at)
    }

    /// Whether the session is valid at `now`.
    pub fn is_live(&self, now: OffsetDateTime, idle_timeout: Duration) -> bool {
        now < self.valid_until(idle_timeout)
    }
}

/// Where sessions live. Implementations must make each method atomic on its own.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Store a new session.
    async fn create(&self, session: &SessionRecord) -> StoreResult<()>;

    /// Look a session up by the hash of its token. Expired sessions may still be returned;
    /// the caller decides with [`SessionRecord::is_live`]. A cache may answer without `ip` and
    /// `user_agent`, which validation does not need ([`SessionStore::list_for_user`] has them).
    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>>;

    /// Record use of a session: set `last_seen_at` (never moves it backwards).
    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()>;

    /// Remove a session by token hash; returns what was removed.
    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>>;

    /// Remove a session by its public id, only if it belongs to `owner` when one is given.
    /// Returns what was removed; `None` when it is gone or not the owner's.
    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>>;

    /// Remove every session of `user` except `keep`; returns how many were removed.
    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64>;

    /// Every stored session of `user` (expired ones included; callers filter).
    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>>;

    /// Atomically replace the session `old` by `new` (a new token for the same login).
    /// Returns false, storing nothing, when `old` no longer exists.
    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool>;

    /// Remove sessions that are past their absolute expiry at `now` or unused since before
    /// `idle_cutoff`; returns how many.
    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64>;

    /// Whether the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Whether this store answers from what it holds while the store behind it cannot be
    /// reached (a replicated cache within its outage grace): `/readyz` then says `degraded`.
    fn degraded(&self) -> bool {
        false
    }
}

/// A user as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Id.
    pub id: UserId,
    /// Username as registered.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Locked users cannot log in and have no sessions.
    pub locked: bool,
    /// The account's email address, if it has one.
    pub email: Option<String>,
    /// Whether `email` was verified (its link used). Only a verified address receives
    /// password resets.
    pub email_verified: bool,
    /// Whether TOTP is on: a sign-in then needs a code too.
    pub totp: bool,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("created_at", &self.created_at)
            .field("locked", &self.locked)
            .field("email_verified", &self.email_verified)
            .field("totp", &self.totp)
            .finish_non_exhaustive()
    }
}

/// Where users live.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Store a new user; [`StoreError::Conflict`] when the username (ignoring case) is taken.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    /// Find a user by username, ignoring case.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Find a user by id.
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Find the user whose *verified* address is `email`, ignoring case.
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    /// Replace the password hash.
    async fn set_password_hash(&self, id: UserId, phc: &str) -> StoreResult<()>;
    /// Set the address and whether it is verified; false when there is no such user.
    /// [`StoreError::Conflict`] when another account has this address verified.
    async fn set_email(&self, id: UserId, email: Option<&str>, verified: bool)
        -> StoreResult<bool>;
    /// Lock or unlock; false when there is no such user.
    async fn set_locked(&self, id: UserId, locked: bool) -> StoreResult<bool>;
    /// Delete; false when there is no such user.
    async fn delete_user(&self, id: UserId) -> StoreResult<bool>;
    /// All users, by username.
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    /// Whether the store answers.
    async fn ping(&self) -> StoreResult<()>;
}

/// Shared handle to a session store.
pub type DynSessionStore = Arc<dyn SessionStore>;
/// Shared handle to a user store.
pub type DynUserStore = Arc<dyn UserStore>;

/// A refresh-token family: every refresh token that descends from one password grant.
/// Its id is the `sid` of the access tokens issued from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshFamily {
    /// Family id (`sid` in access tokens).
    pub id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's username.
    pub username: String,
    /// When the password grant happened.
    pub created_at: OffsetDateTime,
    /// Absolute end of the family (`--refresh-token-ttl` after the grant).
    pub expires_at: OffsetDateTime,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was live and unused: it is now used, and `next` is stored in its place.
    Rotated(RefreshFamily),
    /// The token was already used: the whole family is now revoked (reuse detection).
    Reused(RefreshFamily),
    /// Unknown token, or its family is revoked or past its absolute expiry.
    Invalid,
}

/// Refresh tokens (an allow list of hashes, grouped in families) and the deny list of access
/// tokens. Lives in the session store so every node sees the same lists.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Store a new family with its first refresh token.
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()>;

    /// Atomically use `presented` and store `next` in the same family. Exactly one of
    /// several concurrent calls with the same token rotates; the others see it used.
    ///
    /// A used token presented again is reuse, which revokes the family, except within `grace`
    /// of its use when `next` is the very successor it was replaced by and that successor is
    /// still unused: then the call answers `Rotated` again and changes nothing (a client that
    /// lost the answer gets the same successor, never a second one).
    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: Duration,
    ) -> StoreResult<RotateOutcome>;

    /// The family of a refresh token that is live and unused (for introspection/revocation).
    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>>;

    /// Revoke a family (its refresh tokens stop working, its access tokens are denied).
    async fn revoke_family(&self, family: SessionId, now: OffsetDateTime) -> StoreResult<bool>;

    /// Revoke the family of a refresh token, any token of the family (RFC 7009: one already
    /// rotated away too). Returns the family when the token is known and the family is not
    /// past its end, whether this call revoked it or it already was; `None` for an unknown
    /// token.
    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>>;

    /// Revoke every family of a user; returns how many.
    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64>;

    /// Deny an access token's `jti` until `until` (its expiry).
    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()>;

    /// Whether an access token is denied: its `jti` is on the deny list, or its family `sid`
    /// is revoked. One look-up.
    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool>;

    /// Remove expired families, tokens and deny-list entries.
    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64>;
}

/// Shared handle to a token store.
pub type DynTokenStore = Arc<dyn TokenStore>;

/// A signing key as stored: the private key sealed (encrypted) with the key-encryption key.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Key id (`kid`).
    pub kid: String,
    /// JOSE algorithm name (`EdDSA`, `ES256`, `RS256`).
    pub alg: String,
    /// The PKCS#8 private key, sealed with AES-256-GCM.
    pub sealed_private: Vec<u8>,
    /// When it was made; the newest key signs.
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Where signing keys live (the database).
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Every key, oldest first.
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>>;
    /// Add a key.
    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()>;
    /// Add `key` unless a key made after `since` exists, atomically: of several nodes whose
    /// schedule says a new key is due, one adds it. Returns whether this call added it.
    async fn insert_key_unless_newer(
        &self,
        key: &StoredKey,
        since: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Remove a key that no live token can be signed with any more.
    async fn delete_key(&self, kid: &str) -> StoreResult<bool>;
}

/// Shared handle to a key store.
pub type DynKeyStore = Arc<dyn KeyStore>;
