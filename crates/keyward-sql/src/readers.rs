//! SQLite's inline readers: a few read-only rusqlite connections for the two reads on the hot
//! path, queried on the calling thread. Both drivers link the same bundled SQLite; any error
//! here falls back to sqlx. The statements are the store's own (`$N` becomes `?N`, which
//! SQLite binds by number too).

use crate::rows::SessionRow;
use keyward_core::{SessionRecord, TokenHash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Read-only connections for the hot-path look-ups, used inline on the calling thread.
pub(crate) struct ReadPool {
    conns: Vec<Mutex<rusqlite::Connection>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool")
            .field("connections", &self.conns.len())
            .finish()
    }
}

/// A statement of the store for rusqlite: `$N` placeholders as `?N`.
fn positional(sql: &str) -> String {
    sql.replace('$', "?")
}

impl ReadPool {
    pub(crate) fn open(path: &std::path::Path, n: usize) -> Result<Self, rusqlite::Error> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conns = (0..n.max(1))
            .map(|_| {
                let c = rusqlite::Connection::open_with_flags(path, flags)?;
                // Readers never wait for writers in WAL mode; a short timeout bounds the rare
                // wait during recovery, after which the sqlx path answers instead.
                c.busy_timeout(Duration::from_millis(50))?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, rusqlite::Error>>()?;
        Ok(Self {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// A free connection (or the next one, waited for: queries take microseconds).
    fn conn(&self) -> Result<MutexGuard<'_, rusqlite::Connection>, ()> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let free = (0..n).find_map(|i| self.conns.get((start + i) % n)?.try_lock().ok());
        match free {
            Some(c) => Ok(c),
            None => Ok(self
                .conns
                .get(start % n)
                .ok_or(())?
                .lock()
                .unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// Whether an access token is denied (`crate::tokens::IS_DENIED`), or `Err` when the
    /// inline path could not answer.
    pub(crate) fn is_denied(
        &self,
        sql: &str,
        jti: &str,
        sid: &str,
        now_ms: i64,
    ) -> Result<bool, ()> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&positional(sql)).map_err(|_| ())?;
        let denied: i64 = stmt
            .query_row(rusqlite::params![jti, sid, now_ms], |r| r.get(0))
            .map_err(|_| ())?;
        Ok(denied != 0)
    }

    /// The session with this hash (`crate::sessions::GET`), or `Err` when the inline path
    /// could not answer.
    pub(crate) fn session(&self, sql: &str, hash: &TokenHash) -> Result<Option<SessionRecord>, ()> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&positional(sql)).map_err(|_| ())?;
        let mut rows = stmt.query([hash.as_bytes().as_slice()]).map_err(|_| ())?;
        let Some(row) = rows.next().map_err(|_| ())? else {
            return Ok(None);
        };
        let r = SessionRow {
            token_hash: row.get(0).map_err(|_| ())?,
            id: row.get(1).map_err(|_| ())?,
            user_id: row.get(2).map_err(|_| ())?,
            username: row.get(3).map_err(|_| ())?,
            created_at: row.get(4).map_err(|_| ())?,
            last_seen_at: row.get(5).map_err(|_| ())?,
            expires_at: row.get(6).map_err(|_| ())?,
            ip: row.get(7).map_err(|_| ())?,
            user_agent: row.get(8).map_err(|_| ())?,
            amr: row.get(9).map_err(|_| ())?,
        };
        SessionRecord::try_from(r).map(Some).map_err(|_| ())
    }
}
