//! The real `keyward` binary: settings, exit codes, restarts, admin commands, logs.

use keyward_testkit::{client, cookie_pair};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyward");
pub const PW: &str = "correct-horse-battery";

/// A `keyward serve` process with its stderr captured.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    lines_seen: tokio::sync::watch::Receiver<usize>,
}

impl Server {
    /// Start `keyward serve` in `dir` on a free port, with JSON logs, and wait for the line
    /// that says it listens.
    pub async fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[]).await
    }

    /// [`start`](Self::start) with extra environment variables.
    pub async fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let bind: &[&str] = if extra.contains(&"--bind") {
            &[]
        } else {
            &["--bind", "127.0.0.1:0"]
        };
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(bind)
            .args(["--log-format", "json"])
            .args(extra)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start keyward");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel::<String>();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = logs.clone();
        let (count_tx, lines_seen) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "keyward listening" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                }
                let n = {
                    let mut v = sink.lock().unwrap();
                    v.push(line);
                    v.len()
                };
                let _ = count_tx.send(n);
            }
        });
        let addr = tokio::time::timeout(std::time::Duration::from_secs(30), rx).await;
        let addr = match addr {
            Ok(Ok(addr)) => addr,
            // Say why: what it logged (the reader has seen every line once the pipe closed).
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                panic!(
                    "keyward exited ({status:?}) before listening:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            }
            Err(_) => panic!(
                "keyward did not start within 30 s:\n{}",
                logs.lock().unwrap().join("\n")
            ),
        };
        Self {
            child,
            base: format!("http://{addr}"),
            logs,
            lines_seen,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Ask it to stop as an operator would (SIGTERM: finish what is in flight, then exit),
    /// and wait until it has.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let st = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .unwrap();
            assert!(st.success());
        }
        let st = tokio::time::timeout(std::time::Duration::from_secs(15), self.child.wait())
            .await
            .expect("keyward did not stop within 15 s of SIGTERM")
            .unwrap();
        assert!(st.success(), "keyward exited with {st} on SIGTERM");
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Wait (on the reader's signal, up to 10 s) until the logs contain `needle`.
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            self.lines_seen.borrow_and_update();
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            if tokio::time::timeout_at(deadline, self.lines_seen.changed())
                .await
                .is_err()
            {
                panic!("{needle:?} never appeared in the logs");
            }
        }
    }
}

pub(crate) async fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input.as_bytes()).await.unwrap();
        drop(s);
    }
    child.wait_with_output().await.unwrap()
}

#[tokio::test]
async fn serve_help_lists_every_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["serve", "--help"], None).await;
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--bind",
        "--database",
        "--session-store",
        "--session-cache",
        "--public-url",
        "--allowed-origins",
        "--idle-timeout",
        "--absolute-timeout",
        "--access-token-ttl",
        "--refresh-token-ttl",
        "--issuer",
        "--audience",
        "--open-registration",
        "--token-algorithm",
        "--introspection-token",
        "--trusted-proxies",
        "--log-format",
        "--config",
        "--key-rotation-interval",
        "--password-grant",
        "--registration-max-per-address",
        "--token-max-failures-per-address",
        "--smtp-url",
        "--mail-from",
        "KEYWARD_IDLE_TIMEOUT",
    ] {
        assert!(help.contains(flag), "{flag} missing from serve --help");
    }
}

