//! The store conformance suite: every backend must pass every check here.
//!
//! Run it for a backend with [`session_store_conformance!`](crate::session_store_conformance)
//! and [`user_store_conformance!`](crate::user_store_conformance), giving an async factory that
//! returns a fresh, empty [`Fixture`].

use keyward_core::clock::from_unix_ms;
use keyward_core::{
    SessionId, SessionRecord, SessionStore, SessionToken, StoreError, UserId, UserRecord, UserStore,
};
use std::any::Any;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// A fresh store and whatever must live as long as it (a temp dir, a server process).
pub struct Fixture<S: ?Sized> {
    /// The store under test.
    pub store: Arc<S>,
    /// Kept alive for the test's duration.
    pub keep: Vec<Box<dyn Any + Send + Sync>>,
}

pub fn t0() -> OffsetDateTime {
    from_unix_ms(1_800_000_000_000)
}

/// A session record for `user`, created at `at`.
pub fn session(user: UserId, at: OffsetDateTime) -> SessionRecord {
    let token = SessionToken::generate_in(user.shard()).expect("random");
    SessionRecord {
        id: SessionId::new_in(user.shard()),
        token_hash: token.hash(),
        user_id: user,
        username: "alice".into(),
        created_at: at,
        last_seen_at: at,
        expires_at: at + Duration::days(7),
        ip: Some("192.0.2.7".into()),
        user_agent: Some("conformance/1.0".into()),
        // Not the default: every store and cache must keep it.
        amr: keyward_core::Amr::PWD_OTP,
    }
}

/// What `get` must answer for a stored session: all of it, except that a cache may leave out
/// the client's address and user agent (validation needs neither).
fn same_for_validation(got: Option<SessionRecord>, want: &SessionRecord) {
    let got = got.expect("the session");
    let bare = |s: &SessionRecord| SessionRecord {
        ip: None,
        user_agent: None,
        ..s.clone()
    };
    assert_eq!(bare(&got), bare(want));
    assert!(got.ip.is_none() || got.ip == want.ip);
    assert!(got.user_agent.is_none() || got.user_agent == want.user_agent);
}

/// A stored session reads back exactly (the list has every field); an unknown hash reads as
/// nothing.
pub async fn create_then_get(s: &dyn SessionStore) {
    let a = session(UserId::new(), t0());
    s.create(&a).await.unwrap();
    same_for_validation(s.get(&a.token_hash).await.unwrap(), &a);
    assert_eq!(s.list_for_user(a.user_id).await.unwrap(), vec![a.clone()]);
    let other = SessionToken::generate().unwrap().hash();
    assert_eq!(s.get(&other).await.unwrap(), None);
    let mut no_meta = session(UserId::new(), t0());
    no_meta.ip = None;
    no_meta.user_agent = None;
    s.create(&no_meta).await.unwrap();
    assert_eq!(s.get(&no_meta.token_hash).await.unwrap(), Some(no_meta));
}

/// Touch moves `last_seen_at` forward only, and touching a missing session creates nothing.
pub async fn touch_moves_forward_only(s: &dyn SessionStore) {
    let a = session(UserId::new(), t0());
    s.create(&a).await.unwrap();
    s.touch(&a.token_hash, t0() + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        s.get(&a.token_hash).await.unwrap().unwrap().last_seen_at,
        t0() + Duration::minutes(5)
    );
    s.touch(&a.token_hash, t0() + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        s.get(&a.token_hash).await.unwrap().unwrap().last_seen_at,
        t0() + Duration::minutes(5)
    );
    let ghost = SessionToken::generate().unwrap().hash();
    s.touch(&ghost, t0()).await.unwrap();
    assert_eq!(s.get(&ghost).await.unwrap(), None);
}

/// Delete returns what it removed, once.
pub async fn delete_returns_the_session_once(s: &dyn SessionStore) {
    let a = session(UserId::new(), t0());
    s.create(&a).await.unwrap();
    assert_eq!(
        s.delete(&a.token_hash).await.unwrap(),
        Some(a.clone()),
        "every field"
    );
    assert_eq!(s.delete(&a.token_hash).await.unwrap(), None);
    assert_eq!(s.get(&a.token_hash).await.unwrap(), None);
}

/// Delete by public id honours the owner.
pub async fn delete_by_id_honours_the_owner(s: &dyn SessionStore) {
    let (alice, mallory) = (UserId::new(), UserId::new());
    let a = session(alice, t0());
    s.create(&a).await.unwrap();
    assert_eq!(s.delete_by_id(a.id, Some(mallory)).await.unwrap(), None);
    assert!(s.get(&a.token_hash).await.unwrap().is_some());
    assert_eq!(
        s.delete_by_id(a.id, Some(alice))
            .await
            .unwrap()
            .map(|x| x.id),
        Some(a.id)
    );
    assert_eq!(s.get(&a.token_hash).await.unwrap(), None);
    let b = session(alice, t0());
    s.create(&b).await.unwrap();
    assert_eq!(
        s.delete_by_id(b.id, None).await.unwrap().map(|x| x.id),
        Some(b.id)
    );
    assert_eq!(s.delete_by_id(SessionId::new(), None).await.unwrap(), None);
}

/// Listing and revoking by user touch only that user's sessions.
pub async fn per_user_list_and_revoke(s: &dyn SessionStore) {
    let (alice, bob) = (UserId::new(), UserId::new());
    let a1 = session(alice, t0());
    let a2 = session(alice, t0() + Duration::seconds(1));
    let a3 = session(alice, t0() + Duration::seconds(2));
    let b1 = session(bob, t0());
    for x in [&a1, &a2, &a3, &b1] {
        s.create(x).await.unwrap();
    }
    let mut ids: Vec<SessionId> = s
        .list_for_user(alice)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    ids.sort_by_key(|i| i.to_string());
    let mut want = vec![a1.id, a2.id, a3.id];
    want.sort_by_key(|i| i.to_string());
    assert_eq!(ids, want);
    assert_eq!(s.delete_for_user(alice, Some(a2.id)).await.unwrap(), 2);
    let left: Vec<SessionId> = s
        .list_for_user(alice)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, vec![a2.id]);
    assert!(s.get(&b1.token_hash).await.unwrap().is_some());
    assert_eq!(s.delete_for_user(alice, None).await.unwrap(), 1);
    assert!(s.list_for_user(alice).await.unwrap().is_empty());
    assert_eq!(s.list_for_user(bob).await.unwrap().len(), 1);
}

