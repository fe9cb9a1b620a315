//! Forward auth as README and `examples/forward-auth/nginx.conf` describe it: a real nginx,
//! running that file with its addresses replaced by free ports, puts keyward's `/v1/verify`
//! (through `auth_request`) in front of a small upstream that only echoes who nginx says is
//! calling.

use axum::http::HeaderMap;
use keyward_testkit::nginx::{self, Nginx};
use keyward_testkit::ports::free_port;
use keyward_testkit::{client, cookie_pair, get_with_cookie, spawn_app, TestApp};
use serde_json::{json, Value};

const PW: &str = "forward auth passphrase 2026";

/// The upstream application: answers with the path and the identity headers it received.
async fn upstream() -> u16 {
    async fn echo(uri: axum::http::Uri, headers: HeaderMap) -> axum::Json<Value> {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        axum::Json(json!({
            "path": uri.path(),
            "user_id": h("x-keyward-user-id"),
            "username": h("x-keyward-username"),
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(echo);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// The example configuration with its three addresses pointed at this test's servers.
fn example_config(keyward: u16, app: u16, listen: u16) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/forward-auth/nginx.conf"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let directives: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for addr in ["127.0.0.1:8080", "127.0.0.1:9000", "127.0.0.1:8000"] {
        let uses = directives.iter().filter(|l| l.contains(addr)).count();
        assert_eq!(uses, 1, "{addr} once in {path}");
    }
    text.replace("127.0.0.1:8080", &format!("127.0.0.1:{keyward}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{app}"))
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"))
}

/// keyward and the upstream behind nginx running the example configuration.
async fn behind_nginx() -> (TestApp, Nginx) {
    let kw = spawn_app().await;
    let app = upstream().await;
    let port = free_port();
    let conf = example_config(kw.addr.port(), app, port);
    let proxy = Nginx::start_with(port, |dir| nginx::wrap(dir, &conf)).await;
    (kw, proxy)
}

#[tokio::test]
async fn nginx_auth_request_lets_signed_in_requests_through_with_the_user() {
    let (_kw, proxy) = behind_nginx().await;
    let base = proxy.base();
    let c = client();

    // Anonymous: to the sign-in page, which brings the browser back.
    let res = c.get(format!("{base}/app/notes?x=1")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/?next=/app/notes?x=1");
    // The sign-in page itself is keyward's, through the same origin.
    let res = c
        .get(format!("{base}/?next=/app/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains(r#"name="next" value="/app/notes""#), "{page}");

    // Signed in through nginx: the upstream sees who, and nothing the client claimed.
    let res = c
        .post(format!("{base}/v1/users"))
        .json(&json!({"username": "ada", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    let res = c
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"username": "ada", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let cookie = cookie_pair(res.headers(), "keyward").unwrap();
    let res = c
        .get(format!("{base}/app/notes"))
        .header("cookie", &cookie)
        .header("x-keyward-username", "root")
        .header("x-keyward-user-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.unwrap();
    assert_eq!(
        seen,
        json!({"path": "/app/notes", "user_id": user["id"], "username": "ada"})
    );
    // An anonymous request cannot claim an identity either.
    let res = c
        .get(format!("{base}/app/notes"))
        .header("x-keyward-username", "ada")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);

    // A session ended on keyward is refused at the proxy on the next request.
    let res = c
        .delete(format!("{base}/v1/sessions/current"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = get_with_cookie(&format!("{base}/app/notes"), &cookie).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/?next=/app/notes");
}

#[tokio::test]
async fn nginx_auth_request_accepts_a_bearer_token_and_refuses_a_bad_one() {
    let (kw, proxy) = behind_nginx().await;
    let base = proxy.base();
    let c = client();
    kw.register("grace", PW).await;
    let res = c
        .post(format!("{base}/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "grace"),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let grant: Value = res.json().await.unwrap();
    let access = grant["access_token"].as_str().unwrap();
    let res = c
        .post(format!("{base}/app/api/items"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["username"], "grace");
    let res = c
        .get(format!("{base}/app/api/items"))
        .bearer_auth(format!("{access}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
}
