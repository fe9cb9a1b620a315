//! In-memory session store: for a single process, tests, and as the building block of caches.

use crate::ids::{SessionId, UserId};
use crate::secret::TokenHash;
use crate::store::{
    RefreshFamily, RotateOutcome, SessionRecord, SessionStore, StoreResult, TokenStore,
};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use time::{Duration, OffsetDateTime};

#[derive(Default)]
struct Inner {
    by_hash: HashMap<TokenHash, SessionRecord>,
    by_user: HashMap<UserId, HashSet<TokenHash>>,
    families: HashMap<SessionId, Family>,
    refresh: HashMap<TokenHash, Refresh>,
    denied: HashMap<String, OffsetDateTime>,
}

struct Family {
    record: RefreshFamily,
    revoked: bool,
}

struct Refresh {
    family: SessionId,
    used_at: Option<OffsetDateTime>,
    successor: Option<TokenHash>,
}

impl Inner {
    fn insert(&mut self, s: SessionRecord) {
        self.by_user
            .entry(s.user_id)
            .or_default()
            .insert(s.token_hash);
        self.by_hash.insert(s.token_hash, s);
    }

    fn remove(&mut self, h: &TokenHash) -> Option<SessionRecord> {
        let s = self.by_hash.remove(h)?;
        if let Some(set) = self.by_user.get_mut(&s.user_id) {
            set.remove(h);
            if set.is_empty() {
                self.by_user.remove(&s.user_id);
            }
        }
        Some(s)
    }

