//! The second factor over HTTP: TOTP enrolment, the two-step sign-in, replay and drift,
//! recovery codes, step-up, removal. Codes come from `oathtool` (Debian's oath-toolkit), an
//! implementation independent of keyward's, at the time of the server's manual clock.

use keyward_testkit::{cookie_pair, oathtool as oath, spawn_app_with, AppOptions, TestApp};
use serde_json::{json, Value};

const PW: &str = "correct-horse-battery";

fn now(app: &TestApp) -> i64 {
    keyward_core::Clock::now(&*app.clock).unix_timestamp()
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).json(&body);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

async fn post(app: &TestApp, path: &str, cookie: Option<&str>, body: Value) -> reqwest::Response {
    send(app, reqwest::Method::POST, path, cookie, body).await
}

async fn me(app: &TestApp, cookie: &str) -> Value {
    let res = app.get_with("/v1/me", cookie).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Turn TOTP on for the signed-in user; returns the secret and the recovery codes.
pub(crate) async fn enrol(app: &TestApp, cookie: &str) -> (String, Vec<String>) {
    let res = post(
        app,
        "/v1/users/me/totp",
        Some(cookie),
        json!({"current_password": PW}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    let code = oath(&secret, now(app));
    let res = post(
        app,
        "/v1/users/me/totp/confirm",
        Some(cookie),
        json!({ "code": code }),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, codes)
}

/// The first step: the right password answers 401 mfa-required with a token, and no session.
async fn first_step(app: &TestApp, name: &str) -> String {
    let res = app.login(name, PW).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(
        cookie_pair(res.headers(), "keyward").is_none(),
        "no session before the code"
    );
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("mfa-required"),
        "{problem}"
    );
    problem["mfa_token"].as_str().unwrap().to_owned()
}

async fn second_step(app: &TestApp, token: &str, code: &str) -> reqwest::Response {
    post(
        app,
        "/v1/sessions/mfa",
        None,
        json!({"mfa_token": token, "code": code}),
    )
    .await
}

#[tokio::test]
async fn totp_enrolment_then_a_two_step_sign_in_with_replay_and_drift_judged() {
    let app = spawn_app_with(AppOptions::default()).await;
    let cookie = app.signed_in("tess", PW).await;
    assert_eq!(
        me(&app, &cookie).await["mfa"],
        json!({"totp": false, "recovery_codes_left": 0})
    );

    // Enrolment needs the password; the secret is pending until a code of it is confirmed.
    let wrong = post(
        &app,
        "/v1/users/me/totp",
        Some(&cookie),
        json!({"current_password": "not-the-password"}),
    )
    .await;
    assert_eq!(wrong.status(), 403);
    let res = post(
        &app,
        "/v1/users/me/totp",
        Some(&cookie),
        json!({"current_password": PW}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 52, "256 bits in base32");
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/127.0.0.1:tess?"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(uri.contains("issuer=127.0.0.1"), "{uri}");
    assert_eq!(me(&app, &cookie).await["mfa"]["totp"], false);
    assert_eq!(
        app.login("tess", PW).await.status(),
        201,
        "pending is not on"
    );

    let t0 = now(&app);
    let off = oath(&secret, t0 + 3600);
    let res = post(
        &app,
        "/v1/users/me/totp/confirm",
        Some(&cookie),
        json!({ "code": off }),
    )
    .await;
    assert_eq!(res.status(), 403);
    let first = oath(&secret, t0);
    let res = post(
        &app,
        "/v1/users/me/totp/confirm",
        Some(&cookie),
        json!({ "code": first }),
    )
    .await;
    assert_eq!(res.status(), 200);
    let codes: Vec<String> =
        serde_json::from_value(res.json::<Value>().await.unwrap()["recovery_codes"].clone())
            .unwrap();
    assert_eq!(codes.len(), 10);
    let mut distinct = codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    assert!(
        codes
            .iter()
            .all(|c| c.len() == 23 && c.matches('-').count() == 3),
        "{codes:?}"
    );
    assert_eq!(
        me(&app, &cookie).await["mfa"],
        json!({"totp": true, "recovery_codes_left": 10})
    );
    // Enrolling again while on is refused.
    let again = post(
        &app,
        "/v1/users/me/totp",
        Some(&cookie),
        json!({"current_password": PW}),
    )
    .await;
    assert_eq!(again.status(), 403, "step-up asks for a code now");

    // The first step: no session, and the token is nothing but a token for the second.
    let token = first_step(&app, "tess").await;
    assert_eq!(token.len(), 46);
    assert_eq!(
        app.get_with("/v1/me", &format!("keyward={token}"))
            .await
            .status(),
        401
    );
    let bearer = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);
    // The code that confirmed enrolment was used: a replay.
    assert_eq!(second_step(&app, &token, &first).await.status(), 401);
    app.clock.advance(time::Duration::seconds(30));
    let res = second_step(&app, &token, &oath(&secret, t0 + 30)).await;
    assert_eq!(res.status(), 201);
    let session = cookie_pair(res.headers(), "keyward").expect("a session cookie");
    assert!(cookie_pair(res.headers(), "keyward_device").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["username"], "tess");
    assert_eq!(body["session"]["amr"], json!(["pwd", "otp"]));
    assert_eq!(me(&app, &session).await["username"], "tess");
    let current: Value = app
        .get_with("/v1/sessions/current", &session)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["session"]["amr"], json!(["pwd", "otp"]));
    assert_eq!(
        current["session"]["auth_time"],
        current["session"]["created_at"]
    );
    let plain: Value = app
        .get_with("/v1/sessions/current", &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["session"]["amr"], json!(["pwd"]));
    // The token is single use.
    assert_eq!(
        second_step(&app, &token, &oath(&secret, t0 + 60))
            .await
            .status(),
        401
    );

    // One step of drift either way; a code at or before the last one used is a replay.
    let token = first_step(&app, "tess").await;
    assert_eq!(
        second_step(&app, &token, &oath(&secret, t0 + 30))
            .await
            .status(),
        401,
        "replay"
    );
    assert_eq!(
        second_step(&app, &token, &oath(&secret, t0 + 60))
            .await
            .status(),
        201,
        "a step ahead"
    );
    app.clock.advance(time::Duration::seconds(90)); // now t0 + 120
    let token = first_step(&app, "tess").await;
    assert_eq!(
        second_step(&app, &token, &oath(&secret, t0 + 60))
            .await
            .status(),
        401,
        "two steps back"
    );
    assert_eq!(
        second_step(&app, &token, &oath(&secret, t0 + 90))
            .await
            .status(),
        201,
        "a step behind"
    );

    // Recovery codes: single use, counted down.
    let token = first_step(&app, "tess").await;
    assert_eq!(
        second_step(&app, &token, &codes[0].to_uppercase())
            .await
            .status(),
        201
    );
    let token = first_step(&app, "tess").await;
    assert_eq!(second_step(&app, &token, &codes[0]).await.status(), 401);
    assert_eq!(me(&app, &cookie).await["mfa"]["recovery_codes_left"], 9);

    // The password grant cannot ask for a code.
    let grant = app
        .client
        .post(app.url("/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "tess"),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), 400);
    assert_eq!(
        grant.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn changes_to_the_account_ask_for_a_code_and_totp_can_be_turned_off() {
    let app = spawn_app_with(AppOptions::default()).await;
    let cookie = app.signed_in("uma", PW).await;
    let (secret, codes) = enrol(&app, &cookie).await;
    app.clock.advance(time::Duration::seconds(30));

    // A sign-in begun with the old password, to finish after the change.
    let stale = first_step(&app, "uma").await;
    // Step-up: the password alone is not enough.
    let change = json!({"current_password": PW, "new_password": "Xq7-vNbz-uma"});
    let res = send(
        &app,
        reqwest::Method::PUT,
        "/v1/users/me/password",
        Some(&cookie),
        change.clone(),
    )
    .await;
    assert_eq!(res.status(), 403);
    let detail = res.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(detail.contains("code"), "{detail}");
    let mut with_code = change.clone();
    with_code["code"] = json!(oath(&secret, now(&app)));
    let res = send(
        &app,
        reqwest::Method::PUT,
        "/v1/users/me/password",
        Some(&cookie),
        with_code,
    )
    .await;
    assert_eq!(res.status(), 204);
    let cookie = cookie_pair(res.headers(), "keyward").unwrap();
    let late = second_step(&app, &stale, &oath(&secret, now(&app) + 30)).await;
    assert_eq!(
        late.status(),
        401,
        "the password change ended the sign-in begun before it"
    );

    // Off: the password and a code (a recovery code will do).
    let off = json!({"current_password": "Xq7-vNbz-uma", "code": "aaaaa-aaaaa-aaaaa-aaaaa"});
    let res = send(
        &app,
        reqwest::Method::DELETE,
        "/v1/users/me/totp",
        Some(&cookie),
        off,
    )
    .await;
    assert_eq!(res.status(), 403);
    let off = json!({"current_password": "Xq7-vNbz-uma", "code": codes[3]});
    let res = send(
        &app,
        reqwest::Method::DELETE,
        "/v1/users/me/totp",
        Some(&cookie),
        off,
    )
    .await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        me(&app, &cookie).await["mfa"],
        json!({"totp": false, "recovery_codes_left": 0})
    );
    assert_eq!(app.login("uma", "Xq7-vNbz-uma").await.status(), 201);
    let confirm = post(
        &app,
        "/v1/users/me/totp/confirm",
        Some(&cookie),
        json!({"code": "123456"}),
    )
    .await;
    assert_eq!(confirm.status(), 409, "nothing pending");
}

#[tokio::test]
async fn wrong_codes_count_against_the_account_and_an_admin_can_reset_mfa() {
    let app = spawn_app_with(AppOptions::default()).await;
    let cookie = app.signed_in("vic", PW).await;
    let (secret, _) = enrol(&app, &cookie).await;
    app.clock.advance(time::Duration::seconds(30));
    let token = first_step(&app, "vic").await;
    let wrong = oath(&secret, now(&app) + 3600);
    for _ in 0..10 {
        assert_eq!(second_step(&app, &token, &wrong).await.status(), 401);
    }
    let res = second_step(&app, &token, &oath(&secret, now(&app))).await;
    assert_eq!(
        res.status(),
        429,
        "the account is throttled, even for the right code"
    );
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(app.login("vic", PW).await.status(), 429);

    // The user lost the phone: an administrator turns the second factor off.
    app.clock.advance(time::Duration::minutes(16));
    let user = app.keyward.auth().reset_mfa("vic").await.unwrap();
    assert!(
        !app.keyward
            .auth()
            .users()
            .user_by_id(user.id)
            .await
            .unwrap()
            .unwrap()
            .totp
    );
    assert_eq!(app.login("vic", PW).await.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_is_accepted_once_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AppOptions {
        database: Some(format!(
            "sqlite://{}",
            dir.path().join("shared.db").display()
        )),
        ..Default::default()
    };
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    let cookie = a.signed_in("wes", PW).await;
    let (secret, _) = enrol(&a, &cookie).await;
    a.clock.advance(time::Duration::seconds(30));
    b.clock
        .advance(keyward_core::Clock::now(&*a.clock) - keyward_core::Clock::now(&*b.clock));
    let code = oath(&secret, now(&a));
    let on_a = first_step(&a, "wes").await;
    let on_b = first_step(&b, "wes").await;
    assert_eq!(second_step(&a, &on_a, &code).await.status(), 201);
    assert_eq!(
        second_step(&b, &on_b, &code).await.status(),
        401,
        "replayed on another node"
    );
}
