//! keyward's test kit: the store conformance suite, `spawn_app` (a real server on a free
//! loopback port with a controllable clock), an HTTP client that behaves like a plain API
//! client, and helpers to run the `keyward` binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(missing_docs)]

pub mod cache;
pub mod conformance;
pub mod nginx;
pub mod pg;
pub mod ports;
pub mod proxy;
pub mod redis;
pub mod smtp;
pub mod traefik;

use keyward_core::DynTokenStore;
use keyward_core::{
    AuthConfig, DynSessionStore, DynUserStore, ManualClock, MemorySessionStore, SessionStore,
    UserStore,
};
use keyward_http::Keyward;
use keyward_sql::SqlStore;
use keyward_token::{SigningAlg, TokenService};
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Client, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use tempfile::TempDir;

pub use conformance::Fixture;

/// Print logs to the test's output when `KEYWARD_TEST_LOG` names a filter (`RUST_LOG`
/// syntax): for debugging a test, off otherwise.
pub fn logs() {
    if let Ok(filter) = std::env::var("KEYWARD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A fresh SQLite file store in a temp dir, for the conformance suite.
pub async fn sqlite_fixture() -> Fixture<SqlStore> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kw.db").display());
    let store = SqlStore::open(&url.parse().unwrap()).await.unwrap();
    Fixture {
        store: Arc::new(store),
        keep: vec![Box::new(dir)],
    }
}

/// SQLite as a session store.
pub async fn sqlite_sessions() -> Fixture<dyn SessionStore> {
    let f = sqlite_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// SQLite in memory as a session store: no inline readers, every query through sqlx.
pub async fn sqlite_memory_sessions() -> Fixture<dyn SessionStore> {
    let store = SqlStore::open(&"sqlite::memory:".parse().unwrap())
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        keep: vec![],
    }
}

/// A fresh private PostgreSQL as every kind of store.
pub async fn postgres_fixture() -> Fixture<keyward_sql::SqlStore> {
    let server = pg::PgServer::start().await;
    let store = keyward_sql::SqlStore::open(&server.url.parse().unwrap())
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        keep: vec![Box::new(server)],
    }
}

