//! keyward's Redis backend: sessions, refresh-token families and the access-token deny list on
//! Redis standalone, behind Sentinel, or on a Redis Cluster.
//!
//! # Layout
//! Everything of one user lives under one hash tag, `{kw.XX}` where `XX` is the user's shard
//! ([`UserId::shard`](keyward_core::UserId::shard)): their sessions, the session-id map, the
//! per-user index, their refresh families and tokens. Session tokens, session ids and refresh
//! tokens are minted in the owner's shard, so every key a change needs is found from the
//! presented token alone and every change is one Lua script on one slot: atomic on a Cluster
//! as on a single server.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{kw.XX}:s:<token sha-256>` | hash | a session |
//! | `{kw.XX}:i:<session id>` | string | the token hash of a session, for revocation by id |
//! | `{kw.XX}:us:<user id>` | sorted set | the token hashes of a user's sessions |
//! | `{kw.XX}:f:<family id>` | hash | a refresh family (`r` set once revoked) |
//! | `{kw.XX}:r:<token sha-256>` | hash | a refresh token: its family, and once used, when and its successor |
//! | `{kw.XX}:uf:<user id>` | set | a user's family ids |
//! | `{kw.XX}:rx:YY` | string | the shard's sessions whose hash's second byte is `YY`, packed as a replica needs them (see [`feed`]) |
//! | `{kw.XX}:dl` | sorted set | denied access tokens (`jti` by expiry); `XX`: the first byte of the jti's SHA-256 |
//! | `{kw.XX}:rf` | hash | the shard's revoked families (id → end), loaded by cached nodes |
//!
//! Expiry is Redis's own: every key carries a TTL, so an abandoned session or family
//! disappears without a sweeper, and the per-user indexes, whose entries can outlive their
//! sessions, are pruned whenever they are read and expire with their last session.
//!
//! # Durability
//! With replicas, every write a client is told about is followed by `WAIT` for a replica's
//! acknowledgement (see [`RedisOptions::wait_replicas`]); a write that is not acknowledged in
//! time answers [`StoreError::Unavailable`] rather than success.
#![deny(missing_docs)]

pub mod feed;
mod scripts;
mod sessions;
mod throttle;
mod tokens;
pub mod url;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, InfoKind};
use keyward_core::{StoreError, StoreResult, StoreUrl};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use url::Topology;

/// How many replicas must acknowledge a write before it is reported done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReplicas {
    /// One while the primary reports a connected replica, none otherwise: re-read every
    /// second and after any write a replica failed to acknowledge, so a primary that lost its
    /// last replica (or was just promoted and has none yet) keeps taking writes.
    Auto,
    /// Exactly this many (0 turns waiting off).
    Count(u32),
}

/// Settings of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Idle timeout of sessions: a session's key expires this long after its last use
    /// (or at its absolute expiry, whichever is first).
    pub idle_timeout: time::Duration,
    /// Bound on connecting and on every command; past it the call fails as unavailable.
    pub timeout: Duration,
    /// Replica acknowledgements to wait for after each write.
    pub wait_replicas: WaitReplicas,
    /// How long `WAIT` may block.
    pub wait_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            idle_timeout: time::Duration::minutes(30),
            timeout: Duration::from_secs(2),
            wait_replicas: WaitReplicas::Auto,
            wait_timeout: Duration::from_millis(500),
        }
    }
}

/// A Redis store: implements [`SessionStore`](keyward_core::SessionStore) and
/// [`TokenStore`](keyward_core::TokenStore). Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: Config,
    topology: Topology,
    options: RedisOptions,
    /// Replica count to wait for when fixed; `None` for auto.
    wait_fixed: Option<i64>,
    /// Auto: the last count read, and when (ms since `started`); -1 when it must be re-read.
    wait_auto: AtomicI64,
    wait_read_at: AtomicI64,
    /// When the last sweeps of sessions and of tokens ran (ms since `started`; -1: never).
    purged_at: [AtomicI64; 2],
    started: std::time::Instant,
}

