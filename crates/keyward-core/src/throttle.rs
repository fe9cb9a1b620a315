//! Login throttling: a sliding window of failures per account and per client address.
//!
//! Checked before the password is verified, so once a key is over its limit even the right
//! password is refused until the window has passed.

use crate::clock::SharedClock;
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use time::{Duration, OffsetDateTime};

/// Limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed per account within the window.
    pub per_account: u32,
    /// Failures allowed per client address within the window.
    pub per_address: u32,
    /// The window.
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_account: 10,
            per_address: 100,
            window: Duration::minutes(15),
        }
    }
}

/// Where failed logins are counted. The in-memory log counts what one process sees; a shared
/// log (Redis) makes every node of a fleet count the same failures.
#[async_trait]
pub trait FailureLog: Send + Sync + 'static {
    /// The times of `key`'s failures after `since`, oldest first.
    async fn failures(&self, key: &str, since: OffsetDateTime) -> StoreResult<Vec<OffsetDateTime>>;
    /// Record a failure of `key` at `now`, dropping those not after `since` and all but the
    /// newest `keep`; the whole entry may be forgotten `window` after `now`.
    async fn record(
        &self,
        key: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
        window: Duration,
    ) -> StoreResult<()>;
    /// Forget `key`'s failures.
    async fn forget(&self, key: &str) -> StoreResult<()>;
}

/// Shared handle to a failure log.
pub type DynFailureLog = Arc<dyn FailureLog>;

/// Above this many tracked keys, stale ones are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

/// Failures counted in this process's memory.
#[derive(Default)]
pub struct MemoryFailureLog {
    map: Mutex<HashMap<String, VecDeque<OffsetDateTime>>>,
}

#[async_trait]
impl FailureLog for MemoryFailureLog {
    async fn failures(&self, key: &str, since: OffsetDateTime) -> StoreResult<Vec<OffsetDateTime>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(map
            .get(key)
            .map(|q| q.iter().copied().filter(|t| *t > since).collect())
            .unwrap_or_default())
    }

    async fn record(
        &self,
        key: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
        _window: Duration,
    ) -> StoreResult<()> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, q| q.back().is_some_and(|t| *t > since));
        }
        let q = map.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| *t <= since) || q.len() >= keep.max(1) {
            q.pop_front();
        }
        q.push_back(now);
        Ok(())
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Ok(())
    }
}

/// Why an attempt was not admitted.
#[derive(Debug)]
pub enum Refused {
    /// Over a limit: retry after this long.
    Throttled(Duration),
    /// The failure log could not be read.
    Store(StoreError),
}

/// The throttle.
pub struct LoginThrottle {
    clock: SharedClock,
    config: ThrottleConfig,
    log: DynFailureLog,
    /// Attempts that passed the check and are still being verified, in this process: they
    /// count against the limit too, so a burst of concurrent guesses cannot all slip in before
    /// the first failure is recorded.
    in_flight: Mutex<HashMap<String, usize>>,
}

/// An attempt admitted by [`LoginThrottle::begin`]. Say how it ended with
/// [`Attempt::failed`] or [`Attempt::succeeded`]; dropping it otherwise (an error, a
/// cancelled request) just releases its place.
#[must_use]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    keys: Vec<String>,
}

