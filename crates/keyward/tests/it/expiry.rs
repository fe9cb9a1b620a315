//! Idle and absolute timeouts, on a clock the test moves (no sleeping).

use keyward_core::AuthConfig;
use keyward_testkit::{spawn_app_with, AppOptions, SessionBackend};
use time::Duration;

const PW: &str = "correct-horse-battery";

fn opts(backend: SessionBackend) -> AppOptions {
    AppOptions {
        auth: AuthConfig {
            idle_timeout: Duration::minutes(30),
            absolute_timeout: Duration::hours(2),
            ..Default::default()
        },
        sessions: backend,
        ..Default::default()
    }
}

async fn idle_timeout_on(backend: SessionBackend) {
    let app = spawn_app_with(opts(backend)).await;
    let cookie = app.signed_in("ida", PW).await;
    // Used every 29 minutes, the session lives past the idle timeout's span.
    for _ in 0..3 {
        app.clock.advance(Duration::minutes(29));
        assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 200);
    }
    // Left alone for 30 minutes, it is over, and stays over.
    app.clock.advance(Duration::minutes(30));
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 401);
    app.clock.advance(Duration::minutes(-20));
    assert_eq!(
        app.get_with("/v1/me", &cookie).await.status(),
        401,
        "an expired session is removed"
    );
}

async fn absolute_timeout_on(backend: SessionBackend) {
    let app = spawn_app_with(opts(backend)).await;
    let cookie = app.signed_in("abe", PW).await;
    for _ in 0..5 {
        app.clock.advance(Duration::minutes(20));
        assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 200);
    }
    // 2 hours after login, however busy, it ends.
    app.clock.advance(Duration::minutes(20));
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 401);
    assert_eq!(
        app.get_with("/v1/sessions/current", &cookie).await.status(),
        401
    );
}

#[tokio::test]
async fn idle_timeout_sqlite() {
    idle_timeout_on(SessionBackend::Sqlite).await;
}

#[tokio::test]
async fn idle_timeout_memory() {
    idle_timeout_on(SessionBackend::Memory).await;
}

#[tokio::test]
async fn absolute_timeout_sqlite() {
    absolute_timeout_on(SessionBackend::Sqlite).await;
}

#[tokio::test]
async fn absolute_timeout_memory() {
    absolute_timeout_on(SessionBackend::Memory).await;
}

#[tokio::test]
async fn expired_sessions_leave_the_list_and_the_store() {
    let app = spawn_app_with(opts(SessionBackend::Sqlite)).await;
    let old = app.signed_in("eve", PW).await;
    app.clock.advance(Duration::minutes(25));
    let fresh = app.login_cookie("eve", PW).await;
    app.clock.advance(Duration::minutes(10));
    let list: Vec<serde_json::Value> = app
        .get_with("/v1/sessions", &fresh)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "the idle session is not listed");
    assert_eq!(app.keyward.auth().purge_expired().await.unwrap(), 1);
    assert_eq!(app.get_with("/v1/me", &old).await.status(), 401);
}