#[tokio::test]
async fn invalid_settings_exit_2_with_a_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad-key.toml"), "idle_timout = \"5m\"\n").unwrap();
    std::fs::write(
        dir.path().join("bad-value.toml"),
        "absolute_timeout = \"forever\"\n",
    )
    .unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve", "--idle-timeout", "abc"],
            vec![],
            "idle-timeout",
        ),
        (
            vec!["serve"],
            vec![("KEYWARD_IDLE_TIMEOUT", "abc")],
            "idle-timeout",
        ),
        (vec!["serve", "--bind", "nonsense"], vec![], "bind"),
        (
            vec!["serve", "--absolute-timeout", "10000y"],
            vec![],
            "absolute-timeout",
        ),
        (
            vec!["serve", "--access-token-ttl", "2000y"],
            vec![],
            "access-token-ttl",
        ),
        (
            vec!["serve", "--open-registration", "maybe"],
            vec![],
            "open-registration",
        ),
        (
            vec!["serve", "--public-url", "not a url"],
            vec![],
            "public-url",
        ),
        (
            vec!["serve", "--token-algorithm", "HS256"],
            vec![],
            "token-algorithm",
        ),
        (vec!["serve", "--log-format", "xml"], vec![], "log-format"),
        (
            vec!["serve", "--trusted-proxies", "10.0.0.0/8,banana"],
            vec![],
            "trusted-proxies",
        ),
        (vec!["serve", "--database", "mysql://x"], vec![], "database"),
        (
            vec!["serve", "--session-store", "etcd://x"],
            vec![],
            "session-store",
        ),
        (
            vec!["serve", "--config", "bad-key.toml"],
            vec![],
            "idle_timout",
        ),
        (
            vec!["serve", "--config", "bad-value.toml"],
            vec![],
            "absolute-timeout",
        ),
        (vec!["serve", "--config", "missing.toml"], vec![], "config"),
        (
            vec!["serve", "--key-rotation-interval", "10m"],
            vec![],
            "key-rotation-interval",
        ),
        (
            vec!["serve", "--password-grant", "maybe"],
            vec![],
            "password-grant",
        ),
        (
            vec!["serve"],
            vec![("KEYWARD_REGISTRATION_MAX_PER_ADDRESS", "0")],
            "registration-max-per-address",
        ),
        (
            vec!["serve", "--token-max-failures-per-address", "many"],
            vec![],
            "token-max-failures-per-address",
        ),
        (
            vec![
                "serve",
                "--database",
                "sqlite:///nonexistent-dir/x/keyward.db",
            ],
            vec![],
            "database",
        ),
    ];
    for (args, env, setting) in cases {
        let mut cmd = Command::new(BIN);
        cmd.args(&args).current_dir(dir.path()).stdin(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(setting),
            "{args:?} {env:?}: first line {first:?} does not name {setting}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !dir.path().join("keyward.db").exists(),
        "nothing was created"
    );
}

#[tokio::test]
async fn precedence_is_flag_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.toml"), "idle_timeout = \"bogus\"\n").unwrap();
    // The file's bad value is overridden by the env and the flag, so start-up succeeds.
    let out = Command::new(BIN)
        .args(["serve", "--config", "k.toml", "--idle-timeout", "bad"])
        .env("KEYWARD_IDLE_TIMEOUT", "5m")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the flag wins over the env");
    let s = Server::start(dir.path(), &["--config", "k.toml", "--idle-timeout", "5m"]).await;
    assert_eq!(
        client()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.stop().await;
}

