//! [`SessionStore`] on Redis.

use crate::scripts::*;
use crate::{tag, unavailable, RedisStore};
use async_trait::async_trait;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::FromValue;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    Amr, SessionId, SessionRecord, SessionStore, StoreError, StoreResult, TokenHash, UserId,
};
use std::collections::HashMap;
use time::OffsetDateTime;

pub(crate) fn session_key(h: &TokenHash) -> String {
    format!("{}:s:{}", tag(h.shard()), h.to_hex())
}

pub(crate) fn index_key(user: UserId) -> String {
    format!("{}:us:{}", tag(user.shard()), user)
}

fn ms(t: OffsetDateTime) -> String {
    to_unix_ms(t).to_string()
}

/// The fields a session is stored as.
fn fields(s: &SessionRecord) -> Vec<String> {
    let mut f = vec![
        "i".into(),
        s.id.to_string(),
        "u".into(),
        s.user_id.to_string(),
        "n".into(),
        s.username.clone(),
        "c".into(),
        ms(s.created_at),
        "l".into(),
        ms(s.last_seen_at),
        "e".into(),
        ms(s.expires_at),
        "a".into(),
        s.amr.bits().to_string(),
    ];
    if let Some(ip) = &s.ip {
        f.extend(["ip".into(), ip.clone()]);
    }
    if let Some(ua) = &s.user_agent {
        f.extend(["ua".into(), ua.clone()]);
    }
    f
}

/// Milliseconds a session has left from its last use, given the idle timeout (at least 1).
fn ttl_ms(s: &SessionRecord, idle: time::Duration) -> i64 {
    let end = s.valid_until(idle);
    ((end - s.last_seen_at).whole_milliseconds() as i64).max(1)
}

fn decode(hash: Option<TokenHash>, pairs: Vec<String>) -> StoreResult<Option<SessionRecord>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut m: HashMap<String, String> = HashMap::with_capacity(pairs.len() / 2);
    let mut it = pairs.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    record(hash, m).map(Some)
}

pub(crate) fn record(
    hash: Option<TokenHash>,
    mut m: HashMap<String, String>,
) -> StoreResult<SessionRecord> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("session field {what}"));
    let time = |m: &HashMap<String, String>, k: &str| {
        m.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .map(from_unix_ms)
            .ok_or_else(|| corrupt(k))
    };
    let token_hash = match hash {
        Some(h) => h,
        None => m
            .get("h")
            .and_then(|h| hash_from_hex(h))
            .ok_or_else(|| corrupt("h"))?,
    };
    Ok(SessionRecord {
        id: m
            .get("i")
            .and_then(|v| SessionId::parse(v))
            .ok_or_else(|| corrupt("i"))?,
        token_hash,
        user_id: m
            .get("u")
            .and_then(|v| UserId::parse(v))
            .ok_or_else(|| corrupt("u"))?,
        username: m.remove("n").ok_or_else(|| corrupt("n"))?,
        created_at: time(&m, "c")?,
        last_seen_at: time(&m, "l")?,
        expires_at: time(&m, "e")?,
        ip: m.remove("ip"),
        user_agent: m.remove("ua"),
        amr: Amr::from_bits(m.get("a").and_then(|a| a.parse().ok()).unwrap_or(1)),
    })
}

pub(crate) use keyward_core::feed::hash_from_hex;

/// A session whose token, id and owner are not in one shard cannot be stored atomically.
fn check_shards(s: &SessionRecord) -> StoreResult<()> {
    let shard = s.user_id.shard();
    if s.token_hash.shard() != shard || s.id.shard() != shard {
        return Err(StoreError::Corrupt(
            "a session's token and id must be minted in its user's shard".into(),
        ));
    }
    Ok(())
}

impl RedisStore {
    pub(crate) async fn eval<R: FromValue, V>(
        &self,
        script: &Script,
        key: String,
        args: V,
    ) -> StoreResult<R>
    where
        V: TryInto<fred::types::MultipleValues> + Send,
        V::Error: Into<fred::error::Error> + Send,
    {
        script
            .evalsha_with_reload(self.client(), vec![key], args)
            .await
            .map_err(unavailable)
    }

