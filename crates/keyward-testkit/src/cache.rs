//! The session-cache conformance suite: every engine with a change feed (Redis standalone, a
//! Cluster, Sentinel; PostgreSQL) must pass every check here, through
//! [`cache_conformance!`](crate::cache_conformance).
//!
//! A [`CacheEngine`] starts nodes (a cache over a store connection of its own) on one private
//! deployment, and does what only the engine can: change data behind the caches' backs (no
//! feed event), cut the feed connections from the server's side, stop and start the server.

use crate::conformance::{session, t0};
use crate::pg::PgServer;
use crate::redis::{RedisCluster, RedisSentinel, RedisServer};
use async_trait::async_trait;
use keyward_core::feed::ChangeFeed;
use keyward_core::{
    RefreshFamily, SessionId, SessionRecord, SessionStore, SessionToken, StoreError, TokenStore,
    UserId,
};
use keyward_redis::feed::RedisFeed;
use keyward_redis::{RedisOptions, RedisStore};
use keyward_replica::{CacheMode, CacheOptions, CachedSessions};
use keyward_sql::SqlStore;
use std::sync::Arc;
use std::time::Duration;

/// A deployment that cache nodes share.
#[async_trait]
pub trait CacheEngine: Send + Sync {
    /// A node: a store connection of its own, its feed, and a cache in front; caught up.
    async fn node(&self, mode: CacheMode, grace: Duration) -> Arc<CachedSessions>;
    /// Remove a session behind every cache's back (no feed event).
    async fn remove_behind_the_back(&self, s: &SessionRecord);
    /// Remove every denial and family behind the caches' backs.
    async fn forget_denials_behind_the_back(&self);
    /// Close every feed connection from the server's side.
    async fn cut_feeds(&self);
    /// Stop the server (SIGKILL).
    async fn stop(&mut self);
    /// Start it again, with its data.
    async fn start_again(&mut self);
    /// Whether its feed replays what a node missed (else the node loads afresh).
    fn replays(&self) -> bool {
        false
    }
}

fn options(mode: CacheMode, grace: Duration) -> CacheOptions {
    CacheOptions {
        mode,
        idle_timeout: time::Duration::minutes(30),
        timeout: Duration::from_secs(2),
        outage_grace: grace,
    }
}

async fn cached(
    sessions: Arc<dyn SessionStore>,
    tokens: Arc<dyn TokenStore>,
    feed: Arc<dyn ChangeFeed>,
    mode: CacheMode,
    grace: Duration,
) -> Arc<CachedSessions> {
    crate::logs();
    let c = CachedSessions::start(sessions, tokens, feed, options(mode, grace))
        .await
        .unwrap();
    assert!(c.is_up(), "caught up before it serves");
    c
}

async fn redis_node(url: &str, mode: CacheMode, grace: Duration) -> Arc<CachedSessions> {
    let store = RedisStore::connect(&url.parse().unwrap(), RedisOptions::default())
        .await
        .unwrap();
    let feed = Arc::new(RedisFeed::new(store.clone()).unwrap());
    let store = Arc::new(store);
    cached(store.clone(), store, feed, mode, grace).await
}

fn session_key(s: &SessionRecord) -> String {
    format!(
        "{{kw.{:02x}}}:s:{}",
        s.token_hash.shard(),
        s.token_hash.to_hex()
    )
}

/// One standalone Redis, durable (a restart keeps its data).
pub struct RedisEngine(pub RedisServer);

impl RedisEngine {
    pub async fn start() -> Self {
        Self(RedisServer::start_durable().await)
    }
}

#[async_trait]
impl CacheEngine for RedisEngine {
    async fn node(&self, mode: CacheMode, grace: Duration) -> Arc<CachedSessions> {
        redis_node(&self.0.url(), mode, grace).await
    }
    async fn remove_behind_the_back(&self, s: &SessionRecord) {
        assert_eq!(self.0.cli(&["DEL", &session_key(s)]).await.trim(), "1");
    }
    async fn forget_denials_behind_the_back(&self) {
        self.0.cli(&["FLUSHALL"]).await;
    }
    async fn cut_feeds(&self) {
        self.0.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    }
    async fn stop(&mut self) {
        self.0.kill().await;
    }
    async fn start_again(&mut self) {
        self.0.restart().await;
    }
}

