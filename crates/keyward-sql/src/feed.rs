//! The change feed on PostgreSQL: triggers (migration `…_change_feed.sql`) append every change
//! to `kw_feed` under its bucket's next number and `pg_notify` it inside the changing
//! transaction; [`PgFeed`] listens.
//!
//! `LISTEN/NOTIFY` keeps no history, and sqlx's listener drops what was sent while it
//! reconnected. The numbers make that visible: one reader task forwards notifications, and
//! the feed task checks each bucket's numbers. A gap, or a reconnection, is repaired from
//! `kw_feed` exactly (revocations first), and only when the log no longer holds what was missed
//! (past [`FEED_RETENTION`]) does the cache load afresh.

use crate::copy::{BinaryCopy, Fields};
use crate::store::SqlStore;
use crate::store_error;
use async_trait::async_trait;
use futures_util::StreamExt;
use keyward_core::clock::from_unix_ms;
use keyward_core::feed::{
    ChangeFeed, Denials, FeedEvent, FeedMessage, LoadSink, Near, ReplicaSession,
};
use keyward_core::{SessionId, StoreError, StoreResult, TokenHash, UserId};
use sqlx::postgres::{PgListener, PgPool, PgPoolCopyExt};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedSender};

/// The notification channel.
pub const CHANNEL: &str = "kw_feed";

/// How long `kw_feed` keeps an event: a node cut off for longer loads afresh.
pub const FEED_RETENTION: Duration = Duration::from_secs(15 * 60);

const BUCKETS: usize = 256;

const HEADS: &str = "SELECT bucket, seq FROM kw_feed_heads";
/// The events of the given buckets after `last` and up to `head`, in order.
const MISSED: &str = "SELECT f.bucket, f.seq, f.event FROM kw_feed f \
     JOIN unnest($1::INTEGER[], $2::BIGINT[], $3::BIGINT[]) AS w(b, last, head) \
     ON f.bucket = w.b AND f.seq > w.last AND f.seq <= w.head ORDER BY f.bucket, f.seq";
/// Part `part` of `parts` of the sessions (by the first byte of their token hash), as binary
/// COPY: the columns of [`replica_session`].
fn sessions_copy(parts: u8, part: u8) -> String {
    format!(
        "COPY (SELECT token_hash, id, user_id, username, created_at, last_seen_at, expires_at, amr \
         FROM sessions WHERE get_byte(token_hash, 0) % {parts} = {part}) TO STDOUT (FORMAT binary)"
    )
}
/// How many parts a load reads at once: the server's backends scan them in parallel.
const LOAD_PARTS: u8 = 2;
/// How many sessions there are, about: the planner's estimate (the density the last ANALYZE
/// saw, times the table's pages now), or a count while the table was never analyzed (a count
/// of a million rows is a scan of its own; a stale estimate after a bulk insert would leave the
/// replica's table to grow a quarter at a time).
const ESTIMATE: &str = "SELECT CASE WHEN c.reltuples > 0 AND c.relpages > 0 \
     THEN (c.reltuples / c.relpages \
           * (pg_relation_size(c.oid) / current_setting('block_size')::FLOAT8))::BIGINT \
     ELSE (SELECT count(*) FROM sessions) END \
     FROM pg_class c WHERE c.oid = 'sessions'::regclass";
const DENIED: &str = "SELECT jti, expires_at FROM denied_tokens";
const REVOKED: &str = "SELECT id FROM refresh_families WHERE revoked_at IS NOT NULL";
/// Events older than the retention (by the database's clock, as the triggers stamp them).
pub(crate) const TRIM: &str = "DELETE FROM kw_feed \
     WHERE at < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - $1";

/// One row of [`sessions_copy`], in the columns' binary send formats (bytea and text as they
/// are, bigint as 8 bytes big-endian).
fn replica_session(f: &Fields<'_>) -> StoreResult<ReplicaSession> {
    let bad = || StoreError::Corrupt("a session row".into());
    let text = |i: usize| {
        f.get(i)
            .copied()
            .flatten()
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(bad)
    };
    let ms = |i: usize| {
        f.get(i)
            .copied()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| from_unix_ms(i64::from_be_bytes(b)))
            .ok_or_else(bad)
    };
    if f.len() != 8 {
        return Err(bad());
    }
    // integer: 4 bytes big-endian.
    let amr = f
        .get(7)
        .copied()
        .flatten()
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| keyward_core::Amr::from_bits(u8::try_from(i32::from_be_bytes(b)).unwrap_or(1)))
        .ok_or_else(bad)?;
    Ok(ReplicaSession {
        token_hash: f
            .first()
            .copied()
            .flatten()
            .and_then(TokenHash::from_slice)
            .ok_or_else(bad)?,
        id: SessionId::parse(text(1)?).ok_or_else(bad)?,
        user_id: UserId::parse(text(2)?).ok_or_else(bad)?,
        username: text(3)?.to_owned(),
        created_at: ms(4)?,
        last_seen_at: ms(5)?,
        expires_at: ms(6)?,
        amr,
    })
}

