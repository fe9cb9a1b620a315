//! The authorization code flow's state: scopes, PKCE, authorization codes, the grants that
//! tie a refresh-token family to its client, and users' consents.
//!
//! A code is 256 random bits, stored only as its SHA-256, valid 60 seconds, bound to its
//! client, redirect URI, PKCE challenge, nonce, user and browser session, and names at issue
//! the refresh-token family its tokens will belong to. Its redemption is one compare-and-set,
//! so a second use finds that family and revokes it (RFC 9700 §4.2.4, OAuth 2.1 §4.1.3).
//! Everything here lives in the database, shared by every node: a flow may start on one node
//! and end on another.

use crate::clients::DynClientStore;
use crate::ids::{SessionId, UserId};
use crate::secret::TokenHash;
use crate::store::{Amr, DynTokenStore, StoreResult};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};

/// How long a code may be exchanged.
pub const CODE_TTL: Duration = Duration::seconds(60);

/// The scopes keyward knows, in the order they are shown.
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// A set of known scopes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Scopes(BTreeSet<&'static str>);

/// A scope keyward does not offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (known: openid, profile, email, offline_access)")]
pub struct UnknownScope(pub String);

impl Scopes {
    /// Parse a space-separated scope list (RFC 6749 §3.3); repeats are allowed and kept once.
    pub fn parse(raw: &str) -> Result<Self, UnknownScope> {
        let mut set = BTreeSet::new();
        for s in raw.split(' ').filter(|s| !s.is_empty()) {
            let known = SCOPES
                .iter()
                .find(|k| **k == s)
                .ok_or_else(|| UnknownScope(s.chars().take(40).collect()))?;
            set.insert(*known);
        }
        Ok(Self(set))
    }

    /// The known scopes of a space-separated list, ignoring the others (OpenID Connect Core
    /// §3.1.2.1: scope values that are not understood should be ignored).
    pub fn parse_known(raw: &str) -> Self {
        Self(
            raw.split(' ')
                .filter_map(|s| SCOPES.iter().find(|k| **k == s).copied())
                .collect(),
        )
    }

    /// Whether `scope` is in the set.
    pub fn has(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    /// Whether every scope of `other` is in this set.
    pub fn covers(&self, other: &Scopes) -> bool {
        other.0.is_subset(&self.0)
    }

    /// Both sets' scopes.
    pub fn union(&self, other: &Scopes) -> Scopes {
        Scopes(self.0.union(&other.0).copied().collect())
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes in display order.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        SCOPES.iter().copied().filter(|s| self.0.contains(s))
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.iter().collect();
        f.write_str(&list.join(" "))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// Whether `raw` is a valid PKCE `code_challenge` or `code_verifier` (RFC 7636 §4.1: 43 to
/// 128 characters of `[A-Za-z0-9-._~]`). An S256 challenge is always 43.
pub fn is_pkce_text(raw: &str) -> bool {
    (43..=128).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// RFC 7636 §4.6, S256: whether `BASE64URL(SHA256(verifier)) == challenge`, compared in
/// constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    if !is_pkce_text(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// An issued authorization code, as stored (the code itself only as its hash).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationCode {
    /// SHA-256 of the code.
    pub hash: TokenHash,
    /// The refresh-token family its tokens will belong to, named at issue, so that a replay
    /// finds what the first use issued.
    pub family_id: SessionId,
    /// The client it was issued to.
    pub client_id: String,
    /// The `redirect_uri` of the authorization request, exactly as sent.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The OpenID `nonce`, when sent.
    pub nonce: Option<String>,
    /// The granted scopes.
    pub scope: Scopes,
    /// The user.
    pub user_id: UserId,
    /// The browser session it was issued in (the ID token's `sid`).
    pub session_id: SessionId,
    /// When the user authenticated (the ID token's `auth_time`).
    pub auth_time: OffsetDateTime,
    /// How (the ID token's `amr`).
    pub amr: Amr,
    /// When it was issued.
    pub created_at: OffsetDateTime,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The mark in a refresh-token family's id (the top bit of its second byte) that says it may
/// have a [`Grant`]: set on the families of the code flow, clear on the built-in client's.
/// The refresh grant reads a grant only for marked families, so the password grant's
/// refreshes cost no extra read. (Families minted before the mark existed carry it at
/// random: a marked one without a grant is the built-in client's, as before.)
const GRANT_MARK: u8 = 0x80;

/// A new family id in `shard`, marked as the code flow's (the top bit of its second byte) or not.
pub fn family_id(shard: crate::ids::Shard, with_grant: bool) -> SessionId {
    let mut bytes = *SessionId::new_in(shard).as_uuid_bytes();
    if let Some(b) = bytes.get_mut(1) {
        *b = if with_grant {
            *b | GRANT_MARK
        } else {
            *b & !GRANT_MARK
        };
    }
    SessionId::from_bytes(bytes)
}

/// Whether a family may have a grant (its id carries the code flow's mark).
pub fn may_have_grant(family: SessionId) -> bool {
    family
        .as_uuid_bytes()
        .get(1)
        .is_some_and(|b| b & GRANT_MARK != 0)
}

/// What presenting a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// The first use of a live code: it is used up now.
    Fresh(Box<AuthorizationCode>),
    /// A code used before: its family (the caller revokes it). Marked replayed, so a first
    /// use still issuing sees it (`GrantStore::insert_grant` refuses then).
    Replayed(SessionId),
    /// No such code, or expired unused.
    Invalid,
}

/// A refresh-token family issued through the authorization code flow: whose client it is
/// and what it may do. Families of the built-in client (the password grant) have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The family (the tokens' `sid`).
    pub family_id: SessionId,
    /// The client the family is bound to.
    pub client_id: String,
    /// The user.
    pub user_id: UserId,
    /// The granted scopes.
    pub scope: Scopes,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When the family ends.
    pub expires_at: OffsetDateTime,
}

/// A user's consent to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The user.
    pub user_id: UserId,
    /// The client.
    pub client_id: String,
    /// The scopes consented to.
    pub scope: Scopes,
    /// When it was given (or last widened).
    pub granted_at: OffsetDateTime,
}

/// Where codes, grants and consents live (the database).
#[async_trait]
pub trait GrantStore: Send + Sync + 'static {
    /// Store an issued code.
    async fn insert_code(&self, code: &AuthorizationCode) -> StoreResult<()>;
    /// Use a code up, in one compare-and-set: a live unused code is marked used
    /// ([`Redeemed::Fresh`]); a used one is marked replayed ([`Redeemed::Replayed`]).
    async fn redeem_code(&self, hash: &TokenHash, now: OffsetDateTime) -> StoreResult<Redeemed>;
    /// Record a family's grant, unless `code` (the code the family was issued from) was
    /// presented again meanwhile: one statement, so the check and the insert are one step.
    /// False, with nothing recorded, when it was.
    async fn insert_grant(&self, grant: &Grant, code: &TokenHash) -> StoreResult<bool>;
    /// A family's grant.
    async fn grant(&self, family: SessionId) -> StoreResult<Option<Grant>>;
    /// The families granted to a client by a user (or by every user, `None`), which the
    /// caller revokes. Grants stay until their family ends: a family without one is the
    /// built-in client's, so a grant is never removed before its family is over.
    async fn grants_of(&self, user: Option<UserId>, client_id: &str)
        -> StoreResult<Vec<SessionId>>;
    /// A user's consent to a client.
    async fn consent(&self, user: UserId, client_id: &str) -> StoreResult<Option<Consent>>;
    /// Record a consent (replacing the user's earlier one to this client).
    async fn put_consent(&self, consent: &Consent) -> StoreResult<()>;
    /// A user's consents, oldest first.
    async fn consents(&self, user: UserId) -> StoreResult<Vec<Consent>>;
    /// Withdraw a consent; false when there was none.
    async fn delete_consent(&self, user: UserId, client_id: &str) -> StoreResult<bool>;
    /// Remove codes past any use (expired a day ago) and grants whose family has ended.
    async fn purge_grants(&self, now: OffsetDateTime) -> StoreResult<u64>;
}

