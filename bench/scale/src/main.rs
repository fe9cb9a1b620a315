//! keyward at scale, measured (not asserted):
//!
//!     cargo build --release -p keyward -p keyward-scale
//!     target/release/keyward-scale --keyward target/release/keyward [--sessions 100000,1000000]
//!         [--engines redis,postgres] [--revocations 1000]
//!
//! For each engine (a private Redis or PostgreSQL on a free loopback port, stopped at the end):
//! 1. starts a `--session-cache replicated` keyward on the empty store, and notes its memory
//!    (VmRSS) once `/readyz` answers 200: the baseline;
//! 2. for each N: fills the store with N synthetic sessions through keyward's own store code
//!    (`SessionStore::create`, 64 at a time), starts another replicated node, and reports the
//!    time from its start to `/readyz` 200 (the cache's own load time is in its log), and
//!    (VmRSS − baseline) / N;
//! 3. starts two replicated nodes A and B, mints `--revocations` sessions, and, while 16
//!    connections keep validating sessions on B, revokes each one on A (`DELETE
//!    /v1/sessions/current`) and polls B with it until B answers 401: the delay from A's
//!    acknowledgement to B's first 401, p50 and p99.
//!
//! Everything runs on 127.0.0.1; every loop is bounded; every process is stopped by PID.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use futures_util::{stream, StreamExt};
use keyward_core::{SessionId, SessionRecord, SessionStore, SessionToken, UserId};
use keyward_testkit::pg::PgServer;
use keyward_testkit::redis::RedisServer;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Args {
    keyward: String,
    sessions: Vec<u64>,
    engines: Vec<String>,
    revocations: usize,
}

