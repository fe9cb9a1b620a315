//! [`TokenStore`] and [`KeyStore`] on SQL: refresh-token families, the refresh allow list, the
//! access-token deny list, and the signing keys.

use crate::rows::{family_cols, FamilyRow, KeyRow, RefreshRow};
use crate::store::{lock_id, on, Dialect, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::{
    KeyStore, RefreshFamily, RotateOutcome, SessionId, StoreResult, StoredKey, TokenHash,
    TokenStore, UserId,
};
use time::{Duration, OffsetDateTime};

/// Is this `jti` denied, or this family (`sid`) revoked: one query, one round trip (also run
/// inline by SQLite's readers).
pub(crate) const IS_DENIED: &str = "SELECT CAST(CASE WHEN \
     EXISTS (SELECT 1 FROM denied_tokens WHERE jti = $1 AND expires_at > $3) \
     OR EXISTS (SELECT 1 FROM refresh_families WHERE id = $2 AND revoked_at IS NOT NULL) \
     THEN 1 ELSE 0 END AS BIGINT)";
const INSERT_FAMILY: &str = concat!(
    "INSERT INTO refresh_families (",
    family_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, NULL)"
);
const INSERT_TOKEN: &str =
    "INSERT INTO refresh_tokens (token_hash, family_id, used_at, successor) VALUES ($1, $2, NULL, NULL)";
const FAMILY: &str = concat!(
    "SELECT ",
    family_cols!(),
    " FROM refresh_families WHERE id = $1"
);
/// Use a token if it is unused: the first statement of a rotation writes, so concurrent
/// rotations of one token run one after the other (SQLite's write lock, PostgreSQL's row
/// lock) and exactly one finds it unused.
const CLAIM: &str = "UPDATE refresh_tokens SET used_at = $1, successor = $2 \
     WHERE token_hash = $3 AND used_at IS NULL RETURNING family_id";
const TOKEN: &str =
    "SELECT family_id, used_at, successor FROM refresh_tokens WHERE token_hash = $1";
const UNUSED: &str =
    "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NULL";
const REVOKE: &str =
    "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
const REVOKE_BY_TOKEN: &str = concat!(
    "UPDATE refresh_families SET revoked_at = coalesce(revoked_at, $1) \
     WHERE id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $2) AND expires_at > $1 \
     RETURNING ",
    family_cols!()
);
const REVOKE_USER: &str =
    "UPDATE refresh_families SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL";
const FAMILY_OF: &str =
    "SELECT f.id, f.user_id, f.username, f.created_at, f.expires_at, f.revoked_at \
     FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
     WHERE t.token_hash = $1 AND t.used_at IS NULL";
const DENY: &str = "INSERT INTO denied_tokens (jti, expires_at) VALUES ($1, $2) \
     ON CONFLICT (jti) DO UPDATE SET expires_at = CASE \
     WHEN excluded.expires_at > denied_tokens.expires_at THEN excluded.expires_at \
     ELSE denied_tokens.expires_at END";
const PURGE: [&str; 3] = [
    "DELETE FROM denied_tokens WHERE expires_at <= $1",
    "DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM refresh_families WHERE expires_at <= $1)",
    "DELETE FROM refresh_families WHERE expires_at <= $1",
];
const LIST_KEYS: &str =
    "SELECT kid, alg, sealed_private, created_at FROM signing_keys ORDER BY created_at, kid";
const INSERT_KEY: &str =
    "INSERT INTO signing_keys (kid, alg, sealed_private, created_at) VALUES ($1, $2, $3, $4)";
const INSERT_KEY_UNLESS_NEWER: &str =
    "INSERT INTO signing_keys (kid, alg, sealed_private, created_at) SELECT $1, $2, $3, $4 \
     WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE created_at > $5)";
const DELETE_KEY: &str = "DELETE FROM signing_keys WHERE kid = $1";

fn grace_ms(grace: Duration) -> i64 {
    i64::try_from(grace.whole_milliseconds()).unwrap_or(0)
}