/// Replace swaps a session for a new one atomically, and refuses when the old one is gone.
pub async fn replace_is_atomic(s: &dyn SessionStore) {
    let user = UserId::new();
    let old = session(user, t0());
    s.create(&old).await.unwrap();
    let new = session(user, t0() + Duration::minutes(1));
    assert!(s.replace(&old.token_hash, &new).await.unwrap());
    assert_eq!(s.get(&old.token_hash).await.unwrap(), None);
    same_for_validation(s.get(&new.token_hash).await.unwrap(), &new);
    let newer = session(user, t0() + Duration::minutes(2));
    assert!(!s.replace(&old.token_hash, &newer).await.unwrap());
    assert_eq!(s.get(&newer.token_hash).await.unwrap(), None);
    assert_eq!(s.list_for_user(user).await.unwrap().len(), 1);
}

/// Purge removes sessions past their absolute expiry or idle cutoff, and nothing else.
pub async fn purge_removes_only_expired(s: &dyn SessionStore) {
    let user = UserId::new();
    let mut old_abs = session(user, t0());
    old_abs.expires_at = t0() + Duration::hours(1);
    old_abs.last_seen_at = t0() + Duration::minutes(59);
    let idle = session(user, t0());
    let mut fresh = session(user, t0());
    fresh.last_seen_at = t0() + Duration::minutes(50);
    for x in [&old_abs, &idle, &fresh] {
        s.create(x).await.unwrap();
    }
    let now = t0() + Duration::hours(1);
    let n = s
        .purge_expired(now, now - Duration::minutes(30))
        .await
        .unwrap();
    assert_eq!(n, 2);
    let left: Vec<SessionId> = s
        .list_for_user(user)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, vec![fresh.id]);
}

