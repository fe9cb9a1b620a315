//! Settings: flags, `KEYWARD_*` environment variables and an optional TOML file, with the
//! precedence flag > env > file > default. Every setting is declared once, in
//! [`SettingsLayer`]: clap parses the flags and the environment into one layer and the file,
//! through the same parsers, into another; [`Settings::from_matches`] puts the first over the
//! second and [`Settings::resolve`] fills in the defaults and validates the whole into the
//! configuration of each part (stores, HTTP edge, sessions, tokens).
// The settings' doc comments are also `--help`, where `<bind>` reads as a placeholder.
#![allow(rustdoc::invalid_html_tags)]

use clap::{ArgMatches, Args, FromArgMatches, ValueEnum};
use ipnet::IpNet;
use keyward_core::{AuthConfig, Engine, StoreUrl, ThrottleConfig};
use keyward_http::HttpConfig;
use keyward_mail::SmtpUrl;
use keyward_redis::RedisOptions;
use keyward_replica::{CacheMode, CacheOptions};
use keyward_sql::SqlOptions;
use keyward_token::{Kek, SigningAlg, TokenConfig};
use lettre::message::Mailbox;
use secrecy::{ExposeSecret, SecretString};
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

/// A secret setting: kept in a type whose `Debug` never shows it.
fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s))
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:8080"))
}

fn parse_algorithm(s: &str) -> Result<SigningAlg, String> {
    SigningAlg::parse(s.trim()).ok_or_else(|| format!("'{s}' is not one of EdDSA, ES256, RS256"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("'{other}' is not true or false")),
    }
}

/// Where sessions are cached on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SessionCache {
    /// Every validation reads the store.
    None,
    /// A bounded local cache with invalidation.
    Near,
    /// Every node keeps all live sessions.
    Replicated,
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The command line's settings: a [`SettingsLayer`] from flags and `KEYWARD_*` variables, and
/// the file beneath it.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// TOML file with settings (keys in snake_case, e.g. idle_timeout = "30m").
    #[arg(long, env = "KEYWARD_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The settings given as flags or environment variables.
    #[command(flatten)]
    pub layer: SettingsLayer,
}

/// Every setting, declared once. Unset means "not given here". clap fills a layer from the
/// flags and `KEYWARD_*` variables, the same declarations read the TOML file into another
/// (`read_file`), the command line's layer goes over the file's, and [`Settings::resolve`]
/// validates the result into each part's configuration. A new setting is a field here and
/// its line in `resolve`.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsLayer {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYWARD_BIND", value_name = "ADDR", value_parser = parse_bind, global = true)]
    pub bind: Option<SocketAddr>,
    /// Users database: sqlite://PATH or postgres://… [default: sqlite://keyward.db].
    #[arg(long, env = "KEYWARD_DATABASE", value_name = "URL", global = true)]
    pub database: Option<StoreUrl>,
    /// Session store: memory, sqlite://PATH, redis://…, rediss://…, redis+sentinel://…,
    /// redis+cluster://…, postgres://… [default: the --database].
    #[arg(long, env = "KEYWARD_SESSION_STORE", value_name = "URL", global = true)]
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
    #[arg(long, env = "KEYWARD_TOKEN_ALGORITHM", value_name = "ALG", value_parser = parse_algorithm, global = true)]
    pub token_algorithm: Option<SigningAlg>,
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
    /// SMTP server for keyward's mail: smtp://user:pass@host:port (STARTTLS required;
    /// ?tls=none allows plain text, for a local relay) or smtps://… (implicit TLS); the login
    /// and the port are optional [default: none: the email routes answer 503].
    #[arg(
        long,
        env = "KEYWARD_SMTP_URL",
        value_name = "URL",
        hide_env_values = true,
        value_parser = parse_smtp_url,
        global = true
    )]
    pub smtp_url: Option<SmtpUrl>,
    /// Sender of keyward's mail: name@example.com or "Name <name@example.com>" [default:
    /// keyward at the public URL's host].
    #[arg(long, env = "KEYWARD_MAIL_FROM", value_name = "ADDR", value_parser = parse_mailbox, global = true)]
    pub mail_from: Option<Mailbox>,
}

/// An `--smtp-url` (its errors never repeat the URL, which may hold a password).
fn parse_smtp_url(s: &str) -> Result<SmtpUrl, String> {
    s.parse::<SmtpUrl>().map_err(|e| e.to_string())
}

