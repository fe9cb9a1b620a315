//! Settings: flags, `KEYWARD_*` environment variables and an optional TOML file, with the
//! precedence flag > env > file > default. Two stages: clap parses raw values (flags and env),
//! then [`Settings::resolve`] merges the file and the defaults and validates the whole.
// The settings' doc comments are also `--help`, where `<bind>` reads as a placeholder.
#![allow(rustdoc::invalid_html_tags)]

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

pub use keyward_redis::WaitReplicas;

/// A setting that cannot be used. Its `Display` starts with the setting's name.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    /// The setting, as its flag is named.
    pub setting: String,
    /// What is wrong.
    pub message: String,
    /// The error that said so, when another crate's did (a store URL it could not use).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn bad(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: format!("--{setting}"),
        message: message.into(),
        source: None,
    }
}

/// `30s`, `15m`, `7d`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 30s, 15m or 7d ({e})"))?;
    if d.is_zero() {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(d)
}

/// A duration that may be zero (`0s`, `0`, `5s`).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 0s, 5s or 1m ({e})"))
}

/// A network or a single address (`10.0.0.0/8`, `127.0.0.1`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an IP address or CIDR network"))
}

fn parse_url(s: &str) -> Result<Url, String> {
    let u = Url::parse(s.trim()).map_err(|e| format!("'{s}' is not a URL ({e})"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!(
            "'{s}' must be an http:// or https:// URL with a host"
        ));
    }
    Ok(u)
}

/// A store URL as given. `Debug` and `Display` replace its password by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

/// The URL as given, password and all: for opening the store.
impl std::ops::Deref for StoreUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for StoreUrl {
    fn from(s: &str) -> Self {
        Self(s.trim().to_owned())
    }
}

impl From<String> for StoreUrl {
    fn from(s: String) -> Self {
        s.as_str().into()
    }
}

impl PartialEq<&str> for StoreUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({:?})", redacted(&self.0))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redacted(&self.0))
    }
}

fn parse_store_url(s: &str) -> Result<StoreUrl, String> {
    Ok(s.into())
}

/// A secret setting: kept in a type whose `Debug` never shows it.
fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("'{other}' is not true or false")),
    }
}

/// Where sessions are cached on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionCache {
    /// Every validation reads the store.
    None,
    /// A bounded local cache with invalidation.
    Near,
    /// Every node keeps all live sessions.
    Replicated,
}

