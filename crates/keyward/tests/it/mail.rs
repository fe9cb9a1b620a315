//! Email verification and password reset, delivered to a real SMTP server (aiosmtpd) and read
//! back with Python's mail parser: the links in the mails are what the tests follow.

use keyward_core::{AuthConfig, MailState, ThrottleConfig};
use keyward_testkit::smtp::{Mail, SmtpSink};
use keyward_testkit::{spawn_app_with, AppOptions, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

const PW: &str = "correct-horse-battery";
const WAIT: Duration = Duration::from_secs(20);

async fn app_with_mail(sink: &SmtpSink) -> TestApp {
    spawn_app_with(AppOptions {
        smtp_url: Some(sink.url()),
        ..Default::default()
    })
    .await
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn me(app: &TestApp, cookie: &str) -> Value {
    let res = app.get_with("/v1/me", cookie).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Register `name` with `email`, sign in, and return the cookie and the verification mail.
async fn registered(app: &TestApp, sink: &SmtpSink, name: &str, email: &str) -> (String, Mail) {
    let before = sink.mails().len();
    let res = post(
        app,
        "/v1/users",
        json!({"username": name, "password": PW, "email": email}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let cookie = app.login_cookie(name, PW).await;
    let mails = sink.wait_for(before + 1, WAIT).await;
    (cookie, mails[before].clone())
}

/// Wait until the outbox has marked every mail sent (the SMTP server has them, and keyward
/// has recorded it).
async fn all_sent(app: &TestApp) -> Vec<keyward_core::MailSummary> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = app.outbox.list_mail(1000).await.unwrap();
        if list.iter().all(|m| m.state == MailState::Sent) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mail still queued: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_verification_mail_confirms_the_address_when_its_page_is_submitted() {
    let sink = SmtpSink::start().await;
    let app = app_with_mail(&sink).await;
    let (cookie, mail) = registered(&app, &sink, "vera", "Vera@Example.com").await;
    let account = me(&app, &cookie).await;
    assert_eq!(account["email"], "Vera@Example.com");
    assert_eq!(account["email_verified"], false);

    // The mail: to the address, from the sender, text and HTML, what to do and for how long.
    assert_eq!(mail.rcpt_tos, vec!["Vera@Example.com".to_owned()]);
    assert_eq!(mail.mail_from, "no-reply@keyward.test");
    assert_eq!(mail.content_type, "multipart/alternative");
    assert_eq!(mail.subject, "Confirm your email address on 127.0.0.1");
    let text = mail.text.clone().unwrap();
    assert!(text.contains("Hello vera,"), "{text}");
    assert!(text.contains("for 24 hours"), "{text}");
    assert!(text.contains("If this was not you"), "{text}");
    let link = mail.link("verify-email").unwrap();
    let token = mail.token("verify-email").unwrap();
    assert_eq!(link, app.url(&format!("/verify-email?token={token}")));
    assert_eq!(
        token.len(),
        46,
        "256 random bits and a routing nonce, base64url"
    );
    assert!(mail
        .html
        .clone()
        .unwrap()
        .contains(&format!("href=\"{link}\"")));

    // Opening the link (a mail scanner would) uses up nothing: the page's button does.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("name=\"token\" value=\"{token}\"")),
        "{html}"
    );
    assert_eq!(me(&app, &cookie).await["email_verified"], false);

    let res = post(&app, "/v1/email/verify", json!({ "token": token })).await;
    assert_eq!(res.status(), 204);
    let account = me(&app, &cookie).await;
    assert_eq!(
        (
            account["email"].as_str(),
            account["email_verified"].as_bool()
        ),
        (Some("Vera@Example.com"), Some(true))
    );

    // Single use.
    let again = post(&app, "/v1/email/verify", json!({ "token": token })).await;
    assert_eq!(again.status(), 400);
    assert_eq!(again.headers()["content-type"], "application/problem+json");
    let garbage = post(&app, "/v1/email/verify", json!({ "token": "not-a-token" })).await;
    assert_eq!(garbage.status(), 400);

    // Delivered: the outbox keeps no message, so the link's secret is nowhere readable.
    all_sent(&app).await;
    let db = sqlx::SqlitePool::connect(&app.database).await.unwrap();
    let kept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM mail_outbox WHERE message IS NOT NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(kept, 0);
    let tickets: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tickets")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(tickets, 0, "a used ticket is gone");
}

#[tokio::test]
async fn a_new_address_counts_only_once_its_link_is_used() {
    let sink = SmtpSink::start().await;
    let app = app_with_mail(&sink).await;
    let (cookie, first) = registered(&app, &sink, "eve", "eve@example.com").await;
    let token = first.token("verify-email").unwrap();
    assert_eq!(
        post(&app, "/v1/email/verify", json!({ "token": token }))
            .await
            .status(),
        204
    );

    let change = |body: Value| {
        app.client
            .put(app.url("/v1/users/me/email"))
            .header("cookie", &cookie)
            .json(&body)
            .send()
    };
    // Step-up: the current password.
    let wrong =
        change(json!({"email": "eve@new.example.com", "current_password": "not-hers-at-all"}))
            .await
            .unwrap();
    assert_eq!(wrong.status(), 403);
    let bad = change(json!({"email": "not an address", "current_password": PW}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let res = change(json!({"email": "eve@new.example.com", "current_password": PW}))
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mails = sink.wait_for(2, WAIT).await;
    assert_eq!(mails.len(), 2, "the refused changes sent nothing");
    assert_eq!(mails[1].rcpt_tos, vec!["eve@new.example.com".to_owned()]);
    // Until the link is used, the account keeps its verified address.
    let account = me(&app, &cookie).await;
    assert_eq!(
        (
            account["email"].as_str(),
            account["email_verified"].as_bool()
        ),
        (Some("eve@example.com"), Some(true))
    );
    let token = mails[1].token("verify-email").unwrap();
    assert_eq!(
        post(&app, "/v1/email/verify", json!({ "token": token }))
            .await
            .status(),
        204
    );
    let account = me(&app, &cookie).await;
    assert_eq!(
        (
            account["email"].as_str(),
            account["email_verified"].as_bool()
        ),
        (Some("eve@new.example.com"), Some(true))
    );

    // Another account cannot take a verified address.
    let (_, mallory) = registered(&app, &sink, "mallory", "EVE@new.example.com").await;
    let taken = post(
        &app,
        "/v1/email/verify",
        json!({ "token": mallory.token("verify-email").unwrap() }),
    )
    .await;
    assert_eq!(taken.status(), 409);
}

async fn reset(app: &TestApp, body: Value) -> (u16, String) {
    let res = post(app, "/v1/password-reset", body).await;
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn a_password_reset_by_mail_sets_a_new_password_and_ends_everything() {
    let sink = SmtpSink::start().await;
    let app = app_with_mail(&sink).await;
    let (cookie, verify) = registered(&app, &sink, "rita", "rita@example.com").await;
    let token = verify.token("verify-email").unwrap();
    assert_eq!(
        post(&app, "/v1/email/verify", json!({ "token": token }))
            .await
            .status(),
        204
    );
    let grant: Value = app
        .client
        .post(app.url("/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "rita"),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = grant["refresh_token"].as_str().unwrap().to_owned();

    // Known and unknown accounts get the same answer.
    let known = reset(&app, json!({"username": "rita"})).await;
    let unknown = reset(&app, json!({"username": "nobody-here"})).await;
    let unknown_email = reset(&app, json!({"email": "nobody@example.com"})).await;
    assert_eq!(known.0, 202);
    assert_eq!(known, unknown);
    assert_eq!(known, unknown_email);
    let mails = sink.wait_for(2, WAIT).await;
    let mail = &mails[1];
    assert_eq!(mail.rcpt_tos, vec!["rita@example.com".to_owned()]);
    assert_eq!(mail.subject, "Reset your password on 127.0.0.1");
    let text = mail.text.clone().unwrap();
    assert!(text.contains("for 30 minutes"), "{text}");
    assert!(text.contains("If you did not ask for this"), "{text}");
    let token = mail.token("reset-password").unwrap();

    // The page does not use the link up; a refused password does not either.
    let page = app
        .client
        .get(mail.link("reset-password").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("name=\"new_password\""));
    let weak = post(
        &app,
        "/v1/password-reset/confirm",
        json!({"token": token, "new_password": "password1234"}),
    )
    .await;
    assert_eq!(weak.status(), 422);
    let res = post(
        &app,
        "/v1/password-reset/confirm",
        json!({"token": token, "new_password": "Xq7-vNbz-fresh"}),
    )
    .await;
    assert_eq!(res.status(), 204);

    // Every session and refresh token ended; the old password is gone, the new one works.
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 401);
    let refreshed = app
        .client
        .post(app.url("/v1/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 400);
    assert_eq!(app.login("rita", PW).await.status(), 401);
    assert_eq!(app.login("rita", "Xq7-vNbz-fresh").await.status(), 201);
    // Single use.
    let again = post(
        &app,
        "/v1/password-reset/confirm",
        json!({"token": token, "new_password": "Another-Pass-77"}),
    )
    .await;
    assert_eq!(again.status(), 400);

    // A newer request ends the older link; a link expires after 30 minutes.
    assert_eq!(
        reset(&app, json!({"email": "RITA@example.com"})).await.0,
        202
    );
    let older = sink.wait_for(3, WAIT).await[2]
        .token("reset-password")
        .unwrap();
    assert_eq!(reset(&app, json!({"username": "rita"})).await.0, 202);
    let newer = sink.wait_for(4, WAIT).await[3]
        .token("reset-password")
        .unwrap();
    let stale = post(
        &app,
        "/v1/password-reset/confirm",
        json!({"token": older, "new_password": "Another-Pass-77"}),
    )
    .await;
    assert_eq!(stale.status(), 400);
    app.clock.advance(time::Duration::minutes(31));
    let expired = post(
        &app,
        "/v1/password-reset/confirm",
        json!({"token": newer, "new_password": "Another-Pass-77"}),
    )
    .await;
    assert_eq!(expired.status(), 400);
    assert_eq!(app.login("rita", "Xq7-vNbz-fresh").await.status(), 201);

    // Unknown accounts were sent nothing.
    all_sent(&app).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 4);
    assert!(mails
        .iter()
        .all(|m| m.rcpt_tos == vec!["rita@example.com".to_owned()]));
}

#[tokio::test]
async fn reset_requests_are_throttled_per_account_and_per_address() {
    let sink = SmtpSink::start().await;
    let app = spawn_app_with(AppOptions {
        smtp_url: Some(sink.url()),
        auth: AuthConfig {
            throttle: ThrottleConfig {
                registrations_per_address: 8,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        assert_eq!(reset(&app, json!({"username": "someone"})).await.0, 202);
    }
    let res = post(&app, "/v1/password-reset", json!({"username": "someone"})).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    // Other accounts from the same address, up to the address's limit.
    for i in 0..3 {
        assert_eq!(
            reset(&app, json!({"username": format!("other{i}")}))
                .await
                .0,
            202
        );
    }
    assert_eq!(reset(&app, json!({"username": "other-more"})).await.0, 429);
    app.clock.advance(time::Duration::minutes(61));
    assert_eq!(reset(&app, json!({"username": "someone"})).await.0, 202);
    // Neither field, or both: bad input, nothing sent.
    assert_eq!(reset(&app, json!({})).await.0, 422);
    assert_eq!(
        reset(&app, json!({"username": "a", "email": "a@example.com"}))
            .await
            .0,
        422
    );
}

#[tokio::test]
async fn without_smtp_the_email_routes_say_so_and_the_pages_hide_their_links() {
    let app = spawn_app_with(AppOptions::default()).await;
    let res = post(&app, "/v1/password-reset", json!({"username": "anyone"})).await;
    assert_eq!(res.status(), 503);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["status"], 503);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("email is not configured"),
        "{problem}"
    );
    let cookie = app.signed_in("nomail", PW).await;
    let change = app
        .client
        .put(app.url("/v1/users/me/email"))
        .header("cookie", &cookie)
        .json(&json!({"email": "a@example.com", "current_password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 503);
    let sign_in = app
        .client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!sign_in.contains("Forgot password?"));
    assert_eq!(
        app.client
            .get(app.url("/reset-password"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    // With a mail server the link is there.
    let sink = SmtpSink::start().await;
    let mailing = app_with_mail(&sink).await;
    let page = mailing
        .client
        .get(mailing.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Forgot password?"));
    // Registering with an address works without SMTP too; it stays unverified.
    let res = post(
        &app,
        "/v1/users",
        json!({"username": "kept", "password": PW, "email": "kept@example.com"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let cookie = app.login_cookie("kept", PW).await;
    assert_eq!(me(&app, &cookie).await["email_verified"], false);
}

#[tokio::test]
async fn mail_posted_while_the_smtp_server_is_down_arrives_once_it_is_up() {
    let port = keyward_testkit::ports::free_port();
    let sink = SmtpSink::not_started(port);
    let app = app_with_mail(&sink).await;
    // The request is answered at once: the mail waits in the outbox.
    let res = post(
        &app,
        "/v1/users",
        json!({"username": "dora", "password": PW, "email": "dora@example.com"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = app.outbox.list_mail(10).await.unwrap();
        if list.first().is_some_and(|m| m.attempts >= 1) {
            let m = &list[0];
            assert_eq!(m.state, MailState::Queued);
            assert!(m.last_error.is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery was tried"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sink = sink.started().await;
    // The retry is due 5 seconds later on keyward's clock.
    app.clock.advance(time::Duration::seconds(6));
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails[0].rcpt_tos, vec!["dora@example.com".to_owned()]);
    let list = all_sent(&app).await;
    assert_eq!(list[0].attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_send_each_mail_once() {
    let sink = SmtpSink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("shared.db").display());
    let opts = AppOptions {
        smtp_url: Some(sink.url()),
        database: Some(database),
        auth: AuthConfig {
            throttle: ThrottleConfig {
                registrations_per_address: 100,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    const N: usize = 24;
    for i in 0..N {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = json!({"username": format!("user{i}"), "password": PW, "email": format!("user{i}@example.com")});
        assert_eq!(post(node, "/v1/users", body).await.status(), 201);
    }
    sink.wait_for(N, WAIT).await;
    let list = all_sent(&a).await;
    assert_eq!(list.len(), N);
    let mut to: Vec<String> = sink.mails().into_iter().flat_map(|m| m.rcpt_tos).collect();
    assert_eq!(to.len(), N, "no mail was delivered twice");
    to.sort();
    to.dedup();
    assert_eq!(to.len(), N);
    // Both nodes share the outbox: the other sees the same.
    assert_eq!(b.outbox.list_mail(100).await.unwrap().len(), N);
}
