//! Where a node keeps sessions: a bounded `near` cache (moka), or every live session in a
//! compact table (`replicated`).
//!
//! The replicated table is built for a million sessions in well under 200 bytes each: entries
//! are packed (raw ids, millisecond times, the username inline up to 24 bytes) in a dense vector
//! per shard, and the hash index holds only a `u32` position (hashed by the token hash itself,
//! which is already uniform). A removal moves the last entry into the gap, so the vector stays
//! dense; it grows by a quarter at a time, not by doubling.

use compact_str::CompactString;
use hashbrown::HashTable;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::feed::ReplicaSession;
use keyward_core::{SessionId, TokenHash, UserId};
use moka::ops::compute::Op;
use std::sync::{PoisonError, RwLock};
use time::OffsetDateTime;

/// One session, packed.
#[derive(Clone)]
struct Entry {
    hash: [u8; 32],
    id: [u8; 16],
    user: [u8; 16],
    name: CompactString,
    created: i64,
    last_seen: i64,
    expires: i64,
    amr: u8,
}

impl Entry {
    fn pack(s: &ReplicaSession) -> Self {
        Self {
            hash: *s.token_hash.as_bytes(),
            id: *s.id.as_uuid_bytes(),
            user: *s.user_id.as_uuid().as_bytes(),
            name: CompactString::new(&s.username),
            created: to_unix_ms(s.created_at),
            last_seen: to_unix_ms(s.last_seen_at),
            expires: to_unix_ms(s.expires_at),
            amr: s.amr.bits(),
        }
    }

    fn unpack(&self) -> Option<ReplicaSession> {
        Some(ReplicaSession {
            token_hash: TokenHash::from_slice(&self.hash)?,
            id: SessionId::from_bytes(self.id),
            user_id: UserId::from_bytes(self.user),
            username: self.name.to_string(),
            created_at: from_unix_ms(self.created),
            last_seen_at: from_unix_ms(self.last_seen),
            expires_at: from_unix_ms(self.expires),
            amr: keyward_core::Amr::from_bits(self.amr),
        })
    }
}

/// The index hash of a token hash: its first eight bytes (a SHA-256 is uniform already).
fn key(h: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.iter_mut()
        .zip(h.iter())
        .for_each(|(to, from)| *to = *from);
    u64::from_le_bytes(b)
}

const SHARDS: usize = 64;

/// The shard of a token hash: its ninth byte (independent of the index hash's bits).
fn shard_of(h: &[u8; 32]) -> usize {
    usize::from(h.get(8).copied().unwrap_or(0)) % SHARDS
}

#[derive(Default)]
struct Shard {
    index: HashTable<u32>,
    entries: Vec<Entry>,
}

impl Shard {
    fn find(&self, h: &[u8; 32]) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(key(h), |&i| {
                entries.get(i as usize).is_some_and(|e| e.hash == *h)
            })
            .map(|&i| i as usize)
    }

    fn insert(&mut self, e: Entry) {
        if let Some(i) = self.find(&e.hash) {
            if let Some(slot) = self.entries.get_mut(i) {
                *slot = e;
            }
            return;
        }
        if self.entries.len() == self.entries.capacity() {
            // Grow by a quarter: a table of a million sessions wastes little.
            self.entries.reserve_exact((self.entries.len() / 4).max(16));
        }
        let Ok(pos) = u32::try_from(self.entries.len()) else {
            return;
        };
        let h = key(&e.hash);
        self.entries.push(e);
        let entries = &self.entries;
        self.index.insert_unique(h, pos, |&i| {
            entries.get(i as usize).map_or(0, |e| key(&e.hash))
        });
    }

    fn remove(&mut self, h: &[u8; 32]) -> bool {
        let entries = &self.entries;
        let Ok(found) = self.index.find_entry(key(h), |&i| {
            entries.get(i as usize).is_some_and(|e| e.hash == *h)
        }) else {
            return false;
        };
        let (pos, _) = found.remove();
        let pos = pos as usize;
        let last = self.entries.len().saturating_sub(1);
        if pos != last {
            // The last entry moves into the gap: point its index slot at the new place.
            if let Some(moved) = self.entries.get(last).map(|e| e.hash) {
                let entries = &self.entries;
                if let Some(slot) = self.index.find_mut(key(&moved), |&i| {
                    entries.get(i as usize).is_some_and(|e| e.hash == moved)
                }) {
                    *slot = u32::try_from(pos).unwrap_or(u32::MAX);
                }
            }
        }
        self.entries.swap_remove(pos);
        true
    }
}