/// Signing algorithm of access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
pub enum TokenAlgorithm {
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDSA,
    /// P-256.
    #[value(name = "ES256")]
    ES256,
    /// RSA 2048 PKCS#1 v1.5.
    #[value(name = "RS256")]
    RS256,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting, as flags and environment variables. Unset means "not given here".
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML file with settings (keys in snake_case, e.g. idle_timeout = "30m").
    #[arg(long, env = "KEYWARD_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYWARD_BIND", value_name = "ADDR", global = true)]
    pub bind: Option<SocketAddr>,
    /// Users database: sqlite://PATH or postgres://… [default: sqlite://keyward.db].
    #[arg(long, env = "KEYWARD_DATABASE", value_name = "URL", value_parser = parse_store_url, global = true)]
    pub database: Option<StoreUrl>,
    /// Session store: memory, sqlite://PATH, redis://…, rediss://…, redis+sentinel://…,
    /// redis+cluster://…, postgres://… [default: the --database].
    #[arg(long, env = "KEYWARD_SESSION_STORE", value_name = "URL", value_parser = parse_store_url, global = true)]
    pub session_store: Option<StoreUrl>,
    /// Local session cache: none, near or replicated [default: none].
    #[arg(
        long,
        env = "KEYWARD_SESSION_CACHE",
        value_name = "MODE",
        global = true
    )]
    pub session_cache: Option<SessionCache>,
    /// Public URL of this server; https makes cookies Secure and __Host- prefixed
    /// [default: http://127.0.0.1:8080, or http://<bind> when --bind is given].
    #[arg(long, env = "KEYWARD_PUBLIC_URL", value_name = "URL", value_parser = parse_url, global = true)]
    pub public_url: Option<Url>,
    /// Other origins allowed to send cookie-authenticated unsafe requests (comma-separated).
    #[arg(long, env = "KEYWARD_ALLOWED_ORIGINS", value_name = "LIST", value_delimiter = ',', value_parser = parse_url, global = true)]
    pub allowed_origins: Option<Vec<Url>>,
    /// A session unused this long ends [default: 30m].
    #[arg(long, env = "KEYWARD_IDLE_TIMEOUT", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub idle_timeout: Option<Duration>,
    /// A session this old ends however much it is used [default: 7d].
    #[arg(long, env = "KEYWARD_ABSOLUTE_TIMEOUT", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub absolute_timeout: Option<Duration>,
    /// Lifetime of access tokens [default: 15m].
    #[arg(long, env = "KEYWARD_ACCESS_TOKEN_TTL", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub access_token_ttl: Option<Duration>,
    /// Lifetime of a refresh-token family [default: 30d].
    #[arg(long, env = "KEYWARD_REFRESH_TOKEN_TTL", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub refresh_token_ttl: Option<Duration>,
    /// A used refresh token presented again within this time gets the same successor instead
    /// of revoking its family (a client that lost the answer) [default: 0s, never].
    #[arg(long, env = "KEYWARD_REFRESH_REUSE_GRACE", value_name = "DUR", value_parser = parse_duration_or_zero, global = true)]
    pub refresh_reuse_grace: Option<Duration>,
    /// `iss` of issued tokens [default: the public URL].
    #[arg(long, env = "KEYWARD_ISSUER", value_name = "URL", global = true)]
    pub issuer: Option<String>,
    /// `aud` of issued tokens [default: keyward].
    #[arg(long, env = "KEYWARD_AUDIENCE", value_name = "STR", global = true)]
    pub audience: Option<String>,
    /// Whether anyone may register through the API and pages [default: true].
    #[arg(long, env = "KEYWARD_OPEN_REGISTRATION", value_name = "BOOL", value_parser = parse_bool, global = true)]
    pub open_registration: Option<bool>,
    /// Access-token signing algorithm: EdDSA, ES256 or RS256 [default: EdDSA].
    #[arg(
        long,
        env = "KEYWARD_TOKEN_ALGORITHM",
        value_name = "ALG",
        global = true
    )]
    pub token_algorithm: Option<TokenAlgorithm>,
    /// Bearer secret that protects token introspection.
    #[arg(
        long,
        env = "KEYWARD_INTROSPECTION_TOKEN",
        allow_hyphen_values = true,
        value_name = "SECRET",
        hide_env_values = true,
        value_parser = parse_secret,
        global = true
    )]
    pub introspection_token: Option<SecretString>,
    /// Proxies whose X-Forwarded-For is believed (comma-separated addresses or CIDRs).
    #[arg(long, env = "KEYWARD_TRUSTED_PROXIES", value_name = "LIST", value_delimiter = ',', value_parser = parse_net, global = true)]
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// Key that seals signing keys at rest: 32 bytes, base64url [default: generated once into
    /// <database file>.kek, mode 0600, for SQLite].
    #[arg(
        long,
        env = "KEYWARD_KEY_ENCRYPTION_KEY",
        // A base64url key or a secret may begin with "-": it is still the value.
        allow_hyphen_values = true,
        value_name = "KEY",
        hide_env_values = true,
        value_parser = parse_secret,
        global = true
    )]
    pub key_encryption_key: Option<SecretString>,
    /// A new signing key is made once the newest is this old, by one node of a fleet; older
    /// keys verify until their tokens expire [default: 30d].
    #[arg(long, env = "KEYWARD_KEY_ROTATION_INTERVAL", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub key_rotation_interval: Option<Duration>,
    /// Whether the token endpoint offers grant_type=password [default: true].
    #[arg(long, env = "KEYWARD_PASSWORD_GRANT", value_name = "BOOL", value_parser = parse_bool, global = true)]
    pub password_grant: Option<bool>,
    /// Registrations allowed per client address per hour [default: 20].
    #[arg(
        long,
        env = "KEYWARD_REGISTRATION_MAX_PER_ADDRESS",
        value_name = "N",
        global = true
    )]
    pub registration_max_per_address: Option<u32>,
    /// Failed token requests (invalid refresh tokens, revocations of unknown tokens, failed
    /// introspections) allowed per client address per 15 minutes [default: 100].
    #[arg(
        long,
        env = "KEYWARD_TOKEN_MAX_FAILURES_PER_ADDRESS",
        value_name = "N",
        global = true
    )]
    pub token_max_failures_per_address: Option<u32>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Failed logins allowed per account within the window [default: 10].
    #[arg(
        long,
        env = "KEYWARD_LOGIN_MAX_FAILURES_PER_ACCOUNT",
        value_name = "N",
        global = true
    )]
    pub login_max_failures_per_account: Option<u32>,
    /// Failed logins allowed per client address within the window [default: 100].
    #[arg(
        long,
        env = "KEYWARD_LOGIN_MAX_FAILURES_PER_ADDRESS",
        value_name = "N",
        global = true
    )]
    pub login_max_failures_per_address: Option<u32>,
    /// The login-throttling window [default: 15m].
    #[arg(long, env = "KEYWARD_LOGIN_FAILURE_WINDOW", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub login_failure_window: Option<Duration>,
    /// Password hashes computed at once [default: cores - 1, at least 1].
    #[arg(
        long,
        env = "KEYWARD_HASH_CONCURRENCY",
        value_name = "N",
        global = true
    )]
    pub hash_concurrency: Option<usize>,
    /// Bound on connecting to the session store and on each of its commands (Redis); past it
    /// a request answers 503 [default: 2s].
    #[arg(long, env = "KEYWARD_STORE_TIMEOUT", value_name = "DUR", value_parser = parse_duration, global = true)]
    pub store_timeout: Option<Duration>,
    /// Replica acknowledgements (Redis `WAIT`) each session or token write waits for before it
    /// is answered: `auto` (one when the primary has replicas) or a number; 0 turns it off
    /// [default: auto].
    #[arg(long, env = "KEYWARD_REDIS_WAIT_REPLICAS", value_name = "auto|N", value_parser = parse_wait_replicas, global = true)]
    pub redis_wait_replicas: Option<WaitReplicas>,
    /// How long a `replicated` node keeps validating the sessions and tokens it holds while
    /// its store cannot be reached (writes answer 503 meanwhile); 0s: not at all [default: 5m].
    #[arg(long, env = "KEYWARD_OUTAGE_GRACE", value_name = "DUR", value_parser = parse_duration_or_zero, global = true)]
    pub outage_grace: Option<Duration>,
    /// Sessions a `near` cache holds at most [default: 100000].
    #[arg(
        long,
        env = "KEYWARD_SESSION_CACHE_CAPACITY",
        value_name = "N",
        global = true
    )]
    pub session_cache_capacity: Option<u64>,
}

