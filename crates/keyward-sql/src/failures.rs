//! The throttle's [`FailureLog`] on SQL: shared by every process on the database (a fleet on
//! PostgreSQL, the processes of one machine on a SQLite file), reservations included, so N
//! nodes allow what one allows.

use crate::store::{lock_id, on, Dialect, SqlStore};
use crate::store_error;
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::throttle::{Reservation, RESERVATION_TTL};
use keyward_core::{FailureLog, StoreResult};
use time::{Duration, OffsetDateTime};

const FAILURES: &str = "SELECT at FROM login_failures \
     WHERE key = $1 AND attempt IS NULL AND at > $2 ORDER BY at, id";
const INSERT_FAILURE: &str = "INSERT INTO login_failures (key, at) VALUES ($1, $2)";
/// This key's failures out of the window or beyond its newest `keep`.
const TRIM: &str = "DELETE FROM login_failures WHERE key = $1 AND attempt IS NULL AND (at <= $2 \
     OR id NOT IN (SELECT id FROM login_failures WHERE key = $1 AND attempt IS NULL \
     ORDER BY at DESC, id DESC LIMIT $3))";
/// Other keys' stale rows (abandoned names and addresses), a thousand at most at a time.
const SWEEP: &str = "DELETE FROM login_failures WHERE id IN \
     (SELECT id FROM login_failures WHERE at <= $1 LIMIT 1000)";
const FORGET: &str = "DELETE FROM login_failures WHERE key = $1 AND attempt IS NULL";
const COUNTED: &str = "SELECT at, attempt FROM login_failures WHERE key = $1 \
     AND ((attempt IS NULL AND at > $2) OR (attempt IS NOT NULL AND at > $3)) ORDER BY at, id";
const RESERVE: &str = "INSERT INTO login_failures (key, at, attempt) VALUES ($1, $2, $3)";
const FAIL: &str =
    "UPDATE login_failures SET attempt = NULL, at = $3 WHERE key = $1 AND attempt = $2";
const RELEASE: &str = "DELETE FROM login_failures WHERE key = $1 AND attempt = $2";

fn keep(n: usize) -> i64 {
    i64::try_from(n.max(1)).unwrap_or(i64::MAX)
}

#[async_trait]
impl FailureLog for SqlStore {
    async fn failures(&self, key: &str, since: OffsetDateTime) -> StoreResult<Vec<OffsetDateTime>> {
        let times: Vec<i64> = on!(self, |p| sqlx::query_scalar(FAILURES)
            .bind(key)
            .bind(to_unix_ms(since))
            .fetch_all(p)
            .await)
        .map_err(store_error)?;
        Ok(times.into_iter().map(from_unix_ms).collect())
    }

    async fn record(
        &self,
        key: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        n: usize,
        _window: Duration,
    ) -> StoreResult<()> {
        let since = to_unix_ms(since);
        on!(self, |p| async {
            let mut tx = p.begin().await?;
            sqlx::query(INSERT_FAILURE)
                .bind(key)
                .bind(to_unix_ms(now))
                .execute(&mut *tx)
                .await?;
            sqlx::query(TRIM)
                .bind(key)
                .bind(since)
                .bind(keep(n))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(store_error)?;
        // After the commit: the count above never waits for this.
        if let Err(e) = on!(self, |p| sqlx::query(SWEEP)
            .bind(since)
            .execute(p)
            .await
            .map(|_| ()))
        {
            tracing::debug!(error = %e, "sweeping stale sign-in failures failed");
        }
        Ok(())
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        on!(self, |p| sqlx::query(FORGET)
            .bind(key)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(store_error)
    }

    async fn reserve(
        &self,
        key: &str,
        attempt: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Reservation> {
        let now_ms = to_unix_ms(now);
        // Alone among the reservations of this key: the count and the insert see the same rows.
        on!(self, |p| async {
            let mut tx = D::begin_serial(p, lock_id(key)).await?;
            let rows: Vec<(i64, Option<String>)> = sqlx::query_as(COUNTED)
                .bind(key)
                .bind(to_unix_ms(since))
                .bind(to_unix_ms(now - RESERVATION_TTL))
                .fetch_all(&mut *tx)
                .await?;
            let pending = rows.iter().filter(|(_, a)| a.is_some()).count();
            if rows.len() >= limit {
                tx.rollback().await?;
                let failures = rows
                    .iter()
                    .filter(|(_, a)| a.is_none())
                    .map(|(at, _)| from_unix_ms(*at))
                    .collect();
                return Ok(Reservation::Full { failures, pending });
            }
            sqlx::query(RESERVE)
                .bind(key)
                .bind(now_ms)
                .bind(attempt)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Reservation::Admitted)
        }
        .await)
        .map_err(store_error)
    }

    async fn settle(
        &self,
        key: &str,
        attempt: &str,
        failed: bool,
        now: OffsetDateTime,
        since: OffsetDateTime,
        n: usize,
    ) -> StoreResult<()> {
        on!(self, |p| async {
            if !failed {
                sqlx::query(RELEASE)
                    .bind(key)
                    .bind(attempt)
                    .execute(p)
                    .await?;
                return Ok(());
            }
            let mut tx = p.begin().await?;
            let turned = sqlx::query(FAIL)
                .bind(key)
                .bind(attempt)
                .bind(to_unix_ms(now))
                .execute(&mut *tx)
                .await?;
            if turned.rows_affected() == 0 {
                // The reservation lapsed: the failure counts all the same.
                sqlx::query(INSERT_FAILURE)
                    .bind(key)
                    .bind(to_unix_ms(now))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(TRIM)
                .bind(key)
                .bind(to_unix_ms(since))
                .bind(keep(n))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(store_error)
    }
}
