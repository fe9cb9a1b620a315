//! Node-local session caches fed by the store's change feed (`--session-cache`).
//!
//! Every script that changes a session publishes the change on the `kw:feed` channel from
//! inside the change (creations with the whole session, touches with the new last use,
//! removals by token hash). A [`CachedSessions`] subscribes to it and keeps its memory in step:
//!
//! - **near**: a bounded cache of the sessions this node has read or made, filled on a miss;
//! - **replicated**: every live session, loaded before the node serves and kept by the feed.
//!
//! Either way a miss reads the store, so a session made a moment ago on another node is never
//! refused. A read that raced a change is not cached (per-slot change counters), so the cache
//! never goes back to a state the feed has moved past. While the feed is down or catching up
//! (at start, after a reconnection, after falling behind) the cache is emptied and bypassed:
//! every read goes to the store, and `ping` (hence `/readyz`) fails until it has caught up.
//! A revocation is thus honoured by every node once Redis has delivered one message: in
//! practice well under a millisecond on one network, and bounded by the store timeout (a node
//! that cannot hear the feed stops trusting its cache).

use crate::sessions::{hash_from_hex, record, session_key};
use crate::{unavailable, RedisStore};
use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    RefreshFamily, RotateOutcome, SessionId, SessionRecord, SessionStore, StoreError, StoreResult,
    TokenHash, TokenStore, UserId,
};
use moka::ops::compute::Op;
use moka::sync::Cache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use time::OffsetDateTime;
use tokio::sync::oneshot;

/// The channel every session change is announced on.
pub const FEED: &str = "kw:feed";

/// How long a node remembers a denial or a revoked family it heard of.
const DENIAL_MEMORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Change counters, one per slot of token hashes.
const SLOTS: usize = 4096;

/// How a read was answered, as counted in `keyward_session_cache_total{result}`.
#[derive(Clone, Copy)]
enum Lookup {
    Hit = 0,
    Miss = 1,
    Bypass = 2,
}

/// Which cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// At most this many sessions, each kept for at most the idle timeout.
    Near(u64),
    /// Every live session.
    Replicated,
}

/// A session store that serves reads from memory, kept current by the feed.
pub struct CachedSessions {
    store: RedisStore,
    mode: CacheMode,
    cache: Cache<TokenHash, SessionRecord>,
    /// True while the feed is subscribed and the cache caught up.
    up: AtomicBool,
    /// Bumped whenever the cache stops being trusted: a read begun before it is not cached.
    epoch: AtomicU64,
    /// One catch-up at a time.
    catching_up: tokio::sync::Mutex<()>,
    /// Denied access tokens (`jti` → until, ms) and revoked refresh families: every one Redis
    /// holds, loaded at catch-up and kept from the feed. Both only grow (until they expire),
    /// so no ordering of load and feed can lose one.
    denied: Cache<String, i64>,
    revoked: Cache<SessionId, ()>,
    /// True once the deny state is loaded (and the feed up since): then `is_denied` answers
    /// from memory.
    denials_loaded: AtomicBool,
    /// Changes heard per slot, to drop reads that raced one.
    changes: Box<[AtomicU64]>,
    subscriber: SubscriberClient,
    /// This node's name on the feed, for its own markers.
    node: String,
    /// Markers published and not heard back yet.
    markers: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_marker: AtomicU64,
}

fn slot(h: &TokenHash) -> usize {
    let b = h.as_bytes();
    (usize::from(b[1]) << 8 | usize::from(b[2])) % SLOTS
}