/// Concurrent deletes of one session: exactly one wins.
pub async fn concurrent_delete_has_one_winner(s: Arc<dyn SessionStore>) {
    let a = session(UserId::new(), t0());
    s.create(&a).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            let h = a.token_hash;
            tokio::spawn(async move { s.delete(&h).await.unwrap().is_some() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

/// Concurrent creates for one user are all kept and listed.
pub async fn concurrent_creates_are_all_kept(s: Arc<dyn SessionStore>) {
    let user = UserId::new();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let x = session(user, t0() + Duration::seconds(i));
                s.create(&x).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.list_for_user(user).await.unwrap().len(), 16);
    s.ping().await.unwrap();
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        id: UserId::new(),
        username: name.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
        created_at: t0(),
        locked: false,
        email: None,
        email_verified: false,
        totp: false,
    }
}

/// Users: create, find by name ignoring case, uniqueness ignoring case, update, lock, delete, list.
pub async fn users_round_trip(s: &dyn UserStore) {
    let alice = user("Alice");
    s.create_user(&alice).await.unwrap();
    assert_eq!(s.user_by_name("alice").await.unwrap(), Some(alice.clone()));
    assert_eq!(s.user_by_name("ALICE").await.unwrap(), Some(alice.clone()));
    assert_eq!(s.user_by_id(alice.id).await.unwrap(), Some(alice.clone()));
    assert!(matches!(
        s.create_user(&user("aLiCe")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.user_by_name("bob").await.unwrap(), None);
    s.set_password_hash(alice.id, "$argon2id$new")
        .await
        .unwrap();
    assert_eq!(
        s.user_by_id(alice.id).await.unwrap().unwrap().password_hash,
        "$argon2id$new"
    );
    assert!(s.set_locked(alice.id, true).await.unwrap());
    assert!(s.user_by_id(alice.id).await.unwrap().unwrap().locked);
    assert!(!s.set_locked(UserId::new(), true).await.unwrap());
    let bob = user("bob");
    s.create_user(&bob).await.unwrap();
    let names: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["Alice".to_owned(), "bob".to_owned()]);
    assert!(s.delete_user(alice.id).await.unwrap());
    assert!(!s.delete_user(alice.id).await.unwrap());
    assert_eq!(s.user_by_name("alice").await.unwrap(), None);
    s.ping().await.unwrap();
}

/// Generate the session-store conformance tests for a backend. `$make` is an async fn
/// returning a fresh `Fixture<dyn SessionStore>`.
#[macro_export]
macro_rules! session_store_conformance {
    ($name:ident, $make:path) => {
        mod $name {
            use $crate::conformance as c;
            #[tokio::test]
            async fn create_then_get() {
                let f = $make().await;
                c::create_then_get(&*f.store).await
            }
            #[tokio::test]
            async fn touch_moves_forward_only() {
                let f = $make().await;
                c::touch_moves_forward_only(&*f.store).await
            }
            #[tokio::test]
            async fn delete_returns_the_session_once() {
                let f = $make().await;
                c::delete_returns_the_session_once(&*f.store).await
            }
            #[tokio::test]
            async fn delete_by_id_honours_the_owner() {
                let f = $make().await;
                c::delete_by_id_honours_the_owner(&*f.store).await
            }
            #[tokio::test]
            async fn per_user_list_and_revoke() {
                let f = $make().await;
                c::per_user_list_and_revoke(&*f.store).await
            }
            #[tokio::test]
            async fn replace_is_atomic() {
                let f = $make().await;
                c::replace_is_atomic(&*f.store).await
            }
            #[tokio::test]
            async fn purge_removes_only_expired() {
                let f = $make().await;
                c::purge_removes_only_expired(&*f.store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_delete_has_one_winner() {
                let f = $make().await;
                c::concurrent_delete_has_one_winner(f.store.clone()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_creates_are_all_kept() {
                let f = $make().await;
                c::concurrent_creates_are_all_kept(f.store.clone()).await
            }
        }
    };
}

/// Generate the key-store conformance tests for a backend.
#[macro_export]
macro_rules! key_store_conformance {
    ($name:ident, $make:path) => {
        mod $name {
            use $crate::conformance as c;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keys_and_scheduled_rotation() {
                let f = $make().await;
                c::keys_and_scheduled_rotation(f.store.clone()).await
            }
        }
    };
}

/// Generate the user-store conformance tests for a backend.
#[macro_export]
macro_rules! user_store_conformance {
    ($name:ident, $make:path) => {
        mod $name {
            use $crate::conformance as c;
            #[tokio::test]
            async fn users_round_trip() {
                let f = $make().await;
                c::users_round_trip(&*f.store).await
            }
        }
    };
}

// ------------------------------------------------------------------ token stores

use keyward_core::{RefreshFamily, RotateOutcome, TokenHash, TokenStore};

fn family(user: UserId, at: OffsetDateTime) -> RefreshFamily {
    RefreshFamily {
        id: SessionId::new_in(user.shard()),
        user_id: user,
        username: "alice".into(),
        created_at: at,
        expires_at: at + Duration::days(30),
    }
}

/// A refresh-token hash in the shard of `f`'s user, as the token service mints them.
fn hash(f: &RefreshFamily) -> TokenHash {
    SessionToken::generate_in(f.user_id.shard()).unwrap().hash()
}

const NO_GRACE: Duration = Duration::ZERO;

/// Rotation uses a token once; a replay revokes the family, its newest token included.
pub async fn rotation_and_reuse(s: &dyn TokenStore) {
    let f = family(UserId::new(), t0());
    let (r0, r1, r2) = (hash(&f), hash(&f), hash(&f));
    s.create_family(&f, &r0).await.unwrap();
    assert_eq!(s.family_of(&r0, t0()).await.unwrap(), Some(f.clone()));
    assert_eq!(
        s.rotate(&r0, &r1, t0(), NO_GRACE).await.unwrap(),
        RotateOutcome::Rotated(f.clone())
    );
    assert_eq!(
        s.family_of(&r0, t0()).await.unwrap(),
        None,
        "a used token is no longer active"
    );
    assert_eq!(
        s.rotate(&r1, &r2, t0(), NO_GRACE).await.unwrap(),
        RotateOutcome::Rotated(f.clone())
    );
    assert!(!s.is_denied("any-jti", f.id, t0()).await.unwrap());
    assert_eq!(
        s.rotate(&r0, &hash(&f), t0(), NO_GRACE).await.unwrap(),
        RotateOutcome::Reused(f.clone())
    );
    assert_eq!(
        s.rotate(&r2, &hash(&f), t0(), NO_GRACE).await.unwrap(),
        RotateOutcome::Invalid,
        "the newest token dies with its family"
    );
    assert!(
        s.is_denied("any-jti", f.id, t0()).await.unwrap(),
        "its access tokens are denied by sid"
    );
    assert_eq!(
        s.rotate(&hash(&f), &hash(&f), t0(), NO_GRACE)
            .await
            .unwrap(),
        RotateOutcome::Invalid
    );
}

/// Within the grace, the used token gets the same successor (and nothing changes), until the
/// successor itself is used or the grace passes; a different successor is reuse.
pub async fn reuse_grace(s: &dyn TokenStore) {
    let grace = Duration::seconds(30);
    let f = family(UserId::new(), t0());
    let (r0, r1, r2) = (hash(&f), hash(&f), hash(&f));
    s.create_family(&f, &r0).await.unwrap();
    assert_eq!(
        s.rotate(&r0, &r1, t0(), grace).await.unwrap(),
        RotateOutcome::Rotated(f.clone())
    );
    let t = t0() + Duration::seconds(10);
    assert_eq!(
        s.rotate(&r0, &r1, t, grace).await.unwrap(),
        RotateOutcome::Rotated(f.clone()),
        "a retry"
    );
    assert_eq!(
        s.family_of(&r1, t).await.unwrap(),
        Some(f.clone()),
        "the successor is unchanged and unused"
    );
    assert_eq!(
        s.rotate(&r1, &r2, t, grace).await.unwrap(),
        RotateOutcome::Rotated(f.clone())
    );
    assert_eq!(
        s.rotate(&r0, &r1, t, grace).await.unwrap(),
        RotateOutcome::Reused(f.clone()),
        "its successor was used"
    );

    let g = family(UserId::new(), t0());
    let (q0, q1) = (hash(&g), hash(&g));
    s.create_family(&g, &q0).await.unwrap();
    assert_eq!(
        s.rotate(&q0, &q1, t0(), grace).await.unwrap(),
        RotateOutcome::Rotated(g.clone())
    );
    assert_eq!(
        s.rotate(&q0, &q1, t0() + Duration::seconds(31), grace)
            .await
            .unwrap(),
        RotateOutcome::Reused(g.clone()),
        "after the grace"
    );

    let h = family(UserId::new(), t0());
    let (p0, p1) = (hash(&h), hash(&h));
    s.create_family(&h, &p0).await.unwrap();
    s.rotate(&p0, &p1, t0(), grace).await.unwrap();
    assert_eq!(
        s.rotate(&p0, &hash(&h), t0(), grace).await.unwrap(),
        RotateOutcome::Reused(h),
        "a different successor"
    );
}

/// Of concurrent rotations of one token, exactly one rotates.
pub async fn concurrent_rotation_has_one_winner(s: Arc<dyn TokenStore>) {
    let f = family(UserId::new(), t0());
    let r0 = hash(&f);
    s.create_family(&f, &r0).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (s, next) = (s.clone(), hash(&f));
            tokio::spawn(async move { s.rotate(&r0, &next, t0(), NO_GRACE).await.unwrap() })
        })
        .collect();
    let mut rotated = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), RotateOutcome::Rotated(_)) {
            rotated += 1;
        }
    }
    assert_eq!(rotated, 1);
}

/// The deny list, family revocation, per-user revocation, expiry and purge.
pub async fn deny_revoke_and_purge(s: &dyn TokenStore) {
    let (alice, bob) = (UserId::new(), UserId::new());
    let a1 = family(alice, t0());
    let a2 = family(alice, t0());
    let b1 = family(bob, t0());
    let (ra1, ra2, rb1) = (hash(&a1), hash(&a2), hash(&b1));
    s.create_family(&a1, &ra1).await.unwrap();
    s.create_family(&a2, &ra2).await.unwrap();
    s.create_family(&b1, &rb1).await.unwrap();

    s.deny("jti-1", t0() + Duration::minutes(15)).await.unwrap();
    assert!(s.is_denied("jti-1", b1.id, t0()).await.unwrap());
    assert!(
        !s.is_denied("jti-1", b1.id, t0() + Duration::minutes(15))
            .await
            .unwrap(),
        "until it expires"
    );
    assert!(!s.is_denied("jti-2", b1.id, t0()).await.unwrap());

    assert!(s.revoke_family(a1.id, t0()).await.unwrap());
    assert!(!s.revoke_family(a1.id, t0()).await.unwrap(), "once");
    assert!(s.is_denied("jti-x", a1.id, t0()).await.unwrap());
    assert_eq!(s.family_of(&ra1, t0()).await.unwrap(), None);
    assert_eq!(s.revoke_user_families(alice, t0()).await.unwrap(), 1);
    assert_eq!(s.family_of(&ra2, t0()).await.unwrap(), None);
    assert_eq!(
        s.family_of(&rb1, t0()).await.unwrap(),
        Some(b1.clone()),
        "other users untouched"
    );

    // Past its absolute lifetime a family is invalid, and purge removes it.
    let later = t0() + Duration::days(31);
    assert_eq!(s.family_of(&rb1, later).await.unwrap(), None);
    assert_eq!(
        s.rotate(&rb1, &hash(&b1), later, NO_GRACE).await.unwrap(),
        RotateOutcome::Invalid
    );
    // One deny entry, three families and their three tokens.
    assert_eq!(s.purge_tokens(later).await.unwrap(), 7);
    assert_eq!(
        s.purge_tokens(later).await.unwrap(),
        0,
        "nothing is left to purge"
    );
    assert!(!s.is_denied("jti-1", b1.id, later).await.unwrap());
    assert_eq!(s.revoke_by_token(&rb1, t0()).await.unwrap(), None, "purged");
}

/// Revoking by any token of a family (RFC 7009), one already rotated away too, revokes the
/// family; unknown tokens and families past their end are not found.
pub async fn revoke_by_any_token(s: &dyn TokenStore) {
    let f = family(UserId::new(), t0());
    let (r0, r1) = (hash(&f), hash(&f));
    s.create_family(&f, &r0).await.unwrap();
    assert_eq!(
        s.rotate(&r0, &r1, t0(), NO_GRACE).await.unwrap(),
        RotateOutcome::Rotated(f.clone())
    );
    assert!(!s.is_denied("jti", f.id, t0()).await.unwrap());
    assert_eq!(
        s.revoke_by_token(&r0, t0()).await.unwrap(),
        Some(f.clone()),
        "the used token"
    );
    assert!(s.is_denied("jti", f.id, t0()).await.unwrap());
    assert_eq!(
        s.rotate(&r1, &hash(&f), t0(), NO_GRACE).await.unwrap(),
        RotateOutcome::Invalid,
        "the newest token died with its family"
    );
    assert_eq!(s.family_of(&r1, t0()).await.unwrap(), None);
    assert_eq!(
        s.revoke_by_token(&r1, t0()).await.unwrap(),
        Some(f.clone()),
        "already revoked: still known"
    );
    assert!(
        !s.revoke_family(f.id, t0()).await.unwrap(),
        "it was revoked already"
    );
    assert_eq!(
        s.revoke_by_token(&hash(&f), t0()).await.unwrap(),
        None,
        "unknown"
    );
    let g = family(UserId::new(), t0());
    let q0 = hash(&g);
    s.create_family(&g, &q0).await.unwrap();
    assert_eq!(
        s.revoke_by_token(&q0, t0() + Duration::days(31))
            .await
            .unwrap(),
        None,
        "past its end"
    );
    assert_eq!(
        s.revoke_by_token(&q0, t0()).await.unwrap(),
        Some(g),
        "an unused token"
    );
}

/// Generate the token-store conformance tests for a backend.
#[macro_export]
macro_rules! token_store_conformance {
    ($name:ident, $make:path) => {
        mod $name {
            use $crate::conformance as c;
            #[tokio::test]
            async fn rotation_and_reuse() {
                let f = $make().await;
                c::rotation_and_reuse(&*f.store).await
            }
            #[tokio::test]
            async fn reuse_grace() {
                let f = $make().await;
                c::reuse_grace(&*f.store).await
            }
            #[tokio::test]
            async fn deny_revoke_and_purge() {
                let f = $make().await;
                c::deny_revoke_and_purge(&*f.store).await
            }
            #[tokio::test]
            async fn revoke_by_any_token() {
                let f = $make().await;
                c::revoke_by_any_token(&*f.store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_rotation_has_one_winner() {
                let f = $make().await;
                c::concurrent_rotation_has_one_winner(f.store.clone()).await
            }
        }
    };
}

/// Every session-store check in turn on one store: for deployments too costly to start once
/// per check (a Cluster, Sentinel). The purge check goes first, while the store is empty.
pub async fn session_suite(s: Arc<dyn SessionStore>) {
    purge_removes_only_expired(&*s).await;
    create_then_get(&*s).await;
    touch_moves_forward_only(&*s).await;
    delete_returns_the_session_once(&*s).await;
    delete_by_id_honours_the_owner(&*s).await;
    per_user_list_and_revoke(&*s).await;
    replace_is_atomic(&*s).await;
    concurrent_delete_has_one_winner(s.clone()).await;
    concurrent_creates_are_all_kept(s).await;
}

/// Every token-store check in turn on one store (see [`session_suite`]).
/// The purge check goes first, while the store is empty.
pub async fn token_suite(s: Arc<dyn TokenStore>) {
    deny_revoke_and_purge(&*s).await;
    rotation_and_reuse(&*s).await;
    reuse_grace(&*s).await;
    revoke_by_any_token(&*s).await;
    concurrent_rotation_has_one_winner(s).await;
}

// ------------------------------------------------------------------ key stores

use keyward_core::{KeyStore, StoredKey};

fn key(kid: &str, at: OffsetDateTime) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        alg: "EdDSA".into(),
        sealed_private: vec![1, 2, 3],
        created_at: at,
    }
}

/// Keys: insert, list oldest first, delete; and of concurrent scheduled rotations exactly
/// one adds a key.
pub async fn keys_and_scheduled_rotation(s: Arc<dyn KeyStore>) {
    assert!(s.list_keys().await.unwrap().is_empty());
    s.insert_key(&key("k1", t0())).await.unwrap();
    assert!(
        !s.insert_key_unless_newer(
            &key("k2", t0() + Duration::days(1)),
            t0() - Duration::days(1)
        )
        .await
        .unwrap(),
        "k1 is newer than the cutoff"
    );
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.insert_key_unless_newer(&key(&format!("r{i}"), t0() + Duration::days(30)), t0())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut added = 0;
    for t in tasks {
        if t.await.unwrap() {
            added += 1;
        }
    }
    assert_eq!(added, 1, "one rotation of eight racing");
    let listed = s.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], key("k1", t0()));
    assert_eq!(listed[1].created_at, t0() + Duration::days(30));
    assert!(s.delete_key("k1").await.unwrap());
    assert!(!s.delete_key("k1").await.unwrap());
    assert_eq!(s.list_keys().await.unwrap().len(), 1);
}

