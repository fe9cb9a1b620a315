//! Node-local session caches (`--session-cache near|replicated`) over any shared store's
//! [`ChangeFeed`]: Redis (pub/sub) and PostgreSQL (`LISTEN/NOTIFY` over a gapless log).
//!
//! - **near** keeps the sessions this node has read or made, up to a capacity, each for at most
//!   the idle timeout;
//! - **replicated** keeps every live session, loaded before the node serves and kept by the
//!   feed, in a compact table (`memory.rs`).
//!
//! Either way a miss reads the store, so a session made a moment ago on another node is never
//! refused. The feed's events are applied in order by one task (a full load runs in that task
//! too, so events that arrive meanwhile are applied after it, in order); a read that raced a
//! change is not cached (per-slot change counters). While the feed is lost or catching up the
//! cache is not trusted: reads go to the store, and `ping` (hence `/readyz`) fails. A
//! revocation is acknowledged once this node has heard its own marker behind it on the feed,
//! so every node has been sent it; a node whose markers stop coming back stops trusting its
//! memory within a second plus the store timeout.
//!
//! **Outage grace.** When the store itself cannot be reached, a replicated node keeps
//! validating the sessions and access tokens it holds (with the denials it holds) for up to
//! the grace; everything that writes answers unavailable at once; uses of sessions are kept in
//! memory and written back when the store returns. Once the store answers again the node reads
//! it (no stale answer is served) until the feed has caught up.
#![deny(missing_docs)]

mod memory;

use async_trait::async_trait;
use keyward_core::clock::to_unix_ms;
use keyward_core::feed::{ChangeFeed, FeedEvent, FeedMessage, LoadSink, Near, ReplicaSession};
use keyward_core::{
    DynSessionStore, DynTokenStore, RefreshFamily, RotateOutcome, SessionId, SessionRecord,
    SessionStore, StoreError, StoreResult, TokenHash, TokenStore, UserId,
};
use memory::{Memory, Replicated};
use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// Which cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// At most this many sessions, each kept for at most the idle timeout.
    Near(u64),
    /// Every live session.
    Replicated,
}

/// Settings of a cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// Which cache.
    pub mode: CacheMode,
    /// The sessions' idle timeout (a near cache drops a session unread this long).
    pub idle_timeout: time::Duration,
    /// The store timeout: how long this node waits for its own marker to come back.
    pub timeout: Duration,
    /// How long a replicated node keeps validating what it holds while the store cannot be
    /// reached (zero: not at all).
    pub outage_grace: Duration,
}

/// How long a node remembers a denial or a revoked family it heard of: an access token lives
/// at most a day (`--access-token-ttl`), and never past its family's end.
const DENIAL_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Change counters, one per slot of token hashes.
const SLOTS: usize = 4096;

fn slot(h: &TokenHash) -> usize {
    let b = h.as_bytes();
    (usize::from(b[1]) << 8 | usize::from(b[2])) % SLOTS
}

/// How a read was answered, as counted in `keyward_session_cache_total{result}`.
#[derive(Clone, Copy)]
enum Lookup {
    Hit = 0,
    Miss = 1,
    Bypass = 2,
    Degraded = 3,
}

fn count(result: Lookup) {
    // Handles made once: a lookup allocates no labels and searches no registry.
    static COUNTERS: OnceLock<[metrics::Counter; 4]> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        ["hit", "miss", "bypass", "degraded"]
            .map(|r| metrics::counter!("keyward_session_cache_total", "result" => r))
    });
    if let Some(c) = counters.get(result as usize) {
        c.increment(1);
    }
}

fn unavailable(why: &'static str) -> StoreError {
    StoreError::Unavailable(why.into())
}

/// A session and token store that answers from memory, kept current by the feed.
pub struct CachedSessions {
    sessions: DynSessionStore,
    tokens: DynTokenStore,
    feed: Arc<dyn ChangeFeed>,
    options: CacheOptions,
    memory: RwLock<Arc<Memory>>,
    /// True while the feed is followed and the memory caught up.
    trusted: AtomicBool,
    /// True once the memory has been filled from the store at least once.
    held: AtomicBool,
    /// When the store stopped answering, while it does not.
    outage: Mutex<Option<Instant>>,
    /// Changes heard per slot, to drop reads that raced one.
    changes: Box<[AtomicU64]>,
    /// Bumped whenever the memory stops being trusted: a read begun before is not cached.
    epoch: AtomicU64,
    /// Denied access tokens (`jti` → until, ms) and revoked families: every one the store
    /// holds, loaded at each reload and kept from the feed. Both only grow (until they
    /// expire), so no ordering of load and feed can lose one.
    denied: Cache<String, i64>,
    revoked: Cache<SessionId, ()>,
    denials_loaded: AtomicBool,
    /// Uses of sessions seen while the store could not be written, to write back.
    pending_touches: Mutex<HashMap<TokenHash, OffsetDateTime>>,
    /// This node's name on the feed, for its own markers.
    node: String,
    markers: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_marker: AtomicU64,
    /// How often the memory became trusted, and how often it was loaded afresh.
    catch_ups: AtomicU64,
    loads: AtomicU64,
}

