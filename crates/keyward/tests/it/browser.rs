//! A real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) registers, signs
//! in through the page, keeps the cookie, sees its sessions on /account, revokes another
//! session and signs out. A screenshot of /account is written to target/screenshots/.

use crate::process::Server;
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use keyward_testkit::{client, cookie_pair};
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PW: &str = "correct-horse-battery";

/// Start chromedriver on a free port and wait until it says it is ready.
async fn chromedriver() -> (Child, String) {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "Chromium and ChromeDriver are needed: apt-get install chromium chromium-driver (scripts/test installs them)"
    );
    let port = keyward_testkit::ports::free_port();
    let mut child = Command::new(CHROMEDRIVER)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("started successfully") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "chromedriver did not start");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://127.0.0.1:{port}"))
}

fn capabilities(profile: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1200,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    caps.as_object().unwrap().clone()
}

/// A headless Chromium session through a private chromedriver, with a profile of its own
/// (the driver and the profile go away with the returned handles).
async fn browser() -> (fantoccini::Client, Child, tempfile::TempDir) {
    let (driver, driver_url) = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(capabilities(profile.path()));
    let b = builder
        .connect(&driver_url)
        .await
        .expect("a WebDriver session");
    (b, driver, profile)
}

/// Wait (up to 20 s) until the page has an element matching `css`.
async fn wait_for(b: fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_sees_its_sessions_and_signs_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (b, _driver, _profile) = browser().await;
    let wait = |css: &'static str| wait_for(b.clone(), css);

    // Register through the page.
    b.goto(&server.url("/register")).await.unwrap();
    wait("form[action='/v1/users']").await;
    b.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("browser.user")
        .await
        .unwrap();
    b.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PW)
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait("p.alert.ok").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/");

    // Sign in through the page.
    b.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("browser.user")
        .await
        .unwrap();
    b.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PW)
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait("table tbody tr").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/account");

    // The browser keeps an HttpOnly cookie.
    let cookies = b.get_all_cookies().await.unwrap();
    let c = cookies
        .iter()
        .find(|c| c.name() == "keyward")
        .expect("the session cookie");
    assert_eq!(c.http_only(), Some(true));
    let browser_cookie = format!("keyward={}", c.value());

    // A second session, from an API client, shows up with a revoke button.
    let res = client()
        .post(server.url("/v1/sessions"))
        .header("user-agent", "api-client/1.0")
        .json(&json!({"username": "browser.user", "password": PW}))
        .send()
        .await
        .unwrap();
    let api_cookie = cookie_pair(res.headers(), "keyward").unwrap();
    b.goto(&server.url("/account")).await.unwrap();
    wait("table tbody tr").await;
    let rows = b.find_all(Locator::Css("table tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 2);
    let page = b.source().await.unwrap();
    assert!(page.contains("this device"));
    assert!(page.contains("api-client/1.0"));
    assert!(page.contains("Sign out everywhere else"));

    let png = b.screenshot().await.unwrap();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("account.png"), &png).unwrap();

    // Revoke the API session from the page.
    b.find(Locator::Css("form[action$='/revoke'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath("//table/tbody[count(tr)=1]"))
        .await
        .unwrap();
    let status = client()
        .get(server.url("/v1/me"))
        .header("cookie", &api_cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "revoked from the page");

    // Sign out.
    b.find(Locator::Css(
        "div.actions form[action='/account/sign-out'] button",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait("form[action='/v1/sessions']").await;
    assert!(
        b.get_all_cookies()
            .await
            .unwrap()
            .iter()
            .all(|c| c.name() != "keyward"),
        "the cookie is gone"
    );
    let status = client()
        .get(server.url("/v1/me"))
        .header("cookie", &browser_cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "the old cookie is dead");
    b.goto(&server.url("/account")).await.unwrap();
    wait("form[action='/v1/sessions']").await;
    b.close().await.unwrap();
    server.stop().await;
}

/// What a phone's camera reads off the QR code: the screenshot of the drawn code, decoded by
/// an independent QR reader (rqrr).
fn scan(png: &[u8]) -> String {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .unwrap()
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
        img.width() as usize,
        img.height() as usize,
        |x, y| img.get_pixel(x as u32, y as u32).0[0],
    );
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code on the screenshot");
    grids[0].decode().unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_turns_on_two_step_sign_in_by_scanning_the_qr_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (b, _driver, _profile) = browser().await;
    let wait = |css: &'static str| wait_for(b.clone(), css);
    let fill = |css: &'static str, text: String| {
        let b = b.clone();
        async move {
            b.find(Locator::Css(css))
                .await
                .unwrap()
                .send_keys(&text)
                .await
                .unwrap();
        }
    };
    let submit = |css: &'static str| {
        let b = b.clone();
        async move {
            b.find(Locator::Css(css))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    };
    let res = client()
        .post(server.url("/v1/users"))
        .json(&json!({"username": "totp.user", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // Sign in, and set up two-step sign-in from the account page.
    b.goto(&server.url("/")).await.unwrap();
    wait("#username").await;
    fill("#username", "totp.user".into()).await;
    fill("#password", PW.into()).await;
    submit("form[action='/v1/sessions'] button[type=submit]").await;
    wait("form[action='/account/totp']").await;
    fill("#totp_password", PW.into()).await;
    submit("form[action='/account/totp'] button").await;

    // The page draws the QR code itself (an inline SVG: no script, no image request).
    let qr = wait("#totp-qr svg").await;
    let png = qr.screenshot().await.unwrap();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("totp-qr.png"), &png).unwrap();
    let scanned = scan(&png);
    let shown = b
        .find(Locator::Css("#totp-uri"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(scanned, shown);
    assert!(
        scanned.starts_with("otpauth://totp/127.0.0.1:totp.user?"),
        "{scanned}"
    );
    let secret = url::Url::parse(&scanned)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "secret")
        .map(|(_, v)| v.into_owned())
        .unwrap();

    // The app's code turns it on; the recovery codes are shown once.
    let now = keyward_core::Clock::now(&keyward_core::SystemClock).unix_timestamp();
    fill("#code", keyward_testkit::oathtool(&secret, now)).await;
    submit("form[action='/account/totp/confirm'] button").await;
    wait("#recovery-codes li").await;
    let codes = b
        .find_all(Locator::Css("#recovery-codes li"))
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);
    let recovery = codes[0].text().await.unwrap();

    // Signing in again asks for a code after the password. The code of the next step is
    // within the allowed drift and later than the one just used.
    b.goto(&server.url("/account")).await.unwrap();
    wait("#totp-state").await;
    assert!(b.source().await.unwrap().contains("10 recovery codes left"));
    submit("div.actions form[action='/account/sign-out'] button").await;
    wait("#username").await;
    fill("#username", "totp.user".into()).await;
    fill("#password", PW.into()).await;
    submit("form[action='/v1/sessions'] button[type=submit]").await;
    wait("form[action='/v1/sessions/mfa']").await;
    assert!(
        b.get_all_cookies()
            .await
            .unwrap()
            .iter()
            .all(|c| c.name() != "keyward"),
        "no session yet"
    );
    fill("#code", keyward_testkit::oathtool(&secret, now + 30)).await;
    submit("form[action='/v1/sessions/mfa'] button").await;
    wait("#totp-state").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/account");

    // A recovery code signs in once.
    submit("div.actions form[action='/account/sign-out'] button").await;
    wait("#username").await;
    fill("#username", "totp.user".into()).await;
    fill("#password", PW.into()).await;
    submit("form[action='/v1/sessions'] button[type=submit]").await;
    wait("form[action='/v1/sessions/mfa']").await;
    fill("#code", recovery).await;
    submit("form[action='/v1/sessions/mfa'] button").await;
    wait("#totp-state").await;
    assert!(b.source().await.unwrap().contains("9 recovery codes left"));
    b.close().await.unwrap();
}

/// A stand-in for an OAuth client's web app on a loopback port: what arrives at `/cb` and
/// `/bye` is sent to the test.
async fn relying_party() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    use axum::extract::{RawQuery, Request};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let arrive = move |RawQuery(q): RawQuery, req: Request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((req.uri().path().to_owned(), q.unwrap_or_default()));
            axum::response::Html("<p id=\"arrived\">back at the app</p>")
        }
    };
    // Only the app's two redirect targets count (a browser also asks for /favicon.ico).
    let app = axum::Router::new()
        .route("/cb", axum::routing::get(arrive.clone()))
        .route("/bye", axum::routing::get(arrive));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_authorizes_an_app_through_sign_in_and_consent_and_signs_out_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let (port, mut arrived) = relying_party().await;
    let bye = format!("http://127.0.0.1:{port}/bye");
    let out = crate::process::run(
        dir.path(),
        &[
            "clients",
            "add",
            "Photo Printer",
            "--redirect-uri",
            "http://127.0.0.1/cb",
            "--post-logout-redirect-uri",
            &bye,
            "--json",
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();
    let res = client()
        .post(server.url("/v1/users"))
        .json(&json!({"username": "oauth.user", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let (b, _driver, _profile) = browser().await;
    let wait = |css: &'static str| wait_for(b.clone(), css);
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>| {
        let got = rx.try_recv();
        got.unwrap_or_else(|e| panic!("nothing arrived at the app: {e}"))
    };

    // The app sends the browser to authorize; keyward asks it to sign in first.
    let redirect = format!("http://127.0.0.1:{port}/cb");
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let mut url = url::Url::parse(&server.url("/oauth/authorize")).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", "openid profile")
        .append_pair("state", "af0ifjsldkj")
        .append_pair("nonce", "n-0S6")
        .append_pair(
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        )
        .append_pair("code_challenge_method", "S256");
    b.goto(url.as_str()).await.unwrap();
    wait("#username").await;
    b.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("oauth.user")
        .await
        .unwrap();
    b.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(PW)
        .await
        .unwrap();
    b.find(Locator::Css(
        "form[action='/v1/sessions'] button[type=submit]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();

    // The consent page names the app and what it asks for.
    wait("#allow").await;
    let page = b.source().await.unwrap();
    assert!(
        page.contains("Allow Photo Printer to use your account?"),
        "{page}"
    );
    assert!(page.contains("data-scope=\"profile\""));
    b.find(Locator::Css("#allow"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Back at the app, with a code it exchanges with its verifier.
    wait("#arrived").await;
    let (path, query) = next(&mut arrived);
    assert_eq!(path, "/cb");
    let q: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(q["state"], "af0ifjsldkj");
    assert_eq!(q["iss"], server.url(""));
    let res = client()
        .post(server.url("/v1/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &q["code"]),
            ("redirect_uri", &redirect),
            ("client_id", &client_id),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tokens: serde_json::Value = res.json().await.unwrap();
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();

    // The consent is listed on the account page.
    b.goto(&server.url("/account")).await.unwrap();
    wait("#apps").await;
    assert!(b.source().await.unwrap().contains("Photo Printer"));

    // The app asks keyward to sign the user out: a confirmation page, then back to the app.
    let mut url = url::Url::parse(&server.url("/oauth/logout")).unwrap();
    url.query_pairs_mut()
        .append_pair("id_token_hint", &id_token)
        .append_pair("post_logout_redirect_uri", &bye)
        .append_pair("state", "bye-1");
    b.goto(url.as_str()).await.unwrap();
    wait("#sign-out").await;
    assert!(b
        .source()
        .await
        .unwrap()
        .contains("Photo Printer asks to sign you out"));
    b.find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait("#arrived").await;
    let (path, query) = next(&mut arrived);
    assert_eq!((path.as_str(), query.as_str()), ("/bye", "state=bye-1"));
    b.goto(&server.url("/account")).await.unwrap();
    wait("#username").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/", "signed out");
    b.close().await.unwrap();
}