/// A `--mail-from` mailbox.
fn parse_mailbox(s: &str) -> Result<Mailbox, String> {
    s.parse::<Mailbox>()
        .map_err(|e| format!("'{s}' is not a mail address ({e})"))
}

/// Mail: the SMTP server and the sender.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// The server.
    pub smtp: SmtpUrl,
    /// The sender.
    pub from: Mailbox,
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

/// Validated settings: the bound address, and the configuration of each part of keyward.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Where to listen.
    pub bind: SocketAddr,
    /// The stores, and the cache in front of the sessions.
    pub stores: StoreSettings,
    /// The HTTP edge: public URL, other allowed origins, trusted proxies.
    pub http: HttpConfig,
    /// Sessions, registration and throttling.
    pub auth: AuthConfig,
    /// Access and refresh tokens, signing keys.
    pub tokens: TokenConfig,
    /// Password hashes computed at once (`None`: cores - 1).
    pub hash_concurrency: Option<usize>,
    /// Log output.
    pub log_format: LogFormat,
    /// Mail (`None`: no SMTP server, email is off).
    pub mail: Option<MailSettings>,
    /// The settings no one gave, which follow the bound address (port 0 in tests).
    pub(crate) derived: Derived,
}

/// Which settings were derived rather than given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Derived {
    /// The public URL: from `--bind`.
    pub public_url: bool,
    /// The issuer: from the public URL.
    pub issuer: bool,
}

/// Where users, sessions and keys are kept, and how they are reached.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreSettings {
    /// The users database (also the signing keys).
    pub database: StoreUrl,
    /// The session and token store.
    pub session_store: StoreUrl,
    /// Options of the SQL stores.
    pub sql: SqlOptions,
    /// Options of a Redis session store.
    pub redis: RedisOptions,
    /// The cache in front of the session store, if any.
    pub cache: Option<CacheOptions>,
    /// The key that seals signing keys at rest, when given.
    pub key_encryption_key: Option<Kek>,
}

/// The value of a setting: given, else the default; checked by `check` (a message saying
/// what is wrong) so that every bound is stated next to its setting.
fn setting<T>(
    name: &str,
    given: Option<T>,
    default: T,
    check: impl FnOnce(&T) -> Option<String>,
) -> Result<T, ConfigError> {
    let value = given.unwrap_or(default);
    match check(&value) {
        Some(message) => Err(bad(name, message)),
        None => Ok(value),
    }
}

/// No check beyond the parser's.
fn any<T>(_: &T) -> Option<String> {
    None
}

fn at_least_one<T: PartialEq + From<u8>>(n: &T) -> Option<String> {
    (*n == T::from(0)).then(|| "must be at least 1".into())
}

fn at_most(max: Duration, text: &'static str) -> impl Fn(&Duration) -> Option<String> {
    move |d| (*d > max).then(|| format!("must be at most {text}"))
}

fn not_empty<S: AsRef<str>>(s: &S) -> Option<String> {
    s.as_ref()
        .trim()
        .is_empty()
        .then(|| "must not be empty".into())
}

const MINUTE: u64 = 60;
const DAY: u64 = 86_400;

