//! OAuth 2.1 and OpenID Connect: the authorization code flow with PKCE driven by an
//! independent relying party (the `openidconnect` crate: discovery, the authorization URL,
//! the code exchange, ID-token verification from the JWKS with nonce and `at_hash`, userinfo,
//! refresh), and the negative cases of the OpenID conformance suite that run offline.

use keyward_core::{ClientRecord, TokenHash};
use keyward_testkit::{cookie_pair, spawn_app, TestApp};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};
use serde_json::Value;
use std::collections::HashMap;

const PW: &str = "correct-horse-battery";
/// A PKCE pair (RFC 7636 Appendix B).
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// Register a client straight in the store (as `keyward clients add` does).
pub async fn add_client(
    app: &TestApp,
    redirect: &[&str],
    first_party: bool,
    secret: Option<&str>,
) -> ClientRecord {
    let client = ClientRecord {
        id: keyward_core::clients::new_client_id().unwrap(),
        name: "Photo Printer".into(),
        redirect_uris: redirect.iter().map(|s| (*s).to_owned()).collect(),
        post_logout_redirect_uris: vec!["https://photos.example.com/bye".into()],
        secret_hash: secret.map(TokenHash::of),
        first_party,
        created_at: keyward_core::Clock::now(&*app.clock),
    };
    app.tokens.clients().create_client(&client).await.unwrap();
    client
}

