//! The login throttle's failure log in Redis: every node of a fleet counts the same failures,
//! so an account's limit is the fleet's, not each node's.

use crate::scripts::{FAILURES, RECORD_FAILURE};
use crate::RedisStore;
use async_trait::async_trait;
use fred::prelude::*;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
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
        Ok(times
            .iter()
            .filter_map(|t| t.parse::<f64>().ok())
            .map(|ms| from_unix_ms(ms as i64))
            .collect())
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
        let _: i64 = self
            .client()
            .del(key(k))
            .await
            .map_err(crate::unavailable)?;
        Ok(())
    }
}