/// A `time` duration from a std one (saturating).
pub fn dur(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

impl Settings {
    /// The settings of a command line: its flags and `KEYWARD_*` variables, over the file that
    /// `--config` names, over the defaults; validated. `matches` are of a command that
    /// flattens [`SettingsArgs`].
    pub fn from_matches(matches: &ArgMatches) -> Result<Self, ConfigError> {
        let args = SettingsArgs::from_arg_matches(matches).map_err(ConfigError::from)?;
        let layer = match &args.config {
            Some(path) => {
                // A setting the command line gives is not read from the file at all: a bad
                // value there does not stop a start that overrides it.
                let mut layer = read_file(path, |id| matches.contains_id(id))?;
                layer
                    .update_from_arg_matches(matches)
                    .map_err(ConfigError::from)?;
                layer
            }
            None => args.layer,
        };
        Self::resolve(layer)
    }

    /// Validate a layer of settings; those it leaves unset take their defaults.
    pub fn resolve(l: SettingsLayer) -> Result<Self, ConfigError> {
        let bind_given = l.bind.is_some();
        let bind = l
            .bind
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let database = setting("database", l.database, default_database()?, |url| {
            match url.engine() {
                e if e.holds_users() => None,
                Engine::Redis { .. } => Some("Redis holds sessions and tokens, not users: give it as --session-store and keep --database on sqlite:// or postgres://".into()),
                _ => Some(format!("'{url}' holds no users: the database is sqlite://PATH or postgres://…")),
            }
        })?;
        let session_store =
            setting(
                "session-store",
                l.session_store,
                database.clone(),
                |url| match url.engine() {
                    Engine::Redis { .. } => keyward_redis::url::parse(url)
                        .err()
                        .map(|e| format!("'{url}': {e}")),
                    _ => None,
                },
            )?;
        let session_cache = setting(
            "session-cache",
            l.session_cache,
            SessionCache::None,
            |cache| {
                (*cache != SessionCache::None && !session_store.engine().has_change_feed()).then(|| {
                    "near and replicated follow the change feed of a Redis or PostgreSQL --session-store; with this store use none".into()
                })
            },
        )?;
        let capacity = setting(
            "session-cache-capacity",
            l.session_cache_capacity,
            100_000,
            at_least_one,
        )?;
        let store_timeout = setting(
            "store-timeout",
            l.store_timeout,
            Duration::from_secs(2),
            at_most(Duration::from_secs(60), "60s"),
        )?;
        let outage_grace = setting(
            "outage-grace",
            l.outage_grace,
            Duration::from_secs(300),
            at_most(Duration::from_secs(DAY), "1d"),
        )?;
        // Parsed here, once: a bad key stops start-up before any store is opened.
        let key_encryption_key = l
            .key_encryption_key
            .map(|k| {
                Kek::parse(k.expose_secret()).ok_or_else(|| {
                    bad(
                        "key-encryption-key",
                        "must be 32 bytes in base64url (43 characters)",
                    )
                })
            })
            .transpose()?;
        let idle_timeout = setting(
            "idle-timeout",
            l.idle_timeout,
            Duration::from_secs(30 * MINUTE),
            at_most(Duration::from_secs(365 * DAY), "365d"),
        )?;
        let absolute_timeout = setting(
            "absolute-timeout",
            l.absolute_timeout,
            Duration::from_secs(7 * DAY),
            at_most(Duration::from_secs(3650 * DAY), "3650d"),
        )?;
        let access_ttl = setting(
            "access-token-ttl",
            l.access_token_ttl,
            Duration::from_secs(15 * MINUTE),
            at_most(Duration::from_secs(DAY), "1d"),
        )?;
        let stores = StoreSettings {
            sql: SqlOptions {
                timeout: store_timeout,
                ..SqlOptions::default()
            },
            redis: RedisOptions {
                idle_timeout: dur(idle_timeout),
                timeout: store_timeout,
                wait_replicas: l.redis_wait_replicas.unwrap_or(WaitReplicas::Auto),
                wait_timeout: (store_timeout / 2).min(Duration::from_secs(1)),
            },
            cache: match session_cache {
                SessionCache::None => None,
                SessionCache::Near => Some(CacheMode::Near(capacity)),
                SessionCache::Replicated => Some(CacheMode::Replicated),
            }
            .map(|mode| CacheOptions {
                mode,
                idle_timeout: dur(idle_timeout),
                timeout: store_timeout,
                outage_grace,
            }),
            database,
            session_store,
            key_encryption_key,
        };

        let public_url_derived = l.public_url.is_none();
        let http = HttpConfig {
            public_url: match l.public_url {
                Some(url) => url,
                None => default_public_url(bind, bind_given)?,
            },
            allowed_origins: l.allowed_origins.unwrap_or_default(),
            trusted_proxies: l.trusted_proxies.unwrap_or_default(),
        };

        let auth = AuthConfig {
            idle_timeout: dur(idle_timeout),
            absolute_timeout: dur(absolute_timeout),
            open_registration: l.open_registration.unwrap_or(true),
            throttle: ThrottleConfig {
                per_account: setting(
                    "login-max-failures-per-account",
                    l.login_max_failures_per_account,
                    10,
                    at_least_one,
                )?,
                per_address: setting(
                    "login-max-failures-per-address",
                    l.login_max_failures_per_address,
                    100,
                    at_least_one,
                )?,
                window: dur(setting(
                    "login-failure-window",
                    l.login_failure_window,
                    Duration::from_secs(15 * MINUTE),
                    at_most(Duration::from_secs(DAY), "1d"),
                )?),
                registrations_per_address: setting(
                    "registration-max-per-address",
                    l.registration_max_per_address,
                    20,
                    at_least_one,
                )?,
                token_failures_per_address: setting(
                    "token-max-failures-per-address",
                    l.token_max_failures_per_address,
                    100,
                    at_least_one,
                )?,
            },
        };

        let issuer_derived = l.issuer.is_none();
        let tokens = TokenConfig {
            issuer: setting("issuer", l.issuer, issuer_of(&http.public_url), not_empty)?,
            audience: setting("audience", l.audience, "keyward".into(), not_empty)?,
            access_ttl: dur(access_ttl),
            refresh_ttl: dur(setting(
                "refresh-token-ttl",
                l.refresh_token_ttl,
                Duration::from_secs(30 * DAY),
                at_most(Duration::from_secs(3650 * DAY), "3650d"),
            )?),
            refresh_reuse_grace: dur(setting(
                "refresh-reuse-grace",
                l.refresh_reuse_grace,
                Duration::ZERO,
                |d| {
                    (*d > Duration::from_secs(300)).then(|| {
                        "must be at most 5m: it is for retries, not for sharing tokens".into()
                    })
                },
            )?),
            algorithm: l.token_algorithm.unwrap_or(SigningAlg::EdDSA),
            password_grant: l.password_grant.unwrap_or(true),
            key_rotation_interval: dur(setting(
                "key-rotation-interval",
                l.key_rotation_interval,
                Duration::from_secs(30 * DAY),
                |d| {
                    if *d <= access_ttl {
                        Some("must be longer than --access-token-ttl (a key signs for at least one token lifetime)".into())
                    } else {
                        at_most(Duration::from_secs(3650 * DAY), "3650d")(d)
                    }
                },
            )?),
            introspection_token: setting(
                "introspection-token",
                l.introspection_token.map(Some),
                None,
                |t| {
                    t.as_ref()
                        .filter(|t| t.expose_secret().len() < 16)
                        .map(|_| "must be at least 16 characters".into())
                },
            )?,
        };

        let mail = match (l.smtp_url, l.mail_from) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(bad(
                    "mail-from",
                    "needs --smtp-url: without an SMTP server keyward sends no mail",
                ))
            }
            (Some(smtp), Some(from)) => Some(MailSettings { smtp, from }),
            (Some(smtp), None) => {
                let host = http.public_url.host_str().unwrap_or_default();
                let from = format!("keyward <keyward@{host}>").parse::<Mailbox>().map_err(|_| {
                    bad(
                        "mail-from",
                        format!("must be given: keyward@{host} (from the public URL) is not a mail address"),
                    )
                })?;
                Some(MailSettings { smtp, from })
            }
        };

        Ok(Self {
            bind,
            stores,
            http,
            auth,
            tokens,
            hash_concurrency: setting(
                "hash-concurrency",
                l.hash_concurrency.map(Some),
                None,
                |n| (*n == Some(0)).then(|| "must be at least 1".into()),
            )?,
            log_format: setting("log-format", l.log_format, LogFormat::Text, any)?,
            mail,
            derived: Derived {
                public_url: public_url_derived,
                issuer: issuer_derived,
            },
        })
    }

    /// The address was bound (port 0 picks one): the settings derived from `--bind` follow
    /// the bound address, which is the origin browsers will send.
    pub(crate) fn bound_to(&mut self, addr: SocketAddr) -> Result<(), ConfigError> {
        if self.derived.public_url {
            self.http.public_url = default_public_url(addr, true)?;
        }
        if self.derived.issuer {
            self.tokens.issuer = issuer_of(&self.http.public_url);
        }
        Ok(())
    }
}

