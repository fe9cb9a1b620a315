//! Registration of a taken name against a free one (criterion): the answers must cost the same,
//! or their timing tells which names exist.
//!
//!     cargo bench -p keyward-sql --bench register
//!
//! - `register/free`: a new user (policy check, Argon2id hash, insert) on SQLite;
//! - `register/taken`: the same request for a name that exists (policy check, Argon2id hash,
//!   the insert refused by the unique index: 409).
//!
//! Both run on one hashing thread; the figures and their reading are in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use keyward_core::{
    AuthConfig, AuthError, AuthService, ManualClock, MemorySessionStore, Password, PasswordHasher,
};
use keyward_sql::SqlStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn register(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let auth = rt.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("kw.db").display());
        let db = Arc::new(SqlStore::open(&url.parse().unwrap()).await.unwrap());
        Arc::new(AuthService::new(
            db,
            Arc::new(MemorySessionStore::new()),
            PasswordHasher::new(Some(1)).unwrap(),
            Arc::new(ManualClock::starting_now()),
            AuthConfig::default(),
        ))
    });
    let password = Password::new("correct-horse-battery".into());
    rt.block_on(auth.register("taken", &password, None))
        .unwrap();
    let mut group = c.benchmark_group("register");
    group.sample_size(30);
    let n = AtomicU64::new(0);
    group.bench_function("free", |b| {
        b.to_async(&rt).iter(|| async {
            let name = format!("user{}", n.fetch_add(1, Ordering::Relaxed));
            auth.register(&name, &password, None).await.unwrap()
        })
    });
    group.bench_function("taken", |b| {
        b.to_async(&rt).iter(|| async {
            let e = auth.register("taken", &password, None).await.unwrap_err();
            assert!(matches!(e, AuthError::UsernameTaken));
        })
    });
    group.finish();
}

criterion_group!(benches, register);
criterion_main!(benches);