/// `auto` or a count.
pub fn parse_wait_replicas(s: &str) -> Result<WaitReplicas, String> {
    match s.trim() {
        "auto" => Ok(WaitReplicas::Auto),
        n => n
            .parse::<u32>()
            .map(WaitReplicas::Count)
            .map_err(|_| format!("'{s}' is not auto or a number of replicas")),
    }
}

/// The TOML file: the same settings in snake_case; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    bind: Option<String>,
    database: Option<String>,
    session_store: Option<String>,
    session_cache: Option<String>,
    public_url: Option<String>,
    allowed_origins: Option<StringOrList>,
    idle_timeout: Option<String>,
    absolute_timeout: Option<String>,
    access_token_ttl: Option<String>,
    refresh_token_ttl: Option<String>,
    refresh_reuse_grace: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    open_registration: Option<bool>,
    token_algorithm: Option<String>,
    introspection_token: Option<String>,
    key_encryption_key: Option<String>,
    key_rotation_interval: Option<String>,
    password_grant: Option<bool>,
    registration_max_per_address: Option<u32>,
    token_max_failures_per_address: Option<u32>,
    trusted_proxies: Option<StringOrList>,
    log_format: Option<String>,
    login_max_failures_per_account: Option<u32>,
    login_max_failures_per_address: Option<u32>,
    login_failure_window: Option<String>,
    hash_concurrency: Option<usize>,
    store_timeout: Option<String>,
    outage_grace: Option<String>,
    redis_wait_replicas: Option<String>,
    session_cache_capacity: Option<u64>,
}