fn query(location: &str) -> HashMap<String, String> {
    let url = url::Url::parse(location).unwrap();
    url.query_pairs().into_owned().collect()
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location on {}", res.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// An authorization request of ours (not the RP library's), as a path and query.
fn authorize_path(client: &ClientRecord, redirect: &str, extra: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", &client.id)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "openid")
        .append_pair("state", "st-1")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("/oauth/authorize?{}", q.finish())
}

/// Replace or drop a parameter of an authorization path.
fn without(path: &str, name: &str, value: Option<&str>) -> String {
    let (p, q) = path.split_once('?').unwrap();
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        if k == name {
            if let Some(v) = value {
                out.append_pair(&k, v);
            }
        } else {
            out.append_pair(&k, &v);
        }
    }
    format!("{p}?{}", out.finish())
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.client.post(app.url(path)).form(form);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

/// Allow on the consent page: post its request back with `decision=allow`.
async fn consent(app: &TestApp, cookie: &str, path: &str, decision: &str) -> reqwest::Response {
    let page = get(app, path, Some(cookie)).await;
    assert_eq!(page.status(), 200, "the consent page");
    let token = consent_token(&page.text().await.unwrap());
    answer(app, cookie, path, decision, &token).await
}

/// The consent form's token, from its page.
fn consent_token(html: &str) -> String {
    html.split("name=\"consent_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a consent token in the form")
        .to_owned()
}

/// Post the consent form: the request of `path`, the answer and the form's token.
async fn answer(
    app: &TestApp,
    cookie: &str,
    path: &str,
    decision: &str,
    token: &str,
) -> reqwest::Response {
    let q = path.split_once('?').unwrap().1;
    let mut form: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect();
    form.push(("decision".into(), decision.into()));
    form.push(("consent_token".into(), token.into()));
    app.client
        .post(app.url("/oauth/consent"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// A code for `client` through a signed-in browser (first-party, or consent already given).
async fn code_for(app: &TestApp, cookie: &str, path: &str) -> String {
    let res = get(app, path, Some(cookie)).await;
    assert_eq!(res.status(), 302, "{}", res.text().await.unwrap());
    let q = query(&location(&res));
    assert_eq!(q["state"], "st-1");
    q["code"].clone()
}

async fn exchange(app: &TestApp, form: &[(&str, &str)]) -> reqwest::Response {
    post_form(app, "/v1/token", None, form).await
}

/// `GET path` with a bearer token.
async fn with_bearer(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `grant_type=refresh_token` as `client_id` (`None`: keyward's built-in client).
async fn refresh_as(app: &TestApp, token: &str, client_id: Option<&str>) -> reqwest::Response {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
    if let Some(id) = client_id {
        form.push(("client_id", id));
    }
    exchange(app, &form).await
}

/// Exchange a code of a public client with the test's PKCE verifier.
async fn redeem(app: &TestApp, code: &str, redirect: &str, client_id: &str) -> reqwest::Response {
    exchange(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", VERIFIER),
            ("client_id", client_id),
        ],
    )
    .await
}

async fn error_of(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    (status, body["error"].as_str().unwrap().to_owned())
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_openid_client_signs_in_with_code_and_pkce() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/v1/users"))
        .json(&serde_json::json!({"username": "ada", "password": PW, "email": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // A native app's loopback redirect on an ephemeral port (RFC 8252 §7.3): the port is
    // not registered.
    let client = add_client(&app, &["http://127.0.0.1/callback"], false, None).await;
    let http = openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let issuer = app.tokens.config().issuer.clone();
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(issuer.clone()).unwrap(), &http)
            .await
            .unwrap();
    let rp = CoreClient::from_provider_metadata(metadata, ClientId::new(client.id.clone()), None)
        .set_redirect_uri(RedirectUrl::new("http://127.0.0.1:49152/callback".into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf, nonce) = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge)
        .url();

    // Not signed in: the sign-in page, which comes back to the request.
    let res = app.client.get(auth_url.as_str()).send().await.unwrap();
    assert_eq!(res.status(), 303);
    let to_sign_in = location(&res);
    let next = query(&format!("http://x{to_sign_in}"))["next"].clone();
    assert!(next.starts_with("/oauth/authorize?"), "{next}");
    let page = get(&app, &to_sign_in, None).await;
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains(&format!("value=\"{}\"", next.replace('&', "&amp;"))));
    let res = post_form(
        &app,
        "/v1/sessions",
        None,
        &[("username", "ada"), ("password", PW), ("next", &next)],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), next);
    let cookie = cookie_pair(res.headers(), "keyward").unwrap();

    // Not first-party: the consent page names the client and the scopes.
    let res = get(&app, &next, Some(&cookie)).await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:49152"),
        "{csp}"
    );
    let html = res.text().await.unwrap();
    assert!(
        html.contains("Allow Photo Printer to use your account?"),
        "{html}"
    );
    for s in ["openid", "profile", "email", "offline_access"] {
        assert!(html.contains(&format!("data-scope=\"{s}\"")), "{s}");
    }
    let res = consent(&app, &cookie, &next, "allow").await;
    assert_eq!(res.status(), 302);
    let back = location(&res);
    assert!(
        back.starts_with("http://127.0.0.1:49152/callback?"),
        "{back}"
    );
    let q = query(&back);
    assert_eq!(&q["state"], csrf.secret());
    assert_eq!(q["iss"], issuer, "RFC 9207");
    let code = q["code"].clone();
    assert!(code.len() >= 43, "256 bits");

    // The relying party exchanges it and verifies the ID token from the JWKS.
    let tokens = rp
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let id_token = tokens.id_token().expect("an ID token with openid");
    let id_verifier = rp.id_token_verifier();
    let claims = id_token.claims(&id_verifier, &nonce).unwrap();
    let expected = claims.access_token_hash().expect("at_hash");
    let actual = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&id_verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(&actual, expected);
    assert_eq!(claims.preferred_username().unwrap().as_str(), "ada");
    assert_eq!(claims.email().unwrap().as_str(), "ada@example.com");
    assert_eq!(claims.email_verified(), Some(false));
    assert!(claims.auth_time().is_some());
    let raw = jwt_claims(&id_token.to_string());
    assert_eq!(raw["amr"], serde_json::json!(["pwd"]));
    assert_eq!(raw["aud"], client.id.as_str());
    let session: Value = app
        .get_with("/v1/sessions/current", &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["sid"], session["session"]["id"],
        "sid names the browser session"
    );
    assert_eq!(
        *id_token.signing_alg().unwrap(),
        openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
    );
    // RFC 9068 claims of the access token.
    let at = jwt_claims(tokens.access_token().secret());
    assert_eq!(at["client_id"], client.id.as_str());
    assert_eq!(at["scope"], "openid profile email offline_access");
    assert_eq!(tokens.scopes().unwrap().len(), 4);

    // Userinfo through the library.
    let info: CoreUserInfoClaims = rp
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(info.subject().as_str(), claims.subject().as_str());
    assert_eq!(info.email().unwrap().as_str(), "ada@example.com");

    // Refresh, by the library.
    let refresh = tokens
        .refresh_token()
        .expect("offline_access gives a refresh token");
    let again = rp
        .exchange_refresh_token(refresh)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    let at2 = jwt_claims(again.access_token().secret());
    assert_eq!(at2["client_id"], client.id.as_str());
    assert_eq!(at2["scope"], "openid profile email offline_access");

    // The code again: refused, and everything it issued is revoked.
    let replay = rp
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(openidconnect::PkceCodeVerifier::new("x".repeat(43)))
        .request_async(&http)
        .await;
    assert!(replay.is_err());
    let res = app
        .client
        .get(app.url("/oauth/userinfo"))
        .bearer_auth(again.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the replay revoked the family");
    let dead = rp
        .exchange_refresh_token(again.refresh_token().unwrap())
        .unwrap()
        .request_async(&http)
        .await;
    assert!(dead.is_err());

    // The consent is remembered: the next request goes straight back with a code.
    let path = authorize_path(&client, "http://127.0.0.1:5000/callback", &[]);
    let path = without(&path, "scope", Some("openid profile"));
    code_for(&app, &cookie, &path).await;
    // Listed on the account page, and revocable there.
    let html = app
        .get_with("/account", &cookie)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(&format!("data-client-id=\"{}\"", client.id)),
        "{html}"
    );
    let res = post_form(
        &app,
        &format!("/account/apps/{}/revoke", client.id),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(res.status(), 303);
    let html = app
        .get_with("/account", &cookie)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("apps-none"));
    let res = get(&app, &path, Some(&cookie)).await;
    assert_eq!(res.status(), 200, "asked again after the revocation");
}

#[tokio::test]
async fn discovery_and_jwks_describe_the_provider() {
    let app = spawn_app().await;
    let doc: Value = get(&app, "/.well-known/openid-configuration", None)
        .await
        .json()
        .await
        .unwrap();
    let base = app.url("");
    assert_eq!(doc["issuer"], app.tokens.config().issuer.as_str());
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{base}/oauth/authorize")
    );
    assert_eq!(doc["token_endpoint"], format!("{base}/v1/token"));
    assert_eq!(doc["userinfo_endpoint"], format!("{base}/oauth/userinfo"));
    assert_eq!(doc["end_session_endpoint"], format!("{base}/oauth/logout"));
    assert_eq!(doc["jwks_uri"], format!("{base}/.well-known/jwks.json"));
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        doc["scopes_supported"],
        serde_json::json!(["openid", "profile", "email", "offline_access"])
    );
    assert_eq!(
        doc["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token", "password"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    let oauth: Value = get(&app, "/.well-known/oauth-authorization-server", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(oauth, doc);
    let jwks: Value = get(&app, "/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    let algs: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap())
        .collect();
    assert!(
        algs.contains(&"EdDSA") && algs.contains(&"RS256"),
        "{algs:?}"
    );
}

#[tokio::test]
async fn requests_that_cannot_go_back_get_a_page_and_the_rest_go_back_with_an_error() {
    let app = spawn_app().await;
    let client = add_client(&app, &["https://photos.example.com/cb"], false, None).await;
    let cb = "https://photos.example.com/cb";
    let good = authorize_path(&client, cb, &[]);

    // Never a redirect to an unknown client's or an unregistered URI.
    for path in [
        without(&good, "client_id", Some("no-such-client")),
        without(&good, "client_id", None),
        without(&good, "redirect_uri", Some("https://evil.example.com/cb")),
        without(
            &good,
            "redirect_uri",
            Some("https://photos.example.com/cb/../x"),
        ),
        without(&good, "redirect_uri", None),
    ] {
        let res = get(&app, &path, None).await;
        assert_eq!(res.status(), 400, "{path}");
        assert!(res.headers().get("location").is_none(), "{path}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }

    // Everything else goes back with error, error_description, state and iss.
    let iss = app.tokens.config().issuer.clone();
    for (path, error) in [
        (without(&good, "code_challenge", None), "invalid_request"),
        (
            without(&good, "code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (
            without(&good, "code_challenge_method", None),
            "invalid_request",
        ),
        (
            without(&good, "code_challenge", Some("short")),
            "invalid_request",
        ),
        (
            without(&good, "response_type", Some("token")),
            "unsupported_response_type",
        ),
        (
            without(&good, "scope", Some("admin phone")),
            "invalid_scope",
        ),
        (format!("{good}&prompt=none%20login"), "invalid_request"),
        (format!("{good}&max_age=soon"), "invalid_request"),
        (format!("{good}&request=eyJ"), "request_not_supported"),
        (format!("{good}&prompt=none"), "login_required"),
        // Faults of other parameters than the client's and the redirect URI's go back too.
        (format!("{good}&state=again"), "invalid_request"),
        (format!("{good}&nonce=a%00b"), "invalid_request"),
        (
            format!("{good}&nonce={}", "n".repeat(3000)),
            "invalid_request",
        ),
    ] {
        let res = get(&app, &path, None).await;
        assert_eq!(res.status(), 302, "{path}");
        let to = location(&res);
        assert!(to.starts_with(cb), "{to}");
        let q = query(&to);
        assert_eq!(q["error"], error, "{path}");
        assert!(!q["error_description"].is_empty());
        assert_eq!(q["state"], "st-1");
        assert_eq!(q["iss"], iss);
        assert!(!q.contains_key("code"));
    }

    // Signed in, but no consent yet: prompt=none cannot ask.
    let cookie = app.signed_in("ada", PW).await;
    let res = get(&app, &format!("{good}&prompt=none"), Some(&cookie)).await;
    assert_eq!(query(&location(&res))["error"], "consent_required");
    // Deny on the consent page.
    let res = consent(&app, &cookie, &good, "deny").await;
    assert_eq!(res.status(), 302);
    let q = query(&location(&res));
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-1");
    // A nonsense answer is a page, not a redirect.
    let res = consent(&app, &cookie, &good, "maybe").await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn codes_are_single_use_short_lived_and_bound() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let client = add_client(&app, &[cb], true, None).await;
    let other = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    let path = authorize_path(&client, cb, &[("nonce", "n-0S6_WzA2Mj")]);
    let token = |code: String, verifier: &'static str, redirect: &'static str, id: String| async move {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code),
            ("redirect_uri".to_owned(), redirect.to_owned()),
            ("client_id".to_owned(), id),
            ("code_verifier".to_owned(), verifier.to_owned()),
        ]
    };
    let send = |form: Vec<(String, String)>| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/v1/token"))
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };

    // Each binding, wrong: refused, and the code is used up by the attempt.
    for (verifier, redirect, id) in [
        ("x".repeat(43).leak() as &'static str, cb, client.id.clone()),
        (
            VERIFIER,
            "https://photos.example.com/other",
            client.id.clone(),
        ),
        (VERIFIER, cb, other.id.clone()),
    ] {
        let code = code_for(&app, &cookie, &path).await;
        let (status, error) =
            error_of(send(token(code.clone(), verifier, redirect, id).await).await).await;
        assert_eq!((status, error.as_str()), (400, "invalid_grant"));
        let (_, error) =
            error_of(send(token(code, VERIFIER, cb, client.id.clone()).await).await).await;
        assert_eq!(error, "invalid_grant", "used up by the failed attempt");
    }
    // No verifier at all.
    let code = code_for(&app, &cookie, &path).await;
    let res = exchange(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", cb),
            ("client_id", &client.id),
        ],
    )
    .await;
    assert_eq!(error_of(res).await.1, "invalid_request");

    // Expired after 60 seconds.
    let code = code_for(&app, &cookie, &path).await;
    app.clock.advance(time::Duration::seconds(61));
    let (_, error) = error_of(send(token(code, VERIFIER, cb, client.id.clone()).await).await).await;
    assert_eq!(error, "invalid_grant");

    // The right exchange: the nonce is echoed; without offline_access there is no refresh token.
    let code = code_for(&app, &cookie, &path).await;
    let res = send(token(code.clone(), VERIFIER, cb, client.id.clone()).await).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid");
    assert!(body.get("refresh_token").is_none());
    let id = jwt_claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert!(id.get("preferred_username").is_none(), "no profile scope");
    assert!(id.get("email").is_none(), "no email scope");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let res = with_bearer(&app, "/oauth/userinfo", &access).await;
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(
        info.as_object().unwrap().len(),
        1,
        "openid alone gives sub: {info}"
    );
    // A replay revokes the access token it issued.
    let (_, error) = error_of(send(token(code, VERIFIER, cb, client.id.clone()).await).await).await;
    assert_eq!(error, "invalid_grant");
    let res = with_bearer(&app, "/v1/me", &access).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn refresh_tokens_are_bound_to_their_client_and_confidential_clients_authenticate() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let public = add_client(&app, &[cb], true, None).await;
    let confidential = add_client(&app, &[cb], true, Some("s3cret-of-the-server")).await;
    let cookie = app.signed_in("ada", PW).await;
    let offline = |c: &ClientRecord| {
        without(
            &authorize_path(c, cb, &[]),
            "scope",
            Some("openid offline_access"),
        )
    };

    // client_secret_basic.
    let code = code_for(&app, &cookie, &offline(&confidential)).await;
    let res = app
        .client
        .post(app.url("/v1/token"))
        .basic_auth(&confidential.id, Some("s3cret-of-the-server"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", cb),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let confidential_refresh = body["refresh_token"].as_str().unwrap().to_owned();

    // client_secret_post, a wrong secret, no secret.
    for (secret, status) in [
        (Some("s3cret-of-the-server"), 200),
        (Some("wrong"), 401),
        (None, 401),
    ] {
        let code = code_for(&app, &cookie, &offline(&confidential)).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", cb),
            ("code_verifier", VERIFIER),
            ("client_id", confidential.id.as_str()),
        ];
        if let Some(s) = secret {
            form.push(("client_secret", s));
        }
        let res = exchange(&app, &form).await;
        assert_eq!(res.status().as_u16(), status, "{secret:?}");
        if status == 401 {
            assert_eq!(res.headers()["www-authenticate"], "Basic realm=\"keyward\"");
            assert_eq!(error_of(res).await.1, "invalid_client");
        }
    }

    // A refresh token presented by another client than its own: refused, and its family is
    // revoked (the token has leaked).
    let code = code_for(&app, &cookie, &offline(&public)).await;
    let body: Value = redeem(&app, &code, cb, &public.id)
        .await
        .json()
        .await
        .unwrap();
    let public_refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let res = refresh_as(&app, &confidential_refresh, Some(&public.id)).await;
    assert_eq!(
        error_of(res).await.1,
        "invalid_grant",
        "another client's refresh token"
    );
    let res = refresh_as(&app, &public_refresh, None).await;
    assert_eq!(
        error_of(res).await.1,
        "invalid_grant",
        "the built-in client is another client too"
    );
    let res = refresh_as(&app, &public_refresh, Some(&public.id)).await;
    assert_eq!(
        error_of(res).await.1,
        "invalid_grant",
        "revoked by the misuse"
    );
    // A confidential client refreshes only when it authenticates.
    let res = refresh_as(&app, &confidential_refresh, Some(&confidential.id)).await;
    assert_eq!(error_of(res).await.1, "invalid_client");

    // The password grant belongs to the built-in client alone.
    let res = exchange(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", PW),
            ("client_id", &public.id),
        ],
    )
    .await;
    assert_eq!(error_of(res).await, (400, "unauthorized_client".to_owned()));
    let res = exchange(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", PW),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn prompt_login_and_max_age_send_a_signed_in_user_to_sign_in_again() {
    let app = spawn_app().await;
    let cb = "com.example.photos:/oauth/cb";
    let client = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    // A private-use scheme redirect (RFC 8252 §7.1).
    let code = code_for(&app, &cookie, &authorize_path(&client, cb, &[])).await;
    assert!(!code.is_empty());
    app.clock.advance(time::Duration::seconds(120));
    for extra in [("prompt", "login"), ("max_age", "60"), ("max_age", "0")] {
        let path = authorize_path(&client, cb, &[extra, ("login_hint", "ada")]);
        let res = get(&app, &path, Some(&cookie)).await;
        assert_eq!(res.status(), 303, "{extra:?}");
        let to = location(&res);
        let q = query(&format!("http://x{to}"));
        assert_eq!(q["reauth"], "1");
        let next = q["next"].clone();
        assert!(
            !next.contains("prompt=login") && !next.contains("max_age"),
            "{next}"
        );
        let page = get(&app, &to, Some(&cookie)).await.text().await.unwrap();
        assert!(
            page.contains("value=\"ada\""),
            "login_hint fills the username"
        );
        assert!(page.contains("Sign in again to continue."));
        // The old session does not satisfy the continuation…
        assert_eq!(get(&app, &next, Some(&cookie)).await.status(), 303);
        // …a new sign-in does.
        let res = post_form(
            &app,
            "/v1/sessions",
            None,
            &[("username", "ada"), ("password", PW), ("next", &next)],
        )
        .await;
        let fresh = cookie_pair(res.headers(), "keyward").unwrap();
        let res = get(&app, &next, Some(&fresh)).await;
        assert_eq!(res.status(), 302, "{extra:?}");
        assert!(location(&res).starts_with("com.example.photos:/oauth/cb?code="));
        app.clock.advance(time::Duration::seconds(120));
    }
}

#[tokio::test]
async fn rp_initiated_logout_confirms_then_ends_the_session() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let client = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    let code = code_for(&app, &cookie, &authorize_path(&client, cb, &[])).await;
    let body: Value = redeem(&app, &code, cb, &client.id)
        .await
        .json()
        .await
        .unwrap();
    let id_token = body["id_token"].as_str().unwrap().to_owned();
    let bye = "https://photos.example.com/bye";

    // An unregistered post-logout URI, one without a client, a forged hint: pages, no redirect.
    for q in [
        format!(
            "client_id={}&post_logout_redirect_uri=https://evil.example.com/",
            client.id
        ),
        format!("post_logout_redirect_uri={bye}"),
        format!(
            "id_token_hint={}AAAAAAAAAAAAAAAA&post_logout_redirect_uri={bye}",
            &id_token[..id_token.len() - 16]
        ),
        format!("id_token_hint={id_token}&client_id=someone-else"),
    ] {
        let res = get(&app, &format!("/oauth/logout?{q}"), Some(&cookie)).await;
        assert_eq!(res.status(), 400, "{q}");
        assert!(res.headers().get("location").is_none());
    }
    assert_eq!(
        app.get_with("/v1/me", &cookie).await.status(),
        200,
        "nothing ended"
    );

    let res = get(
        &app,
        &format!("/oauth/logout?id_token_hint={id_token}&post_logout_redirect_uri={bye}&state=s-9"),
        Some(&cookie),
    )
    .await;
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("Sign out?") && html.contains("Photo Printer asks to sign you out"));
    assert_eq!(
        app.get_with("/v1/me", &cookie).await.status(),
        200,
        "a GET ends nothing"
    );
    let res = post_form(
        &app,
        "/oauth/logout",
        Some(&cookie),
        &[
            ("client_id", &client.id),
            ("post_logout_redirect_uri", bye),
            ("state", "s-9"),
        ],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), format!("{bye}?state=s-9"));
    assert!(res
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("keyward=;")));
    assert_eq!(app.get_with("/v1/me", &cookie).await.status(), 401);
}

#[tokio::test]
async fn bad_input_on_the_new_routes_is_a_4xx() {
    let app = spawn_app().await;
    let client = add_client(&app, &["https://photos.example.com/cb"], false, None).await;
    let long = "a".repeat(5000);
    for path in [
        "/oauth/authorize".to_owned(),
        "/oauth/authorize?%ff%fe=1".to_owned(),
        format!("/oauth/authorize?client_id={}&state={long}", client.id),
        "/oauth/logout?id_token_hint=not.a.jwt".to_owned(),
        "/oauth/logout?state=1&state=2".to_owned(),
    ] {
        let status = get(&app, &path, None).await.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    for (path, body) in [
        ("/oauth/authorize", "decision=allow"),
        ("/oauth/authorize", "client_id=x"),
        ("/oauth/consent", "decision=allow"),
        (
            "/oauth/consent",
            "decision=allow&consent_token=x&client_id=x",
        ),
        ("/oauth/logout", "client_id=nope"),
    ] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_client_error(),
            "{path} {body}: {}",
            res.status()
        );
    }
    for form in [
        vec![("grant_type", "authorization_code")],
        vec![
            ("grant_type", "authorization_code"),
            ("code", "garbage"),
            ("client_id", &client.id),
        ],
        vec![("grant_type", "authorization_code"), ("code", "garbage")],
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", "garbage"),
            ("client_id", "nope"),
        ],
    ] {
        let res = exchange(&app, &form).await;
        assert!(res.status().is_client_error(), "{form:?}: {}", res.status());
    }
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("authorization", "Basic !!!")
        .form(&[("grant_type", "authorization_code")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = get(&app, "/oauth/userinfo", None).await;
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    let res = with_bearer(&app, "/oauth/userinfo", "nope").await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn the_second_factor_applies_and_shows_in_amr() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let client = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    let (secret, _codes) = crate::mfa::enrol(&app, &cookie).await;
    let path = authorize_path(&client, cb, &[]);
    let res = get(&app, &path, None).await;
    let next = query(&format!("http://x{}", location(&res)))["next"].clone();
    // The password alone leads to the code page, which keeps the continuation.
    let res = post_form(
        &app,
        "/v1/sessions",
        None,
        &[("username", "ada"), ("password", PW), ("next", &next)],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("set-cookie").is_none(),
        "no session before the code"
    );
    let html = res.text().await.unwrap();
    let token = html
        .split("name=\"mfa_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let now = keyward_core::Clock::now(&*app.clock).unix_timestamp();
    let code = keyward_testkit::oathtool(&secret, now + 30);
    let res = post_form(
        &app,
        "/v1/sessions/mfa",
        None,
        &[("mfa_token", &token), ("code", &code), ("next", &next)],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), next);
    let fresh = cookie_pair(res.headers(), "keyward").unwrap();
    let code = code_for(&app, &fresh, &next).await;
    let body: Value = redeem(&app, &code, cb, &client.id)
        .await
        .json()
        .await
        .unwrap();
    let id = jwt_claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["amr"], serde_json::json!(["pwd", "otp"]));
    // And the password grant refuses the account, pointing to the code flow.
    let res = exchange(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", PW),
        ],
    )
    .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("authorization code flow"));
}