pub async fn register_and_login(base: &str, user: &str, pw: &str) -> String {
    let c = client();
    let res = c
        .post(format!("{base}/v1/users"))
        .json(&json!({"username": user, "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    login(base, user, pw).await
}

pub async fn login(base: &str, user: &str, pw: &str) -> String {
    let res = client()
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"username": user, "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    cookie_pair(res.headers(), "keyward").unwrap()
}

/// A password grant on `base`: the token response.
pub async fn password_grant(base: &str, user: &str) -> Value {
    let res = client()
        .post(format!("{base}/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The status of `GET /v1/me` on `base` with a bearer token.
pub async fn bearer(base: &str, access: &str) -> u16 {
    client()
        .get(format!("{base}/v1/me"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// How long a revocation acknowledged by one node may take to hold on the others: one feed
/// delivery (about a millisecond; the documented target is 50 ms), with room for a loaded
/// test machine. The acknowledging node itself holds it at once.
pub const DELIVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Ask `status` until it answers `want`, for at most [`DELIVERY`]: the last answer.
pub async fn settles<F: std::future::Future<Output = u16>>(
    want: u16,
    mut status: impl FnMut() -> F,
) -> u16 {
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        let got = status().await;
        if got == want || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub async fn me(base: &str, cookie: &str) -> u16 {
    client()
        .get(format!("{base}/v1/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_restart_loses_no_user_and_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).await;
    let cookie = register_and_login(&s.base, "rita", PW).await;
    assert_eq!(me(&s.base, &cookie).await, 200);
    s.stop().await;
    assert!(
        dir.path().join("keyward.db").exists(),
        "./keyward.db is the default database"
    );
    let s = Server::start(dir.path(), &[]).await;
    assert_eq!(
        me(&s.base, &cookie).await,
        200,
        "the session survived the restart"
    );
    let again = login(&s.base, "rita", PW).await;
    assert_eq!(me(&s.base, &again).await, 200);
    s.stop().await;
}

#[tokio::test]
async fn admin_commands_change_what_a_running_server_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &["users", "add", "sam", "--password-stdin"],
        Some(&format!("{PW}\n")),
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        dir.path(),
        &["users", "add", "sam", "--password-stdin"],
        Some(&format!("{PW}\n")),
    )
    .await;
    assert!(!out.status.success(), "duplicate user");
    let out = run(
        dir.path(),
        &["users", "add", "weak", "--password-stdin"],
        Some("password\n"),
    )
    .await;
    assert!(!out.status.success(), "weak password");
    let out = run(dir.path(), &["users", "list"], None).await;
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("USERNAME"));
    assert!(table.contains("sam"));
    let out = run(dir.path(), &["users", "list", "--json"], None).await;
    let users: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["username"], "sam");

    let s = Server::start(dir.path(), &["--open-registration", "false"]).await;
    let c1 = login(&s.base, "sam", PW).await;
    let c2 = login(&s.base, "sam", PW).await;
    let out = run(
        dir.path(),
        &["sessions", "list", "--user", "sam", "--json"],
        None,
    )
    .await;
    let sessions: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 2);
    let current: Value = client()
        .get(s.url("/v1/sessions/current"))
        .header("cookie", &c1)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id1 = current["session"]["id"].as_str().unwrap();
    let out = run(dir.path(), &["sessions", "revoke", "--id", id1], None).await;
    assert!(out.status.success());
    assert_eq!(me(&s.base, &c1).await, 401, "revoked by id");
    assert_eq!(me(&s.base, &c2).await, 200);

    let out = run(dir.path(), &["users", "lock", "sam"], None).await;
    assert!(out.status.success());
    assert_eq!(me(&s.base, &c2).await, 401, "locking revokes sessions");
    let res = client()
        .post(s.url("/v1/sessions"))
        .json(&json!({"username": "sam", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a locked user cannot log in");
    assert!(run(dir.path(), &["users", "unlock", "sam"], None)
        .await
        .status
        .success());
    let c3 = login(&s.base, "sam", PW).await;
    let out = run(dir.path(), &["sessions", "revoke", "--user", "sam"], None).await;
    assert!(out.status.success());
    assert_eq!(me(&s.base, &c3).await, 401, "revoked by user");
    let c4 = login(&s.base, "sam", PW).await;
    assert!(run(dir.path(), &["users", "delete", "sam"], None)
        .await
        .status
        .success());
    assert_eq!(me(&s.base, &c4).await, 401, "deleting revokes sessions");
    let out = run(dir.path(), &["users", "delete", "sam"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named 'sam'"));
    s.stop().await;
    assert!(run(dir.path(), &["migrate"], None).await.status.success());
}

#[tokio::test]
async fn logs_have_audit_events_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &[]).await;
    let c = client();
    let secret_pw = "Very-Secret-Passw0rd-4711";
    let new_pw = "Another-Secret-Passw0rd-0815";
    let cookie = register_and_login(&s.base, "quinn", secret_pw).await;
    let res = c
        .post(s.url("/v1/sessions"))
        .json(&json!({"username": "quinn", "password": "Wrong-Guess-Passw0rd-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = c
        .put(s.url("/v1/users/me/password"))
        .header("cookie", &cookie)
        .json(&json!({"current_password": secret_pw, "new_password": new_pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let renewed = cookie_pair(res.headers(), "keyward").unwrap();
    let res = c
        .delete(s.url("/v1/sessions/current"))
        .header("cookie", &renewed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = c
        .post(s.url("/v1/users"))
        .body(format!("{{\"username\":\"x\",\"password\":{secret_pw}}}"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // The server logs in order, so once a last request's line is read, all earlier ones are.
    let _ = c
        .post(s.url("/v1/sessions"))
        .json(&json!({"username": "marker-user", "password": "marker-password-1"}))
        .send()
        .await
        .unwrap();
    let logs = s.wait_for_log("marker-user").await;
    for event in [
        "user_created",
        "login_ok",
        "login_failed",
        "password_changed",
        "logout",
    ] {
        assert!(logs.contains(event), "audit event {event} missing");
    }
    // Every security event names the user, the session or family, and the client address.
    let events: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "keyward::audit")
        .collect();
    for (event, id_field) in [
        ("login_ok", "session_id"),
        ("password_changed", "session_id"),
        ("logout", "session_id"),
    ] {
        let e = events
            .iter()
            .find(|v| v["event"] == event)
            .unwrap_or_else(|| panic!("no {event}"));
        assert_eq!(e["ip"], "127.0.0.1", "{event}: {e}");
        assert!(e["user_id"].is_string(), "{event}: {e}");
        assert!(e[id_field].is_string(), "{event}: {e}");
    }
    for secret in [
        secret_pw,
        new_pw,
        "Wrong-Guess-Passw0rd-1",
        cookie.trim_start_matches("keyward="),
        renewed.trim_start_matches("keyward="),
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    s.stop().await;
}

#[tokio::test]
async fn token_events_name_user_family_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &[]).await;
    let c = client();
    register_and_login(&s.base, "rita", PW).await;
    let grant: Value = c
        .post(s.url("/v1/token"))
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
    let r0 = grant["refresh_token"].as_str().unwrap();
    let next: Value = c
        .post(s.url("/v1/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", r0)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r1 = next["refresh_token"].as_str().unwrap();
    let access = next["access_token"].as_str().unwrap();
    for token in [access, r1] {
        let res = c
            .post(s.url("/v1/token/revoke"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let logs = s.wait_for_log("\"kind\":\"refresh_token\"").await;
    let events: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "keyward::audit")
        .collect();
    let find = |event: &str, kind: Option<&str>| {
        events
            .iter()
            .find(|v| v["event"] == event && kind.is_none_or(|k| v["kind"] == k))
            .unwrap_or_else(|| panic!("no {event} {kind:?} in {logs}"))
            .clone()
    };
    for e in [
        find("token_granted", None),
        find("token_refreshed", None),
        find("token_revoked", Some("access_token")),
        find("token_revoked", Some("refresh_token")),
    ] {
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
        assert!(e["user_id"].is_string(), "{e}");
        assert!(e["sid"].is_string(), "{e}");
    }
    for secret in [r0, r1, access] {
        assert!(!logs.contains(secret), "a token reached the logs");
    }
    s.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_exits_69_not_as_an_invalid_setting() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of the loopback address: the connection is refused.
    let kek = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = Command::new(BIN)
        .args([
            "migrate",
            "--database",
            "postgres://kw:hunter2-secret@127.0.0.1:1/keyward",
            "--key-encryption-key",
            kek,
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        "error: cannot reach the store of --database (postgres://kw:***@127.0.0.1:1/keyward)"
    );
    assert!(err.contains("caused by"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!err.contains("invalid setting"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn files_keyward_creates_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let script = format!("umask 022; exec {BIN} serve --bind 127.0.0.1:0 --log-format json");
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("keyward exited");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["message"] == "keyward listening" {
                break v["addr"].as_str().unwrap().to_owned();
            }
        }
    };
    // A write, so the WAL and its index exist.
    register_and_login(&format!("http://{addr}"), "sam", PW).await;
    for name in [
        "keyward.db",
        "keyward.db-wal",
        "keyward.db-shm",
        "keyward.db.kek",
    ] {
        assert_eq!(mode(name), 0o600, "{name}");
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn signing_keys_are_sealed_and_rotated_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]).await;
    let jwks: Value = client()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "keys are generated on first start: EdDSA for access tokens, RS256 for ID tokens"
    );
    s.stop().await;

    // The key-encryption key sits beside the database, readable by its owner only.
    let kek = dir.path().join("keyward.db.kek");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&kek).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The database holds no private key in the clear.
    for f in ["keyward.db", "keyward.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "{f}"
            );
        }
    }

    let out = run(dir.path(), &["keys", "rotate", "--json"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(new["alg"], "EdDSA");
    assert_eq!(new["id_token_key"]["alg"], "RS256");
    let out = run(dir.path(), &["keys", "list", "--json"], None).await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4);
    // Each chain: the new key signs, the old one verifies.
    for (alg, newest) in [("EdDSA", &new), ("RS256", &new["id_token_key"])] {
        let chain: Vec<&Value> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["alg"] == alg)
            .collect();
        assert_eq!(chain.len(), 2, "{alg}");
        assert_eq!(chain[1]["kid"], newest["kid"]);
        assert_eq!(chain[1]["status"], "signing");
        assert_eq!(chain[0]["status"], "verifying");
    }
    let out = run(dir.path(), &["keys", "list"], None).await;
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .contains("KID"));

    // A restarted server signs with the new key and still publishes the old one.
    let s = Server::start(dir.path(), &[]).await;
    let jwks: Value = client()
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 4);
    let c = client();
    assert_eq!(
        c.post(s.url("/v1/users"))
            .json(&json!({"username": "kim", "password": PW}))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let res = c
        .post(s.url("/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "kim"),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap();
    let access = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            access.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new["kid"]);
    s.stop().await;

    // A wrong key-encryption key cannot open the keys: start-up fails clearly.
    let other = keyward_token::Kek::generate().unwrap().to_text();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--key-encryption-key",
            &other,
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be decrypted"));
}

#[tokio::test]
async fn two_servers_on_one_postgres_behave_as_one() {
    let pg = keyward_testkit::pg::PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Without a SQLite file to keep it beside, the key-encryption key must be given.
    let out = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--database", &pg.url])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap()
        .contains("key-encryption-key"));

    let kek = keyward_token::Kek::generate().unwrap().to_text();
    // A fleet shares one public URL (the load balancer's), hence one issuer.
    let args = [
        "--database",
        pg.url.as_str(),
        "--key-encryption-key",
        kek.as_str(),
        "--public-url",
        "http://auth.fleet.test",
        "--login-max-failures-per-account",
        "2",
    ];
    let a = Server::start(dir.path(), &args).await;
    let b = Server::start(dir.path(), &args).await;
    let cookie = register_and_login(&a.base, "pat", PW).await;
    assert_eq!(me(&a.base, &cookie).await, 200);
    assert_eq!(
        me(&b.base, &cookie).await,
        200,
        "a session made on one node is valid on the other"
    );
    let c = client();
    let res = c
        .post(b.url("/v1/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "pat"),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let access = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = c
        .get(a.url("/v1/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "both nodes share the signing keys");
    let res = c
        .delete(b.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        me(&a.base, &cookie).await,
        401,
        "a logout on one node holds on the other"
    );
    assert_eq!(me(&b.base, &cookie).await, 401);
    // Failed logins are counted in the shared database: two on two nodes reach the limit of
    // two on both.
    for node in [&a, &b] {
        let res = c
            .post(node.url("/v1/sessions"))
            .json(&json!({"username": "pat", "password": "not-the-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    for node in [&a, &b] {
        let res = c
            .post(node.url("/v1/sessions"))
            .json(&json!({"username": "pat", "password": PW}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429, "the fleet's limit, not each node's");
    }
    a.stop().await;
    b.stop().await;
}

/// Mail and the second factor from the command line, beside a running server: the start-up
/// check of the SMTP server is logged, `keyward mail list` shows the outbox, and
/// `keyward users reset-mfa` lets a user who lost the device sign in with the password.
#[tokio::test]
async fn mail_list_and_reset_mfa_work_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let sink = keyward_testkit::smtp::SmtpSink::start().await;
    let url = sink.url();
    let mut s = Server::start(dir.path(), &["--smtp-url", &url]).await;
    s.wait_for_log("the SMTP server answers").await;
    let res = client()
        .post(s.url("/v1/users"))
        .json(&json!({"username": "mia", "password": PW, "email": "mia@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let mail = sink.wait_for(1, std::time::Duration::from_secs(20)).await;
    assert_eq!(mail[0].mail_from, "keyward@127.0.0.1");
    s.wait_for_log("mail delivered").await;
    let out = run(
        dir.path(),
        &["mail", "list", "--json", "--smtp-url", &url],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["kind"], "verify_email");
    assert_eq!(list[0]["recipient"], "mia@example.com");
    assert_eq!(list[0]["state"], "sent");
    let table = String::from_utf8(run(dir.path(), &["mail", "list"], None).await.stdout).unwrap();
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(!table.contains("token="), "a listing never shows a message");

    // TOTP on, through the API, with codes from oathtool at the real time.
    let cookie = login(&s.base, "mia", PW).await;
    let enrol: Value = client()
        .post(s.url("/v1/users/me/totp"))
        .header("cookie", &cookie)
        .json(&json!({"current_password": PW}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = enrol["secret"].as_str().unwrap();
    let now = keyward_core::Clock::now(&keyward_core::SystemClock).unix_timestamp();
    let code = keyward_testkit::oathtool(secret, now);
    let res = client()
        .post(s.url("/v1/users/me/totp/confirm"))
        .header("cookie", &cookie)
        .json(&json!({"code": code.trim()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let sign_in = || {
        client()
            .post(s.url("/v1/sessions"))
            .json(&json!({"username": "mia", "password": PW}))
            .send()
    };
    assert_eq!(sign_in().await.unwrap().status(), 401, "a code is asked");
    let out = run(dir.path(), &["users", "reset-mfa", "mia"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("second factor of mia turned off"));
    assert_eq!(
        sign_in().await.unwrap().status(),
        201,
        "the password alone again"
    );
    let out = run(dir.path(), &["users", "reset-mfa", "nobody"], None).await;
    assert_eq!(out.status.code(), Some(1));
    s.stop().await;
}

/// `keyward clients`: public and confidential clients, the secret shown once and kept only
/// hashed, redirect URIs checked when they are registered.
#[tokio::test]
async fn clients_are_registered_listed_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let out = run(
        dir.path(),
        &[
            "clients",
            "add",
            "Mobile app",
            "--redirect-uri",
            "com.example.app:/cb",
            "--redirect-uri",
            "http://127.0.0.1/cb",
            "--first-party",
        ],
        None,
    )
    .await;
    ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("client_id: "), "{text}");
    assert!(
        !text.contains("client_secret"),
        "a public client has no secret"
    );
    let out = run(
        dir.path(),
        &[
            "clients",
            "add",
            "Billing",
            "--redirect-uri",
            "https://billing.example.com/cb",
            "--confidential",
            "--post-logout-redirect-uri",
            "https://billing.example.com/bye",
            "--json",
        ],
        None,
    )
    .await;
    ok(&out);
    let billing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = billing["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 46, "256 random bits");
    assert_eq!(billing["confidential"], true);
    assert_eq!(billing["first_party"], false);
    let id = billing["client_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 22);

    let out = run(dir.path(), &["clients", "list", "--json"], None).await;
    ok(&out);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "Billing");
    assert_eq!(
        list[0]["post_logout_redirect_uris"],
        json!(["https://billing.example.com/bye"])
    );
    assert!(list[0].get("client_secret").is_none());
    let table =
        String::from_utf8(run(dir.path(), &["clients", "list"], None).await.stdout).unwrap();
    assert!(table.lines().next().unwrap().starts_with("CLIENT_ID"));
    assert!(!table.contains(&secret), "the secret is shown once");
    let db = std::fs::read(dir.path().join("keyward.db")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "stored only hashed"
    );

    for bad in [
        "http://app.example.com/cb",
        "https://app.example.com/cb#x",
        "not a uri",
    ] {
        let out = run(
            dir.path(),
            &["clients", "add", "Bad", "--redirect-uri", bad],
            None,
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "{bad}");
    }
    ok(&run(dir.path(), &["clients", "delete", &id], None).await);
    let out = run(dir.path(), &["clients", "delete", &id], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no client with id"));
}
