//! Forward auth as README and `examples/forward-auth/` describe it: a real nginx running
//! `nginx.conf` (through `auth_request`) and a real Traefik running `traefik.yml` (through its
//! ForwardAuth middleware), each with its addresses replaced by free ports, put keyward's
//! `/v1/verify` in front of a small upstream that only echoes who the proxy says is calling.

use axum::http::HeaderMap;
use keyward_testkit::nginx::{self, Nginx};
use keyward_testkit::ports::free_port;
use keyward_testkit::traefik::Traefik;
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

/// An example configuration from `examples/forward-auth/` with its addresses pointed at this
/// test's servers: each `(address, port, uses)` is an address the file uses `uses` times
/// outside comments, replaced by `127.0.0.1:port`.
fn example(file: &str, addresses: &[(&str, u16, usize)]) -> String {
    let path = format!(
        "{}/../../examples/forward-auth/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    let directives: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for (addr, _, uses) in addresses {
        let found = directives.iter().filter(|l| l.contains(addr)).count();
        assert_eq!(found, *uses, "{addr} {uses} times in {path}");
    }
    for (addr, port, _) in addresses {
        text = text.replace(addr, &format!("127.0.0.1:{port}"));
    }
    text
}

/// The nginx example: keyward, the application, and nginx's own listening address.
fn example_config(keyward: u16, app: u16, listen: u16) -> String {
    example(
        "nginx.conf",
        &[
            ("127.0.0.1:8080", keyward, 1),
            ("127.0.0.1:9000", app, 1),
            ("127.0.0.1:8000", listen, 1),
        ],
    )
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

/// keyward and the upstream behind Traefik running the example's dynamic configuration
/// (keyward's address is in it twice: the ForwardAuth address and keyward's own service).
async fn behind_traefik() -> (TestApp, Traefik) {
    let kw = spawn_app().await;
    let app = upstream().await;
    let conf = example(
        "traefik.yml",
        &[
            ("127.0.0.1:8080", kw.addr.port(), 2),
            ("127.0.0.1:9000", app, 1),
        ],
    );
    let proxy = Traefik::start(free_port(), &conf, "/healthz").await;
    (kw, proxy)
}

/// What a proxy's example answers when keyward refuses a request.
#[derive(Clone, Copy)]
enum Refusal {
    /// nginx.conf: to the sign-in page, which brings the browser back to `next`.
    SignIn,
    /// traefik.yml: keyward's own 401 (ForwardAuth passes the auth server's answer on).
    Unauthorized,
}

impl Refusal {
    fn check(self, res: &reqwest::Response, next: &str) {
        match self {
            Self::SignIn => {
                assert_eq!(res.status(), 303);
                assert_eq!(res.headers()["location"], format!("/?next={next}"));
            }
            Self::Unauthorized => {
                assert_eq!(res.status(), 401);
                assert!(res.headers().contains_key("www-authenticate"));
            }
        }
    }
}

/// Through the proxy at `base`: anonymous requests are refused, a signed-in one reaches the
/// upstream with the user (and nothing the client claimed), and a session ended on keyward
/// is refused on the next request.
async fn signed_in_requests_pass_with_the_user(base: &str, refusal: Refusal) {
    let c = client();
    let res = c.get(format!("{base}/app/notes?x=1")).send().await.unwrap();
    refusal.check(&res, "/app/notes?x=1");

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
    refusal.check(&res, "/app/notes");

    let res = c
        .delete(format!("{base}/v1/sessions/current"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = get_with_cookie(&format!("{base}/app/notes"), &cookie).await;
    refusal.check(&res, "/app/notes");
}

/// Through the proxy at `base`: a bearer access token passes, a bad one is refused.
async fn bearer_tokens_pass_and_bad_ones_do_not(kw: &TestApp, base: &str, refusal: Refusal) {
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
    refusal.check(&res, "/app/api/items");
}

#[tokio::test]
async fn nginx_auth_request_lets_signed_in_requests_through_with_the_user() {
    let (_kw, proxy) = behind_nginx().await;
    let base = proxy.base();
    // The sign-in page the refusals send to is keyward's, through the same origin.
    let res = client()
        .get(format!("{base}/?next=/app/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains(r#"name="next" value="/app/notes""#), "{page}");
    signed_in_requests_pass_with_the_user(&base, Refusal::SignIn).await;
}

#[tokio::test]
async fn nginx_auth_request_accepts_a_bearer_token_and_refuses_a_bad_one() {
    let (kw, proxy) = behind_nginx().await;
    bearer_tokens_pass_and_bad_ones_do_not(&kw, &proxy.base(), Refusal::SignIn).await;
}

#[tokio::test]
async fn traefik_forward_auth_lets_signed_in_requests_through_with_the_user() {
    let (_kw, proxy) = behind_traefik().await;
    signed_in_requests_pass_with_the_user(&proxy.base(), Refusal::Unauthorized).await;
}

#[tokio::test]
async fn traefik_forward_auth_accepts_a_bearer_token_and_refuses_a_bad_one() {
    let (kw, proxy) = behind_traefik().await;
    bearer_tokens_pass_and_bad_ones_do_not(&kw, &proxy.base(), Refusal::Unauthorized).await;
}
