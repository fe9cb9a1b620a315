//! Token authentication through the real HTTP server: grants, rotation and reuse detection,
//! revocation, introspection, JWKS, interoperability, and RFC 8725 attack cases.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keyward_testkit::{spawn_app, spawn_app_with, AppOptions, TestApp, INTROSPECTION_TOKEN};
use keyward_token::{AccessClaims, SigningAlg};
use serde_json::{json, Value};
use time::Duration;

const PW: &str = "correct-horse-battery";

pub(crate) async fn grant(app: &TestApp, user: &str, pw: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", pw),
        ])
        .send()
        .await
        .unwrap()
}

async fn pair(app: &TestApp, user: &str) -> (String, String) {
    pair_with(app, user, PW).await
}

/// A password grant that must succeed: `(access_token, refresh_token)`.
pub(crate) async fn pair_with(app: &TestApp, user: &str, pw: &str) -> (String, String) {
    let res = grant(app, user, pw).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

pub(crate) async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap()
}

pub(crate) async fn me(app: &TestApp, access: &str) -> u16 {
    app.client
        .get(app.url("/v1/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let p = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&p).unwrap(),
    )
}

#[tokio::test]
async fn password_grant_issues_a_pair_and_bearer_works() {
    let app = spawn_app().await;
    assert_eq!(app.register("tina", PW).await.status(), 201);
    let res = grant(&app, "tina", PW).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    let access = v["access_token"].as_str().unwrap();
    let refresh_token = v["refresh_token"].as_str().unwrap();
    assert_eq!(
        refresh_token.len(),
        46,
        "256-bit opaque refresh token and a 2-byte shard nonce"
    );
    let (header, claims) = parts(access);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].is_string());
    for c in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid"] {
        assert!(claims.get(c).is_some(), "claim {c}");
    }
    assert_eq!(claims["iss"], format!("http://{}", app.addr));
    assert_eq!(claims["aud"], "keyward");

    // JSON works too.
    let res = app
        .client
        .post(app.url("/v1/token"))
        .json(&json!({"grant_type": "password", "username": "tina", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let res = app
        .client
        .get(app.url("/v1/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["username"], "tina");
    assert_eq!(body["id"], claims["sub"]);
    let res = app
        .client
        .get(app.url("/v1/verify"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-keyward-username"], "tina");
    // The refresh token is not an access token.
    assert_eq!(me(&app, refresh_token).await, 401);
    // Bearer requests are exempt from the cross-site rule: a bearer caller changes its
    // password with a foreign Origin (and so ends its own tokens).
    let res = app
        .client
        .put(app.url("/v1/users/me/password"))
        .bearer_auth(access)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"current_password": PW, "new_password": "a-brand-new-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(me(&app, access).await, 401);
}

#[tokio::test]
async fn failures_are_oauth_shaped_and_equal() {
    let app = spawn_app().await;
    assert_eq!(app.register("uri", PW).await.status(), 201);
    let a = grant(&app, "nobody", PW).await;
    let b = grant(&app, "uri", "wrong-password-1").await;
    assert_eq!(a.status(), 400);
    assert_eq!(b.status(), 400);
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a, b);
    assert_eq!(a["error"], "invalid_grant");
    let res = app
        .client
        .post(app.url("/v1/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let res = app
        .client
        .post(app.url("/v1/token"))
        .form(&[("grant_type", "password"), ("username", "uri")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
    let res = app
        .client
        .post(app.url("/v1/token"))
        .body("{nope")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
    let res = app
        .client
        .post(app.url("/v1/token"))
        .body("x")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(refresh(&app, "not-a-token").await.status(), 400);
}

#[tokio::test]
async fn token_logins_share_the_throttle() {
    let mut opts = AppOptions::default();
    opts.auth.throttle.per_account = 2;
    let app = spawn_app_with(opts).await;
    assert_eq!(app.register("vera", PW).await.status(), 201);
    for _ in 0..2 {
        assert_eq!(grant(&app, "vera", "wrong-password-1").await.status(), 400);
    }
    let res = grant(&app, "vera", PW).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        app.login("vera", PW).await.status(),
        429,
        "cookie logins see the same count"
    );
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn_app().await;
    assert_eq!(app.register("wes", PW).await.status(), 201);
    let (access0, r0) = pair(&app, "wes").await;
    let res = refresh(&app, &r0).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let r1 = v["refresh_token"].as_str().unwrap().to_owned();
    let access1 = v["access_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r0);
    assert_eq!(
        parts(&access1).1["sid"],
        parts(&access0).1["sid"],
        "same family"
    );
    let res = refresh(&app, &r1).await;
    assert_eq!(res.status(), 200);
    let r2 = res.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&app, &access1).await, 200);

    // r0 was used: presenting it again is reuse.
    let res = refresh(&app, &r0).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // The whole family is gone, the newest refresh token and the access tokens included.
    assert_eq!(refresh(&app, &r2).await.status(), 400);
    assert_eq!(me(&app, &access0).await, 401);
    assert_eq!(me(&app, &access1).await, 401);
    // Other families of the same user are untouched.
    let (access_other, r_other) = pair(&app, "wes").await;
    assert_eq!(me(&app, &access_other).await, 200);
    assert_eq!(refresh(&app, &r_other).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_with_one_token_have_exactly_one_winner() {
    let app = spawn_app().await;
    assert_eq!(app.register("xena", PW).await.status(), 201);
    let (_, r0) = pair(&app, "xena").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let url = app.url("/v1/token");
        let r = r0.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", r.as_str()),
                ])
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
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        7,
        "{statuses:?}"
    );
    assert!(!statuses.contains(&500));
}

#[tokio::test]
async fn revocation_paths() {
    let app = spawn_app().await;
    assert_eq!(app.register("yuri", PW).await.status(), 201);
    let revoke = |token: String| {
        app.client
            .post(app.url("/v1/token/revoke"))
            .form(&[("token", token.as_str())])
            .send()
    };
    // An access token: its jti is denied; its family lives on.
    let (access, r) = pair(&app, "yuri").await;
    assert_eq!(revoke(access.clone()).await.unwrap().status(), 200);
    assert_eq!(me(&app, &access).await, 401);
    let res = refresh(&app, &r).await;
    assert_eq!(res.status(), 200);
    let fresh = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&app, &fresh).await, 200);
    // A refresh token: the family, and the access tokens issued from it.
    let (access, r) = pair(&app, "yuri").await;
    assert_eq!(revoke(r.clone()).await.unwrap().status(), 200);
    assert_eq!(me(&app, &access).await, 401);
    assert_eq!(refresh(&app, &r).await.status(), 400);
    // Unknown tokens: still 200. Missing token: 400.
    assert_eq!(revoke("garbage".into()).await.unwrap().status(), 200);
    let res = app
        .client
        .post(app.url("/v1/token/revoke"))
        .form(&[("x", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    // Password change, lock and delete revoke every family of the user.
    let (a1, r1) = pair(&app, "yuri").await;
    let cookie = app.login_cookie("yuri", PW).await;
    let res = app
        .client
        .put(app.url("/v1/users/me/password"))
        .header("cookie", &cookie)
        .json(&json!({"current_password": PW, "new_password": "a-brand-new-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(me(&app, &a1).await, 401);
    assert_eq!(refresh(&app, &r1).await.status(), 400);
    let res = grant(&app, "yuri", "a-brand-new-password").await;
    let a2 = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.keyward.auth().set_locked("yuri", true).await.unwrap();
    assert_eq!(me(&app, &a2).await, 401);
}

#[tokio::test]
async fn introspection_needs_the_service_credential() {
    let app = spawn_app().await;
    assert_eq!(app.register("zack", PW).await.status(), 201);
    let (access, r) = pair(&app, "zack").await;
    let url = app.url("/v1/token/introspect");
    let res = app
        .client
        .post(&url)
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .post(&url)
        .bearer_auth("wrong-secret")
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .post(&url)
        .bearer_auth(INTROSPECTION_TOKEN)
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["username"], "zack");
    for k in ["sub", "exp", "iat", "jti", "sid"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    let v: Value = app
        .client
        .post(&url)
        .bearer_auth(INTROSPECTION_TOKEN)
        .form(&[("token", r.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["active"], true);
    assert_eq!(v["token_type"], "refresh_token");
    let v: Value = app
        .client
        .post(&url)
        .bearer_auth(INTROSPECTION_TOKEN)
        .form(&[("token", "nonsense")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"active": false}));
}

#[tokio::test]
async fn discovery_documents() {
    let app = spawn_app().await;
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "the access-token key and the ID-token key");
    let okp = keys.iter().find(|k| k["kty"] == "OKP").unwrap();
    assert_eq!(okp["crv"], "Ed25519");
    assert_eq!(okp["alg"], "EdDSA");
    assert!(okp.get("d").is_none());
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").unwrap();
    assert_eq!(rsa["alg"], "RS256");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(rsa.get(private).is_none(), "{private}");
    }
    let meta: Value = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let base = format!("http://{}", app.addr);
    assert_eq!(meta["issuer"], base.as_str());
    assert_eq!(meta["token_endpoint"], format!("{base}/v1/token"));
    assert_eq!(meta["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    assert_eq!(
        meta["revocation_endpoint"],
        format!("{base}/v1/token/revoke")
    );
    assert_eq!(
        meta["introspection_endpoint"],
        format!("{base}/v1/token/introspect")
    );
}

/// Verify a keyward token with jwt-simple (a different JOSE implementation), using only the
/// JWKS document.
fn verify_independently(
    jwks: &Value,
    token: &str,
    issuer: &str,
) -> jwt_simple::prelude::JWTClaims<Value> {
    use jwt_simple::prelude::*;
    let kid = parts(token).0["kid"].as_str().unwrap().to_owned();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    let b = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
    let opts = VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&[issuer])),
        allowed_audiences: Some(HashSet::from_strings(&["keyward"])),
        required_signature_type: Some("at+jwt".into()),
        ..Default::default()
    };
    match jwk["kty"].as_str().unwrap() {
        "OKP" => Ed25519PublicKey::from_bytes(&b("x"))
            .unwrap()
            .verify_token::<Value>(token, Some(opts))
            .unwrap(),
        "EC" => {
            let mut sec1 = vec![4u8];
            sec1.extend(b("x"));
            sec1.extend(b("y"));
            ES256PublicKey::from_bytes(&sec1)
                .unwrap()
                .verify_token::<Value>(token, Some(opts))
                .unwrap()
        }
        "RSA" => RS256PublicKey::from_components(&b("n"), &b("e"))
            .unwrap()
            .verify_token::<Value>(token, Some(opts))
            .unwrap(),
        other => panic!("unexpected kty {other}"),
    }
}

#[tokio::test]
async fn tokens_verify_with_an_independent_implementation_for_every_algorithm() {
    for alg in [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256] {
        let app = spawn_app_with(AppOptions {
            algorithm: alg,
            ..Default::default()
        })
        .await;
        assert_eq!(app.register("ivy", PW).await.status(), 201);
        let (access, _) = pair(&app, "ivy").await;
        assert_eq!(parts(&access).0["alg"], alg.name());
        let jwks: Value = app
            .client
            .get(app.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let claims = verify_independently(&jwks, &access, &format!("http://{}", app.addr));
        assert_eq!(claims.custom["preferred_username"], "ivy");
        assert_eq!(me(&app, &access).await, 200, "{alg:?}");
    }
}

fn forge(header: Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

#[tokio::test]
async fn rfc8725_attacks_are_refused() {
    use hmac::{Hmac, Mac};
    let app = spawn_app().await;
    assert_eq!(app.register("mal", PW).await.status(), 201);
    let (access, _) = pair(&app, "mal").await;
    assert_eq!(me(&app, &access).await, 200);
    let (header, claims) = parts(&access);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let segs: Vec<&str> = access.split('.').collect();
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            forge(
                json!({"alg": "none", "typ": "at+jwt", "kid": kid}),
                &claims,
                b"",
            ),
        ),
        (
            "alg none, no signature segment",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg":"none","typ":"at+jwt","kid":kid}).to_string()),
                segs[1]
            ),
        ),
        (
            "unknown kid",
            forge(
                json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "not-ours"}),
                &claims,
                &URL_SAFE_NO_PAD.decode(segs[2]).unwrap(),
            ),
        ),
        (
            "no kid",
            forge(
                json!({"alg": "EdDSA", "typ": "at+jwt"}),
                &claims,
                &URL_SAFE_NO_PAD.decode(segs[2]).unwrap(),
            ),
        ),
        ("stripped signature", format!("{}.{}.", segs[0], segs[1])),
        ("two segments", format!("{}.{}", segs[0], segs[1])),
        (
            "wrong typ",
            forge(
                json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
                &claims,
                &URL_SAFE_NO_PAD.decode(segs[2]).unwrap(),
            ),
        ),
        (
            "jku pointing elsewhere",
            forge(
                json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "evil", "jku": "https://evil.example/jwks.json"}),
                &claims,
                &URL_SAFE_NO_PAD.decode(segs[2]).unwrap(),
            ),
        ),
    ];
    let mut tampered = claims.clone();
    tampered["sub"] = json!("00000000-0000-0000-0000-000000000000");
    attacks.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            segs[0],
            URL_SAFE_NO_PAD.encode(tampered.to_string()),
            segs[2]
        ),
    ));
    // Key confusion: HS256 with the public key as the HMAC secret.
    let okp = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "OKP")
        .unwrap()
        .clone();
    let public_x = okp["x"].as_str().unwrap().to_owned();
    for secret in [
        public_x.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&public_x).unwrap(),
        okp.to_string().into_bytes(),
    ] {
        let h = URL_SAFE_NO_PAD
            .encode(json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}).to_string());
        let signing_input = format!("{h}.{}", segs[1]);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(signing_input.as_bytes());
        attacks.push((
            "HS256 with the public key",
            format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            ),
        ));
    }
    for (what, token) in &attacks {
        assert_eq!(me(&app, token).await, 401, "{what}");
        let res = app
            .client
            .get(app.url("/v1/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let www = res.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"invalid_token\""), "{what}: {www}");
    }

    // Claims signed by our own key but wrong: issuer, audience, not yet valid, expired.
    let ring = app.tokens.keyring();
    let key = ring.current(keyward_token::SigningAlg::EdDSA).unwrap();
    let good: AccessClaims = serde_json::from_value(claims.clone()).unwrap();
    let now = good.iat;
    let cases = [
        (
            "wrong iss",
            AccessClaims {
                iss: "https://evil.example".into(),
                ..good.clone()
            },
        ),
        (
            "wrong aud",
            AccessClaims {
                aud: "other-service".into(),
                ..good.clone()
            },
        ),
        (
            "nbf in the future",
            AccessClaims {
                nbf: now + 3600,
                exp: now + 7200,
                ..good.clone()
            },
        ),
        (
            "expired",
            AccessClaims {
                exp: now - 1,
                ..good.clone()
            },
        ),
    ];
    for (what, c) in cases {
        let token = keyward_token::jwt::sign(key, &c).unwrap();
        assert_eq!(me(&app, &token).await, 401, "{what}");
    }
    // The control: the same key and untouched claims pass.
    assert_eq!(
        me(&app, &keyward_token::jwt::sign(key, &good).unwrap()).await,
        200
    );

    // Expiry by the clock.
    app.clock.advance(Duration::minutes(16));
    assert_eq!(me(&app, &access).await, 401, "expired");
}

