//! The shared store is no single point of failure: real `keyward serve --session-cache
//! replicated` processes whose store (Redis or PostgreSQL) is killed, or which alone lose
//! their way to it through a proxy that is cut, as in a partition.

use crate::fleet::Shared;
use crate::process::{bearer, login, me, password_grant, register_and_login, settles, Server, PW};
use keyward_testkit::client;
use keyward_testkit::proxy::Proxy;
use serde_json::{json, Value};
use std::time::Duration;

/// Two replicated nodes on `shared`, the first through `via` (a proxy's port) when given.
async fn nodes(
    shared: &Shared,
    dir: &std::path::Path,
    grace: [&str; 2],
    via: Option<u16>,
) -> [Server; 2] {
    let mut out = Vec::new();
    for (i, grace) in grace.into_iter().enumerate() {
        let port = match (i, via) {
            (0, Some(p)) => p,
            _ => shared.port(),
        };
        let mut args = shared.args(dir, port);
        args.extend(
            [
                "--session-cache",
                "replicated",
                "--outage-grace",
                grace,
                "--store-timeout",
                "500ms",
                // One issuer for both, as behind one public URL.
                "--issuer",
                "http://keyward.test",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        out.push(Server::start(dir, &args).await);
    }
    let [a, b]: [Server; 2] = out.try_into().ok().unwrap();
    [a, b]
}

/// `/readyz`: status and `status` field.
async fn readyz(base: &str) -> (u16, String) {
    let res = client().get(format!("{base}/readyz")).send().await.unwrap();
    let st = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (st, body["status"].as_str().unwrap_or_default().to_owned())
}

/// Wait (bounded) until `/readyz` on `base` says `want`.
async fn until_ready_says(base: &str, want: (u16, &str)) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (st, status) = readyz(base).await;
        if (st, status.as_str()) == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base}/readyz still {st} {status:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 503 with `Retry-After`.
fn unavailable(res: &reqwest::Response, what: &str) {
    assert_eq!(res.status(), 503, "{what}");
    assert!(res.headers().contains_key("retry-after"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_fleet_rides_out_a_redis_outage() {
    rides_out_an_outage("redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_fleet_rides_out_a_postgres_outage() {
    rides_out_an_outage("postgres").await
}

/// The store dies: both nodes keep validating the sessions and access tokens they hold, say
/// `degraded`, and answer 503 + `Retry-After` to everything that writes, without writing half
/// of it. The store comes back: they catch up, and a sign-out holds everywhere again.
async fn rides_out_an_outage(engine: &str) {
    let mut shared = Shared::start(engine).await;
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = nodes(&shared, dir.path(), ["5m", "5m"], None).await;
    let c = client();
    let kept = register_and_login(&a.base, "olga", PW).await;
    let other = login(&b.base, "olga", PW).await;
    let grant = password_grant(&a.base, "olga").await;
    let access = grant["access_token"].as_str().unwrap();
    let refresh = grant["refresh_token"].as_str().unwrap();

    shared.kill().await;
    for n in [&a.base, &b.base] {
        until_ready_says(n, (200, "degraded")).await;
    }
    for n in [&a.base, &b.base] {
        assert_eq!(me(n, &kept).await, 200, "a held session on {n}");
        assert_eq!(bearer(n, access).await, 200, "a held access token on {n}");
        let res = c
            .post(format!("{n}/v1/sessions"))
            .json(&json!({"username": "olga", "password": PW}))
            .send()
            .await
            .unwrap();
        unavailable(&res, "sign-in");
        let res = c
            .delete(format!("{n}/v1/sessions/current"))
            .header("cookie", &kept)
            .send()
            .await
            .unwrap();
        unavailable(&res, "sign-out");
        let res = c
            .post(format!("{n}/v1/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
            .send()
            .await
            .unwrap();
        unavailable(&res, "refresh");
        let res = c
            .post(format!("{n}/v1/users"))
            .json(&json!({"username": "oscar", "password": PW}))
            .send()
            .await
            .unwrap();
        unavailable(&res, "registration");
    }
    // Nothing was half-done: the refused sign-outs ended nothing.
    assert_eq!(me(&a.base, &kept).await, 200);
    assert_eq!(me(&b.base, &other).await, 200);

    shared.restart().await;
    for n in [&a.base, &b.base] {
        until_ready_says(n, (200, "ready")).await;
    }
    let res = c
        .delete(format!("{}/v1/sessions/current", b.base))
        .header("cookie", &kept)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for n in [&a.base, &b.base] {
        assert_eq!(
            settles(401, || me(n, &kept)).await,
            401,
            "the sign-out holds on {n}"
        );
        assert_eq!(me(n, &other).await, 200);
    }
    // The refresh token refused during the outage was not used up by it.
    let res = c
        .post(format!("{}/v1/token", a.base))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grace_or_past_it_a_cut_off_node_refuses() {
    let mut shared = Shared::start("redis").await;
    let dir = tempfile::tempdir().unwrap();
    // No grace on the first node, two seconds on the second.
    let [a, b] = nodes(&shared, dir.path(), ["0s", "2s"], None).await;
    let cookie = register_and_login(&a.base, "nina", PW).await;
    assert_eq!(me(&b.base, &cookie).await, 200);

    shared.kill().await;
    until_ready_says(&a.base, (503, "unavailable")).await;
    let res = client()
        .get(format!("{}/v1/me", a.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    unavailable(&res, "a read without grace");
    until_ready_says(&b.base, (200, "degraded")).await;
    assert_eq!(me(&b.base, &cookie).await, 200);
    // The grace is time itself: it ends.
    until_ready_says(&b.base, (503, "unavailable")).await;
    let res = client()
        .get(format!("{}/v1/me", b.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    unavailable(&res, "a read past the grace");

    shared.restart().await;
    for n in [&a.base, &b.base] {
        until_ready_says(n, (200, "ready")).await;
        assert_eq!(me(n, &cookie).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_sees_what_it_missed_once_back() {
    partition("redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgres_sees_what_it_missed_once_back() {
    partition("postgres").await
}

/// Only the first node loses the store. It keeps serving what it holds, including what the
/// other node revokes meanwhile (the documented trade-off of the grace); once its way back is
/// open, it catches up before it says `ready`, and from then on refuses what was revoked.
async fn partition(engine: &str) {
    let shared = Shared::start(engine).await;
    let proxy = Proxy::start(shared.port()).await;
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = nodes(&shared, dir.path(), ["5m", "5m"], Some(proxy.port)).await;
    let c = client();
    let ended = register_and_login(&b.base, "pia", PW).await;
    let kept = login(&b.base, "pia", PW).await;
    let grant = password_grant(&b.base, "pia").await;
    let access = grant["access_token"].as_str().unwrap();
    assert_eq!(me(&a.base, &ended).await, 200);
    assert_eq!(bearer(&a.base, access).await, 200);

    proxy.cut();
    until_ready_says(&a.base, (200, "degraded")).await;
    let res = c
        .delete(format!("{}/v1/sessions/current", b.base))
        .header("cookie", &ended)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = c
        .post(format!("{}/v1/token/revoke", b.base))
        .form(&[("token", grant["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(me(&b.base, &ended).await, 401);
    assert_eq!(bearer(&b.base, access).await, 401);
    // The trade-off: the cut-off node cannot know yet.
    assert_eq!(me(&a.base, &ended).await, 200);

    proxy.restore();
    until_ready_says(&a.base, (200, "ready")).await;
    assert_eq!(me(&a.base, &ended).await, 401, "the sign-out it missed");
    assert_eq!(
        bearer(&a.base, access).await,
        401,
        "the revocation it missed"
    );
    assert_eq!(me(&a.base, &kept).await, 200);
}