/// Reservations: attempts in progress count against the limit beside the failures, turn into
/// failures or go away when settled, lapse when never settled; and the count-and-reserve is
/// atomic, so concurrent attempts (on any number of nodes sharing the log) admit no more than
/// the limit.
pub async fn failure_log_reservations(log: Arc<dyn keyward_core::FailureLog>) {
    use keyward_core::throttle::{Reservation, RESERVATION_TTL};
    let key = format!("a:reservations-{}", SessionId::new());
    let window = Duration::minutes(15);
    let now = t0();
    let since = now - window;
    for a in ["a1", "a2", "a3"] {
        assert_eq!(
            log.reserve(&key, a, now, since, 3).await.unwrap(),
            Reservation::Admitted
        );
    }
    assert_eq!(
        log.reserve(&key, "a4", now, since, 3).await.unwrap(),
        Reservation::Full {
            failures: vec![],
            pending: 3
        },
        "three attempts in progress fill a limit of three"
    );
    let later = now + Duration::seconds(1);
    log.settle(&key, "a1", true, later, later - window, 3)
        .await
        .unwrap();
    log.settle(&key, "a2", false, later, later - window, 3)
        .await
        .unwrap();
    assert_eq!(
        log.failures(&key, since).await.unwrap(),
        vec![later],
        "a1 failed"
    );
    assert_eq!(
        log.reserve(&key, "a5", later, later - window, 3)
            .await
            .unwrap(),
        Reservation::Admitted,
        "a2 went away"
    );
    assert_eq!(
        log.reserve(&key, "a6", later, later - window, 3)
            .await
            .unwrap(),
        Reservation::Full {
            failures: vec![later],
            pending: 2
        }
    );
    // Reservations never settled (their process died) lapse.
    let lapsed = later + RESERVATION_TTL;
    assert_eq!(
        log.reserve(&key, "a7", lapsed, lapsed - window, 3)
            .await
            .unwrap(),
        Reservation::Admitted
    );
    // A failure whose reservation lapsed still counts; forgetting keeps reservations.
    log.settle(&key, "a3", true, lapsed, lapsed - window, 3)
        .await
        .unwrap();
    assert_eq!(
        log.failures(&key, since).await.unwrap(),
        vec![later, lapsed]
    );
    log.forget(&key).await.unwrap();
    assert!(log.failures(&key, since).await.unwrap().is_empty());
    assert_eq!(
        log.reserve(&key, "a8", lapsed, lapsed - window, 1)
            .await
            .unwrap(),
        Reservation::Full {
            failures: vec![],
            pending: 1
        },
        "a7 is still in progress (a5 has lapsed)"
    );

    // Atomic: of twenty concurrent attempts at a limit of five, five are admitted.
    let key = format!("a:concurrent-{}", SessionId::new());
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (log, key) = (log.clone(), key.clone());
            tokio::spawn(async move {
                log.reserve(&key, &format!("c{i}"), now, since, 5)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == Reservation::Admitted {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
}

/// A failure log keeps, per key, the newest failures inside the window, and forgets on demand.
pub async fn failure_log(log: &dyn keyward_core::FailureLog) {
    let (a, b) = ("a:conformance-a", "i:192.0.2.9");
    let window = Duration::minutes(15);
    for i in 0..3 {
        let now = t0() + Duration::seconds(i);
        log.record(a, now, now - window, 2, window).await.unwrap();
    }
    log.record(b, t0(), t0() - window, 5, window).await.unwrap();
    assert_eq!(
        log.failures(a, t0() - window).await.unwrap(),
        vec![t0() + Duration::seconds(1), t0() + Duration::seconds(2)],
        "the newest two, oldest first"
    );
    assert_eq!(
        log.failures(a, t0() + Duration::seconds(1)).await.unwrap(),
        vec![t0() + Duration::seconds(2)],
        "only those after `since`"
    );
    log.forget(a).await.unwrap();
    assert!(log.failures(a, t0() - window).await.unwrap().is_empty());
    assert_eq!(
        log.failures(b, t0() - window).await.unwrap(),
        vec![t0()],
        "other keys kept"
    );
}

// ------------------------------------------------------------------ email, tickets, outbox

use keyward_core::{MailState, OutboundMail, Outbox, Ticket, TicketKind, TicketStore};

/// Addresses: stored as given, found for a reset only once verified (ignoring case), and a
/// verified address belongs to one account.
pub async fn emails_and_their_verification(s: &dyn UserStore) {
    let alice = UserRecord {
        email: Some("Alice@Example.com".into()),
        ..user("alice")
    };
    s.create_user(&alice).await.unwrap();
    let stored = s.user_by_id(alice.id).await.unwrap().unwrap();
    assert_eq!(stored.email.as_deref(), Some("Alice@Example.com"));
    assert!(!stored.email_verified);
    assert_eq!(s.user_by_email("alice@example.com").await.unwrap(), None);
    assert!(s
        .set_email(alice.id, Some("Alice@Example.com"), true)
        .await
        .unwrap());
    let found = s.user_by_email("ALICE@example.COM").await.unwrap().unwrap();
    assert_eq!((found.id, found.email_verified), (alice.id, true));
    let bob = user("bob");
    s.create_user(&bob).await.unwrap();
    // Bob may claim the address, unverified; he cannot have it verified.
    assert!(s
        .set_email(bob.id, Some("alice@example.com"), false)
        .await
        .unwrap());
    assert!(matches!(
        s.set_email(bob.id, Some("alice@example.com"), true).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.user_by_email("alice@example.com")
            .await
            .unwrap()
            .map(|u| u.id),
        Some(alice.id)
    );
    assert!(!s
        .set_email(UserId::new(), Some("x@example.com"), true)
        .await
        .unwrap());
    assert!(s.set_email(alice.id, None, false).await.unwrap());
    assert_eq!(s.user_by_email("alice@example.com").await.unwrap(), None);
}

fn ticket(user: UserId, kind: TicketKind, at: OffsetDateTime) -> Ticket {
    Ticket {
        hash: SessionToken::generate().unwrap().hash(),
        kind,
        user_id: user,
        email: (kind == TicketKind::VerifyEmail).then(|| "alice@example.com".to_owned()),
        created_at: at,
        expires_at: at + kind.valid_for(),
    }
}

/// Tickets: found without being used, used once, ended by a newer one of their kind and by
/// their expiry, and of concurrent uses exactly one wins.
pub async fn tickets_are_single_use(s: Arc<dyn TicketStore>) {
    let (user, now) = (UserId::new(), t0());
    let reset = TicketKind::ResetPassword;
    let first = ticket(user, reset, now);
    s.issue_ticket(&first).await.unwrap();
    assert_eq!(
        s.find_ticket(&first.hash, reset, now).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        s.find_ticket(&first.hash, TicketKind::VerifyEmail, now)
            .await
            .unwrap(),
        None
    );
    let verify = ticket(user, TicketKind::VerifyEmail, now);
    s.issue_ticket(&verify).await.unwrap();
    // A newer reset ends the older one, not the verification.
    let second = ticket(user, reset, now);
    s.issue_ticket(&second).await.unwrap();
    assert_eq!(s.find_ticket(&first.hash, reset, now).await.unwrap(), None);
    assert_eq!(
        s.redeem_ticket(&first.hash, reset, now).await.unwrap(),
        None
    );
    assert_eq!(
        s.redeem_ticket(&second.hash, reset, now).await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(
        s.redeem_ticket(&second.hash, reset, now).await.unwrap(),
        None
    );
    // Expired: neither found nor usable.
    let late = verify.expires_at;
    assert_eq!(
        s.find_ticket(&verify.hash, TicketKind::VerifyEmail, late)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.redeem_ticket(&verify.hash, TicketKind::VerifyEmail, late)
            .await
            .unwrap(),
        None
    );
    // Concurrent uses: one winner.
    let raced = ticket(user, reset, now);
    s.issue_ticket(&raced).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (s, h) = (s.clone(), raced.hash);
            tokio::spawn(async move { s.redeem_ticket(&h, reset, now).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(won, 1);
    // Sign-in tickets do not end each other (two devices signing in at once).
    let one = ticket(user, TicketKind::MfaSignIn, now);
    let two = ticket(user, TicketKind::MfaSignIn, now);
    s.issue_ticket(&one).await.unwrap();
    s.issue_ticket(&two).await.unwrap();
    assert!(s
        .find_ticket(&one.hash, TicketKind::MfaSignIn, now)
        .await
        .unwrap()
        .is_some());
    assert!(s
        .find_ticket(&two.hash, TicketKind::MfaSignIn, now)
        .await
        .unwrap()
        .is_some());
    // Ending and purging.
    let a = ticket(user, reset, now);
    s.issue_ticket(&a).await.unwrap();
    assert_eq!(s.end_tickets(user, reset).await.unwrap(), 1);
    assert_eq!(s.find_ticket(&a.hash, reset, now).await.unwrap(), None);
    let old = ticket(UserId::new(), TicketKind::VerifyEmail, now);
    s.issue_ticket(&old).await.unwrap();
    assert_eq!(s.purge_tickets(now).await.unwrap(), 0);
    // The two sign-in tickets (5 minutes) and this one (a day).
    assert_eq!(s.purge_tickets(old.expires_at).await.unwrap(), 3);
}

fn mail(i: u32, at: OffsetDateTime) -> OutboundMail {
    OutboundMail {
        id: SessionId::new().to_string(),
        kind: "reset_password".into(),
        recipient: format!("user{i}@example.com"),
        message: format!("Subject: {i}\r\n\r\nsecret-{i}").into_bytes(),
        created_at: at + Duration::milliseconds(i64::from(i)),
        expires_at: at + Duration::minutes(30),
        attempts: 0,
    }
}

/// The outbox: of concurrent claimers each mail goes to one; a claim is a lease; delivered
/// and parked mails are never claimed again and keep no message; a failure waits its retry.
pub async fn outbox_claims_each_mail_once(s: Arc<dyn Outbox>) {
    let now = t0();
    let mut queued = Vec::new();
    for i in 0..20 {
        let m = mail(i, now);
        s.enqueue(&m).await.unwrap();
        queued.push(m);
    }
    // Not yet due: queued a moment after `now`.
    assert_eq!(
        s.claim(now - Duration::seconds(1), now, 50).await.unwrap(),
        vec![]
    );
    let soon = now + Duration::seconds(1);
    let lease = now + Duration::minutes(2);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.claim(soon, lease, 8).await.unwrap() })
        })
        .collect();
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let mut ids: Vec<String> = claimed.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), claimed.len(), "a mail was claimed twice");
    assert_eq!(claimed.len(), 20);
    let first = claimed.iter().find(|m| m.id == queued[0].id).unwrap();
    assert_eq!(first, &queued[0]);
    // Leased: nobody gets them until the lease runs out.
    assert!(s.claim(soon, lease, 50).await.unwrap().is_empty());
    let again = s
        .claim(lease, lease + Duration::minutes(2), 50)
        .await
        .unwrap();
    assert_eq!(again.len(), 20);
    let later = lease + Duration::minutes(3);
    // Delivered: never again.
    s.delivered(&queued[0].id, later).await.unwrap();
    // Failed: again at its retry, with the attempt counted.
    let retry = later + Duration::seconds(5);
    s.failed(&queued[1].id, later, Some(retry), "421 try later")
        .await
        .unwrap();
    // Parked: never again.
    s.failed(&queued[2].id, later, None, "550 no such user")
        .await
        .unwrap();
    let until = |t: OffsetDateTime| t + Duration::minutes(2);
    let due: Vec<String> = s
        .claim(later + Duration::seconds(1), until(later), 50)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(due.len(), 17);
    assert!(!due.contains(&queued[1].id));
    let retried = s.claim(retry, until(retry), 50).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (retried[0].id.clone(), retried[0].attempts),
        (queued[1].id.clone(), 1)
    );
    let list = s.list_mail(100).await.unwrap();
    assert_eq!(list.len(), 20);
    let state = |id: &str| list.iter().find(|m| m.id == id).unwrap().clone();
    assert_eq!(state(&queued[0].id).state, MailState::Sent);
    assert_eq!(state(&queued[0].id).done_at, Some(later));
    assert_eq!(state(&queued[2].id).state, MailState::Parked);
    assert_eq!(
        state(&queued[2].id).last_error.as_deref(),
        Some("550 no such user")
    );
    assert_eq!(state(&queued[1].id).state, MailState::Queued);
    assert_eq!(state(&queued[1].id).attempts, 1);
    assert_eq!(s.list_mail(5).await.unwrap().len(), 5);
    assert_eq!(s.purge_mail(later).await.unwrap(), 0);
    assert_eq!(s.purge_mail(later + Duration::seconds(1)).await.unwrap(), 2);
    assert_eq!(s.list_mail(100).await.unwrap().len(), 18);
}

