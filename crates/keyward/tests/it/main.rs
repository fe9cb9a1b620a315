//! keyward's integration tests: one binary (each file under tests/ would link its own).
//! The store conformance suite runs here against every backend; the HTTP tests drive a real
//! server on a free loopback port; the process tests run the real `keyward` binary; the
//! browser test drives headless Chromium.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod api;
mod browser;
mod crosssite;
mod example;
mod expiry;
mod fleet;
mod forward_auth;
mod hardening;
mod mail;
mod mfa;
mod oidc;
mod outage;
mod process;
mod redis;
mod throttle;
mod tokens;

keyward_testkit::session_store_conformance!(memory_session_store, keyward_testkit::memory_sessions);
keyward_testkit::session_store_conformance!(sqlite_session_store, keyward_testkit::sqlite_sessions);
keyward_testkit::session_store_conformance!(
    sqlite_memory_session_store,
    keyward_testkit::sqlite_memory_sessions
);
keyward_testkit::token_store_conformance!(memory_token_store, keyward_testkit::memory_tokens);
keyward_testkit::token_store_conformance!(sqlite_token_store, keyward_testkit::sqlite_tokens);
keyward_testkit::session_store_conformance!(
    postgres_session_store,
    keyward_testkit::postgres_sessions
);
keyward_testkit::token_store_conformance!(postgres_token_store, keyward_testkit::postgres_tokens);
keyward_testkit::user_store_conformance!(postgres_user_store, keyward_testkit::postgres_users);
keyward_testkit::user_store_conformance!(sqlite_user_store, keyward_testkit::sqlite_users);
keyward_testkit::account_store_conformance!(sqlite_account_store, keyward_testkit::sqlite_fixture);
keyward_testkit::account_store_conformance!(
    postgres_account_store,
    keyward_testkit::postgres_fixture
);
keyward_testkit::key_store_conformance!(sqlite_key_store, keyward_testkit::sqlite_keys);
keyward_testkit::key_store_conformance!(postgres_key_store, keyward_testkit::postgres_keys);
keyward_testkit::session_store_conformance!(redis_session_store, keyward_testkit::redis_sessions);
keyward_testkit::token_store_conformance!(redis_token_store, keyward_testkit::redis_tokens);
keyward_testkit::token_store_conformance!(
    redis_cached_token_store,
    keyward_testkit::redis_cached_tokens
);
keyward_testkit::session_store_conformance!(
    redis_near_cache_session_store,
    keyward_testkit::redis_near_sessions
);
keyward_testkit::session_store_conformance!(
    redis_replicated_cache_session_store,
    keyward_testkit::redis_replicated_sessions
);
keyward_testkit::session_store_conformance!(
    postgres_near_cache_session_store,
    keyward_testkit::postgres_near_sessions
);
keyward_testkit::session_store_conformance!(
    postgres_replicated_cache_session_store,
    keyward_testkit::postgres_replicated_sessions
);
keyward_testkit::token_store_conformance!(
    postgres_cached_token_store,
    keyward_testkit::postgres_cached_tokens
);
keyward_testkit::cache_conformance!(redis_cache, keyward_testkit::cache::RedisEngine::start());
keyward_testkit::cache_conformance!(postgres_cache, keyward_testkit::cache::PgEngine::start());

async fn failure_logs(log: std::sync::Arc<dyn keyward_core::FailureLog>) {
    keyward_testkit::conformance::failure_log(&*log).await;
    keyward_testkit::conformance::failure_log_reservations(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_log_in_memory() {
    failure_logs(std::sync::Arc::new(
        keyward_core::MemoryFailureLog::default(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_log_on_sqlite() {
    let f = keyward_testkit::sqlite_fixture().await;
    failure_logs(f.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_log_on_redis() {
    let (store, _server) = keyward_testkit::redis_store().await;
    failure_logs(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_log_on_postgres() {
    let f = keyward_testkit::postgres_fixture().await;
    failure_logs(f.store.clone()).await;
}
