//! Store URLs, read once: [`StoreUrl`] knows the engine its scheme names, and never shows its
//! password. Every consumer (the settings, the SQL store, the Redis store, the composition
//! root) takes this type, so the scheme is read in one place.

use std::fmt;
use std::str::FromStr;

/// How a Redis deployment is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisTopology {
    /// One primary (possibly with replicas nobody fails over to): `redis://`, `rediss://`.
    Standalone,
    /// A primary found through Sentinel, which fails over to a replica: `redis+sentinel://`.
    Sentinel,
    /// A Redis Cluster, keys partitioned over several primaries by hash slot: `redis+cluster://`.
    Cluster,
}

/// The engine a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// `memory`: this process's memory (sessions and tokens only; nothing survives a restart).
    Memory,
    /// `sqlite://PATH`, `sqlite::memory:`: the embedded database.
    Sqlite,
    /// `postgres://…`, `postgresql://…`.
    Postgres,
    /// `redis://…`, `rediss://…` and their `+sentinel` and `+cluster` forms.
    Redis {
        /// `rediss`: TLS to every server.
        tls: bool,
        /// How the servers are reached.
        topology: RedisTopology,
    },
}

impl Engine {
    /// Whether this engine announces its changes to other nodes (a change feed), as the
    /// `near` and `replicated` session caches need.
    pub fn has_change_feed(self) -> bool {
        matches!(self, Self::Postgres | Self::Redis { .. })
    }

    /// Whether this engine can hold users (a database, not a cache).
    pub fn holds_users(self) -> bool {
        matches!(self, Self::Sqlite | Self::Postgres)
    }
}

/// A URL that names no engine keyward has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{shown}' is not a store URL (sqlite://PATH, postgres://…, redis://…, rediss://…, redis+sentinel://…, redis+cluster://… or memory)")]
pub struct StoreUrlError {
    /// The URL, password redacted.
    shown: String,
}

/// A store URL as given, and the engine its scheme names. `Debug` and `Display` replace its
/// password by `***`; [`StoreUrl::expose`] gives the whole text to the driver that opens it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    text: String,
    engine: Engine,
}

impl StoreUrl {
    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The URL as given, password and all: for the driver that opens the store, never for a
    /// message.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The URL fit for a message: any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.text)
    }
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let scheme = text.split_once(':').map_or(text, |(scheme, _)| scheme);
        let redis = |tls, topology| Engine::Redis { tls, topology };
        let engine = match scheme {
            "memory" if text == "memory" => Engine::Memory,
            "sqlite" => Engine::Sqlite,
            "postgres" | "postgresql" if text.contains("://") => Engine::Postgres,
            "redis" => redis(false, RedisTopology::Standalone),
            "rediss" => redis(true, RedisTopology::Standalone),
            "redis+sentinel" => redis(false, RedisTopology::Sentinel),
            "rediss+sentinel" => redis(true, RedisTopology::Sentinel),
            "redis+cluster" => redis(false, RedisTopology::Cluster),
            "rediss+cluster" => redis(true, RedisTopology::Cluster),
            _ => {
                return Err(StoreUrlError {
                    shown: redact(text),
                })
            }
        };
        if matches!(engine, Engine::Redis { .. }) && !text.contains("://") {
            return Err(StoreUrlError {
                shown: redact(text),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            engine,
        })
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({:?})", self.redacted())
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:password@hosts/path` with the password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{hosts}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(s: &str) -> Result<Engine, StoreUrlError> {
        s.parse::<StoreUrl>().map(|u| u.engine())
    }

    #[test]
    fn schemes_name_engines() {
        assert_eq!(engine("memory"), Ok(Engine::Memory));
        assert_eq!(engine(" sqlite://keyward.db "), Ok(Engine::Sqlite));
        assert_eq!(engine("sqlite::memory:"), Ok(Engine::Sqlite));
        assert_eq!(engine("postgres://kw@db/kw"), Ok(Engine::Postgres));
        assert_eq!(engine("postgresql://kw@db/kw"), Ok(Engine::Postgres));
        assert_eq!(
            engine("rediss+sentinel://h1,h2/main"),
            Ok(Engine::Redis {
                tls: true,
                topology: RedisTopology::Sentinel
            })
        );
        assert_eq!(
            engine("redis+cluster://h1:7000"),
            Ok(Engine::Redis {
                tls: false,
                topology: RedisTopology::Cluster
            })
        );
        for bad in [
            "memcached://h",
            "memoryx",
            "keyward.db",
            "",
            "redis:h",
            "postgres:x",
        ] {
            assert!(engine(bad).is_err(), "{bad}");
        }
        assert!(Engine::Postgres.has_change_feed() && !Engine::Sqlite.has_change_feed());
        assert!(Engine::Sqlite.holds_users() && !Engine::Memory.holds_users());
    }

    #[test]
    fn the_password_is_shown_only_to_the_driver() {
        let url: StoreUrl = "redis+sentinel://app:s3cret@h1:26379,h2/m".parse().unwrap();
        assert_eq!(url.to_string(), "redis+sentinel://app:***@h1:26379,h2/m");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "redis+sentinel://app:s3cret@h1:26379,h2/m");
        let e = "mysql://root:hunter2@db/x".parse::<StoreUrl>().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(redact("postgres://u:pw@db/x"), "postgres://u:***@db/x");
        assert_eq!(redact("sqlite://keyward.db"), "sqlite://keyward.db");
    }
}