/// A 3-primary Redis Cluster (for the checks that need no restart).
pub struct ClusterEngine(pub RedisCluster);

#[async_trait]
impl CacheEngine for ClusterEngine {
    async fn node(&self, mode: CacheMode, grace: Duration) -> Arc<CachedSessions> {
        redis_node(&self.0.url(), mode, grace).await
    }
    async fn remove_behind_the_back(&self, s: &SessionRecord) {
        let port = self.0.nodes[0].port.to_string();
        let out = crate::redis::cli_args(&["-c", "-p", &port, "DEL", &session_key(s)]).await;
        assert_eq!(out.trim(), "1");
    }
    async fn forget_denials_behind_the_back(&self) {
        for n in &self.0.nodes {
            n.cli(&["FLUSHALL"]).await;
        }
    }
    async fn cut_feeds(&self) {
        for n in &self.0.nodes {
            n.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        }
    }
    async fn stop(&mut self) {
        panic!("the cluster engine is not stopped by these tests")
    }
    async fn start_again(&mut self) {
        panic!("the cluster engine is not stopped by these tests")
    }
}

/// A primary, a replica and three Sentinels.
pub struct SentinelEngine(pub RedisSentinel);

#[async_trait]
impl CacheEngine for SentinelEngine {
    async fn node(&self, mode: CacheMode, grace: Duration) -> Arc<CachedSessions> {
        redis_node(&self.0.url(), mode, grace).await
    }
    async fn remove_behind_the_back(&self, s: &SessionRecord) {
        assert_eq!(
            self.0.primary.cli(&["DEL", &session_key(s)]).await.trim(),
            "1"
        );
    }
    async fn forget_denials_behind_the_back(&self) {
        self.0.primary.cli(&["FLUSHALL"]).await;
    }
    async fn cut_feeds(&self) {
        self.0
            .primary
            .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .await;
    }
    async fn stop(&mut self) {
        panic!("the Sentinel engine is not stopped by these tests")
    }
    async fn start_again(&mut self) {
        panic!("the Sentinel engine is not stopped by these tests")
    }
}

/// A private PostgreSQL.
pub struct PgEngine(pub PgServer);

impl PgEngine {
    pub async fn start() -> Self {
        Self(PgServer::start().await)
    }

    /// Run statements with the triggers off (`session_replication_role = replica`), so they
    /// announce nothing.
    async fn quietly(&self, statements: &[&str], bind: Option<&[u8]>) {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.0.url).await.unwrap();
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut c)
            .await
            .unwrap();
        for sql in statements {
            let q = sqlx::query(sql);
            let q = match bind {
                Some(b) => q.bind(b),
                None => q,
            };
            q.execute(&mut c).await.unwrap();
        }
    }
}

#[async_trait]
impl CacheEngine for PgEngine {
    async fn node(&self, mode: CacheMode, grace: Duration) -> Arc<CachedSessions> {
        let options = keyward_sql::SqlOptions {
            timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let store = Arc::new(
            SqlStore::open_with(&self.0.url.parse().unwrap(), options)
                .await
                .unwrap(),
        );
        let feed = Arc::new(store.feed().unwrap());
        cached(store.clone(), store, feed, mode, grace).await
    }
    async fn remove_behind_the_back(&self, s: &SessionRecord) {
        self.quietly(
            &["DELETE FROM sessions WHERE token_hash = $1"],
            Some(s.token_hash.as_bytes()),
        )
        .await;
    }
    async fn forget_denials_behind_the_back(&self) {
        self.quietly(
            &[
                "DELETE FROM denied_tokens",
                "DELETE FROM refresh_tokens",
                "DELETE FROM refresh_families",
            ],
            None,
        )
        .await;
    }
    async fn cut_feeds(&self) {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.0.url).await.unwrap();
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert!(!cut.is_empty(), "no listener to cut");
    }
    async fn stop(&mut self) {
        self.0.kill().await;
    }
    async fn start_again(&mut self) {
        self.0.restart().await;
    }
    fn replays(&self) -> bool {
        true
    }
}