#[tokio::test]
async fn es256_zero_signature_is_refused() {
    let app = spawn_app_with(AppOptions {
        algorithm: SigningAlg::ES256,
        ..Default::default()
    })
    .await;
    assert_eq!(app.register("psy", PW).await.status(), 201);
    let (access, _) = pair(&app, "psy").await;
    let (header, claims) = parts(&access);
    let forged = forge(header, &claims, &[0u8; 64]);
    assert_eq!(me(&app, &forged).await, 401, "r = s = 0 (CVE-2022-21449)");
    assert_eq!(me(&app, &access).await, 200);
}

/// The access-token keys of the JWKS (EdDSA here; the RS256 ID-token chain rotates beside).
async fn jwks_kids(app: &TestApp) -> Vec<String> {
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["alg"] != "RS256")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn signing_keys_rotate_on_schedule() {
    let app = spawn_app_with(AppOptions {
        key_rotation_interval: Duration::days(1),
        ..Default::default()
    })
    .await;
    assert_eq!(app.register("sue", PW).await.status(), 201);
    let first = jwks_kids(&app).await;
    assert_eq!(first.len(), 1);
    app.clock
        .advance(Duration::hours(24) - Duration::minutes(1));
    assert_eq!(
        app.tokens.rotate_if_due().await.unwrap(),
        None,
        "not due yet"
    );
    let (before, _) = pair(&app, "sue").await;
    app.clock.advance(Duration::minutes(1));
    let kid = app.tokens.rotate_if_due().await.unwrap().expect("due");
    assert_eq!(
        app.tokens.rotate_if_due().await.unwrap(),
        None,
        "once per interval"
    );
    assert_eq!(jwks_kids(&app).await, vec![first[0].clone(), kid.clone()]);
    // Tokens of the old key still verify; new ones are signed by the new key.
    assert_eq!(me(&app, &before).await, 200);
    let (after, _) = pair(&app, "sue").await;
    assert_eq!(parts(&after).0["kid"], kid.as_str());
    // The old key retires once no token it signed can be alive.
    app.clock.advance(Duration::minutes(15));
    app.tokens.reload_keys().await.unwrap();
    assert_eq!(jwks_kids(&app).await, vec![kid]);
}

