//! The change feed on Redis: the scripts publish every change on `kw:feed` from inside the
//! change, and [`RedisFeed`] follows the channel with its own subscriber connection.
//!
//! Pub/sub keeps no history: whatever is said while a subscriber is disconnected is lost. So on
//! every (re)connection, and whenever the channel falls behind, the feed says
//! [`FeedMessage::Lost`] and then [`FeedMessage::Reload`], and the cache loads afresh. That load
//! is fast: every script that changes a session also keeps a packed copy of what a replica
//! needs, concatenated in short strings per shard (`{kw.XX}:rx:YY`), and
//! [`RedisFeed::load_sessions`] fetches each shard's 256 strings with one `MGET`, shards in parallel (on a
//! Cluster, each from its node).
//! docs/benchmarks.md has the figures that chose this over a replayable log.

use crate::{unavailable, RedisStore};
use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use keyward_core::clock::from_unix_ms;
use keyward_core::feed::{
    ChangeFeed, Denials, FeedEvent, FeedMessage, LoadSink, Near, ReplicaSession,
};
use keyward_core::{Amr, SessionId, SessionRecord, StoreError, StoreResult, TokenHash, UserId};
use tokio::sync::mpsc::UnboundedSender;

/// The channel every change is announced on.
pub const FEED: &str = "kw:feed";

/// How long after a (re)connection the feed waits for the other connections of a burst.
const RECONNECT_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Shards loaded at once.
const PARALLEL_SHARDS: usize = 8;

/// The packed form of a session in `{kw.XX}:rx`: the username's length (one byte), the session
/// id and the user id (16 bytes each), created, last seen and expires (8-byte big-endian ms),
/// the `amr` bits (one byte), then the username. Touches rewrite bytes 42–49 in place.
pub(crate) fn packed(s: &SessionRecord) -> StoreResult<Vec<u8>> {
    let name = s.username.as_bytes();
    let len = u8::try_from(name.len())
        .map_err(|_| StoreError::Corrupt("a username longer than 255 bytes".into()))?;
    let mut v = Vec::with_capacity(58 + name.len());
    v.push(len);
    v.extend_from_slice(s.id.as_uuid_bytes());
    v.extend_from_slice(s.user_id.as_uuid().as_bytes());
    for t in [s.created_at, s.last_seen_at, s.expires_at] {
        v.extend_from_slice(&keyward_core::clock::to_unix_ms(t).to_be_bytes());
    }
    v.push(s.amr.bits());
    v.extend_from_slice(name);
    Ok(v)
}

/// Read `n` bytes.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = b.split_at_checked(n)?;
    *b = rest;
    Some(head)
}

fn time(b: &mut &[u8]) -> Option<time::OffsetDateTime> {
    let raw: [u8; 8] = take(b, 8)?.try_into().ok()?;
    Some(from_unix_ms(i64::from_be_bytes(raw)))
}

/// The sessions of one shard's concatenated `HGETALL`: raw token hash, then packed value.
fn unpack_shard(mut b: &[u8], each: &mut (dyn FnMut(ReplicaSession) + Send)) -> StoreResult<u64> {
    let corrupt = || StoreError::Corrupt("a packed session in a replica index".into());
    let mut n = 0;
    while !b.is_empty() {
        let hash =
            TokenHash::from_slice(take(&mut b, 32).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
        let len = usize::from(
            *take(&mut b, 1)
                .and_then(|l| l.first())
                .ok_or_else(corrupt)?,
        );
        let id: [u8; 16] = take(&mut b, 16)
            .and_then(|x| x.try_into().ok())
            .ok_or_else(corrupt)?;
        let user: [u8; 16] = take(&mut b, 16)
            .and_then(|x| x.try_into().ok())
            .ok_or_else(corrupt)?;
        let created_at = time(&mut b).ok_or_else(corrupt)?;
        let last_seen_at = time(&mut b).ok_or_else(corrupt)?;
        let expires_at = time(&mut b).ok_or_else(corrupt)?;
        let amr = take(&mut b, 1)
            .and_then(|a| a.first())
            .map(|a| Amr::from_bits(*a))
            .ok_or_else(corrupt)?;
        let name = take(&mut b, len).ok_or_else(corrupt)?;
        each(ReplicaSession {
            token_hash: hash,
            id: SessionId::from_bytes(id),
            user_id: UserId::from_bytes(user),
            username: String::from_utf8_lossy(name).into_owned(),
            created_at,
            last_seen_at,
            expires_at,
            amr,
        });
        n += 1;
    }
    Ok(n)
}

/// The feed of a [`RedisStore`].
pub struct RedisFeed {
    store: RedisStore,
    subscriber: SubscriberClient,
    /// Where a resync request goes (the task that answers it holds the sink).
    resync: std::sync::Mutex<Option<UnboundedSender<FeedMessage>>>,
}

impl std::fmt::Debug for RedisFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFeed").finish_non_exhaustive()
    }
}

