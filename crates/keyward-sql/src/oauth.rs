//! [`GrantStore`] on SQL: authorization codes (hashed; redeemed by compare-and-set), the
//! grants that bind refresh-token families to clients, and consents.

use crate::store::{on, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    Amr, AuthorizationCode, Consent, Grant, GrantStore, Redeemed, Scopes, SessionId, StoreError,
    StoreResult, TokenHash, UserId,
};
use time::{Duration, OffsetDateTime};

macro_rules! code_cols {
    () => {
        "code_hash, family_id, client_id, redirect_uri, code_challenge, nonce, scope, user_id, \
         session_id, auth_time, amr, created_at, expires_at"
    };
}
const INSERT_CODE: &str = concat!(
    "INSERT INTO oauth_codes (",
    code_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
);
/// The first use: one compare-and-set that also names the family.
const USE_CODE: &str = concat!(
    "UPDATE oauth_codes SET used_at = $1 \
     WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING ",
    code_cols!()
);
const REPLAY_CODE: &str = "UPDATE oauth_codes SET replayed = TRUE \
     WHERE code_hash = $1 AND used_at IS NOT NULL RETURNING family_id";

macro_rules! grant_cols {
    () => {
        "family_id, client_id, user_id, scope, created_at, expires_at"
    };
}
/// The grant, unless its code was replayed (the casts let PostgreSQL type the parameters of
/// a bare `SELECT`).
const INSERT_GRANT: &str = concat!(
    "INSERT INTO oauth_grants (",
    grant_cols!(),
    ") SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS TEXT), CAST($4 AS TEXT), \
     CAST($5 AS BIGINT), CAST($6 AS BIGINT) WHERE NOT EXISTS \
     (SELECT 1 FROM oauth_codes WHERE code_hash = $7 AND replayed)"
);
const GRANT: &str = concat!(
    "SELECT ",
    grant_cols!(),
    " FROM oauth_grants WHERE family_id = $1"
);
const GRANTS_OF: &str = "SELECT family_id FROM oauth_grants \
     WHERE client_id = $1 AND (CAST($2 AS TEXT) IS NULL OR user_id = $2) ORDER BY created_at";

const CONSENT: &str = "SELECT user_id, client_id, scope, granted_at FROM oauth_consents \
     WHERE user_id = $1 AND client_id = $2";
const PUT_CONSENT: &str = "INSERT INTO oauth_consents (user_id, client_id, scope, granted_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, client_id) \
     DO UPDATE SET scope = excluded.scope, granted_at = excluded.granted_at";
const CONSENTS: &str = "SELECT user_id, client_id, scope, granted_at FROM oauth_consents \
     WHERE user_id = $1 ORDER BY granted_at, client_id";
const DELETE_CONSENT: &str = "DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2";

const PURGE_CODES: &str = "DELETE FROM oauth_codes WHERE expires_at <= $1";
const PURGE_GRANTS: &str = "DELETE FROM oauth_grants WHERE expires_at <= $1";
/// A used code is remembered this long past its expiry, to recognise a replay.
const REPLAY_MEMORY: Duration = Duration::days(1);

#[derive(sqlx::FromRow)]
struct CodeRow {
    code_hash: Vec<u8>,
    family_id: String,
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    scope: String,
    user_id: String,
    session_id: String,
    auth_time: i64,
    amr: i32,
    created_at: i64,
    expires_at: i64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("an OAuth row's {what}"))
}

fn scopes(raw: &str) -> StoreResult<Scopes> {
    Scopes::parse(raw).map_err(|_| corrupt("scope"))
}

fn user_id(raw: &str) -> StoreResult<UserId> {
    UserId::parse(raw).ok_or_else(|| corrupt("user id"))
}

fn family_id(raw: &str) -> StoreResult<SessionId> {
    SessionId::parse(raw).ok_or_else(|| corrupt("family id"))
}

impl TryFrom<CodeRow> for AuthorizationCode {
    type Error = StoreError;
    fn try_from(r: CodeRow) -> StoreResult<Self> {
        Ok(AuthorizationCode {
            hash: TokenHash::from_slice(&r.code_hash).ok_or_else(|| corrupt("hash"))?,
            family_id: family_id(&r.family_id)?,
            scope: scopes(&r.scope)?,
            user_id: user_id(&r.user_id)?,
            session_id: family_id(&r.session_id)?,
            auth_time: from_unix_ms(r.auth_time),
            amr: Amr::from_bits(u8::try_from(r.amr).unwrap_or(1)),
            created_at: from_unix_ms(r.created_at),
            expires_at: from_unix_ms(r.expires_at),
            client_id: r.client_id,
            redirect_uri: r.redirect_uri,
            code_challenge: r.code_challenge,
            nonce: r.nonce,
        })
    }
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    family_id: String,
    client_id: String,
    user_id: String,
    scope: String,
    created_at: i64,
    expires_at: i64,
}