/// Wait (bounded) until `node` answers `want` for the session.
pub async fn until_node_says(node: &CachedSessions, s: &SessionRecord, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.get(&s.token_hash).await.ok().flatten().is_some() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait (bounded) until `f` holds.
async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const NO_GRACE: Duration = Duration::ZERO;

/// Replicated nodes hold every session; a node started late loads what exists before it
/// serves; a revocation on one node is heard by the others.
pub async fn replicated_nodes_and_late_joiners(e: &dyn CacheEngine) {
    let a = e.node(CacheMode::Replicated, NO_GRACE).await;
    let b = e.node(CacheMode::Replicated, NO_GRACE).await;
    let early = session(UserId::new(), t0());
    a.create(&early).await.unwrap();
    until_node_says(&b, &early, true).await;
    let late = e.node(CacheMode::Replicated, NO_GRACE).await;
    e.remove_behind_the_back(&early).await;
    let strip = |s: SessionRecord| SessionRecord {
        ip: None,
        user_agent: None,
        ..s
    };
    assert_eq!(
        b.get(&early.token_hash).await.unwrap(),
        Some(strip(early.clone())),
        "from memory"
    );
    assert_eq!(
        late.get(&early.token_hash).await.unwrap(),
        Some(strip(early.clone())),
        "loaded at start"
    );
    let s = session(UserId::new(), t0());
    b.create(&s).await.unwrap();
    until_node_says(&a, &s, true).await;
    until_node_says(&late, &s, true).await;
    assert!(b.delete(&s.token_hash).await.unwrap().is_some());
    until_node_says(&a, &s, false).await;
    until_node_says(&late, &s, false).await;
}

/// A near cache fills on a read, follows touches, and drops what is revoked elsewhere; an
/// unknown token reads the store and is not cached.
pub async fn near_caches_fill_and_drop(e: &dyn CacheEngine) {
    let a = e.node(CacheMode::Near(100), NO_GRACE).await;
    let b = e.node(CacheMode::Near(100), NO_GRACE).await;
    let user = UserId::new();
    let (s1, s2) = (session(user, t0()), session(user, t0()));
    a.create(&s1).await.unwrap();
    a.create(&s2).await.unwrap();
    assert!(b.get(&s1.token_hash).await.unwrap().is_some());
    assert!(b.get(&s2.token_hash).await.unwrap().is_some());
    let later = s1.last_seen_at + time::Duration::minutes(5);
    a.touch(&s1.token_hash, later).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.get(&s1.token_hash).await.unwrap().map(|s| s.last_seen_at) != Some(later) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the touch never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a.delete_for_user(user, None).await.unwrap(), 2);
    until_node_says(&b, &s1, false).await;
    until_node_says(&b, &s2, false).await;
    let ghost = SessionToken::generate().unwrap().hash();
    assert_eq!(b.get(&ghost).await.unwrap(), None);
}

