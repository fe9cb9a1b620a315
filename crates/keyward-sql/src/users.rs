//! [`UserStore`] on SQL.

use crate::rows::{user_cols, UserRow};
use crate::store::{on, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::{SessionStore, StoreResult, UserId, UserRecord, UserStore};

const INSERT: &str =
    "INSERT INTO users (id, username, username_key, password_hash, created_at, locked) \
     VALUES ($1, $2, $3, $4, $5, $6)";
const BY_NAME: &str = concat!(
    "SELECT ",
    user_cols!(),
    " FROM users WHERE username_key = $1"
);
const BY_ID: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
const SET_HASH: &str = "UPDATE users SET password_hash = $1 WHERE id = $2";
const SET_LOCKED: &str = "UPDATE users SET locked = $1 WHERE id = $2";
const DELETE: &str = "DELETE FROM users WHERE id = $1";
const LIST: &str = concat!("SELECT ", user_cols!(), " FROM users ORDER BY username_key");

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        on!(self, |p| sqlx::query(INSERT)
            .bind(user.id.to_string())
            .bind(&user.username)
            .bind(user.username.to_ascii_lowercase())
            .bind(&user.password_hash)
            .bind(to_unix_ms(user.created_at))
            .bind(user.locked)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = on!(self, |p| sqlx::query_as(BY_NAME)
            .bind(username.to_ascii_lowercase())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(UserRecord::try_from).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = on!(self, |p| sqlx::query_as(BY_ID)
            .bind(id.to_string())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(UserRecord::try_from).transpose()
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> StoreResult<()> {
        on!(self, |p| sqlx::query(SET_HASH)
            .bind(phc)
            .bind(id.to_string())
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn set_locked(&self, id: UserId, locked: bool) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(SET_LOCKED)
            .bind(locked)
            .bind(id.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(DELETE)
            .bind(id.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows: Vec<UserRow> =
            on!(self, |p| sqlx::query_as(LIST).fetch_all(p).await).map_err(store_error)?;
        rows.into_iter().map(UserRecord::try_from).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        SessionStore::ping(self).await
    }
}