/// PostgreSQL as a session store.
pub async fn postgres_sessions() -> Fixture<dyn SessionStore> {
    let f = postgres_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// PostgreSQL as a user store.
pub async fn postgres_users() -> Fixture<dyn UserStore> {
    let f = postgres_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// PostgreSQL as a token store.
pub async fn postgres_tokens() -> Fixture<dyn keyward_core::TokenStore> {
    let f = postgres_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// SQLite as a key store.
pub async fn sqlite_keys() -> Fixture<dyn keyward_core::KeyStore> {
    let f = sqlite_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// PostgreSQL as a key store.
pub async fn postgres_keys() -> Fixture<dyn keyward_core::KeyStore> {
    let f = postgres_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// SQLite as a user store.
pub async fn sqlite_users() -> Fixture<dyn UserStore> {
    let f = sqlite_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// SQLite as a token store.
pub async fn sqlite_tokens() -> Fixture<dyn keyward_core::TokenStore> {
    let f = sqlite_fixture().await;
    Fixture {
        store: f.store,
        keep: f.keep,
    }
}

/// A store on a private standalone Redis.
pub async fn redis_store() -> (Arc<keyward_redis::RedisStore>, redis::RedisServer) {
    let server = redis::RedisServer::start().await;
    let store =
        keyward_redis::RedisStore::connect(&server.url().parse().unwrap(), Default::default())
            .await
            .unwrap();
    (Arc::new(store), server)
}

/// Redis as a session store.
pub async fn redis_sessions() -> Fixture<dyn SessionStore> {
    let (store, server) = redis_store().await;
    Fixture {
        store,
        keep: vec![Box::new(server)],
    }
}

async fn cached<E: cache::CacheEngine + 'static>(
    engine: E,
    mode: keyward_replica::CacheMode,
) -> (
    Arc<keyward_replica::CachedSessions>,
    Box<dyn std::any::Any + Send + Sync>,
) {
    let node = engine.node(mode, std::time::Duration::ZERO).await;
    (node, Box::new(engine))
}

/// A near cache in front of a private Redis.
pub async fn redis_near_sessions() -> Fixture<dyn SessionStore> {
    let (store, e) = cached(
        cache::RedisEngine::start().await,
        keyward_replica::CacheMode::Near(1000),
    )
    .await;
    Fixture {
        store,
        keep: vec![e],
    }
}

/// A replicated cache in front of a private Redis.
pub async fn redis_replicated_sessions() -> Fixture<dyn SessionStore> {
    let (store, e) = cached(
        cache::RedisEngine::start().await,
        keyward_replica::CacheMode::Replicated,
    )
    .await;
    Fixture {
        store,
        keep: vec![e],
    }
}

/// Redis as a token store, through a replicated cache (the deny check answers from memory).
pub async fn redis_cached_tokens() -> Fixture<dyn keyward_core::TokenStore> {
    let (store, e) = cached(
        cache::RedisEngine::start().await,
        keyward_replica::CacheMode::Replicated,
    )
    .await;
    Fixture {
        store,
        keep: vec![e],
    }
}

/// A near cache in front of a private PostgreSQL.
pub async fn postgres_near_sessions() -> Fixture<dyn SessionStore> {
    let (store, e) = cached(
        cache::PgEngine::start().await,
        keyward_replica::CacheMode::Near(1000),
    )
    .await;
    Fixture {
        store,
        keep: vec![e],
    }
}

/// A replicated cache in front of a private PostgreSQL.
pub async fn postgres_replicated_sessions() -> Fixture<dyn SessionStore> {
    let (store, e) = cached(
        cache::PgEngine::start().await,
        keyward_replica::CacheMode::Replicated,
    )
    .await;
    Fixture {
        store,
        keep: vec![e],
    }
}

/// PostgreSQL as a token store, through a replicated cache.
pub async fn postgres_cached_tokens() -> Fixture<dyn keyward_core::TokenStore> {
    let (store, e) = cached(
        cache::PgEngine::start().await,
        keyward_replica::CacheMode::Replicated,
    )
    .await;
    Fixture {
        store,
        keep: vec![e],
    }
}

/// Redis as a token store.
pub async fn redis_tokens() -> Fixture<dyn keyward_core::TokenStore> {
    let (store, server) = redis_store().await;
    Fixture {
        store,
        keep: vec![Box::new(server)],
    }
}

/// The in-memory token store.
pub async fn memory_tokens() -> Fixture<dyn keyward_core::TokenStore> {
    Fixture {
        store: Arc::new(MemorySessionStore::new()),
        keep: vec![],
    }
}

/// The in-memory session store.
pub async fn memory_sessions() -> Fixture<dyn SessionStore> {
    Fixture {
        store: Arc::new(MemorySessionStore::new()),
        keep: vec![],
    }
}

/// Where the app under test keeps sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionBackend {
    /// In the SQLite database with the users.
    Sqlite,
    /// In memory.
    Memory,
    /// In memory, behind a switch that makes every call fail as if the store were down.
    Switchable,
}

/// A session store that can be switched off: every call then fails with
/// `StoreError::Unavailable`, as a store that went away would.
#[derive(Default)]
pub struct SwitchableStore {
    inner: MemorySessionStore,
    down: std::sync::atomic::AtomicBool,
}

impl SwitchableStore {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self) -> keyward_core::StoreResult<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(keyward_core::StoreError::Unavailable(
                "switched off by the test".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for SwitchableStore {
    async fn create(&self, s: &keyward_core::SessionRecord) -> keyward_core::StoreResult<()> {
        self.check()?;
        self.inner.create(s).await
    }
    async fn get(
        &self,
        h: &keyward_core::TokenHash,
    ) -> keyward_core::StoreResult<Option<keyward_core::SessionRecord>> {
        self.check()?;
        self.inner.get(h).await
    }
    async fn touch(
        &self,
        h: &keyward_core::TokenHash,
        at: time::OffsetDateTime,
    ) -> keyward_core::StoreResult<()> {
        self.check()?;
        self.inner.touch(h, at).await
    }
    async fn delete(
        &self,
        h: &keyward_core::TokenHash,
    ) -> keyward_core::StoreResult<Option<keyward_core::SessionRecord>> {
        self.check()?;
        self.inner.delete(h).await
    }
    async fn delete_by_id(
        &self,
        id: keyward_core::SessionId,
        owner: Option<keyward_core::UserId>,
    ) -> keyward_core::StoreResult<Option<keyward_core::SessionRecord>> {
        self.check()?;
        self.inner.delete_by_id(id, owner).await
    }
    async fn delete_for_user(
        &self,
        u: keyward_core::UserId,
        keep: Option<keyward_core::SessionId>,
    ) -> keyward_core::StoreResult<u64> {
        self.check()?;
        self.inner.delete_for_user(u, keep).await
    }
    async fn list_for_user(
        &self,
        u: keyward_core::UserId,
    ) -> keyward_core::StoreResult<Vec<keyward_core::SessionRecord>> {
        self.check()?;
        self.inner.list_for_user(u).await
    }
    async fn replace(
        &self,
        old: &keyward_core::TokenHash,
        new: &keyward_core::SessionRecord,
    ) -> keyward_core::StoreResult<bool> {
        self.check()?;
        self.inner.replace(old, new).await
    }
    async fn purge_expired(
        &self,
        now: time::OffsetDateTime,
        idle: time::OffsetDateTime,
    ) -> keyward_core::StoreResult<u64> {
        self.check()?;
        self.inner.purge_expired(now, idle).await
    }
    async fn ping(&self) -> keyward_core::StoreResult<()> {
        self.check()
    }
}

/// How to build the app under test.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub auth: AuthConfig,
    pub sessions: SessionBackend,
    /// `None`: `http://127.0.0.1:<port>`.
    pub public_url: Option<String>,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub access_ttl: time::Duration,
    pub refresh_ttl: time::Duration,
    pub algorithm: SigningAlg,
    pub refresh_reuse_grace: time::Duration,
    pub introspection_token: Option<String>,
    pub password_grant: bool,
    pub key_rotation_interval: time::Duration,
    /// `--smtp-url` (`None`: email is off).
    pub smtp_url: Option<String>,
    /// `--database` (`None`: a fresh SQLite file in a temp dir).
    pub database: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            sessions: SessionBackend::Sqlite,
            public_url: None,
            allowed_origins: vec![],
            trusted_proxies: vec![],
            access_ttl: time::Duration::minutes(15),
            refresh_ttl: time::Duration::days(30),
            algorithm: SigningAlg::EdDSA,
            refresh_reuse_grace: time::Duration::ZERO,
            introspection_token: Some(INTROSPECTION_TOKEN.to_owned()),
            password_grant: true,
            key_rotation_interval: time::Duration::days(30),
            smtp_url: None,
            database: None,
        }
    }
}

/// The introspection secret of apps built by `spawn_app`.
pub const INTROSPECTION_TOKEN: &str = "introspection-secret-for-tests";

/// A running keyward on a free loopback port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub keyward: Keyward,
    pub users: DynUserStore,
    pub sessions: DynSessionStore,
    pub token_store: DynTokenStore,
    pub tokens: Arc<TokenService>,
    /// The mail outbox (in the database).
    pub outbox: keyward_core::DynOutbox,
    /// `--database`.
    pub database: String,
    /// Set when the app was built with [`SessionBackend::Switchable`].
    pub switch: Option<Arc<SwitchableStore>>,
    pub client: Client,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Spawn keyward with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// Spawn keyward with these options: the production composition root
/// ([`keyward::Application`]) on `127.0.0.1:0`, with a fresh SQLite database in a temp dir and
/// a [`ManualClock`].
pub async fn spawn_app_with(opts: AppOptions) -> TestApp {
    use keyward::config::{Settings, SettingsLayer};
    let dir = tempfile::tempdir().unwrap();
    let std = |d: time::Duration| std::time::Duration::try_from(d).unwrap();
    let t = &opts.auth.throttle;
    let layer = SettingsLayer {
        bind: Some("127.0.0.1:0".parse().unwrap()),
        database: Some(
            opts.database
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("keyward.db").display()))
                .parse()
                .unwrap(),
        ),
        smtp_url: opts.smtp_url.as_deref().map(|u| u.parse().unwrap()),
        mail_from: opts
            .smtp_url
            .as_ref()
            .map(|_| "keyward <no-reply@keyward.test>".parse().unwrap()),
        session_store: (opts.sessions == SessionBackend::Memory).then(|| "memory".parse().unwrap()),
        public_url: opts.public_url.as_deref().map(|u| u.parse().unwrap()),
        allowed_origins: Some(
            opts.allowed_origins
                .iter()
                .map(|o| o.parse().unwrap())
                .collect(),
        ),
        trusted_proxies: Some(
            opts.trusted_proxies
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
        ),
        idle_timeout: Some(std(opts.auth.idle_timeout)),
        absolute_timeout: Some(std(opts.auth.absolute_timeout)),
        open_registration: Some(opts.auth.open_registration),
        login_max_failures_per_account: Some(t.per_account),
        login_max_failures_per_address: Some(t.per_address),
        login_failure_window: Some(std(t.window)),
        registration_max_per_address: Some(t.registrations_per_address),
        token_max_failures_per_address: Some(t.token_failures_per_address),
        access_token_ttl: Some(std(opts.access_ttl)),
        refresh_token_ttl: Some(std(opts.refresh_ttl)),
        refresh_reuse_grace: Some(std(opts.refresh_reuse_grace)),
        token_algorithm: Some(opts.algorithm),
        introspection_token: opts.introspection_token.map(Into::into),
        password_grant: Some(opts.password_grant),
        key_rotation_interval: Some(std(opts.key_rotation_interval)),
        ..SettingsLayer::default()
    };
    let database = layer.database.as_ref().unwrap().expose().to_owned();
    let settings = Settings::resolve(layer).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let mut switch = None;
    let app = keyward::Application::build_with(settings, clock.clone(), |mut stores| {
        if opts.sessions == SessionBackend::Switchable {
            let s = Arc::new(SwitchableStore::default());
            switch = Some(s.clone());
            stores.sessions = s;
            stores.tokens = Arc::new(MemorySessionStore::new());
            stores.failure_log = None;
        }
        stores
    })
    .await
    .unwrap();
    // As the binary does: the process's recorder, rendered at /metrics.
    keyward_http::metrics::install();
    let addr = app.addr();
    let keyward = app.keyward().clone();
    let stores = app.stores().clone();
    let tokens = keyward.tokens().unwrap().clone();
    let server = tokio::spawn(async move {
        app.run_until(std::future::pending()).await.unwrap();
    });
    TestApp {
        addr,
        clock,
        keyward,
        users: stores.users,
        sessions: stores.sessions,
        token_store: stores.tokens,
        tokens,
        outbox: stores.outbox,
        database,
        switch,
        client: client(),
        server,
        _dir: dir,
    }
}

/// An HTTP client like a plain API client: no cookie jar, no redirects followed.
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET url` with a `Cookie` header, as [`client`] sends it.
pub async fn get_with_cookie(url: &str, cookie: &str) -> Response {
    client()
        .get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// `name=value` of the first `Set-Cookie` named `name`.
pub fn cookie_pair(headers: &HeaderMap, name: &str) -> Option<String> {
    set_cookie(headers, name).map(|c| c.split(';').next().unwrap().trim().to_owned())
}

/// The whole first `Set-Cookie` header for `name`.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn register(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/v1/users"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/v1/sessions"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Register and log in; returns the `keyward=…` cookie pair.
    pub async fn signed_in(&self, username: &str, password: &str) -> String {
        assert_eq!(self.register(username, password).await.status(), 201);
        self.login_cookie(username, password).await
    }

    /// Log in; returns the `keyward=…` cookie pair.
    pub async fn login_cookie(&self, username: &str, password: &str) -> String {
        let res = self.login(username, password).await;
        assert_eq!(res.status(), 201);
        cookie_pair(res.headers(), "keyward").expect("a session cookie")
    }

    /// DELETE with a cookie header.
    pub async fn delete_with(&self, path: &str, cookie: &str) -> Response {
        self.client
            .delete(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    }

    /// GET with a cookie header.
    pub async fn get_with(&self, path: &str, cookie: &str) -> Response {
        self.client
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
    }
}

/// The TOTP code an authenticator app shows for a base32 `secret` at `unix` seconds, from
/// `oathtool` (Debian's oath-toolkit, which `scripts/test` installs): an implementation
/// independent of keyward's.
pub fn oathtool(secret: &str, unix: i64) -> String {
    let out = std::process::Command::new("oathtool")
        .args(["--totp", "--base32", "--now"])
        .arg(format!("@{unix}"))
        .arg(secret)
        .output()
        .expect("oathtool (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