impl RedisStore {
    /// Connect to `url` (see [`url`] for the forms). Waits up to the timeout for the first
    /// connection; when Redis is down the store still starts, answers unavailable, and keeps
    /// reconnecting in the background.
    pub async fn connect(url: &StoreUrl, options: RedisOptions) -> Result<Self, url::UrlError> {
        let (config, topology) = url::parse(url)?;
        let timeout = options.timeout;
        let client = Builder::from_config(config.clone())
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                // Retrying a command after a reconnection could apply a write twice, and
                // waiting longer than the timeout is what callers are promised never happens.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()
            .map_err(|e| url::UrlError(format!("invalid client settings: {}", e.details())))?;
        let _connection = client.connect();
        match tokio::time::timeout(timeout, client.wait_for_connect()).await {
            Ok(Ok(())) => warn_unless_noeviction(&client).await,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis is not reachable yet; retrying in the background")
            }
            Err(_) => tracing::warn!("Redis did not answer in time; retrying in the background"),
        }
        let wait_fixed = match options.wait_replicas {
            WaitReplicas::Auto => None,
            WaitReplicas::Count(n) => Some(i64::from(n)),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                config,
                topology,
                options,
                wait_fixed,
                wait_auto: AtomicI64::new(-1),
                wait_read_at: AtomicI64::new(0),
                purged_at: [AtomicI64::new(-1), AtomicI64::new(-1)],
                started: std::time::Instant::now(),
            }),
        })
    }

    /// The deployment kind.
    pub fn topology(&self) -> Topology {
        self.inner.topology
    }

    /// The client configuration, for the change feed's own connection.
    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The client, for the change feed.
    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Check the server answers.
    pub async fn ping(&self) -> StoreResult<()> {
        let _: String = self.inner.client.ping(None).await.map_err(unavailable)?;
        Ok(())
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Replica acknowledgements each write waits for now.
    pub async fn replicas_to_wait_for(&self) -> StoreResult<i64> {
        if let Some(n) = self.inner.wait_fixed {
            return Ok(n);
        }
        let known = self.inner.wait_auto.load(Ordering::Relaxed);
        let age = self.elapsed_ms() - self.inner.wait_read_at.load(Ordering::Relaxed);
        if known >= 0 && age < 1_000 {
            return Ok(known);
        }
        let resolved = match self.inner.topology {
            // A cluster's replicas are per shard; asking one node would not tell about the
            // others: a cluster waits only when given a count.
            Topology::Cluster => 0,
            Topology::Standalone | Topology::Sentinel => {
                let info: String = self
                    .inner
                    .client
                    .info(Some(InfoKind::Replication))
                    .await
                    .map_err(unavailable)?;
                let replicas = info
                    .lines()
                    .find_map(|l| l.strip_prefix("connected_slaves:"))
                    .and_then(|n| n.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                i64::from(replicas > 0)
            }
        };
        let before = self.inner.wait_auto.swap(resolved, Ordering::Relaxed);
        self.inner
            .wait_read_at
            .store(self.elapsed_ms(), Ordering::Relaxed);
        if before != resolved {
            tracing::info!(
                replicas = resolved,
                "writes wait for this many replica acknowledgements"
            );
        }
        Ok(resolved)
    }

    /// After a write to the slot of `key`: wait until enough replicas have it, or fail.
    pub(crate) async fn acknowledged(&self, key: &str) -> StoreResult<()> {
        let want = self.replicas_to_wait_for().await?;
        if want == 0 {
            return Ok(());
        }
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let timeout_ms =
            i64::try_from(self.inner.options.wait_timeout.as_millis()).unwrap_or(i64::MAX);
        let got: i64 = self
            .inner
            .client
            .custom(
                CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false),
                vec![want, timeout_ms],
            )
            .await
            .map_err(unavailable)?;
        if got < want {
            // Re-read the replica count on the next write (auto): the replica may be gone.
            self.inner.wait_auto.store(-1, Ordering::Relaxed);
            metrics::counter!("keyward_store_errors_total", "store" => "redis").increment(1);
            tracing::warn!(
                wanted = want,
                acknowledged = got,
                "a write was not acknowledged by a replica in time"
            );
            return Err(StoreError::Unavailable(
                "a write was not acknowledged by a replica in time".into(),
            ));
        }
        Ok(())
    }

    /// Whether an hour has passed since the last sweep of `what` (and claim this one): a
    /// sweep walks the whole key space, and keys expire by themselves in between.
    pub(crate) fn purge_due(&self, what: Sweep) -> bool {
        let now = self.elapsed_ms();
        let Some(at) = self.inner.purged_at.get(what as usize) else {
            return false;
        };
        let last = at.load(Ordering::Relaxed);
        (last < 0 || now - last >= 3_600_000)
            && at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn options(&self) -> &RedisOptions {
        &self.inner.options
    }
}

/// What a sweep cleans.
#[derive(Clone, Copy)]
pub(crate) enum Sweep {
    Sessions = 0,
    Tokens = 1,
}

/// Under memory pressure Redis may evict keys that carry a TTL (every key here does) unless
/// its policy is `noeviction`: an evicted index, family or deny entry would undo a revocation.
/// Managed services often refuse `CONFIG`; then nothing is said.
async fn warn_unless_noeviction(client: &Client) {
    let policy: Result<Vec<String>, _> = client
        .custom(
            CustomCommand::new_static("CONFIG", ClusterHash::Random, false),
            vec!["GET", "maxmemory-policy"],
        )
        .await;
    if let Ok(reply) = policy {
        if let Some(p) = reply.get(1).filter(|p| p.as_str() != "noeviction") {
            tracing::warn!(
                maxmemory_policy = %p,
                "Redis may evict keys under memory pressure; an evicted key can undo a revocation: set maxmemory-policy noeviction"
            );
        }
    }
}

/// Map a client error: unreachable, slow or failing Redis is "unavailable" (HTTP 503).
pub(crate) fn unavailable(e: Error) -> StoreError {
    metrics::counter!("keyward_store_errors_total", "store" => "redis").increment(1);
    match e.kind() {
        ErrorKind::Parse => StoreError::Corrupt(e.details().to_owned()),
        _ => StoreError::Unavailable(Box::new(e)),
    }
}

/// The hash tag of a shard: every key of that shard starts with it.
pub(crate) fn tag(shard: u8) -> String {
    format!("{{kw.{shard:02x}}}")
}

impl RedisStore {
    /// Every key matching `pattern`, on every primary. For maintenance only: it walks the
    /// whole key space.
    pub(crate) async fn scan(&self, pattern: &str) -> StoreResult<Vec<String>> {
        use futures_util::TryStreamExt;
        let client = self.client();
        let keys: Vec<fred::types::Key> = match self.inner.topology {
            Topology::Cluster => {
                client
                    .scan_cluster_buffered(pattern, Some(500), None)
                    .try_collect()
                    .await
            }
            Topology::Standalone | Topology::Sentinel => {
                client
                    .scan_buffered(pattern, Some(500), None)
                    .try_collect()
                    .await
            }
        }
        .map_err(unavailable)?;
        Ok(keys.into_iter().filter_map(|k| k.into_string()).collect())
    }
}