impl std::fmt::Debug for CachedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSessions")
            .field("options", &self.options)
            .field("trusted", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl CachedSessions {
    /// Follow `feed` in front of the store, and wait (up to the timeout) until the memory is
    /// loaded; a store that is not reachable yet is followed in the background.
    pub async fn start(
        sessions: DynSessionStore,
        tokens: DynTokenStore,
        feed: Arc<dyn ChangeFeed>,
        options: CacheOptions,
    ) -> StoreResult<Arc<Self>> {
        let me = Arc::new(Self {
            sessions,
            tokens,
            feed,
            memory: RwLock::new(Arc::new(Self::empty(&options))),
            options,
            trusted: AtomicBool::new(false),
            held: AtomicBool::new(false),
            outage: Mutex::new(None),
            changes: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            denied: Cache::builder().time_to_live(DENIAL_MEMORY).build(),
            revoked: Cache::builder().time_to_live(DENIAL_MEMORY).build(),
            denials_loaded: AtomicBool::new(false),
            pending_touches: Mutex::new(HashMap::new()),
            node: SessionId::new().to_string(),
            markers: Mutex::new(HashMap::new()),
            next_marker: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(Self::follow(Arc::downgrade(&me), rx, Some(ready_tx)));
        Self::supervise(Arc::downgrade(&me));
        if let Err(e) = me.feed.start(tx).await {
            tracing::warn!(error = %e, "the session feed is not reachable yet; reads go to the store");
            return Ok(me);
        }
        // A replicated node serves once it holds every session; the load's own time is
        // bounded by the store, not by the timeout.
        let wait = match me.options.mode {
            CacheMode::Replicated => Duration::from_secs(600),
            CacheMode::Near(_) => me.options.timeout,
        };
        if tokio::time::timeout(wait, ready_rx).await.is_err() {
            tracing::warn!("the session cache has not caught up yet; reads go to the store");
        }
        Ok(me)
    }

    fn empty(options: &CacheOptions) -> Memory {
        match options.mode {
            CacheMode::Near(capacity) => Memory::Near(
                Cache::builder()
                    .max_capacity(capacity)
                    .time_to_idle(
                        Duration::try_from(options.idle_timeout)
                            .unwrap_or(Duration::from_secs(1800)),
                    )
                    .build(),
            ),
            CacheMode::Replicated => Memory::Replicated(Replicated::new()),
        }
    }

    /// Whether reads are served from memory now.
    pub fn is_up(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// How many times the memory became trusted (after starting, and after each loss).
    pub fn catch_ups(&self) -> u64 {
        self.catch_ups.load(Ordering::Acquire)
    }

    /// How many times the memory was loaded afresh (not repaired from a replayed log).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Acquire)
    }

    /// Sessions held in memory.
    pub fn held_sessions(&self) -> usize {
        self.memory().len()
    }

    fn memory(&self) -> Arc<Memory> {
        self.memory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether this node answers from memory although the store is unreachable.
    fn serving_degraded(&self) -> bool {
        if self.options.mode != CacheMode::Replicated
            || self.options.outage_grace.is_zero()
            || !self.held.load(Ordering::Acquire)
        {
            return false;
        }
        let outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        outage.is_some_and(|since| since.elapsed() < self.options.outage_grace)
    }

    /// The store did not answer: from now on, degraded (within the grace) or unavailable.
    fn store_failed(&self, e: &StoreError) {
        if !matches!(e, StoreError::Unavailable(_)) {
            return;
        }
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        if outage.is_none() {
            *outage = Some(Instant::now());
            drop(outage);
            self.lost("the store does not answer");
            if self.options.mode == CacheMode::Replicated && !self.options.outage_grace.is_zero() {
                tracing::warn!(
                    grace_seconds = self.options.outage_grace.as_secs(),
                    "the store does not answer: serving the sessions this node holds"
                );
            }
        }
    }

    fn in_outage(&self) -> bool {
        self.outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn bump(&self, h: &TokenHash) {
        if let Some(c) = self.changes.get(slot(h)) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// What must not change between reading a session from the store and caching it.
    fn stamp(&self, h: &TokenHash) -> (u64, u64) {
        let slot = self
            .changes
            .get(slot(h))
            .map_or(0, |c| c.load(Ordering::Acquire));
        (self.epoch.load(Ordering::Acquire), slot)
    }

    /// Cache `s`, read under `before`, unless anything moved since; checked again after the
    /// insert, so a removal heard in between is never undone.
    fn insert_unless_moved(&self, s: &SessionRecord, before: (u64, u64)) {
        let h = s.token_hash;
        if !self.is_up() || self.stamp(&h) != before {
            return;
        }
        let memory = self.memory();
        memory.insert(&ReplicaSession::from(s));
        if !self.is_up() || self.stamp(&h) != before {
            memory.remove(&h);
        }
    }

    /// Stop trusting the memory; reads go to the store until the feed has caught up. A near
    /// cache forgets what it held; a replicated one keeps it for an outage.
    fn lost(&self, why: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if self.trusted.swap(false, Ordering::AcqRel) {
            tracing::warn!(why, "session cache bypassed until the feed has caught up");
        }
        if let CacheMode::Near(_) = self.options.mode {
            *self.memory.write().unwrap_or_else(PoisonError::into_inner) =
                Arc::new(Self::empty(&self.options));
        }
    }

    /// The task that applies the feed, in order.
    async fn follow(
        weak: Weak<Self>,
        mut rx: mpsc::UnboundedReceiver<FeedMessage>,
        mut ready: Option<oneshot::Sender<()>>,
    ) {
        while let Some(msg) = rx.recv().await {
            let Some(me) = weak.upgrade() else { return };
            match msg {
                FeedMessage::Event(e) => me.apply(e),
                FeedMessage::Lost => me.lost("feed lost"),
                FeedMessage::Reload | FeedMessage::CaughtUp => {
                    let reload = msg == FeedMessage::Reload;
                    match me.catch_up(reload).await {
                        Ok(()) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the session cache could not catch up; retrying");
                            me.store_failed(&e);
                        }
                    }
                }
            }
        }
    }

    /// Trust the memory again: write back the uses seen during an outage, then (on a reload)
    /// load the denials and, for a replicated cache, every session.
    async fn catch_up(&self, reload: bool) -> StoreResult<()> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let pending: Vec<(TokenHash, OffsetDateTime)> = self
            .pending_touches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (h, at) in &pending {
            self.sessions.touch(h, *at).await?;
        }
        if !pending.is_empty() {
            tracing::info!(
                sessions = pending.len(),
                "uses seen during the outage written back"
            );
        }
        if reload {
            let started = Instant::now();
            let denials = self.feed.load_denials().await?;
            for (jti, until) in denials.tokens {
                self.denied.insert(jti, to_unix_ms(until));
            }
            for f in denials.families {
                self.revoked.insert(f, ());
            }
            self.denials_loaded.store(true, Ordering::Release);
            let fresh = Self::empty(&self.options);
            if let Memory::Replicated(table) = &fresh {
                let n = self.feed.load_sessions(&mut Filling(table)).await?;
                tracing::info!(
                    sessions = n,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "session cache loaded"
                );
            }
            *self.memory.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
            self.held.store(true, Ordering::Release);
            self.loads.fetch_add(1, Ordering::AcqRel);
        }
        if self.epoch.load(Ordering::Acquire) != epoch {
            return Err(unavailable("the feed was lost while catching up"));
        }
        *self.outage.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.trusted.store(true, Ordering::Release);
        self.catch_ups.fetch_add(1, Ordering::AcqRel);
        tracing::info!(mode = ?self.options.mode, reload, "session cache following the feed");
        Ok(())
    }

    /// Every second: while trusted, send a marker through the feed and expect it back within
    /// the store timeout (a silent or half-open feed is found this way, even when nothing
    /// changes); during an outage, see whether the store answers again.
    fn supervise(weak: Weak<Self>) {
        tokio::spawn(async move {
            let second = Duration::from_secs(1);
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(me) = weak.upgrade() else { return };
                if me.is_up() {
                    me.barrier(Near::Nothing).await;
                } else {
                    // Without the feed: is the store itself away (an outage begins), or back?
                    match me.sessions.ping().await {
                        Ok(()) if me.in_outage() => {
                            *me.outage.lock().unwrap_or_else(PoisonError::into_inner) = None;
                            tracing::info!("the store answers again; catching up");
                            me.feed.resync();
                        }
                        Ok(()) => {}
                        Err(e) => me.store_failed(&e),
                    }
                }
            }
        });
    }

    /// After a revocation: publish a marker from where the change ran and wait until this
    /// node hears it. The feed is ordered (per primary on Redis, by commit on PostgreSQL), so
    /// every change before it has then reached this node, and the store has sent it to every
    /// other node in the same pass. A marker not heard within the timeout means the feed is
    /// not delivering: the memory stops being trusted and the feed is asked to resync.
    async fn barrier(&self, near: Near<'_>) {
        if !self.is_up() {
            return;
        }
        let id = self.next_marker.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let published = self.feed.marker(near, &self.node, id).await;
        let heard = published.is_ok()
            && tokio::time::timeout(self.options.timeout, rx)
                .await
                .is_ok_and(|r| r.is_ok());
        self.markers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if !heard {
            self.lost("the feed did not echo a marker in time");
            if let Err(e) = &published {
                self.store_failed(e);
            }
            self.feed.resync();
        }
    }

    /// Apply one change from the feed.
    fn apply(&self, event: FeedEvent) {
        match event {
            FeedEvent::Marker { node, id } => {
                if node == self.node {
                    let tx = self
                        .markers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                }
            }
            FeedEvent::Denied { jti, until } => self.denied.insert(jti, to_unix_ms(until)),
            FeedEvent::FamilyRevoked { family } => self.revoked.insert(family, ()),
            FeedEvent::Deleted { token_hash } => {
                self.bump(&token_hash);
                self.memory().remove(&token_hash);
            }
            FeedEvent::Touched {
                token_hash,
                last_seen_at,
            } => {
                self.bump(&token_hash);
                self.memory().touch(&token_hash, last_seen_at);
            }
            FeedEvent::Created(s) => {
                self.bump(&s.token_hash);
                // A creation happens once: what is held already is at least as new.
                let memory = self.memory();
                if matches!(*memory, Memory::Replicated(_)) && memory.get(&s.token_hash).is_none() {
                    memory.insert(&s);
                }
            }
        }
    }

    /// During an outage, what writes fails at once.
    fn refuse_in_outage(&self) -> StoreResult<()> {
        if self.in_outage() {
            return Err(unavailable("the store does not answer"));
        }
        Ok(())
    }

    /// Run a write, failing fast during an outage and noting one it finds.
    async fn write<T>(
        &self,
        f: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.refuse_in_outage()?;
        let r = f.await;
        if let Err(e) = &r {
            self.store_failed(e);
        }
        r
    }
}

/// A replicated table being filled by a load.
struct Filling<'a>(&'a Replicated);

impl LoadSink for Filling<'_> {
    fn expect(&mut self, sessions: u64) {
        self.0.reserve(usize::try_from(sessions).unwrap_or(0));
    }
    fn session(&mut self, s: ReplicaSession) {
        self.0.insert(&s);
    }
}

#[async_trait]
impl SessionStore for CachedSessions {
    async fn create(&self, session: &SessionRecord) -> StoreResult<()> {
        let before = self.stamp(&session.token_hash);
        self.write(self.sessions.create(session)).await?;
        self.insert_unless_moved(session, before);
        Ok(())
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        if self.is_up() {
            if let Some(s) = self.memory().get(token_hash) {
                count(Lookup::Hit);
                return Ok(Some(s.into()));
            }
            count(Lookup::Miss);
            let before = self.stamp(token_hash);
            let found = self.sessions.get(token_hash).await;
            match &found {
                Ok(Some(s)) => self.insert_unless_moved(s, before),
                Ok(None) => {}
                Err(e) => self.store_failed(e),
            }
            return found;
        }
        if !self.serving_degraded() {
            count(Lookup::Bypass);
            match self.sessions.get(token_hash).await {
                Ok(found) => return Ok(found),
                Err(e) => {
                    self.store_failed(&e);
                    if !self.serving_degraded() {
                        return Err(e);
                    }
                }
            }
        }
        count(Lookup::Degraded);
        match self.memory().get(token_hash) {
            Some(s) => Ok(Some(s.into())),
            None => Err(unavailable(
                "the store does not answer and this node does not hold the session",
            )),
        }
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        let written = if self.in_outage() {
            Err(unavailable("the store does not answer"))
        } else {
            self.sessions.touch(token_hash, last_seen_at).await
        };
        match written {
            Ok(()) => {}
            Err(e) => {
                self.store_failed(&e);
                if !self.serving_degraded() {
                    return Err(e);
                }
                // Kept, and written back when the store answers again.
                let mut pending = self
                    .pending_touches
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let at = pending.entry(*token_hash).or_insert(last_seen_at);
                *at = (*at).max(last_seen_at);
            }
        }
        self.memory().touch(token_hash, last_seen_at);
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        // Refused before it is tried: nothing changed, the session is still held. Tried and
        // failed: it may have gone, so it is no longer served from memory.
        self.refuse_in_outage()?;
        let removed = self.write(self.sessions.delete(token_hash)).await;
        self.bump(token_hash);
        self.memory().remove(token_hash);
        if matches!(removed, Ok(Some(_))) {
            self.barrier(Near::Shard(token_hash.shard())).await;
        }
        removed
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let removed = self.write(self.sessions.delete_by_id(id, owner)).await?;
        if let Some(s) = &removed {
            self.bump(&s.token_hash);
            self.memory().remove(&s.token_hash);
            self.barrier(Near::Shard(id.shard())).await;
        }
        Ok(removed)
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        // The feed names each removed session; this node hears it like every other.
        let n = self
            .write(self.sessions.delete_for_user(user, keep))
            .await?;
        if n > 0 {
            self.barrier(Near::Shard(user.shard())).await;
        }
        Ok(n)
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        self.sessions.list_for_user(user).await
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        self.refuse_in_outage()?;
        let done = self.write(self.sessions.replace(old, new)).await;
        self.bump(old);
        self.memory().remove(old);
        if matches!(done, Ok(true)) {
            self.barrier(Near::Shard(old.shard())).await;
        }
        done
    }

    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        let swept = self.memory().sweep(now, idle_cutoff);
        if swept > 0 {
            tracing::debug!(swept, "expired sessions dropped from memory");
        }
        metrics::gauge!("keyward_session_cache_sessions").set(self.held_sessions() as f64);
        self.sessions.purge_expired(now, idle_cutoff).await
    }

    async fn ping(&self) -> StoreResult<()> {
        if let Err(e) = self.sessions.ping().await {
            self.store_failed(&e);
            return Err(e);
        }
        if !self.is_up() {
            return Err(unavailable(
                "the session cache is catching up with the feed",
            ));
        }
        Ok(())
    }

    fn degraded(&self) -> bool {
        !self.is_up() && self.serving_degraded()
    }
}

