//! Login throttling per account and per client address.

use keyward_core::{AuthConfig, ThrottleConfig};
use keyward_testkit::{spawn_app_with, AppOptions};
use time::Duration;

const PW: &str = "correct-horse-battery";

fn opts(per_account: u32, per_address: u32) -> AppOptions {
    AppOptions {
        auth: AuthConfig {
            throttle: ThrottleConfig {
                per_account,
                per_address,
                window: Duration::minutes(15),
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn too_many_failures_for_an_account_answer_429_even_for_the_right_password() {
    let app = spawn_app_with(opts(3, 100)).await;
    assert_eq!(app.register("tom", PW).await.status(), 201);
    for _ in 0..3 {
        assert_eq!(app.login("tom", "wrong-password-1").await.status(), 401);
    }
    let res = app.login("tom", PW).await;
    assert_eq!(res.status(), 429);
    let retry: i64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The clock stands still: the oldest failure leaves the 15-minute window in 900 s.
    assert_eq!(retry, 900);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // Case does not dodge it; other accounts are unaffected.
    assert_eq!(app.login("TOM", PW).await.status(), 429);
    assert_eq!(app.register("ann", PW).await.status(), 201);
    assert_eq!(app.login("ann", PW).await.status(), 201);
    // The window passes.
    app.clock.advance(Duration::minutes(15));
    assert_eq!(app.login("tom", PW).await.status(), 201);
}

#[tokio::test]
async fn unknown_accounts_are_throttled_like_known_ones() {
    let app = spawn_app_with(opts(2, 100)).await;
    for _ in 0..2 {
        assert_eq!(app.login("ghost", "wrong-password-1").await.status(), 401);
    }
    assert_eq!(app.login("ghost", "wrong-password-1").await.status(), 429);
}

#[tokio::test]
async fn too_many_failures_from_one_address_answer_429() {
    let app = spawn_app_with(opts(100, 4)).await;
    assert_eq!(app.register("uma", PW).await.status(), 201);
    for i in 0..4 {
        assert_eq!(
            app.login(&format!("nobody{i}"), "wrong-password-1")
                .await
                .status(),
            401
        );
    }
    let res = app.login("uma", PW).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    // Untrusted peer: X-Forwarded-For is ignored, so spoofing it does not dodge the limit.
    let app = spawn_app_with(opts(100, 2)).await;
    for i in 0..2 {
        let res = app
            .client
            .post(app.url("/v1/sessions"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&serde_json::json!({"username": "x", "password": "wrong-password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("x-forwarded-for", "198.51.100.99")
        .json(&serde_json::json!({"username": "y", "password": "wrong-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);

    // Trusted loopback proxy: each forwarded client has its own count.
    let mut o = opts(100, 2);
    o.trusted_proxies = vec!["127.0.0.0/8".into()];
    let app = spawn_app_with(o).await;
    assert_eq!(app.register("vic", PW).await.status(), 201);
    let login = |xff: &'static str, pw: &'static str| {
        app.client
            .post(app.url("/v1/sessions"))
            .header("x-forwarded-for", xff)
            .json(&serde_json::json!({"username": "vic", "password": pw}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            login("203.0.113.5", "wrong-password-1")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(login("203.0.113.5", PW).await.unwrap().status(), 429);
    // A client further back in the chain: the nearest untrusted hop is the one counted.
    assert_eq!(
        login("203.0.113.5, 203.0.113.6", PW)
            .await
            .unwrap()
            .status(),
        201
    );
    let res = login("203.0.113.7", PW).await.unwrap();
    assert_eq!(res.status(), 201);
    let cookie = keyward_testkit::cookie_pair(res.headers(), "keyward").unwrap();
    let list: Vec<serde_json::Value> = app
        .get_with("/v1/sessions", &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert!(list.iter().any(|s| s["ip"] == "203.0.113.7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_outrun_the_limit() {
    let app = spawn_app_with(opts(3, 100)).await;
    assert_eq!(app.register("cody", PW).await.status(), 201);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = app.client.clone();
        let url = app.url("/v1/sessions");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&serde_json::json!({"username": "cody", "password": "wrong-password-1"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    // At most the limit's worth of guesses reached the password check.
    assert!(
        statuses.iter().filter(|s| **s == 401).count() <= 3,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(app.login("cody", PW).await.status(), 429);
}