/// One node makes the scheduled key; another node sharing the database picks it up (a token
/// with an unknown `kid` makes it reload its keys) and verifies what the first now signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_on_schedule_by_one_node_verifies_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AppOptions {
        key_rotation_interval: Duration::days(1),
        database: Some(format!(
            "sqlite://{}",
            dir.path().join("shared.db").display()
        )),
        // One fleet: one public URL, so one issuer.
        public_url: Some("http://auth.keyward.test".into()),
        ..Default::default()
    };
    let a = spawn_app_with(opts.clone()).await;
    let b = spawn_app_with(opts).await;
    assert_eq!(a.register("tia", PW).await.status(), 201);
    assert_eq!(jwks_kids(&a).await, jwks_kids(&b).await);
    for app in [&a, &b] {
        app.clock.advance(Duration::days(1));
    }
    let kid = a.tokens.rotate_if_due().await.unwrap().expect("due on a");
    assert_eq!(
        b.tokens.rotate_if_due().await.unwrap(),
        None,
        "one node makes it"
    );
    let (access, _) = pair(&a, "tia").await;
    assert_eq!(parts(&access).0["kid"], kid.as_str());
    assert_eq!(me(&b, &access).await, 200);
    assert!(jwks_kids(&b).await.contains(&kid));
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_until_they_expire_then_retires_the_key() {
    let app = spawn_app().await;
    assert_eq!(app.register("rob", PW).await.status(), 201);
    let (old_access, _) = pair(&app, "rob").await;
    let old_kid = parts(&old_access).0["kid"].as_str().unwrap().to_owned();
    // A long-lived token from the old key, to tell "retired key" apart from "expired token".
    let ring = app.tokens.keyring();
    let old_key = ring
        .current(keyward_token::SigningAlg::EdDSA)
        .unwrap()
        .clone();
    let mut long: AccessClaims = serde_json::from_value(parts(&old_access).1).unwrap();
    long.exp += 86_400;
    let long_token = keyward_token::jwt::sign(&old_key, &long).unwrap();

    app.clock.advance(Duration::seconds(1));
    let new_kid = app.tokens.rotate_key().await.unwrap();
    assert_ne!(new_kid, old_kid);
    let (new_access, _) = pair(&app, "rob").await;
    assert_eq!(parts(&new_access).0["kid"], new_kid.as_str());
    assert_eq!(
        me(&app, &old_access).await,
        200,
        "old tokens verify after a rotation"
    );
    let kids = jwks_kids(&app).await;
    assert!(kids.contains(&old_kid) && kids.contains(&new_kid));

    // Past every token's lifetime, the old key retires: out of JWKS and refused.
    app.clock.advance(Duration::minutes(16));
    app.tokens.reload_keys().await.unwrap();
    assert_eq!(jwks_kids(&app).await, vec![new_kid]);
    assert_eq!(
        me(&app, &long_token).await,
        401,
        "a token from a retired key"
    );
    let (fresh, _) = pair(&app, "rob").await;
    assert_eq!(me(&app, &fresh).await, 200);
}

