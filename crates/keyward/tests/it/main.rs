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
mod process;
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