fn args() -> Args {
    let mut a = Args {
        keyward: "target/release/keyward".into(),
        sessions: vec![100_000, 1_000_000],
        engines: vec!["redis".into(), "postgres".into()],
        revocations: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--keyward" => a.keyward = v,
            "--sessions" => a.sessions = v.split(',').map(|n| n.parse().unwrap()).collect(),
            "--engines" => a.engines = v.split(',').map(str::to_owned).collect(),
            "--revocations" => a.revocations = v.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    // The nodes run in directories of their own.
    a.keyward = std::fs::canonicalize(&a.keyward)
        .unwrap_or_else(|e| panic!("{}: {e}", a.keyward))
        .display()
        .to_string();
    a
}

enum Engine {
    Redis(RedisServer),
    Postgres(PgServer),
}

impl Engine {
    async fn start(name: &str) -> Self {
        match name {
            "redis" => Self::Redis(RedisServer::start().await),
            "postgres" => Self::Postgres(PgServer::start().await),
            other => panic!("unknown engine {other}"),
        }
    }

    fn url(&self) -> String {
        match self {
            Self::Redis(r) => r.url(),
            Self::Postgres(p) => p.url.clone(),
        }
    }

    async fn store(&self) -> Arc<dyn SessionStore> {
        match self {
            Self::Redis(r) => Arc::new(
                keyward_redis::RedisStore::connect(&r.url().parse().unwrap(), Default::default())
                    .await
                    .unwrap(),
            ),
            Self::Postgres(p) => Arc::new(
                keyward_sql::SqlStore::open(&p.url.parse().unwrap())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// keyward's flags for this store.
    fn flags(&self, dir: &std::path::Path) -> Vec<String> {
        let kek = "s2VE6bsc2SN6JE-0lEaIqWjFYKaDSDy8v8G9BrgMt8w".to_owned();
        match self {
            Self::Redis(r) => vec![
                "--database".into(),
                format!("sqlite://{}/keyward.db", dir.display()),
                "--session-store".into(),
                r.url(),
            ],
            Self::Postgres(p) => vec![
                "--database".into(),
                p.url.clone(),
                "--key-encryption-key".into(),
                kek,
            ],
        }
    }
}

/// A session of a random user, its token kept.
fn synthetic(now: time::OffsetDateTime, i: u64) -> (SessionToken, SessionRecord) {
    let user = UserId::new();
    let token = SessionToken::generate_in(user.shard()).unwrap();
    let s = SessionRecord {
        id: SessionId::new_in(user.shard()),
        token_hash: token.hash(),
        user_id: user,
        username: format!("user{i}"),
        created_at: now,
        last_seen_at: now,
        expires_at: now + time::Duration::days(7),
        ip: Some("192.0.2.1".into()),
        user_agent: Some("keyward-scale/1 (synthetic session)".into()),
        amr: keyward_core::Amr::PWD,
    };
    (token, s)
}

fn now() -> time::OffsetDateTime {
    keyward_core::Clock::now(&keyward_core::SystemClock)
}

async fn fill(store: &Arc<dyn SessionStore>, n: u64) -> Vec<SessionToken> {
    let started = Instant::now();
    let t = now();
    let tokens: Vec<SessionToken> = stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                let (token, s) = synthetic(t, i);
                store.create(&s).await.unwrap();
                token
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    eprintln!(
        "[scale] filled {n} sessions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokens
}

struct Node {
    child: Child,
    base: String,
    started: Instant,
}

impl Node {
    async fn start(bin: &str, engine: &Engine, dir: &std::path::Path) -> Self {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--log-format", "json"])
            .args(["--session-cache", "replicated"])
            .args(engine.flags(dir))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("keyward exited at start");
            if line.contains("session cache loaded") {
                eprintln!("[scale] {line}");
            }
            if line.contains("\"keyward listening\"") {
                let at = line.find("\"addr\":\"").unwrap() + 8;
                break line[at..].split('"').next().unwrap().to_owned();
            }
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("session cache loaded") || line.contains("WARN") {
                    eprintln!("[scale] {line}");
                }
            }
        });
        let node = Self {
            child,
            base: format!("http://{addr}"),
            started,
        };
        node.until_ready().await;
        node
    }

    async fn until_ready(&self) {
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let ok = c
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node was not ready in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn rss_bytes(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn cookie(t: &SessionToken) -> String {
    format!("keyward={}", t.expose())
}

async fn status(c: &reqwest::Client, method: reqwest::Method, url: &str, t: &SessionToken) -> u16 {
    c.request(method, url)
        .header("cookie", cookie(t))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn propagation(bin: &str, engine: &Engine, dir: &std::path::Path, n: usize) {
    let store = engine.store().await;
    let a = Node::start(bin, engine, &dir.join("a")).await;
    let b = Node::start(bin, engine, &dir.join("b")).await;
    let tokens = fill(&store, n as u64 + 16).await;
    let (load, revoked) = tokens.split_at(16);
    let c = reqwest::Client::new();
    let current = |base: &str| format!("{base}/v1/sessions/current");
    // B holds them all before the measure starts.
    for t in revoked.iter().chain(load) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(&c, reqwest::Method::GET, &current(&b.base), t).await != 200 {
            assert!(Instant::now() < deadline, "B never validated a session");
        }
    }
    // Load on B: 16 connections validating, until the measure ends.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loaders = vec![];
    for t in load {
        let t = t.clone();
        let (stop, served, url, c) = (stop.clone(), served.clone(), current(&b.base), c.clone());
        loaders.push(tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(300)
            {
                if status(&c, reqwest::Method::GET, &url, &t).await == 200 {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    let mut delays = Vec::with_capacity(n);
    for t in revoked {
        assert_eq!(
            status(&c, reqwest::Method::DELETE, &current(&a.base), t).await,
            204
        );
        let acknowledged = Instant::now();
        let deadline = acknowledged + Duration::from_secs(10);
        while status(&c, reqwest::Method::GET, &current(&b.base), t).await != 401 {
            assert!(
                Instant::now() < deadline,
                "B never refused a revoked session"
            );
        }
        delays.push(acknowledged.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    delays.sort();
    println!(
        "| {} | {n} | {:.2} | {:.2} | {:.2} | {:.0} |",
        name_of(engine),
        percentile(&delays, 0.5).as_secs_f64() * 1000.0,
        percentile(&delays, 0.99).as_secs_f64() * 1000.0,
        delays.last().unwrap().as_secs_f64() * 1000.0,
        served.load(std::sync::atomic::Ordering::Relaxed) as f64 / elapsed,
    );
    a.stop().await;
    b.stop().await;
}

fn name_of(e: &Engine) -> &'static str {
    match e {
        Engine::Redis(_) => "redis",
        Engine::Postgres(_) => "postgres",
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let mut scale_rows = vec![];
    let mut propagation_rows = vec![];
    for name in &args.engines {
        let engine = Engine::start(name).await;
        let dir = tempfile::tempdir().unwrap();
        for sub in ["base", "a", "b"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let base = Node::start(&args.keyward, &engine, &dir.path().join("base")).await;
        let baseline = base.rss_bytes();
        base.stop().await;
        eprintln!(
            "[scale] {name}: empty store, node RSS {} MiB",
            baseline >> 20
        );
        let store = engine.store().await;
        let mut filled = 0;
        for &n in &args.sessions {
            fill(&store, n - filled).await;
            filled = n;
            let sub = dir.path().join(format!("n{n}"));
            std::fs::create_dir_all(&sub).unwrap();
            if let Engine::Redis(r) = &engine {
                r.cli(&["CONFIG", "RESETSTAT"]).await;
            }
            let node = Node::start(&args.keyward, &engine, &sub).await;
            let ready = node.started.elapsed();
            let rss = node.rss_bytes();
            let per = rss.saturating_sub(baseline) as f64 / n as f64;
            scale_rows.push(format!(
                "| {name} | {n} | {:.2} | {} | {:.0} |",
                ready.as_secs_f64(),
                rss >> 20,
                per
            ));
            eprintln!("{}", scale_rows.last().unwrap());
            if let Engine::Redis(r) = &engine {
                let stats = r.cli(&["INFO", "commandstats"]).await;
                for l in stats.lines().filter(|l| l.contains("calls=")) {
                    eprintln!("[scale] redis {l}");
                }
            }
            node.stop().await;
        }
        drop(store);
        // Propagation on a fresh store of the same engine (the filled one stays as it is).
        let fresh = Engine::start(name).await;
        propagation_rows.push(fresh);
        let _ = engine.url();
        let pdir = tempfile::tempdir().unwrap();
        for sub in ["a", "b"] {
            std::fs::create_dir_all(pdir.path().join(sub)).unwrap();
        }
        println!(
            "\n| engine | revocations | p50 ms | p99 ms | max ms | validations/s on B meanwhile |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        propagation(
            &args.keyward,
            propagation_rows.last().unwrap(),
            pdir.path(),
            args.revocations,
        )
        .await;
    }
    println!("\n| engine | sessions | start to /readyz, s | node RSS, MiB | bytes per session |");
    println!("|---|---:|---:|---:|---:|");
    for r in scale_rows {
        println!("{r}");
    }
}