/// Every session a replicated node holds.
pub(crate) struct Replicated {
    shards: Box<[RwLock<Shard>]>,
}

impl Replicated {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
        }
    }

    fn shard(&self, h: &[u8; 32]) -> Option<&RwLock<Shard>> {
        self.shards.get(shard_of(h))
    }

    pub(crate) fn get(&self, h: &TokenHash) -> Option<ReplicaSession> {
        let s = self
            .shard(h.as_bytes())?
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        s.find(h.as_bytes())
            .and_then(|i| s.entries.get(i))
            .and_then(Entry::unpack)
    }

    pub(crate) fn insert(&self, r: &ReplicaSession) {
        if let Some(s) = self.shard(r.token_hash.as_bytes()) {
            s.write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(Entry::pack(r));
        }
    }

    pub(crate) fn remove(&self, h: &TokenHash) {
        if let Some(s) = self.shard(h.as_bytes()) {
            s.write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(h.as_bytes());
        }
    }

    /// Move `last_seen_at` forward, if the session is held.
    pub(crate) fn touch(&self, h: &TokenHash, at: OffsetDateTime) {
        if let Some(s) = self.shard(h.as_bytes()) {
            let mut s = s.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = s.find(h.as_bytes()) {
                if let Some(e) = s.entries.get_mut(i) {
                    e.last_seen = e.last_seen.max(to_unix_ms(at));
                }
            }
        }
    }

    /// Drop sessions past their absolute expiry at `now` or unused since `idle_cutoff`.
    pub(crate) fn sweep(&self, now: OffsetDateTime, idle_cutoff: OffsetDateTime) -> u64 {
        let (now, cutoff) = (to_unix_ms(now), to_unix_ms(idle_cutoff));
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut s = shard.write().unwrap_or_else(PoisonError::into_inner);
            let dead: Vec<[u8; 32]> = s
                .entries
                .iter()
                .filter(|e| e.expires <= now || e.last_seen <= cutoff)
                .map(|e| e.hash)
                .collect();
            for h in &dead {
                if s.remove(h) {
                    n += 1;
                }
            }
        }
        n
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    /// Room for `n` sessions more, spread over the shards (before a load). Token hashes are
    /// uniform: at a million sessions a shard holds 15,625 ± 125, so 1/32 more (~4 standard
    /// deviations) leaves each room without holding an eighth of the table empty.
    pub(crate) fn reserve(&self, n: usize) {
        let per = n / SHARDS + n / SHARDS / 32;
        for shard in self.shards.iter() {
            let mut s = shard.write().unwrap_or_else(PoisonError::into_inner);
            s.entries.reserve_exact(per);
            let Shard { index, entries } = &mut *s;
            index.reserve(per, |&i| {
                entries.get(i as usize).map_or(0, |e| key(&e.hash))
            });
        }
    }
}

/// A node's memory of sessions, in either mode.
pub(crate) enum Memory {
    /// At most so many sessions, each for at most the idle timeout after its last read.
    Near(moka::sync::Cache<TokenHash, ReplicaSession>),
    /// Every live session.
    Replicated(Replicated),
}