/// The database when none is set: `sqlite://keyward.db` in the working directory.
fn default_database() -> Result<StoreUrl, ConfigError> {
    "sqlite://keyward.db"
        .parse()
        .map_err(|e: keyward_core::StoreUrlError| bad("database", e.to_string()))
}

/// The issuer when none is set: the public URL without its trailing slash.
fn issuer_of(public_url: &Url) -> String {
    public_url.as_str().trim_end_matches('/').to_owned()
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

/// Read the TOML file into a layer of settings. Each key is the snake_case name of a setting,
/// and its value is parsed by that setting's own parser, exactly as the flag's would be:
/// strings as written, numbers and booleans as their text, lists as comma-separated items.
/// Keys for which `overridden` is true are checked to be settings, and not read further.
fn read_file(path: &Path, overridden: impl Fn(&str) -> bool) -> Result<SettingsLayer, ConfigError> {
    let in_file = |setting: String, message: String| ConfigError {
        setting,
        message: format!("{message} (in {})", path.display()),
        source: None,
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        setting: "--config".into(),
        message: format!("cannot read {}: {e}", path.display()),
        source: Some(Box::new(e)),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        in_file(
            format!("--config {}", path.display()),
            e.message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned(),
        )
    })?;
    let command = SettingsLayer::augment_args(clap::Command::new("keyward.toml"))
        .no_binary_name(true)
        // The file is beneath the environment, which the command line already read.
        .mut_args(|arg| arg.env(None));
    let mut argv = Vec::with_capacity(table.len());
    for (key, value) in &table {
        let Some(flag) = command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str())
            .and_then(|arg| arg.get_long())
        else {
            return Err(in_file(key.clone(), "no such setting".into()));
        };
        if overridden(key) {
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| in_file(format!("--{flag}"), "list items must be strings".into()))?
                .join(","),
            _ => {
                return Err(in_file(
                    format!("--{flag}"),
                    "must be a string, a number, true/false or a list".into(),
                ))
            }
        };
        argv.push(format!("--{flag}={text}"));
    }
    let matches = command.try_get_matches_from(argv).map_err(|e| {
        let e = ConfigError::from(e);
        in_file(e.setting, e.message)
    })?;
    SettingsLayer::from_arg_matches(&matches).map_err(ConfigError::from)
}