/// Lists may be written `"a,b"` or `["a", "b"]` in the file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn items(&self) -> Vec<String> {
        match self {
            Self::One(s) => s
                .split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect(),
            Self::Many(v) => v.clone(),
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database: StoreUrl,
    pub session_store: StoreUrl,
    pub session_cache: SessionCache,
    pub session_cache_capacity: u64,
    pub public_url: Url,
    /// True when no setting named the public URL: it is then derived from the bound address.
    pub public_url_derived: bool,
    pub allowed_origins: Vec<Url>,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub issuer: String,
    /// True when no setting named the issuer: it follows the public URL.
    pub issuer_derived: bool,
    pub audience: String,
    pub open_registration: bool,
    pub token_algorithm: TokenAlgorithm,
    pub introspection_token: Option<SecretString>,
    pub key_encryption_key: Option<SecretString>,
    pub key_rotation_interval: Duration,
    pub password_grant: bool,
    pub registration_max_per_address: u32,
    pub token_max_failures_per_address: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub log_format: LogFormat,
    pub login_max_failures_per_account: u32,
    pub login_max_failures_per_address: u32,
    pub login_failure_window: Duration,
    pub hash_concurrency: Option<usize>,
    pub store_timeout: Duration,
    pub outage_grace: Duration,
    pub redis_wait_replicas: WaitReplicas,
}

fn file_value<T>(
    setting: &str,
    raw: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    raw.map(|r| parse(r).map_err(|m| bad(setting, format!("{m} (in the config file)"))))
        .transpose()
}

fn enum_value<T: ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_owned())
            .collect();
        format!("'{s}' is not one of {}", names.join(", "))
    })
}

fn check_store_url(setting: &str, url: &str, allow_memory: bool) -> Result<(), ConfigError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" | "postgres" | "postgresql" => Ok(()),
        "memory" if allow_memory && url == "memory" => Ok(()),
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" | "rediss+sentinel"
        | "rediss+cluster"
            if allow_memory =>
        {
            keyward_redis::url::parse(url)
                .map(|_| ())
                .map_err(|e| bad(setting, format!("'{}': {e}", redacted(url))))
        }
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" | "rediss+sentinel"
        | "rediss+cluster" => Err(bad(
            setting,
            "Redis holds sessions and tokens, not users: give it as --session-store and keep --database on sqlite:// or postgres://",
        )),
        _ => Err(bad(
            setting,
            format!(
                "'{}' is not a supported URL (sqlite://PATH, postgres://…{})",
                redacted(url),
                if allow_memory { ", redis://…, memory" } else { "" }
            ),
        )),
    }
}

