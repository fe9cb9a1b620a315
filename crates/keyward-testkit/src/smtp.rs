//! A private SMTP server for tests: `smtp_sink.py` (aiosmtpd, an independent SMTP
//! implementation, with Python's mail parser reading each message) on a loopback port, killed
//! by the PID this process started when dropped. Received mails are read back as [`Mail`].
//!
//! aiosmtpd is imported from `target/test-tools/aiosmtpd` (where `scripts/test` installs it
//! with pip) or from the interpreter's own packages.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A mail as the sink received and parsed it.
#[derive(Debug, Clone, Deserialize)]
pub struct Mail {
    /// The envelope's sender.
    pub mail_from: String,
    /// The envelope's recipients.
    pub rcpt_tos: Vec<String>,
    /// The `From` header.
    pub from: String,
    /// The `To` header.
    pub to: String,
    /// The `Subject` header, decoded.
    pub subject: String,
    /// The top-level content type.
    pub content_type: String,
    /// The text/plain part, decoded.
    pub text: Option<String>,
    /// The text/html part, decoded.
    pub html: Option<String>,
}

impl Mail {
    /// The token of the first link to `{base}/{page}?token=` in the text part.
    pub fn token(&self, page: &str) -> Option<String> {
        let text = self.text.as_deref()?;
        let marker = format!("/{page}?token=");
        let start = text.find(&marker)? + marker.len();
        let token: String = text
            .get(start..)?
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        (!token.is_empty()).then_some(token)
    }

    /// The whole link to `page` in the text part.
    pub fn link(&self, page: &str) -> Option<String> {
        let text = self.text.as_deref()?;
        let token = self.token(page)?;
        text.split_whitespace()
            .find(|w| w.contains(&format!("/{page}?token={token}")))
            .map(str::to_owned)
    }
}

/// A running SMTP sink.
pub struct SmtpSink {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
}

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/smtp_sink.py"))
}

fn python_path() -> Option<PathBuf> {
    let installed = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/test-tools/aiosmtpd"
    ));
    installed.exists().then_some(installed)
}

async fn spawn(port: u16, out: &Path) -> Child {
    let mut cmd = Command::new("python3");
    cmd.arg(script())
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(path) = python_path() {
        cmd.env("PYTHONPATH", path);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run python3 for the SMTP sink: {e}; scripts/test installs aiosmtpd")
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    match ready {
        Ok(Ok(Some(line))) if line == "ready" => {}
        other => panic!("the SMTP sink did not start on port {port}: {other:?} (is aiosmtpd installed? scripts/test installs it)"),
    }
    child
}

impl SmtpSink {
    /// Start a sink on a free port.
    pub async fn start() -> Self {
        let port = crate::ports::free_port();
        let sink = Self::not_started(port);
        sink.started().await
    }

    /// A sink that does not listen yet (an SMTP server that is down), on a free port; start
    /// it later with [`SmtpSink::started`].
    pub fn not_started(port: u16) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyward-smtp")
            .tempdir()
            .unwrap();
        Self {
            child: None,
            port,
            dir,
        }
    }

    /// Start listening (again).
    pub async fn started(mut self) -> Self {
        if self.child.is_none() {
            self.child = Some(spawn(self.port, self.dir.path()).await);
        }
        self
    }

    /// Stop listening; what it received stays readable.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// `smtp://127.0.0.1:PORT?tls=none`
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// Every mail received so far, in order.
    pub fn mails(&self) -> Vec<Mail> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// Wait (up to `within`) until at least `n` mails arrived; returns them all. The wait
    /// polls the sink's directory: mail arrives from another process on its own time.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} mail(s) arrived within {within:?}, expected {n}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Its PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}
