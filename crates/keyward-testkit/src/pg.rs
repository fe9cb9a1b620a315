//! A private PostgreSQL for tests: `initdb` into a temp dir, `postgres` on a free loopback
//! port, stopped (by its PID, which this process started) when dropped. When the tests run as
//! root, both run as the `postgres` user (initdb refuses root).

use std::path::PathBuf;
use std::process::Stdio;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running private PostgreSQL.
pub struct PgServer {
    child: Child,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub url: String,
    port: u16,
    bin: PathBuf,
    root: bool,
    _dir: TempDir,
}

/// Run `postgres` on `dir/data` and wait for its "ready" line.
async fn launch(bin: &std::path::Path, root: bool, dir: &std::path::Path, port: u16) -> Child {
    let data = dir.join("data");
    let mut child = command(bin.join("postgres"), root)
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
        ])
        .arg(format!("unix_socket_directories={}", dir.display()))
        // fsync off (the tests survive no machine crash), but every commit is written before
        // it is acknowledged: a killed server restarts with all it acknowledged.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("ready to accept connections") {
                return Ok(());
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    })
    .await;
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(log)) => panic!("postgres exited before it was ready:\n{log}"),
        Err(_) => panic!("postgres was not ready within 60 s"),
    }
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if std::env::var("KEYWARD_TEST_LOG").is_ok() {
                eprintln!("postgres: {l}");
            }
        }
    });
    child
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|it| it.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().filter(|d| d.join("initdb").exists()).unwrap_or_else(|| {
        panic!("PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get install postgresql (scripts/test does)")
    })
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn command(program: PathBuf, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// Start one. Panics with a clear message if PostgreSQL cannot be started.
    pub async fn start() -> Self {
        let bin = bin_dir();
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("keyward-pg")
            .tempdir()
            .unwrap();
        if root {
            let st = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown of the PostgreSQL temp dir failed");
        }
        let data = dir.path().join("data");
        let out = command(bin.join("initdb"), root)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::ports::free_port();
        let child = launch(&bin, root, dir.path(), port).await;
        Self {
            child,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            root,
            _dir: dir,
        }
    }

    /// Kill it (SIGKILL to the postmaster, as a crash or a lost machine would) and wait until
    /// it no longer listens. Its PID is in its pid file (under root, this process started
    /// `runuser`, not postgres itself).
    pub async fn kill(&mut self) {
        let pid_file = self._dir.path().join("data").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .expect("postgres has a pid file");
        let st = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await
            .unwrap();
        assert!(st.success(), "kill {pid} failed");
        // Its parent (this process, or `runuser`) reaps it: a zombie left to an init that
        // does not reap would keep its pid file "in use".
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres did not go away"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Start it again on the same port and data (after [`kill`](Self::kill)).
    pub async fn restart(&mut self) {
        // A killed postmaster leaves its pid file; the new one checks the pid is gone.
        self.child = launch(&self.bin, self.root, self._dir.path(), self.port).await;
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PID (this process started it).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
