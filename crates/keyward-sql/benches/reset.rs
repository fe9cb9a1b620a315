//! A password-reset request for an account that exists (with a verified address) against one
//! for an account that does not (criterion): the answers must cost the same, or their timing
//! tells which accounts exist.
//!
//!     cargo bench -p keyward-sql --bench reset
//!
//! - `reset/known`: `request_password_reset` for an account with a verified address;
//! - `reset/unknown`: the same for a name no account has.
//!
//! - `reset-work/known`, `reset-work/unknown`: the same requests back to back, timing
//!   everything, the work that follows the answer included.
//!
//! `reset/*` times what the HTTP answer waits for: the throttles (the shared failure log);
//! the look-up, the ticket and the mail are handed to a task that runs after the answer, and
//! each sample waits for it outside the timing. `reset-work/*` shows what that later work
//! costs the server. The manual clock moves an hour per request, past the per-account limit.
//! On SQLite, with the outbox of keyward-mail; figures in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyward_core::{
    AuthConfig, AuthService, ManualClock, MemorySessionStore, Password, PasswordHasher, ResetFor,
    UserStore,
};
use keyward_sql::SqlStore;
use std::sync::Arc;

fn reset(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let auth = rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("kw.db").display());
        let db = Arc::new(SqlStore::open(&url.parse().unwrap()).await.unwrap());
        let post = keyward_mail::Post::new(
            db.clone(),
            "keyward <no-reply@keyward.test>".parse().unwrap(),
            url::Url::parse("http://auth.keyward.test").unwrap(),
            clock.clone(),
            Arc::new(tokio::sync::Notify::new()),
        );
        let auth = AuthService::new(
            db.clone(),
            Arc::new(MemorySessionStore::new()),
            PasswordHasher::new(Some(1)).unwrap(),
            clock.clone(),
            AuthConfig::default(),
        )
        .with_failure_log(db.clone())
        .with_mail(db.clone(), Some(Arc::new(post)));
        let pw = Password::new("correct-horse-battery".into());
        let user = auth
            .register_with_email("known", &pw, Some("known@example.com"), None)
            .await
            .unwrap();
        db.set_email(user.id, Some("known@example.com"), true)
            .await
            .unwrap();
        Arc::new(auth)
    });
    let accounts = [("known", "known"), ("unknown", "nobody-at-all")];
    let mut group = c.benchmark_group("reset");
    group.sample_size(50);
    for (name, who) in accounts {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (auth, clock) = (auth.clone(), clock.clone());
                async move {
                    let mut answered = std::time::Duration::ZERO;
                    for _ in 0..iters {
                        clock.advance(time::Duration::hours(1));
                        let t = std::time::Instant::now();
                        auth.request_password_reset(ResetFor::Username(who.into()), None)
                            .await
                            .unwrap();
                        answered += t.elapsed();
                        // Let the work after the answer finish, untimed.
                        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                    }
                    answered
                }
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("reset-work");
    group.sample_size(50);
    for (name, who) in accounts {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                clock.advance(time::Duration::hours(1));
                auth.request_password_reset(ResetFor::Username(who.into()), None)
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, reset);
criterion_main!(benches);
