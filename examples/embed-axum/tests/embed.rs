//! The example app driven over HTTP, on a free port with a fresh SQLite database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyward_testkit::{client, cookie_pair, get_with_cookie};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;

const PW: &str = "a long and unguessable passphrase 4711";

struct Running {
    base: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("notes.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let app = embed_axum::App::open(&db, base.parse().unwrap())
        .await
        .unwrap();
    tokio::spawn(app.serve(listener));
    Running { base, _dir: dir }
}

/// Register through keyward's merged API, sign in through the app's own form.
async fn signed_in(base: &str, name: &str) -> String {
    let c = client();
    let res = c
        .post(format!("{base}/v1/users"))
        .json(&json!({"username": name, "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = c
        .post(format!("{base}/login"))
        .form(&[("username", name), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/notes");
    let set: Vec<&str> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session = set.iter().find(|c| c.starts_with("keyward=")).unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "{session}"
    );
    cookie_pair(res.headers(), "keyward").unwrap()
}

#[tokio::test]
async fn sign_in_protected_routes_and_sign_out_in_an_embedding_app() {
    let app = start().await;
    let (base, c) = (&app.base, client());
    // Anonymous: the page sends to the sign-in form, the JSON route answers 401.
    let res = c.get(format!("{base}/notes")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/");
    let res = c.get(format!("{base}/api/notes")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The layer's security headers are on the app's own responses too.
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["cache-control"], "no-store");

    let cookie = signed_in(base, "ada").await;
    let res = c
        .post(format!("{base}/api/notes"))
        .header("cookie", &cookie)
        .json(&json!({"text": "<b>buy milk</b>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = get_with_cookie(&format!("{base}/api/notes"), &cookie).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"user": "ada", "notes": ["<b>buy milk</b>"]}));
    let res = get_with_cookie(&format!("{base}/notes"), &cookie).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(html.contains("Signed in as <strong>ada</strong>"), "{html}");
    assert!(html.contains("&lt;b&gt;buy milk&lt;/b&gt;"), "{html}");
    // Another user sees none of Ada's notes.
    let bob = signed_in(base, "bob").await;
    let res = get_with_cookie(&format!("{base}/api/notes"), &bob).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["notes"], json!([]));

    // Signing out ends the session on the server, not only in the browser.
    let res = c
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/");
    let cleared = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("keyward=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let res = get_with_cookie(&format!("{base}/api/notes"), &cookie).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = get_with_cookie(&format!("{base}/v1/sessions/current"), &cookie).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_apps_own_unsafe_routes_are_refused_cross_site() {
    let app = start().await;
    let (base, c) = (&app.base, client());
    let cookie = signed_in(base, "eve").await;
    for (what, req) in [
        (
            "cross-site fetch",
            c.post(format!("{base}/api/notes"))
                .header("sec-fetch-site", "cross-site"),
        ),
        (
            "foreign origin",
            c.post(format!("{base}/api/notes"))
                .header("origin", "https://evil.example"),
        ),
    ] {
        let res = req
            .header("cookie", &cookie)
            .json(&json!({"text": "planted"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{what}");
    }
    // A cross-site sign-out form (logout CSRF) is refused and ends nothing.
    let res = c
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = get_with_cookie(&format!("{base}/api/notes"), &cookie).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["notes"], json!([]), "nothing was planted");
}

#[tokio::test]
async fn a_wrong_password_on_the_apps_form_signs_nobody_in() {
    let app = start().await;
    let (base, c) = (&app.base, client());
    signed_in(base, "olga").await;
    let res = c
        .post(format!("{base}/login"))
        .form(&[
            ("username", "olga"),
            ("password", "not her password at all"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get("set-cookie").is_none());
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Wrong username or password."));
}

#[tokio::test]
async fn keyward_s_pages_and_api_work_nested_under_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("notes.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let root = format!("http://{addr}");
    // Mounted under /auth, with the public URL saying so.
    let kw = embed_axum::open_keyward(&db, format!("{root}/auth").parse().unwrap())
        .await
        .unwrap();
    let app = axum::Router::new().nest("/auth", kw.api_router().merge(kw.pages_router()));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let c = client();
    let page = c.get(format!("{root}/auth")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    for want in [
        r#"action="/auth/v1/sessions""#,
        r#"href="/auth/assets/keyward.css""#,
        r#"href="/auth/register""#,
        r#"name="next" value="/auth/account""#,
    ] {
        assert!(html.contains(want), "{want} in {html}");
    }
    let res = c
        .get(format!("{root}/auth/assets/keyward.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = c.get(format!("{root}/auth/account")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/auth?next=/auth/account");

    // Register and sign in through the pages' own forms.
    let res = c
        .post(format!("{root}/auth/v1/users"))
        .form(&[("username", "nina"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/auth?registered=1");
    let res = c
        .post(format!("{root}/auth/v1/sessions"))
        .form(&[("username", "nina"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/auth/account");
    let cookie = cookie_pair(res.headers(), "keyward").unwrap();
    let res = get_with_cookie(&format!("{root}/auth/account"), &cookie).await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(
        html.contains(r#"action="/auth/account/sign-out""#),
        "{html}"
    );
    let res = c
        .post(format!("{root}/auth/account/sign-out"))
        .header("cookie", &cookie)
        .form(&[("x", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/auth?signed_out=1");
    let res = get_with_cookie(&format!("{root}/auth/v1/sessions/current"), &cookie).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
