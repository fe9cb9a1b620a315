//! Many servers: several real `keyward serve` processes sharing a session store (Redis with a
//! SQLite user database, or PostgreSQL for both), behind a real nginx doing round robin
//! without stickiness. What one node does, every node honours at once; restarts, dead nodes
//! and a dead Redis primary lose no acknowledged session.

use crate::process::{bearer, login, me, password_grant, register_and_login, settles, Server, PW};
use keyward_testkit::nginx::Nginx;
use keyward_testkit::pg::PgServer;
use keyward_testkit::redis::{free_port, RedisSentinel, RedisServer};
use keyward_testkit::{client, cookie_pair};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The shared engine a fleet runs on: a private server, durable (a restart keeps its data).
pub enum Shared {
    /// Redis for sessions and tokens, a SQLite file beside the nodes for users.
    Redis(RedisServer),
    /// PostgreSQL for everything, and the key-encryption key the nodes share.
    Postgres(PgServer, String),
}

impl Shared {
    pub async fn start(engine: &str) -> Self {
        match engine {
            "redis" => Self::Redis(RedisServer::start_durable().await),
            "postgres" => Self::Postgres(
                PgServer::start().await,
                keyward_token::Kek::generate().unwrap().to_text(),
            ),
            other => panic!("no engine {other}"),
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            Self::Redis(r) => r.port,
            Self::Postgres(p, _) => p.port(),
        }
    }

    /// The store settings of a node in `dir` that reaches the engine on `port` (its own, or a
    /// proxy's in front of it).
    pub fn args(&self, dir: &std::path::Path, port: u16) -> Vec<String> {
        let url = |scheme: &str| format!("{scheme}://127.0.0.1:{port}");
        match self {
            Self::Redis(_) => vec![
                "--session-store".into(),
                url("redis"),
                "--database".into(),
                format!("sqlite://{}/keyward.db", dir.display()),
            ],
            Self::Postgres(_, kek) => vec![
                "--database".into(),
                format!("{}/postgres?user=postgres", url("postgres")),
                "--key-encryption-key".into(),
                kek.clone(),
            ],
        }
    }

    /// Stop it as a crash would.
    pub async fn kill(&mut self) {
        match self {
            Self::Redis(r) => r.kill().await,
            Self::Postgres(p, _) => p.kill().await,
        }
    }

    /// Start it again with what it held.
    pub async fn restart(&mut self) {
        match self {
            Self::Redis(r) => r.restart().await,
            Self::Postgres(p, _) => p.restart().await,
        }
    }
}

/// N nodes and the load balancer in front of them.
struct Fleet {
    dir: tempfile::TempDir,
    args: Vec<String>,
    ports: Vec<u16>,
    nodes: Vec<Option<Server>>,
    lb: Nginx,
}

impl Fleet {
    /// Sessions in `store`, users in a SQLite file the nodes share.
    async fn start(store: &str, n: usize, extra: &[&str]) -> Self {
        Self::start_with(
            |dir| {
                vec![
                    "--session-store".into(),
                    store.into(),
                    "--database".into(),
                    format!("sqlite://{}/keyward.db", dir.display()),
                ]
            },
            n,
            extra,
        )
        .await
    }

    /// On `shared`.
    async fn on(shared: &Shared, n: usize, extra: &[&str]) -> Self {
        Self::start_with(|dir| shared.args(dir, shared.port()), n, extra).await
    }

