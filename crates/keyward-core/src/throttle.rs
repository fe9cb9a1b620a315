//! Throttling: sliding windows of failures per account, per client address and per known
//! device (sign-in), and per address for registrations and for failed token requests.
//!
//! Sign-in is checked before the password is verified, so once a key is over its limit even the
//! right password is refused until the window has passed. A client that presents a valid device
//! cookie of the account (OWASP "device cookies") is judged by that device's failures alone, so
//! guesses sent from elsewhere cannot lock the owner's known devices out.

use crate::clock::SharedClock;
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::device::DeviceId;
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
    /// Registrations allowed per client address within [`REGISTRATION_WINDOW`].
    pub registrations_per_address: u32,
    /// Failed token requests allowed per client address within [`TOKEN_FAILURE_WINDOW`].
    pub token_failures_per_address: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_account: 10,
            per_address: 100,
            window: Duration::minutes(15),
            registrations_per_address: 20,
            token_failures_per_address: 100,
        }
    }
}

/// Where failures are counted. The in-memory log counts what one process sees; a shared log
/// (the SQL database, Redis) makes every node of a fleet count the same failures and see the
/// same attempts in progress, so N nodes allow no more than one.
///
/// Besides failures, a log keeps *reservations*: an attempt admitted and not yet decided
/// counts against the limit, so a burst of concurrent guesses, spread over any number of
/// nodes, cannot all slip in before the first failure is recorded. A reservation that is never
/// settled (its process died) stops counting after [`RESERVATION_TTL`].
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
    /// Forget `key`'s failures (its reservations stay).
    async fn forget(&self, key: &str) -> StoreResult<()>;
    /// Atomically: count `key`'s failures after `since` and its reservations made after
    /// `now - RESERVATION_TTL`; while they are fewer than `limit`, add the reservation
    /// `attempt` (at `now`) and admit it, else refuse it and say what filled the limit.
    async fn reserve(
        &self,
        key: &str,
        attempt: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Reservation>;
    /// End the reservation `attempt`: when `failed`, it becomes a failure at `now` (keeping
    /// only the failures after `since`, the newest `keep` of them); otherwise it is dropped.
    async fn settle(
        &self,
        key: &str,
        attempt: &str,
        failed: bool,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
    ) -> StoreResult<()>;
}

/// How long a reservation counts if it is never settled.
pub const RESERVATION_TTL: Duration = Duration::seconds(60);

/// What [`FailureLog::reserve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The attempt may go ahead; its reservation counts until settled.
    Admitted,
    /// The limit is full: these failures (oldest first) and this many reservations fill it.
    Full {
        /// The failures inside the window.
        failures: Vec<OffsetDateTime>,
        /// Attempts in progress.
        pending: usize,
    },
}

/// Shared handle to a failure log.
pub type DynFailureLog = Arc<dyn FailureLog>;

/// Above this many tracked keys, stale ones are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Default)]
struct Entry {
    failures: VecDeque<OffsetDateTime>,
    pending: HashMap<String, OffsetDateTime>,
}

impl Entry {
    fn fail(&mut self, now: OffsetDateTime, since: OffsetDateTime, keep: usize) {
        while self.failures.front().is_some_and(|t| *t <= since)
            || self.failures.len() >= keep.max(1)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
    }

    fn stale(&self, since: OffsetDateTime) -> bool {
        self.pending.is_empty() && self.failures.back().is_none_or(|t| *t <= since)
    }
}

/// Failures counted in this process's memory.
#[derive(Default)]
pub struct MemoryFailureLog {
    map: Mutex<HashMap<String, Entry>>,
}

