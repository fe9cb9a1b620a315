//! Per-operation cost of the token side (criterion):
//!
//!     cargo bench -p keyward-token --bench tokens
//!
//! - `sign/<alg>` and `verify/<alg>`: one access token signed, one verified (signature, kid,
//!   typ, iss, aud, exp, nbf), in memory, for each algorithm;
//! - `service/authenticate`: a bearer token (already seen, so from the verified-token cache)
//!   plus the deny-list look-up (memory store);
//! - `service/refresh_grant`: one refresh-token rotation with a new access token (memory
//!   store; the user store is SQLite in memory but a refresh does not read it);
//! - `service/code_flow`: one authorization code issued to a registered public client and
//!   exchanged at the token endpoint's service, with PKCE S256 and an RS256 ID token: the
//!   code's insert, its compare-and-set redemption, the user read, the grant's insert and the
//!   replay check in SQLite (in memory), the family in the memory store, two signatures;
//!   `service/code_issue` is the issue alone (what `/oauth/authorize` adds), so the token
//!   endpoint's share is the difference.
//!
//! Figures and their reading: docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyward_core::{
    AuthConfig, AuthService, ManualClock, MemorySessionStore, Password, PasswordHasher,
};
use keyward_token::jwt::{sign, verify, AccessClaims};
use keyward_token::keys::generate;
use keyward_token::{Kek, Keyring, SigningAlg, SigningKey, TokenConfig, TokenService};
use std::hint::black_box;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

fn claims(now: i64) -> AccessClaims {
    AccessClaims {
        iss: "https://auth.example.com".into(),
        sub: "4f9d3c4e-2f7e-4a59-9a57-1f5d5e6b9c01".into(),
        aud: "keyward".into(),
        exp: now + 900,
        iat: now,
        nbf: now,
        jti: "0b8f1c2a-6d3e-4f5a-8b7c-9d0e1f2a3b4c".into(),
        sid: "6a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d".into(),
        client_id: "keyward".into(),
        preferred_username: "ada".into(),
        scope: None,
    }
}

fn sign_and_verify(c: &mut Criterion) {
    let kek = Kek::generate().unwrap();
    let now = OffsetDateTime::now_utc_for_bench();
    for alg in [SigningAlg::EdDSA, SigningAlg::ES256, SigningAlg::RS256] {
        let stored = generate(alg, &kek, now).unwrap();
        let key = SigningKey::load(&stored, &kek).unwrap();
        let ring = Keyring::new(
            vec![SigningKey::load(&stored, &kek).unwrap()],
            now,
            Duration::minutes(15),
            alg,
        );
        let cl = claims(now.unix_timestamp());
        let token = sign(&key, &cl).unwrap();
        c.bench_function(&format!("sign/{}", alg.name()), |b| {
            b.iter(|| sign(&key, black_box(&cl)).unwrap())
        });
        c.bench_function(&format!("verify/{}", alg.name()), |b| {
            b.iter(|| {
                verify(
                    &ring,
                    black_box(&token),
                    "https://auth.example.com",
                    "keyward",
                    now.unix_timestamp(),
                )
                .unwrap()
            })
        });
    }
}

fn service(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (svc, access, refresh, client, session) = rt.block_on(async {
        let db = Arc::new(
            keyward_sql::SqlStore::open(&"sqlite::memory:".parse().unwrap())
                .await
                .unwrap(),
        );
        let mem = Arc::new(MemorySessionStore::new());
        let clock = Arc::new(ManualClock::starting_now());
        let auth = Arc::new(
            AuthService::new(
                db.clone(),
                mem.clone(),
                PasswordHasher::new(Some(1)).unwrap(),
                clock,
                AuthConfig::default(),
            )
            .with_token_store(mem.clone()),
        );
        let ada = auth
            .create_user("ada", &Password::new("correct-horse-battery".into()))
            .await
            .unwrap();
        let config = TokenConfig::new("https://auth.example.com");
        let oauth = keyward_token::OAuthStores {
            clients: db.clone(),
            grants: db.clone(),
        };
        let svc = TokenService::new(auth, mem, db, Kek::generate().unwrap(), oauth, config)
            .await
            .unwrap();
        let pair = svc
            .password_grant("ada", &Password::new("correct-horse-battery".into()), None)
            .await
            .unwrap();
        let client = keyward_core::ClientRecord {
            id: keyward_core::clients::new_client_id().unwrap(),
            name: "Bench".into(),
            redirect_uris: vec!["http://127.0.0.1/cb".into()],
            post_logout_redirect_uris: vec![],
            secret_hash: None,
            first_party: true,
            created_at: OffsetDateTime::now_utc_for_bench(),
        };
        svc.clients().create_client(&client).await.unwrap();
        let now = OffsetDateTime::now_utc_for_bench();
        let session = keyward_core::SessionRecord {
            id: keyward_core::SessionId::new_in(ada.id.shard()),
            token_hash: keyward_core::SessionToken::generate().unwrap().hash(),
            user_id: ada.id,
            username: ada.username.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + Duration::days(7),
            ip: None,
            user_agent: None,
            amr: keyward_core::Amr::PWD,
        };
        (
            svc,
            pair.access_token,
            pair.refresh_token.unwrap().expose().to_owned(),
            client,
            session,
        )
    });
    c.bench_function("service/authenticate", |b| {
        b.to_async(&rt)
            .iter(|| async { svc.authenticate(black_box(&access)).await.unwrap().unwrap() })
    });
    let current = std::sync::Mutex::new(refresh);
    c.bench_function("service/refresh_grant", |b| {
        b.to_async(&rt).iter(|| async {
            let presented = current.lock().unwrap().clone();
            let pair = svc.refresh_grant(&presented, None, None).await.unwrap();
            *current.lock().unwrap() = pair.refresh_token.unwrap().expose().to_owned();
        })
    });
    use keyward_token::code::{Caller, CodeExchange, CodeRequest};
    let request = CodeRequest {
        redirect_uri: "http://127.0.0.1:50000/cb".into(),
        // RFC 7636 Appendix B.
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        nonce: Some("n-0S6_WzA2Mj".into()),
        scope: keyward_core::Scopes::parse("openid profile offline_access").unwrap(),
    };
    let caller = Caller::Registered(client.clone());
    c.bench_function("service/code_issue", |b| {
        b.to_async(&rt).iter(|| async {
            svc.issue_code(&client, &request, &session).await.unwrap();
        })
    });
    c.bench_function("service/code_flow", |b| {
        b.to_async(&rt).iter(|| async {
            let code = svc.issue_code(&client, &request, &session).await.unwrap();
            let exchange = CodeExchange {
                code: code.expose(),
                redirect_uri: Some("http://127.0.0.1:50000/cb"),
                code_verifier: Some("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            };
            let pair = svc.code_grant(&caller, exchange, None).await.unwrap();
            assert!(pair.id_token.is_some() && pair.refresh_token.is_some());
        })
    });
}

trait BenchNow {
    fn now_utc_for_bench() -> OffsetDateTime;
}

impl BenchNow for OffsetDateTime {
    #[allow(clippy::disallowed_methods)] // a benchmark, not the server: the real clock is fine
    fn now_utc_for_bench() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

criterion_group!(benches, sign_and_verify, service);
criterion_main!(benches);