/// Second factors: enrolment turns on only the secret that was pending, a step is accepted
/// once and only past the last one (the compare-and-set behind replay refusal), recovery codes
/// work once, and turning TOTP off drops them.
pub async fn second_factors<S: UserStore + keyward_core::MfaStore + ?Sized>(s: &S) {
    let alice = user("alice");
    s.create_user(&alice).await.unwrap();
    let empty = s.mfa(alice.id).await.unwrap();
    assert_eq!(empty, keyward_core::MfaRecord::default());
    assert!(s.set_pending_totp(alice.id, b"sealed-1").await.unwrap());
    assert!(!s
        .set_pending_totp(UserId::new(), b"sealed-1")
        .await
        .unwrap());
    let codes: Vec<TokenHash> = (0..3)
        .map(|_| SessionToken::generate().unwrap().hash())
        .collect();
    assert!(!s
        .enable_totp(alice.id, b"sealed-0", 7, &codes)
        .await
        .unwrap());
    assert!(!s.user_by_id(alice.id).await.unwrap().unwrap().totp);
    assert!(s
        .enable_totp(alice.id, b"sealed-1", 7, &codes)
        .await
        .unwrap());
    assert!(s.user_by_id(alice.id).await.unwrap().unwrap().totp);
    let on = s.mfa(alice.id).await.unwrap();
    assert_eq!(on.totp.as_deref(), Some(b"sealed-1".as_slice()));
    assert_eq!(
        (on.pending, on.last_step, on.recovery_codes_left),
        (None, Some(7), 3)
    );
    assert!(!s.use_totp_step(alice.id, 7).await.unwrap());
    assert!(!s.use_totp_step(alice.id, 6).await.unwrap());
    assert!(s.use_totp_step(alice.id, 8).await.unwrap());
    assert!(!s.use_totp_step(alice.id, 8).await.unwrap());
    assert!(s
        .use_recovery_code(alice.id, &codes[1], t0())
        .await
        .unwrap());
    assert!(!s
        .use_recovery_code(alice.id, &codes[1], t0())
        .await
        .unwrap());
    assert!(!s
        .use_recovery_code(UserId::new(), &codes[0], t0())
        .await
        .unwrap());
    assert_eq!(s.mfa(alice.id).await.unwrap().recovery_codes_left, 2);
    assert!(s.disable_totp(alice.id).await.unwrap());
    assert!(!s.disable_totp(alice.id).await.unwrap());
    assert_eq!(
        s.mfa(alice.id).await.unwrap(),
        keyward_core::MfaRecord::default()
    );
    assert!(
        !s.use_totp_step(alice.id, 9).await.unwrap(),
        "off: no step is accepted"
    );
    assert!(!s
        .use_recovery_code(alice.id, &codes[0], t0())
        .await
        .unwrap());
}

