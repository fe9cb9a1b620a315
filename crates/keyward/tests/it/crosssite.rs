//! Cross-site unsafe requests with a session cookie are refused and change nothing.

use keyward_testkit::{spawn_app, spawn_app_with, AppOptions};
use serde_json::json;

const PW: &str = "correct-horse-battery";

#[tokio::test]
async fn cross_site_unsafe_requests_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let cookie = app.signed_in("zoe", PW).await;
    let other = app.login_cookie("zoe", PW).await;
    let other_id = app
        .get_with("/v1/sessions/current", &other)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let attempts: Vec<(&str, &str)> = vec![
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
        ("origin", "null"),
    ];
    for (h, v) in &attempts {
        let res = app
            .client
            .delete(app.url("/v1/sessions/current"))
            .header("cookie", &cookie)
            .header(*h, *v)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{h}: {v}");
        let res = app
            .client
            .delete(app.url("/v1/sessions"))
            .header("cookie", &cookie)
            .header(*h, *v)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{h}: {v}");
        let res = app
            .client
            .delete(app.url(&format!("/v1/sessions/{other_id}")))
            .header("cookie", &cookie)
            .header(*h, *v)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{h}: {v}");
        let res = app
            .client
            .put(app.url("/v1/users/me/password"))
            .header("cookie", &cookie)
            .header(*h, *v)
            .json(&json!({"current_password": PW, "new_password": "evil-new-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{h}: {v}");
        let res = app
            .client
            .post(app.url("/account/sign-out"))
            .header("cookie", &cookie)
            .header(*h, *v)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403, "{h}: {v}");
    }
    // Nothing changed.
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 200);
    assert_eq!(app.get_with("/v1/me", &other).await.status(), 200);
    assert_eq!(app.login("zoe", PW).await.status(), 201);

    // Same-origin and header-less (non-browser) requests pass.
    let res = app
        .client
        .delete(app.url(&format!("/v1/sessions/{other_id}")))
        .header("cookie", &cookie)
        .header("origin", format!("http://{}", app.addr))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app.delete_with("/v1/sessions/current", &cookie).await;
    assert_eq!(res.status(), 204);
    // Safe methods are never refused.
    let res = app
        .client
        .get(app.url("/v1/me"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn cross_site_form_logins_are_refused() {
    let app = spawn_app().await;
    assert_eq!(app.register("yan", PW).await.status(), 201);
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("origin", "https://evil.example")
        .form(&[("username", "yan"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn allowed_origins_pass() {
    let app = spawn_app_with(AppOptions {
        allowed_origins: vec!["https://app.example".into()],
        ..Default::default()
    })
    .await;
    let cookie = app.signed_in("xia", PW).await;
    let res = app
        .client
        .delete(app.url("/v1/sessions"))
        .header("cookie", &cookie)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = app
        .client
        .delete(app.url("/v1/sessions"))
        .header("cookie", &cookie)
        .header("origin", "https://app.example:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn form_login_redirects_and_form_failures_show_the_page() {
    let app = spawn_app().await;
    assert_eq!(app.register("walt", PW).await.status(), 201);
    let origin = format!("http://{}", app.addr);
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("origin", &origin)
        .form(&[("username", "walt"), ("password", PW), ("next", "/account")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/account");
    assert!(keyward_testkit::cookie_pair(res.headers(), "keyward").is_some());
    // Without `next`, back to the page the form came from (when it is on this site).
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("referer", format!("{origin}/?from=here"))
        .form(&[("username", "walt"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/?from=here");
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("referer", "https://elsewhere.example/page")
        .form(&[("username", "walt"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["location"], "/account");
    // An off-site `next` is not followed.
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .form(&[
            ("username", "walt"),
            ("password", PW),
            ("next", "//evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/account");
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .form(&[("username", "walt"), ("password", "wrong-password-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Invalid username or password"));
}
