//! PostgreSQL: users, sessions, refresh tokens, the deny list and signing keys, shared by
//! every node of a fleet. The same schema and semantics as the SQLite store; every method is
//! one statement or one transaction.

use crate::{store_error, OpenError};
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    FailureLog, KeyStore, RefreshFamily, RotateOutcome, SessionId, SessionRecord, SessionStore,
    StoreError, StoreResult, StoredKey, TokenHash, TokenStore, UserId, UserRecord, UserStore,
};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::time::Duration as StdDuration;
use time::{Duration, OffsetDateTime};

/// A PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

const SESSION_COLUMNS: &str =
    "token_hash, id, user_id, username, created_at, last_seen_at, expires_at, ip, user_agent";
const USER_COLUMNS: &str = "id, username, password_hash, created_at, locked";
const FAMILY_COLUMNS: &str = "id, user_id, username, created_at, expires_at, revoked_at";
/// The advisory lock that serialises scheduled key rotations ("kw" "keys" in ASCII).
const KEY_ROTATION_LOCK: i64 = 0x6b77_6b65_7973;

impl PostgresStore {
    /// Connect and bring the schema up to date. Connections time out after 5 s, so an
    /// unreachable server answers `StoreError::Unavailable` (HTTP 503), not a hang.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(StdDuration::from_secs(5))
            .connect(url)
            .await
            .map_err(OpenError::Connect)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(OpenError::Migrate)?;
        Ok(Self { pool })
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn session_from_row(row: &PgRow) -> StoreResult<SessionRecord> {
    let hash: Vec<u8> = row.try_get("token_hash").map_err(store_error)?;
    let id: String = row.try_get("id").map_err(store_error)?;
    let user_id: String = row.try_get("user_id").map_err(store_error)?;
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(&hash).ok_or_else(|| corrupt("token hash length"))?,
        id: SessionId::parse(&id).ok_or_else(|| corrupt("session id"))?,
        user_id: UserId::parse(&user_id).ok_or_else(|| corrupt("user id"))?,
        username: row.try_get("username").map_err(store_error)?,
        created_at: from_unix_ms(row.try_get("created_at").map_err(store_error)?),
        last_seen_at: from_unix_ms(row.try_get("last_seen_at").map_err(store_error)?),
        expires_at: from_unix_ms(row.try_get("expires_at").map_err(store_error)?),
        ip: row.try_get("ip").map_err(store_error)?,
        user_agent: row.try_get("user_agent").map_err(store_error)?,
    })
}

fn user_from_row(row: &PgRow) -> StoreResult<UserRecord> {
    let id: String = row.try_get("id").map_err(store_error)?;
    Ok(UserRecord {
        id: UserId::parse(&id).ok_or_else(|| corrupt("user id"))?,
        username: row.try_get("username").map_err(store_error)?,
        password_hash: row.try_get("password_hash").map_err(store_error)?,
        created_at: from_unix_ms(row.try_get("created_at").map_err(store_error)?),
        locked: row.try_get("locked").map_err(store_error)?,
    })
}

fn family_from_row(row: &PgRow) -> StoreResult<(RefreshFamily, bool)> {
    let id: String = row.try_get("id").map_err(store_error)?;
    let user: String = row.try_get("user_id").map_err(store_error)?;
    let revoked: Option<i64> = row.try_get("revoked_at").map_err(store_error)?;
    Ok((
        RefreshFamily {
            id: SessionId::parse(&id).ok_or_else(|| corrupt("family id"))?,
            user_id: UserId::parse(&user).ok_or_else(|| corrupt("user id"))?,
            username: row.try_get("username").map_err(store_error)?,
            created_at: from_unix_ms(row.try_get("created_at").map_err(store_error)?),
            expires_at: from_unix_ms(row.try_get("expires_at").map_err(store_error)?),
        },
        revoked.is_some(),
    ))
}