/// OAuth clients: stored whole (public and confidential), listed by name, deleted once.
pub async fn clients_round_trip<S: keyward_core::ClientStore + ?Sized>(s: &S) {
    use keyward_core::ClientRecord;
    let public = ClientRecord {
        id: keyward_core::clients::new_client_id().unwrap(),
        name: "Mobile app".into(),
        redirect_uris: vec!["com.example.app:/cb".into(), "http://127.0.0.1/cb".into()],
        post_logout_redirect_uris: vec![],
        secret_hash: None,
        first_party: true,
        created_at: t0(),
    };
    let confidential = ClientRecord {
        id: keyward_core::clients::new_client_id().unwrap(),
        name: "Billing".into(),
        redirect_uris: vec!["https://billing.example.com/cb".into()],
        post_logout_redirect_uris: vec!["https://billing.example.com/bye".into()],
        secret_hash: Some(TokenHash::of("the-secret")),
        first_party: false,
        created_at: t0(),
    };
    s.create_client(&public).await.unwrap();
    s.create_client(&confidential).await.unwrap();
    assert!(matches!(
        s.create_client(&public).await,
        Err(StoreError::Conflict(_))
    ));
    let got = s.client(&confidential.id).await.unwrap().unwrap();
    assert_eq!(got, confidential);
    assert!(got.secret_is("the-secret") && !got.secret_is("another"));
    assert_eq!(s.client(&public.id).await.unwrap(), Some(public.clone()));
    assert_eq!(s.client("no-such-client").await.unwrap(), None);
    let names: Vec<String> = s
        .list_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["Billing".to_owned(), "Mobile app".to_owned()]);
    assert!(s.delete_client(&public.id).await.unwrap());
    assert!(!s.delete_client(&public.id).await.unwrap());
    assert_eq!(s.list_clients().await.unwrap().len(), 1);
}

