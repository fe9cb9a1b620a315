//! SQLite: users and sessions in one file, WAL mode.

use crate::{store_error, OpenError};
use async_trait::async_trait;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::{
    SessionId, SessionRecord, SessionStore, StoreError, StoreResult, TokenHash, UserId, UserRecord,
    UserStore,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;

/// A SQLite database holding users and sessions.
///
/// Writes, migrations and every other query go through sqlx. The one read on the hot path
/// (a session by token hash, once per validated request) goes through [`ReadPool`]: a few
/// read-only rusqlite connections queried inline. A point read by primary key from SQLite's
/// page cache costs microseconds of CPU, less than sqlx's hand-off to a connection thread and
/// back; `docs/benchmarks.md` has the figures.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    readers: Option<Arc<ReadPool>>,
    path: Option<std::path::PathBuf>,
}

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

impl ReadPool {
    fn open(path: &std::path::Path, n: usize) -> Result<Self, rusqlite::Error> {
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
    fn conn(&self) -> Result<std::sync::MutexGuard<'_, rusqlite::Connection>, ()> {
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

    /// Whether an access token is denied (see `TokenStore::is_denied`), or `Err` when the
    /// inline path could not answer.
    pub(crate) fn is_denied(&self, jti: &str, sid: &str, now_ms: i64) -> Result<bool, ()> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(IS_DENIED).map_err(|_| ())?;
        let denied: i64 = stmt
            .query_row(rusqlite::params![jti, sid, now_ms], |r| r.get(0))
            .map_err(|_| ())?;
        Ok(denied != 0)
    }

    /// The session with this hash, or `Err` when the inline path could not answer.
    fn get(&self, hash: &TokenHash) -> Result<Option<SessionRecord>, ()> {
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"
            ))
            .map_err(|_| ())?;
        let mut rows = stmt.query([hash.as_bytes().as_slice()]).map_err(|_| ())?;
        let Some(row) = rows.next().map_err(|_| ())? else {
            return Ok(None);
        };
        let text = |i: usize| row.get::<_, String>(i).map_err(|_| ());
        let hash: Vec<u8> = row.get(0).map_err(|_| ())?;
        Ok(Some(SessionRecord {
            token_hash: TokenHash::from_slice(&hash).ok_or(())?,
            id: SessionId::parse(&text(1)?).ok_or(())?,
            user_id: UserId::parse(&text(2)?).ok_or(())?,
            username: text(3)?,
            created_at: from_unix_ms(row.get(4).map_err(|_| ())?),
            last_seen_at: from_unix_ms(row.get(5).map_err(|_| ())?),
            expires_at: from_unix_ms(row.get(6).map_err(|_| ())?),
            ip: row.get(7).map_err(|_| ())?,
            user_agent: row.get(8).map_err(|_| ())?,
        }))
    }
}

/// Is this `jti` denied, or this family (`sid`) revoked: one query, one round trip.
pub(crate) const IS_DENIED: &str =
    "SELECT EXISTS (SELECT 1 FROM denied_tokens WHERE jti = ?1 AND expires_at > ?3) \
     OR EXISTS (SELECT 1 FROM refresh_families WHERE id = ?2 AND revoked_at IS NOT NULL)";

const SESSION_COLUMNS: &str =
    "token_hash, id, user_id, username, created_at, last_seen_at, expires_at, ip, user_agent";
const USER_COLUMNS: &str = "id, username, password_hash, created_at, locked";

impl SqliteStore {
    /// Open (creating the file if needed) the database at `url` (`sqlite://PATH`,
    /// `sqlite::memory:`) without migrating it.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(OpenError::Url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let path = options.get_filename().to_path_buf();
        if !memory {
            private_file(&path).map_err(OpenError::Create)?;
        }
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(OpenError::Connect)?;
        Ok(Self {
            pool,
            readers: None,
            path: (!memory).then_some(path),
        })
    }

    /// Open and bring the schema up to date.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        let mut store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Apply pending migrations, then open the inline read connections (they need the schema).
    pub async fn migrate(&mut self) -> Result<(), OpenError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await
            .map_err(OpenError::Migrate)?;
        if let (Some(path), None) = (&self.path, &self.readers) {
            let n = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2);
            match ReadPool::open(path, n) {
                Ok(r) => self.readers = Some(Arc::new(r)),
                Err(e) => {
                    tracing::warn!(error = %e, "inline SQLite readers unavailable; sessions are read through sqlx")
                }
            }
        }
        Ok(())
    }

    /// The sqlx pool.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The inline readers, when the database is a file.
    pub(crate) fn readers(&self) -> Option<&ReadPool> {
        self.readers.as_deref()
    }

    /// Close the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Create the database file readable by its owner alone (it holds password hashes), whatever