/// A clap error about a value as an invalid setting: the flag it names, and what its parser
/// said (which never repeats a password: a store URL's parser redacts it).
impl From<clap::Error> for ConfigError {
    fn from(e: clap::Error) -> Self {
        use clap::error::{ContextKind, ContextValue};
        let text = |kind| match e.get(kind) {
            Some(ContextValue::String(s)) => Some(s.clone()),
            Some(ContextValue::Strings(v)) => Some(v.join(", ")),
            _ => None,
        };
        let setting = text(ContextKind::InvalidArg)
            .map(|arg| arg.split([' ', '=']).next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "--config".to_owned());
        let message = match (
            std::error::Error::source(&e),
            text(ContextKind::InvalidValue),
            text(ContextKind::ValidValue),
        ) {
            (Some(cause), _, _) => cause.to_string(),
            (None, Some(value), Some(valid)) => format!("'{value}' is not one of {valid}"),
            _ => e
                .render()
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid")
                .trim_start_matches("error: ")
                .to_owned(),
        };
        ConfigError {
            setting,
            message,
            source: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A command with the settings, as the binary has.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: SettingsArgs,
    }

    fn from_argv(argv: &[&str]) -> Result<Settings, ConfigError> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("keyward").chain(argv.iter().copied()))
            .map_err(ConfigError::from)?;
        Settings::from_matches(&matches)
    }

    fn with(layer: SettingsLayer) -> Result<Settings, ConfigError> {
        Settings::resolve(layer)
    }

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
        let s = with(SettingsLayer::default()).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.stores.database.expose(), "sqlite://keyward.db");
        assert_eq!(s.stores.session_store, s.stores.database);
        assert_eq!(s.http.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(s.tokens.issuer, "http://127.0.0.1:8080");
        assert_eq!(s.auth.idle_timeout, time::Duration::minutes(30));
        assert_eq!(s.auth.absolute_timeout, time::Duration::days(7));
        assert!(s.auth.open_registration);
        assert_eq!(s.auth.throttle.per_account, 10);
        assert_eq!(s.tokens.algorithm, SigningAlg::EdDSA);
        assert_eq!(s.tokens.key_rotation_interval, time::Duration::days(30));
        assert!(s.stores.cache.is_none());
        assert_eq!(s.stores.redis.timeout, Duration::from_secs(2));
        assert_eq!(s.stores.redis.wait_replicas, WaitReplicas::Auto);
        assert_eq!(s.auth.throttle.registrations_per_address, 20);
        assert_eq!(s.auth.throttle.token_failures_per_address, 100);
        assert!(s.tokens.password_grant);
        assert!(s.mail.is_none());
    }

    #[test]
    fn mail_settings() {
        let s = from_argv(&["--smtp-url", "smtps://app:s3cret@mail.example.com"]).unwrap();
        let mail = s.mail.unwrap();
        assert_eq!(mail.smtp.port, 465);
        assert_eq!(mail.from.to_string(), "keyward <keyward@127.0.0.1>");
        assert!(!format!("{:?}", mail.smtp).contains("s3cret"));
        let s = from_argv(&[
            "--smtp-url",
            "smtp://127.0.0.1:2525?tls=none",
            "--mail-from",
            "Accounts <accounts@example.com>",
        ])
        .unwrap();
        assert_eq!(
            s.mail.unwrap().from.to_string(),
            "Accounts <accounts@example.com>"
        );
        let e = from_argv(&["--mail-from", "a@example.com"]).unwrap_err();
        assert_eq!(e.setting, "--mail-from");
        let e = from_argv(&["--smtp-url", "http://app:s3cret@mail.example.com"]).unwrap_err();
        assert_eq!(e.setting, "--smtp-url");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = from_argv(&[
            "--smtp-url",
            "smtp://mail.example.com",
            "--mail-from",
            "not an address",
        ])
        .unwrap_err();
        assert_eq!(e.setting, "--mail-from");
    }

    #[test]
    fn flag_over_file_over_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "idle_timeout = \"5m\"\nabsolute_timeout = \"1d\"\nallowed_origins = [\"https://a.example\", \"https://b.example\"]\nlogin_max_failures_per_account = 3\nopen_registration = false\ntoken_algorithm = \"ES256\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let s = from_argv(&["--config", path, "--idle-timeout", "1m"]).unwrap();
        assert_eq!(s.auth.idle_timeout, time::Duration::minutes(1));
        assert_eq!(s.auth.absolute_timeout, time::Duration::days(1));
        assert_eq!(s.http.allowed_origins.len(), 2);
        assert_eq!(s.auth.throttle.per_account, 3);
        assert!(!s.auth.open_registration);
        assert_eq!(s.tokens.algorithm, SigningAlg::ES256);
        // A flag given after the sub-command's place, and a list flag, override the file too.
        let s = from_argv(&["--allowed-origins", "https://c.example", "--config", path]).unwrap();
        assert_eq!(s.http.allowed_origins.len(), 1);
        assert_eq!(s.auth.idle_timeout, time::Duration::minutes(5));
        // A bad value in the file does not matter when the command line overrides it; a key
        // that is no setting still does.
        std::fs::write(dir.path().join("k.toml"), "idle_timeout = \"bogus\"\n").unwrap();
        assert!(from_argv(&["--config", path]).is_err());
        let s = from_argv(&["--config", path, "--idle-timeout", "2m"]).unwrap();
        assert_eq!(s.auth.idle_timeout, time::Duration::minutes(2));
        std::fs::write(dir.path().join("k.toml"), "idle_timeot = \"5m\"\n").unwrap();
        assert!(from_argv(&["--config", path, "--idle-timeout", "2m"]).is_err());
    }

    #[test]
    fn file_errors_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        let text = path.to_str().unwrap();
        for (file, setting) in [
            ("idle_timeout = \"soon\"\n", "--idle-timeout"),
            ("idle_timeot = \"5m\"\n", "idle_timeot"),
            ("config = \"other.toml\"\n", "config"),
            ("session_cache = \"everywhere\"\n", "--session-cache"),
            (
                "login_max_failures_per_account = -1\n",
                "--login-max-failures-per-account",
            ),
            ("trusted_proxies = [1, 2]\n", "--trusted-proxies"),
            ("bind = { port = 1 }\n", "--bind"),
            ("idle_timeout = \"0s\"\n", "--idle-timeout"),
            ("session_store = \"mysql://db\"\n", "--session-store"),
        ] {
            std::fs::write(&path, file).unwrap();
            let e = from_argv(&["--config", text]).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid setting {setting}")),
                "{file}: {e}"
            );
            assert!(e.contains(text), "{file}: {e}");
        }
        std::fs::write(&path, "idle_timeout = [").unwrap();
        let e = from_argv(&["--config", text]).unwrap_err().to_string();
        assert!(e.starts_with("invalid setting --config"), "{e}");
    }

    #[test]
    fn redis_session_stores() {
        let store = |url: &str| {
            with(SettingsLayer {
                session_store: Some(url.parse().unwrap()),
                ..Default::default()
            })
        };
        for ok in [
            "redis://127.0.0.1:6379",
            "rediss://user:pw@cache.example:6380/1",
            "redis+sentinel://10.0.0.1:26379,10.0.0.2/mymaster",
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        ] {
            assert!(store(ok).is_ok(), "{ok}");
        }
        let text = store("redis+sentinel://u:hunter2@10.0.0.1:26379,10.0.0.2")
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("invalid setting --session-store"),
            "{text}"
        );
        assert!(text.contains("service name"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        for database in ["redis://127.0.0.1", "memory"] {
            let e = with(SettingsLayer {
                database: Some(database.parse().unwrap()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(
                e.to_string().starts_with("invalid setting --database"),
                "{e}"
            );
        }
        let e = from_argv(&["--database", "mysql://root:pw@db/x"]).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting --database"),
            "{e}"
        );
        assert!(!e.to_string().contains(":pw@"), "{e}");
    }

    #[test]
    fn session_caches_need_a_store_with_a_change_feed() {
        let e = with(SettingsLayer {
            session_cache: Some(SessionCache::Near),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid setting --session-cache"),
            "{e}"
        );
        let s = with(SettingsLayer {
            session_store: Some("redis://127.0.0.1:6379".parse().unwrap()),
            session_cache: Some(SessionCache::Replicated),
            ..Default::default()
        })
        .unwrap();
        let cache = s.stores.cache.unwrap();
        assert_eq!(cache.mode, CacheMode::Replicated);
        assert_eq!(cache.outage_grace, Duration::from_secs(300));
        let s = with(SettingsLayer {
            database: Some("postgres://kw@db.example/kw".parse().unwrap()),
            key_encryption_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            session_cache: Some(SessionCache::Near),
            outage_grace: Some(Duration::ZERO),
            ..Default::default()
        })
        .unwrap();
        let cache = s.stores.cache.unwrap();
        assert_eq!(cache.mode, CacheMode::Near(100_000));
        assert_eq!(cache.outage_grace, Duration::ZERO);
    }

    #[test]
    fn bounds_name_their_setting() {
        for (argv, setting) in [
            (&["--store-timeout", "10m"][..], "--store-timeout"),
            (&["--idle-timeout", "400d"], "--idle-timeout"),
            (&["--access-token-ttl", "2d"], "--access-token-ttl"),
            (&["--refresh-reuse-grace", "10m"], "--refresh-reuse-grace"),
            (
                &["--key-rotation-interval", "10m"],
                "--key-rotation-interval",
            ),
            (
                &["--login-max-failures-per-address", "0"],
                "--login-max-failures-per-address",
            ),
            (
                &["--session-cache-capacity", "0"],
                "--session-cache-capacity",
            ),
            (&["--hash-concurrency", "0"], "--hash-concurrency"),
            (&["--introspection-token", "short"], "--introspection-token"),
            (&["--key-encryption-key", "short"], "--key-encryption-key"),
            (&["--audience", " "], "--audience"),
        ] {
            let e = from_argv(argv).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid setting {setting}")),
                "{argv:?}: {e}"
            );
        }
        assert_eq!(parse_wait_replicas("0"), Ok(WaitReplicas::Count(0)));
        assert_eq!(parse_wait_replicas("2"), Ok(WaitReplicas::Count(2)));
        assert!(parse_wait_replicas("many").is_err());
    }

    #[test]
    fn a_bound_port_becomes_the_public_url_and_issuer() {
        let mut s = from_argv(&["--bind", "127.0.0.1:0"]).unwrap();
        s.bound_to("127.0.0.1:4711".parse().unwrap()).unwrap();
        assert_eq!(s.http.public_url.as_str(), "http://127.0.0.1:4711/");
        assert_eq!(s.tokens.issuer, "http://127.0.0.1:4711");
        let mut s =
            from_argv(&["--bind", "127.0.0.1:0", "--issuer", "https://id.example"]).unwrap();
        s.bound_to("127.0.0.1:4711".parse().unwrap()).unwrap();
        assert_eq!(s.tokens.issuer, "https://id.example");
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let layer = SettingsLayer {
            database: Some("postgres://kw:db-pass-4711@db.example/kw".parse().unwrap()),
            session_store: Some("redis://:cache-pass-0815@cache.example".parse().unwrap()),
            introspection_token: Some("introspection-secret-42".into()),
            key_encryption_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
            ..Default::default()
        };
        let settings = with(layer.clone()).unwrap();
        for shown in [
            format!("{layer:?}"),
            format!("{settings:?}"),
            settings.stores.database.to_string(),
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
            settings.stores.database.expose(),
            "postgres://kw:db-pass-4711@db.example/kw"
        );
    }
}
