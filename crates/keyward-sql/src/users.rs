//! [`UserStore`] on SQL.

use crate::rows::{user_cols, UserRow};
use crate::store::{on, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::{SessionStore, StoreResult, UserId, UserRecord, UserStore};

const INSERT: &str = "INSERT INTO users \
     (id, username, username_key, password_hash, created_at, locked, email, email_key, email_verified) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const BY_NAME: &str = concat!(
    "SELECT ",
    user_cols!(),
    " FROM users WHERE username_key = $1"
);
const BY_ID: &str = concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1");
const BY_EMAIL: &str = concat!(
    "SELECT ",
    user_cols!(),
    " FROM users WHERE email_key = $1 AND email_verified = $2"
);
const SET_EMAIL: &str =
    "UPDATE users SET email = $1, email_key = $2, email_verified = $3 WHERE id = $4";
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
            .bind(user.email.as_deref())
            .bind(user.email.as_deref().map(str::to_lowercase))
            .bind(user.email_verified)
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

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let row: Option<UserRow> = on!(self, |p| sqlx::query_as(BY_EMAIL)
            .bind(email.to_lowercase())
            .bind(true)
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        row.map(UserRecord::try_from).transpose()
    }

    async fn set_email(
        &self,
        id: UserId,
        email: Option<&str>,
        verified: bool,
    ) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(SET_EMAIL)
            .bind(email)
            .bind(email.map(str::to_lowercase))
            .bind(verified)
            .bind(id.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
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