impl CachedSessions {
    /// Subscribe to the feed, catch up, and keep following it (reconnecting as needed).
    pub async fn start(store: RedisStore, mode: CacheMode) -> StoreResult<Arc<Self>> {
        let subscriber = Builder::from_config(store.config().clone())
            .with_connection_config(|c| {
                c.connection_timeout = store.options().timeout;
                c.internal_command_timeout = store.options().timeout;
            })
            .with_performance_config(|p| {
                // Room for bursts of changes while the feed task waits for a core; falling
                // behind empties the cache.
                p.broadcast_channel_capacity = 16_384;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build_subscriber_client()
            .map_err(unavailable)?;
        let idle = std::time::Duration::try_from(store.options().idle_timeout)
            .unwrap_or(std::time::Duration::from_secs(1800));
        // A session unread for the idle timeout has expired; sessions that end by Redis's TTL
        // are announced by nothing, so this is what drops them from memory.
        let cache = match mode {
            CacheMode::Near(capacity) => Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
            CacheMode::Replicated => Cache::builder().time_to_idle(idle).build(),
        };
        let me = Arc::new(Self {
            store,
            mode,
            cache,
            up: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            catching_up: tokio::sync::Mutex::new(()),
            // An access token lives at most a day (--access-token-ttl), and never past its
            // family's end: a denial or a family revocation matters no longer than that.
            denied: Cache::builder().time_to_live(DENIAL_MEMORY).build(),
            revoked: Cache::builder().time_to_live(DENIAL_MEMORY).build(),
            denials_loaded: AtomicBool::new(false),
            changes: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            subscriber,
            node: SessionId::new().to_string(),
            markers: Mutex::new(HashMap::new()),
            next_marker: AtomicU64::new(0),
        });
        me.follow();
        me.supervise();
        let _connection = me.subscriber.connect();
        let timeout = me.store.options().timeout;
        match tokio::time::timeout(timeout, me.subscriber.wait_for_connect()).await {
            Ok(Ok(())) => {
                if let Err(e) = me.resubscribe_and_catch_up().await {
                    tracing::warn!(error = %e, "the session cache could not catch up yet; reads go to the store");
                }
            }
            _ => tracing::warn!("the session feed is not reachable yet; reads go to the store"),
        }
        Ok(me)
    }

    /// Whether reads are served from memory now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn bump(&self, h: &TokenHash) {
        if let Some(c) = self.changes.get(slot(h)) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// What must not change between reading a session from the store and caching it: the
    /// cache's epoch and the changes heard in the session's slot.
    fn stamp(&self, h: &TokenHash) -> (u64, u64) {
        let slot = self
            .changes
            .get(slot(h))
            .map_or(0, |c| c.load(Ordering::Acquire));
        (self.epoch.load(Ordering::Acquire), slot)
    }

    /// Cache `s`, read or written under `before`, unless anything moved since; checked again
    /// after the insert, so a removal heard in between is never undone.
    fn insert_unless_moved(&self, s: SessionRecord, before: (u64, u64)) {
        let h = s.token_hash;
        if !self.is_up() || self.stamp(&h) != before {
            return;
        }
        self.cache.insert(h, s);
        if !self.is_up() || self.stamp(&h) != before {
            self.cache.invalidate(&h);
        }
    }

    /// Stop trusting the cache: empty it; reads go to the store until caught up (the
    /// supervisor starts the catch-up).
    fn down(&self, why: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.denials_loaded.store(false, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(why, "session cache bypassed until the feed is back");
        }
        self.cache.invalidate_all();
    }

    async fn resubscribe_and_catch_up(&self) -> StoreResult<()> {
        let _one = self.catching_up.lock().await;
        if self.is_up() {
            // Another catch-up finished while this one waited.
            return Ok(());
        }
        self.down("catching up");
        self.subscriber.subscribe(FEED).await.map_err(unavailable)?;
        // Trusted from here on: whatever changes from now is heard, and the load below caches
        // nothing that moved while it ran.
        let epoch = self.epoch.load(Ordering::Acquire);
        self.up.store(true, Ordering::Release);
        if self.mode == CacheMode::Replicated {
            let mut loaded = 0usize;
            for key in self.store.scan("{kw.??}:s:*").await? {
                let Some(h) = key.get(10..).and_then(hash_from_hex) else {
                    continue;
                };
                let before = self.stamp(&h);
                let m: HashMap<String, String> = self
                    .store
                    .client()
                    .hgetall(&key)
                    .await
                    .map_err(unavailable)?;
                if !m.is_empty() {
                    self.insert_unless_moved(record(Some(h), m)?, before);
                    loaded += 1;
                }
            }
            tracing::info!(sessions = loaded, "session cache loaded");
        }
        self.load_denials().await?;
        if self.epoch.load(Ordering::Acquire) != epoch {
            return Err(StoreError::Unavailable(
                "the feed was lost while catching up".into(),
            ));
        }
        self.denials_loaded.store(true, Ordering::Release);
        tracing::info!(mode = ?self.mode, "session cache following the feed");
        Ok(())
    }

    /// Every denied access token and every revoked family Redis holds.
    async fn load_denials(&self) -> StoreResult<()> {
        for key in self.store.scan("kw:d:*").await? {
            let until: Option<i64> = self.store.client().get(&key).await.map_err(unavailable)?;
            if let (Some(until), Some(jti)) = (until, key.get(5..)) {
                self.denied.insert(jti.to_owned(), until);
            }
        }
        for key in self.store.scan("{kw.??}:f:*").await? {
            let revoked: bool = self
                .store
                .client()
                .hexists(&key, "r")
                .await
                .map_err(unavailable)?;
            if let (true, Some(fid)) = (revoked, key.get(10..).and_then(SessionId::parse)) {
                self.revoked.insert(fid, ());
            }
        }
        Ok(())
    }

    /// Every second: while the cache is trusted, send a marker through the feed and expect it
    /// back within the store timeout (a silent or half-open feed connection is found this way,
    /// even when nothing changes); while it is not, try to catch up.
    fn supervise(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let second = std::time::Duration::from_secs(1);
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + second, second);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(me) = weak.upgrade() else { return };
                if me.is_up() {
                    me.barrier(FEED).await;
                } else if me.subscriber.is_connected() {
                    if let Err(e) = me.resubscribe_and_catch_up().await {
                        tracing::debug!(error = %e, "catching up failed; retrying");
                    }
                }
            }
        });
    }

    /// Spawn the tasks that apply the feed and handle connection loss and return.
    fn follow(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mut messages = self.subscriber.message_rx();
        tokio::spawn(async move {
            loop {
                let msg = messages.recv().await;
                let Some(me) = weak.upgrade() else { return };
                match msg {
                    Ok(m) => {
                        if let Some(text) = m.value.as_str() {
                            me.apply(&text);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Missed changes: start over (the supervisor catches up).
                        tracing::warn!(missed = n, "the session feed fell behind");
                        me.down("fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let weak = Arc::downgrade(self);
        let mut errors = self.subscriber.error_rx();
        tokio::spawn(async move {
            while errors.recv().await.is_ok() {
                let Some(me) = weak.upgrade() else { return };
                me.down("feed connection lost");
            }
        });
        let weak = Arc::downgrade(self);
        let mut reconnects = self.subscriber.reconnect_rx();
        tokio::spawn(async move {
            // The first event is the first connection (start-up catches up after it, or the
            // supervisor does once it exists); every later one follows a loss.
            let mut first = true;
            while reconnects.recv().await.is_ok() {
                let Some(me) = weak.upgrade() else { return };
                if !std::mem::take(&mut first) {
                    // Whatever was said while disconnected is lost: the supervisor catches up.
                    me.down("feed reconnected");
                }
            }
        });
    }

    /// After a revocation: publish a marker from the slot the change ran on and wait until
    /// this node's subscriber hears it. The feed is ordered per primary, so every removal the
    /// change announced has then reached this node, and Redis has written it to every other
    /// subscriber's connection in the same pass. Each other node applies it as soon as its
    /// feed task runs; a node that cannot hear the feed finds out within a second (the
    /// supervisor's markers) plus the store timeout and stops trusting its cache. A feed silent
    /// past the store timeout is treated as lost.
    async fn barrier(&self, slot_key: &str) {
        if !self.is_up() {
            return;
        }
        let id = self.next_marker.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.markers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let slot = fred::util::redis_keyslot(slot_key.as_bytes());
        let published: Result<i64, _> = self
            .store
            .client()
            .custom(
                CustomCommand::new_static("PUBLISH", ClusterHash::Custom(slot), false),
                vec![FEED.to_owned(), format!("m {} {id}", self.node)],
            )
            .await;
        let heard = published.is_ok()
            && tokio::time::timeout(self.store.options().timeout, rx)
                .await
                .is_ok_and(|r| r.is_ok());
        self.markers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if !heard {
            self.down("the feed did not echo a marker in time");
        }
    }

    /// Apply one change from the feed.
    fn apply(&self, text: &str) {
        if let Some(marker) = text.strip_prefix("m ") {
            let mut parts = marker.splitn(2, ' ');
            if parts.next() == Some(self.node.as_str()) {
                if let Some(id) = parts.next().and_then(|v| v.parse::<u64>().ok()) {
                    let tx = self
                        .markers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                }
            }
            return;
        }
        if let Some(denial) = text.strip_prefix("x ") {
            if let Some((until, jti)) = denial.split_once(' ') {
                if let Ok(until) = until.parse::<i64>() {
                    self.denied.insert(jti.to_owned(), until);
                }
            }
            return;
        }
        if let Some(fid) = text.strip_prefix("f ").and_then(SessionId::parse) {
            self.revoked.insert(fid, ());
            return;
        }
        let mut parts = text.splitn(3, ' ');
        let (Some(op), Some(h)) = (parts.next(), parts.next().and_then(hash_from_hex)) else {
            return;
        };
        self.bump(&h);
        match op {
            "d" => self.cache.invalidate(&h),
            "t" => {
                let Some(at) = parts.next().and_then(|v| v.parse::<i64>().ok()) else {
                    self.cache.invalidate(&h);
                    return;
                };
                let at = from_unix_ms(at);
                // Atomically, and only if still cached: never brings back a removed session.
                self.cache.entry(h).and_compute_with(|entry| match entry {
                    Some(e) if at > e.value().last_seen_at => {
                        let mut s = e.into_value();
                        s.last_seen_at = at;
                        Op::Put(s)
                    }
                    _ => Op::Nop,
                });
            }
            "c" if self.mode == CacheMode::Replicated => {
                let fields: Option<Vec<String>> =
                    parts.next().and_then(|j| serde_json::from_str(j).ok());
                let mut m = HashMap::new();
                let mut it = fields.unwrap_or_default().into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    m.insert(k, v);
                }
                match record(Some(h), m) {
                    Ok(s) => self.cache.insert(h, s),
                    Err(_) => self.cache.invalidate(&h),
                }
            }
            _ => {}
        }
    }

    fn count(result: Lookup) {
        // Handles made once: a lookup allocates no labels and searches no registry.
        static COUNTERS: OnceLock<[metrics::Counter; 3]> = OnceLock::new();
        let counters = COUNTERS.get_or_init(|| {
            ["hit", "miss", "bypass"]
                .map(|r| metrics::counter!("keyward_session_cache_total", "result" => r))
        });
        if let Some(c) = counters.get(result as usize) {
            c.increment(1);
        }
    }
}

#[async_trait]
impl SessionStore for CachedSessions {
    async fn create(&self, session: &SessionRecord) -> StoreResult<()> {
        let before = self.stamp(&session.token_hash);
        self.store.create(session).await?;
        self.insert_unless_moved(session.clone(), before);
        Ok(())
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        if !self.is_up() {
            Self::count(Lookup::Bypass);
            return self.store.get(token_hash).await;
        }
        if let Some(s) = self.cache.get(token_hash) {
            Self::count(Lookup::Hit);
            return Ok(Some(s));
        }
        Self::count(Lookup::Miss);
        let before = self.stamp(token_hash);
        let found = self.store.get(token_hash).await?;
        if let Some(s) = &found {
            self.insert_unless_moved(s.clone(), before);
        }
        Ok(found)
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        self.store.touch(token_hash, last_seen_at).await?;
        // Atomically, and only if still cached: a removal heard meanwhile stays a removal.
        self.cache
            .entry(*token_hash)
            .and_compute_with(|entry| match entry {
                Some(e) if last_seen_at > e.value().last_seen_at => {
                    let mut s = e.into_value();
                    s.last_seen_at = last_seen_at;
                    Op::Put(s)
                }
                _ => Op::Nop,
            });
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let removed = self.store.delete(token_hash).await;
        self.bump(token_hash);
        self.cache.invalidate(token_hash);
        if matches!(removed, Ok(Some(_))) {
            self.barrier(&session_key(token_hash)).await;
        }
        removed
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let removed = self.store.delete_by_id(id, owner).await?;
        if let Some(s) = &removed {
            self.bump(&s.token_hash);
            self.cache.invalidate(&s.token_hash);
            self.barrier(&session_key(&s.token_hash)).await;
        }
        Ok(removed)
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        // The feed names each removed session; this node hears it like every other.
        let n = self.store.delete_for_user(user, keep).await?;
        if n > 0 {
            self.barrier(&crate::sessions::index_key(user)).await;
        }
        Ok(n)
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        self.store.list_for_user(user).await
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        let done = self.store.replace(old, new).await;
        self.bump(old);
        self.cache.invalidate(old);
        if matches!(done, Ok(true)) {
            self.barrier(&session_key(old)).await;
        }
        done
    }

    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        self.store.purge_expired(now, idle_cutoff).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.store.ping().await?;
        if !self.is_up() {
            return Err(StoreError::Unavailable(
                "the session cache is catching up with the feed".into(),
            ));
        }
        Ok(())
    }
}

/// The token store through the same feed: refresh tokens and families are Redis's as ever;
/// the deny check (every bearer request) answers from memory while the feed is trusted.
#[async_trait]
impl TokenStore for CachedSessions {
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        self.store.create_family(family, first).await
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: time::Duration,
    ) -> StoreResult<RotateOutcome> {
        let outcome = self.store.rotate(presented, next, now, grace).await?;
        if let RotateOutcome::Reused(f) = &outcome {
            self.revoked.insert(f.id, ());
            self.barrier(&format!("{{kw.{:02x}}}", f.id.shard())).await;
        }
        Ok(outcome)
    }

    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        self.store.family_of(token, now).await
    }

    async fn revoke_family(&self, family: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let done = self.store.revoke_family(family, now).await?;
        if done {
            self.revoked.insert(family, ());
            self.barrier(&format!("{{kw.{:02x}}}", family.shard()))
                .await;
        }
        Ok(done)
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let found = self.store.revoke_by_token(token, now).await?;
        if let Some(f) = &found {
            self.revoked.insert(f.id, ());
            self.barrier(&format!("{{kw.{:02x}}}", f.id.shard())).await;
        }
        Ok(found)
    }

    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64> {
        let n = self.store.revoke_user_families(user, now).await?;
        if n > 0 {
            self.barrier(&format!("{{kw.{:02x}}}", user.shard())).await;
        }
        Ok(n)
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        self.store.deny(jti, until).await?;
        self.denied.insert(jti.to_owned(), to_unix_ms(until));
        self.barrier(&format!("kw:d:{jti}")).await;
        Ok(())
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        if !(self.is_up() && self.denials_loaded.load(Ordering::Acquire)) {
            return self.store.is_denied(jti, sid, now).await;
        }
        let now = to_unix_ms(now);
        Ok(
            self.revoked.contains_key(&sid)
                || self.denied.get(jti).is_some_and(|until| until > now),
        )
    }

    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.store.purge_tokens(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_keys_are_session_keys() {
        let h = keyward_core::SessionToken::generate().unwrap().hash();
        let key = session_key(&h);
        assert_eq!(key.get(10..).and_then(hash_from_hex), Some(h));
    }
}
