//! The cookie-session story through the real HTTP server, and bad input.

use keyward_testkit::{
    cookie_pair, set_cookie, spawn_app, spawn_app_with, AppOptions, SessionBackend,
};
use serde_json::{json, Value};

const PW: &str = "correct-horse-battery";

async fn body(res: reqwest::Response) -> Value {
    res.json().await.unwrap()
}

#[tokio::test]
async fn the_whole_story() {
    let app = spawn_app().await;
    // Register.
    let res = app.register("Alice", PW).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let user = body(res).await;
    assert_eq!(user["username"], "Alice");
    let id = user["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert!(keyward_core::UserId::parse(id).is_some(), "{id}");
    let created = time::OffsetDateTime::parse(
        user["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(created, keyward_core::Clock::now(&*app.clock));

    // Log in (usernames compare case-insensitively).
    let res = app.login("alice", PW).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let raw = set_cookie(res.headers(), "keyward").unwrap();
    let attrs: Vec<String> = raw
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.contains(&"httponly".into()), "{raw}");
    assert!(attrs.contains(&"samesite=lax".into()), "{raw}");
    assert!(attrs.contains(&"path=/".into()), "{raw}");
    assert!(
        !attrs.contains(&"secure".into()),
        "plain http must not set Secure: {raw}"
    );
    let cookie = cookie_pair(res.headers(), "keyward").unwrap();
    let token = cookie.trim_start_matches("keyward=").to_owned();
    assert_eq!(
        token.len(),
        46,
        "256 random bits and a 2-byte shard nonce, base64url"
    );
    let login = body(res).await;
    assert_eq!(login["user"]["username"], "Alice");
    assert_eq!(login["user"]["id"], user["id"]);
    let session_id = login["session"]["id"].as_str().unwrap().to_owned();
    assert_ne!(session_id, token, "the public id is not the token");
    assert!(login["session"]["expires_at"].is_string());

    // The store has only the hash.
    let stored = app
        .sessions
        .list_for_user(keyward_core::UserId::parse(user["id"].as_str().unwrap()).unwrap())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let hash = keyward_core::SessionToken::parse(&token).unwrap().hash();
    assert_eq!(stored[0].token_hash, hash);

    // Current.
    let res = app.get_with("/v1/sessions/current", &cookie).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let cur = body(res).await;
    assert_eq!(cur["session"]["id"], session_id.as_str());
    assert_eq!(cur["user"]["username"], "Alice");

    // Protected resources.
    let me = app.get_with("/v1/me", &cookie).await;
    assert_eq!(me.status(), 200);
    assert_eq!(
        body(me).await,
        json!({"id": user["id"], "username": "Alice", "email": null, "email_verified": false, "mfa": {"totp": false, "recovery_codes_left": 0}})
    );
    let v = app.get_with("/v1/verify", &cookie).await;
    assert_eq!(v.status(), 200);
    assert_eq!(
        v.headers()["x-keyward-user-id"],
        user["id"].as_str().unwrap()
    );
    assert_eq!(v.headers()["x-keyward-username"], "Alice");

    // Logout: 204, cookie cleared, Clear-Site-Data, and the old cookie is dead.
    let res = app.delete_with("/v1/sessions/current", &cookie).await;
    assert_eq!(res.status(), 204);
    let cleared = set_cookie(res.headers(), "keyward")
        .unwrap()
        .to_ascii_lowercase();
    assert!(cleared.contains("max-age=0"), "{cleared}");
    assert_eq!(res.headers()["clear-site-data"], "\"cookies\"");
    for path in [
        "/v1/sessions/current",
        "/v1/me",
        "/v1/verify",
        "/v1/sessions",
    ] {
        assert_eq!(app.get_with(path, &cookie).await.status(), 401, "{path}");
    }
    assert!(app.sessions.get(&hash).await.unwrap().is_none());
}

#[tokio::test]
async fn unauthenticated_requests_get_401_with_www_authenticate() {
    let app = spawn_app().await;
    for path in [
        "/v1/me",
        "/v1/verify",
        "/v1/sessions/current",
        "/v1/sessions",
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert!(res.headers().contains_key("www-authenticate"), "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let p = body(res).await;
        assert_eq!(p["status"], 401);
        assert!(p["title"].is_string() && p["detail"].is_string() && p["type"].is_string());
    }
    // A garbage or well-formed but unknown token is just unauthenticated.
    let fake = format!("keyward={}", "A".repeat(46));
    assert_eq!(app.get_with("/v1/me", &fake).await.status(), 401);
    assert_eq!(
        app.get_with("/v1/me", "keyward=%00%ff<script>")
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn logout_never_works_through_get() {
    let app = spawn_app().await;
    let cookie = app.signed_in("bob", PW).await;
    for path in ["/v1/sessions/current/logout", "/logout", "/v1/logout"] {
        let res = app.get_with(path, &cookie).await;
        assert_eq!(res.status(), 404, "{path}");
    }
    assert_eq!(
        app.get_with("/v1/sessions/current", &cookie).await.status(),
        200
    );
}

#[tokio::test]
async fn the_token_is_accepted_only_from_the_cookie() {
    let app = spawn_app().await;
    let cookie = app.signed_in("carol", PW).await;
    let token = cookie.trim_start_matches("keyward=");
    let res = app
        .client
        .get(app.url(&format!("/v1/me?keyward={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", format!("other={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_cookie_sent_twice_is_refused() {
    let app = spawn_app().await;
    let cookie = app.signed_in("dave", PW).await;
    let res = app.get_with("/v1/me", &format!("{cookie}; {cookie}")).await;
    assert_eq!(res.status(), 400);
    let res = app
        .client
        .get(app.url("/v1/me"))
        .header("cookie", &cookie)
        .header("cookie", format!("keyward={}", "B".repeat(46)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // Other cookies beside it are fine.
    assert_eq!(
        app.get_with("/v1/me", &format!("theme=dark; {cookie}; lang=en"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn every_login_issues_a_fresh_token_and_never_adopts_a_planted_one() {
    let app = spawn_app().await;
    assert_eq!(app.register("erin", PW).await.status(), 201);
    let planted = format!("keyward={}", "C".repeat(46));
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &planted)
        .json(&json!({"username": "erin", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let issued = cookie_pair(res.headers(), "keyward").unwrap();
    assert_ne!(issued, planted);
    assert_eq!(app.get_with("/v1/me", &planted).await.status(), 401);
    // A second login, carrying the first session's cookie, gets yet another token, and the
    // session it was made from ends.
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &issued)
        .json(&json!({"username": "erin", "password": PW}))
        .send()
        .await
        .unwrap();
    let second = cookie_pair(res.headers(), "keyward").unwrap();
    assert_ne!(second, issued);
    assert_eq!(app.get_with("/v1/me", &issued).await.status(), 401);
    assert_eq!(app.get_with("/v1/me", &second).await.status(), 200);
}

#[tokio::test]
async fn unknown_user_wrong_password_and_locked_account_look_the_same() {
    let app = spawn_app().await;
    assert_eq!(app.register("frank", PW).await.status(), 201);
    assert_eq!(app.register("locked", PW).await.status(), 201);
    app.keyward.auth().set_locked("locked", true).await.unwrap();
    let mut seen = Vec::new();
    for (u, p) in [
        ("nobody", PW),
        ("frank", "wrong-password-1"),
        ("locked", PW),
    ] {
        let res = app.login(u, p).await;
        let status = res.status();
        let headers: Vec<String> = ["content-type", "www-authenticate", "cache-control"]
            .iter()
            .map(|h| {
                res.headers()
                    .get(*h)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            })
            .collect();
        assert!(set_cookie(res.headers(), "keyward").is_none());
        seen.push((status, headers, res.text().await.unwrap()));
    }
    assert_eq!(seen[0].0, 401);
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
}

#[tokio::test]
async fn registration_rules() {
    let app = spawn_app().await;
    assert_eq!(app.register("grace", PW).await.status(), 201);
    assert_eq!(
        app.register("GRACE", PW).await.status(),
        409,
        "usernames compare case-insensitively"
    );
    for (u, p, why) in [
        ("ok.user", "short", "too short"),
        ("ok.user", &"x".repeat(257), "too long"),
        ("ok.user", "aaaaaaaaaaaa", "one character"),
        ("ok.user", "password1", "common"),
        ("ok.user", "qwertyuiop", "common"),
        ("", PW, "empty username"),
        ("has space", PW, "bad character"),
        (&"u".repeat(65), PW, "long username"),
        ("émile", PW, "non-ASCII"),
    ] {
        let res = app.register(u, p).await;
        assert_eq!(res.status(), 422, "{why}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    // 256 characters (not bytes) is allowed: no repeating pattern, and some of them non-ASCII.
    let long: String = (0..256u32)
        .map(|i| char::from_u32(0xe0 + (i * 7919) % 31).unwrap())
        .collect();
    assert_eq!(long.chars().count(), 256);
    assert_eq!(
        app.register("a.b-c_d@e+f", &long).await.status(),
        201,
        "256 characters is allowed"
    );
    let users = app.users.list_users().await.unwrap();
    assert_eq!(users.len(), 2);
    assert!(users.iter().all(|u| u
        .password_hash
        .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")));
}

#[tokio::test]
async fn closed_registration_answers_403() {
    let mut opts = AppOptions::default();
    opts.auth.open_registration = false;
    let app = spawn_app_with(opts).await;
    let res = app.register("heidi", PW).await;
    assert_eq!(res.status(), 403);
    assert!(app.users.list_users().await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let big = format!(
        "{{\"username\":\"ivan\",\"password\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            Some("application/json"),
            b"{\"username\":".to_vec(),
            400,
        ),
        (
            "not an object",
            Some("application/json"),
            b"[1,2,3]".to_vec(),
            422,
        ),
        (
            "wrong types",
            Some("application/json"),
            br#"{"username": 5, "password": 12345678}"#.to_vec(),
            422,
        ),
        (
            "missing field",
            Some("application/json"),
            br#"{"username": "ivan"}"#.to_vec(),
            422,
        ),
        ("null", Some("application/json"), b"null".to_vec(), 422),
        ("empty body", Some("application/json"), Vec::new(), 400),
        (
            "non-UTF-8 JSON",
            Some("application/json"),
            b"{\"username\":\"iv\xff\xfe\",\"password\":\"abcdefgh1\"}".to_vec(),
            400,
        ),
        (
            "non-UTF-8 form",
            Some("application/x-www-form-urlencoded"),
            b"username=iv\xffan&password=x".to_vec(),
            400,
        ),
        ("oversized", Some("application/json"), big.into_bytes(), 413),
        (
            "unknown content type",
            Some("text/xml"),
            b"<u/>".to_vec(),
            415,
        ),
        (
            "no content type",
            None,
            br#"{"username":"ivan","password":"correct-horse-battery"}"#.to_vec(),
            415,
        ),
    ];
    for path in ["/v1/users", "/v1/sessions"] {
        for (why, ct, bytes, want) in &cases {
            let mut req = app.client.post(app.url(path)).body(bytes.clone());
            if let Some(ct) = ct {
                req = req.header("content-type", *ct);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), *want, "{path}: {why}");
            assert_eq!(
                res.headers()["content-type"],
                "application/problem+json",
                "{path}: {why}"
            );
            let p: Value = res.json().await.unwrap();
            assert_eq!(p["status"], *want, "{path}: {why}");
            assert!(
                !p["detail"].as_str().unwrap().contains("12345678"),
                "values are not echoed"
            );
        }
    }
    // Overlong credentials at login: 422 before any hashing.
    let res = app.login(&"u".repeat(65), PW).await;
    assert_eq!(res.status(), 422);
    let res = app.login("ivan", &"p".repeat(257)).await;
    assert_eq!(res.status(), 422);
    assert!(
        app.users.list_users().await.unwrap().is_empty(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn sessions_list_revoke_one_and_revoke_others() {
    let app = spawn_app().await;
    let a = app.signed_in("judy", PW).await;
    let b = app.login_cookie("judy", PW).await;
    let c = app.login_cookie("judy", PW).await;
    let other = app.signed_in("mallory", PW).await;

    let res = app.get_with("/v1/sessions", &a).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let list: Vec<Value> = res.json().await.unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    for s in &list {
        for k in [
            "id",
            "created_at",
            "last_seen_at",
            "expires_at",
            "ip",
            "user_agent",
            "current",
        ] {
            assert!(s.get(k).is_some(), "{k} in {s}");
        }
        assert_eq!(s["ip"], "127.0.0.1");
    }
    let current_id = list.iter().find(|s| s["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_id = body(app.get_with("/v1/sessions/current", &b).await).await["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Someone else's session id is a 404 and stays alive.
    let mallory_id = body(app.get_with("/v1/sessions/current", &other).await).await["session"]
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .delete_with(&format!("/v1/sessions/{mallory_id}"), &a)
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(app.get_with("/v1/me", &other).await.status(), 200);
    let res = app.delete_with("/v1/sessions/not-a-uuid", &a).await;
    assert_eq!(res.status(), 404);

    // Revoke b by id.
    let res = app.delete_with(&format!("/v1/sessions/{b_id}"), &a).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.get_with("/v1/me", &b).await.status(), 401);
    assert_eq!(app.get_with("/v1/me", &c).await.status(), 200);

    // Revoke the others: c dies, a lives, mallory is untouched.
    let res = app.delete_with("/v1/sessions", &a).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.get_with("/v1/me", &c).await.status(), 401);
    assert_eq!(app.get_with("/v1/me", &a).await.status(), 200);
    assert_eq!(app.get_with("/v1/me", &other).await.status(), 200);
    let list: Vec<Value> = app.get_with("/v1/sessions", &a).await.json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], current_id.as_str());
}

#[tokio::test]
async fn password_change_rotates_the_session_and_revokes_the_rest() {
    let app = spawn_app_with(AppOptions {
        sessions: SessionBackend::Memory,
        ..Default::default()
    })
    .await;
    let a = app.signed_in("kate", PW).await;
    let b = app.login_cookie("kate", PW).await;
    let old_id =
        body(app.get_with("/v1/sessions/current", &a).await).await["session"]["id"].clone();
    let put = |cookie: &str, current: &str, new: &str| {
        app.client
            .put(app.url("/v1/users/me/password"))
            .header("cookie", cookie)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    // Wrong current password: 403, nothing changes.
    let res = put(&a, "not-the-password", "another-fine-password")
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.get_with("/v1/me", &b).await.status(), 200);
    // Weak new password: 422.
    assert_eq!(put(&a, PW, "password").await.unwrap().status(), 422);
    // Without a session: 401.
    let res = app
        .client
        .put(app.url("/v1/users/me/password"))
        .json(&json!({"current_password": PW, "new_password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let res = put(&a, PW, "another-fine-password").await.unwrap();
    assert_eq!(res.status(), 204);
    let renewed = cookie_pair(res.headers(), "keyward").expect("a new cookie");
    assert_ne!(renewed, a);
    assert_eq!(
        app.get_with("/v1/me", &a).await.status(),
        401,
        "the old token is gone"
    );
    assert_eq!(
        app.get_with("/v1/me", &b).await.status(),
        401,
        "other sessions are revoked"
    );
    let cur = body(app.get_with("/v1/sessions/current", &renewed).await).await;
    assert_ne!(cur["session"]["id"], old_id, "the session has a new id");
    assert_eq!(app.login("kate", PW).await.status(), 401);
    assert_eq!(
        app.login("kate", "another-fine-password").await.status(),
        201
    );
}

#[tokio::test]
async fn a_weaker_stored_hash_is_upgraded_at_login() {
    let app = spawn_app().await;
    assert_eq!(app.register("leo", PW).await.status(), 201);
    let user = app.users.user_by_name("leo").await.unwrap().unwrap();
    let weak = keyward_core::password::hash_with_params(PW, 8 * 1024, 1).unwrap();
    app.users.set_password_hash(user.id, &weak).await.unwrap();
    assert_eq!(app.login("leo", PW).await.status(), 201);
    let after = app
        .users
        .user_by_id(user.id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert!(
        after.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{after}"
    );
    assert_eq!(app.login("leo", PW).await.status(), 201);
}

#[tokio::test]
async fn locking_a_user_ends_their_sessions() {
    let app = spawn_app().await;
    let cookie = app.signed_in("mia", PW).await;
    app.keyward.auth().set_locked("mia", true).await.unwrap();
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 401);
    assert_eq!(app.login("mia", PW).await.status(), 401);
    app.keyward.auth().set_locked("mia", false).await.unwrap();
    assert_eq!(app.login("mia", PW).await.status(), 201);
    app.keyward.auth().delete_user("mia").await.unwrap();
    assert_eq!(app.login("mia", PW).await.status(), 401);
}

#[tokio::test]
async fn https_public_url_makes_the_cookie_secure_and_host_prefixed() {
    let app = spawn_app_with(AppOptions {
        public_url: Some("https://auth.example.com".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(app.register("nina", PW).await.status(), 201);
    let res = app.login("nina", PW).await;
    assert_eq!(res.status(), 201);
    let raw = set_cookie(res.headers(), "__Host-keyward").expect("__Host- cookie");
    let lower = raw.to_ascii_lowercase();
    assert!(lower.contains("; secure"), "{raw}");
    assert!(lower.contains("path=/"), "{raw}");
    assert!(!lower.contains("domain="), "{raw}");
    let pair = cookie_pair(res.headers(), "__Host-keyward").unwrap();
    assert_eq!(app.get_with("/v1/me", &pair).await.status(), 200);
    let plain = pair.replacen("__Host-keyward", "keyward", 1);
    assert_eq!(app.get_with("/v1/me", &plain).await.status(), 401);
}

#[tokio::test]
async fn operations_routes() {
    let app = spawn_app().await;
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = app.signed_in("olga", PW).await;
    let _ = app.login("olga", "wrong-password-9").await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "keyward_http_requests_total",
        "keyward_http_request_duration_seconds_bucket",
        "route=\"/v1/sessions\"",
        "keyward_http_requests_total{route=\"/readyz\",method=\"GET\",status=\"200\"}",
        "keyward_http_requests_total{route=\"/v1/sessions\",method=\"POST\",status=\"401\"} 1",
        "keyward_logins_total{result=\"ok\"}",
        "keyward_logins_total{result=\"failed\"}",
        "keyward_sessions_created_total",
        "keyward_store_errors_total",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    assert!(!metrics.contains("olga"), "no user data in metric labels");
    let res = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = app.client.patch(app.url("/v1/me")).send().await.unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/users", "post"),
        ("/v1/users/me/password", "put"),
        ("/v1/sessions", "post"),
        ("/v1/sessions", "get"),
        ("/v1/sessions", "delete"),
        ("/v1/sessions/current", "get"),
        ("/v1/sessions/current", "delete"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/me", "get"),
        ("/v1/verify", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/", "get"),
        ("/register", "get"),
        ("/account", "get"),
        ("/v1/token", "post"),
        ("/v1/token/revoke", "post"),
        ("/v1/token/introspect", "post"),
        ("/.well-known/jwks.json", "get"),
        ("/.well-known/oauth-authorization-server", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
}

#[tokio::test]
async fn a_store_outage_answers_503_with_retry_after_and_recovers() {
    let app = spawn_app_with(AppOptions {
        sessions: SessionBackend::Switchable,
        ..Default::default()
    })
    .await;
    let cookie = app.signed_in("oscar", PW).await;
    let switch = app.switch.clone().unwrap();
    switch.set_down(true);
    for res in [
        app.get_with("/v1/me", &cookie).await,
        app.get_with("/v1/sessions", &cookie).await,
        app.login("oscar", PW).await,
        app.client.get(app.url("/readyz")).send().await.unwrap(),
    ] {
        assert_eq!(res.status(), 503);
        assert!(res.headers().contains_key("retry-after") || res.url().path() == "/readyz");
    }
    // Without a cookie there is nothing to look up: still a plain 401.
    assert_eq!(
        app.client
            .get(app.url("/v1/me"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    switch.set_down(false);
    assert_eq!(
        app.get_with("/v1/me", &cookie).await.status(),
        200,
        "nothing was lost"
    );
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers_its_kind_needs() {
    let app = spawn_app().await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| c.get(app.url(path)).send();
    // JSON (an answer, a problem, the JWKS): OWASP's REST set.
    for res in [
        get("/healthz").await.unwrap(),
        get("/v1/me").await.unwrap(),
        get("/nowhere").await.unwrap(),
    ] {
        let h = res.headers();
        assert_eq!(h["cache-control"], "no-store", "{}", res.url());
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert!(h.get("referrer-policy").is_none(), "{}", res.url());
    }
    // A page, and a redirect a browser follows: the full policy, and no referrer leaks.
    for res in [get("/").await.unwrap(), get("/account").await.unwrap()] {
        let h = res.headers();
        assert_eq!(h["cache-control"], "no-store", "{}", res.url());
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "same-origin");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
    }
    assert_eq!(get("/account").await.unwrap().status(), 303);
    // A response that says how it may be cached keeps it (the key set, the stylesheet).
    let res = get("/.well-known/jwks.json").await.unwrap();
    assert_eq!(res.headers()["cache-control"], "public, max-age=60");
    assert_eq!(
        res.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    let res = get("/assets/keyward.css").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "public, max-age=3600");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let big = format!(
        r#"{{"username":"ada","password":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let res = app
        .client
        .post(app.url("/v1/users"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // (A body without a length is refused once it passes the limit: extract.rs's tests.)
    let res = app.register("ada", PW).await;
    assert_eq!(res.status(), 201, "nothing was stored");
}
