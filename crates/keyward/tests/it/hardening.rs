//! What a new user and an attacker found (issue 8), pinned at the HTTP boundary: JSON bodies
//! are objects only, any token of a family revokes it, a bearer token can change the password,
//! a sign-in ends the session it was made from, device cookies, the registration and token
//! throttles, password strength, `crit`, per-/64 and ported `X-Forwarded-For` addresses, and
//! `--password-grant false`.

use keyward_core::{AuthConfig, ThrottleConfig};
use keyward_testkit::{
    cookie_pair, set_cookie, spawn_app, spawn_app_with, AppOptions, TestApp, INTROSPECTION_TOKEN,
};
use serde_json::{json, Value};
use time::Duration;

use crate::tokens::{grant, me as bearer_me, pair_with as pair, refresh};

const PW: &str = "correct-horse-battery";

fn opts_with(throttle: ThrottleConfig) -> AppOptions {
    AppOptions {
        auth: AuthConfig {
            throttle,
            ..Default::default()
        },
        // The tests play several clients through X-Forwarded-For.
        trusted_proxies: vec!["127.0.0.1/32".into()],
        ..Default::default()
    }
}

async fn user_count(app: &TestApp) -> usize {
    app.users.list_users().await.unwrap().len()
}

#[tokio::test]
async fn json_bodies_must_be_objects_everywhere() {
    let app = spawn_app().await;
    assert_eq!(app.register("alice", PW).await.status(), 201);
    let cookie = app.login_cookie("alice", PW).await;
    for body in [
        json!(["alice", PW]),
        json!(["mallory", PW]),
        json!("alice"),
        json!(42),
        Value::Null,
    ] {
        // Sign-in: never positionally.
        let res = app
            .client
            .post(app.url("/v1/sessions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(set_cookie(res.headers(), "keyward").is_none(), "{body}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["detail"], "the body must be a JSON object");
        // Registration.
        let res = app
            .client
            .post(app.url("/v1/users"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        assert_eq!(user_count(&app).await, 1, "{body}");
        // Password change.
        let res = app
            .client
            .put(app.url("/v1/users/me/password"))
            .header("cookie", &cookie)
            .json(&json!([PW, "a-brand-new-password"]))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422);
        // The token endpoint, in its own error shape.
        let res = app
            .client
            .post(app.url("/v1/token"))
            .json(&json!(["password", "alice", PW]))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400);
        let e: Value = res.json().await.unwrap();
        assert_eq!(e["error"], "invalid_request");
        assert_eq!(e["error_description"], "the body must be a JSON object");
    }
    // Nothing changed: the old password still works, the cookie is still the only session.
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 200);
    assert_eq!(app.login("alice", PW).await.status(), 201);
    // The same bodies as objects work.
    let res = app
        .client
        .post(app.url("/v1/token"))
        .json(&json!({"grant_type": "password", "username": "alice", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn revoking_a_token_already_rotated_away_revokes_its_family() {
    let app = spawn_app().await;
    assert_eq!(app.register("bob", PW).await.status(), 201);
    let (_, r0) = pair(&app, "bob", PW).await;
    let res = refresh(&app, &r0).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let (a1, r1) = (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(bearer_me(&app, &a1).await, 200);
    // RFC 7009 with the old, used token.
    let res = app
        .client
        .post(app.url("/v1/token/revoke"))
        .form(&[("token", r0.as_str()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The newest token of the family and its access token are dead.
    let res = refresh(&app, &r1).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(bearer_me(&app, &a1).await, 401);
}

#[tokio::test]
async fn a_bearer_token_changes_the_password_and_ends_everything() {
    let app = spawn_app().await;
    assert_eq!(app.register("carol", PW).await.status(), 201);
    let cookie = app.login_cookie("carol", PW).await;
    let (access, refresh_token) = pair(&app, "carol", PW).await;
    let (other_access, other_refresh) = pair(&app, "carol", PW).await;
    let res = app
        .client
        .put(app.url("/v1/users/me/password"))
        .bearer_auth(&access)
        .json(&json!({"current_password": PW, "new_password": "a-brand-new-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        set_cookie(res.headers(), "keyward").is_none(),
        "no cookie for a bearer caller"
    );
    // Every session and every refresh family ended, the caller's own included.
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 401);
    for a in [&access, &other_access] {
        assert_eq!(bearer_me(&app, a).await, 401);
    }
    for r in [&refresh_token, &other_refresh] {
        assert_eq!(refresh(&app, r).await.status(), 400);
    }
    // Signing in again takes the new password.
    assert_eq!(app.login("carol", PW).await.status(), 401);
    assert_eq!(
        app.login("carol", "a-brand-new-password").await.status(),
        201
    );
    assert_eq!(
        grant(&app, "carol", "a-brand-new-password").await.status(),
        200
    );
    // A wrong current password is refused, and nothing changes.
    let (access, _) = pair(&app, "carol", "a-brand-new-password").await;
    let res = app
        .client
        .put(app.url("/v1/users/me/password"))
        .bearer_auth(&access)
        .json(&json!({"current_password": PW, "new_password": "yet-another-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(bearer_me(&app, &access).await, 200);
}

#[tokio::test]
async fn a_sign_in_ends_the_session_it_was_made_from() {
    let app = spawn_app().await;
    assert_eq!(app.register("dora", PW).await.status(), 201);
    assert_eq!(app.register("eric", PW).await.status(), 201);
    let first = app.login_cookie("dora", PW).await;
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &first)
        .json(&json!({"username": "dora", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let second = cookie_pair(res.headers(), "keyward").unwrap();
    assert_ne!(second, first);
    assert_eq!(app.get_with("/v1/me", &first).await.status(), 401);
    assert_eq!(app.get_with("/v1/me", &second).await.status(), 200);
    // Through the sign-in form, and as another user: the presented session ends too.
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &second)
        .form(&[("username", "eric"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let third = cookie_pair(res.headers(), "keyward").unwrap();
    assert_eq!(app.get_with("/v1/me", &second).await.status(), 401);
    assert_eq!(app.get_with("/v1/me", &third).await.status(), 200);
    // A failed sign-in ends nothing.
    let res = app
        .client
        .post(app.url("/v1/sessions"))
        .header("cookie", &third)
        .json(&json!({"username": "eric", "password": "wrong-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(app.get_with("/v1/me", &third).await.status(), 200);
}

fn limits(per_account: u32) -> ThrottleConfig {
    ThrottleConfig {
        per_account,
        ..Default::default()
    }
}

async fn login_from(
    app: &TestApp,
    ip: &str,
    device: Option<&str>,
    user: &str,
    pw: &str,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/sessions"))
        .header("x-forwarded-for", ip)
        .json(&json!({"username": user, "password": pw}));
    if let Some(d) = device {
        req = req.header("cookie", d);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_known_device_is_judged_by_its_own_failures() {
    let app = spawn_app_with(opts_with(limits(3))).await;
    assert_eq!(app.register("fay", PW).await.status(), 201);
    let res = login_from(&app, "198.51.100.1", None, "fay", PW).await;
    assert_eq!(res.status(), 201);
    let raw = set_cookie(res.headers(), "keyward_device").expect("a device cookie");
    let attrs: Vec<String> = raw
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.contains(&"httponly".into()), "{raw}");
    assert!(attrs.contains(&"samesite=lax".into()), "{raw}");
    assert!(attrs.contains(&"path=/".into()), "{raw}");
    assert!(attrs.contains(&"max-age=31536000".into()), "{raw}");
    let device = cookie_pair(res.headers(), "keyward_device").unwrap();
    // A 256-bit id, its expiry (Unix seconds) and a 256-bit HMAC, base64url: `id.exp.mac`.
    let value = device.strip_prefix("keyward_device=").unwrap();
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        vec![43, 10, 43],
        "{device}"
    );

    // The device cookie alone authenticates nothing.
    assert_eq!(app.get_with("/v1/me", &device).await.status(), 401);
    assert_eq!(
        app.get_with("/v1/sessions/current", &device).await.status(),
        401
    );

    // An attacker elsewhere locks the account for unknown clients.
    for _ in 0..3 {
        let res = login_from(&app, "203.0.113.9", None, "fay", "wrong-password-1").await;
        assert_eq!(res.status(), 401);
    }
    assert_eq!(
        login_from(&app, "203.0.113.9", None, "fay", PW)
            .await
            .status(),
        429
    );
    assert_eq!(
        login_from(&app, "198.51.100.1", None, "fay", PW)
            .await
            .status(),
        429
    );
    // The owner's device still gets in, from any address.
    let res = login_from(&app, "192.0.2.77", Some(&device), "fay", PW).await;
    assert_eq!(res.status(), 201);
    let fresh_device = cookie_pair(res.headers(), "keyward_device").unwrap();
    assert_ne!(
        fresh_device, device,
        "every sign-in gets a fresh device cookie"
    );

    // A device cookie of another account counts for nothing.
    assert_eq!(app.register("gus", PW).await.status(), 201);
    for _ in 0..3 {
        login_from(&app, "203.0.113.9", None, "gus", "wrong-password-1").await;
    }
    assert_eq!(
        login_from(&app, "192.0.2.77", Some(&device), "gus", PW)
            .await
            .status(),
        429
    );

    // A device's own failures lock that device (and it then counts as unknown).
    for _ in 0..3 {
        let res = login_from(
            &app,
            "192.0.2.77",
            Some(&fresh_device),
            "fay",
            "wrong-password-1",
        )
        .await;
        assert_eq!(res.status(), 401);
    }
    assert_eq!(
        login_from(&app, "192.0.2.77", Some(&fresh_device), "fay", PW)
            .await
            .status(),
        429
    );
    // The other device cookie of the owner is unaffected.
    assert_eq!(
        login_from(&app, "192.0.2.77", Some(&device), "fay", PW)
            .await
            .status(),
        201
    );
    // A forged or garbled device cookie is an unknown client.
    let forged = format!("{}x", device);
    assert_eq!(
        login_from(&app, "192.0.2.77", Some(&forged), "fay", PW)
            .await
            .status(),
        429
    );
    // Once the window passes, everyone is judged afresh.
    app.clock.advance(Duration::minutes(15));
    assert_eq!(
        login_from(&app, "203.0.113.9", None, "fay", PW)
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn registration_is_throttled_per_address_and_costs_the_same_for_taken_names() {
    let app = spawn_app_with(opts_with(ThrottleConfig {
        registrations_per_address: 3,
        ..Default::default()
    }))
    .await;
    let register = |ip: &'static str, name: &'static str| {
        app.client
            .post(app.url("/v1/users"))
            .header("x-forwarded-for", ip)
            .json(&json!({"username": name, "password": PW}))
            .send()
    };
    assert_eq!(
        register("198.51.100.2", "hana").await.unwrap().status(),
        201
    );
    // A taken name counts like a free one: the oracle is rationed too.
    assert_eq!(
        register("198.51.100.2", "hana").await.unwrap().status(),
        409
    );
    assert_eq!(
        register("198.51.100.2", "ivan").await.unwrap().status(),
        201
    );
    let res = register("198.51.100.2", "jack").await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "3600");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(
        user_count(&app).await,
        2,
        "a throttled registration stores nothing"
    );
    let res = register("198.51.100.2", "hana").await.unwrap();
    assert_eq!(res.status(), 429, "taken names are throttled alike");
    // Another address is not.
    assert_eq!(
        register("198.51.100.3", "jack").await.unwrap().status(),
        201
    );
    // The hour passes.
    app.clock.advance(Duration::hours(1));
    assert_eq!(
        register("198.51.100.2", "kate").await.unwrap().status(),
        201
    );
}

#[tokio::test]
async fn common_and_guessable_passwords_are_refused() {
    let app = spawn_app().await;
    for (i, weak) in [
        "password1234",
        "Summer2024",
        "letmein!",
        "qwertyuiop",
        "Summer2024!",
        "P@ssw0rd2024",
        "iloveyou123",
        "user-liam-1",
    ]
    .iter()
    .enumerate()
    {
        let name = if *weak == "user-liam-1" {
            "user-liam".to_owned()
        } else {
            format!("weak{i}")
        };
        let res = app.register(&name, weak).await;
        assert_eq!(res.status(), 422, "{weak}");
        let p: Value = res.json().await.unwrap();
        assert!(
            p["detail"].as_str().unwrap().starts_with("password is too"),
            "{weak}: {p}"
        );
    }
    assert_eq!(user_count(&app).await, 0);
    for (i, fine) in ["Xq7-vNbz", "correct horse battery staple", PW]
        .iter()
        .enumerate()
    {
        assert_eq!(
            app.register(&format!("fine{i}"), fine).await.status(),
            201,
            "{fine}"
        );
    }
    // The same rule for a new password.
    let cookie = app.login_cookie("fine0", "Xq7-vNbz").await;
    let res = app
        .client
        .put(app.url("/v1/users/me/password"))
        .header("cookie", &cookie)
        .json(&json!({"current_password": "Xq7-vNbz", "new_password": "Summer2024"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
}

async fn revoke_from(app: &TestApp, ip: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token/revoke"))
        .header("x-forwarded-for", ip)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

async fn refresh_from(app: &TestApp, ip: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .header("x-forwarded-for", ip)
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap()
}

async fn introspect_from(app: &TestApp, ip: &str, secret: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token/introspect"))
        .header("x-forwarded-for", ip)
        .bearer_auth(secret)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_token_requests_are_throttled_per_address() {
    let app = spawn_app_with(opts_with(ThrottleConfig {
        token_failures_per_address: 4,
        ..Default::default()
    }))
    .await;
    assert_eq!(app.register("mia", PW).await.status(), 201);
    let (access, good_refresh) = pair(&app, "mia", PW).await;
    let bad = "A".repeat(46);
    let attacker = "203.0.113.50";
    // Four failures of the three kinds.
    assert_eq!(refresh_from(&app, attacker, &bad).await.status(), 400);
    assert_eq!(refresh_from(&app, attacker, "short").await.status(), 400);
    assert_eq!(revoke_from(&app, attacker, &bad).await.status(), 200);
    assert_eq!(
        introspect_from(&app, attacker, "wrong-secret-value", &access)
            .await
            .status(),
        401
    );
    // Then the address is refused, on every token endpoint, in the OAuth shape.
    let res = refresh_from(&app, attacker, &bad).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "900");
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "slow_down");
    assert_eq!(revoke_from(&app, attacker, &bad).await.status(), 429);
    assert_eq!(
        introspect_from(&app, attacker, INTROSPECTION_TOKEN, &access)
            .await
            .status(),
        429
    );
    // Valid traffic from elsewhere is untouched, and valid requests never counted.
    let client = "198.51.100.60";
    for _ in 0..6 {
        let res = introspect_from(&app, client, INTROSPECTION_TOKEN, &access).await;
        assert_eq!(res.status(), 200);
    }
    let res = refresh_from(&app, client, &good_refresh).await;
    assert_eq!(res.status(), 200);
    // The window passes.
    app.clock.advance(Duration::minutes(15));
    assert_eq!(refresh_from(&app, attacker, &bad).await.status(), 400);
}

#[tokio::test]
async fn ipv6_clients_are_throttled_by_their_64_and_ported_forwarded_entries_are_read() {
    let app = spawn_app_with(opts_with(ThrottleConfig {
        per_address: 2,
        ..Default::default()
    }))
    .await;
    assert_eq!(app.register("noa", PW).await.status(), 201);
    // Two hosts of one /64 share a bucket.
    for ip in ["2001:db8:5:6::1", "[2001:db8:5:6::2]:443"] {
        assert_eq!(
            login_from(&app, ip, None, "ghost", "wrong-password-1")
                .await
                .status(),
            401
        );
    }
    assert_eq!(
        login_from(&app, "2001:db8:5:6:ffff::9", None, "noa", PW)
            .await
            .status(),
        429
    );
    assert_eq!(
        login_from(&app, "2001:db8:5:7::1", None, "noa", PW)
            .await
            .status(),
        201
    );
    // `addr:port` from a trusted proxy is that client, not the proxy.
    for _ in 0..2 {
        assert_eq!(
            login_from(&app, "192.0.2.10:5678", None, "ghost", "wrong-password-1")
                .await
                .status(),
            401
        );
    }
    assert_eq!(
        login_from(&app, "192.0.2.10:40000", None, "noa", PW)
            .await
            .status(),
        429
    );
    assert_eq!(
        login_from(&app, "192.0.2.11:5678", None, "noa", PW)
            .await
            .status(),
        201
    );
    // The sessions record the client's address.
    let cookie = app.login_cookie("noa", PW).await;
    let list: Value = app
        .get_with("/v1/sessions", &cookie)
        .await
        .json()
        .await
        .unwrap();
    let ips: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["ip"].as_str())
        .collect();
    assert!(ips.contains(&"192.0.2.11"), "{ips:?}");
    assert!(ips.contains(&"2001:db8:5:7::1"), "{ips:?}");
}

#[tokio::test]
async fn a_jws_with_crit_is_refused() {
    let app = spawn_app().await;
    assert_eq!(app.register("olga", PW).await.status(), 201);
    let (access, _) = pair(&app, "olga", PW).await;
    let ring = app.tokens.keyring();
    let key = ring.current(keyward_token::SigningAlg::EdDSA).unwrap();
    let claims: keyward_token::AccessClaims = {
        let payload = access.split('.').nth(1).unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    for crit in [vec!["exp".to_owned()], vec!["b64".to_owned()], vec![]] {
        let token = keyward_token::jwt::sign_with_crit(key, &claims, crit.clone()).unwrap();
        assert_eq!(bearer_me(&app, &token).await, 401, "crit {crit:?}");
    }
    // The control: the same key and claims without crit pass.
    let token = keyward_token::jwt::sign(key, &claims).unwrap();
    assert_eq!(bearer_me(&app, &token).await, 200);
}

#[tokio::test]
async fn the_password_grant_can_be_turned_off() {
    let app = spawn_app_with(AppOptions {
        password_grant: false,
        ..Default::default()
    })
    .await;
    assert_eq!(app.register("pia", PW).await.status(), 201);
    let res = grant(&app, "pia", PW).await;
    assert_eq!(res.status(), 400);
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"], "unsupported_grant_type");
    let meta: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["grant_types_supported"],
        json!(["authorization_code", "refresh_token"])
    );
    // Cookie sign-in is unaffected.
    assert_eq!(app.login("pia", PW).await.status(), 201);
}