/// Shared handle to a grant store.
pub type DynGrantStore = Arc<dyn GrantStore>;

/// Withdraw a user's consent to a client and revoke every refresh-token family the client
/// holds for the user (and so its access tokens). Returns whether there was a consent.
pub async fn revoke_consent(
    grants: &dyn GrantStore,
    tokens: &DynTokenStore,
    user: UserId,
    client_id: &str,
    now: OffsetDateTime,
) -> StoreResult<bool> {
    let had = grants.delete_consent(user, client_id).await?;
    for family in grants.grants_of(Some(user), client_id).await? {
        tokens.revoke_family(family, now).await?;
    }
    Ok(had)
}

/// Delete a client (and with it its codes and consents), then revoke every family it holds:
/// once it is gone no exchange can make another, and a family an exchange made meanwhile
/// stays bound to a client that no longer authenticates. False when there is no such client.
pub async fn delete_client(
    clients: &DynClientStore,
    grants: &dyn GrantStore,
    tokens: &DynTokenStore,
    client_id: &str,
    now: OffsetDateTime,
) -> StoreResult<bool> {
    if !clients.delete_client(client_id).await? {
        return Ok(false);
    }
    for family in grants.grants_of(None, client_id).await? {
        tokens.revoke_family(family, now).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_order_and_cover() {
        let s = Scopes::parse("email  openid email").unwrap();
        assert_eq!(s.to_string(), "openid email");
        assert!(s.has("openid") && !s.has("profile"));
        assert!(Scopes::parse("openid profile email offline_access")
            .unwrap()
            .covers(&s));
        assert!(!s.covers(&Scopes::parse("profile").unwrap()));
        assert_eq!(
            Scopes::parse("openid admin").unwrap_err(),
            UnknownScope("admin".into())
        );
        assert!(Scopes::parse("").unwrap().is_empty());
        assert_eq!(
            Scopes::parse_known("openid address phone email").to_string(),
            "openid email"
        );
        assert!(Scopes::parse_known("address").is_empty());
        assert_eq!(
            s.union(&Scopes::parse("profile").unwrap()).to_string(),
            "openid profile email"
        );
    }

    #[test]
    fn family_ids_say_whether_they_may_have_a_grant() {
        for _ in 0..64 {
            let with = family_id(7, true);
            let without = family_id(7, false);
            assert!(may_have_grant(with) && !may_have_grant(without));
            assert_eq!((with.shard(), without.shard()), (7, 7));
        }
    }

    #[test]
    fn pkce_s256_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(challenge, challenge));
        assert!(!pkce_matches("short", challenge));
        assert!(is_pkce_text(challenge));
        assert!(!is_pkce_text(&"a".repeat(129)));
        assert!(!is_pkce_text(&format!("{}!", "a".repeat(43))));
    }
}
