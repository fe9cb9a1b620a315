//! The rows as the database returns them, and the records they become. Private: each table's
//! mapping is written once, for both engines (`sqlx::FromRow` is generic over the row type).

use keyward_core::clock::from_unix_ms;
use keyward_core::{
    RefreshFamily, SessionId, SessionRecord, StoreError, StoredKey, TokenHash, UserId, UserRecord,
};

/// The columns of `sessions`, in the order of [`SessionRow`].
macro_rules! session_cols {
    () => {
        "token_hash, id, user_id, username, created_at, last_seen_at, expires_at, ip, user_agent"
    };
}
pub(crate) use session_cols;

/// The columns of `users`.
macro_rules! user_cols {
    () => {
        "id, username, password_hash, created_at, locked"
    };
}
pub(crate) use user_cols;

/// The columns of `refresh_families`.
macro_rules! family_cols {
    () => {
        "id, user_id, username, created_at, expires_at, revoked_at"
    };
}
pub(crate) use family_cols;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    pub token_hash: Vec<u8>,
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl TryFrom<SessionRow> for SessionRecord {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Self, StoreError> {
        Ok(SessionRecord {
            token_hash: TokenHash::from_slice(&r.token_hash)
                .ok_or_else(|| corrupt("token hash length"))?,
            id: SessionId::parse(&r.id).ok_or_else(|| corrupt("session id"))?,
            user_id: UserId::parse(&r.user_id).ok_or_else(|| corrupt("user id"))?,
            username: r.username,
            created_at: from_unix_ms(r.created_at),
            last_seen_at: from_unix_ms(r.last_seen_at),
            expires_at: from_unix_ms(r.expires_at),
            ip: r.ip,
            user_agent: r.user_agent,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    username: String,
    password_hash: String,
    created_at: i64,
    locked: bool,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = StoreError;
    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(UserRecord {
            id: UserId::parse(&r.id).ok_or_else(|| corrupt("user id"))?,
            username: r.username,
            password_hash: r.password_hash,
            created_at: from_unix_ms(r.created_at),
            locked: r.locked,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct FamilyRow {
    id: String,
    user_id: String,
    username: String,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
}

impl FamilyRow {
    /// The family, and whether it is revoked.
    pub fn into_family(self) -> Result<(RefreshFamily, bool), StoreError> {
        Ok((
            RefreshFamily {
                id: SessionId::parse(&self.id).ok_or_else(|| corrupt("family id"))?,
                user_id: UserId::parse(&self.user_id).ok_or_else(|| corrupt("user id"))?,
                username: self.username,
                created_at: from_unix_ms(self.created_at),
                expires_at: from_unix_ms(self.expires_at),
            },
            self.revoked_at.is_some(),
        ))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    kid: String,
    alg: String,
    sealed_private: Vec<u8>,
    created_at: i64,
}

impl From<KeyRow> for StoredKey {
    fn from(r: KeyRow) -> Self {
        StoredKey {
            kid: r.kid,
            alg: r.alg,
            sealed_private: r.sealed_private,
            created_at: from_unix_ms(r.created_at),
        }
    }
}

/// A refresh token's row, as rotation reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct RefreshRow {
    pub family_id: String,
    pub used_at: Option<i64>,
    pub successor: Option<Vec<u8>>,
}