/// What the reader task saw.
enum Raw {
    /// Listening (again): anything before may have been missed.
    Listening,
    /// A notification's payload.
    Note(String),
    /// The connection broke.
    Broken,
}

/// The feed of a PostgreSQL [`SqlStore`].
pub struct PgFeed {
    pool: PgPool,
    resync: std::sync::Mutex<Option<UnboundedSender<()>>>,
}

impl std::fmt::Debug for PgFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFeed").finish_non_exhaustive()
    }
}

impl SqlStore {
    /// The change feed, on PostgreSQL (`None` on SQLite, which has none).
    pub fn feed(&self) -> Option<PgFeed> {
        match &self.pool {
            crate::store::Pool::Postgres(p) => Some(PgFeed {
                pool: p.clone(),
                resync: std::sync::Mutex::new(None),
            }),
            crate::store::Pool::Sqlite(_) => None,
        }
    }
}

/// A positioned notification: `<bucket>:<seq> <event>`.
fn positioned(payload: &str) -> Option<(usize, i64, &str)> {
    let (pos, event) = payload.split_once(' ')?;
    let (b, s) = pos.split_once(':')?;
    Some((b.parse().ok()?, s.parse().ok()?, event))
}

/// Keep reading notifications, reconnecting as needed; stops when the feed task is gone.
async fn read(pool: PgPool, tx: UnboundedSender<Raw>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            // A lost connection returns at once; this loop reconnects, with its own backoff.
            l.eager_reconnect(false);
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "the session feed cannot listen yet");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if tx.send(Raw::Listening).is_err() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    if tx.send(Raw::Note(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                // Whatever was said from here until listening again is gone from the channel
                // (not from the log).
                Ok(None) => {
                    tracing::warn!("the session feed's connection was lost");
                    if tx.send(Raw::Broken).is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the session feed's connection broke");
                    if tx.send(Raw::Broken).is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// The feed task: checks numbers, repairs gaps, answers resync requests.
struct Follower {
    pool: PgPool,
    sink: UnboundedSender<FeedMessage>,
    /// The last number delivered per bucket.
    last: Vec<i64>,
}

impl Follower {
    fn send(&self, m: FeedMessage) -> bool {
        self.sink.send(m).is_ok()
    }

    async fn heads(&self) -> Result<Vec<i64>, sqlx::Error> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(HEADS).fetch_all(&self.pool).await?;
        let mut heads = vec![0; BUCKETS];
        for (b, s) in rows {
            if let Some(h) = usize::try_from(b).ok().and_then(|b| heads.get_mut(b)) {
                *h = s;
            }
        }
        Ok(heads)
    }

    /// Start from the current heads and ask for a fresh load.
    async fn reload(&mut self) -> bool {
        match self.heads().await {
            Ok(h) => {
                self.last = h;
                self.send(FeedMessage::Reload)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the session feed cannot read its heads");
                self.send(FeedMessage::Lost)
            }
        }
    }

    /// Deliver what the buckets missed between `last` and `upto`, exactly and revocations
    /// first; `false` when the log no longer holds all of it.
    async fn repair(&mut self, upto: &[i64]) -> Result<bool, sqlx::Error> {
        let (mut b, mut l, mut h) = (vec![], vec![], vec![]);
        for (i, (last, head)) in self.last.iter().zip(upto).enumerate() {
            if head > last {
                b.push(i32::try_from(i).unwrap_or(0));
                l.push(*last);
                h.push(*head);
            }
        }
        if b.is_empty() {
            return Ok(true);
        }
        let rows: Vec<(i32, i64, String)> = sqlx::query_as(MISSED)
            .bind(&b)
            .bind(&l)
            .bind(&h)
            .fetch_all(&self.pool)
            .await?;
        let wanted: i64 = h.iter().zip(&l).map(|(h, l)| h - l).sum();
        if i64::try_from(rows.len()).unwrap_or(-1) != wanted {
            return Ok(false);
        }
        let events: Vec<FeedEvent> = rows
            .iter()
            .filter_map(|(_, _, e)| FeedEvent::parse(e))
            .collect();
        let removed: HashSet<TokenHash> = events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Deleted { token_hash } => Some(*token_hash),
                _ => None,
            })
            .collect();
        for e in events.iter().filter(|e| e.is_revocation()) {
            self.send(FeedMessage::Event(e.clone()));
        }
        for e in events.into_iter().filter(|e| !e.is_revocation()) {
            let gone = match &e {
                FeedEvent::Created(s) => removed.contains(&s.token_hash),
                FeedEvent::Touched { token_hash, .. } => removed.contains(token_hash),
                _ => false,
            };
            if !gone {
                self.send(FeedMessage::Event(e));
            }
        }
        for (i, head) in b.iter().zip(&h) {
            if let Some(last) = usize::try_from(*i).ok().and_then(|i| self.last.get_mut(i)) {
                *last = *head;
            }
        }
        Ok(true)
    }

    /// After listening again: deliver what was missed, or ask for a reload.
    async fn catch_up(&mut self) -> bool {
        let repaired = match self.heads().await {
            Ok(heads) => self.repair(&heads).await,
            Err(e) => Err(e),
        };
        match repaired {
            Ok(true) => self.send(FeedMessage::CaughtUp),
            Ok(false) => {
                tracing::info!("the change log no longer holds what this node missed; reloading");
                self.reload().await
            }
            Err(e) => {
                tracing::warn!(error = %e, "the session feed cannot read what it missed; reloading");
                self.reload().await
            }
        }
    }

    async fn note(&mut self, payload: &str) -> bool {
        let Some((b, seq, event)) = positioned(payload) else {
            // Markers carry no number.
            return match FeedEvent::parse(payload) {
                Some(e) => self.send(FeedMessage::Event(e)),
                None => true,
            };
        };
        let Some(last) = self.last.get(b).copied() else {
            return true;
        };
        if seq <= last {
            return true;
        }
        if seq > last + 1 {
            // A notification went missing: read it from the log, then go on.
            let mut upto = self.last.clone();
            if let Some(u) = upto.get_mut(b) {
                *u = seq - 1;
            }
            match self.repair(&upto).await {
                Ok(true) => {}
                _ => {
                    return self.send(FeedMessage::Lost) && self.reload().await;
                }
            }
        }
        if let Some(l) = self.last.get_mut(b) {
            *l = seq;
        }
        match FeedEvent::parse(event) {
            Some(e) => self.send(FeedMessage::Event(e)),
            None => true,
        }
    }
}