async fn insert_session<'e, E>(exec: E, s: &SessionRecord) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    ))
    .bind(s.token_hash.as_bytes().as_slice())
    .bind(s.id.to_string())
    .bind(s.user_id.to_string())
    .bind(&s.username)
    .bind(to_unix_ms(s.created_at))
    .bind(to_unix_ms(s.last_seen_at))
    .bind(to_unix_ms(s.expires_at))
    .bind(&s.ip)
    .bind(&s.user_agent)
    .execute(exec)
    .await
    .map(|_| ())
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn create(&self, session: &SessionRecord) -> StoreResult<()> {
        insert_session(&self.pool, session)
            .await
            .map_err(store_error)
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1"
        ))
        .bind(token_hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        sqlx::query(
            "UPDATE sessions SET last_seen_at = GREATEST(last_seen_at, $1) WHERE token_hash = $2",
        )
        .bind(to_unix_ms(last_seen_at))
        .bind(token_hash.as_bytes().as_slice())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "DELETE FROM sessions WHERE token_hash = $1 RETURNING {SESSION_COLUMNS}"
        ))
        .bind(token_hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "DELETE FROM sessions WHERE id = $1 AND ($2::TEXT IS NULL OR user_id = $2) RETURNING {SESSION_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(owner.map(|o| o.to_string()))
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM sessions WHERE user_id = $1 AND ($2::TEXT IS NULL OR id <> $2)",
        )
        .bind(user.to_string())
        .bind(keep.map(|k| k.to_string()))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1"
        ))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(session_from_row).collect()
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let gone = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(old.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if gone.rows_affected() == 0 {
            tx.rollback().await.map_err(store_error)?;
            return Ok(false);
        }
        insert_session(&mut *tx, new).await.map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(idle_cutoff))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[async_trait]
impl UserStore for PostgresStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO users (id, username, username_key, password_hash, created_at, locked) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user.id.to_string())
        .bind(&user.username)
        .bind(user.username.to_ascii_lowercase())
        .bind(&user.password_hash)
        .bind(to_unix_ms(user.created_at))
        .bind(user.locked)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username_key = $1"
        ))
        .bind(username.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(phc)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn set_locked(&self, id: UserId, locked: bool) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE users SET locked = $1 WHERE id = $2")
            .bind(locked)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username_key"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        SessionStore::ping(self).await
    }
}