#[tokio::test]
async fn a_retry_within_the_grace_gets_the_same_successor_never_a_second_one() {
    let app = spawn_app_with(AppOptions {
        refresh_reuse_grace: Duration::seconds(30),
        ..Default::default()
    })
    .await;
    assert_eq!(app.register("gus", PW).await.status(), 201);
    let (_, r0) = pair(&app, "gus").await;
    let first: Value = refresh(&app, &r0).await.json().await.unwrap();
    app.clock.advance(Duration::seconds(5));
    let res = refresh(&app, &r0).await;
    assert_eq!(res.status(), 200, "a retry of a lost answer");
    let retry: Value = res.json().await.unwrap();
    assert_eq!(
        retry["refresh_token"], first["refresh_token"],
        "the same successor"
    );
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let res = refresh(&app, &r1).await;
    assert_eq!(res.status(), 200);
    let r2 = res.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its successor has been used: presenting r0 now is reuse, grace or not.
    assert_eq!(refresh(&app, &r0).await.status(), 400);
    assert_eq!(
        refresh(&app, &r2).await.status(),
        400,
        "the family is revoked"
    );
}

#[tokio::test]
async fn signing_out_everywhere_else_includes_token_clients() {
    let app = spawn_app().await;
    let cookie = app.signed_in("evan", PW).await;
    let (access, refresh_token) = pair(&app, "evan").await;
    assert_eq!(me(&app, &access).await, 200);
    assert_eq!(app.delete_with("/v1/sessions", &cookie).await.status(), 204);
    assert_eq!(me(&app, &access).await, 401);
    assert_eq!(refresh(&app, &refresh_token).await.status(), 400);
    assert_eq!(
        app.get_with("/v1/me", &cookie).await.status(),
        200,
        "the current session stays"
    );
    // A bearer header does not exempt a cookie-carrying request from the cross-site rule.
    let res = app
        .client
        .delete(app.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .bearer_auth("anything")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 200);
}

#[tokio::test]
async fn access_tokens_never_outlive_their_family() {
    let app = spawn_app_with(AppOptions {
        refresh_ttl: Duration::minutes(20),
        ..Default::default()
    })
    .await;
    assert_eq!(app.register("fiona", PW).await.status(), 201);
    let (_, refresh_token) = pair(&app, "fiona").await;
    // 10 minutes before the family ends, a refresh gets an access token for those 10 minutes,
    // not the configured 15: a revoked family must deny every token it issued, and stores
    // keep a family's record only so long after its end.
    app.clock.advance(Duration::minutes(10));
    let res = refresh(&app, &refresh_token).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["expires_in"], 600);
    let (_, claims) = parts(v["access_token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
}
