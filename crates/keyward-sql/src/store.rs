//! [`SqlStore`]: one implementation of every store trait over SQLite or PostgreSQL.
//!
//! Every statement is written once, with `$1`-style placeholders that both drivers read
//! (sqlx's SQLite driver binds `$N` by number) and only portable SQL (`CASE` rather than
//! `max`/`GREATEST`, `CAST(… AS TEXT)` rather than `::TEXT`). The dialect shows in three places
//! only: the migrations (DDL differs), how a transaction is made exclusive ([`Dialect`]), and
//! what each engine adds: SQLite's inline readers ([`crate::readers`]), PostgreSQL's change
//! feed (`crate::feed`, fed by triggers in its migrations, so the write path is the same).

use crate::readers::ReadPool;
use crate::OpenError;
use keyward_core::{Engine, StoreUrl};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Transaction;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The connection pool of one engine.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$p` bound to the pool, once per engine: the body is written once and
/// type-checked against each driver. `D` names the engine's `sqlx::Database` in the body.
macro_rules! on {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($p) => {
                #[allow(dead_code)]
                type D = sqlx::Sqlite;
                $body
            }
            $crate::store::Pool::Postgres($p) => {
                #[allow(dead_code)]
                type D = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on;

/// What differs between the engines in a transaction.
pub(crate) trait Dialect: sqlx::Database {
    /// The outbox's claim: SQLite runs one writer at a time, so its statement alone is atomic;
    /// PostgreSQL locks the rows it picks and skips those another claim holds.
    const CLAIM_MAIL: &'static str;

    /// A transaction that runs alone among those given the same `lock`: SQLite takes its
    /// database-wide write lock at `BEGIN IMMEDIATE`; PostgreSQL takes an advisory lock, held
    /// until commit.
    async fn begin_serial(
        pool: &sqlx::Pool<Self>,
        lock: i64,
    ) -> Result<Transaction<'static, Self>, sqlx::Error>;
}

impl Dialect for sqlx::Sqlite {
    const CLAIM_MAIL: &'static str = crate::mail::claim_mail!("");

    async fn begin_serial(
        pool: &SqlitePool,
        _lock: i64,
    ) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }
}

impl Dialect for sqlx::Postgres {
    const CLAIM_MAIL: &'static str = crate::mail::claim_mail!(" FOR UPDATE SKIP LOCKED");

    async fn begin_serial(
        pool: &PgPool,
        lock: i64,
    ) -> Result<Transaction<'static, Self>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// An advisory-lock id for a name: the first 8 bytes of its SHA-256.
pub(crate) fn lock_id(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.iter_mut()
        .zip(d.iter())
        .for_each(|(to, from)| *to = *from);
    i64::from_be_bytes(b)
}

/// Settings of an SQL store.
#[derive(Debug, Clone, Copy)]
pub struct SqlOptions {
    /// How long a request waits for a connection before the store counts as unavailable.
    pub timeout: Duration,
    /// Connections to a PostgreSQL server.
    pub max_connections: u32,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// A SQL database holding users, sessions, tokens, signing keys and the throttle's counts:
/// SQLite (`sqlite://PATH`, the embedded default; `sqlite::memory:`) or PostgreSQL
/// (`postgres://…`), shared by every node of a fleet.
///
/// On a SQLite file the one read on the hot path (a session by token hash, once per validated
/// request, and the deny check of bearer requests) goes through `ReadPool`: a few read-only
/// rusqlite connections queried inline, which costs microseconds of CPU, less than sqlx's
/// hand-off to a connection thread and back (`docs/benchmarks.md`).
#[derive(Clone, Debug)]
pub struct SqlStore {
    pub(crate) pool: Pool,
    pub(crate) readers: Option<Arc<ReadPool>>,
    path: Option<std::path::PathBuf>,
}

impl SqlStore {
    /// Open (creating a SQLite file if needed) the database at `url` without migrating it.
    pub async fn connect(url: &StoreUrl, options: SqlOptions) -> Result<Self, OpenError> {
        let engine = url.engine();
        if !engine.holds_users() {
            return Err(OpenError::Engine(engine));
        }
        let url = url.expose();
        if engine == Engine::Postgres {
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                // sqlx pings every connection it hands out by default: a second round trip
                // for each query. A dead connection fails its query instead, which the
                // store reports as unavailable (503) and the pool replaces.
                .test_before_acquire(false)
                .acquire_timeout(options.timeout)
                .connect(url)
                .await
                .map_err(OpenError::Connect)?;
            return Ok(Self {
                pool: Pool::Postgres(pool),
                readers: None,
                path: None,
            });
        }
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let sqlite = SqliteConnectOptions::from_str(url)
            .map_err(OpenError::Url)?
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            // Deleted content (a delivered mail's link, an ended session) is overwritten, not
            // left readable in free pages.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(5));
        let path = sqlite.get_filename().to_path_buf();
        if !memory {
            private_file(&path).map_err(OpenError::Create)?;
        }
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout((!memory).then_some(Duration::from_secs(600)))
            .max_lifetime((!memory).then_some(Duration::from_secs(3600)))
            .acquire_timeout(options.timeout)
            .connect_with(sqlite)
            .await
            .map_err(OpenError::Connect)?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
            readers: None,
            path: (!memory).then_some(path),
        })
    }

    /// Open with default options and bring the schema up to date.
    pub async fn open(url: &StoreUrl) -> Result<Self, OpenError> {
        Self::open_with(url, SqlOptions::default()).await
    }

    /// Open and bring the schema up to date.
    pub async fn open_with(url: &StoreUrl, options: SqlOptions) -> Result<Self, OpenError> {
        let mut store = Self::connect(url, options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Apply pending migrations, then open the inline read connections (they need the schema).
    pub async fn migrate(&mut self) -> Result<(), OpenError> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::migrate!("./migrations/sqlite").run(p).await,
            Pool::Postgres(p) => sqlx::migrate!("./migrations/postgres").run(p).await,
        }
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

    /// Whether this is a PostgreSQL database (shared by a fleet, with a change feed).
    pub fn is_postgres(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Whether processes on other machines can share it: PostgreSQL, or a SQLite file (the
    /// processes of one machine); not an in-memory SQLite database.
    pub fn is_shared(&self) -> bool {
        self.is_postgres() || self.path.is_some()
    }

    /// Close the pool.
    pub async fn close(&self) {
        on!(self, |p| p.close().await)
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
