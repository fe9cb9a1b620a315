//! [`TokenStore`] on Redis: refresh families and tokens in their user's shard, the deny list
//! keyed by `jti`.

use crate::scripts::*;
use crate::{tag, unavailable, RedisStore};
use async_trait::async_trait;
use fred::prelude::*;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    RefreshFamily, RotateOutcome, SessionId, StoreError, StoreResult, TokenHash, TokenStore, UserId,
};
use time::{Duration, OffsetDateTime};

/// How long a family's record outlives its absolute expiry: a revoked family must keep
/// denying the access tokens issued just before its end until they expire too.
const FAMILY_AFTERLIFE: Duration = Duration::hours(1);

fn family_key(id: SessionId) -> String {
    format!("{}:f:{}", tag(id.shard()), id)
}

fn token_key(h: &TokenHash) -> String {
    format!("{}:r:{}", tag(h.shard()), h.to_hex())
}

/// The deny list a `jti` belongs to: its bucket is the first byte of the jti's SHA-256.
pub(crate) fn deny_key(jti: &str) -> String {
    use sha2::{Digest, Sha256};
    let bucket = Sha256::digest(jti.as_bytes()).first().copied().unwrap_or(0);
    format!("{}:dl", tag(bucket))
}

fn ms(t: OffsetDateTime) -> String {
    to_unix_ms(t).to_string()
}

/// `{uid, username, created, expires, fid}` as the scripts return a family.
fn family(f: &[String]) -> StoreResult<RefreshFamily> {
    let corrupt = || StoreError::Corrupt("refresh family fields".into());
    let [uid, name, created, expires, fid] = f else {
        return Err(corrupt());
    };
    let time = |v: &String| v.parse::<i64>().map(from_unix_ms).map_err(|_| corrupt());
    Ok(RefreshFamily {
        id: SessionId::parse(fid).ok_or_else(corrupt)?,
        user_id: UserId::parse(uid).ok_or_else(corrupt)?,
        username: name.clone(),
        created_at: time(created)?,
        expires_at: time(expires)?,
    })
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn create_family(&self, f: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        let shard = f.user_id.shard();
        if f.id.shard() != shard || first.shard() != shard {
            return Err(StoreError::Corrupt(
                "a family and its tokens must be minted in its user's shard".into(),
            ));
        }
        let ttl = (f.expires_at - f.created_at + FAMILY_AFTERLIFE).whole_milliseconds();
        let key = family_key(f.id);
        let _: i64 = self
            .eval(
                &CREATE_FAMILY,
                key.clone(),
                vec![
                    tag(shard),
                    f.id.to_string(),
                    f.user_id.to_string(),
                    f.username.clone(),
                    ms(f.created_at),
                    ms(f.expires_at),
                    first.to_hex(),
                    ttl.max(1).to_string(),
                ],
            )
            .await?;
        self.acknowledged(&key).await
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: Duration,
    ) -> StoreResult<RotateOutcome> {
        if next.shard() != presented.shard() {
            return Err(StoreError::Corrupt(
                "a successor must be minted in its predecessor's shard".into(),
            ));
        }
        let key = token_key(presented);
        let r: Vec<String> = self
            .eval(
                &ROTATE,
                key.clone(),
                vec![
                    tag(presented.shard()),
                    next.to_hex(),
                    ms(now),
                    grace.whole_milliseconds().to_string(),
                ],
            )
            .await?;
        let outcome = match r.split_first() {
            Some((o, rest)) if o == "rotated" => RotateOutcome::Rotated(family(rest)?),
            Some((o, rest)) if o == "reused" => RotateOutcome::Reused(family(rest)?),
            _ => return Ok(RotateOutcome::Invalid),
        };
        self.acknowledged(&key).await?;
        Ok(outcome)
    }

    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let r: Vec<String> = self
            .eval(
                &FAMILY_OF,
                token_key(token),
                vec![tag(token.shard()), ms(now)],
            )
            .await?;
        if r.is_empty() {
            return Ok(None);
        }
        family(&r).map(Some)
    }

    async fn revoke_family(&self, id: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let key = family_key(id);
        let n: i64 = self
            .eval(&REVOKE_FAMILY, key.clone(), vec![tag(id.shard()), ms(now)])
            .await?;
        if n == 1 {
            self.acknowledged(&key).await?;
        }
        Ok(n == 1)
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let key = token_key(token);
        let r: Vec<String> = self
            .eval(
                &REVOKE_BY_TOKEN,
                key.clone(),
                vec![tag(token.shard()), ms(now)],
            )
            .await?;
        let Some((changed, fields)) = r.split_last() else {
            return Ok(None);
        };
        let f = family(fields)?;
        if changed == "1" {
            self.acknowledged(&key).await?;
        }
        Ok(Some(f))
    }

    async fn revoke_user_families(&self, user: UserId, now: OffsetDateTime) -> StoreResult<u64> {
        let key = format!("{}:uf:{}", tag(user.shard()), user);
        let n: i64 = self
            .eval(
                &REVOKE_USER_FAMILIES,
                key.clone(),
                vec![tag(user.shard()), ms(now)],
            )
            .await?;
        if n > 0 {
            self.acknowledged(&key).await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        let key = deny_key(jti);
        let _: i64 = self
            .eval(
                &DENY,
                key.clone(),
                vec![String::new(), jti.to_owned(), ms(until)],
            )
            .await?;
        self.acknowledged(&key).await
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let client = self.client();
        // Two slots on a cluster: two reads, sent together.
        let (denied_until, revoked): (Option<f64>, bool) = tokio::try_join!(
            client.zscore::<Option<f64>, _, _>(deny_key(jti), jti),
            client.hexists::<bool, _, _>(family_key(sid), "r"),
        )
        .map_err(unavailable)?;
        Ok(revoked || denied_until.is_some_and(|u| u as i64 > to_unix_ms(now)))
    }

    /// At most hourly, like the session sweep: calls in between return 0.
    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        if !self.purge_due(crate::Sweep::Tokens) {
            return Ok(0);
        }
        let mut n = 0u64;
        // Tokens first, while their families still say when they end.
        for (pattern, script) in [
            ("{kw.??}:r:*", &PURGE_TOKEN),
            ("{kw.??}:f:*", &PURGE_FAMILY),
        ] {
            for key in self.scan(pattern).await? {
                let shard_tag = key.get(..7).unwrap_or_default().to_owned();
                let removed: i64 = self.eval(script, key, vec![shard_tag, ms(now)]).await?;
                n += u64::try_from(removed).unwrap_or(0);
            }
        }
        let afterlife = FAMILY_AFTERLIFE.whole_milliseconds().to_string();
        for shard in 0..=255u8 {
            let removed: i64 = self
                .eval(
                    &PURGE_SHARD_DENIALS,
                    tag(shard),
                    vec![tag(shard), ms(now), afterlife.clone()],
                )
                .await?;
            n += u64::try_from(removed).unwrap_or(0);
        }
        Ok(n)
    }
}
