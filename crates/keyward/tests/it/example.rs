//! The example resource service (examples/resource-service) against a real keyward: it
//! verifies access tokens through keyward's JWKS endpoint only, as a third party would, and
//! picks up a rotated key by refetching the JWKS on an unknown `kid`.
//!
//! Its binary is built outside this test (`cargo build -p resource-service`, which
//! scripts/test runs first): cargo builds the binaries of the package under test only.

use crate::process::{password_grant, Server};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keyward_testkit::client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

const KEYWARD: &str = env!("CARGO_BIN_EXE_keyward");
const PW: &str = "correct-horse-battery";
const INVALID: &str = r#"Bearer error="invalid_token""#;

/// `resource-service` beside the `keyward` binary (the same target directory and profile).
fn resource_service_bin() -> PathBuf {
    let path = Path::new(KEYWARD)
        .with_file_name(format!("resource-service{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p resource-service` \
         (scripts/test does)",
        path.display()
    );
    path
}

/// A child process whose stderr lines are collected as they come.
struct Proc {
    _child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
    /// Lines before this index were already looked at by `next_line_with`.
    cursor: usize,
}

impl Proc {
    /// Spawn `cmd` with stderr captured; wait until a stderr line gives what `ready` extracts.
    async fn spawn(mut cmd: Command, ready: impl Fn(&str) -> Option<String>) -> (Self, String) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let n = {
                    let mut v = sink.lock().unwrap();
                    v.push(line);
                    v.len()
                };
                let _ = count_tx.send(n);
            }
        });
        let mut proc = Self {
            _child: child,
            lines,
            count,
            cursor: 0,
        };
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(found) = proc.lines.lock().unwrap().iter().find_map(|l| ready(l)) {
                    return Some(found);
                }
                // An error: stderr closed, the process is gone.
                if proc.count.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .expect("did not get ready within 30 s");
        let found =
            found.unwrap_or_else(|| panic!("exited before getting ready:\n{}", proc.text()));
        proc.cursor = proc.lines.lock().unwrap().len();
        (proc, found)
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The lines since the last call, up to and including the first containing `needle`
    /// (waiting up to 10 s for it).
    async fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.count.borrow_and_update();
            {
                let lines = self.lines.lock().unwrap();
                let fresh = lines.get(self.cursor..).unwrap_or_default();
                if let Some(i) = fresh.iter().position(|l| l.contains(needle)) {
                    let out = fresh[..=i].to_vec();
                    self.cursor += i + 1;
                    return out;
                }
            }
            if tokio::time::timeout_at(deadline, self.count.changed())
                .await
                .is_err()
            {
                panic!("{needle:?} never appeared:\n{}", self.text());
            }
        }
    }
}

/// Start the resource service on a free port, trusting the keyward at `keyward_base`.
async fn start_resource_service(keyward_base: &str) -> (Proc, String) {
    let mut cmd = Command::new(resource_service_bin());
    // Its debug lines say why a token was refused and whether the JWKS was fetched.
    cmd.env("RUST_LOG", "resource_service=debug").args([
        "--bind",
        "127.0.0.1:0",
        "--jwks-url",
        &format!("{keyward_base}/.well-known/jwks.json"),
        "--issuer",
        keyward_base,
        "--audience",
        "keyward",
    ]);
    Proc::spawn(cmd, |l| {
        l.strip_prefix("resource-service listening on ")
            .map(str::to_owned)
    })
    .await
}