/// Whether a code is marked replayed, as the exchange learns it: a grant issued from it is
/// refused (the probe's grant names another client, so it counts for no other check).
async fn replayed<S: keyward_core::GrantStore + ?Sized>(s: &S, code: &TokenHash) -> bool {
    let probe = keyward_core::Grant {
        family_id: SessionId::new(),
        client_id: "conformance-probe".into(),
        user_id: UserId::new(),
        scope: keyward_core::Scopes::parse("openid").unwrap(),
        created_at: t0(),
        expires_at: t0() + Duration::days(1),
    };
    !s.insert_grant(&probe, code).await.unwrap()
}

/// Codes, grants and consents: a code is used up once by compare-and-set and names its
/// family, a second use is recognised (and marked) as a replay, an expired or unknown code
/// is invalid; grants and consents round-trip, are removed per user and client, and go with
/// their client.
pub async fn grants_and_consents<
    S: keyward_core::GrantStore + keyward_core::ClientStore + ?Sized,
>(
    s: &S,
) {
    use keyward_core::{Amr, AuthorizationCode, Consent, Grant, Redeemed, Scopes};
    let user = UserId::new();
    let other = UserId::new();
    let client = keyward_core::ClientRecord {
        id: keyward_core::clients::new_client_id().unwrap(),
        name: "Photos".into(),
        redirect_uris: vec!["https://photos.example.com/cb".into()],
        post_logout_redirect_uris: vec![],
        secret_hash: None,
        first_party: false,
        created_at: t0(),
    };
    s.create_client(&client).await.unwrap();
    let secret = SessionToken::generate().unwrap();
    let code = AuthorizationCode {
        hash: secret.hash(),
        family_id: SessionId::new(),
        client_id: client.id.clone(),
        redirect_uri: "https://photos.example.com/cb".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        nonce: Some("n-0S6_WzA2Mj".into()),
        scope: Scopes::parse("openid email offline_access").unwrap(),
        user_id: user,
        session_id: SessionId::new(),
        auth_time: t0() - Duration::minutes(3),
        amr: Amr::PWD_OTP,
        created_at: t0(),
        expires_at: t0() + keyward_core::oauth::CODE_TTL,
    };
    s.insert_code(&code).await.unwrap();
    assert!(!replayed(s, &code.hash).await);
    let family = code.family_id;
    let now = t0() + Duration::seconds(10);
    assert_eq!(
        s.redeem_code(&code.hash, now).await.unwrap(),
        Redeemed::Fresh(Box::new(code.clone())),
        "stored whole, used up by its first redemption"
    );
    assert_eq!(
        s.redeem_code(&code.hash, now).await.unwrap(),
        Redeemed::Replayed(family),
        "a second use names the code's family"
    );
    assert!(replayed(s, &code.hash).await);
    let unknown = SessionToken::generate().unwrap().hash();
    assert_eq!(
        s.redeem_code(&unknown, now).await.unwrap(),
        Redeemed::Invalid
    );
    let late = AuthorizationCode {
        hash: SessionToken::generate().unwrap().hash(),
        nonce: None,
        ..code.clone()
    };
    s.insert_code(&late).await.unwrap();
    assert_eq!(
        s.redeem_code(&late.hash, late.expires_at).await.unwrap(),
        Redeemed::Invalid,
        "expired at its expiry"
    );
    assert!(!replayed(s, &late.hash).await);

    let grant = Grant {
        family_id: family,
        client_id: client.id.clone(),
        user_id: user,
        scope: code.scope.clone(),
        created_at: now,
        expires_at: now + Duration::days(30),
    };
    let refused = Grant {
        family_id: SessionId::new(),
        ..grant.clone()
    };
    assert!(
        !s.insert_grant(&refused, &code.hash).await.unwrap(),
        "not after the code's replay"
    );
    assert_eq!(s.grant(refused.family_id).await.unwrap(), None);
    assert!(s.insert_grant(&grant, &unknown).await.unwrap());
    let others = Grant {
        family_id: SessionId::new(),
        user_id: other,
        ..grant.clone()
    };
    assert!(s.insert_grant(&others, &unknown).await.unwrap());
    assert_eq!(s.grant(family).await.unwrap(), Some(grant.clone()));
    assert_eq!(s.grant(SessionId::new()).await.unwrap(), None);
    assert_eq!(
        s.grants_of(Some(user), &client.id).await.unwrap(),
        vec![family]
    );
    assert_eq!(
        s.grants_of(None, &client.id).await.unwrap().len(),
        2,
        "every user's"
    );
    assert!(s.grants_of(Some(user), "another").await.unwrap().is_empty());

    let consent = Consent {
        user_id: user,
        client_id: client.id.clone(),
        scope: Scopes::parse("openid").unwrap(),
        granted_at: now,
    };
    assert_eq!(s.consent(user, &client.id).await.unwrap(), None);
    s.put_consent(&consent).await.unwrap();
    let wider = Consent {
        scope: Scopes::parse("openid profile").unwrap(),
        granted_at: now + Duration::seconds(1),
        ..consent.clone()
    };
    s.put_consent(&wider).await.unwrap();
    assert_eq!(
        s.consent(user, &client.id).await.unwrap(),
        Some(wider.clone())
    );
    assert_eq!(s.consents(user).await.unwrap(), vec![wider]);
    assert!(s.consents(other).await.unwrap().is_empty());
    assert!(s.delete_consent(user, &client.id).await.unwrap());
    assert!(!s.delete_consent(user, &client.id).await.unwrap());

    // Purging keeps a used code a day past its expiry, then forgets it.
    s.put_consent(&consent).await.unwrap();
    s.purge_grants(code.expires_at + Duration::hours(1))
        .await
        .unwrap();
    assert!(replayed(s, &code.hash).await);
    s.purge_grants(code.expires_at + Duration::days(2))
        .await
        .unwrap();
    assert!(!replayed(s, &code.hash).await);
    assert_eq!(
        s.grant(others.family_id).await.unwrap(),
        Some(others.clone())
    );
    s.purge_grants(others.expires_at).await.unwrap();
    assert_eq!(s.grant(others.family_id).await.unwrap(), None);

    // A client goes with its codes and consents; its grants stay until their families end.
    assert!(s.insert_grant(&grant, &unknown).await.unwrap());
    let pending = AuthorizationCode {
        hash: SessionToken::generate().unwrap().hash(),
        ..code.clone()
    };
    s.insert_code(&pending).await.unwrap();
    assert!(s.delete_client(&client.id).await.unwrap());
    assert_eq!(s.grant(family).await.unwrap(), Some(grant.clone()));
    assert_eq!(s.consent(user, &client.id).await.unwrap(), None);
    assert_eq!(
        s.redeem_code(&pending.hash, now).await.unwrap(),
        Redeemed::Invalid
    );
}

/// Generate the conformance tests of what only the database keeps: emails, tickets, the
/// outbox, second factors and OAuth clients. `$make` returns a fixture whose store is all.
#[macro_export]
macro_rules! account_store_conformance {
    ($name:ident, $make:path) => {
        mod $name {
            use $crate::conformance as c;
            #[tokio::test]
            async fn emails_and_their_verification() {
                let f = $make().await;
                c::emails_and_their_verification(&*f.store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tickets_are_single_use() {
                let f = $make().await;
                c::tickets_are_single_use(f.store.clone()).await
            }
            #[tokio::test]
            async fn clients_round_trip() {
                let f = $make().await;
                c::clients_round_trip(&*f.store).await
            }
            #[tokio::test]
            async fn grants_and_consents() {
                let f = $make().await;
                c::grants_and_consents(&*f.store).await
            }
            #[tokio::test]
            async fn second_factors() {
                let f = $make().await;
                c::second_factors(&*f.store).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn outbox_claims_each_mail_once() {
                let f = $make().await;
                c::outbox_claims_each_mail_once(f.store.clone()).await
            }
        }
    };
}
