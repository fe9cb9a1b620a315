//! Private Redis deployments for tests: a standalone server, a 3-primary Cluster, and a
//! primary with a replica behind three Sentinels. Each process runs on free loopback ports in
//! a temp dir, keeps nothing on disk, and is killed (by the PID this process started) when
//! dropped. Readiness is read from the servers' own logs, never guessed with sleeps.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

/// How long any readiness wait may take before the test fails.
const READY: Duration = Duration::from_secs(30);

/// The lines a process has logged, awaitable.
#[derive(Clone, Default)]
pub struct LogWatch {
    lines: Arc<Mutex<Vec<String>>>,
    changed: Arc<Notify>,
}

impl LogWatch {
    fn follow(&self, child: &mut Child) {
        let Some(out) = child.stdout.take() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                me.lines.lock().unwrap().push(line);
                me.changed.notify_waiters();
            }
        });
    }

    /// How many lines so far: pass it to [`wait_for_after`](Self::wait_for_after) to wait for
    /// a line logged from now on.
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Wait until a line containing `needle` has been logged.
    pub async fn wait_for(&self, needle: &str) {
        self.wait_for_after(0, needle).await
    }

    /// Wait until a line containing `needle` is logged after line `from`.
    pub async fn wait_for_after(&self, from: usize, needle: &str) {
        let found = tokio::time::timeout(READY, async {
            loop {
                let notified = self.changed.notified();
                if self
                    .lines
                    .lock()
                    .unwrap()
                    .iter()
                    .skip(from)
                    .any(|l| l.contains(needle))
                {
                    return;
                }
                notified.await;
            }
        })
        .await;
        if found.is_err() {
            let log = self.lines.lock().unwrap().join("\n");
            panic!("no log line with {needle:?} within {READY:?}; the log:\n{log}");
        }
    }
}

fn redis_server() -> &'static str {
    const BIN: &str = "redis-server";
    if std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server not found: apt-get install redis-server (scripts/test does)");
    }
    BIN
}

pub use crate::ports::free_port;

/// One redis-server (or Sentinel) process.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    args: Vec<String>,
    _dir: Arc<TempDir>,
    /// What it logged.
    pub log: LogWatch,
}

impl RedisServer {
    /// A standalone server, ready for commands.
    pub async fn start() -> Self {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("keyward-redis")
                .tempdir()
                .unwrap(),
        );
        Self::spawn(dir, free_port(), Vec::new(), "Ready to accept connections").await
    }

    /// A standalone server that keeps its data on disk (an append-only file, synced on every
    /// write), so a restart after [`kill`](Self::kill) finds what it held.
    pub async fn start_durable() -> Self {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("keyward-redis")
                .tempdir()
                .unwrap(),
        );
        let extra = ["--appendonly", "yes", "--appendfsync", "always"].map(String::from);
        Self::spawn(
            dir,
            free_port(),
            extra.to_vec(),
            "Ready to accept connections",
        )
        .await
    }

    /// A standalone server that speaks only TLS, with a certificate for `127.0.0.1` issued by
    /// a private CA made for it (with the openssl CLI); the CA's PEM file is returned.
    pub async fn start_tls() -> (Self, std::path::PathBuf) {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("keyward-redis-tls")
                .tempdir()
                .unwrap(),
        );
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=keyward test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let port = free_port();
        let path = |f: &str| d.join(f).to_string_lossy().into_owned();
        let extra = vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let ca = d.join("ca.pem");
        let mut server = Self::spawn(dir, 0, extra, "Ready to accept connections").await;
        server.port = port;
        (server, ca)
    }

    async fn spawn(dir: Arc<TempDir>, port: u16, extra: Vec<String>, ready: &str) -> Self {
        let mut args: Vec<String> = Vec::new();
        let sentinel = extra.first().is_some_and(|a| a.ends_with(".conf"));
        if !sentinel {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            args.extend(
                [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    "",
                    "--daemonize",
                    "no",
                    "--dir",
                    &node_dir.to_string_lossy(),
                ]
                .map(String::from),
            );
        }
        // Later options win: the defaults first, then what this server asks for (a Sentinel's
        // configuration file must come first, and it takes no defaults).
        let mut all = if sentinel {
            extra.clone()
        } else {
            args.clone()
        };
        all.extend(if sentinel { args } else { extra });
        let mut me = Self {
            child: None,
            port,
            args: all,
            _dir: dir,
            log: LogWatch::default(),
        };
        me.launch(ready).await;
        me
    }

    async fn launch(&mut self, ready: &str) {
        let mark = self.log.mark();
        let mut child = Command::new(redis_server())
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.log.follow(&mut child);
        self.child = Some(child);
        self.log.wait_for_after(mark, ready).await;
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its PID (this process started it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Kill it (SIGKILL: no goodbye to clients or replicas) and wait for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Start it again on the same port with the same settings: empty, unless it was started
    /// [durable](Self::start_durable).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.launch("Ready to accept connections").await;
    }

    /// Run a command with redis-cli against it; its output.
    pub async fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args).await
    }
}