    /// The arguments of a script that stores a session: tag, hash, sid, uid, ttl, score, the
    /// packed copy for the shard's replica index, then the fields.
    fn session_args(&self, s: &SessionRecord) -> StoreResult<Vec<Value>> {
        let ttl = ttl_ms(s, self.options().idle_timeout);
        let mut args: Vec<Value> = [
            tag(s.user_id.shard()),
            s.token_hash.to_hex(),
            s.id.to_string(),
            s.user_id.to_string(),
            ttl.to_string(),
            ms(s.created_at),
        ]
        .into_iter()
        .map(Value::from)
        .collect();
        args.push(Value::Bytes(crate::feed::packed(s)?.into()));
        args.extend(fields(s).into_iter().map(Value::from));
        Ok(args)
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, session: &SessionRecord) -> StoreResult<()> {
        check_shards(session)?;
        let key = session_key(&session.token_hash);
        let _: i64 = self
            .eval(&CREATE_SESSION, key.clone(), self.session_args(session)?)
            .await?;
        self.acknowledged(&key).await
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let m: HashMap<String, String> = self
            .client()
            .hgetall(session_key(token_hash))
            .await
            .map_err(unavailable)?;
        if m.is_empty() {
            return Ok(None);
        }
        record(Some(*token_hash), m).map(Some)
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        let idle = self.options().idle_timeout.whole_milliseconds().to_string();
        // A lost touch only shortens a session by one touch interval: no replica wait.
        let _: i64 = self
            .eval(
                &TOUCH_SESSION,
                session_key(token_hash),
                vec![
                    Value::from(tag(token_hash.shard())),
                    Value::from(ms(last_seen_at)),
                    Value::from(idle),
                    Value::Bytes(to_unix_ms(last_seen_at).to_be_bytes().to_vec().into()),
                ],
            )
            .await?;
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let key = session_key(token_hash);
        let r: Vec<String> = self
            .eval(
                &DELETE_SESSION,
                key.clone(),
                vec![tag(token_hash.shard()), token_hash.to_hex()],
            )
            .await?;
        let removed = decode(Some(*token_hash), r)?;
        if removed.is_some() {
            self.acknowledged(&key).await?;
        }
        Ok(removed)
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let key = format!("{}:i:{}", tag(id.shard()), id);
        let owner = owner.map(|o| o.to_string()).unwrap_or_default();
        let r: Vec<String> = self
            .eval(
                &DELETE_SESSION_BY_ID,
                key.clone(),
                vec![tag(id.shard()), owner],
            )
            .await?;
        let removed = decode(None, r)?;
        if removed.is_some() {
            self.acknowledged(&key).await?;
        }
        Ok(removed)
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        let key = index_key(user);
        let keep = keep.map(|k| k.to_string()).unwrap_or_default();
        let n: i64 = self
            .eval(
                &DELETE_USER_SESSIONS,
                key.clone(),
                vec![tag(user.shard()), keep],
            )
            .await?;
        if n > 0 {
            self.acknowledged(&key).await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let rows: Vec<Vec<String>> = self
            .eval(
                &LIST_USER_SESSIONS,
                index_key(user),
                vec![tag(user.shard())],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.extend(decode(None, r)?);
        }
        Ok(out)
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        check_shards(new)?;
        if old.shard() != new.user_id.shard() {
            return Err(StoreError::Corrupt(
                "a session can only be replaced by one of the same user".into(),
            ));
        }
        let key = session_key(old);
        let mut args = self.session_args(new)?;
        // REPLACE_SESSION takes the old hash after the tag.
        args.insert(1, Value::from(old.to_hex()));
        let done: i64 = self.eval(&REPLACE_SESSION, key.clone(), args).await?;
        if done == 1 {
            self.acknowledged(&key).await?;
        }
        Ok(done == 1)
    }

    /// Redis expires sessions by itself; this prunes what TTLs cannot (index entries, replica
    /// copies of expired sessions). It walks the whole key space, so it runs at most hourly:
    /// calls in between return 0.
    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        if !self.purge_due(crate::Sweep::Sessions) {
            return Ok(0);
        }
        let mut n = 0u64;
        for shard in 0..=255u8 {
            let removed: i64 = self
                .eval(&PURGE_REPLICA_INDEX, tag(shard), vec![tag(shard)])
                .await?;
            n += u64::try_from(removed).unwrap_or(0);
        }
        for key in self.scan("{kw.??}:us:*").await? {
            let Some(shard_tag) = key.get(..7) else {
                continue;
            };
            let removed: i64 = self
                .eval(
                    &PURGE_USER_SESSIONS,
                    key.clone(),
                    vec![shard_tag.to_owned(), ms(now), ms(idle_cutoff)],
                )
                .await?;
            n += u64::try_from(removed).unwrap_or(0);
        }
        Ok(n)
    }

    async fn ping(&self) -> StoreResult<()> {
        RedisStore::ping(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = keyward_core::SessionToken::generate().unwrap().hash();
        assert_eq!(hash_from_hex(&h.to_hex()), Some(h));
        assert_eq!(hash_from_hex("zz"), None);
        assert_eq!(hash_from_hex(&"é".repeat(32)), None);
    }
}
