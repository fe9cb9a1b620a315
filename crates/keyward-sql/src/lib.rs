//! keyward's SQL backends, through sqlx with embedded migrations.
//!
//! [`SqliteStore`] is the embedded default (`sqlite://keyward.db`): one file holds users and
//! sessions. It implements both [`UserStore`](keyward_core::UserStore) and
//! [`SessionStore`](keyward_core::SessionStore).
#![deny(missing_docs)]

mod sqlite;

pub use sqlite::SqliteStore;

use keyward_core::StoreError;

/// Errors opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL could not be understood.
    #[error("invalid database URL: {0}")]
    Url(#[source] sqlx::Error),
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("cannot migrate the database: {0}")]
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
