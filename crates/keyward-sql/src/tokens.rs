//! SQLite: refresh-token families, the refresh allow list, the access-token deny list, and
//! signing keys.

use crate::sqlite::SqliteStore;
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    KeyStore, RefreshFamily, RotateOutcome, SessionId, StoreError, StoreResult, StoredKey,
    TokenHash, TokenStore, UserId,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::{Duration, OffsetDateTime};

const FAMILY_COLUMNS: &str = "id, user_id, username, created_at, expires_at, revoked_at";

fn family_from_row(row: &SqliteRow) -> StoreResult<(RefreshFamily, bool)> {
    let id: String = row.try_get("id").map_err(store_error)?;
    let user: String = row.try_get("user_id").map_err(store_error)?;
    let revoked: Option<i64> = row.try_get("revoked_at").map_err(store_error)?;
    Ok((
        RefreshFamily {
            id: SessionId::parse(&id).ok_or_else(|| StoreError::Corrupt("family id".into()))?,
            user_id: UserId::parse(&user).ok_or_else(|| StoreError::Corrupt("user id".into()))?,
            username: row.try_get("username").map_err(store_error)?,
            created_at: from_unix_ms(row.try_get("created_at").map_err(store_error)?),
            expires_at: from_unix_ms(row.try_get("expires_at").map_err(store_error)?),
        },
        revoked.is_some(),
    ))
}

