//! The store URLs keyward accepts for Redis, turned into a client configuration.
//!
//! - `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS)
//! - `redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db]`,
//!   `rediss+sentinel://…` (the addresses are Sentinels; default port 26379)
//! - `redis+cluster://[user:password@]host[:port][,host[:port]…]`, `rediss+cluster://…`
//!   (any reachable nodes; the rest are discovered)

use fred::types::config::{ClusterDiscoveryPolicy, Config, Server, ServerConfig, TlsConnector};

pub use keyward_core::RedisTopology as Topology;
use keyward_core::{Engine, StoreUrl};

/// A store URL that cannot be used; the message never repeats the password.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub(crate) String);

/// Parse a store URL into a fred configuration and its topology.
pub fn parse(url: &StoreUrl) -> Result<(Config, Topology), UrlError> {
    let Engine::Redis { tls, topology } = url.engine() else {
        return Err(UrlError(format!("{url} is not a Redis URL")));
    };
    let rest = url.expose().split_once("://").map_or("", |(_, rest)| rest);
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    if authority.contains('?') || path.contains('?') {
        return Err(UrlError("query parameters are not supported".into()));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let default_port = if topology == Topology::Sentinel {
        26379
    } else {
        6379
    };
    let servers = hosts
        .split(',')
        .map(|h| server(h, default_port))
        .collect::<Result<Vec<_>, _>>()?;
    let first = servers
        .first()
        .cloned()
        .ok_or_else(|| UrlError("no host".into()))?;
    if topology == Topology::Standalone && servers.len() > 1 {
        return Err(UrlError(
            "several hosts need redis+sentinel:// or redis+cluster://".into(),
        ));
    }
    let (username, password) = match userinfo {
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            let user = decode(user)?;
            let pass = pass.map(decode).transpose()?;
            ((!user.is_empty()).then_some(user), pass)
        }
        None => (None, None),
    };
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let server = match topology {
        Topology::Standalone => ServerConfig::Centralized { server: first },
        Topology::Cluster => ServerConfig::Clustered {
            hosts: servers,
            policy: ClusterDiscoveryPolicy::default(),
        },
        Topology::Sentinel => ServerConfig::Sentinel {
            hosts: servers,
            service_name: segments
                .next()
                .ok_or_else(|| {
                    UrlError(
                        "a Sentinel URL needs the service name as its path (…/mymaster)".into(),
                    )
                })?
                .to_owned(),
        },
    };
    let database = match segments.next() {
        None => None,
        Some(db) if topology != Topology::Cluster => Some(
            db.parse::<u8>()
                .map_err(|_| UrlError(format!("database {db:?} is not a number 0-255")))?,
        ),
        Some(_) => return Err(UrlError("a cluster has no numbered databases".into())),
    };
    if segments.next().is_some() {
        return Err(UrlError("unexpected path after the database".into()));
    }
    let tls = if tls {
        let connector = TlsConnector::default_rustls()
            .map_err(|e| UrlError(format!("TLS set-up failed: {}", e.details())))?;
        Some(connector.into())
    } else {
        None
    };
    Ok((
        Config {
            server,
            username,
            password,
            database,
            tls,
            ..Config::default()
        },
        topology,
    ))
}

fn server(hostport: &str, default_port: u16) -> Result<Server, UrlError> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, rest) = v6
            .split_once(']')
            .ok_or_else(|| UrlError(format!("bad address {hostport:?}")))?;
        (h, rest.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError("empty host".into()));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| UrlError(format!("bad port {p:?}")))?,
        None => default_port,
    };
    Ok(Server::new(host, port))
}

fn decode(s: &str) -> Result<String, UrlError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| UrlError("credentials are not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(Config, Topology), UrlError> {
        match url.parse::<StoreUrl>() {
            Ok(url) => super::parse(&url),
            Err(e) => Err(UrlError(e.to_string())),
        }
    }

    fn hosts(c: &Config) -> Vec<(String, u16)> {
        match &c.server {
            ServerConfig::Centralized { server } => vec![(server.host.to_string(), server.port)],
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                hosts.iter().map(|s| (s.host.to_string(), s.port)).collect()
            }
        }
    }

    #[test]
    fn standalone_with_credentials_and_database() {
        let (c, t) = parse("redis://app:p%40ss@127.0.0.1:6390/2").unwrap();
        assert_eq!(t, Topology::Standalone);
        assert_eq!(hosts(&c), vec![("127.0.0.1".into(), 6390)]);
        assert_eq!(c.username.as_deref(), Some("app"));
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.database, Some(2));
        let (c, _) = parse("redis://:secret@localhost").unwrap();
        assert_eq!(c.username, None);
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert_eq!(hosts(&c), vec![("localhost".into(), 6379)]);
    }

    #[test]
    fn sentinel_and_cluster() {
        let (c, t) = parse("redis+sentinel://10.0.0.1,10.0.0.2:26380/mymaster/1").unwrap();
        assert_eq!(t, Topology::Sentinel);
        assert_eq!(
            hosts(&c),
            vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26380)]
        );
        assert!(
            matches!(&c.server, ServerConfig::Sentinel { service_name, .. } if service_name == "mymaster")
        );
        assert_eq!(c.database, Some(1));
        let (c, t) = parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert_eq!(t, Topology::Cluster);
        assert_eq!(hosts(&c).len(), 2);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "redis+sentinel://10.0.0.1",
            "redis://a:1,b:2",
            "redis://host:0",
            "redis://host:http",
            "redis+cluster://h/3",
            "redis://h/300",
            "redis://h/1?x=1",
            "memcached://h",
            "redis://",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = parse("redis://u:topsecret@h:0").unwrap_err();
        assert!(!e.to_string().contains("topsecret"));
    }
}