impl Memory {
    pub(crate) fn get(&self, h: &TokenHash) -> Option<ReplicaSession> {
        match self {
            Self::Near(c) => c.get(h),
            Self::Replicated(r) => r.get(h),
        }
    }

    pub(crate) fn insert(&self, s: &ReplicaSession) {
        match self {
            Self::Near(c) => c.insert(s.token_hash, s.clone()),
            Self::Replicated(r) => r.insert(s),
        }
    }

    pub(crate) fn remove(&self, h: &TokenHash) {
        match self {
            Self::Near(c) => c.invalidate(h),
            Self::Replicated(r) => r.remove(h),
        }
    }

    /// Move `last_seen_at` forward, only if the session is held: never brings one back.
    pub(crate) fn touch(&self, h: &TokenHash, at: OffsetDateTime) {
        match self {
            Self::Near(c) => {
                c.entry(*h).and_compute_with(|entry| match entry {
                    Some(e) if at > e.value().last_seen_at => {
                        let mut s = e.into_value();
                        s.last_seen_at = at;
                        Op::Put(s)
                    }
                    _ => Op::Nop,
                });
            }
            Self::Replicated(r) => r.touch(h, at),
        }
    }

    pub(crate) fn sweep(&self, now: OffsetDateTime, idle_cutoff: OffsetDateTime) -> u64 {
        match self {
            // moka drops idle entries by itself.
            Self::Near(c) => {
                c.run_pending_tasks();
                0
            }
            Self::Replicated(r) => r.sweep(now, idle_cutoff),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Near(c) => usize::try_from(c.entry_count()).unwrap_or(usize::MAX),
            Self::Replicated(r) => r.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::SessionToken;

    fn session(i: i64) -> ReplicaSession {
        let user = UserId::new();
        ReplicaSession {
            token_hash: SessionToken::generate_in(user.shard()).unwrap().hash(),
            id: SessionId::new_in(user.shard()),
            user_id: user,
            username: format!("user{i}"),
            created_at: from_unix_ms(1_800_000_000_000 + i),
            last_seen_at: from_unix_ms(1_800_000_000_000 + i),
            expires_at: from_unix_ms(1_800_000_000_000 + 1_000_000 + i),
            amr: keyward_core::Amr::from_bits(if i % 2 == 0 { 1 } else { 3 }),
        }
    }

    #[test]
    fn the_table_keeps_finds_moves_and_sweeps() {
        let t = Replicated::new();
        let all: Vec<ReplicaSession> = (0..5000).map(session).collect();
        for s in &all {
            t.insert(s);
        }
        assert_eq!(t.len(), 5000);
        for s in &all {
            assert_eq!(t.get(&s.token_hash).as_ref(), Some(s));
        }
        // Removals move entries; everything else is still found.
        for s in all.iter().step_by(3) {
            t.remove(&s.token_hash);
        }
        for (i, s) in all.iter().enumerate() {
            let want = (i % 3 != 0).then_some(s);
            assert_eq!(t.get(&s.token_hash).as_ref(), want, "{i}");
        }
        let long = ReplicaSession {
            username: "a-username-longer-than-twenty-four-bytes".into(),
            ..session(9)
        };
        t.insert(&long);
        assert_eq!(t.get(&long.token_hash), Some(long.clone()));
        // Touch moves forward only.
        let s = all.get(1).unwrap();
        t.touch(&s.token_hash, from_unix_ms(1_800_000_500_000));
        t.touch(&s.token_hash, from_unix_ms(1_800_000_100_000));
        assert_eq!(
            t.get(&s.token_hash).unwrap().last_seen_at,
            from_unix_ms(1_800_000_500_000)
        );
        // Sweep: the idle cutoff drops all but the touched one.
        let gone = t.sweep(
            from_unix_ms(1_800_000_000_000),
            from_unix_ms(1_800_000_400_000),
        );
        assert_eq!(t.len(), 1, "{gone} swept");
        assert!(t.get(&s.token_hash).is_some());
    }
}
