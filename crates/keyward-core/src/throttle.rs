//! Login throttling: a sliding window of failures per account and per client address.
//!
//! Checked before the password is verified, so once a key is over its limit even the right
//! password is refused until the window has passed.

use crate::clock::SharedClock;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

/// Above this many tracked keys, stale ones are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

/// The throttle. In-process: each node counts the failures it sees.
pub struct LoginThrottle {
    clock: SharedClock,
    config: ThrottleConfig,
    failures: Mutex<HashMap<Key, VecDeque<OffsetDateTime>>>,
    /// Attempts that passed the check and are still being verified: they count against the
    /// limit too, so a burst of concurrent guesses cannot all slip in before the first
    /// failure is recorded.
    in_flight: Mutex<HashMap<Key, usize>>,
}

/// An attempt admitted by [`LoginThrottle::begin`]. Say how it ended with
/// [`Attempt::failed`] or [`Attempt::succeeded`]; dropping it otherwise (an error, a
/// cancelled request) just releases its place.
#[must_use]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    account: String,
    address: Option<IpAddr>,
}

impl Attempt<'_> {
    /// The credentials were wrong: count a failure.
    pub fn failed(self) {
        self.throttle.record_failure(&self.account, self.address);
    }

    /// The credentials were right: forget the account's failures.
    pub fn succeeded(self) {
        self.throttle.reset_account(&self.account);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut flying = self
            .throttle
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in LoginThrottle::keys(&self.account, self.address) {
            if let Some(n) = flying.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    flying.remove(&key);
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

impl LoginThrottle {
    /// A throttle with these limits.
    pub fn new(clock: SharedClock, config: ThrottleConfig) -> Self {
        Self {
            clock,
            config,
            failures: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, key: &Key) -> usize {
        match key {
            Key::Account(_) => self.config.per_account as usize,
            Key::Address(_) => self.config.per_address as usize,
        }
    }

    fn keys(account: &str, address: Option<IpAddr>) -> impl Iterator<Item = Key> {
        std::iter::once(Key::Account(account.to_ascii_lowercase())).chain(address.map(Key::Address))
    }

    /// How long `key` must wait (zero when under its limit), counting `extra` attempts in
    /// progress as if they had failed now.
    fn wait_for(
        &self,
        failures: &HashMap<Key, VecDeque<OffsetDateTime>>,
        key: &Key,
        extra: usize,
        now: OffsetDateTime,
    ) -> Duration {
        let cutoff = now - self.config.window;
        let limit = self.limit(key);
        let recent: Vec<OffsetDateTime> = failures
            .get(key)
            .map(|q| q.iter().copied().filter(|t| *t > cutoff).collect())
            .unwrap_or_default();
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

    /// `Err(retry_after)` when the account or the address is over its limit.
    pub fn check(&self, account: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let now = self.clock.now();
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = Self::keys(account, address)
            .map(|key| self.wait_for(&failures, &key, 0, now))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait > Duration::ZERO {
            Err(wait)
        } else {
            Ok(())
        }
    }

    /// Admit an attempt, atomically with the check: `Err(retry_after)` when the account or the
    /// address is over its limit counting the attempts still in progress.
    pub fn begin(&self, account: &str, address: Option<IpAddr>) -> Result<Attempt<'_>, Duration> {
        // Lock order: in-flight, then failures (record_failure takes only the latter).
        let mut flying = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        {
            let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let wait = Self::keys(account, address)
                .map(|key| {
                    let extra = flying.get(&key).copied().unwrap_or(0);
                    self.wait_for(&failures, &key, extra, now)
                })
                .max()
                .unwrap_or(Duration::ZERO);
            if wait > Duration::ZERO {
                return Err(wait);
            }
        }
        for key in Self::keys(account, address) {
            *flying.entry(key).or_default() += 1;
        }
        Ok(Attempt {
            throttle: self,
            account: account.to_owned(),
            address,
        })
    }

    /// Count a failed attempt against the account and the address.
    pub fn record_failure(&self, account: &str, address: Option<IpAddr>) {
        let now = self.clock.now();
        let cutoff = now - self.config.window;
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, q| q.back().is_some_and(|t| *t > cutoff));
        }
        for key in Self::keys(account, address) {
            let limit = self.limit(&key).max(1);
            let q = map.entry(key).or_default();
            while q.front().is_some_and(|t| *t <= cutoff) || q.len() >= limit {
                q.pop_front();
            }
            q.push_back(now);
        }
    }

    /// Forget an account's failures after a successful login (the address's count stays).
    pub fn reset_account(&self, account: &str) {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&Key::Account(account.to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    #[test]
    fn account_limit_and_window() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = LoginThrottle::new(
            clock.clone(),
            ThrottleConfig {
                per_account: 3,
                per_address: 100,
                window: Duration::minutes(15),
            },
        );
        for _ in 0..3 {
            assert!(t.check("Alice", None).is_ok());
            t.record_failure("Alice", None);
        }
        let wait = t.check("alice", None).unwrap_err();
        assert_eq!(wait, Duration::minutes(15));
        assert!(t.check("bob", None).is_ok());
        clock.advance(Duration::minutes(10));
        assert_eq!(t.check("alice", None).unwrap_err(), Duration::minutes(5));
        clock.advance(Duration::minutes(5));
        assert!(t.check("alice", None).is_ok());
    }

    #[test]
    fn attempts_in_progress_count_against_the_limit() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = LoginThrottle::new(
            clock,
            ThrottleConfig {
                per_account: 2,
                per_address: 100,
                window: Duration::minutes(15),
            },
        );
        let a = t.begin("eve", None).unwrap();
        let b = t.begin("eve", None).unwrap();
        assert!(
            t.begin("eve", None).is_err(),
            "a third concurrent guess is refused"
        );
        drop(a);
        let c = t.begin("eve", None).unwrap();
        b.failed();
        c.failed();
        assert!(
            t.begin("eve", None).is_err(),
            "two failures: over the limit"
        );
        let ok = t.begin("bob", None).unwrap();
        ok.succeeded();
        assert!(t.begin("bob", None).is_ok());
    }

    #[test]
    fn address_limit_spans_accounts() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = LoginThrottle::new(
            clock,
            ThrottleConfig {
                per_account: 100,
                per_address: 2,
                window: Duration::minutes(15),
            },
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        t.record_failure("a", Some(ip));
        t.record_failure("b", Some(ip));
        assert!(t.check("c", Some(ip)).is_err());
        assert!(t.check("c", Some("192.0.2.2".parse().unwrap())).is_ok());
        t.reset_account("a");
        assert!(t.check("a", Some(ip)).is_err());
    }
}
