//! [`MfaStore`] on SQL: the sealed TOTP secret on the user's row, the last step accepted
//! (compare-and-set), and the hashed recovery codes.

use crate::store::{on, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::{MfaRecord, MfaStore, StoreResult, TokenHash, UserId};
use time::OffsetDateTime;

const MFA: &str = "SELECT totp_secret, totp_pending, totp_last_step, \
     (SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL) \
     FROM users WHERE id = $1";
const SET_PENDING: &str = "UPDATE users SET totp_pending = $1 WHERE id = $2";
const ENABLE: &str = "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, \
     totp_last_step = $1 WHERE id = $2 AND totp_pending = $3";
const DISABLE: &str = "UPDATE users SET totp_secret = NULL, totp_pending = NULL, \
     totp_last_step = -1 WHERE id = $1 AND (totp_secret IS NOT NULL OR totp_pending IS NOT NULL)";
const DROP_CODES: &str = "DELETE FROM recovery_codes WHERE user_id = $1";
const INSERT_CODE: &str =
    "INSERT INTO recovery_codes (user_id, code_hash, used_at) VALUES ($1, $2, NULL)";
/// The compare-and-set: a step is accepted only past the last one.
const USE_STEP: &str = "UPDATE users SET totp_last_step = $1 \
     WHERE id = $2 AND totp_secret IS NOT NULL AND totp_last_step < $1";
const USE_CODE: &str = "UPDATE recovery_codes SET used_at = $1 \
     WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL";

type MfaRow = (Option<Vec<u8>>, Option<Vec<u8>>, i64, i64);

fn step(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

#[async_trait]
impl MfaStore for SqlStore {
    async fn mfa(&self, user: UserId) -> StoreResult<MfaRecord> {
        let row: Option<MfaRow> = on!(self, |p| sqlx::query_as(MFA)
            .bind(user.to_string())
            .fetch_optional(p)
            .await)
        .map_err(store_error)?;
        Ok(match row {
            Some((totp, pending, last, left)) => MfaRecord {
                totp,
                pending,
                last_step: u64::try_from(last).ok(),
                recovery_codes_left: u32::try_from(left).unwrap_or(0),
            },
            None => MfaRecord::default(),
        })
    }

    async fn set_pending_totp(&self, user: UserId, sealed: &[u8]) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(SET_PENDING)
            .bind(sealed)
            .bind(user.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn enable_totp(
        &self,
        user: UserId,
        pending: &[u8],
        first_step: u64,
        codes: &[TokenHash],
    ) -> StoreResult<bool> {
        let id = user.to_string();
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            let enabled = sqlx::query(ENABLE)
                .bind(step(first_step))
                .bind(&id)
                .bind(pending)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if !enabled {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(DROP_CODES).bind(&id).execute(&mut *tx).await?;
            for code in codes {
                sqlx::query(INSERT_CODE)
                    .bind(&id)
                    .bind(code.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(store_error)
    }

    async fn disable_totp(&self, user: UserId) -> StoreResult<bool> {
        let id = user.to_string();
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            let was = sqlx::query(DISABLE)
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            sqlx::query(DROP_CODES).bind(&id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(was)
        }
        .await)
        .map_err(store_error)
    }

    async fn use_totp_step(&self, user: UserId, s: u64) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(USE_STEP)
            .bind(step(s))
            .bind(user.to_string())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        code: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        on!(self, |p| sqlx::query(USE_CODE)
            .bind(to_unix_ms(now))
            .bind(user.to_string())
            .bind(code.as_bytes().as_slice())
            .execute(p)
            .await
            .map(|d| d.rows_affected() > 0))
        .map_err(store_error)
    }
}