/// The token store through the same feed: refresh tokens and families are the store's as
/// ever; the deny check (every bearer request) answers from memory while the feed is trusted,
/// and during an outage within the grace.
#[async_trait]
impl TokenStore for CachedSessions {
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        self.write(self.tokens.create_family(family, first)).await
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: time::Duration,
    ) -> StoreResult<RotateOutcome> {
        let outcome = self
            .write(self.tokens.rotate(presented, next, now, grace))
            .await?;
        if let RotateOutcome::Reused(f) = &outcome {
            self.revoked.insert(f.id, ());
            self.barrier(Near::Shard(f.id.shard())).await;
        }
        Ok(outcome)
    }

    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        self.tokens.family_of(token, now).await
    }

    async fn revoke_family(&self, family: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let done = self.write(self.tokens.revoke_family(family, now)).await?;
        if done {
            self.revoked.insert(family, ());
            self.barrier(Near::Shard(family.shard())).await;
        }
        Ok(done)
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let found = self.write(self.tokens.revoke_by_token(token, now)).await?;
        if let Some(f) = &found {
            self.revoked.insert(f.id, ());
            self.barrier(Near::Shard(f.id.shard())).await;
        }
        Ok(found)
    }

    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64> {
        let n = self
            .write(self.tokens.revoke_user_families(user, now))
            .await?;
        if n > 0 {
            self.barrier(Near::Shard(user.shard())).await;
        }
        Ok(n)
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        self.write(self.tokens.deny(jti, until)).await?;
        self.denied.insert(jti.to_owned(), to_unix_ms(until));
        self.barrier(Near::Denial(jti)).await;
        Ok(())
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let from_memory = self.denials_loaded.load(Ordering::Acquire)
            && (self.is_up() || self.serving_degraded());
        if !from_memory {
            let r = self.tokens.is_denied(jti, sid, now).await;
            match r {
                Err(e) if self.denials_loaded.load(Ordering::Acquire) => {
                    self.store_failed(&e);
                    if !self.serving_degraded() {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
        let now = to_unix_ms(now);
        Ok(
            self.revoked.contains_key(&sid)
                || self.denied.get(jti).is_some_and(|until| until > now),
        )
    }

    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.tokens.purge_tokens(now).await
    }
}
