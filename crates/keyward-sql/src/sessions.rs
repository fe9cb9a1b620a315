//! [`SessionStore`] on SQL: one statement per operation, for both engines.

use crate::rows::{session_cols, SessionRow};
use crate::store::{on, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::{SessionId, SessionRecord, SessionStore, StoreResult, TokenHash, UserId};
use time::OffsetDateTime;

/// A session by the hash of its token (also run inline by SQLite's readers).
pub(crate) const GET: &str = concat!(
    "SELECT ",
    session_cols!(),
    " FROM sessions WHERE token_hash = $1"
);
const INSERT: &str = concat!(
    "INSERT INTO sessions (",
    session_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
const TOUCH: &str = "UPDATE sessions SET last_seen_at = $1 \
     WHERE token_hash = $2 AND last_seen_at < $1";
const DELETE: &str = concat!(
    "DELETE FROM sessions WHERE token_hash = $1 RETURNING ",
    session_cols!()
);
const DELETE_BY_ID: &str = concat!(
    "DELETE FROM sessions WHERE id = $1 AND (CAST($2 AS TEXT) IS NULL OR user_id = $2) RETURNING ",
    session_cols!()
);
const DELETE_FOR_USER: &str =
    "DELETE FROM sessions WHERE user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR id <> $2)";
const LIST_FOR_USER: &str = concat!(
    "SELECT ",
    session_cols!(),
    " FROM sessions WHERE user_id = $1"
);
const DELETE_OLD: &str = "DELETE FROM sessions WHERE token_hash = $1";
const PURGE: &str = "DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2";

/// Bind a session to [`INSERT`]'s placeholders.
macro_rules! insert_session {
    ($s:expr) => {
        sqlx::query(INSERT)
            .bind($s.token_hash.as_bytes().as_slice())
            .bind($s.id.to_string())
            .bind($s.user_id.to_string())
            .bind(&$s.username)
            .bind(to_unix_ms($s.created_at))
            .bind(to_unix_ms($s.last_seen_at))
            .bind(to_unix_ms($s.expires_at))
            .bind(&$s.ip)
            .bind(&$s.user_agent)
            .bind(i32::from($s.amr.bits()))
    };
}

fn records(rows: Vec<SessionRow>) -> StoreResult<Vec<SessionRecord>> {
    rows.into_iter().map(SessionRecord::try_from).collect()
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn create(&self, s: &SessionRecord) -> StoreResult<()> {
        on!(self, |p| insert_session!(s).execute(p).await.map(|_| ())).map_err(store_error)
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        if let Some(found) = self
            .readers
            .as_ref()
            .and_then(|r| r.session(GET, token_hash).ok())
        {
            return Ok(found);
        }
        let row: Option<SessionRow> = on!(self, |p| sqlx::query_as(GET)
            .bind(token_hash.as_bytes().as_slice())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        on!(self, |p| sqlx::query(TOUCH)
            .bind(to_unix_ms(last_seen_at))
            .bind(token_hash.as_bytes().as_slice())
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let row: Option<SessionRow> = on!(self, |p| sqlx::query_as(DELETE)
            .bind(token_hash.as_bytes().as_slice())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let row: Option<SessionRow> = on!(self, |p| sqlx::query_as(DELETE_BY_ID)
            .bind(id.to_string())
            .bind(owner.map(|o| o.to_string()))
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(SessionRecord::try_from).transpose()
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        on!(self, |p| sqlx::query(DELETE_FOR_USER)
            .bind(user.to_string())
            .bind(keep.map(|k| k.to_string()))
            .execute(p)
            .await
            .map(|d| d.rows_affected()))
        .map_err(store_error)
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let rows: Vec<SessionRow> = on!(self, |p| sqlx::query_as(LIST_FOR_USER)
            .bind(user.to_string())
            .fetch_all(p)
            .await)
        .map_err(store_error)?;
        records(rows)
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            let gone = sqlx::query(DELETE_OLD)
                .bind(old.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
            if gone.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_session!(new).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(store_error)
    }

    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        let n = on!(self, |p| sqlx::query(PURGE)
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(idle_cutoff))
            .execute(p)
            .await
            .map(|d| d.rows_affected()))
        .map_err(store_error)?;
        if let crate::store::Pool::Postgres(p) = &self.pool {
            // The change log keeps what a node that lost its feed may need to replay.
            let retention = i64::try_from(crate::FEED_RETENTION.as_millis()).unwrap_or(i64::MAX);
            sqlx::query(crate::feed::TRIM)
                .bind(retention)
                .execute(p)
                .await
                .map_err(store_error)?;
        }
        Ok(n)
    }

    async fn ping(&self) -> StoreResult<()> {
        on!(self, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }
}