/// Run redis-cli against 127.0.0.1 with these arguments (`-p PORT`, `-c`, …).
pub async fn cli_args(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1"])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run redis-cli against 127.0.0.1:`port`.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of three primaries (no replicas), slots spread evenly.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three nodes, join them, and wait until every node reports the cluster ok.
    pub async fn start() -> Self {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("keyward-cluster")
                .tempdir()
                .unwrap(),
        );
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                .map(String::from)
                .to_vec();
            nodes.push(
                RedisServer::spawn(dir.clone(), port, extra, "Ready to accept connections").await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.push("--cluster-yes");
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            n.log.wait_for("Cluster state changed: ok").await;
        }
        Self { nodes }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// A primary and a replica, watched by three Sentinels (quorum 2) under the name `kwtest`.
pub struct RedisSentinel {
    /// The primary at start.
    pub primary: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    /// The Sentinels.
    pub sentinels: Vec<RedisServer>,
}

/// The service name the Sentinels monitor.
pub const SENTINEL_SERVICE: &str = "kwtest";

impl RedisSentinel {
    /// Start the primary, the replica (waiting for its first sync) and the Sentinels (waiting
    /// until each has found the replica).
    pub async fn start() -> Self {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("keyward-sentinel")
                .tempdir()
                .unwrap(),
        );
        let primary = RedisServer::spawn(
            dir.clone(),
            free_port(),
            Vec::new(),
            "Ready to accept connections",
        )
        .await;
        let replica_port = free_port();
        let replica = RedisServer::spawn(
            dir.clone(),
            replica_port,
            [
                "--replicaof",
                "127.0.0.1",
                &primary.port.to_string(),
                "--replica-announce-ip",
                "127.0.0.1",
            ]
            .map(String::from)
            .to_vec(),
            "MASTER <-> REPLICA sync: Finished with success",
        )
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {dir}\n\
                     sentinel resolve-hostnames no\nsentinel announce-ip 127.0.0.1\n\
                     sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 10000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                    dir = dir.path().display(),
                    primary = primary.port,
                ),
            )
            .unwrap();
            let s = RedisServer::spawn(
                dir.clone(),
                port,
                vec![conf.to_string_lossy().into_owned(), "--sentinel".into()],
                "+monitor master",
            )
            .await;
            s.log.wait_for("+slave slave").await;
            sentinels.push(s);
        }
        Self {
            primary,
            replica,
            sentinels,
        }
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/kwtest`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_SERVICE}", hosts.join(","))
    }

    /// Kill the primary and wait until the Sentinels have promoted the replica.
    pub async fn fail_over(&mut self) {
        let marks: Vec<usize> = self.sentinels.iter().map(|s| s.log.mark()).collect();
        self.primary.kill().await;
        for (s, m) in self.sentinels.iter().zip(marks) {
            s.log.wait_for_after(m, "+switch-master").await;
        }
    }
}