impl MemoryFailureLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl FailureLog for MemoryFailureLog {
    async fn failures(&self, key: &str, since: OffsetDateTime) -> StoreResult<Vec<OffsetDateTime>> {
        Ok(self
            .lock()
            .get(key)
            .map(|e| e.failures.iter().copied().filter(|t| *t > since).collect())
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
        let mut map = self.lock();
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, e| !e.stale(since));
        }
        map.entry(key.to_owned())
            .or_default()
            .fail(now, since, keep);
        Ok(())
    }

    async fn forget(&self, key: &str) -> StoreResult<()> {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(key) {
            e.failures.clear();
            if e.pending.is_empty() {
                map.remove(key);
            }
        }
        Ok(())
    }

    async fn reserve(
        &self,
        key: &str,
        attempt: &str,
        now: OffsetDateTime,
        since: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Reservation> {
        let mut map = self.lock();
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, e| !e.stale(since));
        }
        let e = map.entry(key.to_owned()).or_default();
        e.pending.retain(|_, at| *at > now - RESERVATION_TTL);
        let failures: Vec<OffsetDateTime> =
            e.failures.iter().copied().filter(|t| *t > since).collect();
        if failures.len() + e.pending.len() >= limit {
            return Ok(Reservation::Full {
                failures,
                pending: e.pending.len(),
            });
        }
        e.pending.insert(attempt.to_owned(), now);
        Ok(Reservation::Admitted)
    }

    async fn settle(
        &self,
        key: &str,
        attempt: &str,
        failed: bool,
        now: OffsetDateTime,
        since: OffsetDateTime,
        keep: usize,
    ) -> StoreResult<()> {
        let mut map = self.lock();
        let e = map.entry(key.to_owned()).or_default();
        e.pending.remove(attempt);
        if failed {
            e.fail(now, since, keep);
        }
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

/// One counter: a key of the failure log, its limit and its window.
#[derive(Debug, Clone)]
struct Bucket {
    key: String,
    limit: usize,
    window: Duration,
}

/// Registrations counted per address within this window.
pub const REGISTRATION_WINDOW: Duration = Duration::hours(1);
/// Failed token requests counted per address within this window.
pub const TOKEN_FAILURE_WINDOW: Duration = Duration::minutes(15);
/// Password-reset requests allowed for one account (name or address) within an hour.
pub const RESETS_PER_ACCOUNT: usize = 5;

/// The address part of a throttle key: an IPv4 address whole, an IPv6 address by its /64 (the
/// network one subscriber gets, where every host address is theirs to pick), an IPv4-mapped
/// IPv6 address as the IPv4 address it is.
pub fn address_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

/// The throttles of one service: sign-in, registration and token failures.
pub struct Throttle {
    clock: SharedClock,
    config: ThrottleConfig,
    log: DynFailureLog,
    /// Addresses this process found over their token-failure limit, and until when: checked in
    /// memory before a token request, so valid traffic costs no store read.
    blocked: Mutex<HashMap<String, OffsetDateTime>>,
}

/// A sign-in attempt admitted by [`Throttle::begin`]: a reservation in each of its buckets.
/// Say how it ended with [`Attempt::failed`] or [`Attempt::succeeded`]; dropping it otherwise
/// (an error, a cancelled request) releases its reservations.
#[must_use]
pub struct Attempt {
    clock: SharedClock,
    log: DynFailureLog,
    id: String,
    buckets: Vec<Bucket>,
    settled: bool,
}

impl Attempt {
    async fn settle(mut self, failed: bool) {
        self.settled = true;
        let now = self.clock.now();
        for b in &self.buckets {
            let since = now - b.window;
            if let Err(e) = self
                .log
                .settle(&b.key, &self.id, failed, now, since, b.limit)
                .await
            {
                tracing::warn!(error = %e, "a sign-in attempt could not be settled");
            }
        }
    }

    /// The credentials were wrong: count a failure in every bucket of the attempt (the
    /// account and the address, or the known device alone).
    pub async fn failed(self) {
        self.settle(true).await;
    }

    /// The credentials were right: forget the failures of the account (or of the known
    /// device); the address's stay.
    pub async fn succeeded(self) {
        let (log, first) = (
            self.log.clone(),
            self.buckets.first().map(|b| b.key.clone()),
        );
        self.settle(false).await;
        if let Some(first) = first {
            if let Err(e) = log.forget(&first).await {
                tracing::warn!(error = %e, "failed sign-ins could not be reset");
            }
        }
    }

    /// The first of two factors was right: end the attempt without counting a failure, and
    /// keep the failures counted so far (wrong second-factor codes among them).
    pub async fn released(self) {
        self.settle(false).await;
    }

    /// Whether the attempt is judged as a known device's.
    pub fn by_device(&self) -> bool {
        self.buckets
            .first()
            .is_some_and(|b| b.key.starts_with("d:"))
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Released in the background (a drop cannot wait); until then, or if the process
        // dies first, the reservation counts for at most RESERVATION_TTL.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (log, id, buckets, now) = (
            self.log.clone(),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.buckets),
            self.clock.now(),
        );
        runtime.spawn(async move {
            release(&*log, &id, &buckets, now).await;
        });
    }
}