impl RedisFeed {
    /// A feed with a subscriber connection of its own (not connected until started).
    pub fn new(store: RedisStore) -> StoreResult<Self> {
        let subscriber = Builder::from_config(store.config().clone())
            .with_connection_config(|c| {
                c.connection_timeout = store.options().timeout;
                c.internal_command_timeout = store.options().timeout;
            })
            .with_performance_config(|p| {
                // Room for bursts of changes while the feed task waits for a core; falling
                // behind means a reload.
                p.broadcast_channel_capacity = 16_384;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build_subscriber_client()
            .map_err(unavailable)?;
        Ok(Self {
            store,
            subscriber,
            resync: std::sync::Mutex::new(None),
        })
    }

    async fn subscribe_and_reload(
        subscriber: &SubscriberClient,
        sink: &UnboundedSender<FeedMessage>,
    ) {
        match subscriber.subscribe(FEED).await {
            Ok(()) => {
                let _ = sink.send(FeedMessage::Reload);
            }
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to the session feed failed; retrying on reconnection");
                let _ = sink.send(FeedMessage::Lost);
            }
        }
    }
}

#[async_trait]
impl ChangeFeed for RedisFeed {
    async fn start(&self, sink: UnboundedSender<FeedMessage>) -> StoreResult<()> {
        *self.resync.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink.clone());
        let mut messages = self.subscriber.message_rx();
        let to = sink.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(m) => {
                        let Some(text) = m.value.as_str() else {
                            continue;
                        };
                        if let Some(e) = FeedEvent::parse(&text) {
                            if to.send(FeedMessage::Event(e)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the session feed fell behind");
                        if to.send(FeedMessage::Lost).is_err()
                            || to.send(FeedMessage::Reload).is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let mut errors = self.subscriber.error_rx();
        let to = sink.clone();
        tokio::spawn(async move {
            while errors.recv().await.is_ok() {
                if to.send(FeedMessage::Lost).is_err() {
                    return;
                }
            }
        });
        // Every connection, the first included: whatever was said before it is not heard.
        let mut reconnects = self.subscriber.reconnect_rx();
        let (subscriber, to) = (self.subscriber.clone(), sink);
        tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                // A Cluster's connections come up one after the other: one reload for a burst.
                tokio::time::sleep(RECONNECT_SETTLE).await;
                while reconnects.try_recv().is_ok() {}
                if to.send(FeedMessage::Lost).is_err() {
                    return;
                }
                Self::subscribe_and_reload(&subscriber, &to).await;
            }
        });
        let _connection = self.subscriber.connect();
        match tokio::time::timeout(
            self.store.options().timeout,
            self.subscriber.wait_for_connect(),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StoreError::Unavailable(
                "the session feed did not connect in time".into(),
            )),
        }
    }

    async fn marker(&self, near: Near<'_>, node: &str, id: u64) -> StoreResult<()> {
        let key = match near {
            Near::Shard(s) => crate::tag(s),
            Near::Denial(jti) => crate::tokens::deny_key(jti),
            Near::Nothing => FEED.to_owned(),
        };
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let marker = FeedEvent::Marker {
            node: node.to_owned(),
            id,
        };
        let _: i64 = self
            .store
            .client()
            .custom(
                CustomCommand::new_static("PUBLISH", ClusterHash::Custom(slot), false),
                vec![FEED.to_owned(), marker.encode()],
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn resync(&self) {
        let sink = self
            .resync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sink) = sink {
            let subscriber = self.subscriber.clone();
            tokio::spawn(async move {
                if subscriber.is_connected() {
                    Self::subscribe_and_reload(&subscriber, &sink).await;
                }
            });
        }
    }

    async fn load_sessions(&self, sink: &mut dyn LoadSink) -> StoreResult<u64> {
        use futures_util::{StreamExt, TryStreamExt};
        let store = &self.store;
        let mut shards = futures_util::stream::iter(0..=255u8)
            .map(|shard| async move {
                // One slot (the shard's tag): one MGET, also on a Cluster. A plain command,
                // not a script: the server only copies the strings out.
                let tag = crate::tag(shard);
                let keys: Vec<String> = (0..=255u8).map(|i| format!("{tag}:rx:{i:02x}")).collect();
                let blobs: Vec<Option<bytes::Bytes>> =
                    store.client().mget(keys).await.map_err(unavailable)?;
                Ok::<_, StoreError>(blobs)
            })
            .buffer_unordered(PARALLEL_SHARDS);
        let mut n = 0;
        while let Some(blobs) = shards.try_next().await? {
            let first = n == 0;
            for blob in blobs.iter().flatten() {
                n += unpack_shard(blob, &mut |s| sink.session(s))?;
            }
            if first {
                // Users' shards fill evenly: the first tells about them all.
                sink.expect(n * 256 + n * 8);
            }
        }
        Ok(n)
    }

    async fn load_denials(&self) -> StoreResult<Denials> {
        use futures_util::{StreamExt, TryStreamExt};
        let store = &self.store;
        let mut shards = futures_util::stream::iter(0..=255u8)
            .map(|shard| async move {
                let (denied, families): (Vec<String>, Vec<String>) = store
                    .eval(
                        &crate::scripts::LOAD_SHARD_DENIALS,
                        crate::tag(shard),
                        vec![crate::tag(shard)],
                    )
                    .await?;
                Ok::<_, StoreError>((denied, families))
            })
            .buffer_unordered(PARALLEL_SHARDS);
        let mut denials = Denials::default();
        while let Some((denied, families)) = shards.try_next().await? {
            for pair in denied.chunks_exact(2) {
                if let [jti, until] = pair {
                    let until = until.parse::<f64>().unwrap_or(0.0) as i64;
                    denials.tokens.push((jti.clone(), from_unix_ms(until)));
                }
            }
            denials
                .families
                .extend(families.iter().filter_map(|f| SessionId::parse(f)));
        }
        Ok(denials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_sessions_unpack() {
        let user = UserId::new();
        let s = SessionRecord {
            id: SessionId::new_in(user.shard()),
            token_hash: keyward_core::SessionToken::generate_in(user.shard())
                .unwrap()
                .hash(),
            user_id: user,
            username: "ada".into(),
            created_at: from_unix_ms(1_800_000_000_001),
            last_seen_at: from_unix_ms(1_800_000_000_002),
            expires_at: from_unix_ms(1_800_000_000_003),
            ip: Some("192.0.2.1".into()),
            user_agent: None,
            amr: keyward_core::Amr::PWD_OTP,
        };
        let mut blob = s.token_hash.as_bytes().to_vec();
        blob.extend(packed(&s).unwrap());
        let mut got = vec![];
        let n = unpack_shard(&[blob.clone(), blob].concat(), &mut |r| got.push(r)).unwrap();
        assert_eq!(n, 2);
        assert_eq!(got[0], ReplicaSession::from(&s));
        assert!(unpack_shard(&[1, 2, 3], &mut |_| {}).is_err());
        let key = crate::sessions::session_key(&s.token_hash);
        assert_eq!(
            key.get(10..).and_then(keyward_core::feed::hash_from_hex),
            Some(s.token_hash)
        );
    }
}