#[async_trait]
impl TokenStore for SqlStore {
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            sqlx::query(INSERT_FAMILY)
                .bind(family.id.to_string())
                .bind(family.user_id.to_string())
                .bind(&family.username)
                .bind(to_unix_ms(family.created_at))
                .bind(to_unix_ms(family.expires_at))
                .execute(&mut *tx)
                .await?;
            sqlx::query(INSERT_TOKEN)
                .bind(first.as_bytes().as_slice())
                .bind(family.id.to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(store_error)
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: Duration,
    ) -> StoreResult<RotateOutcome> {
        let now_ms = to_unix_ms(now);
        let e = store_error;
        on!(self, |p| async {
            let mut tx = p.begin().await.map_err(e)?;
            let live = |row: Option<FamilyRow>| -> StoreResult<Option<RefreshFamily>> {
                Ok(match row.map(FamilyRow::into_family).transpose()? {
                    Some((f, false)) if now < f.expires_at => Some(f),
                    _ => None,
                })
            };
            let claimed: Option<String> = sqlx::query_scalar(CLAIM)
                .bind(now_ms)
                .bind(next.as_bytes().as_slice())
                .bind(presented.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await
                .map_err(e)?;
            if let Some(family_id) = claimed {
                let row = sqlx::query_as::<D, FamilyRow>(FAMILY)
                    .bind(&family_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(e)?;
                let Some(family) = live(row)? else {
                    tx.rollback().await.map_err(e)?;
                    return Ok(RotateOutcome::Invalid);
                };
                sqlx::query(INSERT_TOKEN)
                    .bind(next.as_bytes().as_slice())
                    .bind(&family_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(e)?;
                tx.commit().await.map_err(e)?;
                return Ok(RotateOutcome::Rotated(family));
            }
            // Used already (or unknown): a retry within the grace, or reuse.
            let token = sqlx::query_as::<D, RefreshRow>(TOKEN)
                .bind(presented.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await
                .map_err(e)?;
            let Some(token) = token else {
                tx.rollback().await.map_err(e)?;
                return Ok(RotateOutcome::Invalid);
            };
            let row = sqlx::query_as::<D, FamilyRow>(FAMILY)
                .bind(&token.family_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(e)?;
            let Some(family) = live(row)? else {
                tx.rollback().await.map_err(e)?;
                return Ok(RotateOutcome::Invalid);
            };
            let within_grace = token
                .used_at
                .is_some_and(|u| now_ms < u.saturating_add(grace_ms(grace)));
            if within_grace && token.successor.as_deref() == Some(next.as_bytes().as_slice()) {
                let unused: i64 = sqlx::query_scalar(UNUSED)
                    .bind(next.as_bytes().as_slice())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(e)?;
                if unused > 0 {
                    tx.rollback().await.map_err(e)?;
                    return Ok(RotateOutcome::Rotated(family));
                }
            }
            sqlx::query(REVOKE)
                .bind(now_ms)
                .bind(&token.family_id)
                .execute(&mut *tx)
                .await
                .map_err(e)?;
            tx.commit().await.map_err(e)?;
            Ok(RotateOutcome::Reused(family))
        }
        .await)
    }

    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let row: Option<FamilyRow> = on!(self, |p| sqlx::query_as(FAMILY_OF)
            .bind(token.as_bytes().as_slice())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        let Some((family, revoked)) = row.map(FamilyRow::into_family).transpose()? else {
            return Ok(None);
        };
        Ok((!revoked && now < family.expires_at).then_some(family))
    }

    async fn revoke_family(&self, family: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(REVOKE)
            .bind(to_unix_ms(now))
            .bind(family.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let row: Option<FamilyRow> = on!(self, |p| sqlx::query_as(REVOKE_BY_TOKEN)
            .bind(to_unix_ms(now))
            .bind(token.as_bytes().as_slice())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        Ok(row.map(FamilyRow::into_family).transpose()?.map(|(f, _)| f))
    }

    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64> {
        on!(self, |p| sqlx::query(REVOKE_USER)
            .bind(to_unix_ms(now))
            .bind(user.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected()))
        .map_err(store_error)
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        on!(self, |p| sqlx::query(DENY)
            .bind(jti)
            .bind(to_unix_ms(until))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let sid = sid.to_string();
        let now = to_unix_ms(now);
        if let Some(denied) = self
            .readers
            .as_ref()
            .and_then(|r| r.is_denied(IS_DENIED, jti, &sid, now).ok())
        {
            return Ok(denied);
        }
        let denied: i64 = on!(self, |p| sqlx::query_scalar(IS_DENIED)
            .bind(jti)
            .bind(&sid)
            .bind(now)
            .fetch_one(p)
            .await)
        .map_err(store_error)?;
        Ok(denied != 0)
    }

    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        let now = to_unix_ms(now);
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            let mut n = 0;
            for sql in PURGE {
                n += sqlx::query(sql)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        }
        .await)
        .map_err(store_error)
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows: Vec<KeyRow> =
            on!(self, |p| sqlx::query_as(LIST_KEYS).fetch_all(p).await).map_err(store_error)?;
        Ok(rows.into_iter().map(StoredKey::from).collect())
    }

    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()> {
        on!(self, |p| sqlx::query(INSERT_KEY)
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(&key.sealed_private)
            .bind(to_unix_ms(key.created_at))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn insert_key_unless_newer(
        &self,
        key: &StoredKey,
        since: OffsetDateTime,
    ) -> StoreResult<bool> {
        // Alone among scheduled rotations: the check and the insert see the same keys.
        on!(self, |p| async {
            let mut tx = D::begin_serial(p, lock_id("keyward key rotation")).await?;
            let done = sqlx::query(INSERT_KEY_UNLESS_NEWER)
                .bind(&key.kid)
                .bind(&key.alg)
                .bind(&key.sealed_private)
                .bind(to_unix_ms(key.created_at))
                .bind(to_unix_ms(since))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() > 0)
        }
        .await)
        .map_err(store_error)
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(DELETE_KEY)
            .bind(kid)
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }
}