impl TryFrom<GrantRow> for Grant {
    type Error = StoreError;
    fn try_from(r: GrantRow) -> StoreResult<Self> {
        Ok(Grant {
            family_id: family_id(&r.family_id)?,
            user_id: user_id(&r.user_id)?,
            scope: scopes(&r.scope)?,
            created_at: from_unix_ms(r.created_at),
            expires_at: from_unix_ms(r.expires_at),
            client_id: r.client_id,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ConsentRow {
    user_id: String,
    client_id: String,
    scope: String,
    granted_at: i64,
}

impl TryFrom<ConsentRow> for Consent {
    type Error = StoreError;
    fn try_from(r: ConsentRow) -> StoreResult<Self> {
        Ok(Consent {
            user_id: user_id(&r.user_id)?,
            scope: scopes(&r.scope)?,
            granted_at: from_unix_ms(r.granted_at),
            client_id: r.client_id,
        })
    }
}

#[async_trait]
impl GrantStore for SqlStore {
    async fn insert_code(&self, c: &AuthorizationCode) -> StoreResult<()> {
        on!(self, |p| sqlx::query(INSERT_CODE)
            .bind(c.hash.as_bytes().as_slice())
            .bind(c.family_id.to_string())
            .bind(&c.client_id)
            .bind(&c.redirect_uri)
            .bind(&c.code_challenge)
            .bind(c.nonce.as_deref())
            .bind(c.scope.to_string())
            .bind(c.user_id.to_string())
            .bind(c.session_id.to_string())
            .bind(to_unix_ms(c.auth_time))
            .bind(i32::from(c.amr.bits()))
            .bind(to_unix_ms(c.created_at))
            .bind(to_unix_ms(c.expires_at))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn redeem_code(&self, hash: &TokenHash, now: OffsetDateTime) -> StoreResult<Redeemed> {
        let fresh: Option<CodeRow> = on!(self, |p| sqlx::query_as(USE_CODE)
            .bind(to_unix_ms(now))
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        if let Some(row) = fresh {
            return Ok(Redeemed::Fresh(Box::new(row.try_into()?)));
        }
        let replayed: Option<(String,)> = on!(self, |p| sqlx::query_as(REPLAY_CODE)
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        Ok(match replayed {
            Some((family,)) => Redeemed::Replayed(family_id(&family)?),
            None => Redeemed::Invalid,
        })
    }

    async fn insert_grant(&self, g: &Grant, code: &TokenHash) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(INSERT_GRANT)
            .bind(g.family_id.to_string())
            .bind(&g.client_id)
            .bind(g.user_id.to_string())
            .bind(g.scope.to_string())
            .bind(to_unix_ms(g.created_at))
            .bind(to_unix_ms(g.expires_at))
            .bind(code.as_bytes().as_slice())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn grant(&self, family: SessionId) -> StoreResult<Option<Grant>> {
        let row: Option<GrantRow> = on!(self, |p| sqlx::query_as(GRANT)
            .bind(family.to_string())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(Grant::try_from).transpose()
    }

    async fn grants_of(
        &self,
        user: Option<UserId>,
        client_id: &str,
    ) -> StoreResult<Vec<SessionId>> {
        let rows: Vec<(String,)> = on!(self, |p| sqlx::query_as(GRANTS_OF)
            .bind(client_id)
            .bind(user.map(|u| u.to_string()))
            .fetch_all(p)
            .await)
        .map_err(store_error)?;
        rows.iter().map(|(f,)| family_id(f)).collect()
    }

    async fn consent(&self, user: UserId, client_id: &str) -> StoreResult<Option<Consent>> {
        let row: Option<ConsentRow> = on!(self, |p| sqlx::query_as(CONSENT)
            .bind(user.to_string())
            .bind(client_id)
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(Consent::try_from).transpose()
    }

    async fn put_consent(&self, c: &Consent) -> StoreResult<()> {
        on!(self, |p| sqlx::query(PUT_CONSENT)
            .bind(c.user_id.to_string())
            .bind(&c.client_id)
            .bind(c.scope.to_string())
            .bind(to_unix_ms(c.granted_at))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn consents(&self, user: UserId) -> StoreResult<Vec<Consent>> {
        let rows: Vec<ConsentRow> = on!(self, |p| sqlx::query_as(CONSENTS)
            .bind(user.to_string())
            .fetch_all(p)
            .await)
        .map_err(store_error)?;
        rows.into_iter().map(Consent::try_from).collect()
    }

    async fn delete_consent(&self, user: UserId, client_id: &str) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(DELETE_CONSENT)
            .bind(user.to_string())
            .bind(client_id)
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn purge_grants(&self, now: OffsetDateTime) -> StoreResult<u64> {
        let codes_before = to_unix_ms(now - REPLAY_MEMORY);
        let now = to_unix_ms(now);
        on!(self, |p| async {
            let mut n = 0;
            for (sql, before) in [(PURGE_CODES, codes_before), (PURGE_GRANTS, now)] {
                n += sqlx::query(sql)
                    .bind(before)
                    .execute(p)
                    .await?
                    .rows_affected();
            }
            Ok::<u64, sqlx::Error>(n)
        }
        .await)
        .map_err(store_error)
    }
}