    async fn start_with(
        stores: impl FnOnce(&std::path::Path) -> Vec<String>,
        n: usize,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lb_port = free_port();
        let mut args = stores(dir.path());
        args.extend([
            // One public URL for the fleet: the load balancer's.
            "--public-url".into(),
            format!("http://127.0.0.1:{lb_port}"),
            "--trusted-proxies".into(),
            "127.0.0.1".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut fleet = Self {
            dir,
            args,
            ports: ports.clone(),
            nodes: Vec::new(),
            lb: Nginx::start(lb_port, &ports).await,
        };
        // One at a time: the first creates and migrates the database.
        for i in 0..n {
            let node = fleet.spawn(i).await;
            fleet.nodes.push(Some(node));
        }
        fleet
    }

    async fn spawn(&self, i: usize) -> Server {
        let bind = format!("127.0.0.1:{}", self.ports[i]);
        let mut args: Vec<&str> = vec!["--bind", &bind];
        args.extend(self.args.iter().map(String::as_str));
        Server::start(self.dir.path(), &args).await
    }

    fn lb(&self) -> String {
        self.lb.base()
    }

    /// The bases of the nodes that are up.
    fn nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flatten()
            .map(|s| s.base.clone())
            .collect()
    }

    /// The status `GET /v1/me` with `cookie` gets from every node that is up, once a
    /// revocation has had one feed delivery to reach it (see [`settles`]).
    async fn refused_everywhere(&self, cookie: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for base in self.nodes() {
            out.push(settles(401, || me(&base, cookie)).await);
        }
        out
    }

    /// The status `GET /v1/me` with `cookie` gets from every node that is up, directly.
    async fn me_everywhere(&self, cookie: &str) -> Vec<u16> {
        let mut out = Vec::new();
        for base in self.nodes() {
            out.push(me(&base, cookie).await);
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some(node) = node {
                    eprintln!("---- node {i} ({}) logged:\n{}", node.base, node.log_text());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_nginx_behave_as_one() {
    behave_as_one("redis", "none").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_near_caches_behave_as_one() {
    behave_as_one("redis", "near").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_replicated_caches_behave_as_one() {
    behave_as_one("redis", "replicated").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_behave_as_one() {
    behave_as_one("postgres", "none").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_with_near_caches_behave_as_one() {
    behave_as_one("postgres", "near").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_with_replicated_caches_behave_as_one() {
    behave_as_one("postgres", "replicated").await
}

/// Every check is made right after the change is acknowledged, on every node: with a cache,
/// "at once" means the feed reached every node before the change was acknowledged.
async fn behave_as_one(engine: &str, cache: &str) {
    let shared = Shared::start(engine).await;
    let fleet = Fleet::on(&shared, 3, &["--session-cache", cache]).await;
    let lb = fleet.lb();
    let c = client();

    // A login answered by whichever node is valid on every node, and through the balancer.
    let a = register_and_login(&lb, "ada", PW).await;
    assert_eq!(fleet.me_everywhere(&a).await, vec![200, 200, 200]);
    for _ in 0..6 {
        assert_eq!(me(&lb, &a).await, 200);
    }

    if cache != "none" {
        // Reads are counted by how the cache answered.
        let metrics = c
            .get(format!("{}/metrics", fleet.nodes()[0]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(r#"keyward_session_cache_total{result="hit"}"#),
            "{metrics}"
        );
    }

    // Revoke-others on one node: the other session dies everywhere, the current one lives.
    let b = login(&lb, "ada", PW).await;
    let n0 = &fleet.nodes()[0];
    let listed: Value = c
        .get(format!("{n0}/v1/sessions"))
        .header("cookie", &a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let res = c
        .delete(format!("{n0}/v1/sessions"))
        .header("cookie", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(fleet.refused_everywhere(&b).await, vec![401, 401, 401]);
    assert_eq!(fleet.me_everywhere(&a).await, vec![200, 200, 200]);

    // A password change on another node: the old cookie is dead everywhere, the new one and
    // only it lives, and sessions elsewhere are revoked.
    let other = login(&lb, "ada", PW).await;
    let n1 = &fleet.nodes()[1];
    let res = c
        .put(format!("{n1}/v1/users/me/password"))
        .header("cookie", &a)
        .json(&json!({"current_password": PW, "new_password": "another-long-passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let renewed = cookie_pair(res.headers(), "keyward").expect("a new cookie");
    assert_ne!(renewed, a);
    assert_eq!(fleet.refused_everywhere(&a).await, vec![401, 401, 401]);
    assert_eq!(fleet.refused_everywhere(&other).await, vec![401, 401, 401]);
    assert_eq!(fleet.me_everywhere(&renewed).await, vec![200, 200, 200]);

    // A logout on the third node holds on all.
    let n2 = &fleet.nodes()[2];
    let res = c
        .delete(format!("{n2}/v1/sessions/current"))
        .header("cookie", &renewed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        fleet.refused_everywhere(&renewed).await,
        vec![401, 401, 401]
    );

    // A refresh token rotated on one node and replayed on another revokes the family
    // everywhere: the newest refresh token and the access tokens die with it.
    let token = |node: String, form: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let res = c
                .post(format!("{node}/v1/token"))
                .form(&form)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let nodes = fleet.nodes();
    let (st, grant) = token(
        nodes[0].clone(),
        vec![
            ("grant_type", "password".into()),
            ("username", "ada".into()),
            ("password", "another-long-passphrase".into()),
        ],
    )
    .await;
    assert_eq!(st, 200, "{grant}");
    let r0 = grant["refresh_token"].as_str().unwrap().to_owned();
    let (st, rotated) = token(
        nodes[1].clone(),
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", r0.clone()),
        ],
    )
    .await;
    assert_eq!(st, 200, "{rotated}");
    let r1 = rotated["refresh_token"].as_str().unwrap().to_owned();
    let access = rotated["access_token"].as_str().unwrap().to_owned();
    for n in &nodes {
        let st = c
            .get(format!("{n}/v1/me"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(st, 200);
    }
    let (st, reused) = token(
        nodes[2].clone(),
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", r0),
        ],
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(reused["error"], "invalid_grant");
    let (st, _) = token(
        nodes[0].clone(),
        vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", r1),
        ],
    )
    .await;
    assert_eq!(st, 400, "the newest refresh token died with its family");
    for n in &nodes {
        let st = settles(401, || {
            let req = c.get(format!("{n}/v1/me")).bearer_auth(&access).send();
            async move { req.await.unwrap().status().as_u16() }
        })
        .await;
        assert_eq!(st, 401, "the family's access token is denied on {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_holds_on_every_node_at_once() {
    expiry_holds_everywhere("redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_holds_on_every_node_at_once_on_postgres() {
    expiry_holds_everywhere("postgres").await
}

async fn expiry_holds_everywhere(engine: &str) {
    let shared = Shared::start(engine).await;
    let fleet = Fleet::on(
        &shared,
        3,
        &["--absolute-timeout", "2s", "--session-cache", "replicated"],
    )
    .await;
    let a = register_and_login(&fleet.lb(), "eve", PW).await;
    // The session was made before this instant, so it ends at most 2 s after it.
    let made = tokio::time::Instant::now();
    assert_eq!(fleet.me_everywhere(&a).await, vec![200, 200, 200]);
    // Expiry is the passing of time itself: wait for it.
    tokio::time::sleep_until(made + Duration::from_millis(2_100)).await;
    assert_eq!(fleet.me_everywhere(&a).await, vec![401, 401, 401]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_serves_what_exists_and_nothing_revoked() {
    late_joiner("redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_serves_what_exists_and_nothing_revoked_on_postgres() {
    late_joiner("postgres").await
}

/// A replicated node started after sessions were made, ended and tokens revoked: its first
/// answers (it listens only once it has loaded) are the fleet's.
async fn late_joiner(engine: &str) {
    let shared = Shared::start(engine).await;
    let mut fleet = Fleet::on(&shared, 2, &["--session-cache", "replicated"]).await;
    let n0 = fleet.nodes()[0].clone();
    let c = client();
    let kept = register_and_login(&n0, "lena", PW).await;
    let ended = login(&n0, "lena", PW).await;
    let res = c
        .delete(format!("{n0}/v1/sessions/current"))
        .header("cookie", &ended)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let live = password_grant(&n0, "lena").await;
    let revoked = password_grant(&n0, "lena").await;
    let res = c
        .post(format!("{n0}/v1/token/revoke"))
        .form(&[("token", revoked["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A third node joins (the load balancer already lists its port).
    fleet.ports.push(free_port());
    let joiner = fleet.spawn(2).await;
    let base = joiner.base.clone();
    fleet.nodes.push(Some(joiner));
    assert_eq!(me(&base, &kept).await, 200);
    assert_eq!(me(&base, &ended).await, 401);
    let access = |t: &Value| t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(bearer(&base, &access(&live)).await, 200);
    assert_eq!(
        bearer(&base, &access(&revoked)).await,
        401,
        "the revoked family's access token"
    );
    // And it follows the feed from then on.
    let res = c
        .delete(format!("{n0}/v1/sessions/current"))
        .header("cookie", &kept)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(settles(401, || me(&base, &kept)).await, 401);
}

/// Requests through the balancer until stopped: `GET /v1/me` with each cookie in turn, and a
/// login now and then. Counts what did not succeed.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(lb: String, user: &'static str, cookies: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, n, f) = (stop.clone(), sent.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let c = client();
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let (what, res) = if i % 10 == 0 {
                    let res = c
                        .post(format!("{lb}/v1/sessions"))
                        .json(&json!({"username": user, "password": PW}))
                        .send()
                        .await;
                    ("login", res.map(|r| (r.status().as_u16(), 201)))
                } else {
                    let cookie = &cookies[i % cookies.len()];
                    let res = c
                        .get(format!("{lb}/v1/me"))
                        .header("cookie", cookie)
                        .send()
                        .await;
                    ("me", res.map(|r| (r.status().as_u16(), 200)))
                };
                n.fetch_add(1, Ordering::Relaxed);
                match res {
                    Ok((got, want)) if got == want => {}
                    Ok((got, _)) => f.lock().unwrap().push(format!("{what}: {got}")),
                    Err(e) => f.lock().unwrap().push(format!("{what}: {e}")),
                }
            }
        });
        Self {
            stop,
            sent,
            failures,
            task,
        }
    }

    /// Wait until `n` more requests have been answered.
    async fn answered(&self, n: usize) {
        let target = self.sent.load(Ordering::Relaxed) + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.sent.load(Ordering::Relaxed) < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the traffic stalled"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_logs_nobody_out_and_fails_no_request() {
    rolling_restart("redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_on_postgres_logs_nobody_out_and_fails_no_request() {
    rolling_restart("postgres").await
}

async fn rolling_restart(engine: &str) {
    let shared = Shared::start(engine).await;
    // Replicated caches: each restarted node loads every session before it listens.
    let mut fleet = Fleet::on(&shared, 3, &["--session-cache", "replicated"]).await;
    let lb = fleet.lb();
    let first = register_and_login(&lb, "rolf", PW).await;
    let mut cookies = vec![first];
    for _ in 0..4 {
        cookies.push(login(&lb, "rolf", PW).await);
    }
    let traffic = Traffic::start(lb.clone(), "rolf", cookies.clone());
    for i in 0..fleet.ports.len() {
        traffic.answered(50).await;
        let node = fleet.nodes[i].take().unwrap();
        node.terminate().await;
        // Traffic while the node is down: the balancer sends it elsewhere.
        traffic.answered(50).await;
        let again = fleet.spawn(i).await;
        fleet.nodes[i] = Some(again);
    }
    traffic.answered(50).await;
    let (sent, failures) = traffic.finish().await;
    assert!(
        sent >= 350,
        "only {sent} requests went through during the restarts"
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    for cookie in &cookies {
        assert_eq!(fleet.me_everywhere(cookie).await, vec![200, 200, 200]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_session() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(&redis.url(), 3, &[]).await;
    let lb = fleet.lb();
    let mut cookies = vec![register_and_login(&lb, "kim", PW).await];
    for _ in 0..5 {
        cookies.push(login(&lb, "kim", PW).await);
    }
    fleet.nodes[1].take().unwrap().stop().await;
    for cookie in &cookies {
        assert_eq!(fleet.me_everywhere(cookie).await, vec![200, 200]);
        for _ in 0..3 {
            assert_eq!(
                me(&lb, cookie).await,
                200,
                "the balancer routes around the dead node"
            );
        }
    }
    assert_eq!(me(&lb, &login(&lb, "kim", PW).await).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_every_acknowledged_session() {
    let mut sentinel = RedisSentinel::start().await;
    let fleet = Fleet::start(&sentinel.url(), 2, &["--store-timeout", "1s"]).await;
    let lb = fleet.lb();
    register_and_login(&lb, "fay", PW).await;
    // Log in without pause while the primary dies and a replica takes over; keep every
    // cookie a client was given.
    let stop = Arc::new(AtomicBool::new(false));
    let given = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let logins = {
        let (lb, stop, given, refused) = (lb.clone(), stop.clone(), given.clone(), refused.clone());
        tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let res = c
                    .post(format!("{lb}/v1/sessions"))
                    .json(&json!({"username": "fay", "password": PW}))
                    .send()
                    .await
                    .unwrap();
                match res.status().as_u16() {
                    201 => given
                        .lock()
                        .unwrap()
                        .push(cookie_pair(res.headers(), "keyward").unwrap()),
                    503 => {
                        assert!(res.headers().contains_key("retry-after"));
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("a login during fail-over answered {other}"),
                }
            }
        })
    };
    // Let some logins land on the first primary.
    while given.lock().unwrap().len() < 5 {
        tokio::task::yield_now().await;
    }
    sentinel.fail_over().await;
    // And some on the promoted replica.
    let after = given.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while given.lock().unwrap().len() < after + 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no login succeeded after the fail-over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    logins.await.unwrap();
    let given = given.lock().unwrap().clone();
    for cookie in &given {
        assert_eq!(
            fleet.me_everywhere(cookie).await,
            vec![200, 200],
            "an acknowledged login was lost in the fail-over ({} given, {} refused)",
            given.len(),
            refused.load(Ordering::Relaxed)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_answers_503_then_recovers_without_a_restart() {
    let mut redis = RedisServer::start().await;
    let fleet = Fleet::start(&redis.url(), 1, &["--store-timeout", "500ms"]).await;
    let node = fleet.nodes()[0].clone();
    let c = client();
    let cookie = register_and_login(&node, "dora", PW).await;
    assert_eq!(me(&node, &cookie).await, 200);

    redis.kill().await;
    let res = c
        .get(format!("{node}/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = c
        .post(format!("{node}/v1/sessions"))
        .json(&json!({"username": "dora", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        c.get(format!("{node}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        c.get(format!("{node}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Redis comes back empty (it keeps nothing on disk): keyward reconnects by itself.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while c
        .get(format!("{node}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready 15 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = login(&node, "dora", PW).await;
    assert_eq!(me(&node, &again).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_rediss_with_users_on_postgres() {
    let (redis, ca) = RedisServer::start_tls().await;
    let pg = keyward_testkit::pg::PgServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kek = keyward_token::Kek::generate().unwrap().to_text();
    let store = format!("rediss://127.0.0.1:{}", redis.port);
    let args = [
        "--database",
        pg.url.as_str(),
        "--session-store",
        store.as_str(),
        "--key-encryption-key",
        kek.as_str(),
        "--session-cache",
        "near",
    ];
    // rediss:// verifies the server against the CA bundle SSL_CERT_FILE names (else the
    // system's).
    let ca = ca.to_string_lossy().into_owned();
    let a = Server::start_with_env(dir.path(), &args, &[("SSL_CERT_FILE", ca.as_str())]).await;
    let b = Server::start_with_env(dir.path(), &args, &[("SSL_CERT_FILE", ca.as_str())]).await;
    let cookie = register_and_login(&a.base, "tess", PW).await;
    assert_eq!(me(&b.base, &cookie).await, 200);
    let res = client()
        .delete(b.url("/v1/sessions/current"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(me(&a.base, &cookie).await, 401);
    // Without the CA the server's certificate is refused: the node starts, is not ready, and
    // answers 503, never a session it could not check.
    let c = Server::start(dir.path(), &args).await;
    assert_eq!(
        client()
            .get(c.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let res = client()
        .post(c.url("/v1/sessions"))
        .json(&json!({"username": "tess", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_throttle_counts_failures_fleet_wide() {
    let redis = RedisServer::start().await;
    throttle_fleet_wide(Fleet::start(&redis.url(), 3, THROTTLE).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_throttle_counts_failures_fleet_wide_on_postgres() {
    let pg = Shared::start("postgres").await;
    throttle_fleet_wide(Fleet::on(&pg, 3, THROTTLE).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_throttle_counts_failures_fleet_wide_on_a_shared_sqlite_file() {
    // Sessions in the database: the one file every node opens.
    throttle_fleet_wide(
        Fleet::start_with(
            |dir| {
                vec![
                    "--database".into(),
                    format!("sqlite://{}/keyward.db", dir.display()),
                ]
            },
            3,
            THROTTLE,
        )
        .await,
    )
    .await
}

const THROTTLE: &[&str] = &["--login-max-failures-per-account", "3"];

/// Three nodes, hit directly, allow the failures one allows: one after the other, and at once.
async fn throttle_fleet_wide(fleet: Fleet) {
    let c = client();
    for user in ["tom", "tim"] {
        let res = c
            .post(format!("{}/v1/users", fleet.lb()))
            .json(&json!({"username": user, "password": PW}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let attempt = |node: String, user: &'static str, password: &'static str| {
        let c = c.clone();
        async move {
            c.post(format!("{node}/v1/sessions"))
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    // One wrong password on each node: three in all.
    for node in fleet.nodes() {
        assert_eq!(
            attempt(node, "tom", "wrong-password-123").await.status(),
            401
        );
    }
    // Every node now refuses even the right password, as one node would.
    for node in fleet.nodes() {
        let res = attempt(node, "tom", PW).await;
        assert_eq!(res.status(), 429);
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait > 0 && wait <= 15 * 60, "{wait}");
    }
    // Twelve guesses at once, four on each node: the attempts in flight are counted too, so
    // exactly three are judged and the rest are refused unjudged.
    let guesses = fleet
        .nodes()
        .into_iter()
        .cycle()
        .take(12)
        .map(|node| attempt(node, "tim", "wrong-password-123"));
    let statuses: Vec<u16> = futures_util::future::join_all(guesses)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let judged = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((judged, refused), (3, 9), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cluster_starts_a_working_fleet_and_stops_it_all() {
    use tokio::io::AsyncBufReadExt;
    // The script puts its nodes on consecutive ports.
    let node = keyward_testkit::ports::free_consecutive_ports(2);
    let (lb, redis) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster");
    let mut child = tokio::process::Command::new("bash")
        .args([script, "2"])
        .env("KEYWARD_BIN", crate::process::BIN)
        .env("LB_PORT", lb.to_string())
        .env("NODE_PORT", node.to_string())
        .env("REDIS_PORT", redis.to_string())
        .env("SESSION_CACHE", "near")
        .env("DIR", dir.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("fleet ready") {
                return Ok(());
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    })
    .await
    .expect("the fleet was not ready within 60 s");
    ready.unwrap_or_else(|log| panic!("scripts/cluster stopped:\n{log}"));
    let base = format!("http://127.0.0.1:{lb}");
    let cookie = register_and_login(&base, "cleo", PW).await;
    for port in [node, node + 1] {
        assert_eq!(me(&format!("http://127.0.0.1:{port}"), &cookie).await, 200);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = child.id().unwrap().to_string();
    tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("scripts/cluster did not stop within 20 s")
        .unwrap();
    // Everything it started is gone.
    for port in [lb, node, node + 1, redis] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "port {port} still answers"
        );
    }
}

/// Codes, consents and clients live in the shared database: an authorization started on one
/// node finishes on others, and a code's replay on a third revokes what it issued everywhere
/// (the families and the deny list are in the session store: PostgreSQL, or Redis beside a
/// shared SQLite database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_flow_starts_on_one_node_and_ends_on_others() {
    oauth_across_nodes("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_flow_starts_on_one_node_and_ends_on_others_on_redis() {
    oauth_across_nodes("redis").await;
}

async fn oauth_across_nodes(engine: &str) {
    let shared = Shared::start(engine).await;
    let fleet = Fleet::on(&shared, 3, &[]).await;
    let nodes = fleet.nodes();
    let mut args = vec![
        "clients",
        "add",
        "Photos",
        "--redirect-uri",
        "https://photos.example.com/cb",
        "--json",
    ];
    args.extend(fleet.args.iter().map(String::as_str));
    let out = crate::process::run(fleet.dir.path(), &args, None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client_id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cookie = register_and_login(&nodes[0], "oauth.fleet", PW).await;
    let http = client();
    let cb = "https://photos.example.com/cb";
    let mut url = url::Url::parse(&format!("{}/oauth/authorize", nodes[1])).unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", cb)
        .append_pair("scope", "openid")
        .append_pair("state", "s")
        .append_pair(
            "code_challenge",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        )
        .append_pair("code_challenge_method", "S256");

    // Node 2 asks for consent (not first-party); the answer goes to node 3.
    let res = http
        .get(url.as_str())
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the consent page");
    let page = res.text().await.unwrap();
    let token = page
        .split("name=\"consent_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("decision".into(), "allow".into()));
    form.push(("consent_token".into(), token));
    let res = http
        .post(format!("{}/oauth/consent", nodes[2]))
        .header("cookie", &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let to = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let code = to
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();

    // Exchanged on node 1, used on node 2, replayed on node 3: revoked on all.
    let exchange = |base: String| {
        let http = http.clone();
        let form = [
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", cb.to_owned()),
            ("client_id", client_id.clone()),
            (
                "code_verifier",
                "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned(),
            ),
        ];
        async move {
            http.post(format!("{base}/v1/token"))
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let res = exchange(nodes[0].clone()).await;
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    // A third-party client's token is good for userinfo (not for the account).
    let userinfo = |base: &str| {
        let req = http
            .get(format!("{base}/oauth/userinfo"))
            .bearer_auth(&access);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(userinfo(&nodes[1]).await, 200);
    assert_eq!(bearer(&nodes[1], &access).await, 403);
    assert_eq!(exchange(nodes[2].clone()).await.status(), 400);
    for base in &nodes {
        assert_eq!(userinfo(base).await, 401, "{base}");
    }
    // A consent given through node 3 is remembered on node 1.
    let res = http
        .get(url.as_str().replace(&nodes[1], &nodes[0]))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
}