impl Attempt<'_> {
    /// The credentials were wrong: count a failure against the account and the address.
    pub async fn failed(self) {
        let t = self.throttle;
        let now = t.clock.now();
        let since = now - t.config.window;
        for key in &self.keys {
            let keep = t.limit(key);
            if let Err(e) = t.log.record(key, now, since, keep, t.config.window).await {
                tracing::warn!(error = %e, "a failed login could not be counted");
            }
        }
    }

    /// The credentials were right: forget the account's failures (the address's stay).
    pub async fn succeeded(self) {
        if let Some(account) = self.keys.first() {
            if let Err(e) = self.throttle.log.forget(account).await {
                tracing::warn!(error = %e, "an account's failed logins could not be reset");
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut flying = self
            .throttle
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some(n) = flying.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    flying.remove(key);
                }
            }
        }
    }
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The log key of an account: its lower-cased name, hashed (the log never holds usernames).
fn account_key(account: &str) -> String {
    let digest = Sha256::digest(account.to_lowercase().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("a:{hex}")
}

impl LoginThrottle {
    /// A throttle with these limits, counting in `log`.
    pub fn new(clock: SharedClock, config: ThrottleConfig, log: DynFailureLog) -> Self {
        Self {
            clock,
            config,
            log,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, key: &str) -> usize {
        if key.starts_with("a:") {
            self.config.per_account as usize
        } else {
            self.config.per_address as usize
        }
    }

    fn keys(account: &str, address: Option<IpAddr>) -> Vec<String> {
        std::iter::once(account_key(account))
            .chain(address.map(|a| format!("i:{a}")))
            .collect()
    }

    /// How long `key` must wait (zero when under its limit), given its `recent` failures and
    /// counting `extra` attempts in progress as if they had failed now.
    fn wait(
        &self,
        key: &str,
        recent: &[OffsetDateTime],
        extra: usize,
        now: OffsetDateTime,
    ) -> Duration {
        let limit = self.limit(key);
        if recent.len() >= limit {
            // Free again when enough of the recent failures have left the window.
            recent
                .get(recent.len() - limit)
                .map_or(Duration::ZERO, |t| *t + self.config.window - now)
        } else if recent.len() + extra >= limit {
            // Only attempts in progress fill the limit: free as soon as one of them ends.
            Duration::seconds(1)
        } else {
            Duration::ZERO
        }
    }

    /// Admit an attempt: refused when the account or the address is over its limit, counting
    /// this process's attempts still in progress.
    pub async fn begin(
        &self,
        account: &str,
        address: Option<IpAddr>,
    ) -> Result<Attempt<'_>, Refused> {
        let keys = Self::keys(account, address);
        let now = self.clock.now();
        let since = now - self.config.window;
        let mut recent = Vec::with_capacity(keys.len());
        for key in &keys {
            recent.push(
                self.log
                    .failures(key, since)
                    .await
                    .map_err(Refused::Store)?,
            );
        }
        let mut flying = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wait = keys
            .iter()
            .zip(&recent)
            .map(|(key, r)| self.wait(key, r, flying.get(key).copied().unwrap_or(0), now))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait > Duration::ZERO {
            return Err(Refused::Throttled(wait));
        }
        for key in &keys {
            *flying.entry(key.clone()).or_default() += 1;
        }
        Ok(Attempt {
            throttle: self,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn throttle(clock: Arc<ManualClock>, per_account: u32, per_address: u32) -> LoginThrottle {
        LoginThrottle::new(
            clock,
            ThrottleConfig {
                per_account,
                per_address,
                window: Duration::minutes(15),
            },
            Arc::new(MemoryFailureLog::default()),
        )
    }

    fn wait_of(r: Result<Attempt<'_>, Refused>) -> Duration {
        match r {
            Err(Refused::Throttled(d)) => d,
            Err(Refused::Store(e)) => panic!("{e}"),
            Ok(_) => Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn account_limit_and_window() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock.clone(), 3, 100);
        for _ in 0..3 {
            t.begin("Alice", None).await.unwrap().failed().await;
        }
        assert_eq!(wait_of(t.begin("alice", None).await), Duration::minutes(15));
        assert!(t.begin("bob", None).await.is_ok());
        clock.advance(Duration::minutes(10));
        assert_eq!(wait_of(t.begin("alice", None).await), Duration::minutes(5));
        clock.advance(Duration::minutes(5));
        assert!(t.begin("alice", None).await.is_ok());
    }

    #[tokio::test]
    async fn attempts_in_progress_count_against_the_limit() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock, 2, 100);
        let a = t.begin("eve", None).await.unwrap();
        let b = t.begin("eve", None).await.unwrap();
        assert!(
            t.begin("eve", None).await.is_err(),
            "a third concurrent guess is refused"
        );
        drop(a);
        let c = t.begin("eve", None).await.unwrap();
        b.failed().await;
        c.failed().await;
        assert!(
            t.begin("eve", None).await.is_err(),
            "two failures: over the limit"
        );
        t.begin("bob", None).await.unwrap().succeeded().await;
        assert!(t.begin("bob", None).await.is_ok());
    }

    #[tokio::test]
    async fn address_limit_spans_accounts() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock, 100, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        t.begin("a", Some(ip)).await.unwrap().failed().await;
        t.begin("b", Some(ip)).await.unwrap().failed().await;
        assert!(t.begin("c", Some(ip)).await.is_err());
        assert!(t
            .begin("c", Some("192.0.2.2".parse().unwrap()))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_log_never_holds_a_username() {
        let log = Arc::new(MemoryFailureLog::default());
        let t = LoginThrottle::new(
            Arc::new(ManualClock::starting_now()),
            ThrottleConfig::default(),
            log.clone(),
        );
        t.begin("Mallory", None).await.unwrap().failed().await;
        let keys: Vec<String> = log.map.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec![account_key("mallory")]);
        assert!(!keys[0].contains("allory"));
    }
}