/// Denials and family revocations: loaded by a node that starts later, heard by every node,
/// answered from memory.
pub async fn denials_reach_every_node(e: &dyn CacheEngine) {
    let a = e.node(CacheMode::Near(100), NO_GRACE).await;
    let b = e.node(CacheMode::Replicated, NO_GRACE).await;
    let now = t0();
    let user = UserId::new();
    let family = RefreshFamily {
        id: SessionId::new_in(user.shard()),
        user_id: user,
        username: "dee".into(),
        created_at: now,
        expires_at: now + time::Duration::days(30),
    };
    let first = SessionToken::generate_in(user.shard()).unwrap().hash();
    a.create_family(&family, &first).await.unwrap();
    a.deny("jti-before", now + time::Duration::minutes(15))
        .await
        .unwrap();
    let late = e.node(CacheMode::Near(100), NO_GRACE).await;
    assert!(late.is_denied("jti-before", family.id, now).await.unwrap());
    a.deny("jti-after", now + time::Duration::minutes(15))
        .await
        .unwrap();
    assert!(a.revoke_family(family.id, now).await.unwrap());
    for n in [&b, &late] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(n
            .is_denied("jti-after", SessionId::new(), now)
            .await
            .unwrap()
            && n.is_denied("any", family.id, now).await.unwrap())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the feed never reached the node"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    e.forget_denials_behind_the_back().await;
    assert!(
        b.is_denied("jti-after", SessionId::new(), now)
            .await
            .unwrap(),
        "from memory"
    );
    assert!(
        late.is_denied("any", family.id, now).await.unwrap(),
        "from memory"
    );
    assert!(!b
        .is_denied(
            "jti-after",
            SessionId::new(),
            now + time::Duration::minutes(15)
        )
        .await
        .unwrap());
}

/// A feed cut from the server's side is noticed and repaired: what was revoked meanwhile is
/// not served once the node trusts its memory again, and the node does trust it again.
pub async fn a_cut_feed_is_repaired(e: &dyn CacheEngine) {
    let a = e.node(CacheMode::Replicated, NO_GRACE).await;
    let b = e.node(CacheMode::Replicated, NO_GRACE).await;
    let (s1, s2) = (session(UserId::new(), t0()), session(UserId::new(), t0()));
    a.create(&s1).await.unwrap();
    a.create(&s2).await.unwrap();
    until_node_says(&b, &s1, true).await;
    until_node_says(&b, &s2, true).await;
    let (catch_ups, loads) = (b.catch_ups(), b.loads());
    e.cut_feeds().await;
    // Revoked and created while the feeds reconnect.
    assert!(a.delete(&s1.token_hash).await.unwrap().is_some());
    let s3 = session(UserId::new(), t0());
    a.create(&s3).await.unwrap();
    until("the node noticed and caught up again", 10, || {
        b.catch_ups() > catch_ups && b.is_up()
    })
    .await;
    if e.replays() {
        assert_eq!(b.loads(), loads, "repaired from the log, not reloaded");
    }
    // Trusted again, and exact: the revocation made meanwhile holds, the creation is held.
    e.remove_behind_the_back(&s2).await;
    e.remove_behind_the_back(&s3).await;
    assert!(
        b.get(&s2.token_hash).await.unwrap().is_some(),
        "held in memory"
    );
    assert!(
        b.get(&s3.token_hash).await.unwrap().is_some(),
        "heard while catching up"
    );
    assert!(
        b.get(&s1.token_hash).await.unwrap().is_none(),
        "revoked meanwhile"
    );
    assert!(b.is_up());
}