async fn family_in(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
) -> StoreResult<Option<(RefreshFamily, bool)>> {
    let row = sqlx::query(&format!(
        "SELECT {FAMILY_COLUMNS} FROM refresh_families WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    row.as_ref().map(family_from_row).transpose()
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        let mut tx = self.pool().begin().await.map_err(store_error)?;
        sqlx::query(&format!(
            "INSERT INTO refresh_families ({FAMILY_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)"
        ))
        .bind(family.id.to_string())
        .bind(family.user_id.to_string())
        .bind(&family.username)
        .bind(to_unix_ms(family.created_at))
        .bind(to_unix_ms(family.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, used_at) VALUES (?, ?, NULL)",
        )
        .bind(first.as_bytes().as_slice())
        .bind(family.id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: Duration,
    ) -> StoreResult<RotateOutcome> {
        // The first statement writes, so the transaction takes SQLite's write lock at once and
        // concurrent rotations of the same token run one after the other: the first marks it
        // used, every later one finds it used.
        let mut tx = self.pool().begin().await.map_err(store_error)?;
        let claimed: Option<String> = sqlx::query_scalar(
            "UPDATE refresh_tokens SET used_at = ?, successor = ? \
             WHERE token_hash = ? AND used_at IS NULL RETURNING family_id",
        )
        .bind(to_unix_ms(now))
        .bind(next.as_bytes().as_slice())
        .bind(presented.as_bytes().as_slice())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(family_id) = claimed {
            return match family_in(&mut tx, &family_id).await? {
                Some((family, false)) if now < family.expires_at => {
                    sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, used_at, successor) VALUES (?, ?, NULL, NULL)")
                        .bind(next.as_bytes().as_slice())
                        .bind(&family_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)?;
                    Ok(RotateOutcome::Rotated(family))
                }
                _ => {
                    tx.rollback().await.map_err(store_error)?;
                    Ok(RotateOutcome::Invalid)
                }
            };
        }
        let row = sqlx::query(
            "SELECT family_id, used_at, successor FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(presented.as_bytes().as_slice())
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(store_error)?;
            return Ok(RotateOutcome::Invalid);
        };
        let family_id: String = row.try_get("family_id").map_err(store_error)?;
        let used_at: Option<i64> = row.try_get("used_at").map_err(store_error)?;
        let successor: Option<Vec<u8>> = row.try_get("successor").map_err(store_error)?;
        let Some((family, false)) = family_in(&mut tx, &family_id)
            .await?
            .filter(|(f, _)| now < f.expires_at)
        else {
            tx.rollback().await.map_err(store_error)?;
            return Ok(RotateOutcome::Invalid);
        };
        let within_grace = used_at.is_some_and(|u| {
            to_unix_ms(now)
                < u.saturating_add(i64::try_from(grace.whole_milliseconds()).unwrap_or(0))
        });
        if within_grace && successor.as_deref() == Some(next.as_bytes().as_slice()) {
            let successor_unused: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM refresh_tokens WHERE token_hash = ? AND used_at IS NULL",
            )
            .bind(next.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            if successor_unused.is_some() {
                tx.rollback().await.map_err(store_error)?;
                return Ok(RotateOutcome::Rotated(family));
            }
        }
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(to_unix_ms(now))
        .bind(&family_id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(RotateOutcome::Reused(family))
    }

    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let row = sqlx::query(
            "SELECT f.id, f.user_id, f.username, f.created_at, f.expires_at, f.revoked_at \
             FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
             WHERE t.token_hash = ? AND t.used_at IS NULL",
        )
        .bind(token.as_bytes().as_slice())
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let (family, revoked) = family_from_row(&row)?;
        Ok((!revoked && now < family.expires_at).then_some(family))
    }

    async fn revoke_family(&self, family: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_families SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(to_unix_ms(now))
        .bind(family.to_string())
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let row = sqlx::query(&format!(
            "UPDATE refresh_families SET revoked_at = coalesce(revoked_at, ?) \
             WHERE id = (SELECT family_id FROM refresh_tokens WHERE token_hash = ?) AND expires_at > ? \
             RETURNING {FAMILY_COLUMNS}"
        ))
        .bind(to_unix_ms(now))
        .bind(token.as_bytes().as_slice())
        .bind(to_unix_ms(now))
        .fetch_optional(self.pool())
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(family_from_row)
            .transpose()
            .map(|f| f.map(|(f, _)| f))
    }

    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE refresh_families SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(to_unix_ms(now))
        .bind(user.to_string())
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        sqlx::query("INSERT INTO denied_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)")
            .bind(jti)
            .bind(to_unix_ms(until))
            .execute(self.pool())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let sid_text = sid.to_string();
        if let Some(denied) = self
            .readers()
            .and_then(|r| r.is_denied(jti, &sid_text, to_unix_ms(now)).ok())
        {
            return Ok(denied);
        }
        let denied: i64 = sqlx::query_scalar(crate::sqlite::IS_DENIED)
            .bind(jti)
            .bind(sid.to_string())
            .bind(to_unix_ms(now))
            .fetch_one(self.pool())
            .await
            .map_err(store_error)?;
        Ok(denied != 0)
    }

    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        let now = to_unix_ms(now);
        let mut tx = self.pool().begin().await.map_err(store_error)?;
        let mut n = 0;
        for sql in [
            "DELETE FROM denied_tokens WHERE expires_at <= ?",
            "DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM refresh_families WHERE expires_at <= ?)",
            "DELETE FROM refresh_families WHERE expires_at <= ?",
        ] {
            n += sqlx::query(sql).bind(now).execute(&mut *tx).await.map_err(store_error)?.rows_affected();
        }
        tx.commit().await.map_err(store_error)?;
        Ok(n)
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows = sqlx::query("SELECT kid, alg, sealed_private, created_at FROM signing_keys ORDER BY created_at, kid")
            .fetch_all(self.pool())
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.try_get("kid").map_err(store_error)?,
                    alg: r.try_get("alg").map_err(store_error)?,
                    sealed_private: r.try_get("sealed_private").map_err(store_error)?,
                    created_at: from_unix_ms(r.try_get("created_at").map_err(store_error)?),
                })
            })
            .collect()
    }

    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.sealed_private)
        .bind(to_unix_ms(key.created_at))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn insert_key_unless_newer(
        &self,
        key: &StoredKey,
        since: OffsetDateTime,
    ) -> StoreResult<bool> {
        // One statement: SQLite runs writers one at a time, so the check and the insert see
        // the same table.
        let done = sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, created_at) SELECT ?, ?, ?, ? \
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE created_at > ?)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.sealed_private)
        .bind(to_unix_ms(key.created_at))
        .bind(to_unix_ms(since))
        .execute(self.pool())
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM signing_keys WHERE kid = ?")
            .bind(kid)
            .execute(self.pool())
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }
}