async fn family_in(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> StoreResult<Option<(RefreshFamily, bool)>> {
    let row = sqlx::query(&format!(
        "SELECT {FAMILY_COLUMNS} FROM refresh_families WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    row.as_ref().map(family_from_row).transpose()
}

#[async_trait]
impl TokenStore for PostgresStore {
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query(&format!(
            "INSERT INTO refresh_families ({FAMILY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, NULL)"
        ))
        .bind(family.id.to_string())
        .bind(family.user_id.to_string())
        .bind(&family.username)
        .bind(to_unix_ms(family.created_at))
        .bind(to_unix_ms(family.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, used_at, successor) VALUES ($1, $2, NULL, NULL)")
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
        // Concurrent UPDATEs of the same row wait for each other; the one that runs second
        // re-checks `used_at IS NULL`, finds it used, and goes down the reuse path.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let claimed: Option<String> = sqlx::query_scalar(
            "UPDATE refresh_tokens SET used_at = $1, successor = $2 WHERE token_hash = $3 AND used_at IS NULL RETURNING family_id",
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
                    sqlx::query("INSERT INTO refresh_tokens (token_hash, family_id, used_at, successor) VALUES ($1, $2, NULL, NULL)")
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
            "SELECT family_id, used_at, successor FROM refresh_tokens WHERE token_hash = $1",
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
        let grace_ms = i64::try_from(grace.whole_milliseconds()).unwrap_or(0);
        let within_grace = used_at.is_some_and(|u| to_unix_ms(now) < u.saturating_add(grace_ms));
        if within_grace && successor.as_deref() == Some(next.as_bytes().as_slice()) {
            let unused: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NULL",
            )
            .bind(next.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            if unused.is_some() {
                tx.rollback().await.map_err(store_error)?;
                return Ok(RotateOutcome::Rotated(family));
            }
        }
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
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
             WHERE t.token_hash = $1 AND t.used_at IS NULL",
        )
        .bind(token.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let (family, revoked) = family_from_row(&row)?;
        Ok((!revoked && now < family.expires_at).then_some(family))
    }

    async fn revoke_family(&self, family: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(to_unix_ms(now))
        .bind(family.to_string())
        .execute(&self.pool)
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
            "UPDATE refresh_families SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $2) AND expires_at > $1 \
             RETURNING {FAMILY_COLUMNS}"
        ))
        .bind(to_unix_ms(now))
        .bind(token.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref()
            .map(family_from_row)
            .transpose()
            .map(|f| f.map(|(f, _)| f))
    }

    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(to_unix_ms(now))
        .bind(user.to_string())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO denied_tokens (jti, expires_at) VALUES ($1, $2) \
             ON CONFLICT (jti) DO UPDATE SET expires_at = GREATEST(denied_tokens.expires_at, excluded.expires_at)",
        )
        .bind(jti)
        .bind(to_unix_ms(until))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let denied: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM denied_tokens WHERE jti = $1 AND expires_at > $3) \
                 OR EXISTS (SELECT 1 FROM refresh_families WHERE id = $2 AND revoked_at IS NOT NULL)",
        )
        .bind(jti)
        .bind(sid.to_string())
        .bind(to_unix_ms(now))
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(denied)
    }

    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        let now = to_unix_ms(now);
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let mut n = 0;
        for sql in [
            "DELETE FROM denied_tokens WHERE expires_at <= $1",
            "DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM refresh_families WHERE expires_at <= $1)",
            "DELETE FROM refresh_families WHERE expires_at <= $1",
        ] {
            n += sqlx::query(sql).bind(now).execute(&mut *tx).await.map_err(store_error)?.rows_affected();
        }
        tx.commit().await.map_err(store_error)?;
        Ok(n)
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows = sqlx::query("SELECT kid, alg, sealed_private, created_at FROM signing_keys ORDER BY created_at, kid")
            .fetch_all(&self.pool)
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
        sqlx::query("INSERT INTO signing_keys (kid, alg, sealed_private, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(&key.sealed_private)
            .bind(to_unix_ms(key.created_at))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn insert_key_unless_newer(
        &self,
        key: &StoredKey,
        since: OffsetDateTime,
    ) -> StoreResult<bool> {
        // Concurrent transactions would each see no newer key: take a lock of our own first
        // (released at commit), so they run one after the other.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(KEY_ROTATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let done = sqlx::query(
            "INSERT INTO signing_keys (kid, alg, sealed_private, created_at) SELECT $1, $2, $3, $4 \
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE created_at > $5)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.sealed_private)
        .bind(to_unix_ms(key.created_at))
        .bind(to_unix_ms(since))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }
}

/// The login throttle's failure log, shared by every node on this database.
#[async_trait]
impl FailureLog for PostgresStore {
    async fn failures(&self, key: &str, since: OffsetDateTime) -> StoreResult<Vec<OffsetDateTime>> {
        let times: Vec<i64> = sqlx::query_scalar(
            "SELECT at FROM login_failures WHERE key = $1 AND at > $2 ORDER BY at, id",
        )
        .bind(key)
        .bind(to_unix_ms(since))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(times.into_iter().map(from_unix_ms).collect())
    }

    async fn record(
        &self,
        key: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
        _window: Duration,
    ) -> StoreResult<()> {
        let since = to_unix_ms(since);
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("INSERT INTO login_failures (key, at) VALUES ($1, $2)")
            .bind(key)
            .bind(to_unix_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // This key's rows out of the window or beyond its newest `keep`.
        sqlx::query(
            "DELETE FROM login_failures WHERE key = $1 AND (at <= $3 OR id NOT IN \
             (SELECT id FROM login_failures WHERE key = $1 ORDER BY at DESC, id DESC LIMIT $2))",
        )
        .bind(key)
        .bind(i64::try_from(keep.max(1)).unwrap_or(i64::MAX))
        .bind(since)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        // Other keys' stale rows (abandoned names and addresses), after the commit and at
        // most a thousand at a time, skipping rows another node is removing: the count above
        // never waits for this.
        let swept = sqlx::query(
            "DELETE FROM login_failures WHERE id IN (SELECT id FROM login_failures \
             WHERE at <= $1 LIMIT 1000 FOR UPDATE SKIP LOCKED)",
        )
        .bind(since)
        .execute(&self.pool)
        .await;
        if let Err(e) = swept {
            tracing::debug!(error = %e, "sweeping stale login failures failed");
        }
        Ok(())
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