/// the umask; SQLite gives its WAL and shared-memory files the database file's mode. An
/// existing file keeps its mode, with a warning when others may read it.
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the database file is readable by other users; chmod 600 it");
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn session_from_row(row: &SqliteRow) -> StoreResult<SessionRecord> {
    let hash: Vec<u8> = row.try_get("token_hash").map_err(store_error)?;
    let id: String = row.try_get("id").map_err(store_error)?;
    let user_id: String = row.try_get("user_id").map_err(store_error)?;
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(&hash)
            .ok_or_else(|| StoreError::Corrupt("token hash length".into()))?,
        id: SessionId::parse(&id).ok_or_else(|| StoreError::Corrupt("session id".into()))?,
        user_id: UserId::parse(&user_id).ok_or_else(|| StoreError::Corrupt("user id".into()))?,
        username: row.try_get("username").map_err(store_error)?,
        created_at: from_unix_ms(row.try_get("created_at").map_err(store_error)?),
        last_seen_at: from_unix_ms(row.try_get("last_seen_at").map_err(store_error)?),
        expires_at: from_unix_ms(row.try_get("expires_at").map_err(store_error)?),
        ip: row.try_get("ip").map_err(store_error)?,
        user_agent: row.try_get("user_agent").map_err(store_error)?,
    })
}

fn user_from_row(row: &SqliteRow) -> StoreResult<UserRecord> {
    let id: String = row.try_get("id").map_err(store_error)?;
    Ok(UserRecord {
        id: UserId::parse(&id).ok_or_else(|| StoreError::Corrupt("user id".into()))?,
        username: row.try_get("username").map_err(store_error)?,
        password_hash: row.try_get("password_hash").map_err(store_error)?,
        created_at: from_unix_ms(row.try_get("created_at").map_err(store_error)?),
        locked: row.try_get::<i64, _>("locked").map_err(store_error)? != 0,
    })
}

async fn insert_session<'e, E>(exec: E, s: &SessionRecord) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(s.token_hash.as_bytes().as_slice())
    .bind(s.id.to_string())
    .bind(s.user_id.to_string())
    .bind(&s.username)
    .bind(to_unix_ms(s.created_at))
    .bind(to_unix_ms(s.last_seen_at))
    .bind(to_unix_ms(s.expires_at))
    .bind(&s.ip)
    .bind(&s.user_agent)
    .execute(exec)
    .await
    .map(|_| ())
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create(&self, session: &SessionRecord) -> StoreResult<()> {
        insert_session(&self.pool, session)
            .await
            .map_err(store_error)
    }

    async fn get(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        if let Some(found) = self.readers.as_ref().and_then(|r| r.get(token_hash).ok()) {
            return Ok(found);
        }
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?"
        ))
        .bind(token_hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn touch(&self, token_hash: &TokenHash, last_seen_at: OffsetDateTime) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = max(last_seen_at, ?) WHERE token_hash = ?")
            .bind(to_unix_ms(last_seen_at))
            .bind(token_hash.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn delete(&self, token_hash: &TokenHash) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "DELETE FROM sessions WHERE token_hash = ? RETURNING {SESSION_COLUMNS}"
        ))
        .bind(token_hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_by_id(
        &self,
        id: SessionId,
        owner: Option<UserId>,
    ) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(&format!(
            "DELETE FROM sessions WHERE id = ? AND (? IS NULL OR user_id = ?) RETURNING {SESSION_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(owner.map(|o| o.to_string()))
        .bind(owner.map(|o| o.to_string()))
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(session_from_row).transpose()
    }

    async fn delete_for_user(&self, user: UserId, keep: Option<SessionId>) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = ? AND (? IS NULL OR id <> ?)")
            .bind(user.to_string())
            .bind(keep.map(|k| k.to_string()))
            .bind(keep.map(|k| k.to_string()))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn list_for_user(&self, user: UserId) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?"
        ))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(session_from_row).collect()
    }

    async fn replace(&self, old: &TokenHash, new: &SessionRecord) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let gone = sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(old.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if gone.rows_affected() == 0 {
            tx.rollback().await.map_err(store_error)?;
            return Ok(false);
        }
        insert_session(&mut *tx, new).await.map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn purge_expired(
        &self,
        now: OffsetDateTime,
        idle_cutoff: OffsetDateTime,
    ) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?")
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(idle_cutoff))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO users (id, username, username_key, password_hash, created_at, locked) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.to_string())
        .bind(&user.username)
        .bind(user.username.to_ascii_lowercase())
        .bind(&user.password_hash)
        .bind(to_unix_ms(user.created_at))
        .bind(i64::from(user.locked))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username_key = ?"
        ))
        .bind(username.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn set_password_hash(&self, id: UserId, phc: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(phc)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn set_locked(&self, id: UserId, locked: bool) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE users SET locked = ? WHERE id = ?")
            .bind(i64::from(locked))
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_user(&self, id: UserId) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY username_key"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        SessionStore::ping(self).await
    }
}
