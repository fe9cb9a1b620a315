//! keyward's SQL store, through sqlx with embedded migrations: [`SqlStore`], one
//! implementation of the user, session, token, key and failure-log traits over SQLite (the
//! embedded default, `sqlite://keyward.db`) or PostgreSQL (`postgres://…`, shared by a fleet).
//! Every statement and row mapping is written once; the engine is a parameter
//! (`store.rs` says where they differ).
#![deny(missing_docs)]

mod clients;
mod copy;
mod failures;
mod feed;
mod mail;
mod mfa;
mod oauth;
mod readers;
mod rows;
mod sessions;
mod store;
mod tokens;
mod users;

pub use feed::{PgFeed, FEED_RETENTION};
pub use store::{SqlOptions, SqlStore};

use keyward_core::StoreError;

/// The file behind a `sqlite://` URL; `None` for in-memory databases and other URLs.
pub fn sqlite_file(url: &keyward_core::StoreUrl) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if url.engine() != keyward_core::Engine::Sqlite {
        return None;
    }
    let url = url.expose();
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    Some(options.get_filename().to_path_buf())
}

/// Errors opening or migrating a database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL names an engine that holds no users (Redis, memory).
    #[error("this store holds sessions, not users: a database is sqlite://PATH or postgres://…")]
    Engine(keyward_core::Engine),
    /// The URL could not be understood.
    #[error("invalid database URL")]
    Url(#[source] sqlx::Error),
    /// The database file could not be created.
    #[error("cannot create the database file")]
    Create(#[source] std::io::Error),
    /// The database could not be opened.
    #[error("cannot open the database")]
    Connect(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("cannot migrate the database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Map a sqlx error to the store error kinds the rest of keyward understands.
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict("unique"),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(e.to_string()),
        _ => {
            metrics::counter!("keyward_store_errors_total", "store" => "sql").increment(1);
            StoreError::Unavailable(Box::new(e))
        }
    }
}