async fn release(log: &dyn FailureLog, id: &str, buckets: &[Bucket], now: OffsetDateTime) {
    for b in buckets {
        if let Err(e) = log
            .settle(&b.key, id, false, now, now - b.window, b.limit)
            .await
        {
            tracing::debug!(error = %e, "a reservation could not be released; it lapses by itself");
        }
    }
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The log key of an account: its lower-cased name, hashed (the log never holds usernames).
fn account_key(account: &str) -> String {
    format!(
        "a:{}",
        hex(&Sha256::digest(account.to_lowercase().as_bytes()))
    )
}

impl Throttle {
    /// Throttles with these limits, counting in `log`.
    pub fn new(clock: SharedClock, config: ThrottleConfig, log: DynFailureLog) -> Self {
        Self {
            clock,
            config,
            log,
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn account(&self, account: &str) -> Bucket {
        Bucket {
            key: account_key(account),
            limit: self.config.per_account as usize,
            window: self.config.window,
        }
    }

    fn address(&self, address: IpAddr) -> Bucket {
        Bucket {
            key: format!("i:{}", address_bucket(address)),
            limit: self.config.per_address as usize,
            window: self.config.window,
        }
    }

    /// A known device is held to the account's limit, counted for it alone.
    fn device(&self, device: &DeviceId) -> Bucket {
        Bucket {
            key: format!("d:{}", hex(&device.0)),
            limit: self.config.per_account as usize,
            window: self.config.window,
        }
    }

    /// How long `b` must wait (zero when under its limit), given its `recent` failures and
    /// `pending` attempts in progress.
    fn wait(
        b: &Bucket,
        recent: &[OffsetDateTime],
        pending: usize,
        now: OffsetDateTime,
    ) -> Duration {
        if recent.len() >= b.limit {
            // Free again when enough of the recent failures have left the window.
            recent
                .get(recent.len() - b.limit)
                .map_or(Duration::ZERO, |t| *t + b.window - now)
        } else if recent.len() + pending >= b.limit {
            // Attempts in progress fill the limit: free as soon as one of them ends.
            Duration::seconds(1)
        } else {
            Duration::ZERO
        }
    }

    async fn recent(
        &self,
        b: &Bucket,
        now: OffsetDateTime,
    ) -> Result<Vec<OffsetDateTime>, Refused> {
        self.log
            .failures(&b.key, now - b.window)
            .await
            .map_err(Refused::Store)
    }

    /// Reserve a place in every bucket (in order), or release what was reserved and say how
    /// long to wait.
    async fn admit(&self, buckets: Vec<Bucket>, now: OffsetDateTime) -> Result<Attempt, Refused> {
        let id = crate::ids::SessionId::new().to_string();
        for (i, b) in buckets.iter().enumerate() {
            let reserved = self
                .log
                .reserve(&b.key, &id, now, now - b.window, b.limit)
                .await;
            let wait = match reserved {
                Ok(Reservation::Admitted) => continue,
                Ok(Reservation::Full { failures, pending }) => {
                    Self::wait(b, &failures, pending, now).max(Duration::seconds(1))
                }
                Err(e) => {
                    release(&*self.log, &id, buckets.get(..i).unwrap_or_default(), now).await;
                    return Err(Refused::Store(e));
                }
            };
            release(&*self.log, &id, buckets.get(..i).unwrap_or_default(), now).await;
            return Err(Refused::Throttled(wait));
        }
        Ok(Attempt {
            clock: self.clock.clone(),
            log: self.log.clone(),
            id,
            buckets,
            settled: false,
        })
    }

    /// Admit a sign-in attempt. With a valid device cookie of the account (`device`), the
    /// attempt is judged by that device's failures alone, unless the device is itself over the
    /// limit; otherwise by the account's and the address's failures. Attempts in progress on
    /// any node sharing the log count too.
    pub async fn begin(
        &self,
        account: &str,
        address: Option<IpAddr>,
        device: Option<&DeviceId>,
    ) -> Result<Attempt, Refused> {
        let now = self.clock.now();
        if let Some(device) = device {
            match self.admit(vec![self.device(device)], now).await {
                Ok(a) => return Ok(a),
                Err(Refused::Store(e)) => return Err(Refused::Store(e)),
                // A known device over its own limit is judged as an unknown one.
                Err(Refused::Throttled(_)) => {}
            }
        }
        let buckets: Vec<Bucket> = std::iter::once(self.account(account))
            .chain(address.map(|a| self.address(a)))
            .collect();
        self.admit(buckets, now).await
    }

    /// Count a registration attempt from `address`, refusing it when the address has made
    /// as many within the hour.
    pub async fn register(&self, address: Option<IpAddr>) -> Result<(), Refused> {
        let Some(address) = address else {
            return Ok(());
        };
        self.count(vec![Bucket {
            key: format!("r:{}", address_bucket(address)),
            limit: self.config.registrations_per_address as usize,
            window: REGISTRATION_WINDOW,
        }])
        .await
    }

    /// Count a password-reset request for `asked` (the name or address asked for) from
    /// `address`: at most [`RESETS_PER_ACCOUNT`] an hour for one account, and as many an hour
    /// from one address as registrations.
    pub async fn reset_request(&self, asked: &str, address: Option<IpAddr>) -> Result<(), Refused> {
        let buckets = std::iter::once(Bucket {
            key: format!("p:{}", hex(&Sha256::digest(asked.as_bytes()))),
            limit: RESETS_PER_ACCOUNT,
            window: REGISTRATION_WINDOW,
        })
        .chain(address.map(|a| Bucket {
            key: format!("q:{}", address_bucket(a)),
            limit: self.config.registrations_per_address as usize,
            window: REGISTRATION_WINDOW,
        }))
        .collect();
        self.count(buckets).await
    }

    /// Refuse when any bucket is full, else count one event in each: a rate, not failures.
    async fn count(&self, buckets: Vec<Bucket>) -> Result<(), Refused> {
        let now = self.clock.now();
        for b in &buckets {
            let recent = self.recent(b, now).await?;
            let wait = Self::wait(b, &recent, 0, now);
            if wait > Duration::ZERO {
                return Err(Refused::Throttled(wait));
            }
        }
        for b in &buckets {
            self.log
                .record(&b.key, now, now - b.window, b.limit, b.window)
                .await
                .map_err(Refused::Store)?;
        }
        Ok(())
    }

    fn token_bucket(&self, address: IpAddr) -> Bucket {
        Bucket {
            key: format!("t:{}", address_bucket(address)),
            limit: self.config.token_failures_per_address as usize,
            window: TOKEN_FAILURE_WINDOW,
        }
    }

    /// Whether a token request from `address` may go ahead: refused while the address is
    /// over its limit of failed token requests. Answered from memory.
    pub fn token_request(&self, address: Option<IpAddr>) -> Result<(), Refused> {
        let Some(address) = address else {
            return Ok(());
        };
        let key = self.token_bucket(address).key;
        let now = self.clock.now();
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked.get(&key) {
            Some(until) if *until > now => Err(Refused::Throttled(*until - now)),
            _ => Ok(()),
        }
    }

    /// A token request from `address` failed (an invalid refresh token, the revocation of an
    /// unknown token, a wrong introspection credential): count it in the shared log, and once
    /// the address has reached its limit refuse its token requests until the window frees.
    pub async fn token_failed(&self, address: Option<IpAddr>) {
        let Some(address) = address else {
            return;
        };
        let b = self.token_bucket(address);
        let now = self.clock.now();
        let since = now - b.window;
        let counted = match self.log.record(&b.key, now, since, b.limit, b.window).await {
            Ok(()) => self.log.failures(&b.key, since).await,
            Err(e) => Err(e),
        };
        let recent = match counted {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "a failed token request could not be counted");
                return;
            }
        };
        let wait = Self::wait(&b, &recent, 0, now);
        if wait > Duration::ZERO {
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            if blocked.len() > SWEEP_ABOVE {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(b.key, now + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn throttle(clock: Arc<ManualClock>, per_account: u32, per_address: u32) -> Throttle {
        Throttle::new(
            clock,
            ThrottleConfig {
                per_account,
                per_address,
                window: Duration::minutes(15),
                registrations_per_address: 3,
                token_failures_per_address: 2,
            },
            Arc::new(MemoryFailureLog::default()),
        )
    }

    fn wait_of(r: Result<Attempt, Refused>) -> Duration {
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
            t.begin("Alice", None, None).await.unwrap().failed().await;
        }
        assert_eq!(
            wait_of(t.begin("alice", None, None).await),
            Duration::minutes(15)
        );
        assert!(t.begin("bob", None, None).await.is_ok());
        clock.advance(Duration::minutes(10));
        assert_eq!(
            wait_of(t.begin("alice", None, None).await),
            Duration::minutes(5)
        );
        clock.advance(Duration::minutes(5));
        assert!(t.begin("alice", None, None).await.is_ok());
    }

    #[tokio::test]
    async fn attempts_in_progress_count_against_the_limit() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock, 2, 100);
        let a = t.begin("eve", None, None).await.unwrap();
        let b = t.begin("eve", None, None).await.unwrap();
        assert!(
            t.begin("eve", None, None).await.is_err(),
            "a third concurrent guess is refused"
        );
        drop(a);
        // The release runs in the background: let it.
        tokio::task::yield_now().await;
        let c = t.begin("eve", None, None).await.unwrap();
        b.failed().await;
        c.failed().await;
        assert!(
            t.begin("eve", None, None).await.is_err(),
            "two failures: over the limit"
        );
        t.begin("bob", None, None).await.unwrap().succeeded().await;
        assert!(t.begin("bob", None, None).await.is_ok());
    }

    #[tokio::test]
    async fn address_limit_spans_accounts() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock, 100, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        t.begin("a", Some(ip), None).await.unwrap().failed().await;
        t.begin("b", Some(ip), None).await.unwrap().failed().await;
        assert!(t.begin("c", Some(ip), None).await.is_err());
        assert!(t
            .begin("c", Some("192.0.2.2".parse().unwrap()), None)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_log_never_holds_a_username() {
        let log = Arc::new(MemoryFailureLog::default());
        let t = Throttle::new(
            Arc::new(ManualClock::starting_now()),
            ThrottleConfig::default(),
            log.clone(),
        );
        t.begin("Mallory", None, None).await.unwrap().failed().await;
        let keys: Vec<String> = log.map.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec![account_key("mallory")]);
        assert!(!keys[0].contains("allory"));
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_bucket(a), "2001:db8:1:2::/64");
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(c));
        assert_eq!(
            address_bucket("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        assert_eq!(address_bucket("192.0.2.1".parse().unwrap()), "192.0.2.1");
    }

    #[tokio::test]
    async fn one_v6_network_is_one_address() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock, 100, 2);
        for host in ["2001:db8::1", "2001:db8::2"] {
            let ip: IpAddr = host.parse().unwrap();
            t.begin("x", Some(ip), None).await.unwrap().failed().await;
        }
        let third: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(t.begin("y", Some(third), None).await.is_err());
    }

    #[tokio::test]
    async fn a_known_device_is_judged_by_its_own_failures() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock, 3, 100);
        let (mine, stolen) = (DeviceId([1; 32]), DeviceId([2; 32]));
        // Someone else locks the account out for unknown clients.
        for _ in 0..3 {
            t.begin("alice", None, None).await.unwrap().failed().await;
        }
        assert!(t.begin("alice", None, None).await.is_err());
        // The owner's device still gets in, and its attempt is the device's.
        let a = t.begin("alice", None, Some(&mine)).await.unwrap();
        assert!(a.by_device());
        drop(a);
        // A device's own failures lock that device out, and it is then judged as unknown.
        for _ in 0..3 {
            let a = t.begin("alice", None, Some(&stolen)).await.unwrap();
            assert!(a.by_device());
            a.failed().await;
        }
        assert!(t.begin("alice", None, Some(&stolen)).await.is_err());
        assert!(t.begin("alice", None, Some(&mine)).await.is_ok());
    }

    #[tokio::test]
    async fn registrations_per_address_per_hour() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock.clone(), 10, 100);
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        for _ in 0..3 {
            t.register(Some(ip)).await.unwrap();
        }
        assert_eq!(wait_of_unit(t.register(Some(ip)).await), Duration::hours(1));
        t.register(Some("192.0.2.6".parse().unwrap()))
            .await
            .unwrap();
        t.register(None).await.unwrap();
        clock.advance(Duration::hours(1));
        t.register(Some(ip)).await.unwrap();
    }

    #[tokio::test]
    async fn token_failures_block_the_address_in_memory() {
        let clock = Arc::new(ManualClock::starting_now());
        let t = throttle(clock.clone(), 10, 100);
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        t.token_request(Some(ip)).unwrap();
        t.token_failed(Some(ip)).await;
        t.token_request(Some(ip)).unwrap();
        t.token_failed(Some(ip)).await;
        assert_eq!(
            wait_of_unit(t.token_request(Some(ip))),
            Duration::minutes(15)
        );
        t.token_request(Some("192.0.2.9".parse().unwrap())).unwrap();
        clock.advance(Duration::minutes(15));
        t.token_request(Some(ip)).unwrap();
    }

    fn wait_of_unit(r: Result<(), Refused>) -> Duration {
        match r {
            Err(Refused::Throttled(d)) => d,
            Err(Refused::Store(e)) => panic!("{e}"),
            Ok(()) => Duration::ZERO,
        }
    }
}