/// Restart keyward on the address it had (the resource service keeps its JWKS URL).
async fn restart_keyward(dir: &Path, addr: &str) -> Proc {
    let mut cmd = Command::new(KEYWARD);
    cmd.args(["serve", "--bind", addr, "--log-format", "json"])
        .current_dir(dir)
        .env_remove("RUST_LOG");
    let (proc, bound) = Proc::spawn(cmd, |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["message"] == "keyward listening")
            .then(|| v["addr"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert_eq!(bound, addr);
    proc
}

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// `(status, WWW-Authenticate, body)` of `GET /hello` with an optional bearer token.
async fn hello(base: &str, token: Option<&str>) -> (u16, String, Value) {
    let mut req = client().get(format!("{base}/hello"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

#[tokio::test]
async fn the_example_service_verifies_tokens_through_the_jwks_only() {
    resource_service_bin(); // fail early, with the fix, when it is not built
    let dir = tempfile::tempdir().unwrap();
    let kw = Server::start(dir.path(), &[]).await;
    let kw_base = kw.base.clone();
    let kw_addr = kw_base.trim_start_matches("http://").to_owned();
    let (mut svc, base) = start_resource_service(&kw_base).await;

    let res = client()
        .post(kw.url("/v1/users"))
        .json(&json!({"username": "alice", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let pair = password_grant(&kw_base, "alice").await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
    let sub = segment(&access, 1)["sub"].as_str().unwrap().to_owned();

    // A valid access token.
    let (status, _, body) = hello(&base, Some(&access)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"hello": "alice", "sub": sub}));

    // No token: a bare challenge (RFC 6750 §3.1: no error code without credentials).
    let (status, challenge, _) = hello(&base, None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(!challenge.contains("error="), "{challenge}");

    // A character flipped in the payload breaks the signature.
    let mut parts: Vec<String> = access.split('.').map(str::to_owned).collect();
    let payload = &mut parts[1];
    let mid = payload.len() / 2;
    let flipped = if &payload[mid..=mid] == "A" { "B" } else { "A" };
    payload.replace_range(mid..=mid, flipped);
    let tampered = parts.join(".");
    assert_ne!(tampered, access);
    let (status, challenge, _) = hello(&base, Some(&tampered)).await;
    assert_eq!((status, challenge.as_str()), (401, INVALID));

    // keyward's refresh token is no access token.
    let (status, challenge, _) = hello(&base, Some(&refresh)).await;
    assert_eq!((status, challenge.as_str()), (401, INVALID));

    // A header swapped for one with `alg: none` (and no signature) is refused.
    let mut header = segment(&access, 0);
    header["alg"] = json!("none");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        access.split('.').nth(1).unwrap()
    );
    let (status, challenge, _) = hello(&base, Some(&none)).await;
    assert_eq!((status, challenge.as_str()), (401, INVALID));

    // Stateless verification: a token revoked at keyward stays valid here until it expires
    // (documented in the example); keyward itself refuses it at once.
    let res = client()
        .post(kw.url("/v1/token/revoke"))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me = client()
        .get(kw.url("/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "keyward denies the revoked token");
    assert_eq!(hello(&base, Some(&access)).await.0, 200);

    // Rotate keyward's key and restart it where it was: tokens now carry a kid the service
    // has never seen, so it refetches the JWKS once and accepts them.
    let old_kid = segment(&access, 0)["kid"].as_str().unwrap().to_owned();
    kw.stop().await;
    let out = Command::new(KEYWARD)
        .args(["keys", "rotate", "--json"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_kid = serde_json::from_slice::<Value>(&out.stdout).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, old_kid);
    let _kw = restart_keyward(dir.path(), &kw_addr).await;
    let rotated = password_grant(&kw_base, "alice").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(segment(&rotated, 0)["kid"], json!(new_kid));
    svc.cursor = svc.lines.lock().unwrap().len();
    let (status, _, body) = hello(&base, Some(&rotated)).await;
    assert_eq!(status, 200, "{body}\n{}", svc.text());
    assert_eq!(body["hello"], "alice");
    svc.lines_until("JWKS refreshed").await;
    // The old key is still published: tokens signed before the rotation stay valid.
    assert_eq!(hello(&base, Some(&access)).await.0, 200);

    // A made-up kid right after: refused without another fetch (at most one per 10 s).
    let mut header = segment(&rotated, 0);
    header["kid"] = json!("made-up");
    let mut parts: Vec<&str> = rotated.split('.').collect();
    let forged_header = URL_SAFE_NO_PAD.encode(header.to_string());
    parts[0] = &forged_header;
    let (status, challenge, _) = hello(&base, Some(&parts.join("."))).await;
    assert_eq!((status, challenge.as_str()), (401, INVALID));
    let lines = svc.lines_until("token refused").await;
    assert!(
        lines.iter().any(|l| l.contains("not fetching")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("JWKS refreshed")),
        "{lines:#?}"
    );
}
