//! The Redis store on a Cluster and behind Sentinel: the whole conformance suite on one
//! private deployment each, and what only these topologies can show (slots, fail-over).

use keyward_core::{SessionStore, TokenStore};
use keyward_redis::{RedisOptions, RedisStore, Topology};
use keyward_testkit::conformance;
use keyward_testkit::redis::{RedisCluster, RedisSentinel};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_primary_cluster() {
    let cluster = RedisCluster::start().await;
    let store = Arc::new(
        RedisStore::connect(&cluster.url(), RedisOptions::default())
            .await
            .unwrap(),
    );
    assert_eq!(store.topology(), Topology::Cluster);
    conformance::session_suite(store.clone() as Arc<dyn SessionStore>).await;
    conformance::token_suite(store.clone() as Arc<dyn TokenStore>).await;
    // The keys really are spread: one user in each of the 256 shards puts keys on every
    // primary, whatever the suite's random users happened to hit.
    for shard in 0..=255u8 {
        let user = UserId::parse(&format!("{shard:02x}000000-0000-4000-8000-000000000000"))
            .expect("a uuid");
        assert_eq!(user.shard(), shard);
        let record = conformance::session(user, conformance::t0());
        store.create(&record).await.unwrap();
        assert_eq!(store.get(&record.token_hash).await.unwrap(), Some(record));
    }
    for node in &cluster.nodes {
        let n: u64 = node.cli(&["DBSIZE"]).await.trim().parse().unwrap();
        assert!(n > 0, "node {} holds no keys", node.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_behind_sentinel_with_replica_acknowledgement() {
    let sentinel = RedisSentinel::start().await;
    let store = Arc::new(
        RedisStore::connect(&sentinel.url(), RedisOptions::default())
            .await
            .unwrap(),
    );
    assert_eq!(store.topology(), Topology::Sentinel);
    assert_eq!(
        store.replicas_to_wait_for().await.unwrap(),
        1,
        "auto: the primary has a replica"
    );
    conformance::session_suite(store.clone() as Arc<dyn SessionStore>).await;
    conformance::token_suite(store.clone() as Arc<dyn TokenStore>).await;
}

// ------------------------------------------------------------------ node-local caches

use keyward_core::{SessionRecord, SessionToken, UserId};
use keyward_redis::cache::{CacheMode, CachedSessions};
use keyward_testkit::redis::RedisServer;
use std::time::Duration;

async fn node(redis: &RedisServer, mode: CacheMode) -> Arc<CachedSessions> {
    let store = RedisStore::connect(&redis.url(), RedisOptions::default())
        .await
        .unwrap();
    let cached = CachedSessions::start(store, mode).await.unwrap();
    assert!(cached.is_up(), "caught up before it serves");
    cached
}

/// Remove a session's key behind every cache's back (no feed message): a node that still
/// answers with it answers from its memory.
async fn remove_behind_the_back(redis: &RedisServer, s: &SessionRecord) {
    let key = format!(
        "{{kw.{:02x}}}:s:{}",
        s.token_hash.shard(),
        s.token_hash.to_hex()
    );
    assert_eq!(redis.cli(&["DEL", &key]).await.trim(), "1");
}

/// Wait (bounded) until `node` answers `want` for the session.
async fn until_node_says(node: &CachedSessions, s: &SessionRecord, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while node.get(&s.token_hash).await.unwrap().is_some() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never reached the node"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_nodes_hold_every_session_and_late_joiners_catch_up() {
    let redis = RedisServer::start().await;
    let a = node(&redis, CacheMode::Replicated).await;
    let b = node(&redis, CacheMode::Replicated).await;
    let early = conformance::session(UserId::new(), conformance::t0());
    a.create(&early).await.unwrap();
    until_node_says(&b, &early, true).await;
    // A node started now loads what exists before it serves.
    let late = node(&redis, CacheMode::Replicated).await;
    remove_behind_the_back(&redis, &early).await;
    assert_eq!(
        b.get(&early.token_hash).await.unwrap(),
        Some(early.clone()),
        "from memory"
    );
    assert_eq!(
        late.get(&early.token_hash).await.unwrap(),
        Some(early.clone()),
        "loaded at start"
    );

    // A revocation on one node is heard by the others before it is acknowledged.
    let s = conformance::session(UserId::new(), conformance::t0());
    b.create(&s).await.unwrap();
    until_node_says(&a, &s, true).await;
    until_node_says(&late, &s, true).await;
    assert!(b.delete(&s.token_hash).await.unwrap().is_some());
    until_node_says(&a, &s, false).await;
    until_node_says(&late, &s, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_fill_on_read_and_drop_on_revocation() {
    let redis = RedisServer::start().await;
    let a = node(&redis, CacheMode::Near(100)).await;
    let b = node(&redis, CacheMode::Near(100)).await;
    let user = UserId::new();
    let s1 = conformance::session(user, conformance::t0());
    let s2 = conformance::session(user, conformance::t0());
    a.create(&s1).await.unwrap();
    a.create(&s2).await.unwrap();
    assert!(b.get(&s1.token_hash).await.unwrap().is_some());
    assert!(b.get(&s2.token_hash).await.unwrap().is_some());
    // A touch on one node moves the cached copy on the other.
    let later = s1.last_seen_at + time::Duration::minutes(5);
    a.touch(&s1.token_hash, later).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while b.get(&s1.token_hash).await.unwrap().map(|s| s.last_seen_at) != Some(later) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the touch never reached the node"
        );
        tokio::task::yield_now().await;
    }
    // Revoke-all on one node empties the other's cache of that user's sessions.
    assert_eq!(a.delete_for_user(user, None).await.unwrap(), 2);
    until_node_says(&b, &s1, false).await;
    until_node_says(&b, &s2, false).await;
    // An unknown token is a miss that reads the store, and is not cached.
    let ghost = SessionToken::generate().unwrap().hash();
    assert_eq!(b.get(&ghost).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_that_loses_its_feed_is_bypassed_until_it_caught_up() {
    let mut redis = RedisServer::start().await;
    let a = node(&redis, CacheMode::Replicated).await;
    let s = conformance::session(UserId::new(), conformance::t0());
    a.create(&s).await.unwrap();
    redis.kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost feed went unnoticed"
        );
        tokio::task::yield_now().await;
    }
    assert!(a.ping().await.is_err(), "not ready while the feed is down");
    assert!(
        a.get(&s.token_hash).await.is_err(),
        "no answer from a cache that may be stale"
    );
    // Redis is back, empty: the node reconnects, reloads, and serves what Redis holds.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while a.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.get(&s.token_hash).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_family_revocations_reach_every_node_from_the_feed() {
    use keyward_core::{RefreshFamily, SessionId, TokenStore};
    let redis = RedisServer::start().await;
    let a = node(&redis, CacheMode::Near(100)).await;
    let b = node(&redis, CacheMode::Replicated).await;
    let now = conformance::t0();
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
    // A denial made before a node starts is loaded; one made after is heard.
    a.deny("jti-before", now + time::Duration::minutes(15))
        .await
        .unwrap();
    let late = node(&redis, CacheMode::Near(100)).await;
    assert!(late.is_denied("jti-before", family.id, now).await.unwrap());
    a.deny("jti-after", now + time::Duration::minutes(15))
        .await
        .unwrap();
    assert!(a.revoke_family(family.id, now).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for n in [&b, &late] {
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
            tokio::task::yield_now().await;
        }
    }
    // Answered from memory: with the keys gone from Redis behind the nodes' backs, they still
    // deny.
    redis.cli(&["FLUSHALL"]).await;
    assert!(b
        .is_denied("jti-after", SessionId::new(), now)
        .await
        .unwrap());
    assert!(late.is_denied("any", family.id, now).await.unwrap());
    // And a denial ends with its token.
    assert!(!b
        .is_denied(
            "jti-after",
            SessionId::new(),
            now + time::Duration::minutes(15)
        )
        .await
        .unwrap());
}
