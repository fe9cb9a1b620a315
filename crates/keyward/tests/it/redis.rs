//! The Redis store on a Cluster and behind Sentinel: the whole conformance suite on one
//! private deployment each, and what only these topologies can show (slots, fail-over).

use keyward_core::{SessionStore, TokenStore, UserId};
use keyward_redis::{RedisOptions, RedisStore, Topology};
use keyward_testkit::conformance;
use keyward_testkit::redis::{RedisCluster, RedisSentinel};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_primary_cluster() {
    let cluster = RedisCluster::start().await;
    let store = Arc::new(
        RedisStore::connect(&cluster.url().parse().unwrap(), RedisOptions::default())
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
        RedisStore::connect(&sentinel.url().parse().unwrap(), RedisOptions::default())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_conformance_on_a_three_primary_cluster() {
    let e = keyward_testkit::cache::ClusterEngine(RedisCluster::start().await);
    keyward_testkit::cache::cache_suite(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_conformance_behind_sentinel() {
    let e = keyward_testkit::cache::SentinelEngine(RedisSentinel::start().await);
    keyward_testkit::cache::cache_suite(&e).await;
}
