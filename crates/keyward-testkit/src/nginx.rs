//! A private nginx as a round-robin load balancer (no stickiness) in front of keyward nodes,
//! on a free loopback port, with its config generated into a temp dir. It runs as one process
//! (`master_process off`), killed by the PID this process started when dropped.

use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The nginx binary (Debian's package puts it here).
pub const NGINX: &str = "/usr/sbin/nginx";

/// The nginx configuration for `upstreams` behind `port`: round robin, a request that cannot
/// reach a node (refused, reset, timed out, or answered 502/503/504 before any byte) is tried
/// on the next node, and the client's address is passed on in `X-Forwarded-For`.
pub fn config(dir: &std::path::Path, port: u16, upstreams: &[u16]) -> String {
    let servers: String = upstreams
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=0;\n"))
        .collect();
    wrap(
        dir,
        &format!(
            r#"    upstream keyward {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://keyward;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }}
    }}
"#
        ),
    )
}

/// A whole nginx configuration around `http` (what goes inside its `http {}` block): one
/// foreground process, its files in `dir`, errors to stderr.
pub fn wrap(dir: &std::path::Path, http: &str) -> String {
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}}}
"#,
        dir = dir.display()
    )
}

/// A running nginx.
pub struct Nginx {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: TempDir,
}

impl Nginx {
    /// Start nginx on `port` (from [`free_port`](crate::redis::free_port)) in front of the
    /// nodes listening on `upstreams`, and wait until it accepts connections.
    pub async fn start(port: u16, upstreams: &[u16]) -> Self {
        Self::start_with(port, |dir| config(dir, port, upstreams)).await
    }

    /// Start nginx with the configuration `conf` writes for its directory, listening on `port`.
    pub async fn start_with(port: u16, conf: impl FnOnce(&std::path::Path) -> String) -> Self {
        assert!(
            std::path::Path::new(NGINX).exists(),
            "nginx not found at {NGINX}: apt-get install nginx (scripts/test does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("keyward-nginx")
            .tempdir()
            .unwrap();
        let text = conf(dir.path());
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // nginx says nothing when it is ready: wait for its port to accept (bounded).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            child,
            port,
            _dir: dir,
        }
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
