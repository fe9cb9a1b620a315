//! Opening the stores the settings name.

use crate::config::{ConfigError, Settings};
use keyward_core::{DynSessionStore, DynUserStore, MemorySessionStore};
use keyward_sql::SqliteStore;
use std::sync::Arc;

/// The opened stores.
pub struct Stores {
    pub users: DynUserStore,
    pub sessions: DynSessionStore,
}

fn open_error(setting: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        setting: format!("--{setting}"),
        message: e.to_string(),
    }
}

/// Open (and migrate) the users database and the session store.
pub async fn open(settings: &Settings) -> Result<Stores, ConfigError> {
    let db = SqliteStore::open(&settings.database)
        .await
        .map_err(|e| open_error("database", e))?;
    let db = Arc::new(db);
    let sessions: DynSessionStore = if settings.session_store == settings.database {
        db.clone()
    } else if settings.session_store == "memory" {
        Arc::new(MemorySessionStore::new())
    } else {
        let s = SqliteStore::open(&settings.session_store)
            .await
            .map_err(|e| open_error("session-store", e))?;
        Arc::new(s)
    };
    Ok(Stores {
        users: db,
        sessions,
    })
}