/// The flow driven by a relying party of another language: Python's Authlib (which
/// `scripts/test` installs into `target/test-tools/authlib`) checks `state`, sends the PKCE
/// verifier, verifies the ID token from the JWKS (signature, iss, aud, exp, iat, nonce,
/// at_hash), reads userinfo and refreshes.
#[tokio::test]
async fn a_python_authlib_client_runs_the_flow() {
    let app = spawn_app().await;
    assert_eq!(app.register("grace", PW).await.status(), 201);
    let client = add_client(&app, &["http://127.0.0.1/callback"], true, None).await;
    let tools = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/test-tools/authlib"
    );
    assert!(
        std::path::Path::new(tools).join("authlib").exists(),
        "Authlib is needed in {tools}: scripts/test installs it"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/authlib_rp.py");
    let issuer = app.tokens.config().issuer.clone();
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([issuer.as_str(), client.id.as_str(), "grace", PW])
        .env("PYTHONPATH", tools)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["preferred_username"], "grace");
    assert_eq!(seen["userinfo_username"], "grace");
    assert_eq!(seen["amr"], serde_json::json!(["pwd"]));
    assert_eq!(seen["scope"], "openid profile offline_access");
    assert_eq!(seen["refreshed_scope"], "openid profile offline_access");
}

#[tokio::test]
async fn deleting_a_client_revokes_what_it_holds() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let client = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    let path = without(
        &authorize_path(&client, cb, &[]),
        "scope",
        Some("openid offline_access"),
    );
    let code = code_for(&app, &cookie, &path).await;
    let body: Value = redeem(&app, &code, cb, &client.id)
        .await
        .json()
        .await
        .unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let pending = code_for(&app, &cookie, &path).await;
    let now = keyward_core::Clock::now(&*app.clock);
    assert!(keyward_core::oauth::delete_client(
        app.tokens.clients(),
        &**app.tokens.grants(),
        &app.token_store,
        &client.id,
        now
    )
    .await
    .unwrap());
    let res = with_bearer(&app, "/v1/me", &access).await;
    assert_eq!(res.status(), 401, "its access tokens are denied");
    let res = refresh_as(&app, &refresh, None).await;
    assert!(res.status().is_client_error());
    let res = redeem(&app, &pending, cb, &client.id).await;
    assert_eq!(
        error_of(res).await.1,
        "invalid_client",
        "the client is gone"
    );
    assert!(!keyward_core::oauth::delete_client(
        app.tokens.clients(),
        &**app.tokens.grants(),
        &app.token_store,
        &client.id,
        now
    )
    .await
    .unwrap());
}