/// A store URL fit for an error message: any password replaced by `***`.
pub fn redacted(url: &str) -> String {
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

impl Settings {
    /// Merge flags/env over the file over the defaults, and validate.
    pub fn resolve(args: &SettingsArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let bind = match args.bind {
            Some(b) => Some(b),
            None => file_value("bind", file.bind.as_deref(), |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8080"))
            })?,
        };
        let bind_given = bind.is_some();
        let bind = bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let database = args
            .database
            .clone()
            .or(file.database.map(StoreUrl::from))
            .unwrap_or_else(|| "sqlite://keyward.db".into());
        check_store_url("database", &database, false)?;
        let session_store = args
            .session_store
            .clone()
            .or(file.session_store.map(StoreUrl::from))
            .unwrap_or_else(|| database.clone());
        check_store_url("session-store", &session_store, true)?;
        let session_cache = match args.session_cache {
            Some(c) => c,
            None => file_value(
                "session-cache",
                file.session_cache.as_deref(),
                enum_value::<SessionCache>,
            )?
            .unwrap_or(SessionCache::None),
        };
        if session_cache != SessionCache::None
            && !keyward_redis::is_redis_url(&session_store)
            && !keyward_sql::is_postgres_url(&session_store)
        {
            return Err(bad(
                "session-cache",
                "near and replicated follow the change feed of a Redis or PostgreSQL --session-store; with this store use none",
            ));
        }
        let session_cache_capacity = args
            .session_cache_capacity
            .or(file.session_cache_capacity)
            .unwrap_or(100_000);
        if session_cache_capacity == 0 {
            return Err(bad("session-cache-capacity", "must be at least 1"));
        }
        let (public_url, public_url_derived) = match &args.public_url {
            Some(u) => (u.clone(), false),
            None => match file_value("public-url", file.public_url.as_deref(), parse_url)? {
                Some(u) => (u, false),
                None => (default_public_url(bind, bind_given)?, true),
            },
        };
        let allowed_origins = match &args.allowed_origins {
            Some(v) => v.clone(),
            None => file
                .allowed_origins
                .map(|l| {
                    l.items()
                        .iter()
                        .map(|s| parse_url(s))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(|m| bad("allowed-origins", format!("{m} (in the config file)")))?
                .unwrap_or_default(),
        };
        let dur = |setting: &str,
                   flag: Option<Duration>,
                   file: Option<&str>,
                   default: Duration|
         -> Result<Duration, ConfigError> {
            Ok(match flag {
                Some(d) => d,
                None => file_value(setting, file, parse_duration)?.unwrap_or(default),
            })
        };
        const MIN: u64 = 60;
        let idle_timeout = dur(
            "idle-timeout",
            args.idle_timeout,
            file.idle_timeout.as_deref(),
            Duration::from_secs(30 * MIN),
        )?;
        let absolute_timeout = dur(
            "absolute-timeout",
            args.absolute_timeout,
            file.absolute_timeout.as_deref(),
            Duration::from_secs(7 * 24 * 60 * MIN),
        )?;
        let access_token_ttl = dur(
            "access-token-ttl",
            args.access_token_ttl,
            file.access_token_ttl.as_deref(),
            Duration::from_secs(15 * MIN),
        )?;
        let refresh_token_ttl = dur(
            "refresh-token-ttl",
            args.refresh_token_ttl,
            file.refresh_token_ttl.as_deref(),
            Duration::from_secs(30 * 24 * 60 * MIN),
        )?;
        let login_failure_window = dur(
            "login-failure-window",
            args.login_failure_window,
            file.login_failure_window.as_deref(),
            Duration::from_secs(15 * MIN),
        )?;
        let refresh_reuse_grace = match args.refresh_reuse_grace {
            Some(d) => d,
            None => file_value(
                "refresh-reuse-grace",
                file.refresh_reuse_grace.as_deref(),
                parse_duration_or_zero,
            )?
            .unwrap_or(Duration::ZERO),
        };
        if refresh_reuse_grace > Duration::from_secs(300) {
            return Err(bad(
                "refresh-reuse-grace",
                "must be at most 5m: it is for retries, not for sharing tokens",
            ));
        }
        // Upper bounds keep every computed time representable and every value sensible.
        const DAY: u64 = 86_400;
        for (setting, value, max_days) in [
            ("idle-timeout", idle_timeout, 365),
            ("absolute-timeout", absolute_timeout, 3650),
            ("access-token-ttl", access_token_ttl, 1),
            ("refresh-token-ttl", refresh_token_ttl, 3650),
            ("login-failure-window", login_failure_window, 1),
        ] {
            if value > Duration::from_secs(max_days * DAY) {
                return Err(bad(setting, format!("must be at most {max_days}d")));
            }
        }
        let issuer_given = args.issuer.clone().or(file.issuer);
        let issuer_derived = issuer_given.is_none();
        let issuer =
            issuer_given.unwrap_or_else(|| public_url.as_str().trim_end_matches('/').to_owned());
        if issuer.trim().is_empty() {
            return Err(bad("issuer", "must not be empty"));
        }
        let key_encryption_key = args
            .key_encryption_key
            .clone()
            .or(file.key_encryption_key.map(SecretString::from));
        if let Some(k) = &key_encryption_key {
            if keyward_token::Kek::parse(k.expose_secret()).is_none() {
                return Err(bad(
                    "key-encryption-key",
                    "must be 32 bytes in base64url (43 characters)",
                ));
            }
        }
        let audience = args
            .audience
            .clone()
            .or(file.audience)
            .unwrap_or_else(|| "keyward".into());
        if audience.trim().is_empty() {
            return Err(bad("audience", "must not be empty"));
        }
        let token_algorithm = match args.token_algorithm {
            Some(a) => a,
            None => file_value(
                "token-algorithm",
                file.token_algorithm.as_deref(),
                enum_value::<TokenAlgorithm>,
            )?
            .unwrap_or(TokenAlgorithm::EdDSA),
        };
        let introspection_token = args
            .introspection_token
            .clone()
            .or(file.introspection_token.map(SecretString::from));
        if introspection_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().len() < 16)
        {
            return Err(bad("introspection-token", "must be at least 16 characters"));
        }
        let trusted_proxies = match &args.trusted_proxies {
            Some(v) => v.clone(),
            None => file
                .trusted_proxies
                .map(|l| {
                    l.items()
                        .iter()
                        .map(|s| parse_net(s))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(|m| bad("trusted-proxies", format!("{m} (in the config file)")))?
                .unwrap_or_default(),
        };
        let log_format = match args.log_format {
            Some(f) => f,
            None => file_value(
                "log-format",
                file.log_format.as_deref(),
                enum_value::<LogFormat>,
            )?
            .unwrap_or(LogFormat::Text),
        };
        let per_account = args
            .login_max_failures_per_account
            .or(file.login_max_failures_per_account)
            .unwrap_or(10);
        let per_address = args
            .login_max_failures_per_address
            .or(file.login_max_failures_per_address)
            .unwrap_or(100);
        if per_account == 0 {
            return Err(bad("login-max-failures-per-account", "must be at least 1"));
        }
        if per_address == 0 {
            return Err(bad("login-max-failures-per-address", "must be at least 1"));
        }
        let key_rotation_interval = dur(
            "key-rotation-interval",
            args.key_rotation_interval,
            file.key_rotation_interval.as_deref(),
            Duration::from_secs(30 * 24 * 60 * MIN),
        )?;
        if key_rotation_interval <= access_token_ttl {
            return Err(bad(
                "key-rotation-interval",
                "must be longer than --access-token-ttl (a key signs for at least one token lifetime)",
            ));
        }
        if key_rotation_interval > Duration::from_secs(3650 * DAY) {
            return Err(bad("key-rotation-interval", "must be at most 3650d"));
        }
        let registration_max_per_address = args
            .registration_max_per_address
            .or(file.registration_max_per_address)
            .unwrap_or(20);
        if registration_max_per_address == 0 {
            return Err(bad("registration-max-per-address", "must be at least 1"));
        }
        let token_max_failures_per_address = args
            .token_max_failures_per_address
            .or(file.token_max_failures_per_address)
            .unwrap_or(100);
        if token_max_failures_per_address == 0 {
            return Err(bad("token-max-failures-per-address", "must be at least 1"));
        }
        let hash_concurrency = args.hash_concurrency.or(file.hash_concurrency);
        if hash_concurrency == Some(0) {
            return Err(bad("hash-concurrency", "must be at least 1"));
        }
        let store_timeout = match args.store_timeout {
            Some(d) => d,
            None => file_value(
                "store-timeout",
                file.store_timeout.as_deref(),
                parse_duration,
            )?
            .unwrap_or(Duration::from_secs(2)),
        };
        if store_timeout > Duration::from_secs(60) {
            return Err(bad("store-timeout", "must be at most 60s"));
        }
        let outage_grace = match args.outage_grace {
            Some(d) => d,
            None => file_value(
                "outage-grace",
                file.outage_grace.as_deref(),
                parse_duration_or_zero,
            )?
            .unwrap_or(Duration::from_secs(300)),
        };
        if outage_grace > Duration::from_secs(86_400) {
            return Err(bad("outage-grace", "must be at most 1d"));
        }
        let redis_wait_replicas = match args.redis_wait_replicas {
            Some(w) => w,
            None => file_value(
                "redis-wait-replicas",
                file.redis_wait_replicas.as_deref(),
                parse_wait_replicas,
            )?
            .unwrap_or(WaitReplicas::Auto),
        };
        Ok(Self {
            store_timeout,
            outage_grace,
            redis_wait_replicas,
            bind,
            database,
            session_store,
            session_cache,
            session_cache_capacity,
            public_url,
            public_url_derived,
            allowed_origins,
            idle_timeout,
            absolute_timeout,
            access_token_ttl,
            refresh_token_ttl,
            refresh_reuse_grace,
            issuer,
            issuer_derived,
            audience,
            open_registration: args
                .open_registration
                .or(file.open_registration)
                .unwrap_or(true),
            token_algorithm,
            introspection_token,
            key_encryption_key,
            key_rotation_interval,
            password_grant: args.password_grant.or(file.password_grant).unwrap_or(true),
            registration_max_per_address,
            token_max_failures_per_address,
            trusted_proxies,
            log_format,
            login_max_failures_per_account: per_account,
            login_max_failures_per_address: per_address,
            login_failure_window,
            hash_concurrency,
        })
    }
}

/// The public URL when none is set: `http://127.0.0.1:8080` by default, else `http://<bind>`
/// (`localhost` for an unspecified address).
pub fn default_public_url(bind: SocketAddr, bind_given: bool) -> Result<Url, ConfigError> {
    let text = if bind_given && !bind.ip().is_unspecified() {
        format!("http://{bind}")
    } else if bind_given {
        format!("http://localhost:{}", bind.port())
    } else {
        "http://127.0.0.1:8080".to_owned()
    };
    Url::parse(&text).map_err(|e| {
        bad(
            "public-url",
            format!("cannot derive it from --bind ({e}); set it"),
        )
    })
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        setting: "--config".into(),
        message: format!("cannot read {}: {e}", path.display()),
        source: Some(Box::new(e)),
    })?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_owned();
        // Name the offending key first when serde tells us which it is.
        let key = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("unknown field"))
            .map(|k| format!("{k} (in {})", path.display()));
        ConfigError {
            setting: key.unwrap_or_else(|| format!("--config {}", path.display())),
            message: msg.lines().next().unwrap_or("invalid TOML").to_owned(),
            source: None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database, "sqlite://keyward.db");
        assert_eq!(s.session_store, s.database);
        assert_eq!(s.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(s.idle_timeout, Duration::from_secs(1800));
        assert_eq!(s.absolute_timeout, Duration::from_secs(7 * 86400));
        assert!(s.open_registration);
        assert_eq!(s.token_algorithm, TokenAlgorithm::EdDSA);
    }

    #[test]
    fn flag_over_file_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "idle_timeout = \"5m\"\nabsolute_timeout = \"1d\"\nallowed_origins = [\"https://a.example\"]\n").unwrap();
        let args = SettingsArgs {
            config: Some(path),
            idle_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.absolute_timeout, Duration::from_secs(86400));
        assert_eq!(s.allowed_origins.len(), 1);
    }

    #[test]
    fn file_errors_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "idle_timeout = \"soon\"\n").unwrap();
        let e = Settings::resolve(&SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting --idle-timeout"),
            "{e}"
        );
        std::fs::write(&path, "idle_timeot = \"5m\"\n").unwrap();
        let e = Settings::resolve(&SettingsArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting idle_timeot"),
            "{e}"
        );
    }

    #[test]
    fn redis_session_stores() {
        let with = |store: &str| {
            Settings::resolve(&SettingsArgs {
                session_store: Some(store.into()),
                ..Default::default()
            })
        };
        for ok in [
            "redis://127.0.0.1:6379",
            "rediss://user:pw@cache.example:6380/1",
            "redis+sentinel://10.0.0.1:26379,10.0.0.2/mymaster",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        let e = with("redis+sentinel://u:hunter2@10.0.0.1:26379,10.0.0.2").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("invalid setting --session-store"),
            "{text}"
        );
        assert!(text.contains("service name"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let e = Settings::resolve(&SettingsArgs {
            database: Some("redis://127.0.0.1".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting --database"),
            "{e}"
        );
    }

    #[test]
    fn session_caches_need_a_redis_or_postgres_store() {
        let e = Settings::resolve(&SettingsArgs {
            session_cache: Some(SessionCache::Near),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting --session-cache"),
            "{e}"
        );
        let s = Settings::resolve(&SettingsArgs {
            session_store: Some("redis://127.0.0.1:6379".into()),
            session_cache: Some(SessionCache::Replicated),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.session_cache, SessionCache::Replicated);
        assert_eq!(s.session_cache_capacity, 100_000);
        assert_eq!(s.outage_grace, Duration::from_secs(300));
        let s = Settings::resolve(&SettingsArgs {
            database: Some("postgres://kw@db.example/kw".into()),
            key_encryption_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            session_cache: Some(SessionCache::Near),
            outage_grace: Some(Duration::ZERO),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.session_cache, SessionCache::Near);
        assert_eq!(s.outage_grace, Duration::ZERO);
    }

    #[test]
    fn store_timeout_and_replica_waits() {
        let s = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert_eq!(s.store_timeout, Duration::from_secs(2));
        assert_eq!(s.redis_wait_replicas, WaitReplicas::Auto);
        assert_eq!(parse_wait_replicas("0"), Ok(WaitReplicas::Count(0)));
        assert_eq!(parse_wait_replicas("2"), Ok(WaitReplicas::Count(2)));
        assert!(parse_wait_replicas("many").is_err());
        let e = Settings::resolve(&SettingsArgs {
            store_timeout: Some(Duration::from_secs(600)),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting --store-timeout"),
            "{e}"
        );
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let args = SettingsArgs {
            database: Some("postgres://kw:db-pass-4711@db.example/kw".into()),
            session_store: Some("redis://:cache-pass-0815@cache.example".into()),
            introspection_token: Some("introspection-secret-42".into()),
            key_encryption_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            ..Default::default()
        };
        let settings = Settings::resolve(&args).unwrap();
        for shown in [
            format!("{args:?}"),
            format!("{settings:?}"),
            settings.database.to_string(),
        ] {
            for secret in [
                "db-pass-4711",
                "cache-pass-0815",
                "introspection-secret-42",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        assert_eq!(
            &*settings.database,
            "postgres://kw:db-pass-4711@db.example/kw"
        );
        let tokens = crate::application::token_config(&settings);
        assert!(!format!("{tokens:?}").contains("introspection-secret-42"));
    }

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redacted("redis+sentinel://app:s3cret@h1:26379,h2/m"),
            "redis+sentinel://app:***@h1:26379,h2/m"
        );
        assert_eq!(redacted("postgres://u:pw@db/x"), "postgres://u:***@db/x");
        assert_eq!(redacted("sqlite://keyward.db"), "sqlite://keyward.db");
    }
}
