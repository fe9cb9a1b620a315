//! The login throttle's failure log in Redis: every node of a fleet counts the same failures,
//! so an account's limit is the fleet's, not each node's.

use crate::scripts::{FAILURES, RECORD_FAILURE, RECORD_FORGET, RESERVE, SETTLE};
use crate::RedisStore;
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::throttle::{Reservation, RESERVATION_TTL};
use keyward_core::{FailureLog, SessionId, StoreResult};
use time::{Duration, OffsetDateTime};

fn key(k: &str) -> String {
    format!("kw:t:{k}")
}

#[async_trait]
impl FailureLog for RedisStore {
    async fn failures(&self, k: &str, since: OffsetDateTime) -> StoreResult<Vec<OffsetDateTime>> {
        let times: Vec<String> = self
            .eval(
                &FAILURES,
                key(k),
                vec![String::new(), to_unix_ms(since).to_string()],
            )
            .await?;
        Ok(self::times(&times))
    }

    async fn record(
        &self,
        k: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
        window: Duration,
    ) -> StoreResult<()> {
        let _: i64 = self
            .eval(
                &RECORD_FAILURE,
                key(k),
                vec![
                    String::new(),
                    to_unix_ms(now).to_string(),
                    to_unix_ms(since).to_string(),
                    keep.max(1).to_string(),
                    window.whole_milliseconds().max(1).to_string(),
                    SessionId::new().to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn forget(&self, k: &str) -> StoreResult<()> {
        // The failures go; reservations of attempts in progress stay.
        let _: i64 = self
            .eval(&RECORD_FORGET, key(k), vec![String::new()])
            .await?;
        Ok(())
    }

    async fn reserve(
        &self,
        k: &str,
        attempt: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Reservation> {
        let ttl = (now - since).max(RESERVATION_TTL) + RESERVATION_TTL;
        let r: Vec<String> = self
            .eval(
                &RESERVE,
                key(k),
                vec![
                    String::new(),
                    attempt.to_owned(),
                    ms(now),
                    ms(since),
                    ms(now - RESERVATION_TTL),
                    limit.to_string(),
                    ttl.whole_milliseconds().max(1).to_string(),
                ],
            )
            .await?;
        let Some((pending, failures)) = r.split_first() else {
            return Ok(Reservation::Admitted);
        };
        Ok(Reservation::Full {
            pending: pending.parse().unwrap_or(0),
            failures: times(failures),
        })
    }

    async fn settle(
        &self,
        k: &str,
        attempt: &str,
        failed: bool,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
    ) -> StoreResult<()> {
        let window = (now - since).max(RESERVATION_TTL);
        let _: i64 = self
            .eval(
                &SETTLE,
                key(k),
                vec![
                    String::new(),
                    attempt.to_owned(),
                    if failed { "1" } else { "0" }.to_owned(),
                    ms(now),
                    ms(since),
                    keep.max(1).to_string(),
                    window.whole_milliseconds().max(1).to_string(),
                    SessionId::new().to_string(),
                ],
            )
            .await?;
        Ok(())
    }
}

fn ms(t: OffsetDateTime) -> String {
    to_unix_ms(t).to_string()
}

/// Failure times as the scripts return them (scores).
fn times(scores: &[String]) -> Vec<OffsetDateTime> {
    scores
        .iter()
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| from_unix_ms(ms as i64))
        .collect()
}