#[tokio::test]
async fn a_third_party_token_reaches_userinfo_within_its_scopes_and_not_the_account() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let third = add_client(&app, &[cb], false, None).await;
    let own = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    // Sent as a form post, and asking for scopes keyward does not offer (ignored).
    let path = without(
        &authorize_path(&third, cb, &[]),
        "scope",
        Some("openid phone address"),
    );
    let res = consent(&app, &cookie, &path, "allow").await;
    let code = query(&location(&res))["code"].clone();
    let body: Value = redeem(&app, &code, cb, &third.id)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["scope"], "openid");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&access);
    assert!(
        claims.get("preferred_username").is_none(),
        "no profile scope: {claims}"
    );
    assert_eq!(
        with_bearer(&app, "/oauth/userinfo", &access).await.status(),
        200
    );
    for path in ["/v1/me", "/v1/verify"] {
        let res = with_bearer(&app, path, &access).await;
        assert_eq!(res.status(), 403, "{path}");
        assert!(res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope"));
    }
    // A first-party client's token acts for the user, like the built-in client's.
    let form: Vec<(String, String)> = url::form_urlencoded::parse(
        authorize_path(&own, cb, &[])
            .split_once('?')
            .unwrap()
            .1
            .as_bytes(),
    )
    .into_owned()
    .collect();
    let res = app
        .client
        .post(app.url("/oauth/authorize"))
        .header("cookie", &cookie)
        .header("origin", "https://photos.example.com")
        .header("sec-fetch-site", "cross-site")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302, "an authorization request by POST");
    let code = query(&location(&res))["code"].clone();
    let body: Value = redeem(&app, &code, cb, &own.id).await.json().await.unwrap();
    let own_access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(with_bearer(&app, "/v1/me", &own_access).await.status(), 200);
    // Userinfo wants openid.
    let path = without(&authorize_path(&own, cb, &[]), "scope", Some("profile"));
    let code = code_for(&app, &cookie, &path).await;
    let body: Value = redeem(&app, &code, cb, &own.id).await.json().await.unwrap();
    let res = with_bearer(
        &app,
        "/oauth/userinfo",
        body["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn a_consent_answer_must_come_from_the_page_shown_to_this_session() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let client = add_client(&app, &[cb], false, None).await;
    let ada = app.signed_in("ada", PW).await;
    let mallory = app.signed_in("mallory", PW).await;
    let path = authorize_path(&client, cb, &[]);
    let page = get(&app, &path, Some(&mallory)).await.text().await.unwrap();
    let mallory_token = consent_token(&page);
    // Another session's token, a forged one, or one for other scopes: nothing is granted.
    for (cookie, token, p) in [
        (&ada, mallory_token.as_str(), path.clone()),
        (&ada, "forged", path.clone()),
        (
            &mallory,
            mallory_token.as_str(),
            without(&path, "scope", Some("openid email")),
        ),
    ] {
        let res = answer(&app, cookie, &p, "allow", token).await;
        assert_eq!(res.status(), 400);
        assert!(res.headers().get("location").is_none());
    }
    let res = get(&app, &format!("{path}&prompt=none"), Some(&ada)).await;
    assert_eq!(
        query(&location(&res))["error"],
        "consent_required",
        "ada consented to nothing"
    );
    // From another site, the answer is refused outright.
    let res = app
        .client
        .post(app.url("/oauth/consent"))
        .header("cookie", &mallory)
        .header("sec-fetch-site", "cross-site")
        .form(&[
            ("decision", "allow"),
            ("consent_token", mallory_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn the_token_endpoint_speaks_to_single_page_apps_and_keeps_old_callers_working() {
    let app = spawn_app().await;
    let cb = "https://photos.example.com/cb";
    let client = add_client(&app, &[cb], true, None).await;
    let cookie = app.signed_in("ada", PW).await;
    // CORS without credentials, for an app on its own origin.
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/token"))
        .header("origin", "https://spa.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(res
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    // A request lacking redirect_uri or code_verifier is refused without using the code up.
    let code = code_for(&app, &cookie, &authorize_path(&client, cb, &[])).await;
    for missing in ["redirect_uri", "code_verifier"] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", client.id.as_str()),
            ("redirect_uri", cb),
            ("code_verifier", VERIFIER),
        ];
        form.retain(|(k, _)| *k != missing);
        assert_eq!(
            error_of(exchange(&app, &form).await).await,
            (400, "invalid_request".to_owned())
        );
    }
    // Basic with an empty password is a public client's own id.
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("origin", "https://spa.example.com")
        .basic_auth(&client.id, Some(""))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", cb),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    // The password and refresh grants still ignore a client_id that names no client.
    let res = exchange(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "ada"),
            ("password", PW),
            ("client_id", "my-old-app"),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let res = refresh_as(
        &app,
        body["refresh_token"].as_str().unwrap(),
        Some("my-old-app"),
    )
    .await;
    assert_eq!(res.status(), 200);
}