    fn user_hashes(&self, user: UserId) -> Vec<TokenHash> {
        self.by_user
            .get(&user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Sessions in a map behind a mutex, with a per-user index. Every method is atomic.
#[derive(Default)]
pub struct MemorySessionStore {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySessionStore").finish_non_exhaustive()
    }
}

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn create(&self, session: &SessionRecord) -> StoreResult<()> {
        self.lock().insert(session.clone());
        Ok(())
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        Ok(self.lock().by_hash.get(token_hash).cloned())
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        if let Some(s) = self.lock().by_hash.get_mut(token_hash) {
            s.last_seen_at = s.last_seen_at.max(last_seen_at);
        }
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        Ok(self.lock().remove(token_hash))
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let mut inner = self.lock();
        let candidates: Vec<TokenHash> = match owner {
            Some(user) => inner.user_hashes(user),
            None => inner.by_hash.keys().copied().collect(),
        };
        let found = candidates
            .into_iter()
            .find(|h| inner.by_hash.get(h).is_some_and(|s| s.id == id));
        Ok(found.and_then(|h| inner.remove(&h)))
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        let mut inner = self.lock();
        let mut n = 0;
        for h in inner.user_hashes(user) {
            let kept = inner.by_hash.get(&h).is_some_and(|s| Some(s.id) == keep);
            if !kept && inner.remove(&h).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let inner = self.lock();
        Ok(inner
            .user_hashes(user)
            .iter()
            .filter_map(|h| inner.by_hash.get(h).cloned())
            .collect())
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        let mut inner = self.lock();
        if inner.remove(old).is_none() {
            return Ok(false);
        }
        inner.insert(new.clone());
        Ok(true)
    }

    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        let mut inner = self.lock();
        let dead: Vec<TokenHash> = inner
            .by_hash
            .values()
            .filter(|s| s.expires_at <= now || s.last_seen_at <= idle_cutoff)
            .map(|s| s.token_hash)
            .collect();
        for h in &dead {
            inner.remove(h);
        }
        Ok(dead.len() as u64)
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

impl Inner {
    fn live_family(&self, id: SessionId, now: OffsetDateTime) -> Option<&RefreshFamily> {
        self.families
            .get(&id)
            .filter(|f| !f.revoked && now < f.record.expires_at)
            .map(|f| &f.record)
    }
}

#[async_trait]
impl TokenStore for MemorySessionStore {
    async fn create_family(&self, family: &RefreshFamily, first: &TokenHash) -> StoreResult<()> {
        let mut inner = self.lock();
        inner.families.insert(
            family.id,
            Family {
                record: family.clone(),
                revoked: false,
            },
        );
        inner.refresh.insert(
            *first,
            Refresh {
                family: family.id,
                used_at: None,
                successor: None,
            },
        );
        Ok(())
    }

    async fn rotate(
        &self,
        presented: &TokenHash,
        next: &TokenHash,
        now: OffsetDateTime,
        grace: Duration,
    ) -> StoreResult<RotateOutcome> {
        let mut inner = self.lock();
        let Some((family_id, used_at, successor)) = inner
            .refresh
            .get(presented)
            .map(|r| (r.family, r.used_at, r.successor))
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let Some(family) = inner.live_family(family_id, now).cloned() else {
            return Ok(RotateOutcome::Invalid);
        };
        if let Some(used_at) = used_at {
            let successor_unused = successor
                .filter(|s| s == next)
                .and_then(|s| inner.refresh.get(&s))
                .is_some_and(|r| r.used_at.is_none());
            if now < used_at + grace && successor_unused {
                return Ok(RotateOutcome::Rotated(family));
            }
            if let Some(f) = inner.families.get_mut(&family_id) {
                f.revoked = true;
            }
            return Ok(RotateOutcome::Reused(family));
        }
        if let Some(r) = inner.refresh.get_mut(presented) {
            r.used_at = Some(now);
            r.successor = Some(*next);
        }
        inner.refresh.insert(
            *next,
            Refresh {
                family: family_id,
                used_at: None,
                successor: None,
            },
        );
        Ok(RotateOutcome::Rotated(family))
    }

    async fn family_of(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let inner = self.lock();
        Ok(inner
            .refresh
            .get(token)
            .filter(|r| r.used_at.is_none())
            .and_then(|r| inner.live_family(r.family, now))
            .cloned())
    }

    async fn revoke_family(&self, family: SessionId, _now: OffsetDateTime) -> StoreResult<bool> {
        let mut inner = self.lock();
        Ok(match inner.families.get_mut(&family) {
            Some(f) if !f.revoked => {
                f.revoked = true;
                true
            }
            _ => false,
        })
    }

    async fn revoke_by_token(
        &self,
        token: &TokenHash,
        now: OffsetDateTime,
    ) -> StoreResult<Option<RefreshFamily>> {
        let mut inner = self.lock();
        let Some(id) = inner.refresh.get(token).map(|r| r.family) else {
            return Ok(None);
        };
        match inner.families.get_mut(&id) {
            Some(f) if now < f.record.expires_at => {
                f.revoked = true;
                Ok(Some(f.record.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn revoke_user_families(&self, user: UserId, _now: OffsetDateTime) -> StoreResult<u64> {
        let mut inner = self.lock();
        let mut n = 0;
        for f in inner
            .families
            .values_mut()
            .filter(|f| f.record.user_id == user && !f.revoked)
        {
            f.revoked = true;
            n += 1;
        }
        Ok(n)
    }

    async fn deny(&self, jti: &str, until: OffsetDateTime) -> StoreResult<()> {
        self.lock().denied.insert(jti.to_owned(), until);
        Ok(())
    }

    async fn is_denied(&self, jti: &str, sid: SessionId, now: OffsetDateTime) -> StoreResult<bool> {
        let inner = self.lock();
        let jti_denied = inner.denied.get(jti).is_some_and(|until| now < *until);
        Ok(jti_denied || inner.families.get(&sid).is_some_and(|f| f.revoked))
    }

    async fn purge_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        let mut inner = self.lock();
        let before = inner.denied.len() + inner.families.len() + inner.refresh.len();
        inner.denied.retain(|_, until| now < *until);
        inner.families.retain(|_, f| now < f.record.expires_at);
        let Inner {
            families, refresh, ..
        } = &mut *inner;
        refresh.retain(|_, r| families.contains_key(&r.family));
        let after = inner.denied.len() + inner.families.len() + inner.refresh.len();
        Ok((before - after) as u64)
    }
}
