//! Opening the stores the settings name.

use crate::config::{ConfigError, StoreSettings};
use keyward_core::feed::ChangeFeed;
use keyward_core::{
    DynClientStore, DynFailureLog, DynGrantStore, DynKeyStore, DynMfaStore, DynOutbox,
    DynSessionStore, DynTicketStore, DynTokenStore, DynUserStore, MemorySessionStore,
};
use keyward_core::{Engine, StoreUrl};
use keyward_redis::feed::RedisFeed;
use keyward_redis::RedisStore;
use keyward_replica::CachedSessions;
use keyward_sql::SqlStore;
use keyward_token::Kek;
use std::io::Write;
use std::sync::Arc;

/// The opened stores.
#[derive(Clone)]
pub struct Stores {
    pub users: DynUserStore,
    pub sessions: DynSessionStore,
    /// Refresh tokens and the deny list: beside the sessions.
    pub tokens: DynTokenStore,
    /// Signing keys: in the database.
    pub keys: DynKeyStore,
    /// Mailed links' tickets: in the database.
    pub tickets: DynTicketStore,
    /// The mail outbox: in the database.
    pub outbox: DynOutbox,
    /// Second factors: in the database.
    pub mfa: DynMfaStore,
    /// OAuth clients: in the database.
    pub clients: DynClientStore,
    /// Authorization codes, grants and consents: in the database.
    pub grants: DynGrantStore,
    /// Where failed logins are counted when other processes share it (the session store's
    /// PostgreSQL, SQLite file or Redis); else each process counts its own.
    pub failure_log: Option<DynFailureLog>,
}

fn open_error(setting: &str, e: impl std::error::Error + Send + Sync + 'static) -> ConfigError {
    ConfigError {
        setting: format!("--{setting}"),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

/// A store that the settings name well but that cannot be reached: the process exits with
/// its own code (69, `EX_UNAVAILABLE`), not as an invalid setting.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the store of --{setting} ({url})")]
pub struct Unreachable {
    /// The setting that names the store.
    pub setting: &'static str,
    /// Its URL, password redacted.
    pub url: String,
    /// Why.
    #[source]
    pub cause: keyward_sql::OpenError,
}

/// Why opening the stores failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenFailure {
    /// A setting cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store cannot be reached.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

/// Sort an SQL store's opening error: an unusable URL or file is the setting's fault; a
/// server that does not answer, or a schema that cannot be brought up to date, is not.
fn sql_failure(setting: &'static str, url: &StoreUrl, e: keyward_sql::OpenError) -> OpenFailure {
    match e {
        keyward_sql::OpenError::Url(_)
        | keyward_sql::OpenError::Create(_)
        | keyward_sql::OpenError::Engine(_) => open_error(setting, e).into(),
        cause => Unreachable {
            setting,
            url: url.redacted(),
            cause,
        }
        .into(),
    }
}

/// Open (and migrate) the users database and the session store, and the session cache in
/// front of the store when one is asked for.
pub async fn open(settings: &StoreSettings) -> Result<Stores, OpenFailure> {
    let (database, session_store) = (&settings.database, &settings.session_store);
    let db = Arc::new(
        SqlStore::open_with(database, settings.sql)
            .await
            .map_err(|e| sql_failure("database", database, e))?,
    );
    // Failed sign-ins are counted where the sessions are, when other processes share it
    // (PostgreSQL, a SQLite file, Redis): then N nodes allow what one allows.
    let shared = |s: &Arc<SqlStore>| s.is_shared().then(|| s.clone() as DynFailureLog);
    let cached = settings.cache.is_some();
    // The store, and its change feed when it has one.
    let (sessions, tokens, failure_log, feed): (
        DynSessionStore,
        DynTokenStore,
        Option<DynFailureLog>,
        Option<Arc<dyn ChangeFeed>>,
    ) = match session_store.engine() {
        _ if session_store == database => {
            let feed = db.feed().map(|f| Arc::new(f) as Arc<dyn ChangeFeed>);
            (db.clone(), db.clone(), shared(&db), feed)
        }
        Engine::Memory => {
            let m = Arc::new(MemorySessionStore::new());
            (m.clone(), m, None, None)
        }
        Engine::Redis { .. } => {
            let s = RedisStore::connect(session_store, settings.redis.clone())
                .await
                .map_err(|e| OpenFailure::Config(open_error("session-store", e)))?;
            let feed = if cached {
                Some(Arc::new(
                    RedisFeed::new(s.clone())
                        .map_err(|e| OpenFailure::Config(open_error("session-cache", e)))?,
                ) as Arc<dyn ChangeFeed>)
            } else {
                None
            };
            let s = Arc::new(s);
            (s.clone(), s.clone(), Some(s), feed)
        }
        _ => {
            let s = Arc::new(
                SqlStore::open_with(session_store, settings.sql)
                    .await
                    .map_err(|e| sql_failure("session-store", session_store, e))?,
            );
            let feed = s.feed().map(|f| Arc::new(f) as Arc<dyn ChangeFeed>);
            (s.clone(), s.clone(), shared(&s), feed)
        }
    };
    // With a cache, the deny check of bearer requests answers from the same feed.
    let (sessions, tokens): (DynSessionStore, DynTokenStore) = match (settings.cache, feed) {
        (Some(options), Some(feed)) => {
            let cached = CachedSessions::start(sessions, tokens, feed, options)
                .await
                .map_err(|e| OpenFailure::Config(open_error("session-cache", e)))?;
            (cached.clone(), cached)
        }
        _ => (sessions, tokens),
    };
    Ok(Stores {
        users: db.clone(),
        sessions,
        tokens,
        keys: db.clone(),
        tickets: db.clone(),
        outbox: db.clone(),
        mfa: db.clone(),
        clients: db.clone(),
        grants: db,
        failure_log,
    })
}

/// The key-encryption key: the setting, or for SQLite a file beside the database
/// (`<database>.kek`, created once with mode 0600), so that a copy of the database alone
/// does not hold usable signing keys.
pub fn key_encryption_key(settings: &StoreSettings) -> Result<Kek, ConfigError> {
    let bad = |m: String| ConfigError {
        setting: "--key-encryption-key".into(),
        message: m,
        source: None,
    };
    if let Some(kek) = &settings.key_encryption_key {
        return Ok(kek.clone());
    }
    let Some(db) = keyward_sql::sqlite_file(&settings.database) else {
        return Err(bad("required when the database is not a SQLite file".into()));
    };
    let mut path = db.into_os_string();
    path.push(".kek");
    let path = std::path::PathBuf::from(path);
    match std::fs::read_to_string(&path) {
        Ok(text) => Kek::parse(&text)
            .ok_or_else(|| bad(format!("{} does not hold a valid key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Write a temp file, then link it into place: the file appears whole or not at
            // all, and of two processes starting at once the second uses the first one's key.
            let kek = Kek::generate().map_err(|e| bad(e.to_string()))?;
            let mut tmp = path.clone().into_os_string();
            tmp.push(format!(".tmp-{}", std::process::id()));
            let tmp = std::path::PathBuf::from(tmp);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let written = opts.open(&tmp).and_then(|mut f| {
                f.write_all(kek.to_text().as_bytes())?;
                f.sync_all()
            });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(bad(format!("cannot create {}: {e}", path.display())));
            }
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(kek),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    key_encryption_key(settings)
                }
                Err(e) => Err(bad(format!("cannot create {}: {e}", path.display()))),
            }
        }
        Err(e) => Err(bad(format!("cannot read {}: {e}", path.display()))),
    }
}