#[async_trait]
impl ChangeFeed for PgFeed {
    async fn start(&self, sink: UnboundedSender<FeedMessage>) -> StoreResult<()> {
        let (raw_tx, mut raw) = mpsc::unbounded_channel();
        let (resync_tx, mut resync) = mpsc::unbounded_channel();
        *self.resync.lock().unwrap_or_else(|p| p.into_inner()) = Some(resync_tx);
        tokio::spawn(read(self.pool.clone(), raw_tx));
        let mut f = Follower {
            pool: self.pool.clone(),
            sink,
            last: vec![0; BUCKETS],
        };
        tokio::spawn(async move {
            // The first `Listening` starts from the heads with a load; later ones repair. A
            // resync asked for while not listening waits for the listener: a node must not
            // trust memory that no connection keeps current.
            let (mut listening, mut reload) = (false, true);
            loop {
                let alive = tokio::select! {
                    r = raw.recv() => match r {
                        Some(Raw::Listening) => {
                            listening = true;
                            if std::mem::take(&mut reload) {
                                f.reload().await
                            } else {
                                f.catch_up().await
                            }
                        }
                        Some(Raw::Broken) => {
                            listening = false;
                            f.send(FeedMessage::Lost)
                        }
                        Some(Raw::Note(p)) => f.note(&p).await,
                        None => false,
                    },
                    Some(()) = resync.recv() => {
                        if listening {
                            f.reload().await
                        } else {
                            reload = true;
                            true
                        }
                    }
                };
                if !alive {
                    return;
                }
            }
        });
        Ok(())
    }

    async fn marker(&self, _near: Near<'_>, node: &str, id: u64) -> StoreResult<()> {
        let m = FeedEvent::Marker {
            node: node.to_owned(),
            id,
        };
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(m.encode())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    fn resync(&self) {
        if let Some(tx) = &*self.resync.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(());
        }
    }

    async fn load_sessions(&self, sink: &mut dyn LoadSink) -> StoreResult<u64> {
        let estimate: i64 = sqlx::query_scalar(ESTIMATE)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        sink.expect(u64::try_from(estimate).unwrap_or(0));
        let mut parts = Vec::new();
        for part in 0..LOAD_PARTS {
            let rows = self
                .pool
                .copy_out_raw(&sessions_copy(LOAD_PARTS, part))
                .await
                .map_err(store_error)?;
            parts.push(rows.map(move |chunk| (part, chunk)));
        }
        let mut readers: Vec<BinaryCopy> = (0..LOAD_PARTS).map(|_| BinaryCopy::default()).collect();
        let mut chunks = futures_util::stream::select_all(parts);
        let mut n = 0;
        while let Some((part, chunk)) = chunks.next().await {
            let chunk = chunk.map_err(store_error)?;
            let reader = readers
                .get_mut(usize::from(part))
                .ok_or_else(|| StoreError::Corrupt("a load part".into()))?;
            reader.feed::<StoreError>(&chunk, &mut |f| {
                sink.session(replica_session(f)?);
                n += 1;
                Ok(())
            })?;
        }
        for r in &readers {
            r.finish()?;
        }
        Ok(n)
    }

    async fn load_denials(&self) -> StoreResult<Denials> {
        let tokens: Vec<(String, i64)> = sqlx::query_as(DENIED)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let families: Vec<String> = sqlx::query_scalar(REVOKED)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(Denials {
            tokens: tokens
                .into_iter()
                .map(|(j, u)| (j, from_unix_ms(u)))
                .collect(),
            families: families
                .iter()
                .filter_map(|f| SessionId::parse(f))
                .collect(),
        })
    }
}