/// The outage grace: a replicated node whose store is gone keeps validating what it holds,
/// refuses writes at once, keeps the uses it sees and writes them back; once the store is
/// back it catches up and a revocation holds everywhere again.
pub async fn outage_grace(e: &mut dyn CacheEngine) {
    let grace = Duration::from_secs(60);
    let a = e.node(CacheMode::Replicated, grace).await;
    let b = e.node(CacheMode::Replicated, grace).await;
    let held = session(UserId::new(), t0());
    let user = UserId::new();
    let family = RefreshFamily {
        id: SessionId::new_in(user.shard()),
        user_id: user,
        username: "eve".into(),
        created_at: t0(),
        expires_at: t0() + time::Duration::days(30),
    };
    a.create(&held).await.unwrap();
    a.create_family(
        &family,
        &SessionToken::generate_in(user.shard()).unwrap().hash(),
    )
    .await
    .unwrap();
    a.deny("jti-denied", t0() + time::Duration::minutes(15))
        .await
        .unwrap();
    until_node_says(&b, &held, true).await;
    // The denial travels on its own (on Redis, perhaps another shard's channel than the
    // session's): wait until b has heard it too, or the test would race the feed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !b
        .is_denied("jti-denied", family.id, t0())
        .await
        .unwrap_or(false)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the denial never reached b"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    e.stop().await;
    for n in [&a, &b] {
        until("the node noticed the store is gone", 10, || !n.is_up()).await;
        // The first read finds the store gone; from then on, memory.
        let got = n.get(&held.token_hash).await.unwrap();
        assert_eq!(got.map(|s| s.id), Some(held.id), "validated from memory");
        assert!(n.degraded(), "degraded within the grace");
        assert!(n.is_denied("jti-denied", family.id, t0()).await.unwrap());
        assert!(!n.is_denied("jti-other", family.id, t0()).await.unwrap());
        // Writes answer unavailable at once.
        let started = std::time::Instant::now();
        let fresh = session(UserId::new(), t0());
        assert!(matches!(
            n.create(&fresh).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            n.delete(&held.token_hash).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "no waiting for a dead store"
        );
        // An unknown session cannot be validated.
        let ghost = SessionToken::generate().unwrap().hash();
        assert!(n.get(&ghost).await.is_err());
    }
    // A use during the outage is kept and written back.
    let used = held.last_seen_at + time::Duration::minutes(3);
    a.touch(&held.token_hash, used).await.unwrap();
    e.start_again().await;
    until("the nodes caught up after the outage", 20, || {
        a.is_up() && b.is_up()
    })
    .await;
    assert!(!a.degraded() && !b.degraded());
    let fresh = e.node(CacheMode::Near(10), NO_GRACE).await;
    let stored = fresh.get(&held.token_hash).await.unwrap().unwrap();
    assert_eq!(
        stored.last_seen_at, used,
        "the use seen during the outage was written back"
    );
    // A revocation after the recovery holds everywhere.
    assert!(b.delete(&held.token_hash).await.unwrap().is_some());
    until_node_says(&a, &held, false).await;
}

/// Without a grace, a node whose store is gone answers unavailable at once; with a grace,
/// once it has passed.
pub async fn outage_without_or_past_the_grace(e: &mut dyn CacheEngine) {
    let none = e.node(CacheMode::Replicated, NO_GRACE).await;
    let short = e.node(CacheMode::Replicated, Duration::from_secs(4)).await;
    let s = session(UserId::new(), t0());
    none.create(&s).await.unwrap();
    until_node_says(&short, &s, true).await;
    e.stop().await;
    until("the nodes noticed the store is gone", 10, || {
        !none.is_up() && !short.is_up()
    })
    .await;
    assert!(
        none.get(&s.token_hash).await.is_err(),
        "no grace: unavailable at once"
    );
    assert!(!none.degraded());
    assert!(
        short.get(&s.token_hash).await.unwrap().is_some(),
        "within the grace"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while short.get(&s.token_hash).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the grace never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!short.degraded());
    e.start_again().await;
    until("the nodes caught up", 20, || none.is_up() && short.is_up()).await;
}

/// Generate the cache conformance tests for an engine: `$make` returns a fresh engine.
#[macro_export]
macro_rules! cache_conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use $crate::cache as c;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replicated_nodes_and_late_joiners() {
                let e = $make.await;
                c::replicated_nodes_and_late_joiners(&e).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn near_caches_fill_and_drop() {
                let e = $make.await;
                c::near_caches_fill_and_drop(&e).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn denials_reach_every_node() {
                let e = $make.await;
                c::denials_reach_every_node(&e).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_cut_feed_is_repaired() {
                let e = $make.await;
                c::a_cut_feed_is_repaired(&e).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn outage_grace() {
                let mut e = $make.await;
                c::outage_grace(&mut e).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn outage_without_or_past_the_grace() {
                let mut e = $make.await;
                c::outage_without_or_past_the_grace(&mut e).await
            }
        }
    };
}

/// Every check that needs no restart, in turn, on one deployment (a Cluster, Sentinel).
pub async fn cache_suite(e: &dyn CacheEngine) {
    replicated_nodes_and_late_joiners(e).await;
    near_caches_fill_and_drop(e).await;
    denials_reach_every_node(e).await;
    a_cut_feed_is_repaired(e).await;
}
